//! The p2pshare scale lab: runs an index and many peers in one process on
//! loopback and measures what Kurose & Ross chapter 2 and the lecture predict.
//!
//! Every experiment writes `NAME.csv`, `NAME.svg`, `NAME.png` and `NAME.md`
//! (a short summary) into the output folder.
//!
//! # Layout
//! - [`distribution`]: time to distribute a file to N peers, client-server
//!   (the index server's store), hybrid swarming and p2p swarming over the
//!   flooding overlay, beside the textbook's lower bounds.
//! - [`index_load`]: register, lookup and search throughput and latency of
//!   the index server, and its memory per indexed file.
//! - [`connections`]: non-persistent, persistent and pipelined fetches over
//!   a link with user-space RTT and bandwidth, beside the lecture's model.
//! - [`search_cost`]: messages, reach and hit rate per query: the index and
//!   flooding on real overlay nodes measured, flooding on a random graph as
//!   a model.
//! - [`sessions`]: the index under 10,000 peer sessions that log in,
//!   register files and heartbeat while clients search (memory per
//!   session, heartbeat CPU, search latency), spread over processes.
//! - [`report`]: CSV, plots (SVG and PNG) and progress lines.
//! - [`netns`]: hosts in network namespaces on a switch, links shaped by
//!   the kernel (`--net netns`; a topology builder for tests too).
//! - [`stack`]: the distribution on a Docker Swarm stack (`--engine swarm`).

pub mod bittorrent;
pub mod connections;
pub mod distribution;
pub mod index_load;
pub mod netns;
pub mod processes;
pub mod reachability;
pub mod report;
mod samples;
pub mod search_cost;
pub mod sessions;
pub mod stack;
pub mod uplinks;

use std::path::PathBuf;

/// Raises this process's soft limit of open files to its hard limit (the
/// children started later inherit it); returns the soft limit now.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// Why an experiment failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot write {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("plotting {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("{0}")]
    Setup(String),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

// The cause is in the message, so it is a plain field, not a `source`
// (an error chain would say it twice; see `common::report`).
impl From<std::io::Error> for LabError {
    fn from(e: std::io::Error) -> Self {
        LabError::Io(e)
    }
}

impl LabError {
    pub(crate) fn setup(e: impl std::fmt::Display) -> Self {
        LabError::Setup(e.to_string())
    }
}

/// Binds an index server on a loopback port (whatever `config.listen` says).
pub(crate) async fn bind_index(
    config: index_server::Config,
) -> Result<index_server::Server, LabError> {
    bind_index_at(config, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// Binds an index server on a free port of `ip` (whatever `config.listen`
/// says).
pub(crate) async fn bind_index_at(
    config: index_server::Config,
    ip: std::net::IpAddr,
) -> Result<index_server::Server, LabError> {
    index_server::Server::bind(index_server::Config {
        listen: std::net::SocketAddr::new(ip, 0),
        // Every simulated peer and client may come from 127.0.0.1.
        max_connections_per_ip: config.max_connections,
        ..config
    })
    .await
    .map_err(LabError::setup)
}

/// Runs `server` until the returned token is cancelled (then await the
/// handle).
pub(crate) fn run_index(
    server: index_server::Server,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = server.run(stop).await;
        }
    });
    (stop, task)
}

/// The files an experiment wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub csv: PathBuf,
    pub svg: PathBuf,
    pub png: PathBuf,
    pub summary: PathBuf,
}

/// Bytes per second as `12.3 MB/s`.
pub fn human_rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec))
}

/// Bytes as `12.3 MB` (powers of 1000) or `256 KiB`-style when exact.
pub fn human_bytes(bytes: f64) -> String {
    let kib = 1024.0;
    if bytes >= kib * kib && (bytes / (kib * kib)).fract() == 0.0 {
        format!("{} MiB", bytes / (kib * kib))
    } else if bytes >= kib && (bytes / kib).fract() == 0.0 {
        format!("{} KiB", bytes / kib)
    } else if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}
