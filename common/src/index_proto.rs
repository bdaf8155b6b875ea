//! Messages between a peer (or a command-line client) and the index server.
//!
//! After the hello, the client sends [`IndexRequest`] frames and the server
//! answers each with exactly one [`IndexResponse`], in order, so requests may
//! be pipelined. A peer that shares files first sends [`IndexRequest::Login`];
//! its registrations then belong to that connection's session and vanish when
//! the connection closes or its lease runs out. Plain clients (search, get,
//! browse) never log in.
//!
//! The one exception: a session that sent [`IndexRequest::AcceptCallbacks`]
//! may also be sent `CallbackOrder`, `PunchOrder` and `RelayOrder` frames,
//! unasked, between two answers (reachability, issue 15; `DESIGN.md`).
//!
//! New variants are only ever appended, so the encoding of existing ones
//! (pinned in the tests) never changes within a protocol version.

use serde::{Deserialize, Serialize};

use crate::id::FileId;
use crate::identity::PeerId;

/// One file a peer offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFile {
    pub id: FileId,
    /// The file's name (its path relative to the shared folder, `/`-separated).
    /// A label for search and display only: nobody opens a path built from it.
    pub name: String,
    pub size: u64,
}

/// Why the index refuses to list a [`SharedFile`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error("file is {size} bytes, more than the {max} the protocol describes")]
    TooLarge { size: u64, max: u64 },
}

impl SharedFile {
    /// Whether the index can list this entry at all: its name passes
    /// [`crate::names::validate_name`] and its size is at most
    /// [`crate::limits::MAX_FILE_SIZE`]. The index applies it to every
    /// registration, and a peer applies it before registering, so that what
    /// it reports registered is what the index holds.
    pub fn check(&self) -> Result<(), EntryError> {
        crate::names::validate_name(&self.name)?;
        if self.size > crate::limits::MAX_FILE_SIZE {
            return Err(EntryError::TooLarge {
                size: self.size,
                max: crate::limits::MAX_FILE_SIZE,
            });
        }
        Ok(())
    }
}

/// What a peer says about itself when it logs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// Port the peer accepts chunk requests on; the index pairs it with the
    /// connection's source IP.
    pub listen_port: u16,
    /// `HOST:PORT` to publish instead (NAT, containers).
    pub advertise: Option<String>,
    /// Display name, unique among online peers when given.
    pub nick: Option<String>,
}

/// A client's request to the index server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexRequest {
    /// Start a sharing session on this connection.
    Login(Login),
    /// Add files to this session's list (the whole list is sent in batches on connect).
    AddFiles { files: Vec<SharedFile> },
    /// Withdraw files from this session's list; other sessions' entries are untouched.
    RemoveFiles { ids: Vec<FileId> },
    /// Renew this session's lease.
    Heartbeat,
    /// Files whose name contains every word (case-insensitive), most sources first.
    Search { words: Vec<String>, limit: u32 },
    /// Live sources of one file.
    Lookup { id: FileId },
    /// One peer's list, a page at a time (`start` is an offset into it).
    Browse { peer: String, start: u32 },
    /// Counts of peers, files and bytes.
    Stats,
    /// Online peers, a page at a time.
    ListPeers { start: u32 },
    /// Where one online peer is, by nickname (presence and location, for
    /// direct messages): answered by a `Peers` page holding just that peer.
    WhoIs { nick: String },
    /// Files this session is still downloading and serves in part (swarming):
    /// listed by `SwarmLookup`, never by `Search` or `Lookup`. A later
    /// `AddFiles` of the same id turns it into a complete holding;
    /// `RemoveFiles` withdraws it.
    AddPartial { files: Vec<SharedFile> },
    /// Live sources of one file, complete and partial ones apart.
    SwarmLookup { id: FileId },
    /// `Search`, answered by `SearchPage`, which also says how many files
    /// matched in all (so a client can say that the list was cut). An index
    /// older than this variant closes the connection: ask again with `Search`.
    SearchCounted { words: Vec<String>, limit: u32 },
    /// Files one of whose holders uses this exact name (or last name
    /// component), compared after `names::normalize`: answered by
    /// `SearchResults`, each hit under the name that matched, at most
    /// `limits::MAX_LOOKUP_CANDIDATES`. Not bound by the search-word limits:
    /// any name that can be registered can be looked up (at most
    /// `MAX_NAME_LEN` bytes).
    LookupName { name: String },
    /// Files whose id starts with these hex digits (at least
    /// `limits::MIN_ID_PREFIX_LEN`): answered by `SearchResults`, at most
    /// `limits::MAX_LOOKUP_CANDIDATES`.
    LookupPrefix { prefix: String },
    /// A search with filters, answered by `SearchAnswer`. `words` follow
    /// `common::search::Query::parse` (prefixes, `-word` exclusions,
    /// runs of Chinese/Japanese/Thai); the filters run at the index, before
    /// the cut to `limit`. An index older than this variant closes the
    /// connection: ask again with `SearchCounted` (no filters).
    SearchFiltered {
        words: Vec<String>,
        limit: u32,
        filter: SearchFilter,
    },
    /// `Login` with a reachability check (`crate::reach`): before
    /// answering, the index dials each address the peer asks to publish
    /// (the connection's source IP with `login.listen_port`, and
    /// `login.advertise`) and publishes only those that prove themselves
    /// with `nonce`. Answered by `WelcomeChecked`. `nonce` is fresh and
    /// random per login and never shown to anyone else; a nonce a live
    /// session already uses is refused. An index older than this variant
    /// closes the connection: log in again with `Login`.
    LoginChecked {
        login: Login,
        nonce: [u8; crate::reach::NONCE_LEN],
    },
    /// `ListPeers` whose page also says how each peer can be reached:
    /// answered by `PeersReach`. An index older than this variant closes
    /// the connection: ask again with `ListPeers`.
    ListPeersReach { start: u32 },
    /// From a logged-in session: forward callback orders for it on this
    /// connection (`CallbackOrder`, see `Callback`). Answered with `Ack`;
    /// from then on the index may send a `CallbackOrder` frame between any
    /// two answers (never inside one). Refused (`NotLoggedIn`) before a
    /// login. An index older than this variant closes the connection: the
    /// peer logs in again without it (and takes no callbacks).
    AcceptCallbacks,
    /// `Lookup` that also lists holders that cannot be dialed (firewalled
    /// ones, named by their observed `IP:PORT`), each with its reach:
    /// answered by `SourcesReach`. Firewalled sources are reached with
    /// `Callback`. An index older than this variant closes the connection.
    LookupReach { id: FileId },
    /// Asks the index to have the firewalled peer listed as `source`
    /// connect out to this client (a "push"): the index sends that peer a
    /// `CallbackOrder` naming `IP:port`, where `IP` is this connection's
    /// source address (never taken from the message: nobody can aim a
    /// peer at a third host) and `port` is where this client accepts
    /// `hello::Protocol::Callback` connections; the peer dials it, sends
    /// `reach::CallbackHello` with `token` and then serves the peer
    /// protocol on that connection. Answered with `Ack { count: 1 }` once
    /// the order is forwarded, or refused: `NotFound` (no such peer, or it
    /// has not registered `id`), `BadRequest` (a port no one can be sent
    /// to, a peer that takes no callbacks), `TooMany` (over this
    /// requester's budget of callbacks per minute, or too many orders
    /// pending at that peer).
    Callback {
        id: FileId,
        source: String,
        port: u16,
        token: [u8; crate::reach::NONCE_LEN],
    },
    /// From a logged-in session: arrange a relay through the index to the
    /// firewalled peer listed as `source`, for file `id`, when neither
    /// side accepts connections. The index sends that peer a `RelayOrder`
    /// with `token` and answers `Ack { count: 1 }`; both sides then open a
    /// connection to the index with the hello of `hello::Protocol::Relay`
    /// and a `reach::RelayHello` carrying `token`, and the index splices
    /// the two (opaque bytes, rate-capped; it never stores them). Over the
    /// spliced connection the source opens as in a callback (hello of
    /// `Protocol::Callback`, `reach::CallbackHello`), then the downloader
    /// asks for chunks and verifies each. Refused: `NotLoggedIn` (only
    /// logged-in peers may use the relay), `NotFound` (no such peer, or it
    /// has not registered `id`), `BadRequest` (the index does not relay,
    /// or the peer takes no orders), `TooMany` (over the requester's
    /// budget, or the relay is at its cap of sessions).
    Relay {
        id: FileId,
        source: String,
        token: [u8; crate::reach::NONCE_LEN],
    },
    /// From a logged-in session: TCP hole punching to the firewalled peer
    /// listed as `source`, for file `id`. The index answers `PunchAnswer`
    /// with that peer's observed address and, at the same moment (the
    /// start signal), sends the peer a `PunchOrder` with this connection's
    /// observed address. Both then connect to each other's observed
    /// address from the local port of their index connection (shared with
    /// `SO_REUSEPORT`), a TCP simultaneous open, which endpoint-independent
    /// NATs (home routers) let through and strict ones do not. Over the
    /// connection the source opens as in a callback (`token`). Refused as
    /// `Relay` is (logged-in peers only, the same budget).
    Punch {
        id: FileId,
        source: String,
        token: [u8; crate::reach::NONCE_LEN],
    },
    /// `LoginChecked` with the peer's addresses in the other IP family
    /// and inside its NAT (dual stack, issue 15). `also`: at most
    /// [`MAX_ALSO_ADDRS`] `IP:PORT` literals where the peer also listens
    /// (typically its IPv6 address when it logs in over IPv4, or the
    /// reverse); each is dialed back like the listening address and
    /// published beside it only if it proves to be this peer (if nothing
    /// else proves itself, the first that does is the published address).
    /// `lan`: at most [`MAX_ALSO_ADDRS`] `IP:PORT` literals of the peer's
    /// own network (the local address of its index connection with its
    /// listening port): never dialed nor published, only handed to a
    /// downloader whose connection comes from the same public IP as this
    /// firewalled peer's (two peers behind one NAT), which may dial them.
    /// Answered by `WelcomeChecked`. An index older than this variant
    /// closes the connection: log in again with `LoginChecked`.
    LoginAddrs {
        login: Login,
        nonce: [u8; crate::reach::NONCE_LEN],
        also: Vec<String>,
        lan: Vec<String>,
    },
    /// `LookupReach` that also gives each holder's other proven addresses
    /// and, to a requester behind the same public IP as a firewalled
    /// holder, that holder's inside addresses: answered by
    /// `SourcesAddrs`. An index older than this variant closes the
    /// connection: ask again with `LookupReach`.
    LookupAddrs { id: FileId },
    /// `AcceptCallbacks` saying which orders this session understands
    /// beyond the callback, punch and relay orders: `flags` of
    /// [`ORDERS_RELAY_AT`] (it joins a relay at another address:
    /// `RelayOrderAt`) and [`ORDERS_RELAYS`] (a public peer that relays
    /// for others, `peer serve --relay`: it takes `RelayArrange`; only a
    /// session with a proven address may). Answered with `Ack`. An index
    /// older than this variant closes the connection: log in again and
    /// send `AcceptCallbacks` (and relay for no one).
    AcceptOrders { flags: u8 },
    /// `Relay` that lets the index choose the relay: a public peer that
    /// offers relaying, or the index's own. Answered with `RelayAt`; the
    /// source gets `RelayOrderAt` (or `RelayOrder` for the index's own),
    /// the relay peer `RelayArrange`. Refused as `Relay` is. An index
    /// older than this variant closes the connection: ask with `Relay`.
    RelayVia {
        id: FileId,
        source: String,
        token: [u8; crate::reach::NONCE_LEN],
    },
}

/// `AcceptOrders` flag: the session understands `RelayOrderAt`.
pub const ORDERS_RELAY_AT: u8 = 1;
/// `AcceptOrders` flag: the session relays for others (`RelayArrange`).
pub const ORDERS_RELAYS: u8 = 2;

/// Most addresses in each list of `IndexRequest::LoginAddrs` (more are
/// refused).
pub const MAX_ALSO_ADDRS: usize = 2;

/// How other nodes can reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reach {
    /// Its published address answered the index's dial-back (or, for a
    /// peer that logged in with the old `Login`, was published unproven,
    /// as before the check existed).
    Direct,
    /// No address it asked for proved itself: it accepts no incoming
    /// connections, and no address of it is published ("LowID").
    Firewalled,
}

impl Reach {
    /// `direct` or `firewalled` (for tables and JSON).
    pub fn label(self) -> &'static str {
        match self {
            Reach::Direct => "direct",
            Reach::Firewalled => "firewalled",
        }
    }
}

/// One online peer and how it can be reached (`PeersReach`). For a
/// firewalled peer, `summary.addr` is where the index sees its connection
/// come from (`IP:PORT`): a name for it, not an address anyone can dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReach {
    pub summary: PeerSummary,
    pub reach: Reach,
}

/// Filters of a `SearchFiltered` request; each one left empty lets every
/// file through.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SearchFilter {
    /// Smallest size, in bytes.
    pub min_size: Option<u64>,
    /// Largest size, in bytes.
    pub max_size: Option<u64>,
    /// Extensions, lower case and without the dot (`mp3`, `tar.gz`): the
    /// name's (`common::search::extension_of`) must be one of them. At most
    /// `common::search::MAX_FILTER_EXTENSIONS` of at most
    /// `names::MAX_EXTENSION_LEN` bytes. A `--type` is sent as its list.
    pub exts: Vec<String>,
}

impl SearchFilter {
    /// Whether a file of `size` bytes named `name` passes.
    pub fn accepts(&self, size: u64, name: &str) -> bool {
        self.min_size.is_none_or(|m| size >= m)
            && self.max_size.is_none_or(|m| size <= m)
            && self.accepts_name(name)
    }

    /// Whether a file named `name` passes the extension filter.
    pub fn accepts_name(&self, name: &str) -> bool {
        self.exts.is_empty() || self.exts.contains(&crate::search::extension_of(name))
    }

    /// Whether a file of `size` bytes can pass (the name not yet known).
    pub fn accepts_size(&self, size: u64) -> bool {
        self.min_size.is_none_or(|m| size >= m) && self.max_size.is_none_or(|m| size <= m)
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    pub id: FileId,
    pub name: String,
    pub size: u64,
    /// Number of live sources.
    pub sources: u32,
}

/// A place a file can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `HOST:PORT` of the peer's chunk server.
    pub addr: String,
    pub nick: Option<String>,
    /// The id the peer proved in its handshake with the index (`None` when
    /// the index runs `--insecure`): a downloader refuses a source that
    /// proves another.
    pub peer_id: Option<PeerId>,
}

/// Counts over all live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IndexStats {
    pub peers: u64,
    /// Distinct file ids.
    pub files: u64,
    /// Sum of the sizes of distinct file ids.
    pub bytes: u64,
}

/// One online peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSummary {
    pub addr: String,
    pub nick: Option<String>,
    /// The id the peer proved in its handshake with the index (`None`
    /// when the index runs `--insecure`).
    pub peer_id: Option<PeerId>,
    pub files: u64,
    pub bytes: u64,
}

/// Why a request was refused; the connection stays usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    NotFound,
    BadRequest,
    NotLoggedIn,
    AlreadyLoggedIn,
    TooMany,
    Internal,
    NickTaken,
    /// Another live session already publishes this address (`HOST:PORT`).
    AddressTaken,
}

/// The index server's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexResponse {
    /// Answer to `Login`: the address others will see and the lease to keep up.
    Welcome {
        addr: String,
        lease_ttl_ms: u64,
    },
    /// Answer to `AddFiles`, `RemoveFiles` and `Heartbeat`: entries changed.
    Ack {
        count: u32,
    },
    SearchResults {
        hits: Vec<SearchHit>,
    },
    Sources {
        id: FileId,
        name: String,
        size: u64,
        sources: Vec<Source>,
    },
    /// A page of a peer's list; `next` is the offset of the next page, if any.
    PeerFiles {
        files: Vec<SharedFile>,
        next: Option<u32>,
    },
    Stats(IndexStats),
    /// A page of online peers; `next` is the offset of the next page, if any.
    Peers {
        peers: Vec<PeerSummary>,
        next: Option<u32>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Answer to `SwarmLookup`: peers holding the whole file, and peers
    /// still downloading it that serve the chunks they have verified.
    SwarmSources {
        id: FileId,
        name: String,
        size: u64,
        complete: Vec<Source>,
        partial: Vec<Source>,
    },
    /// Answer to `SearchCounted`: the hits (at most the limit) and how many
    /// files matched in all.
    SearchPage {
        hits: Vec<SearchHit>,
        total: u64,
    },
    /// Answer to `SearchFiltered`: the hits (at most the limit, best
    /// first), how many files matched in all, whether the list was cut at
    /// the limit, and whether `total` is an exact count (`false`: a query
    /// matching more files than the index ranks, `limits::MAX_RANKED`,
    /// whose total is estimated from the ones it ranked).
    SearchAnswer {
        hits: Vec<SearchHit>,
        total: u64,
        truncated: bool,
        total_exact: bool,
    },
    /// Answer to `LoginChecked`: the session is open. `addr` is the address
    /// published for it (`None`: no address proved itself, the peer is
    /// firewalled and listed under `observed`); `observed` is the source
    /// `IP:PORT` of this index connection as the index sees it (a NAT's
    /// outside address); `refused` says, one line per address, why an
    /// address asked for was not published.
    WelcomeChecked {
        addr: Option<String>,
        observed: String,
        refused: Vec<String>,
        lease_ttl_ms: u64,
    },
    /// Answer to `ListPeersReach`: a page of online peers with how each can
    /// be reached; `next` is the offset of the next page, if any.
    PeersReach {
        peers: Vec<PeerReach>,
        next: Option<u32>,
    },
    /// Not an answer: sent unasked, between answers, to a session that
    /// sent `AcceptCallbacks`. Connect to `target` (`IP:PORT`), send the
    /// callback hello with `token`, and serve the peer protocol there for
    /// file `id` (see `IndexRequest::Callback`).
    CallbackOrder {
        id: FileId,
        target: String,
        token: [u8; crate::reach::NONCE_LEN],
    },
    /// Answer to `LookupReach`: every live holder of the whole file, each
    /// with how it can be reached (a firewalled one under its observed
    /// `IP:PORT`, which is not dialable).
    SourcesReach {
        id: FileId,
        name: String,
        size: u64,
        sources: Vec<SourceReach>,
    },
    /// Not an answer: sent unasked, like `CallbackOrder`. Connect to the
    /// index's relay with `token` and serve file `id` over it (see
    /// `IndexRequest::Relay`).
    RelayOrder {
        id: FileId,
        token: [u8; crate::reach::NONCE_LEN],
    },
    /// Answer to `Punch`: connect now to `peer` (`IP:PORT`, the source's
    /// index connection as the index sees it) from the local port of this
    /// index connection.
    PunchAnswer {
        peer: String,
    },
    /// Not an answer: sent unasked, like `CallbackOrder`. Connect now to
    /// `peer` (the downloader's index connection as the index sees it)
    /// from the local port of this index connection, then open as in a
    /// callback with `token` and serve file `id` (see `IndexRequest::Punch`).
    PunchOrder {
        id: FileId,
        token: [u8; crate::reach::NONCE_LEN],
        peer: String,
    },
    /// Answer to `LookupAddrs`: every live holder of the whole file with
    /// all its addresses.
    SourcesAddrs {
        id: FileId,
        name: String,
        size: u64,
        sources: Vec<SourceAddrs>,
    },
    /// Answer to `RelayVia`: join the relay at `relay` (a public peer's
    /// `IP:PORT`, with the hello of `hello::Protocol::Relay` and a
    /// `reach::RelayHello`), or at the index itself (`None`).
    RelayAt {
        relay: Option<String>,
    },
    /// Not an answer: sent unasked to a session that relays for others
    /// (`ORDERS_RELAYS`): expect the two sides of a relay under `token`.
    RelayArrange {
        token: [u8; crate::reach::NONCE_LEN],
    },
    /// Not an answer: like `RelayOrder`, but the relay is the public peer
    /// at `relay` (`IP:PORT`), not the index.
    RelayOrderAt {
        id: FileId,
        token: [u8; crate::reach::NONCE_LEN],
        relay: String,
    },
}

/// One holder of a file with every address it can be reached at
/// (`SourcesAddrs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAddrs {
    /// How it is listed (its published address, or a firewalled peer's
    /// observed `IP:PORT`) and how it is reached.
    pub source: SourceReach,
    /// Its other proven addresses (the other IP family): a downloader
    /// connects to `source.source.addr` and these with Happy Eyeballs.
    pub also: Vec<String>,
    /// Its inside addresses, only when the requester's connection comes
    /// from the same public IP as this firewalled holder's (same NAT):
    /// unproven, dialed directly before any callback.
    pub lan: Vec<String>,
}

/// One holder of a file and how it can be reached (`SourcesReach`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReach {
    pub source: Source,
    pub reach: Reach,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, try_decode_frame};
    use crate::limits::MAX_FRAME_LEN;

    /// Exact bytes on the wire: a change here breaks every deployed peer.
    #[test]
    fn pinned_encodings() {
        assert_eq!(
            encode_frame(&IndexRequest::Heartbeat).unwrap(),
            [0, 0, 0, 1, 3]
        );
        assert_eq!(encode_frame(&IndexRequest::Stats).unwrap(), [0, 0, 0, 1, 7]);
        assert_eq!(
            encode_frame(&IndexRequest::Search {
                words: vec!["ab".into()],
                limit: 100
            })
            .unwrap(),
            [0, 0, 0, 6, 4, 1, 2, b'a', b'b', 100]
        );
        let login = IndexRequest::Login(Login {
            listen_port: 6699,
            advertise: None,
            nick: Some("x".into()),
        });
        // 6699 = 0x1A2B: varint marker 251 then little-endian u16.
        assert_eq!(
            encode_frame(&login).unwrap(),
            [0, 0, 0, 8, 0, 251, 0x2B, 0x1A, 0, 1, 1, b'x']
        );
        let stats = IndexResponse::Stats(IndexStats {
            peers: 3,
            files: 300,
            bytes: 1,
        });
        assert_eq!(
            encode_frame(&stats).unwrap(),
            [0, 0, 0, 6, 5, 3, 251, 0x2C, 0x01, 1]
        );
    }

    /// The swarming variants come after every older one.
    #[test]
    fn swarming_variants_are_appended() {
        let id = FileId([1; 32]);
        assert_eq!(
            encode_frame(&IndexRequest::SwarmLookup { id }).unwrap()[4],
            11
        );
        assert_eq!(
            encode_frame(&IndexRequest::AddPartial { files: vec![] }).unwrap(),
            [0, 0, 0, 2, 10, 0]
        );
        let answer = IndexResponse::SwarmSources {
            id,
            name: String::new(),
            size: 0,
            complete: vec![],
            partial: vec![],
        };
        assert_eq!(encode_frame(&answer).unwrap()[4], 8);
    }

    /// The counted search comes after every older variant.
    #[test]
    fn counted_search_is_appended() {
        assert_eq!(
            encode_frame(&IndexRequest::SearchCounted {
                words: vec![],
                limit: 5
            })
            .unwrap(),
            [0, 0, 0, 3, 12, 0, 5]
        );
        assert_eq!(
            encode_frame(&IndexResponse::SearchPage {
                hits: vec![],
                total: 7
            })
            .unwrap(),
            [0, 0, 0, 3, 9, 0, 7]
        );
    }

    /// The exact-name and id-prefix lookups come after every older request.
    #[test]
    fn lookup_variants_are_appended() {
        assert_eq!(
            encode_frame(&IndexRequest::LookupName { name: "a".into() }).unwrap(),
            [0, 0, 0, 3, 13, 1, b'a']
        );
        assert_eq!(
            encode_frame(&IndexRequest::LookupPrefix { prefix: "b".into() }).unwrap(),
            [0, 0, 0, 3, 14, 1, b'b']
        );
    }

    /// The filtered search comes after every older variant.
    #[test]
    fn filtered_search_is_appended() {
        assert_eq!(
            encode_frame(&IndexRequest::SearchFiltered {
                words: vec![],
                limit: 5,
                filter: SearchFilter::default(),
            })
            .unwrap(),
            [0, 0, 0, 6, 15, 0, 5, 0, 0, 0]
        );
        assert_eq!(
            encode_frame(&IndexResponse::SearchAnswer {
                hits: vec![],
                total: 7,
                truncated: true,
                total_exact: false,
            })
            .unwrap(),
            [0, 0, 0, 5, 10, 0, 7, 1, 0]
        );
    }

    /// The reachability variants come after every older one.
    #[test]
    fn reachability_variants_are_appended() {
        let login = IndexRequest::LoginChecked {
            login: Login {
                listen_port: 1,
                advertise: None,
                nick: None,
            },
            nonce: [7; 16],
        };
        let bytes = encode_frame(&login).unwrap();
        assert_eq!(bytes[4..8], [16, 1, 0, 0]);
        assert_eq!(bytes[8..], [7; 16]);
        assert_eq!(
            encode_frame(&IndexRequest::ListPeersReach { start: 2 }).unwrap(),
            [0, 0, 0, 2, 17, 2]
        );
        let welcome = IndexResponse::WelcomeChecked {
            addr: None,
            observed: "a".into(),
            refused: vec![],
            lease_ttl_ms: 3,
        };
        assert_eq!(
            encode_frame(&welcome).unwrap(),
            [0, 0, 0, 6, 11, 0, 1, b'a', 0, 3]
        );
        assert_eq!(
            encode_frame(&IndexResponse::PeersReach {
                peers: vec![],
                next: None
            })
            .unwrap(),
            [0, 0, 0, 3, 12, 0, 0]
        );
    }

    /// The callback variants come after every older one.
    #[test]
    fn callback_variants_are_appended() {
        assert_eq!(
            encode_frame(&IndexRequest::AcceptCallbacks).unwrap(),
            [0, 0, 0, 1, 18]
        );
        let id = FileId([2; 32]);
        let bytes = encode_frame(&IndexRequest::LookupReach { id }).unwrap();
        assert_eq!(bytes[..5], [0, 0, 0, 33, 19]);
        let bytes = encode_frame(&IndexRequest::Callback {
            id,
            source: "a".into(),
            port: 7,
            token: [9; 16],
        })
        .unwrap();
        assert_eq!(bytes[4], 20);
        assert_eq!(bytes[37..40], [1, b'a', 7]);
        assert_eq!(bytes[40..], [9; 16]);
        let order = encode_frame(&IndexResponse::CallbackOrder {
            id,
            target: "b".into(),
            token: [8; 16],
        })
        .unwrap();
        assert_eq!(order[4], 13);
        assert_eq!(order[37..39], [1, b'b']);
        let reach = IndexResponse::SourcesReach {
            id,
            name: String::new(),
            size: 1,
            sources: vec![SourceReach {
                source: Source {
                    addr: "c".into(),
                    nick: None,
                    peer_id: None,
                },
                reach: Reach::Firewalled,
            }],
        };
        let bytes = encode_frame(&reach).unwrap();
        assert_eq!(bytes[4], 14);
        assert_eq!(bytes[37..], [0, 1, 1, 1, b'c', 0, 0, 1]);
        let bytes = encode_frame(&IndexRequest::Relay {
            id,
            source: "d".into(),
            token: [6; 16],
        })
        .unwrap();
        assert_eq!(bytes[4], 21);
        assert_eq!(bytes[37..39], [1, b'd']);
        assert_eq!(bytes[39..], [6; 16]);
        let bytes = encode_frame(&IndexResponse::RelayOrder { id, token: [4; 16] }).unwrap();
        assert_eq!(bytes[4], 15);
        assert_eq!(bytes[37..], [4; 16]);
        let bytes = encode_frame(&IndexRequest::Punch {
            id,
            source: "e".into(),
            token: [3; 16],
        })
        .unwrap();
        assert_eq!(bytes[4], 22);
        assert_eq!(bytes[37..39], [1, b'e']);
        assert_eq!(
            encode_frame(&IndexResponse::PunchAnswer { peer: "f".into() }).unwrap(),
            [0, 0, 0, 3, 16, 1, b'f']
        );
        let bytes = encode_frame(&IndexResponse::PunchOrder {
            id,
            token: [2; 16],
            peer: "g".into(),
        })
        .unwrap();
        assert_eq!(bytes[4], 17);
        assert_eq!(bytes[37..53], [2; 16]);
        assert_eq!(bytes[53..], [1, b'g']);
    }

    /// The dual-stack variants come after every older one.
    #[test]
    fn address_variants_are_appended() {
        let login = IndexRequest::LoginAddrs {
            login: Login {
                listen_port: 1,
                advertise: None,
                nick: None,
            },
            nonce: [7; 16],
            also: vec!["a".into()],
            lan: vec![],
        };
        let bytes = encode_frame(&login).unwrap();
        assert_eq!(bytes[4..8], [23, 1, 0, 0]);
        assert_eq!(bytes[8..24], [7; 16]);
        assert_eq!(bytes[24..], [1, 1, b'a', 0]);
        let id = FileId([2; 32]);
        let bytes = encode_frame(&IndexRequest::LookupAddrs { id }).unwrap();
        assert_eq!(bytes[..5], [0, 0, 0, 33, 24]);
        let answer = IndexResponse::SourcesAddrs {
            id,
            name: String::new(),
            size: 1,
            sources: vec![SourceAddrs {
                source: SourceReach {
                    source: Source {
                        addr: "c".into(),
                        nick: None,
                        peer_id: None,
                    },
                    reach: Reach::Direct,
                },
                also: vec!["d".into()],
                lan: vec![],
            }],
        };
        let bytes = encode_frame(&answer).unwrap();
        assert_eq!(bytes[4], 18);
        assert_eq!(bytes[37..], [0, 1, 1, 1, b'c', 0, 0, 0, 1, 1, b'd', 0]);
    }

    /// The peer-relay variants come after every older one.
    #[test]
    fn peer_relay_variants_are_appended() {
        assert_eq!(
            encode_frame(&IndexRequest::AcceptOrders { flags: 3 }).unwrap(),
            [0, 0, 0, 2, 25, 3]
        );
        let id = FileId([2; 32]);
        let bytes = encode_frame(&IndexRequest::RelayVia {
            id,
            source: "d".into(),
            token: [6; 16],
        })
        .unwrap();
        assert_eq!(bytes[4], 26);
        assert_eq!(bytes[37..39], [1, b'd']);
        assert_eq!(
            encode_frame(&IndexResponse::RelayAt { relay: None }).unwrap(),
            [0, 0, 0, 2, 19, 0]
        );
        let bytes = encode_frame(&IndexResponse::RelayArrange { token: [5; 16] }).unwrap();
        assert_eq!(bytes[4], 20);
        assert_eq!(bytes[5..], [5; 16]);
        let bytes = encode_frame(&IndexResponse::RelayOrderAt {
            id,
            token: [4; 16],
            relay: "r".into(),
        })
        .unwrap();
        assert_eq!(bytes[4], 21);
        assert_eq!(bytes[53..], [1, b'r']);
    }

    #[test]
    fn pinned_whois_encoding() {
        assert_eq!(
            encode_frame(&IndexRequest::WhoIs { nick: "x".into() }).unwrap(),
            [0, 0, 0, 3, 9, 1, b'x']
        );
    }

    #[test]
    fn round_trip() {
        let msg = IndexResponse::Sources {
            id: FileId([9; 32]),
            name: "ñ a.txt".into(),
            size: 1 << 33,
            sources: vec![Source {
                peer_id: None,
                addr: "127.0.0.1:6699".into(),
                nick: None,
            }],
        };
        let bytes = encode_frame(&msg).unwrap();
        let (back, used): (IndexResponse, usize) =
            try_decode_frame(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, bytes.len());
    }
}
