//! Swarming downloads by a running daemon: the daemon fetches a file while
//! it serves, lists it at the index as partial as soon as it starts (or,
//! in p2p mode, answers searches from its partial holdings), passes on
//! every chunk it has verified, and keeps looking for new (partial)
//! sources while the download runs. The download itself is the one
//! pipeline of every mode ([`crate::pipeline`]), run with the daemon's
//! [`Swarming`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::id::FileId;
use tracing::debug;

use crate::download::{self, DownloadOutcome, EngineConfig, Progress};
use crate::pipeline::{self, FetchError, FetchOptions, Fetched, Fetcher, OwnAddrs, Swarming};
use crate::registrar::RegistrationState;
use crate::serve::Daemon;
use crate::target::Target;

/// The addresses a daemon listening on `listen` is known by, to leave out
/// of its own sources.
///
/// Read afresh on each call: a daemon that starts fetching at once is not
/// registered yet, and its published address, which the index later lists
/// among the partial sources, arrives with the registration.
pub(crate) fn own_addrs(
    listen: std::net::SocketAddr,
    registration: tokio::sync::watch::Receiver<RegistrationState>,
) -> OwnAddrs {
    let listen = listen.to_string();
    Arc::new(move || {
        let mut own = vec![listen.clone()];
        if let RegistrationState::Registered { addr, .. } = &*registration.borrow() {
            own.push(addr.clone());
        }
        own
    })
}

/// Where a daemon finds files: by flooding a search through its own
/// overlay node in p2p mode, else at its index.
pub(crate) fn daemon_fetcher(overlay: bool, listen: std::net::SocketAddr, index: &str) -> Fetcher {
    if overlay {
        Fetcher::P2p {
            via: listen.to_string(),
            ttl: crate::overlay::DEFAULT_TTL,
            wait: pipeline::P2P_SWARM_WAIT,
        }
    } else {
        Fetcher::Hybrid {
            index: index.to_string(),
        }
    }
}

impl Daemon {
    /// Where this daemon finds files (its mode: its index, or a flooding
    /// search through its own overlay node).
    pub fn fetcher(&self) -> Fetcher {
        daemon_fetcher(self.overlay().is_some(), self.listen_addr(), self.index())
    }

    /// What this daemon brings to its downloads: its library and addresses.
    pub fn swarming(&self) -> Swarming {
        Swarming {
            library: self.library().clone(),
            own: own_addrs(self.listen_addr(), self.registration().clone()),
        }
    }

    /// Fetches `target` into `out_dir` through the pipeline while serving
    /// it: the chunks verified so far are served to other peers (and the
    /// file is listed as partial) until it is complete, new complete and
    /// partial sources are looked up while it runs, and when `out_dir` is
    /// inside the shared folder the finished file is shared. Uses the
    /// daemon's download cap unless `engine` brings one. Content this
    /// daemon (or the folder) already holds is reported at once.
    pub async fn fetch(
        &self,
        target: &str,
        out_dir: PathBuf,
        mut engine: EngineConfig,
        progress: Arc<Progress>,
    ) -> Result<Fetched, FetchError> {
        if engine.download_limit.is_none() {
            engine.download_limit = self.download_limit().cloned();
        }
        let options = FetchOptions {
            swarming: Some(self.swarming()),
            callbacks: Some(crate::pipeline::CALLBACKS_ANY_PORT),
            ..FetchOptions::new(out_dir, engine, progress)
        };
        pipeline::fetch(
            &self.fetcher(),
            target,
            options,
            self.shutdown_token().child_token(),
        )
        .await
    }

    /// [`Daemon::fetch`] of a file by its id.
    pub async fn download(
        &self,
        id: FileId,
        out_dir: PathBuf,
        engine: EngineConfig,
        progress: Arc<Progress>,
    ) -> Result<DownloadOutcome, FetchError> {
        self.fetch(&id.to_hex(), out_dir, engine, progress)
            .await
            .map(|f| f.download)
    }
}

/// The engine settings for swarming downloads: one request at a time per
/// source and a budget of 32 requests in flight over all sources, so that
/// chunks spread through the swarm instead of queueing at every uploader
/// (measured by the lab at issue 17's settings, N = 32, one run each: 1.26
/// of the P2P bound against 1.32 with two per source and 24 in flight; the
/// seed and the peers serve chunks in turns, so a longer queue at an
/// uploader is a longer wait for every chunk there). The cost, on links
/// with a round trip: a partial source that serves nobody else idles for
/// one round trip between two of our chunks.
pub fn swarm_engine() -> EngineConfig {
    EngineConfig {
        pipeline_depth: 1,
        max_sources: 64,
        stall_timeout: Duration::from_secs(30),
        have_refresh: Duration::from_millis(100),
        max_in_flight: Some(32),
        ..EngineConfig::default()
    }
}

/// The engine settings of downloads handed to a daemon (its API, `peer
/// get` to a running daemon): one fast source alone gets the usual deep
/// pipeline; once a second source runs (a swarm: the daemon passes chunks
/// on while it fetches), [`swarm_engine`]'s one request per source, the
/// deeper requests taken back from sources that allow it. The budget of
/// 32 in flight, 64 sources and 30 s stall (a request may wait behind
/// others' at a slow uploader) are the swarm's too.
pub fn daemon_engine() -> EngineConfig {
    let swarm = swarm_engine();
    EngineConfig {
        pipeline_depth: download::DEFAULT_PIPELINE_DEPTH,
        swarm_pipeline_depth: Some(swarm.pipeline_depth),
        ..swarm
    }
}

/// Longest wait between two tries of one `--fetch` download.
const FETCH_RETRY_MAX: Duration = Duration::from_secs(60);

/// One target `peer serve --fetch` still has to fetch.
struct Pending {
    /// What was asked for; the id once it is resolved (asked for since).
    target: String,
    failures: u32,
    next_try: tokio::time::Instant,
    /// Until then, a target nobody offers is looked for again every second.
    give_up_waiting: tokio::time::Instant,
    /// The last failure logged as a warning (the same one is not repeated).
    warned: Option<String>,
}

/// `peer serve --fetch`: fetches each target (an id, id prefix or exact
/// name, see [`crate::target`]) into the daemon's shared folder while the
/// daemon serves, one download at a time, through [`Daemon::fetch`].
///
/// A target nobody offers yet is looked for again every second or so (a
/// seed may be registering right now), then less often; a name that no
/// one has offered for ten minutes, or an ambiguous one, is logged and
/// skipped. A download that fails for another reason (every source left,
/// a full disk or another I/O error) is tried again later, with backoff
/// from 1 s to [`FETCH_RETRY_MAX`], until it succeeds or the daemon stops,
/// while the other targets get their turn: freeing space or a source
/// coming back is enough, no restart needed. Each new reason is logged
/// once as a warning. Content already in the share counts as fetched.
pub async fn fetch_targets_into_share(daemon: &crate::Daemon, targets: &[Target]) {
    let out_dir = daemon.library().root().to_path_buf();
    let stop = daemon.shutdown_token();
    let now = tokio::time::Instant::now();
    let give_up_waiting = now + Duration::from_secs(600);
    // A flooding search from a node with no neighbour yet finds nothing:
    // wait for the overlay to form first.
    if let Some(overlay) = daemon.overlay() {
        while overlay.neighbours().is_empty() && tokio::time::Instant::now() < give_up_waiting {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    let mut said_missing = false;
    let mut pending: Vec<Pending> = targets
        .iter()
        .map(|t| Pending {
            target: t.to_string(),
            failures: 0,
            next_try: now,
            give_up_waiting,
            warned: None,
        })
        .collect();
    while !pending.is_empty() {
        let Some(k) = (0..pending.len()).min_by_key(|k| pending[*k].next_try) else {
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(pending[k].next_try) => {}
        }
        let job = &mut pending[k];
        // Never download into (and so create again) a shared folder that
        // was moved away: wait for it to come back.
        if !out_dir.is_dir() {
            if !said_missing {
                tracing::warn!(target = %job.target, folder = %out_dir.display(), "the shared folder is missing; fetching once it is back");
                said_missing = true;
            }
            job.next_try = tokio::time::Instant::now() + Duration::from_secs(1);
            continue;
        }
        tracing::info!(target = %job.target, folder = %out_dir.display(), "fetching into the shared folder");
        let resolved = Arc::new(std::sync::Mutex::new(None));
        let options = FetchOptions {
            swarming: Some(daemon.swarming()),
            callbacks: Some(crate::pipeline::CALLBACKS_ANY_PORT),
            on_resolved: Some({
                let resolved = resolved.clone();
                Box::new(move |id: String, _: String, _: u64| {
                    *resolved.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                })
            }),
            ..FetchOptions::new(
                out_dir.clone(),
                EngineConfig {
                    download_limit: daemon.download_limit().cloned(),
                    ..swarm_engine()
                },
                Arc::new(Progress::default()),
            )
        };
        let result =
            pipeline::fetch(&daemon.fetcher(), &job.target, options, stop.child_token()).await;
        if stop.is_cancelled() {
            return;
        }
        // Asked for by its id from now on.
        if let Some(id) = resolved.lock().unwrap_or_else(|p| p.into_inner()).take() {
            job.target = id;
        }
        match result {
            Ok(fetched) => {
                let outcome = fetched.download;
                if outcome.already_present {
                    tracing::info!(id = %outcome.id, path = %outcome.path.display(), "already in the shared folder");
                } else {
                    tracing::info!(id = %outcome.id, path = %outcome.path.display(), sources = outcome.sources_used, "fetched; now shared");
                }
                pending.remove(k);
            }
            Err(e) if !e.retryable() => {
                tracing::warn!(target = %job.target, error = %e, "cannot fetch; still serving");
                pending.remove(k);
            }
            Err(e) => {
                let not_yet = e.not_offered_yet();
                let message = e.to_string();
                job.failures += 1;
                let unresolved = job
                    .target
                    .parse::<Target>()
                    .is_ok_and(|t| !matches!(t, Target::Id(_)));
                if not_yet && unresolved && tokio::time::Instant::now() > job.give_up_waiting {
                    tracing::warn!(target = %job.target, error = %message, "cannot fetch; still serving");
                    pending.remove(k);
                    continue;
                }
                let wait = if not_yet && unresolved {
                    // A name or prefix nobody offers yet: every second.
                    Duration::from_secs(1)
                } else if not_yet {
                    // Nobody offers it yet: look again soon (a seed may be
                    // registering right now), then less often.
                    download::retry::backoff(
                        job.failures,
                        Duration::from_secs(1),
                        Duration::from_secs(10),
                    )
                } else {
                    download::retry::backoff(job.failures, Duration::from_secs(1), FETCH_RETRY_MAX)
                };
                if not_yet || job.warned.as_deref() == Some(message.as_str()) {
                    debug!(target = %job.target, error = %message, ?wait, "could not fetch yet; trying again");
                } else {
                    tracing::warn!(target = %job.target, error = %message, "could not fetch; still serving, and trying again with backoff (up to every {}s)", FETCH_RETRY_MAX.as_secs());
                    job.warned = Some(message);
                }
                job.next_try = tokio::time::Instant::now() + wait;
            }
        }
    }
}

/// [`fetch_targets_into_share`] of files known by their ids.
pub async fn fetch_into_share(daemon: &crate::Daemon, ids: &[FileId]) {
    let targets: Vec<Target> = ids.iter().map(|id| Target::Id(*id)).collect();
    fetch_targets_into_share(daemon, &targets).await;
}
