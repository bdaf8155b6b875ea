//! A connection to the index server, for the daemon and the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::hello::Protocol;
use common::id::FileId;
use common::identity::PeerId;
use common::index_proto::{
    ErrorCode, IndexRequest, IndexResponse, IndexStats, PeerReach, PeerSummary, Reach,
    SearchFilter, SearchHit, SharedFile, Source,
};
use common::limits::CONNECT_TIMEOUT;
use common::wire::{self, Deadlines, WireError};
use tokio::io::{BufReader, BufWriter};
use transfer::net::{ConnReader, ConnWriter};

/// How long to wait for the index to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`IndexClient::search_filtered`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchAnswer {
    /// Best first, at most the limit.
    pub hits: Vec<SearchHit>,
    /// Files that matched in all (`None`: an index too old to count).
    pub total: Option<u64>,
    /// Whether fewer hits are listed than matched.
    pub truncated: bool,
    /// Whether `total` is exact, not estimated (see `IndexResponse::SearchAnswer`).
    pub total_exact: bool,
}

/// Why talking to the index failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(
        "cannot reach the index server at {addr} (is it running? set the address with --index)"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("index server at {addr} did not answer the connection within {secs} s")]
    ConnectTimeout { addr: String, secs: u64 },
    #[error("talking to the index server: {0}")]
    Wire(WireError),
    #[error("the index server refused: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the index server sent an unexpected answer: {0}")]
    Unexpected(String),
    /// The index proved another key than the one pinned for it (the
    /// message says which, where it was pinned and how to change that).
    #[error("{0}")]
    WrongIndex(String),
}

/// Remembers the id the index listed for each of `sources`, which the
/// download engine then requires of them (`transfer::net::note_listed`).
fn note_listed<'a>(sources: impl Iterator<Item = &'a Source>) {
    for s in sources {
        transfer::net::note_listed(&s.addr, s.peer_id);
    }
}

/// Which key the index must prove (`peer --index-key`, or pinned on first
/// use in a sharing peer's `known_index` file).
#[derive(Debug, Clone, Default)]
pub struct IndexPin {
    /// Given with `--index-key`: always required.
    pub fixed: Option<PeerId>,
    /// The file of ids seen first, one `HOST:PORT ID` line per index.
    pub known: Option<PathBuf>,
}

static INDEX_PIN: std::sync::OnceLock<IndexPin> = std::sync::OnceLock::new();

/// Sets the process's [`IndexPin`], once, before the first connection to
/// an index (later calls are ignored).
pub fn set_index_pin(pin: IndexPin) {
    let _ = INDEX_PIN.set(pin);
}

/// The id pinned for the index at `addr` in `file`, if any.
fn pinned_in(file: &Path, addr: &str) -> Option<PeerId> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let (a, id) = line.trim().split_once(' ')?;
        (a == addr).then(|| id.trim().parse().ok()).flatten()
    })
}

/// Records `id` as the index at `addr`'s in `file` (its first use).
fn pin_first(file: &Path, addr: &str, id: PeerId) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| writeln!(f, "{addr} {id}"));
    match written {
        Ok(()) => {
            tracing::info!(index = %addr, index_id = %id, file = %file.display(), "pinned the index's id (first use)")
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot record the index's id")
        }
    }
}

// The cause is in the message, so it is a plain field, not a `source`
// (an error chain would say it twice; see `common::report`).
impl From<WireError> for IndexError {
    fn from(e: WireError) -> Self {
        IndexError::Wire(e)
    }
}

impl IndexError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            IndexError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub use transfer::net::connect_tcp;

/// Sources of one file for a swarming download.
#[derive(Debug, Clone)]
pub struct SwarmFound {
    pub name: String,
    pub size: u64,
    /// Peers holding the whole file.
    pub complete: Vec<Source>,
    /// Peers still downloading it, serving the chunks they have.
    pub partial: Vec<Source>,
}

/// One open connection to the index server.
pub struct IndexClient {
    /// The address connected to, to connect again (see [`Self::search_counted`]).
    addr: String,
    reader: BufReader<ConnReader>,
    writer: BufWriter<ConnWriter>,
    buf: Vec<u8>,
    /// Callback orders (`IndexResponse::CallbackOrder`) the index sent
    /// unasked, to a session that takes them, not yet taken by
    /// [`Self::take_orders`]; at most [`MAX_HELD_ORDERS`].
    orders: Vec<IndexResponse>,
    /// The connection's local port, when it was made to be shared (see
    /// [`Self::connect_shareable`]).
    local_port: Option<u16>,
    /// The index closed the connection on `LookupReach` (an older index):
    /// [`Self::lookup_reach`] asks with `Lookup` from then on.
    no_lookup_reach: bool,
    /// The index closed the connection on `LookupAddrs`: asked with
    /// `LookupReach` from then on.
    no_lookup_addrs: bool,
}

/// Most callback orders an [`IndexClient`] holds until they are taken;
/// more are dropped (the downloader asks again).
pub const MAX_HELD_ORDERS: usize = 64;

impl IndexClient {
    pub async fn connect(addr: &str) -> Result<Self, IndexError> {
        Self::connect_with(addr, false).await
    }

    /// [`Self::connect`] from a local port that other sockets may share
    /// (`SO_REUSEPORT`; see [`Self::local_port`]): the index connection of
    /// a peer that may punch holes (`IndexRequest::Punch`).
    pub async fn connect_shareable(addr: &str) -> Result<Self, IndexError> {
        Self::connect_with(addr, true).await
    }

    /// This end's address of the connection (the host's address toward
    /// the index: behind a NAT, its inside address).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.reader.get_ref().get_ref().local_addr().ok()
    }

    /// The local port of a connection made by [`Self::connect_shareable`].
    pub fn local_port(&self) -> Option<u16> {
        self.local_port
    }

    async fn connect_with(addr: &str, shareable: bool) -> Result<Self, IndexError> {
        let connected = if shareable {
            transfer::net::connect_shareable(addr, CONNECT_TIMEOUT)
                .await
                .map(|(s, port)| (s, Some(port)))
        } else {
            connect_tcp(addr, CONNECT_TIMEOUT).await.map(|s| (s, None))
        };
        let (stream, local_port) = match connected {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(IndexError::ConnectTimeout {
                    addr: addr.into(),
                    secs: CONNECT_TIMEOUT.as_secs(),
                })
            }
            Err(source) => {
                return Err(IndexError::Connect {
                    addr: addr.into(),
                    source,
                })
            }
        };
        let pin = INDEX_PIN.get().cloned().unwrap_or_default();
        let pinned = pin.known.as_deref().and_then(|file| pinned_in(file, addr));
        let (stream, _) = transfer::net::client(stream, Protocol::Index, None).await?;
        if let Some(got) = stream.remote() {
            let (expected, pinned_in, fix) = match (pin.fixed, pinned, &pin.known) {
                (Some(id), _, _) => (
                    Some(id),
                    "--index-key".to_string(),
                    "pass its new id with --index-key".to_string(),
                ),
                (None, Some(id), Some(file)) => (
                    Some(id),
                    file.display().to_string(),
                    format!("delete the line for {addr} in {}", file.display()),
                ),
                _ => (None, String::new(), String::new()),
            };
            match expected {
                Some(expected) if expected != got => {
                    return Err(IndexError::WrongIndex(format!(
                        "the index at {addr} proved id {got}, but {pinned_in} says {expected}: if the index's key was changed on purpose, {fix}; otherwise something is impersonating the index"
                    )))
                }
                Some(_) => {}
                None => {
                    if let Some(file) = &pin.known {
                        pin_first(file, addr, got);
                    }
                }
            }
        }
        let (r, w) = stream.into_split();
        Ok(IndexClient {
            addr: addr.to_string(),
            reader: BufReader::new(r),
            writer: BufWriter::new(w),
            buf: Vec::new(),
            orders: Vec::new(),
            local_port,
            no_lookup_reach: false,
            no_lookup_addrs: false,
        })
    }

    /// Sends one request and waits for its answer; an `Error` answer becomes `Err`.
    pub async fn request(&mut self, request: &IndexRequest) -> Result<IndexResponse, IndexError> {
        wire::send_message(&mut self.writer, request).await?;
        self.receive().await
    }

    /// Queues a request without waiting (pipelining); collect with [`Self::receive`].
    pub async fn queue(&mut self, request: &IndexRequest) -> Result<(), IndexError> {
        wire::write_message(&mut self.writer, request).await?;
        Ok(())
    }

    /// Flushes queued requests.
    pub async fn flush(&mut self) -> Result<(), IndexError> {
        use tokio::io::AsyncWriteExt;
        self.writer
            .flush()
            .await
            .map_err(|e| IndexError::Wire(WireError::Io(e)))
    }

    /// Reads the next answer.
    /// Callback orders that came between answers are kept for
    /// [`Self::take_orders`], not returned.
    pub async fn receive(&mut self) -> Result<IndexResponse, IndexError> {
        let deadlines = Deadlines::with_idle(ANSWER_TIMEOUT);
        loop {
            match wire::expect_message(&mut self.reader, &mut self.buf, deadlines).await? {
                // The message is shown to the user: never raw terminal control from the server.
                IndexResponse::Error { code, message } => {
                    return Err(IndexError::Refused {
                        code,
                        message: common::names::escape_for_terminal(&message).into_owned(),
                    })
                }
                order @ (IndexResponse::CallbackOrder { .. }
                | IndexResponse::RelayOrder { .. }
                | IndexResponse::RelayOrderAt { .. }
                | IndexResponse::RelayArrange { .. }
                | IndexResponse::PunchOrder { .. }) => self.hold_order(order),
                other => return Ok(other),
            }
        }
    }

    fn hold_order(&mut self, order: IndexResponse) {
        if self.orders.len() < MAX_HELD_ORDERS {
            self.orders.push(order);
        } else {
            tracing::debug!("too many callback orders held; dropping one");
        }
    }

    /// The callback orders received so far (see `IndexRequest::AcceptCallbacks`).
    pub fn take_orders(&mut self) -> Vec<IndexResponse> {
        std::mem::take(&mut self.orders)
    }

    /// Resolves when the server sends something unasked (`Ok`: read it
    /// with [`Self::receive_unasked`]) or closes the connection (`Err`).
    /// Cancel-safe: use it in a `select!` while no request is outstanding.
    pub async fn readable(&mut self) -> Result<(), IndexError> {
        use tokio::io::AsyncBufReadExt;
        match self.reader.fill_buf().await {
            Ok([]) => Err(IndexError::Wire(WireError::Closed)),
            Ok(_) => Ok(()),
            Err(e) => Err(IndexError::Wire(WireError::Io(e))),
        }
    }

    /// Reads one message the server sent unasked (after [`Self::readable`]):
    /// a callback order is held for [`Self::take_orders`]; anything else
    /// is an error.
    pub async fn receive_unasked(&mut self) -> Result<(), IndexError> {
        let deadlines = Deadlines::with_idle(common::limits::FRAME_TIMEOUT);
        match wire::expect_message(&mut self.reader, &mut self.buf, deadlines).await? {
            order @ (IndexResponse::CallbackOrder { .. }
            | IndexResponse::RelayOrder { .. }
            | IndexResponse::RelayOrderAt { .. }
            | IndexResponse::RelayArrange { .. }
            | IndexResponse::PunchOrder { .. }) => {
                self.hold_order(order);
                Ok(())
            }
            other => Err(IndexError::Unexpected(format!(
                "the index sent something unasked: {other:?}"
            ))),
        }
    }

    /// Every live holder of `id`, firewalled ones too, with how each is
    /// reached (`LookupReach`): (name, size, sources); `Ok(None)` when no
    /// online peer has it. An index older than `LookupReach` closes the
    /// connection: asked again with `Lookup` on a new one (every source
    /// listed then is direct).
    pub async fn lookup_reach(
        &mut self,
        id: FileId,
    ) -> Result<Option<(String, u64, Vec<common::index_proto::SourceReach>)>, IndexError> {
        let direct_only = |found: Option<(String, u64, Vec<Source>)>| {
            found.map(|(name, size, sources)| {
                let sources = sources
                    .into_iter()
                    .map(|source| common::index_proto::SourceReach {
                        source,
                        reach: Reach::Direct,
                    })
                    .collect();
                (name, size, sources)
            })
        };
        if self.no_lookup_reach {
            return Ok(direct_only(self.lookup(id).await?));
        }
        match self.request(&IndexRequest::LookupReach { id }).await {
            Ok(IndexResponse::SourcesReach {
                name,
                size,
                sources,
                ..
            }) => {
                note_listed(sources.iter().map(|s| &s.source));
                Ok(Some((name, size, sources)))
            }
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(IndexError::Wire(WireError::Closed | WireError::Io(_))) => {
                *self = IndexClient::connect(&self.addr).await?;
                self.no_lookup_reach = true;
                Ok(direct_only(self.lookup(id).await?))
            }
            Err(e) => Err(e),
        }
    }

    /// Every live holder of `id` with all its addresses (`LookupAddrs`:
    /// other proven addresses, and inside addresses of firewalled holders
    /// behind our own NAT): (name, size, sources); `Ok(None)` when no
    /// online peer has it. An index older than `LookupAddrs` closes the
    /// connection: asked again with [`Self::lookup_reach`] on a new one.
    pub async fn lookup_addrs(
        &mut self,
        id: FileId,
    ) -> Result<Option<(String, u64, Vec<common::index_proto::SourceAddrs>)>, IndexError> {
        let plain = |found: Option<(String, u64, Vec<common::index_proto::SourceReach>)>| {
            found.map(|(name, size, sources)| {
                let sources = sources
                    .into_iter()
                    .map(|source| common::index_proto::SourceAddrs {
                        source,
                        also: Vec::new(),
                        lan: Vec::new(),
                    })
                    .collect();
                (name, size, sources)
            })
        };
        if self.no_lookup_addrs {
            return Ok(plain(self.lookup_reach(id).await?));
        }
        match self.request(&IndexRequest::LookupAddrs { id }).await {
            Ok(IndexResponse::SourcesAddrs {
                name,
                size,
                sources,
                ..
            }) => Ok(Some((name, size, sources))),
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(IndexError::Wire(WireError::Closed | WireError::Io(_))) => {
                *self = IndexClient::connect(&self.addr).await?;
                self.no_lookup_addrs = true;
                Ok(plain(self.lookup_reach(id).await?))
            }
            Err(e) => Err(e),
        }
    }

    /// Resolves when the server closes the connection (or sends something
    /// unasked). Use it while idle, with no request outstanding.
    pub async fn closed(&mut self) -> IndexError {
        use tokio::io::AsyncBufReadExt;
        match self.reader.fill_buf().await {
            Ok([]) => IndexError::Wire(WireError::Closed),
            Ok(_) => IndexError::Unexpected("data the client did not ask for".into()),
            Err(e) => IndexError::Wire(WireError::Io(e)),
        }
    }

    pub async fn search(
        &mut self,
        words: Vec<String>,
        limit: u32,
    ) -> Result<Vec<SearchHit>, IndexError> {
        match self.request(&IndexRequest::Search { words, limit }).await? {
            IndexResponse::SearchResults { hits } => Ok(hits),
            other => Err(IndexError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Hits (at most `limit`) and how many files matched in all. The total
    /// is `None` when the index predates `SearchCounted`: it closes the
    /// connection on the unknown request, and the search is asked again
    /// the old way on a new connection.
    pub async fn search_counted(
        &mut self,
        words: Vec<String>,
        limit: u32,
    ) -> Result<(Vec<SearchHit>, Option<u64>), IndexError> {
        let request = IndexRequest::SearchCounted {
            words: words.clone(),
            limit,
        };
        match self.request(&request).await {
            Ok(IndexResponse::SearchPage { hits, total }) => Ok((hits, Some(total))),
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            Err(IndexError::Wire(WireError::Closed | WireError::Io(_))) => {
                *self = IndexClient::connect(&self.addr).await?;
                Ok((self.search(words, limit).await?, None))
            }
            Err(e) => Err(e),
        }
    }

    /// A search with filters at the index (see `common::search` for the
    /// words). An index older than `SearchFiltered` closes the connection:
    /// the search is asked again with `SearchCounted` when there is no
    /// filter, and refused with [`IndexError::Unexpected`] when there is.
    pub async fn search_filtered(
        &mut self,
        words: Vec<String>,
        limit: u32,
        filter: SearchFilter,
    ) -> Result<SearchAnswer, IndexError> {
        let request = IndexRequest::SearchFiltered {
            words: words.clone(),
            limit,
            filter: filter.clone(),
        };
        match self.request(&request).await {
            Ok(IndexResponse::SearchAnswer {
                hits,
                total,
                truncated,
                total_exact,
            }) => Ok(SearchAnswer {
                hits,
                total: Some(total),
                truncated,
                total_exact,
            }),
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            Err(IndexError::Wire(WireError::Closed | WireError::Io(_))) => {
                if filter != SearchFilter::default() {
                    return Err(IndexError::Unexpected(
                        "this index is older and cannot filter searches: leave out --min-size, --max-size, --ext and --type".into(),
                    ));
                }
                *self = IndexClient::connect(&self.addr).await?;
                let (hits, total) = self.search_counted(words, limit).await?;
                Ok(SearchAnswer {
                    truncated: total.is_some_and(|t| t > hits.len() as u64),
                    hits,
                    total,
                    total_exact: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Files one of whose live holders uses exactly this name (after
    /// normalization; the whole name or its last component), each under
    /// the matching name; not bound by the search-word limits.
    pub async fn lookup_name(&mut self, name: &str) -> Result<Vec<SearchHit>, IndexError> {
        match self
            .request(&IndexRequest::LookupName { name: name.into() })
            .await?
        {
            IndexResponse::SearchResults { hits } => Ok(hits),
            other => Err(IndexError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Files with a live holder whose id starts with `prefix`.
    pub async fn lookup_prefix(
        &mut self,
        prefix: &common::target::IdPrefix,
    ) -> Result<Vec<SearchHit>, IndexError> {
        let request = IndexRequest::LookupPrefix {
            prefix: prefix.as_str().into(),
        };
        match self.request(&request).await? {
            IndexResponse::SearchResults { hits } => Ok(hits),
            other => Err(IndexError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Live sources of `id`; `Ok(None)` when no online peer has it.
    pub async fn lookup(
        &mut self,
        id: FileId,
    ) -> Result<Option<(String, u64, Vec<Source>)>, IndexError> {
        match self.request(&IndexRequest::Lookup { id }).await {
            Ok(IndexResponse::Sources {
                name,
                size,
                sources,
                ..
            }) => {
                note_listed(sources.iter());
                Ok(Some((name, size, sources)))
            }
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Live sources of `id` for swarming: (name, size, complete, partial);
    /// `Ok(None)` when no online peer holds any of it.
    pub async fn swarm_lookup(&mut self, id: FileId) -> Result<Option<SwarmFound>, IndexError> {
        match self.request(&IndexRequest::SwarmLookup { id }).await {
            Ok(IndexResponse::SwarmSources {
                name,
                size,
                complete,
                partial,
                ..
            }) => {
                note_listed(complete.iter().chain(&partial));
                Ok(Some(SwarmFound {
                    name,
                    size,
                    complete,
                    partial,
                }))
            }
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A peer's whole list (all pages).
    pub async fn browse(&mut self, peer: &str) -> Result<Vec<SharedFile>, IndexError> {
        let mut all = Vec::new();
        let mut start = 0;
        loop {
            match self
                .request(&IndexRequest::Browse {
                    peer: peer.into(),
                    start,
                })
                .await?
            {
                IndexResponse::PeerFiles { files, next } => {
                    all.extend(files);
                    match next {
                        Some(n) if n > start => start = n,
                        _ => return Ok(all),
                    }
                }
                other => return Err(IndexError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Every online peer (all pages).
    pub async fn peers(&mut self) -> Result<Vec<PeerSummary>, IndexError> {
        let mut all = Vec::new();
        let mut start = 0;
        loop {
            match self.request(&IndexRequest::ListPeers { start }).await? {
                IndexResponse::Peers { peers, next } => {
                    all.extend(peers);
                    match next {
                        Some(n) if n > start => start = n,
                        _ => return Ok(all),
                    }
                }
                other => return Err(IndexError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Every online peer with how it can be reached (all pages). An index
    /// older than `ListPeersReach` closes the connection: the list is asked
    /// again the old way on a new connection, every peer shown as direct
    /// (before the check, every published address was).
    pub async fn peers_reach(&mut self) -> Result<Vec<PeerReach>, IndexError> {
        let mut all = Vec::new();
        let mut start = 0;
        loop {
            match self.request(&IndexRequest::ListPeersReach { start }).await {
                Ok(IndexResponse::PeersReach { peers, next }) => {
                    all.extend(peers);
                    match next {
                        Some(n) if n > start => start = n,
                        _ => return Ok(all),
                    }
                }
                Ok(other) => return Err(IndexError::Unexpected(format!("{other:?}"))),
                Err(IndexError::Wire(WireError::Closed | WireError::Io(_))) if start == 0 => {
                    *self = IndexClient::connect(&self.addr).await?;
                    let old = self.peers().await?;
                    return Ok(old
                        .into_iter()
                        .map(|summary| PeerReach {
                            summary,
                            reach: Reach::Direct,
                        })
                        .collect());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Where the online peer called `nick` is; `Ok(None)` when nobody online has that nickname.
    pub async fn whois(&mut self, nick: &str) -> Result<Option<PeerSummary>, IndexError> {
        match self
            .request(&IndexRequest::WhoIs { nick: nick.into() })
            .await
        {
            Ok(IndexResponse::Peers { peers, .. }) => Ok(peers.into_iter().next()),
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn stats(&mut self) -> Result<IndexStats, IndexError> {
        match self.request(&IndexRequest::Stats).await? {
            IndexResponse::Stats(s) => Ok(s),
            other => Err(IndexError::Unexpected(format!("{other:?}"))),
        }
    }
}
