//! `peer demo`: the whole hybrid model on loopback, narrated.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use peer::download::{DownloadRequest, EngineConfig, Progress};
use peer::index_client::IndexClient;
use peer::registrar::RegistrationState;
use peer::{Daemon, ServeConfig};
use tokio_util::sync::CancellationToken;

use crate::cli_output::human_size;

async fn start_peer(
    root: &Path,
    name: &str,
    index: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Daemon> {
    let mut config = ServeConfig::new(root.join(name), index.to_string());
    config.listen = "127.0.0.1:0".parse()?;
    config.nick = Some(name.to_string());
    // The demo writes its sample whole before sharing it (closed after writing).
    config.settle = Duration::ZERO;
    Ok(peer::serve::start(config, shutdown.child_token()).await?)
}

async fn wait_registered(daemon: &mut Daemon) -> anyhow::Result<(String, usize)> {
    let deadline = Duration::from_secs(20);
    let mut registration = daemon.registration().clone();
    let state = tokio::time::timeout(
        deadline,
        registration.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
    )
    .await
    .context("a peer did not register within 20 s")??
    .clone();
    match state {
        RegistrationState::Registered { addr, files, .. } => Ok((addr, files)),
        other => bail!("unexpected registration state {other:?}"),
    }
}

/// The demo was stopped by Ctrl-C or SIGTERM (exit status 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Runs the demo in a temporary folder; Ctrl-C or SIGTERM (`shutdown`)
/// stops it at once, whatever step it is at, with [`Interrupted`].
pub async fn run(size: u64, keep: bool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("p2pshare-demo-")
        .tempdir()?;
    // The peers and the index stop with this token: at the end of the demo,
    // or on an interruption (it is a child of `shutdown`).
    let stop = shutdown.child_token();
    let result = tokio::select! {
        r = narrate(tmp.path(), size, stop.clone()) => r,
        _ = shutdown.cancelled() => Err(Interrupted.into()),
    };
    stop.cancel();
    let identical = result?;
    if keep {
        let kept = tmp.keep();
        outln!("\nDone. Folders kept in {}.", kept.display());
    } else {
        outln!("\nDone. Everything was on 127.0.0.1 and has been cleaned up.");
    }
    if !identical {
        bail!("the fetched file differs from the original");
    }
    Ok(())
}

/// Writes `size` bytes of sample content into each of `paths`, a MiB at a
/// time on a blocking thread (never the whole file in memory), stopping
/// with [`Interrupted`] as soon as `stop` is cancelled.
async fn write_sample(
    paths: Vec<std::path::PathBuf>,
    size: u64,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::Write;
        let mut files = Vec::new();
        for p in &paths {
            let f = std::fs::File::create(p)
                .with_context(|| format!("cannot write {}", p.display()))?;
            files.push(std::io::BufWriter::new(f));
        }
        let mut piece = vec![0u8; 1 << 20];
        let mut written = 0u64;
        let mut seed = 42;
        while written < size {
            if stop.is_cancelled() {
                return Err(Interrupted.into());
            }
            let n = (size - written).min(piece.len() as u64) as usize;
            common::sample::fill(&mut piece[..n], seed);
            for f in &mut files {
                f.write_all(&piece[..n])?;
            }
            written += n as u64;
            seed += 1;
        }
        for f in &mut files {
            f.flush()?;
        }
        Ok(())
    })
    .await?
}

/// Whether two files hold the same bytes, read a MiB at a time.
async fn same_contents(a: std::path::PathBuf, b: std::path::PathBuf) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        use std::io::Read;
        let (mut fa, mut fb) = (std::fs::File::open(&a)?, std::fs::File::open(&b)?);
        if fa.metadata()?.len() != fb.metadata()?.len() {
            return Ok(false);
        }
        let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        loop {
            let n = fa.read(&mut ba)?;
            if n == 0 {
                return Ok(true);
            }
            fb.read_exact(&mut bb[..n])?;
            if ba[..n] != bb[..n] {
                return Ok(false);
            }
        }
    })
    .await?
}

/// The demo's steps; returns whether the fetched sample is byte-identical.
async fn narrate(root: &Path, size: u64, shutdown: CancellationToken) -> anyhow::Result<bool> {
    let root = root.to_path_buf();
    outln!(
        "p2pshare demo: the hybrid (Napster) model on loopback, in {}\n",
        root.display()
    );

    // 1. The index.
    let index_config = index_server::Config {
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    let server = index_server::Server::bind(index_config).await?;
    let index_addr = server.local_addr().to_string();
    let index_task = tokio::spawn(server.run(shutdown.child_token()));
    outln!("1. Index server listening on {index_addr}. It will only ever see file names and ids, never file data.");

    // 2. Shared folders.
    for (who, files) in [
        (
            "alice",
            vec![
                ("lecture notes.txt", NOTES.as_bytes().to_vec()),
                (
                    "canción de prueba.txt",
                    "¡Hola desde el modelo híbrido!\n".as_bytes().to_vec(),
                ),
            ],
        ),
        (
            "bob",
            vec![("photo.raw", common::sample::bytes(1 << 20, 7))],
        ),
        ("carol", vec![]),
    ] {
        std::fs::create_dir_all(root.join(who))?;
        for (name, data) in files {
            std::fs::write(root.join(who).join(name), data)?;
        }
    }
    let big = root.join("alice").join("big sample.bin");
    write_sample(
        vec![big.clone(), root.join("bob").join("big sample.bin")],
        size,
        shutdown.clone(),
    )
    .await?;
    outln!("2. Shared folders: alice has 3 files, bob has 2 (the {} 'big sample.bin' is on both), carol has none.", human_size(size));

    // 3. Peers.
    let mut alice = start_peer(&root, "alice", &index_addr, &shutdown).await?;
    let mut bob = start_peer(&root, "bob", &index_addr, &shutdown).await?;
    let mut carol = start_peer(&root, "carol", &index_addr, &shutdown).await?;
    for (name, d) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        let (addr, files) = wait_registered(d).await?;
        outln!("3. {name} hashed its folder, serves chunks on {} and registered {files} file(s) at the index as {addr}.", d.listen_addr());
    }

    // 4. Search and browse.
    let mut client = IndexClient::connect(&index_addr).await?;
    let stats = client.stats().await?;
    outln!(
        "4. Index stats: {} peers, {} distinct files, {}.",
        stats.peers,
        stats.files,
        human_size(stats.bytes)
    );
    let hits = client.search(vec!["sample".into()], 10).await?;
    outln!("   carol searches 'sample' (one request to the index, one answer):");
    for h in &hits {
        outln!(
            "     {}  {:>9}  {} source(s)  {}",
            h.id.short(),
            human_size(h.size),
            h.sources,
            h.name
        );
    }
    let listing = client.browse("alice").await?;
    outln!(
        "   carol browses alice: {}",
        listing
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some(hit) = hits.iter().find(|h| h.name == "big sample.bin") else {
        bail!("search did not find the sample")
    };

    // 5. Fetch directly from both holders.
    let (_, _, sources) = client
        .lookup(hit.id)
        .await?
        .context("the index lost the sample")?;
    let addrs: Vec<String> = sources.iter().map(|s| s.addr.clone()).collect();
    outln!(
        "5. The index says {} is at {}. carol now fetches it directly from those peers:",
        hit.id.short(),
        addrs.join(" and ")
    );
    // carol's downloads: the engine `peer get` uses, with its defaults.
    let carol_fetch = |id, name, sources| {
        let request = DownloadRequest {
            id,
            name,
            sources,
            out_dir: root.join("carol-downloads"),
        };
        peer::download::download(
            request,
            EngineConfig::default(),
            Arc::new(Progress::default()),
            None,
            peer::download::StartOnly,
            shutdown.child_token(),
        )
    };
    let started = Instant::now();
    let outcome = carol_fetch(hit.id, hit.name.clone(), addrs).await?;
    let secs = started.elapsed().as_secs_f64();
    for s in &outcome.per_source {
        outln!("     {} sent {} verified chunk(s)", s.addr, s.chunks);
    }
    outln!(
        "   {} in {:.2} s ({}/s) from {} source(s), every 256 KiB chunk checked against the id's hash list.",
        human_size(outcome.size),
        secs,
        human_size((outcome.size as f64 / secs.max(1e-6)) as u64),
        outcome.sources_used
    );
    let identical = same_contents(outcome.path.clone(), big).await?;
    outln!(
        "   {} is byte-identical to the original: {}",
        outcome.path.display(),
        if identical { "yes" } else { "NO" }
    );

    // 6. By name.
    let hybrid = peer::pipeline::Fetcher::Hybrid {
        index: index_addr.clone(),
    };
    let resolved = peer::pipeline::resolve(&hybrid, "canción de prueba.txt").await?;
    let small = carol_fetch(resolved.id, resolved.name, resolved.sources).await?;
    outln!(
        "6. carol fetched by exact name too: {}",
        small.path.display()
    );

    // 7. Uploads as the peers saw them.
    outln!(
        "7. Uploads: alice served {} chunk(s), bob {}; the index served no file data at all.",
        alice.uploads().chunks(),
        bob.uploads().chunks(),
    );

    shutdown.cancel();
    for d in [alice, bob, carol] {
        d.wait().await;
    }
    let _ = index_task.await;
    Ok(identical)
}

const NOTES: &str = "Three paradigms of file sharing:\n\
- client-server: one always-on server holds every file and serves every client;\n\
- pure peer-to-peer: no server, queries flood the overlay;\n\
- hybrid: a central index answers searches, peers transfer directly.\n";
