//! One path from a name to verified bytes, for every caller (the daemon's
//! download manager, `peer get`, `peer serve --fetch`, a daemon's swarming
//! downloads) and every mode.
//!
//! ```text
//!  target ("id" | "id prefix" | "exact name")
//!     |  Target::from_str, once                    (bad target: error)
//!     v
//!  already here? (a whole id only) ---- yes ----> DownloadOutcome (already_present)
//!     | no
//!     v
//!  locate: resolve where the mode looks, one ambiguity rule (target::decide)
//!     |   hybrid:        index LookupPrefix/LookupName, then Lookup
//!     |                  (SwarmLookup, complete + partial, for a daemon)
//!     |   p2p:           a flooding search through a node
//!     |   client-server: the index, among the files in its store
//!     v
//!  (id, name, size, first sources) ----> `resolved` callback (the daemon stores the id)
//!     |
//!     v                            source stream, asked again every `every`:
//!  download::download  <--------- hybrid:        index lookups      (IndexSources)
//!     |  (the one engine           p2p:           flooding searches  (FloodSources)
//!     |   entry point: verified    client-server: the server only    (FixedSources)
//!     |   chunks, part file,       (a daemon leaves its own addresses out)
//!     |   resume)
//!     v
//!  DownloadOutcome (the file under its final name; a daemon shares it)
//! ```
//!
//! A [`Fetcher`] says which mode; [`FetchOptions::swarming`] says that a
//! serving daemon runs the download (its verified chunks are served while
//! it runs, its own addresses are never its sources, the finished file is
//! shared, sources are looked up more often). Nothing else starts a
//! download from a name.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::id::FileId;
use tokio_util::sync::CancellationToken;

use crate::download::{
    self, DownloadError, DownloadOutcome, DownloadRequest, EngineConfig, FixedSources, Progress,
    SourceLookup,
};
use crate::index_client::{IndexClient, IndexError};
use crate::library::Library;
use crate::overlay::search::{flood, SearchError, SearchReport};
use crate::target::{self, Holders, ResolveError, Target, TargetError};

/// How often a standalone download asks the index again who offers its
/// file, so that it uses peers that joined and sources that came back.
pub const SOURCE_REFRESH: Duration = Duration::from_secs(1);

/// How often a daemon's (swarming) download asks the index for new
/// complete and partial sources: other downloaders appear quickly.
pub const SWARM_SOURCE_REFRESH: Duration = Duration::from_millis(200);

/// How often a standalone p2p download floods its search again for fresh
/// sources (each search costs about one message per overlay link).
pub const P2P_SOURCE_REFRESH: Duration = Duration::from_secs(2);

/// How often a daemon's p2p download floods its search again to find the
/// nodes that started downloading since (an overlay node answers from its
/// partial holdings too).
pub const P2P_SWARM_SOURCE_REFRESH: Duration = Duration::from_millis(300);

/// Longest wait between two of a daemon's p2p searches that brought no
/// new source. A flood costs about one message per overlay link and one
/// per hop back for every copy's answer: about 3,000 messages at 128 nodes
/// of degree 4 to 8, and 128 swarming downloaders searching every 2 s sent
/// 4.0 million overlay messages in a 24 s run (issue 17, read from the
/// daemons' stats logs), CPU the transfers needed. A swarm that finds no
/// one new has found its swarm; the gap grows to this.
pub const P2P_SWARM_SOURCE_REFRESH_MAX: Duration = Duration::from_secs(16);

/// Hops of a p2p source refresh once the download knows as many sources
/// as it may use (`EngineConfig::max_sources`): its neighbours and theirs,
/// the holders nearest it in the overlay. At 128 nodes a full flood costs
/// about 3,000 messages counting every copy's answer, one two hops out
/// about a hundred; the full floods already brought the far sources,
/// which the download keeps.
pub const P2P_NEAR_TTL: u8 = 2;

/// How long a daemon's p2p searches wait for answers.
pub const P2P_SWARM_WAIT: Duration = crate::overlay::DEFAULT_WAIT;

/// Where a daemon's downloads accept callbacks: any free port, on every
/// address (`FetchOptions::callbacks`).
pub const CALLBACKS_ANY_PORT: std::net::SocketAddr = std::net::SocketAddr::V6(
    std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, 0, 0, 0),
);

/// Where a download's file is resolved and its sources come from.
#[derive(Debug, Clone)]
pub enum Fetcher {
    /// The index resolves the target and lists the peers that offer it.
    Hybrid { index: String },
    /// A flooding search through `via` (with hop limit `ttl`, answers
    /// collected for `wait`) resolves it and finds the nodes.
    P2p {
        via: String,
        ttl: u8,
        wait: Duration,
    },
    /// The index server's store is the only source.
    ClientServer { server: String },
}

/// The addresses a serving daemon is known by (read afresh on each call:
/// its published address arrives with its registration).
pub type OwnAddrs = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// What a serving daemon brings to a download (see the module docs).
#[derive(Clone)]
pub struct Swarming {
    /// Its library: the verified chunks are served from it while the
    /// download runs, and the finished file is shared through it.
    pub library: Library,
    /// Its own addresses, never used as sources.
    pub own: OwnAddrs,
}

/// Called once with (id in hex, name, size) when the file is known.
pub type OnResolved = Box<dyn FnOnce(String, String, u64) + Send>;

/// Where the bytes go and how the engine runs.
pub struct FetchOptions {
    pub out_dir: PathBuf,
    pub engine: EngineConfig,
    pub progress: Arc<Progress>,
    /// Set when a serving daemon runs the download; `None` for a
    /// standalone `peer get`.
    pub swarming: Option<Swarming>,
    /// Told the file once it is resolved (the daemon records it, so a
    /// restarted download asks for the id, not the name again).
    pub on_resolved: Option<OnResolved>,
    /// Where to accept callbacks (`crate::callback`) from sources that
    /// accept no connections (hybrid mode): with it, firewalled sources
    /// (complete holders) are used too, each reached by callback to this
    /// address's port, by hole punch or through the index's relay
    /// (`peer get`, a daemon's downloads); `None`: only sources that can
    /// be dialed.
    pub callbacks: Option<std::net::SocketAddr>,
}

impl FetchOptions {
    /// A standalone download into `out_dir`.
    pub fn new(out_dir: PathBuf, engine: EngineConfig, progress: Arc<Progress>) -> Self {
        FetchOptions {
            out_dir,
            engine,
            progress,
            swarming: None,
            on_resolved: None,
            callbacks: None,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not an id, an id prefix or a name.
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    /// Nothing, or several different files, match the target.
    #[error(transparent)]
    Target(ResolveError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Search(#[from] SearchError),
    /// The file is known but nobody offers it right now.
    #[error("no online peer offers file {0} right now")]
    NotOffered(FileId),
    #[error("the server at {0} does not hold this file in its store (upload it with `peer put`, or use the hybrid mode to fetch from peers)")]
    NotInStore(String),
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// The listener for callbacks could not be opened.
    #[error("cannot listen for callbacks at {addr}: {reason}")]
    Callbacks {
        addr: std::net::SocketAddr,
        reason: std::io::Error,
    },
}

impl From<ResolveError> for FetchError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Index(e) => FetchError::Index(e),
            other => FetchError::Target(other),
        }
    }
}

impl FetchError {
    /// Whether it stopped because `shutdown` was cancelled (exit status
    /// 130; the part file resumes).
    pub fn interrupted(&self) -> bool {
        matches!(
            self,
            FetchError::Download(DownloadError::Interrupted { .. })
        )
    }

    /// Whether trying again later may succeed (not for a malformed or
    /// ambiguous target).
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            FetchError::BadTarget(_) | FetchError::Target(ResolveError::Ambiguous { .. })
        )
    }

    /// Whether it failed because nobody offers the file yet (a seed may be
    /// registering right now: worth looking again soon).
    pub fn not_offered_yet(&self) -> bool {
        matches!(
            self,
            FetchError::NotOffered(_) | FetchError::Target(ResolveError::NotFound { .. })
        )
    }

    /// Whether the index or the overlay node asked turned the connection
    /// away as busy (its connection cap): a moment's load, worth trying
    /// again soon.
    pub fn busy(&self) -> bool {
        use common::hello::HelloError;
        use common::wire::WireError;
        matches!(
            self,
            FetchError::Index(IndexError::Wire(WireError::Hello(HelloError::Busy)))
                | FetchError::Search(SearchError::Wire {
                    reason: WireError::Hello(HelloError::Busy),
                    ..
                })
        )
    }
}

/// A finished fetch: the download, and in p2p mode the flooding search
/// that found the file (none when the file was already here). As JSON
/// (`peer get --json`): the download's fields, and `search` when there is one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fetched {
    #[serde(flatten)]
    pub download: DownloadOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchReport>,
}

/// The file a target stands for, and where to start fetching it.
#[derive(Debug, Clone)]
pub struct Located {
    pub id: FileId,
    /// The name to save it under (the one asked for, when it was a name).
    pub name: String,
    pub size: u64,
    /// Its first sources.
    pub sources: Vec<String>,
    /// The flooding search that found it (p2p mode).
    pub search: Option<SearchReport>,
    /// How the index lists those of `sources` it knows (firewalled ones:
    /// reached by callback; every address of each, for Happy Eyeballs and
    /// a peer behind our own NAT); listed only when asked for.
    pub reach: Vec<common::index_proto::SourceAddrs>,
}

/// The first step of [`fetch`] alone: the file `target` stands for where
/// `fetcher` looks, and its sources now.
pub async fn resolve(fetcher: &Fetcher, target: &str) -> Result<Located, FetchError> {
    locate(fetcher, &Target::from_str(target)?, None, false).await
}

/// Resolves `target`, streams its sources per `fetcher`, and downloads it
/// with the one engine entry point ([`download::download`]).
pub async fn fetch(
    fetcher: &Fetcher,
    target: &str,
    options: FetchOptions,
    shutdown: CancellationToken,
) -> Result<Fetched, FetchError> {
    let target = Target::from_str(target)?;
    let FetchOptions {
        out_dir,
        engine,
        progress,
        swarming,
        on_resolved,
        callbacks,
    } = options;
    let mut engine = engine;
    // Callbacks, punches and relays: hybrid mode only.
    let callbacks = callbacks.filter(|_| matches!(fetcher, Fetcher::Hybrid { .. }));
    let library = swarming.as_ref().map(|s| s.library.clone());
    // A whole id already here (in the folder, the share around it, or the
    // daemon's library) needs no network at all.
    if let Target::Id(id) = &target {
        if let Some(done) =
            download::already_present(*id, &out_dir, library.as_ref(), &progress).await
        {
            return Ok(Fetched {
                download: done,
                search: None,
            });
        }
    }
    let own = swarming.as_ref().map(|s| s.own.clone());
    // A `peer get` with callbacks listens and logs in at the index for
    // them while the file is looked up, so that a callback later does not
    // wait for the login and its dial-back (a daemon's downloads log in on
    // first need: most never need it). Aborted when this returns.
    let mut early = match (fetcher, callbacks) {
        (Fetcher::Hybrid { index }, Some(listen)) if swarming.is_none() => Some(
            crate::callback::Callbacks::listen(index, listen).map_err(|e| {
                FetchError::Callbacks {
                    addr: listen,
                    reason: e,
                }
            })?,
        ),
        _ => None,
    };
    let mut warming = tokio::task::JoinSet::new();
    if let Some(cb) = early.clone() {
        warming.spawn(async move { cb.warm().await });
    }
    // Resolving waits on the network (an index that accepts and never
    // answers holds it for the hello timeout): it stops with the rest.
    let located = tokio::select! {
        located = locate(fetcher, &target, own.as_ref(), callbacks.is_some()) => located?,
        _ = shutdown.cancelled() => {
            return Err(FetchError::Download(DownloadError::Interrupted { done: 0, total: 0 }))
        }
    };
    if let Some(tell) = on_resolved {
        tell(located.id.to_hex(), located.name.clone(), located.size);
    }
    let request = DownloadRequest {
        id: located.id,
        name: located.name,
        sources: located.sources,
        out_dir,
    };
    let swarm = swarming.is_some();
    let id = located.id;
    let result = match fetcher {
        Fetcher::Hybrid { index } => {
            let callbacks = match callbacks {
                Some(listen) => {
                    let cb = match early.take() {
                        Some(cb) => cb,
                        None => crate::callback::Callbacks::listen(index, listen).map_err(|e| {
                            FetchError::Callbacks {
                                addr: listen,
                                reason: e,
                            }
                        })?,
                    };
                    cb.set_file(id);
                    cb.note(located.reach.clone());
                    engine.connector = Some(Arc::new(cb.clone()));
                    Some(cb)
                }
                None => None,
            };
            let lookup = IndexSources {
                index: index.clone(),
                id,
                client: None,
                callbacks,
                own,
                every: if swarm {
                    SWARM_SOURCE_REFRESH
                } else {
                    SOURCE_REFRESH
                },
            };
            download::download(request, engine, progress, library.clone(), lookup, shutdown)
                .await
                .map_err(FetchError::from)
        }
        Fetcher::P2p { via, ttl, wait } => {
            let (every, most, wait) = if swarm {
                (
                    P2P_SWARM_SOURCE_REFRESH,
                    P2P_SWARM_SOURCE_REFRESH_MAX,
                    P2P_SWARM_WAIT,
                )
            } else {
                (P2P_SOURCE_REFRESH, P2P_SOURCE_REFRESH, *wait)
            };
            let lookup = FloodSources {
                via: via.clone(),
                id,
                ttl: *ttl,
                wait,
                own,
                every,
                most,
                now: every,
                seen: Default::default(),
                enough: engine.max_sources,
            };
            download::download(request, engine, progress, library.clone(), lookup, shutdown)
                .await
                .map_err(FetchError::from)
        }
        Fetcher::ClientServer { server } => {
            // The server stays the only source; offering it again lets the
            // engine try it again with backoff if it went away or was busy.
            let lookup = FixedSources {
                sources: vec![server.clone()],
                every: SOURCE_REFRESH,
            };
            match download::download(request, engine, progress, library.clone(), lookup, shutdown)
                .await
            {
                Err(DownloadError::NoHashList(_)) => Err(FetchError::NotInStore(server.clone())),
                other => other.map_err(FetchError::from),
            }
        }
    };
    let download = result?;
    if let Some(lib) = &library {
        // Shared at once when it landed in the shared folder (written whole
        // and closed: no need to wait for it to settle).
        match &download.verified {
            Some((stamp, info)) => lib.downloaded(&download.path, *stamp, info.clone()),
            None => lib.closed_after_writing(&download.path),
        }
    }
    Ok(Fetched {
        download,
        search: located.search,
    })
}

/// Finds the file `target` stands for, where `fetcher` looks, and its
/// first sources (less `own`).
async fn locate(
    fetcher: &Fetcher,
    target: &Target,
    own: Option<&OwnAddrs>,
    with_firewalled: bool,
) -> Result<Located, FetchError> {
    match fetcher {
        Fetcher::Hybrid { index } => {
            let mut client = IndexClient::connect(index).await?;
            let chosen = target::resolve_at_index(&mut client, target, Holders::Any).await?;
            let mut reach = Vec::new();
            let found = if with_firewalled && own.is_none() {
                client
                    .lookup_addrs(chosen.id)
                    .await?
                    .map(|(name, size, sources)| {
                        let addrs: Vec<String> = sources
                            .iter()
                            .map(|s| s.source.source.addr.clone())
                            .collect();
                        reach = sources;
                        (name, size, addrs)
                    })
            } else if own.is_some() {
                client.swarm_lookup(chosen.id).await?.map(|f| {
                    let sources = f.complete.iter().chain(&f.partial).map(|s| s.addr.clone());
                    (f.name, f.size, sources.collect())
                })
            } else {
                client
                    .lookup(chosen.id)
                    .await?
                    .map(|(name, size, sources)| {
                        (name, size, sources.into_iter().map(|s| s.addr).collect())
                    })
            };
            // A swarming download lists complete and partial holders that
            // can be dialed; the firewalled complete ones come from here
            // (and every holder's other addresses).
            let mut found = found;
            if with_firewalled && own.is_some() {
                if let Some((name, size, holders)) = client.lookup_addrs(chosen.id).await? {
                    let (_, _, sources) = found.get_or_insert_with(|| (name, size, Vec::new()));
                    for h in &holders {
                        if h.source.reach == common::index_proto::Reach::Firewalled {
                            sources.push(h.source.source.addr.clone());
                        }
                    }
                    reach = holders;
                }
            }
            let Some((name, size, sources)) = found else {
                return Err(FetchError::NotOffered(chosen.id));
            };
            let sources = others(own, sources);
            if sources.is_empty() {
                return Err(FetchError::NotOffered(chosen.id));
            }
            Ok(Located {
                id: chosen.id,
                name: saved_name(chosen.name, name),
                size,
                sources,
                search: None,
                reach,
            })
        }
        Fetcher::ClientServer { server } => {
            let mut client = IndexClient::connect(server).await?;
            let chosen = target::resolve_at_index(&mut client, target, Holders::Store).await?;
            let Some((name, size, _)) = client.lookup(chosen.id).await? else {
                return Err(FetchError::NotOffered(chosen.id));
            };
            Ok(Located {
                id: chosen.id,
                name: saved_name(chosen.name, name),
                size,
                // Only ever the server, never another peer.
                sources: vec![server.clone()],
                search: None,
                reach: Vec::new(),
            })
        }
        Fetcher::P2p { via, ttl, wait } => {
            let report = flood(via, target::overlay_words(target), *ttl, *wait).await?;
            let (hit, chosen) = target::resolve_in_hits(target, &report.hits, *ttl)?;
            let size = hit.size;
            let hex = chosen.id.to_hex();
            let sources = others(
                own,
                report
                    .hits
                    .iter()
                    .filter(|h| h.id == hex)
                    .flat_map(|h| h.sources.iter().cloned())
                    .collect(),
            );
            if sources.is_empty() {
                return Err(FetchError::Target(ResolveError::NotFound {
                    target: target.to_string(),
                    kind: target::Kind::Id,
                    place: format!("no other node within {ttl} hops"),
                    hint: "raise --ttl or --wait, or try another --via node".into(),
                }));
            }
            Ok(Located {
                id: chosen.id,
                name: chosen.name,
                size,
                sources,
                search: Some(report),
                reach: Vec::new(),
            })
        }
    }
}

/// The addresses in `addrs` that are not in `own` (if any).
fn others(own: Option<&OwnAddrs>, addrs: Vec<String>) -> Vec<String> {
    let mut addrs = addrs;
    if let Some(own) = own {
        let own = own();
        addrs.retain(|a| !own.contains(a));
    }
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(a.clone()));
    addrs
}

/// The sources the index lists for one file now (with the partial ones
/// for a swarming daemon, less its own addresses). Reconnects to the index
/// after a failure.
struct IndexSources {
    index: String,
    id: FileId,
    client: Option<IndexClient>,
    /// Set when firewalled sources are used too (reached by callback):
    /// told how each source is reached.
    callbacks: Option<crate::callback::Callbacks>,
    own: Option<OwnAddrs>,
    every: Duration,
}

impl SourceLookup for IndexSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        if self.client.is_none() {
            self.client = IndexClient::connect(&self.index).await.ok();
        }
        let client = self.client.as_mut()?;
        let found = if let (Some(cb), None) = (&self.callbacks, &self.own) {
            client
                .lookup_addrs(self.id)
                .await
                .map(|f| f.map(|(_, _, sources)| cb.note(sources)))
        } else if self.own.is_some() {
            client.swarm_lookup(self.id).await.map(|f| {
                f.map(|f| {
                    f.complete
                        .into_iter()
                        .chain(f.partial)
                        .map(|s| s.addr)
                        .collect()
                })
            })
        } else {
            client
                .lookup(self.id)
                .await
                .map(|f| f.map(|(_, _, s)| s.into_iter().map(|s| s.addr).collect()))
        };
        // A swarming download with callbacks: the firewalled complete
        // holders too (and every holder's other addresses).
        let found = match (found, &self.callbacks, &self.own) {
            (Ok(found), Some(cb), Some(_)) => match client.lookup_addrs(self.id).await {
                Ok(holders) => {
                    let holders = holders.map(|(_, _, h)| h).unwrap_or_default();
                    let firewalled: Vec<String> = holders
                        .iter()
                        .filter(|h| h.source.reach == common::index_proto::Reach::Firewalled)
                        .map(|h| h.source.source.addr.clone())
                        .collect();
                    cb.note(holders);
                    let mut found = found.unwrap_or_default();
                    found.extend(firewalled);
                    Ok(Some(found))
                }
                Err(e) => Err(e),
            },
            (found, _, _) => found,
        };
        match found {
            Ok(found) => Some(others(self.own.as_ref(), found.unwrap_or_default())),
            Err(e) => {
                tracing::debug!(error = %e, "index lookup failed; reconnecting next time");
                self.client = None;
                None
            }
        }
    }

    fn every(&self) -> Option<Duration> {
        Some(self.every)
    }
}

/// The nodes that answer a flooding search for one id now (complete or
/// partial holders), less `own`.
///
/// Searched again `every` while searches bring nodes not seen before;
/// each search that brings none doubles the wait, up to `most`
/// ([`P2P_SOURCE_REFRESH`], or [`P2P_SWARM_SOURCE_REFRESH_MAX`] for a
/// daemon's swarming download): a flood costs a message per overlay link
/// and more for the answers, and at 128 nodes the floods took the cores
/// the transfers needed. Once the download knows `enough` sources (as many
/// as it may use), a refresh floods only [`P2P_NEAR_TTL`] hops.
struct FloodSources {
    via: String,
    id: FileId,
    ttl: u8,
    wait: Duration,
    own: Option<OwnAddrs>,
    every: Duration,
    /// The longest wait.
    most: Duration,
    /// The wait before the next search.
    now: Duration,
    /// Every source address a search has brought.
    seen: std::collections::HashSet<String>,
    /// Sources known past which refreshes stay near.
    enough: usize,
}

impl SourceLookup for FloodSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        let hex = self.id.to_hex();
        let ttl = if self.seen.len() >= self.enough {
            self.ttl.min(P2P_NEAR_TTL)
        } else {
            self.ttl
        };
        let report = match flood(&self.via, vec![hex.clone()], ttl, self.wait).await {
            Ok(report) => report,
            Err(e) => {
                tracing::debug!(error = %e, "p2p source refresh failed; keeping the sources we have");
                return None;
            }
        };
        let found = report
            .hits
            .into_iter()
            .filter(|h| h.id == hex)
            .flat_map(|h| h.sources)
            .collect();
        let found = others(self.own.as_ref(), found);
        let mut new = false;
        for a in &found {
            new |= self.seen.insert(a.clone());
        }
        self.now = if new {
            self.every
        } else {
            (self.now * 2).min(self.every.max(self.most))
        };
        tracing::debug!(
            ttl,
            new,
            found = found.len(),
            next = ?self.now,
            messages = report.messages,
            reached = report.nodes_reached,
            ms = report.elapsed_ms,
            "p2p source refresh"
        );
        Some(found)
    }

    fn every(&self) -> Option<Duration> {
        Some(self.now)
    }
}

/// The name a download is saved under: the name asked for when the target
/// was a name (`asked` not empty), else the name the index lists.
fn saved_name(asked: String, listed: String) -> String {
    if asked.is_empty() {
        listed
    } else {
        asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::hello::Protocol;
    use common::overlay_proto::{OverlayFile, OverlayMessage};
    use common::wire::{self, Deadlines};
    use std::sync::Mutex;
    use tokio::net::TcpListener;

    /// A fake overlay node: each search gets the sources of its turn in
    /// `turns` (the last one repeats), all answered as if one hop out;
    /// returns its address and the TTL of every query it received.
    async fn fake_node(id: FileId, turns: Vec<Vec<u16>>) -> (String, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let ttls = Arc::new(Mutex::new(Vec::new()));
        let seen = ttls.clone();
        tokio::spawn(async move {
            for turn in (0..).map(|k: usize| turns[k.min(turns.len() - 1)].clone()) {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (_, mut s) = transfer::net::accept(s, &[Protocol::Overlay], |_| false, |_| 0)
                    .await
                    .unwrap();
                let mut buf = Vec::new();
                let idle = Deadlines::with_idle(Duration::from_secs(5));
                let _connect: OverlayMessage =
                    wire::expect_message(&mut s, &mut buf, idle).await.unwrap();
                let welcome = OverlayMessage::Welcome {
                    your_addr: "127.0.0.1:1".into(),
                };
                wire::send_message(&mut s, &welcome).await.unwrap();
                let OverlayMessage::Query { id: qid, ttl, .. } =
                    wire::expect_message(&mut s, &mut buf, idle).await.unwrap()
                else {
                    panic!("a query was expected");
                };
                seen.lock().unwrap().push(ttl);
                let file = OverlayFile {
                    id,
                    name: "f.bin".into(),
                    size: 5,
                };
                // The node reached first claims the other answers as its copies.
                for (k, port) in turn.iter().enumerate() {
                    let hit = OverlayMessage::QueryHit {
                        id: qid,
                        responder: format!("127.0.0.1:{port}"),
                        files: vec![file.clone()],
                        distance: u8::from(k > 0),
                        forwarded: if k == 0 { turn.len() as u32 - 1 } else { 0 },
                        duplicate: false,
                    };
                    wire::send_message(&mut s, &hit).await.unwrap();
                }
            }
        });
        (addr, ttls)
    }

    #[tokio::test]
    async fn p2p_refreshes_back_off_while_nothing_is_new_and_stay_near_once_enough_are_known() {
        let id = common::id::content_info(b"hello").id;
        let turns = vec![
            vec![1001, 1002],
            vec![1001, 1002, 1003],
            vec![1001, 1002, 1003],
            vec![1001, 1002, 1003],
            vec![1001, 1002, 1003],
            vec![1001, 1002, 1003],
            vec![1004],
        ];
        let (via, ttls) = fake_node(id, turns).await;
        let mut lookup = FloodSources {
            via,
            id,
            ttl: 7,
            wait: Duration::from_secs(5),
            own: None,
            every: Duration::from_millis(300),
            most: Duration::from_secs(2),
            now: Duration::from_millis(300),
            seen: Default::default(),
            enough: 3,
        };
        let mut waits = Vec::new();
        for _ in 0..7 {
            assert!(lookup.sources().await.is_some());
            waits.push(lookup.every().unwrap().as_millis());
        }
        // Full floods until three sources are known, then two hops.
        assert_eq!(*ttls.lock().unwrap(), vec![7, 7, 2, 2, 2, 2, 2]);
        // New sources keep the short wait; none doubles it up to `most`;
        // a new one brings it back.
        assert_eq!(waits, vec![300, 300, 600, 1200, 2000, 2000, 300]);
    }
}
