//! End-to-end benchmarks. Every figure is printed beside the baseline it is
//! judged against, measured in the same run on the same machine, as a ratio.
//! `scripts/bench` builds in release mode and runs them all.

mod daemon_bench;
mod handshake_parts;
mod index_load;
mod login_bench;
mod transfer_bench;
mod upload_queue_bench;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "p2pshare-bench",
    about = "End-to-end benchmarks of p2pshare against their baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One source, one file: verified download vs single-core SHA-256 and vs TCP copy + sha256sum.
    Transfer {
        #[arg(long, default_value = "1GiB", value_parser = common::units::parse_size)]
        size: u64,
        /// Scratch folder (the file and its copies are written there).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Verified downloads to time; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Skip the baselines (for profiling the download alone).
        #[arg(long)]
        ours_only: bool,
        /// The engine's verifier threads (default: the engine's own).
        #[arg(long)]
        verifier_threads: Option<usize>,
        /// Chunk requests in flight per source (default: the engine's own).
        #[arg(long)]
        pipeline_depth: Option<usize>,
        /// Clear text on both sides (source and downloader): no handshake,
        /// no encryption (the baseline of --vs-insecure).
        #[arg(long)]
        insecure: bool,
        /// Also time the same downloads with --insecure on both sides (in
        /// a child process, right after), and print the encrypted/clear
        /// ratio (issue 16's target: at least 0.8).
        #[arg(long)]
        vs_insecure: bool,
    },
    /// Several upload-capped sources, one downloader: throughput vs the sum of the caps.
    Capped {
        #[arg(long, default_value = "256MiB", value_parser = common::units::parse_size)]
        size: u64,
        /// Upload cap of each source.
        #[arg(long, default_value = "16MiB", value_parser = common::units::parse_size)]
        cap: u64,
        #[arg(long, default_value_t = 4)]
        sources: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Hashing a shared folder vs `sha256sum` over the same files.
    HashFolder {
        #[arg(long, default_value_t = 32)]
        files: usize,
        #[arg(long, default_value = "32MiB", value_parser = common::units::parse_size)]
        size: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The index server (a separate process) under load vs an echo server
    /// on the same framing, over generated realistic names; with
    /// --baseline, also an older index-server binary, alternately.
    Index {
        #[arg(long, default_value_t = 1_000_000)]
        files: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value = "5s", value_parser = common::units::parse_duration)]
        duration: std::time::Duration,
        /// Another index-server binary to measure alternately with this
        /// build's (e.g. one built from an older commit).
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Rounds of measurements (each server once a round); medians are shown.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// The index's search alone, in this process (no network): p50/p99 per
    /// query kind over generated names; for profiling the search.
    SearchInProcess {
        #[arg(long, default_value_t = 1_000_000)]
        files: usize,
        /// Times over each query set.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Only the query sets whose label contains this (e.g. "2-letter").
        #[arg(long)]
        only: Option<String>,
    },
    /// The upload queue: uploader memory for N waiting requesters and how soon
    /// the head is served once a slot frees, vs requesters told Busy that retry.
    UploadQueue {
        #[arg(long, default_value_t = 1000)]
        requesters: usize,
        /// Slot hand-overs to time.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// A download through a running daemon (`peer get` handed to it) vs a
    /// standalone `peer get`, alternated.
    Daemon {
        #[arg(long, default_value = "1GiB", value_parser = common::units::parse_size)]
        size: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A daemon with many running and queued downloads: API list latency,
    /// RSS, how often progress is published.
    DaemonList {
        #[arg(long, default_value_t = 100)]
        active: usize,
        #[arg(long, default_value_t = 10_000)]
        queued: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Logins per second at a real index-server: each a new connection
    /// with hello, Noise handshake and Login; then the same with --insecure
    /// on both sides (the baseline, same run).
    Logins {
        /// Clients logging in at once.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// How long each mode runs.
        #[arg(long, default_value = "10s", value_parser = common::units::parse_duration)]
        duration: std::time::Duration,
        /// Pin the index to these CPUs (a `taskset -c` list, e.g. `0`);
        /// run the bench itself under `taskset -c 1` so that the two do
        /// not share a core.
        #[arg(long)]
        index_cpus: Option<String>,
    },
    /// What one authenticated handshake costs, piece by piece: X25519
    /// operations, ed25519 checks and whole handshakes in memory (µs each,
    /// one thread).
    HandshakeParts {
        /// Calls of each curve operation (whole handshakes: a quarter).
        #[arg(long, default_value_t = 4000)]
        calls: u32,
    },
    /// (internal) a bare request/response echo server over the protocol's framing.
    EchoServer,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Quiet unless RUST_LOG asks (say `RUST_LOG=transfer=debug` to see a
    // download's phases with their times).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // A closed stderr (the log reader went away) must not turn every
        // log line into a panic: the line is dropped instead.
        .log_internal_errors(false)
        .init();
    match Cli::parse().command {
        Command::Transfer {
            size,
            dir,
            runs,
            ours_only,
            verifier_threads,
            pipeline_depth,
            insecure,
            vs_insecure,
        } => {
            if insecure {
                // Before any connection of this process.
                let _ = common::secure::Security::install(common::secure::Security::insecure());
            }
            let mut engine = transfer::EngineConfig::default();
            if let Some(n) = verifier_threads {
                engine.verifier_threads = n;
            }
            if let Some(n) = pipeline_depth {
                engine.pipeline_depth = n;
            }
            let mode = transfer_bench::Mode {
                ours_only,
                insecure,
                vs_insecure,
                verifier_threads,
                pipeline_depth,
            };
            transfer_bench::transfer(size, dir, runs, mode, engine).await
        }
        Command::Capped {
            size,
            cap,
            sources,
            dir,
        } => transfer_bench::capped(size, cap, sources, dir).await,
        Command::Logins {
            clients,
            duration,
            index_cpus,
        } => login_bench::logins(clients, duration, index_cpus.as_deref()).await,
        Command::HandshakeParts { calls } => handshake_parts::run(calls.max(4)).await,
        Command::HashFolder { files, size, dir } => {
            transfer_bench::hash_folder(files, size, dir).await
        }
        Command::Index {
            files,
            clients,
            duration,
            baseline,
            rounds,
        } => index_load::run(files, clients, duration, baseline, rounds.max(1)).await,
        Command::SearchInProcess {
            files,
            repeat,
            only,
        } => index_load::search_in_process(files, repeat.max(1), only.as_deref()),
        Command::UploadQueue { requesters, rounds } => {
            upload_queue_bench::run(requesters, rounds).await
        }
        Command::EchoServer => index_load::echo_server().await,
        Command::Daemon { size, runs, dir } => daemon_bench::through_daemon(size, runs, dir).await,
        Command::DaemonList {
            active,
            queued,
            dir,
        } => daemon_bench::long_list(active, queued, dir).await,
    }
}

pub fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}
