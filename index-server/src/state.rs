//! The index itself: sessions, files, the word index, leases.
//!
//! Everything lives behind [`Index`], a cheap cloneable handle around
//! `Arc<Inner>`. Every table is sharded (sessions, nicknames and partial
//! holders are `DashMap`s; the files table and the word index split into 64
//! shards of their own, each behind a lock) so that the many connection tasks
//! mostly touch different shards. No method holds a guard on one table while
//! locking another, which rules out lock-order deadlocks, and no guard is
//! ever held across an `.await`.
//!
//! Reads (search, lookup, browse, stats) never write: expired sessions are
//! filtered out by comparing their lease with `now`, and the reaper removes
//! them later.
//!
//! Layout (`state/files.rs`, `state/words.rs`, `state/keyset.rs`): each file
//! has a 4-byte key, its slot number in a shard of the files table, so that
//! the word index and the sessions hold keys, not 32-byte ids. A slot (56
//! bytes) holds the id, the size and the first holder; the id is found from
//! its hash in a table of slot numbers that compares through the slots, so it
//! is stored once. The first holder's name is packed with the others of its
//! shard in 16 KiB chunks (no allocation per name); further holders, rare,
//! are kept apart. The word index stores no text: it maps a 32-bit hash of
//! each word to the one file with it, or to a compact key set when several
//! have it, and a search confirms each candidate against its names. Sessions
//! list their files in the same compact key sets.
//!
//! Every holder's name is indexed, not only the first one's: a file found
//! by any holder's words or exact name (`lookup_name`), shown under the
//! name most live holders use (among those matching the query, in a
//! search). A single-holder file costs nothing more for this; extra
//! holders' names live in the shard's `more` map as before. The files
//! table is sharded by the id's top bits, so `lookup_prefix` walks one
//! shard. Names, words and nicknames are compared normalized
//! (`common::names::normalize`).
//!
//! Memory (issue 13, prefix tokens): 123 to 124 bytes per indexed file
//! beyond its name at 1,000,000 generated realistic names, against 101 to
//! 102 for the exact-word index of b855023 on the same names
//! (`p2pshare-bench index --baseline`, docs/benchmarks.md). Small posting
//! lists are plain sorted key lists (`keyset::SMALL_MAX`), which is what
//! brings the prefix tokens under the 128-byte budget.
//!
//! Before issue 13: 96 bytes per indexed file beyond its name at 1,000,000 files
//! (three runs; 85 B at 800,000 and 83 B at 900,000), measured as the
//! server's RSS growth less the name bytes by `p2pshare-bench index --files
//! 1000000 --clients 2 --duration 3s` (see docs/benchmarks.md). The slot is
//! 56 bytes of it; the rest goes mainly to two hash tables, the id table (5
//! bytes a bucket) and the word index (9 bytes a bucket, one entry per word
//! found in a single file: the benchmark's names have one each), whose slack
//! depends on where the count falls between doublings. Freed slots, keys and
//! table room are reused, not returned to the system; replaced names are
//! reclaimed by compacting a shard's names once they are mostly garbage.

mod files;
mod keyset;
mod nicks;
pub mod possession;
mod words;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::id::FileId;
use common::identity::PeerId;
use common::index_proto::SearchFilter;
use common::index_proto::{
    IndexResponse, IndexStats, PeerReach, PeerSummary, Reach, SearchHit, SharedFile, Source,
};
use common::limits::MAX_RANKED;
use common::limits::{MAX_FILES_PER_BATCH, MAX_NAME_LEN};
use common::names::{base_name, name_matches, normalize};
use common::search::{self, Query, Term, TermsFound, TokenKind};
use common::target::IdPrefix;
use dashmap::DashMap;
use smallvec::SmallVec;
use tokio::time::Instant;

use files::{FileRef, FileTable, Registered};
use keyset::KeySet;
use words::WordIndex;

/// Identifies one login session (one connection of a sharing peer).
pub type SessionId = u64;

/// A file's small key in the word index and the sessions.
type FileKey = u32;

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error(
        "nickname {0:?} is already used by an online peer (pick another with --nick or PEER_NICK)"
    )]
    NickTaken(String),
    #[error("nickname {nick:?} is reserved for the node with key {owner}... (its owner's for {days} days after it was last online, index-server --nick-reservation): pick another with --nick or PEER_NICK")]
    NickReserved {
        nick: String,
        /// Short form of the owner's peer id.
        owner: String,
        days: u64,
    },
    #[error("session has expired; log in again")]
    NoSession,
    #[error("address {0} is already registered by another online peer (each peer needs its own HOST:PORT; check --listen and --advertise)")]
    AddressTaken(String),
    #[error("this address already has {limit} online sessions, the most one source address may have (index-server --max-sessions-per-address)")]
    TooManySessions { limit: usize },
    #[error("this peer may register at most {limit} files (index-server --max-files-per-session); the rest are not listed")]
    TooManyFiles { limit: usize },
    #[error("the index is full: its memory budget of {budget} bytes is used up (index-server --memory-budget); files not listed, try again later")]
    IndexFull { budget: u64 },
}

/// Caps on what sessions may hold, so that one client cannot grow the
/// index without bound (`index-server` flags; defaults in [`Limits::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most complete files one session may list.
    pub max_files_per_session: usize,
    /// Most sessions one source address (IPv4 address, IPv6 /64) may hold at once.
    pub max_sessions_per_source: usize,
    /// Most bytes every holding may cost together, estimated as
    /// [`HOLDING_COST`] plus the name's bytes per file a session lists
    /// (complete or partial).
    pub memory_budget: u64,
    /// Whether a peer may publish a port below 1024. Off by default: a peer
    /// never needs one (it runs unprivileged, 6699 by default), and a
    /// published `HOST:22` only points downloaders at another service.
    pub allow_privileged_ports: bool,
    /// How long a nickname stays reserved for the key that registered it
    /// after its last session ended ([`nicks`]); zero: no reservation.
    pub nick_reservation: Duration,
}

/// Default of [`Limits::max_files_per_session`] (`--max-files-per-session`).
pub const DEFAULT_MAX_FILES_PER_SESSION: usize = 250_000;
/// Default of [`Limits::max_sessions_per_source`] (`--max-sessions-per-address`).
pub const DEFAULT_MAX_SESSIONS_PER_SOURCE: usize = 1024;
/// Default of [`Limits::memory_budget`] (`--memory-budget`).
pub const DEFAULT_MEMORY_BUDGET: u64 = 2 << 30;
/// Default of [`Limits::nick_reservation`] (`--nick-reservation`): 7 days.
pub const DEFAULT_NICK_RESERVATION: Duration = Duration::from_secs(7 * 86_400);

impl Default for Limits {
    /// 250,000 files a session (the 1,000,000-file benchmark uses 8
    /// sessions of 125,000), 1024 sessions per address (the lab runs 100+
    /// peers on 127.0.0.1), and 2 GiB (1,000,000 files with 1 KiB names).
    fn default() -> Self {
        Limits {
            max_files_per_session: DEFAULT_MAX_FILES_PER_SESSION,
            max_sessions_per_source: DEFAULT_MAX_SESSIONS_PER_SOURCE,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            allow_privileged_ports: false,
            nick_reservation: DEFAULT_NICK_RESERVATION,
        }
    }
}

/// Estimated bytes one holding costs beyond its name: 123 B measured per
/// file at 1,000,000 files (see the module docs), plus the session's key
/// set.
pub const HOLDING_COST: u64 = 128;

fn holding_cost(name: &str) -> u64 {
    HOLDING_COST + name.len() as u64
}

/// What a new session claims (see [`Index::open_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The address published for it.
    pub addr: String,
    /// Address keys no other live session may hold at the same time: the
    /// canonical published address and, for a host name, every address it
    /// resolves to.
    pub claims: Vec<String>,
    pub nick: Option<String>,
    /// The connection's source address, counted against
    /// [`Limits::max_sessions_per_source`]; `None` for the server's own store.
    pub source: Option<IpAddr>,
    /// Whether `addr` can be dialed (`Direct`) or only names a firewalled
    /// peer, which is then never listed as a source.
    pub reach: Reach,
    /// The id the connection's handshake proved (`None` in clear text).
    pub peer_id: Option<PeerId>,
}

/// The form an address is compared in: an IP literal as Rust prints it
/// (IPv4-mapped IPv6 as IPv4, so `[::ffff:10.0.0.1]:80` is `10.0.0.1:80`),
/// a host name in lower case.
pub fn canonical_addr(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sa) => std::net::SocketAddr::new(sa.ip().to_canonical(), sa.port()).to_string(),
        Err(_) => addr.to_ascii_lowercase(),
    }
}

/// The address a source is counted by (one rule for the whole workspace).
pub use transfer::admission::source_key;

struct Session {
    addr: String,
    reach: Reach,
    /// Other proven addresses, published beside `addr` (dual stack).
    also: Vec<String>,
    /// A firewalled session's inside addresses (unproven), handed only to
    /// requesters behind the same public IP.
    lan: Vec<String>,
    /// Address keys this session holds in `Inner::addrs`.
    claims: Vec<String>,
    /// Source key (see [`source_key`]), counted in `Inner::per_source`.
    source: Option<IpAddr>,
    /// Bytes of the memory budget its complete files are charged.
    charged: u64,
    nick: Option<String>,
    /// The id its connection's handshake proved (`None` in clear text).
    peer_id: Option<PeerId>,
    /// Keys of the files this session registered (names live in the holders).
    files: KeySet,
    bytes: u64,
    lease_expires: Instant,
    /// Files this session is still downloading (swarming); the names it
    /// uses are in `partials`.
    partial: HashSet<FileId>,
}

/// Most files one session may list as partial at once.
pub const MAX_PARTIAL_PER_SESSION: usize = 256;

/// Holders of part of a file, kept apart from complete holders so that
/// search and `Lookup` answers are unchanged by swarming.
struct PartialRecord {
    size: u64,
    holders: HashMap<SessionId, Box<str>>,
}

/// What `swarm_lookup` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmSources {
    pub name: String,
    pub size: u64,
    pub complete: Vec<Source>,
    pub partial: Vec<Source>,
}

/// A file's holders copied out of the files table: (session, name).
type Holders = SmallVec<[(SessionId, Box<str>); 2]>;

/// Whether an entry's name and size can be listed at all.
fn acceptable(f: &SharedFile) -> bool {
    f.check().is_ok()
}

/// What [`Index::live_sources`] found.
struct LiveSources {
    /// The name to show for the file.
    name: String,
    /// Whether `name` is one of the preferred names.
    matched: bool,
    sources: Vec<Source>,
}

/// The most frequent of `names`; ties go to the first seen. Quadratic in
/// the distinct names, which are few (most files have one).
fn most_common<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut counts: SmallVec<[(&'a str, u32); 4]> = SmallVec::new();
    for n in names {
        match counts.iter_mut().find(|(m, _)| *m == n) {
            Some((_, c)) => *c += 1,
            None => counts.push((n, 1)),
        }
    }
    let mut best: Option<(&'a str, u32)> = None;
    for (n, c) in counts {
        if best.is_none_or(|(_, b)| c > b) {
            best = Some((n, c));
        }
    }
    best.map(|(n, _)| n)
}

/// Most live sources first, then by name and id.
fn sort_hits(hits: &mut [SearchHit]) {
    hits.sort_by(|a, b| {
        b.sources
            .cmp(&a.sources)
            .then_with(|| a.name.cmp(&b.name))
            .then(a.id.cmp(&b.id))
    });
}

/// Hashes of the tokens a holder's name is indexed under
/// (`common::search::for_each_token` of its folded form), each once, and
/// the empty word when its last component has no word (so that an
/// exact-name lookup of a name like `---` finds it without a walk over
/// every file).
fn index_hashes(words: &WordIndex, name: &str) -> Vec<u32> {
    let mut hashes = Vec::with_capacity(24);
    index_hashes_into(words, name, &mut hashes);
    hashes
}

/// [`index_hashes`] into `hashes` (cleared first), to reuse its room.
fn index_hashes_into(words: &WordIndex, name: &str, hashes: &mut Vec<u32>) {
    hashes.clear();
    let folded = search::fold(name);
    search::for_each_token(&folded, |kind, text| {
        hashes.push(words.token_hash(kind, text))
    });
    let base = base_name(name);
    let base_has_piece = base.len() == name.len() && !hashes.is_empty()
        // An ASCII text folds to a piece exactly when it has a letter or a
        // digit: no second fold for the usual `name.ext`.
        || base.is_ascii() && base.bytes().any(|b| b.is_ascii_alphanumeric())
        || !base.is_ascii() && {
            let mut any = false;
            search::for_each_piece(&search::fold(base), |_| any = true);
            any
        };
    if !base_has_piece {
        hashes.push(words.token_hash(TokenKind::Word, ""));
    }
    hashes.sort_unstable();
    hashes.dedup();
}

fn holders_of(f: FileRef<'_>) -> Holders {
    f.holders().map(|(s, name)| (s, name.into())).collect()
}

/// Request kinds counted by [`Index::count_request`], in a fixed table so
/// that counting is one atomic add on the hot path.
const REQUEST_KINDS: [&str; 15] = [
    "Login",
    "AddFiles",
    "RemoveFiles",
    "Heartbeat",
    "Search",
    "Lookup",
    "Browse",
    "Stats",
    "ListPeers",
    "WhoIs",
    "AddPartial",
    "SwarmLookup",
    "LookupName",
    "LookupPrefix",
    "Callback",
];

struct Inner {
    lease_ttl: Duration,
    next_session: AtomicU64,
    sessions: DashMap<SessionId, Session>,
    /// id or key → size and holders (with the name each uses).
    files: FileTable,
    /// word hash → keys of files whose names may contain it.
    words: WordIndex,
    /// normalized nickname (`names::normalize`) → the session holding it,
    /// so `Ana` and `ana` are one nickname.
    nicks: DashMap<String, SessionId>,
    /// Address key (see [`NewSession::claims`]) → the session holding it.
    addrs: DashMap<String, SessionId>,
    /// Source key → sessions opened from it and not yet removed.
    per_source: DashMap<IpAddr, usize>,
    limits: Limits,
    /// Bytes of the memory budget in use (see [`Limits::memory_budget`]).
    memory: AtomicU64,
    /// id → sessions holding part of it (still downloading).
    partials: DashMap<FileId, PartialRecord>,
    requests: [AtomicU64; REQUEST_KINDS.len()],
    other_requests: AtomicU64,
    /// The last answer to `stats` and when it was computed.
    stats_cache: Mutex<Option<(Instant, IndexStats)>>,
    /// How long searches take (`p2pshare_index_search_duration_seconds`).
    search_seconds: prometheus::Histogram,
    /// Searches that may run at once (see [`Index::search_slot`]).
    search_slots: tokio::sync::Semaphore,
    /// Requests other than searches handled, and the nanoseconds spent
    /// handling them, in all (see [`Pacer`]).
    foreground_requests: AtomicU64,
    foreground_nanos: AtomicU64,
    /// Login nonces seen lately (see [`Index::use_nonce`]).
    nonces: Mutex<SeenNonces>,
    /// Reachability dial-backs each requester has caused lately.
    dialbacks: crate::dialback_budget::DialbackBudget,
    /// Callback requests each requester has made lately.
    callbacks_asked: crate::dialback_budget::DialbackBudget,
    /// Sessions that take callback orders (`IndexRequest::AcceptCallbacks`)
    /// → where their connection task picks them up.
    callback_senders: DashMap<SessionId, tokio::sync::mpsc::Sender<IndexResponse>>,
    /// `AcceptOrders` flags of the sessions that sent them.
    order_flags: DashMap<SessionId, u8>,
    /// Turns through the peer relays ([`Index::pick_peer_relay`]).
    next_relay: std::sync::atomic::AtomicUsize,
    /// What the proof-of-possession checks found ([`crate::possession`]).
    possession: possession::PossessionCounters,
    /// Which key owns each reserved nickname ([`nicks`]).
    nick_keys: nicks::NickKeys,
}

/// Why a callback order could not be handed to a session's connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The session never sent `AcceptCallbacks` (an older peer), or its
    /// connection is closing.
    #[error("that peer does not take callbacks (an older peer, or it is leaving)")]
    NotAccepted,
    /// [`CALLBACK_QUEUE`] orders already wait to be written to it.
    #[error("that peer has too many callback orders pending; try again later")]
    Full,
}

/// Callback orders that may wait for one session's connection to write
/// them; more are refused ([`CallbackError::Full`]).
pub const CALLBACK_QUEUE: usize = 16;

/// Most sources one answer lists. Over it, each answer lists a random
/// choice, as a BitTorrent tracker answers with a random subset of the
/// swarm: the first ones in address order for everybody would leave the
/// others unasked.
const MAX_LISTED: usize = 200;

/// Keeps at most [`MAX_LISTED`] of `sources`: those `later` puts last
/// only once the others are all kept, and a random choice among equals.
fn keep_random<T>(sources: &mut Vec<T>, later: impl Fn(&T) -> bool) {
    if sources.len() > MAX_LISTED {
        use rand::seq::SliceRandom;
        sources.shuffle(&mut rand::rng());
        // Stable: the shuffle still decides among equals.
        sources.sort_by_key(|s| later(s));
        sources.truncate(MAX_LISTED);
    }
}

/// How long a search works before it checks whether to pause.
const SEARCH_SLICE: std::time::Duration = std::time::Duration::from_micros(250);
/// How long it then pauses while other requests keep the index busy: 8
/// slices, so that a search takes at most a ninth of a core from them
/// (with a fifth, lookups under a search load fell to 0.68-0.86 of those
/// without on 2 cores; docs/benchmarks.md).
const SEARCH_PAUSE: std::time::Duration = std::time::Duration::from_micros(2000);
/// Other requests keep the index busy when handling them took at least
/// 1/`FOREGROUND_BUSY_DIV` of a slice's time (registrations: about a
/// millisecond a batch), or when they came at least one every
/// `FOREGROUND_BUSY_GAP` (lookups: their handling is a microsecond, their
/// reading and answering several times that, which the handling time does
/// not show). 10,000 peers' heartbeats are neither (500 a second, about
/// 1 % of a core). Pausing for any request seen lately, as before, paused a
/// search at nearly every slice under those heartbeats alone: search p99
/// 12.3-12.7 ms against 3.1-3.7 without them (`lab sessions`).
const FOREGROUND_BUSY_DIV: u128 = 10;
/// See [`FOREGROUND_BUSY_DIV`]: 20,000 requests a second.
const FOREGROUND_BUSY_GAP: std::time::Duration = std::time::Duration::from_micros(50);
/// Keys checked against one posting list per lock taken (and between two
/// [`Pacer`] checks), so that no search holds a shard for long.
const KEYS_PER_LOCK: usize = 2048;

/// Paces a search (issue 13: a search must not slow down lookups and
/// registrations on a 2-core machine, where it competes with them for CPU
/// as much as for locks). A search calls [`Pacer::step`] between pieces of
/// work, outside every lock; after each [`SEARCH_SLICE`] of work, if other
/// requests kept the index busy since the last such check, the last pause
/// included ([`foreground_is_busy`]), it
/// sleeps [`SEARCH_PAUSE`], giving the core back. On an otherwise idle or
/// lightly used index a search never pauses.
struct Pacer<'a> {
    inner: &'a Inner,
    slice_start: std::time::Instant,
    /// When the last check was made (the search's start at first).
    window_start: std::time::Instant,
    /// `foreground_requests` and `foreground_nanos` at `window_start`.
    foreground_at_start: (u64, u64),
    work: usize,
}

/// Whether `requests` other than searches, handled for `spent` in all
/// during `slice` (wall time), keep the index busy enough that a search
/// should give its core back.
fn foreground_is_busy(
    requests: u64,
    spent: std::time::Duration,
    slice: std::time::Duration,
) -> bool {
    spent.as_nanos() * FOREGROUND_BUSY_DIV >= slice.as_nanos()
        || u128::from(requests) * FOREGROUND_BUSY_GAP.as_nanos() >= slice.as_nanos()
}

impl Inner {
    /// `(requests, nanoseconds)` of requests other than searches so far.
    fn foreground(&self) -> (u64, u64) {
        (
            self.foreground_requests.load(Ordering::Relaxed),
            self.foreground_nanos.load(Ordering::Relaxed),
        )
    }
}

impl<'a> Pacer<'a> {
    fn new(inner: &'a Inner) -> Self {
        Pacer {
            inner,
            slice_start: std::time::Instant::now(),
            window_start: std::time::Instant::now(),
            foreground_at_start: inner.foreground(),
            work: 0,
        }
    }

    /// Counts `n` units of work (a candidate confirmed, a key checked);
    /// pauses if the slice is used up and others are waiting.
    fn step(&mut self, n: usize) {
        self.work += n;
        if self.work < 64 {
            return;
        }
        self.work = 0;
        let now = std::time::Instant::now();
        if now.duration_since(self.slice_start) < SEARCH_SLICE {
            return;
        }
        // The window since the last check, the last pause included: while
        // the search runs, the requests it competes with may hardly get a
        // core, so the slice alone can understate them.
        let (requests, nanos) = self.inner.foreground();
        let (requests0, nanos0) = self.foreground_at_start;
        let spent = std::time::Duration::from_nanos(nanos.saturating_sub(nanos0));
        let window = now.duration_since(self.window_start);
        self.window_start = now;
        self.foreground_at_start = (requests, nanos);
        if foreground_is_busy(requests.saturating_sub(requests0), spent, window) {
            std::thread::sleep(SEARCH_PAUSE);
        }
        self.slice_start = std::time::Instant::now();
    }
}

/// Searches that run at once, and search threads: half the cores, at
/// least one.
fn search_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .max(1)
}

/// The most login nonces remembered: a replayed nonce is refused as long
/// as it is among the last this many (16 bytes each, about 4 MiB with the
/// set's overhead), so the memory stays bounded under a flood of logins.
pub const MAX_REMEMBERED_NONCES: usize = 100_000;

/// Recently used login nonces, oldest first out.
#[derive(Default)]
struct SeenNonces {
    set: HashSet<[u8; common::reach::NONCE_LEN]>,
    order: std::collections::VecDeque<[u8; common::reach::NONCE_LEN]>,
}

/// How old an answer to `stats` may be. Counting walks every file (9 ms at
/// 512,000 files in a release build here), and a connection may send
/// thousands of requests a second: a flood of `Stats` gets one walk a
/// second instead of one each.
pub const STATS_MAX_AGE: Duration = Duration::from_secs(1);

/// Handle to the shared index state.
#[derive(Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

/// What [`Index::search_query`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchOutcome {
    pub hits: Vec<SearchHit>,
    /// Files that matched in all (estimated when not `total_exact`).
    pub total: u64,
    /// Whether fewer hits are listed than matched.
    pub truncated: bool,
    pub total_exact: bool,
}

/// Most keys a search lists from one posting list: a term in more files is
/// sampled (see `Index::query_candidates`).
const SAMPLE: usize = 4 * MAX_RANKED;

/// The union of two sorted, duplicate-free key lists, sorted.
fn union_sorted(a: Vec<FileKey>, b: Vec<FileKey>) -> Vec<FileKey> {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The keys in both sorted lists, sorted.
fn intersect_sorted(a: &[FileKey], b: &[FileKey]) -> Vec<FileKey> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// A confirmed candidate of a search, before the cut to the limit.
struct Scored {
    key: FileKey,
    id: FileId,
    /// Terms its best name matched only as prefixes.
    prefix_only: u8,
    /// Live holders.
    sources: u32,
    /// Characters in its best matching name.
    name_len: u32,
}

/// What an `add_files` call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AddOutcome {
    pub added: u32,
    pub rejected: u32,
}

impl Index {
    pub fn new(lease_ttl: Duration) -> Self {
        Self::with_limits(lease_ttl, Limits::default())
    }

    /// An index enforcing `limits`.
    pub fn with_limits(lease_ttl: Duration, limits: Limits) -> Self {
        let mut index = Self::with_words(lease_ttl, WordIndex::default());
        if let Some(inner) = Arc::get_mut(&mut index.inner) {
            inner.limits = limits;
        }
        index
    }

    fn with_words(lease_ttl: Duration, words: WordIndex) -> Self {
        Index {
            inner: Arc::new(Inner {
                lease_ttl,
                // Session ids start at 1: the files table marks free slots with 0.
                next_session: AtomicU64::new(1),
                sessions: DashMap::new(),
                files: FileTable::default(),
                words,
                nicks: DashMap::new(),
                addrs: DashMap::new(),
                per_source: DashMap::new(),
                limits: Limits::default(),
                memory: AtomicU64::new(0),
                partials: DashMap::new(),
                requests: Default::default(),
                other_requests: AtomicU64::new(0),
                stats_cache: Mutex::new(None),
                search_seconds: crate::metrics::search_histogram(),
                search_slots: tokio::sync::Semaphore::new(search_threads()),
                foreground_requests: AtomicU64::new(0),
                foreground_nanos: AtomicU64::new(0),
                nonces: Mutex::new(SeenNonces::default()),
                dialbacks: Default::default(),
                callbacks_asked: Default::default(),
                callback_senders: DashMap::new(),
                order_flags: DashMap::new(),
                next_relay: std::sync::atomic::AtomicUsize::new(0),
                possession: Default::default(),
                nick_keys: Default::default(),
            }),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// The reachability dial-backs each requester has caused lately
    /// (`Config::max_dialbacks_per_minute`).
    pub fn dialback_budget(&self) -> &crate::dialback_budget::DialbackBudget {
        &self.inner.dialbacks
    }

    /// The callback requests each requester has made lately
    /// (`Config::max_callbacks_per_minute`).
    pub fn callback_budget(&self) -> &crate::dialback_budget::DialbackBudget {
        &self.inner.callbacks_asked
    }

    /// Makes `session` take callback orders through `orders` (its
    /// connection task writes them out); forgotten at logout.
    pub fn accept_callbacks(
        &self,
        session: SessionId,
        orders: tokio::sync::mpsc::Sender<IndexResponse>,
    ) {
        if self.inner.sessions.contains_key(&session) {
            self.inner.callback_senders.insert(session, orders);
        }
    }

    /// How `session` is reached, if it is live.
    pub fn session_reach(&self, session: SessionId) -> Option<Reach> {
        self.inner.sessions.get(&session).map(|s| s.reach)
    }

    /// Records which orders `session` understands (`AcceptOrders`
    /// flags: `ORDERS_RELAY_AT`, `ORDERS_RELAYS`).
    pub fn set_order_flags(&self, session: SessionId, flags: u8) {
        if self.inner.sessions.contains_key(&session) {
            self.inner.order_flags.insert(session, flags);
        }
    }

    /// Whether `session` understands every order in `flags`.
    pub fn takes_orders(&self, session: SessionId, flags: u8) -> bool {
        self.inner
            .order_flags
            .get(&session)
            .is_some_and(|f| *f & flags == flags)
    }

    /// A live direct session that relays for others (`ORDERS_RELAYS`),
    /// other than those in `not`, taken in turn: (session, its published
    /// address). `None` when there is none.
    pub fn pick_peer_relay(&self, not: &[SessionId], now: Instant) -> Option<(SessionId, String)> {
        let relays: Vec<(SessionId, String)> = self
            .inner
            .order_flags
            .iter()
            .filter(|e| *e.value() & common::index_proto::ORDERS_RELAYS != 0)
            .filter(|e| !not.contains(e.key()))
            .filter_map(|e| {
                let s = self.inner.sessions.get(e.key())?;
                (s.reach == Reach::Direct && s.lease_expires > now)
                    .then(|| (*e.key(), s.addr.clone()))
            })
            .take(1024)
            .collect();
        if relays.is_empty() {
            return None;
        }
        let turn = self.inner.next_relay.fetch_add(1, Ordering::Relaxed);
        relays.get(turn % relays.len()).cloned()
    }

    /// Hands `order` (an `IndexResponse::CallbackOrder`) to `session`'s
    /// connection without waiting.
    pub fn send_callback(
        &self,
        session: SessionId,
        order: IndexResponse,
    ) -> Result<(), CallbackError> {
        let Some(tx) = self.inner.callback_senders.get(&session).map(|t| t.clone()) else {
            return Err(CallbackError::NotAccepted);
        };
        match tx.try_send(order) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Err(CallbackError::Full),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                Err(CallbackError::NotAccepted)
            }
        }
    }

    /// The live session listed as `addr` that holds `id` (whole or in
    /// part), firewalled or not. Only the file's holders are looked at.
    pub fn holder_named(&self, id: &FileId, addr: &str, now: Instant) -> Option<SessionId> {
        let mut candidates: Vec<SessionId> = self
            .inner
            .files
            .with_id(id, |f| f.holders().map(|(s, _)| s).collect())
            .unwrap_or_default();
        if let Some(rec) = self.inner.partials.get(id) {
            candidates.extend(rec.holders.keys().copied());
        }
        candidates.into_iter().find(|session| {
            self.inner
                .sessions
                .get(session)
                .is_some_and(|s| s.lease_expires > now && s.addr == addr)
        })
    }

    /// Every live holder of the whole file `id`, firewalled ones included
    /// (under their observed address), with how each is reached: (name,
    /// size, sources), direct ones first, at most 200; `None` if no live
    /// peer holds it.
    pub fn lookup_reach(
        &self,
        id: &FileId,
        now: Instant,
    ) -> Option<(String, u64, Vec<common::index_proto::SourceReach>)> {
        let (size, holders) = self
            .inner
            .files
            .with_id(id, |f| (f.size(), holders_of(f)))?;
        let mut sources = Vec::new();
        let mut names = Vec::new();
        for (session, holder_name) in &holders {
            let Some(s) = self.inner.sessions.get(session) else {
                continue;
            };
            if s.lease_expires <= now
                || sources
                    .iter()
                    .any(|x: &common::index_proto::SourceReach| x.source.addr == s.addr)
            {
                continue;
            }
            sources.push(common::index_proto::SourceReach {
                source: Source {
                    addr: s.addr.clone(),
                    nick: s.nick.clone(),
                    peer_id: s.peer_id,
                },
                reach: s.reach,
            });
            names.push(&**holder_name);
        }
        let name = most_common(names.iter().copied())?.to_string();
        // Direct holders first, then firewalled ones.
        keep_random(&mut sources, |s| s.reach != Reach::Direct);
        sources.sort_by(|a, b| {
            (a.reach != Reach::Direct, &a.source.addr)
                .cmp(&(b.reach != Reach::Direct, &b.source.addr))
        });
        Some((name, size, sources))
    }

    /// Records a session's other proven addresses (published beside its
    /// address; claimed at login) and, for a firewalled one, its inside
    /// addresses (see `IndexRequest::LoginAddrs`).
    pub fn set_other_addresses(&self, session: SessionId, also: Vec<String>, lan: Vec<String>) {
        if let Some(mut s) = self.inner.sessions.get_mut(&session) {
            s.also = also;
            s.lan = lan;
        }
    }

    /// [`Index::lookup_reach`] with each holder's other addresses, and the
    /// inside addresses of firewalled holders whose observed IP is
    /// `requester`'s (the same NAT).
    pub fn lookup_addrs(
        &self,
        id: &FileId,
        requester: IpAddr,
        now: Instant,
    ) -> Option<(String, u64, Vec<common::index_proto::SourceAddrs>)> {
        let (name, size, sources) = self.lookup_reach(id, now)?;
        let requester = requester.to_canonical();
        let holders = self.inner.files.with_id(id, holders_of).unwrap_or_default();
        // Each listed address's other and inside addresses (one pass).
        let mut extra: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for (session, _) in &holders {
            let Some(s) = self.inner.sessions.get(session) else {
                continue;
            };
            if s.lease_expires <= now || (s.also.is_empty() && s.lan.is_empty()) {
                continue;
            }
            let same_nat = s.reach == Reach::Firewalled
                && s.addr
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| a.ip().to_canonical() == requester);
            let lan = if same_nat { s.lan.clone() } else { Vec::new() };
            extra.insert(s.addr.clone(), (s.also.clone(), lan));
        }
        let sources = sources
            .into_iter()
            .map(|source| {
                let (also, lan) = extra.remove(&source.source.addr).unwrap_or_default();
                common::index_proto::SourceAddrs { source, also, lan }
            })
            .collect();
        Some((name, size, sources))
    }

    /// Whether `nonce` was used by a login lately (among the last
    /// [`MAX_REMEMBERED_NONCES`]): a replay, to be refused.
    pub fn nonce_seen(&self, nonce: &[u8; common::reach::NONCE_LEN]) -> bool {
        let seen = match self.inner.nonces.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        seen.set.contains(nonce)
    }

    /// Records `nonce` as used by a login; `false` when it was already
    /// (a replay). The oldest is forgotten past [`MAX_REMEMBERED_NONCES`].
    pub fn use_nonce(&self, nonce: [u8; common::reach::NONCE_LEN]) -> bool {
        let mut seen = match self.inner.nonces.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !seen.set.insert(nonce) {
            return false;
        }
        seen.order.push_back(nonce);
        if seen.order.len() > MAX_REMEMBERED_NONCES {
            if let Some(old) = seen.order.pop_front() {
                seen.set.remove(&old);
            }
        }
        true
    }

    /// The caps this index enforces.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Opens a session for a peer reachable at `addr` (claiming `addr`
    /// itself, from no counted source): see [`Index::open_session`].
    pub fn login(
        &self,
        addr: String,
        nick: Option<String>,
        now: Instant,
    ) -> Result<SessionId, StateError> {
        self.open_session(
            NewSession {
                claims: vec![addr.clone()],
                addr,
                nick,
                source: None,
                reach: Reach::Direct,
                peer_id: None,
            },
            now,
        )
    }

    /// Opens a session. Refused when its source already has
    /// [`Limits::max_sessions_per_source`] sessions, when a live session
    /// holds one of its address claims or its nickname.
    ///
    /// Takeover: a claim held by a session from the same source that has
    /// been silent for more than half its lease (it missed a heartbeat,
    /// which comes every third) is taken over, and that session ends. This
    /// is a peer reconnecting after its old connection died unseen
    /// (half-open); a live peer on the same host keeps its address.
    pub fn open_session(&self, new: NewSession, now: Instant) -> Result<SessionId, StateError> {
        let NewSession {
            addr,
            claims,
            nick,
            source,
            reach,
            peer_id,
        } = new;
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        if let Some(src) = source {
            let limit = self.inner.limits.max_sessions_per_source;
            let mut count = self.inner.per_source.entry(src).or_insert(0);
            if *count >= limit {
                return Err(StateError::TooManySessions { limit });
            }
            *count += 1;
        }
        // The session exists (live) before it claims anything, so that a
        // concurrent login never mistakes a claim being made for a stale one.
        self.inner.sessions.insert(
            id,
            Session {
                addr,
                reach,
                also: Vec::new(),
                lan: Vec::new(),
                claims: Vec::new(),
                source,
                charged: 0,
                nick: None,
                peer_id,
                files: KeySet::default(),
                bytes: 0,
                lease_expires: now + self.inner.lease_ttl,
                partial: HashSet::new(),
            },
        );
        let claimed = self.claim_addresses(id, &claims, source, now);
        let claimed = claimed.and_then(|()| match &nick {
            Some(nick) => self.claim_nick(id, nick, now),
            None => Ok(()),
        });
        match claimed {
            Ok(()) => {
                if let Some(mut s) = self.inner.sessions.get_mut(&id) {
                    s.claims = claims;
                    s.nick = nick;
                }
                Ok(id)
            }
            Err(e) => {
                for key in &claims {
                    self.inner.addrs.remove_if(key, |_, holder| *holder == id);
                }
                self.remove_session(id);
                Err(e)
            }
        }
    }

    /// Claims every key for `id` (see [`Index::open_session`] for takeover).
    fn claim_addresses(
        &self,
        id: SessionId,
        keys: &[String],
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), StateError> {
        for key in keys {
            loop {
                // entry() makes the check and the claim one step.
                let holder = match self.inner.addrs.entry(key.clone()) {
                    dashmap::Entry::Occupied(mut held) => {
                        let holder = *held.get();
                        if holder == id {
                            break;
                        }
                        match self.holder_state(holder, now) {
                            None => {
                                held.insert(id);
                                break;
                            }
                            Some(state) => (holder, state),
                        }
                    }
                    dashmap::Entry::Vacant(v) => {
                        v.insert(id);
                        break;
                    }
                };
                let (holder, (holder_source, silent)) = holder;
                if self.same_key(holder, id) {
                    tracing::info!(addr = %key, "a node logged in again with its key; its previous session ends");
                    self.logout(holder);
                    continue;
                }
                if source.is_some() && holder_source == source && silent {
                    // No guard is held here: logout touches `addrs` too.
                    tracing::info!(addr = %key, "a peer from the same address logged in again; its silent previous session ends");
                    self.logout(holder);
                    continue;
                }
                return Err(StateError::AddressTaken(key.clone()));
            }
        }
        Ok(())
    }

    /// A live session's source and whether it has been silent for more than
    /// half its lease; `None` if it is gone or expired.
    fn holder_state(&self, session: SessionId, now: Instant) -> Option<(Option<IpAddr>, bool)> {
        let s = self.inner.sessions.get(&session)?;
        (s.lease_expires > now).then(|| {
            let silent = s.lease_expires <= now + self.inner.lease_ttl / 2;
            (s.source, silent)
        })
    }

    fn claim_nick(&self, id: SessionId, nick: &str, now: Instant) -> Result<(), StateError> {
        self.check_nick_owner(id, nick, now)?;
        loop {
            // entry() makes the check and the claim one step: no race between two logins.
            let holder = match self.inner.nicks.entry(normalize(nick)) {
                dashmap::Entry::Occupied(mut held) => {
                    let holder = *held.get();
                    if holder != id && self.is_live(holder, now) {
                        holder
                    } else {
                        held.insert(id);
                        break;
                    }
                }
                dashmap::Entry::Vacant(v) => {
                    v.insert(id);
                    break;
                }
            };
            // The guard is dropped here: logout touches `nicks` too.
            if self.same_key(holder, id) {
                tracing::info!(%nick, "a node logged in again with its key; its previous session ends");
                self.logout(holder);
                continue;
            }
            return Err(StateError::NickTaken(nick.to_string()));
        }
        self.bind_nick(id, nick);
        Ok(())
    }

    /// Removes a session's record and its count against its source;
    /// returns the record.
    fn remove_session(&self, session: SessionId) -> Option<Session> {
        let (_, s) = self.inner.sessions.remove(&session)?;
        if let Some(src) = s.source {
            if let Some(mut n) = self.inner.per_source.get_mut(&src) {
                *n = n.saturating_sub(1);
            }
            self.inner.per_source.remove_if(&src, |_, n| *n == 0);
        }
        Some(s)
    }

    /// Bytes of the memory budget in use (see [`Limits::memory_budget`]).
    pub fn memory_used(&self) -> u64 {
        self.inner.memory.load(Ordering::Relaxed)
    }

    /// Takes `cost` bytes of the memory budget, or refuses.
    fn charge(&self, cost: u64) -> Result<(), StateError> {
        let budget = self.inner.limits.memory_budget;
        self.inner
            .memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(cost).filter(|total| *total <= budget)
            })
            .map(|_| ())
            .map_err(|_| StateError::IndexFull { budget })
    }

    fn release(&self, cost: u64) {
        let _ = self
            .inner
            .memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(cost))
            });
    }

    /// Renews a session's lease; fails if it has already been reaped.
    pub fn heartbeat(&self, session: SessionId, now: Instant) -> Result<(), StateError> {
        let mut s = self
            .inner
            .sessions
            .get_mut(&session)
            .ok_or(StateError::NoSession)?;
        if s.lease_expires <= now {
            return Err(StateError::NoSession);
        }
        s.lease_expires = now + self.inner.lease_ttl;
        Ok(())
    }

    fn is_live(&self, session: SessionId, now: Instant) -> bool {
        self.inner
            .sessions
            .get(&session)
            .is_some_and(|s| s.lease_expires > now)
    }

    /// Checks the session's lease and renews it.
    fn renew(&self, session: SessionId, now: Instant) -> Result<(), StateError> {
        self.heartbeat(session, now)
    }

    /// Adds files to a session's list. Invalid entries (bad name, absurd
    /// size, a size that contradicts an earlier registration of the same id)
    /// are counted as rejected; the rest are added.
    ///
    /// Caps (see [`Limits`]): a batch that would take the session over
    /// `max_files_per_session` files (the server's own store is exempt) or
    /// the index over its memory budget is refused whole, with
    /// [`StateError::TooManyFiles`] or [`StateError::IndexFull`]; what the
    /// session listed before stays.
    pub fn add_files(
        &self,
        session: SessionId,
        files: Vec<SharedFile>,
        now: Instant,
    ) -> Result<AddOutcome, StateError> {
        self.renew(session, now)?;
        let (held, capped) = {
            let s = self
                .inner
                .sessions
                .get(&session)
                .ok_or(StateError::NoSession)?;
            (s.files.len(), s.source.is_some())
        };
        let batch = &files[..files.len().min(MAX_FILES_PER_BATCH)];
        let limit = self.inner.limits.max_files_per_session;
        if capped && held + batch.len() > limit {
            // Near the cap: count what is new (renames are not).
            let new = batch
                .iter()
                .filter(|f| acceptable(f))
                .filter(|f| {
                    !self
                        .inner
                        .files
                        .with_id(&f.id, |r| r.holders().any(|(s, _)| s == session))
                        .unwrap_or(false)
                })
                .count();
            if held + new > limit {
                return Err(StateError::TooManyFiles { limit });
            }
        }
        // The whole batch is charged up front; what it does not add is
        // given back below.
        // Checked once: a name's check is a good part of its cost.
        let ok: Vec<bool> = batch.iter().map(acceptable).collect();
        let total: u64 = batch
            .iter()
            .zip(&ok)
            .filter(|(_, ok)| **ok)
            .map(|(f, _)| holding_cost(&f.name))
            .sum();
        self.charge(total)?;
        // Net bytes of the memory budget this batch took.
        let mut charged = total as i64;
        let mut outcome = AddOutcome::default();
        let mut new_keys: Vec<(FileKey, u64)> = Vec::new();
        // (token hash, key) of the new files, indexed together after the
        // loop (`WordIndex::add_all`: a lock per shard, not per token).
        let mut pending: Vec<(u32, FileKey)> = Vec::with_capacity(batch.len() * 16);
        let mut hashes: Vec<u32> = Vec::with_capacity(32);
        for (f, ok) in batch.iter().zip(ok) {
            if !ok {
                outcome.rejected += 1;
                continue;
            }
            let cost = holding_cost(&f.name);
            match self.inner.files.register(session, f) {
                Registered::Rejected => {
                    self.release(cost);
                    charged -= cost as i64;
                    outcome.rejected += 1
                }
                Registered::Unchanged => {
                    self.release(cost);
                    charged -= cost as i64;
                }
                Registered::Renamed(key, old) => {
                    self.release(holding_cost(&old));
                    charged -= holding_cost(&old) as i64;
                    // The old name may be one this batch added: index
                    // what is pending before taking it out.
                    self.inner.words.add_all(&pending);
                    pending.clear();
                    self.unindex_name(key, &old);
                    self.index_name(key, &f.name);
                    outcome.added += 1;
                }
                Registered::New(key) => {
                    index_hashes_into(&self.inner.words, &f.name, &mut hashes);
                    pending.extend(hashes.iter().map(|&h| (h, key)));
                    new_keys.push((key, f.size));
                    outcome.added += 1;
                }
            }
        }
        self.inner.words.add_all(&pending);
        drop(pending);
        let mut completed: Vec<FileId> = Vec::new();
        let still_there = match self.inner.sessions.get_mut(&session) {
            Some(mut s) => {
                s.charged = s.charged.saturating_add_signed(charged);
                for (key, size) in &new_keys {
                    if s.files.insert(*key) {
                        s.bytes += size;
                    }
                }
                // A file this session was downloading is now complete here.
                if !s.partial.is_empty() {
                    for f in &files {
                        if s.partial.remove(&f.id) {
                            completed.push(f.id);
                        }
                    }
                }
                true
            }
            None => false,
        };
        for id in completed {
            self.drop_partial_holder(session, id);
        }
        if !still_there {
            // The session ended (lease reaped) while we worked: undo.
            for (key, _) in new_keys {
                self.drop_holder_by_key(session, key);
            }
            // Its logout released what it was charged before this batch.
            match u64::try_from(charged) {
                Ok(more) => self.release(more),
                Err(_) => {
                    self.inner
                        .memory
                        .fetch_add(charged.unsigned_abs(), Ordering::Relaxed);
                }
            }
            return Err(StateError::NoSession);
        }
        Ok(outcome)
    }

    /// Removes files from this session's list only: other sessions' entries
    /// for the same ids are untouched.
    pub fn remove_files(
        &self,
        session: SessionId,
        ids: &[FileId],
        now: Instant,
    ) -> Result<u32, StateError> {
        self.renew(session, now)?;
        let mut count = 0;
        for id in ids.iter().take(MAX_FILES_PER_BATCH) {
            let was_partial = self
                .inner
                .sessions
                .get_mut(&session)
                .is_some_and(|mut s| s.partial.remove(id));
            if was_partial {
                self.drop_partial_holder(session, *id);
                count += 1;
            }
            if let Some((key, size, cost)) = self.drop_holder(session, *id) {
                count += 1;
                self.release(cost);
                if let Some(mut s) = self.inner.sessions.get_mut(&session) {
                    s.charged = s.charged.saturating_sub(cost);
                    if s.files.remove(key) {
                        s.bytes -= size;
                    }
                }
            }
        }
        Ok(count)
    }

    /// Ends a session: its files, nickname and lease are gone at once.
    pub fn logout(&self, session: SessionId) {
        self.inner.callback_senders.remove(&session);
        self.inner.order_flags.remove(&session);
        let Some(s) = self.remove_session(session) else {
            return;
        };
        self.release(s.charged);
        for key in &s.claims {
            self.inner
                .addrs
                .remove_if(key, |_, holder| *holder == session);
        }
        if let Some(nick) = &s.nick {
            self.inner
                .nicks
                .remove_if(&normalize(nick), |_, holder| *holder == session);
            self.nick_offline(nick, s.peer_id);
        }
        for key in s.files.keys() {
            self.drop_holder_by_key(session, key);
        }
        for id in s.partial {
            self.drop_partial_holder(session, id);
        }
    }

    fn drop_partial_holder(&self, session: SessionId, id: FileId) {
        if let Some(mut rec) = self.inner.partials.get_mut(&id) {
            if let Some(name) = rec.holders.remove(&session) {
                self.release(holding_cost(&name));
            }
        }
        self.inner
            .partials
            .remove_if(&id, |_, rec| rec.holders.is_empty());
    }

    /// Lists files a session is still downloading, so that other downloaders
    /// fetch the chunks it already has. Ids it holds complete are skipped;
    /// bad names, absurd or contradicting sizes and entries over
    /// [`MAX_PARTIAL_PER_SESSION`] are rejected.
    pub fn add_partial(
        &self,
        session: SessionId,
        files: Vec<SharedFile>,
        now: Instant,
    ) -> Result<AddOutcome, StateError> {
        self.renew(session, now)?;
        let mut outcome = AddOutcome::default();
        // Checks against the shared tables first, one guard at a time.
        let mut candidates = Vec::new();
        for f in files.into_iter().take(MAX_FILES_PER_BATCH) {
            if !acceptable(&f) {
                outcome.rejected += 1;
                continue;
            }
            let (size_conflict, complete_here) = self
                .inner
                .files
                .with_id(&f.id, |r| {
                    (r.size() != f.size, r.holders().any(|(s, _)| s == session))
                })
                .unwrap_or((false, false));
            let partial_conflict = self
                .inner
                .partials
                .get(&f.id)
                .is_some_and(|r| r.size != f.size);
            if size_conflict || partial_conflict {
                outcome.rejected += 1;
            } else if !complete_here {
                candidates.push(f);
            }
        }
        let mut added = Vec::new();
        {
            let mut s = self
                .inner
                .sessions
                .get_mut(&session)
                .ok_or(StateError::NoSession)?;
            for f in candidates {
                if s.partial.len() >= MAX_PARTIAL_PER_SESSION && !s.partial.contains(&f.id) {
                    outcome.rejected += 1;
                    continue;
                }
                if self.charge(holding_cost(&f.name)).is_err() {
                    outcome.rejected += 1;
                    continue;
                }
                s.partial.insert(f.id);
                outcome.added += 1;
                added.push(f);
            }
        }
        for f in added {
            let replaced = self
                .inner
                .partials
                .entry(f.id)
                .or_insert_with(|| PartialRecord {
                    size: f.size,
                    holders: HashMap::new(),
                })
                .holders
                .insert(session, f.name.into_boxed_str());
            if let Some(old) = replaced {
                self.release(holding_cost(&old));
            }
        }
        Ok(outcome)
    }

    /// Live sources of a file for a swarming downloader: complete holders
    /// and partial ones (each address once, complete first).
    pub fn swarm_lookup(&self, id: &FileId, now: Instant) -> Option<SwarmSources> {
        let partial_holders = self.inner.partials.get(id).map(|rec| {
            (
                rec.size,
                rec.holders.iter().map(|(s, n)| (*s, n.clone())).collect(),
            )
        });
        let complete = self.lookup(id, now);
        let listed = complete.as_ref().map_or(&[][..], |(_, _, sources)| sources);
        let partial = partial_holders.and_then(|(size, holders)| {
            let live = self.live_sources(holders, listed, now, |_| true)?;
            Some((live.name, size, live.sources))
        });
        let (name, size, complete, partial) = match (complete, partial) {
            (Some((name, size, complete)), partial) => (
                name,
                size,
                complete,
                partial.map(|p| p.2).unwrap_or_default(),
            ),
            (None, Some((name, size, partial))) => (name, size, Vec::new(), partial),
            (None, None) => return None,
        };
        Some(SwarmSources {
            name,
            size,
            complete,
            partial,
        })
    }

    /// Removes every session whose lease has run out. Returns how many.
    pub fn reap_expired(&self, now: Instant) -> usize {
        let expired: Vec<SessionId> = self
            .inner
            .sessions
            .iter()
            .filter(|s| s.lease_expires <= now)
            .map(|s| *s.key())
            .collect();
        for id in &expired {
            self.logout(*id);
        }
        self.sweep_nicks(now);
        expired.len()
    }

    /// Withdraws `session`'s entry for `id`; returns the file's key, size
    /// and the budget bytes it was charged if the session held it. The key may be reused (by a new file) before
    /// the old name's words are withdrawn: the word index counts
    /// occurrences, so the two orders end the same, and a search confirms
    /// every file it lists against its names.
    fn drop_holder(&self, session: SessionId, id: FileId) -> Option<(FileKey, u64, u64)> {
        let dropped = self.inner.files.drop_holder(session, &id)?;
        self.unindex_name(dropped.key, &dropped.name);
        Some((dropped.key, dropped.size, holding_cost(&dropped.name)))
    }

    /// [`drop_holder`](Self::drop_holder) for a file known by its key (one
    /// of the session's own).
    fn drop_holder_by_key(&self, session: SessionId, key: FileKey) {
        if let Some(dropped) = self.inner.files.drop_holder_by_key(session, key) {
            self.unindex_name(dropped.key, &dropped.name);
        }
    }

    fn index_name(&self, key: FileKey, name: &str) {
        let words = &self.inner.words;
        for h in index_hashes(words, name) {
            words.add(h, key);
        }
    }

    fn unindex_name(&self, key: FileKey, name: &str) {
        let words = &self.inner.words;
        for h in index_hashes(words, name) {
            words.remove(h, key);
        }
    }

    /// The live sources among `holders` whose address is not `listed`
    /// already, sorted and capped, and the name to show: the one most live
    /// holders use among those `preferred` (the names that match a query),
    /// else among all (ties go to the earliest holder). `None` if none is
    /// live.
    /// A result for a file with live holders: the name chosen as by
    /// [`Self::live_sources`], and the count of live sources.
    fn live_hit(
        &self,
        id: FileId,
        size: u64,
        holders: Holders,
        now: Instant,
        preferred: impl Fn(&str) -> bool,
    ) -> Option<SearchHit> {
        let live = self.live_sources(holders, &[], now, preferred)?;
        Some(SearchHit {
            id,
            name: live.name,
            size,
            sources: live.sources.len() as u32,
        })
    }

    fn live_sources(
        &self,
        holders: Holders,
        listed: &[Source],
        now: Instant,
        preferred: impl Fn(&str) -> bool,
    ) -> Option<LiveSources> {
        let mut sources: Vec<Source> = Vec::with_capacity(holders.len());
        let mut names: Vec<&str> = Vec::with_capacity(holders.len());
        for (session, holder_name) in &holders {
            let Some(s) = self.inner.sessions.get(session) else {
                continue;
            };
            // A firewalled peer has no address anyone can dial.
            if s.lease_expires <= now
                || s.reach == Reach::Firewalled
                || listed.iter().chain(&sources).any(|src| src.addr == s.addr)
            {
                continue;
            }
            sources.push(Source {
                addr: s.addr.clone(),
                nick: s.nick.clone(),
                peer_id: s.peer_id,
            });
            names.push(holder_name);
        }
        let matched = most_common(names.iter().copied().filter(|n| preferred(n)));
        let name = matched.or_else(|| most_common(names.iter().copied()))?;
        keep_random(&mut sources, |_| false);
        sources.sort_by(|a, b| a.addr.cmp(&b.addr));
        Some(LiveSources {
            name: name.to_string(),
            matched: matched.is_some(),
            sources,
        })
    }

    /// Live sources of a file, as (name, size, sources); `None` if no live peer has it.
    pub fn lookup(&self, id: &FileId, now: Instant) -> Option<(String, u64, Vec<Source>)> {
        // Copy the holders out: no files guard is held while reading sessions.
        let (size, holders) = self
            .inner
            .files
            .with_id(id, |f| (f.size(), holders_of(f)))?;
        let live = self.live_sources(holders, &[], now, |_| true)?;
        Some((live.name, size, live.sources))
    }

    /// Waits for a place among the searches that may run at once: half the
    /// cores, at least one, so that searches never take every core from
    /// lookups and registrations (`None` only if the index is closing).
    pub async fn search_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.inner.search_slots.acquire().await.ok()
    }

    /// Notes that a request other than a search took `spent` to handle:
    /// searches running while such requests keep the index busy pause
    /// between slices of their work (see [`Pacer`]).
    pub fn note_foreground(&self, spent: std::time::Duration) {
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .foreground_nanos
            .fetch_add(nanos, Ordering::Relaxed);
        self.inner
            .foreground_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Files matching `words` (see `common::search`), best first, at most
    /// `limit`; nothing when the words hold no term.
    pub fn search(&self, words: &[String], limit: usize, now: Instant) -> Vec<SearchHit> {
        self.search_counted(words, limit, now).0
    }

    /// [`Self::search`], and how many files matched before the cut to `limit`.
    pub fn search_counted(
        &self,
        words: &[String],
        limit: usize,
        now: Instant,
    ) -> (Vec<SearchHit>, u64) {
        match Query::parse(words) {
            Ok(query) => {
                let found = self.search_query(&query, &SearchFilter::default(), limit, now);
                (found.hits, found.total)
            }
            Err(_) => (Vec::new(), 0),
        }
    }

    /// Files with a live holder whose name matches `query` and passes
    /// `filter`, best first: whole-word matches before prefix ones, then
    /// more live sources, then shorter names (then by name and id); at
    /// most `limit`, and how many matched in all.
    ///
    /// The word index answers by token hashes and keys are reused, so its
    /// candidates are confirmed against the holders' names
    /// (`Query::match_name`). At most [`MAX_RANKED`] candidates are
    /// confirmed and ranked: beyond that the whole-word ones go first, and
    /// the total is counted on the word index when that count is exact
    /// (`Self::exact_count`: no filter, terms of at most 4 ASCII
    /// characters, which is what matches that many files), else estimated
    /// from the share of ranked candidates that matched (`total_exact:
    /// false`).
    pub fn search_query(
        &self,
        query: &Query,
        filter: &SearchFilter,
        limit: usize,
        now: Instant,
    ) -> SearchOutcome {
        let mut pacer = Pacer::new(&self.inner);
        let (mut candidates, scale) = self.query_candidates(query, &mut pacer);
        let found = candidates.len();
        let capped = found > MAX_RANKED || scale > 1.0;
        if found > MAX_RANKED {
            // Files where a term is a whole word go first (they rank first),
            // then the others in key order, up to the cap.
            let index = &self.inner.words;
            let mut first: Vec<FileKey> = Vec::new();
            for t in &query.include {
                if !matches!(t, Term::Seq(_)) {
                    let h = index.token_hash(TokenKind::Word, t.text());
                    let whole = index.keys_first(h, SAMPLE);
                    first = union_sorted(first, intersect_sorted(&whole, &candidates));
                }
            }
            first.truncate(MAX_RANKED);
            let room = MAX_RANKED - first.len();
            let rest: Vec<FileKey> = candidates
                .iter()
                .filter(|k| first.binary_search(k).is_err())
                .take(room)
                .copied()
                .collect();
            first.extend(rest);
            candidates = first;
        }
        let ranked_count = candidates.len();
        let mut live: HashMap<SessionId, bool> = HashMap::new();
        let mut is_live = |s: SessionId| -> bool {
            *live.entry(s).or_insert_with(|| {
                self.inner
                    .sessions
                    .get(&s)
                    .is_some_and(|x| x.lease_expires > now)
            })
        };
        // Confirm every candidate against its holders' names: (key, id,
        // holders: (session, the query's terms in its name, whether the
        // name passes the filter, its length in characters)).
        type Found = (SessionId, TermsFound, bool, u32);
        let mut confirmed: Vec<(FileKey, FileId, SmallVec<[Found; 2]>)> = Vec::new();
        self.inner.files.with_keys(
            &candidates,
            |key, f| {
                if !filter.accepts_size(f.size()) {
                    return;
                }
                let mut holders: SmallVec<[Found; 2]> = SmallVec::new();
                let mut any = TermsFound::default();
                for (session, name) in f.holders() {
                    let terms = query.terms_in(name);
                    any = any.unite(terms);
                    let passes = filter.accepts(f.size(), name);
                    holders.push((session, terms, passes, name.chars().count() as u32));
                }
                if any.matched(query).is_some() {
                    confirmed.push((key, f.id(), holders));
                }
            },
            |n| pacer.step(n),
        );
        let mut scored: Vec<Scored> = Vec::new();
        for (key, id, holders) in confirmed {
            // The live holders' names together must match; ranked by the
            // best of those names that passes the filter.
            let mut sources = 0u32;
            let mut terms = TermsFound::default();
            let mut shortest: Option<u32> = None;
            for (session, found, passes, len) in holders {
                if !is_live(session) {
                    continue;
                }
                sources += 1;
                terms = terms.unite(found);
                if passes && found.any != 0 {
                    shortest = Some(shortest.map_or(len, |s| s.min(len)));
                }
            }
            if let (Some(m), Some(name_len)) = (terms.matched(query), shortest) {
                scored.push(Scored {
                    key,
                    id,
                    prefix_only: m.prefix_only,
                    sources,
                    name_len,
                });
            }
        }
        let matched = scored.len();
        let exact = if capped {
            self.exact_count(query, filter)
        } else {
            None
        };
        let total = match exact {
            Some(n) => n,
            None if capped && ranked_count > 0 => {
                (matched as f64 * found as f64 / ranked_count as f64 * scale).round() as u64
            }
            None => matched as u64,
        };
        let total_exact = !capped || exact.is_some();
        let rank = |a: &Scored, b: &Scored| {
            a.prefix_only
                .cmp(&b.prefix_only)
                .then(b.sources.cmp(&a.sources))
                .then(a.name_len.cmp(&b.name_len))
                .then(a.key.cmp(&b.key))
        };
        if scored.len() > limit && limit > 0 {
            scored.select_nth_unstable_by(limit - 1, rank);
        }
        scored.truncate(limit);
        // Show a name that has every term and passes the filter, if one
        // does (else the most common name).
        let shown = |name: &str| query.match_name(name).is_some() && filter.accepts_name(name);
        let mut hits: Vec<(u8, u32, SearchHit)> = scored
            .into_iter()
            .filter_map(|s| {
                let (size, holders) = self
                    .inner
                    .files
                    .with_key(s.key, |f| {
                        (f.id() == s.id).then(|| (f.size(), holders_of(f)))
                    })
                    .flatten()?;
                let hit = self.live_hit(s.id, size, holders, now, shown)?;
                Some((s.prefix_only, hit.name.chars().count() as u32, hit))
            })
            .collect();
        hits.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.2.sources.cmp(&a.2.sources))
                .then(a.1.cmp(&b.1))
                .then_with(|| a.2.name.cmp(&b.2.name))
                .then(a.2.id.cmp(&b.2.id))
        });
        SearchOutcome {
            truncated: total > hits.len() as u64,
            hits: hits.into_iter().map(|(_, _, h)| h).collect(),
            total,
            total_exact,
        }
    }

    /// How many files match `query`, counted on the word index alone, when
    /// that count is exact: no filter, and every term (included or
    /// excluded) a prefix or word whose tokens are spelled out in their
    /// codes (`words::token_is_exact`: at most 4 ASCII characters), so
    /// that each posting list holds exactly the files with the token. A
    /// term's files are then the union of its lists (`Word(q)` and the
    /// prefix token of `q`), the match the intersection of the included
    /// terms less the excluded ones, computed on bitmaps of keys (about
    /// 128 KiB at a million files, the dense parts of lists ORed a word at
    /// a time). It counts every listed holder, including one whose lease
    /// ran out since the reaper last ran; `None` when not exact.
    fn exact_count(&self, query: &Query, filter: &SearchFilter) -> Option<u64> {
        if *filter != SearchFilter::default() {
            return None;
        }
        let exact = |t: &Term| {
            !matches!(t, Term::Seq(_))
                && t.tokens()
                    .iter()
                    .all(|(k, text)| words::token_is_exact(*k, text))
        };
        if !query.include.iter().chain(&query.exclude).all(exact) {
            return None;
        }
        let index = &self.inner.words;
        let term_bits = |t: &Term| {
            let mut bits = Vec::new();
            for (k, text) in t.tokens() {
                index.or_into(index.token_hash(k, &text), &mut bits);
            }
            bits
        };
        let mut terms = query.include.iter();
        let mut acc = term_bits(terms.next()?);
        for t in terms {
            let bits = term_bits(t);
            acc.truncate(bits.len());
            for (a, b) in acc.iter_mut().zip(&bits) {
                *a &= b;
            }
        }
        for t in &query.exclude {
            let bits = term_bits(t);
            for (a, b) in acc.iter_mut().zip(&bits) {
                *a &= !b;
            }
        }
        Some(acc.iter().map(|w| u64::from(w.count_ones())).sum())
    }

    /// Keys of the files whose names may match every included term of
    /// `query` (the word index's answer, to be confirmed against the
    /// names). The term with the fewest candidates is listed; the others
    /// only filter it, so a common two-letter prefix beside a rare word
    /// costs one pass over the rare word's files.
    fn query_candidates(&self, query: &Query, pacer: &mut Pacer<'_>) -> (Vec<FileKey>, f64) {
        let index = &self.inner.words;
        // Per term: (estimated count, is an intersection, hashes).
        let mut terms: Vec<(usize, bool, Vec<u32>)> = Vec::with_capacity(query.include.len());
        for t in &query.include {
            let hashes: Vec<u32> = t
                .tokens()
                .iter()
                .map(|(k, text)| index.token_hash(*k, text))
                .collect();
            let all = matches!(t, Term::Seq(_));
            let sizes = hashes.iter().map(|h| index.len(*h));
            let estimate = if all {
                sizes.min().unwrap_or(0)
            } else {
                sizes.sum()
            };
            if estimate == 0 {
                return (Vec::new(), 1.0);
            }
            terms.push((estimate, all, hashes));
        }
        terms.sort_by_key(|t| t.0);
        let Some((estimate, all, hashes)) = terms.first() else {
            return (Vec::new(), 1.0);
        };
        // A term in more files than a search samples (a two-letter prefix
        // of a million names) is listed only so far, whole words first
        // (its `Word` list comes first): enough to rank, and to estimate
        // the total from.
        let sampled = *estimate > SAMPLE;
        let mut keys: Vec<FileKey> = if *all {
            let mut by_size: Vec<u32> = hashes.clone();
            by_size.sort_by_key(|h| index.len(*h));
            let mut keys = index.keys_first(by_size[0], SAMPLE);
            for h in &by_size[1..] {
                self.retain_paced(*h, &mut keys, pacer);
            }
            keys
        } else {
            // Each posting list is in key order: merge them.
            let mut keys = Vec::new();
            for h in hashes {
                let room = SAMPLE.saturating_sub(keys.len());
                if room == 0 {
                    break;
                }
                keys = union_sorted(keys, index.keys_first(*h, room));
            }
            keys
        };
        let listed = if *all {
            (*estimate).min(SAMPLE)
        } else {
            keys.len()
        };
        let scale = if sampled {
            *estimate as f64 / listed.max(1) as f64
        } else {
            1.0
        };
        for (_, all, hashes) in &terms[1..] {
            if *all {
                for h in hashes {
                    self.retain_paced(*h, &mut keys, pacer);
                }
            } else {
                let mut marks = vec![false; keys.len()];
                for h in hashes {
                    self.mark_paced(*h, &keys, &mut marks, pacer);
                }
                let mut it = marks.into_iter();
                keys.retain(|_| it.next().unwrap_or(false));
            }
            if keys.is_empty() {
                break;
            }
        }
        (keys, scale)
    }

    /// `WordIndex::mark_containing` over `keys`, [`KEYS_PER_LOCK`] at a
    /// time, pacing the search between blocks (with no lock held).
    fn mark_paced(&self, h: u32, keys: &[FileKey], marks: &mut [bool], pacer: &mut Pacer<'_>) {
        for (k, m) in keys
            .chunks(KEYS_PER_LOCK)
            .zip(marks.chunks_mut(KEYS_PER_LOCK))
        {
            self.inner.words.mark_containing(h, k, m);
            pacer.step(k.len());
        }
    }

    /// Keeps the `keys` that may hold the token hashed to `h`, as
    /// [`Self::mark_paced`] finds them.
    fn retain_paced(&self, h: u32, keys: &mut Vec<FileKey>, pacer: &mut Pacer<'_>) {
        let mut marks = vec![false; keys.len()];
        self.mark_paced(h, keys, &mut marks, pacer);
        let mut it = marks.into_iter();
        keys.retain(|_| it.next().unwrap_or(false));
    }

    /// Keys of the files whose names may hold every one of these token
    /// hashes. Starts from the rarest and copies its keys, so that no
    /// guard is held while the others are checked.
    fn candidates(&self, hashes: &[u32]) -> Vec<FileKey> {
        let index = &self.inner.words;
        let mut sizes = Vec::with_capacity(hashes.len());
        for &h in hashes {
            match index.len(h) {
                0 => return Vec::new(),
                n => sizes.push((n, h)),
            }
        }
        sizes.sort();
        let Some(&(_, rarest)) = sizes.first() else {
            return Vec::new();
        };
        let mut candidates: Vec<FileKey> = index.keys(rarest);
        for &(_, h) in &sizes[1..] {
            index.retain_containing(h, &mut candidates);
        }
        candidates
    }

    /// Files one of whose live holders uses the exact name `name` (the
    /// whole name or its last component, after normalization), each under
    /// the matching name most of them use, most sources first, at most
    /// `limit`. Unlike [`search`](Self::search) it takes every word of the
    /// name, whatever their number and length: any name that can be
    /// registered can be looked up.
    pub fn lookup_name(&self, name: &str, limit: usize, now: Instant) -> Vec<SearchHit> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Vec::new();
        }
        let key = normalize(name);
        // Whole words and character pairs of the name: every holder's name
        // equal to it (or ending in it) was indexed under them.
        let index = &self.inner.words;
        let mut hashes = Vec::new();
        search::for_each_token(&search::fold(&key), |kind, text| {
            if matches!(kind, TokenKind::Word | TokenKind::Pair) {
                hashes.push(index.token_hash(kind, text));
            }
        });
        if hashes.is_empty() {
            // Names without words are indexed under the empty word.
            hashes.push(index.token_hash(TokenKind::Word, ""));
        }
        hashes.sort_unstable();
        hashes.dedup();
        let mut hits: Vec<SearchHit> = self
            .candidates(&hashes)
            .into_iter()
            .filter_map(|k| {
                let (id, size, holders) = self
                    .inner
                    .files
                    .with_key(k, |f| {
                        f.holders()
                            .any(|(_, n)| name_matches(n, &key))
                            .then(|| (f.id(), f.size(), holders_of(f)))
                    })
                    .flatten()?;
                let live = self.live_sources(holders, &[], now, |n| name_matches(n, &key))?;
                live.matched.then_some(SearchHit {
                    id,
                    name: live.name,
                    size,
                    sources: live.sources.len() as u32,
                })
            })
            .collect();
        sort_hits(&mut hits);
        hits.truncate(limit);
        hits
    }

    /// Files with a live holder whose id starts with `prefix`, most sources
    /// first, at most `limit`. Walks the one shard of the files table the
    /// prefix names (1/64 of the files), stopping after a few times `limit`
    /// matches.
    pub fn lookup_prefix(&self, prefix: &IdPrefix, limit: usize, now: Instant) -> Vec<SearchHit> {
        let mut found: Vec<(FileId, u64, Holders)> = Vec::new();
        let most = limit.saturating_mul(4).max(16);
        self.inner.files.for_prefix(prefix, |f| {
            found.push((f.id(), f.size(), holders_of(f)));
            found.len() < most
        });
        let mut hits: Vec<SearchHit> = found
            .into_iter()
            .filter_map(|(id, size, holders)| self.live_hit(id, size, holders, now, |_| true))
            .collect();
        sort_hits(&mut hits);
        hits.truncate(limit);
        hits
    }

    /// The live session holding nickname or address `who`. Both are unique
    /// among live sessions (claimed at login), so this never has to pick
    /// one of several.
    fn find_session(&self, who: &str, now: Instant) -> Option<SessionId> {
        let by_nick = self.inner.nicks.get(&normalize(who)).map(|s| *s);
        let by_addr = || self.inner.addrs.get(&canonical_addr(who)).map(|s| *s);
        let session = by_nick.or_else(by_addr)?;
        self.is_live(session, now).then_some(session)
    }

    /// A page of one live peer's list (by address or nickname), sorted by name.
    pub fn browse(
        &self,
        who: &str,
        start: usize,
        page: usize,
        now: Instant,
    ) -> Option<(Vec<SharedFile>, Option<u32>)> {
        let session = self.find_session(who, now)?;
        let keys: Vec<FileKey> = self.inner.sessions.get(&session)?.files.keys();
        let mut files: Vec<SharedFile> = keys
            .into_iter()
            .filter_map(|key| {
                self.inner
                    .files
                    .with_key(key, |f| {
                        let (_, name) = f.holders().find(|(s, _)| *s == session)?;
                        Some(SharedFile {
                            id: f.id(),
                            name: name.to_string(),
                            size: f.size(),
                        })
                    })
                    .flatten()
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let end = (start + page).min(files.len());
        let next = (end < files.len()).then_some(end as u32);
        let page = files
            .get(start..end)
            .map(|p| p.to_vec())
            .unwrap_or_default();
        Some((page, next))
    }

    /// A page of live peers, sorted by address.
    pub fn peers(
        &self,
        start: usize,
        page: usize,
        now: Instant,
    ) -> (Vec<PeerSummary>, Option<u32>) {
        let (page, next) = self.peers_reach(start, page, now);
        (page.into_iter().map(|p| p.summary).collect(), next)
    }

    /// A page of live peers with how each can be reached, sorted by address.
    pub fn peers_reach(
        &self,
        start: usize,
        page: usize,
        now: Instant,
    ) -> (Vec<PeerReach>, Option<u32>) {
        let mut all: Vec<PeerReach> = self
            .inner
            .sessions
            .iter()
            .filter(|s| s.lease_expires > now)
            .map(|s| PeerReach {
                summary: PeerSummary {
                    addr: s.addr.clone(),
                    nick: s.nick.clone(),
                    peer_id: s.peer_id,
                    files: s.files.len() as u64,
                    bytes: s.bytes,
                },
                reach: s.reach,
            })
            .collect();
        all.sort_by(|a, b| a.summary.addr.cmp(&b.summary.addr));
        let end = (start + page).min(all.len());
        let next = (end < all.len()).then_some(end as u32);
        (
            all.get(start..end).map(|p| p.to_vec()).unwrap_or_default(),
            next,
        )
    }

    /// The live peer holding `nick`, if any (presence and location).
    pub fn whois(&self, nick: &str, now: Instant) -> Option<PeerSummary> {
        // Copy the session id out before touching the sessions table (one guard at a time).
        let session = *self.inner.nicks.get(&normalize(nick))?;
        let s = self.inner.sessions.get(&session)?;
        (s.lease_expires > now).then(|| PeerSummary {
            addr: s.addr.clone(),
            nick: s.nick.clone(),
            peer_id: s.peer_id,
            files: s.files.len() as u64,
            bytes: s.bytes,
        })
    }

    /// The histogram of search durations, observed by the handler and
    /// exported by [`crate::metrics`].
    pub fn search_seconds(&self) -> &prometheus::Histogram {
        &self.inner.search_seconds
    }

    /// Counts one handled request of `kind` (a request variant's name).
    pub fn count_request(&self, kind: &'static str) {
        match REQUEST_KINDS.iter().position(|k| *k == kind) {
            Some(i) => self.inner.requests[i].fetch_add(1, Ordering::Relaxed),
            None => self.inner.other_requests.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// How many requests of each kind the index has handled since it
    /// started: what crossed the server, for operators and for tests that
    /// prove some traffic (direct messages) never does.
    pub fn request_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut counts: std::collections::BTreeMap<&'static str, u64> = REQUEST_KINDS
            .iter()
            .zip(&self.inner.requests)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let other = self.inner.other_requests.load(Ordering::Relaxed);
        if other > 0 {
            counts.insert("other", other);
        }
        counts
    }

    /// Live peers, distinct live files and their bytes, as of at most
    /// [`STATS_MAX_AGE`] ago.
    pub fn stats(&self, now: Instant) -> IndexStats {
        let cache = || {
            self.inner
                .stats_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if let Some((at, stats)) = *cache() {
            if now.saturating_duration_since(at) < STATS_MAX_AGE {
                return stats;
            }
        }
        // Counted without the lock held: two requests at once may both
        // count, which is harmless.
        let stats = self.count_stats(now);
        *cache() = Some((now, stats));
        stats
    }

    fn count_stats(&self, now: Instant) -> IndexStats {
        let live: HashSet<SessionId> = self
            .inner
            .sessions
            .iter()
            .filter(|s| s.lease_expires > now)
            .map(|s| *s.key())
            .collect();
        let mut stats = IndexStats {
            peers: live.len() as u64,
            ..Default::default()
        };
        self.inner.files.for_each(|f| {
            if f.holders().any(|(s, _)| live.contains(&s)) {
                stats.files += 1;
                stats.bytes += f.size();
            }
        });
        stats
    }

    /// Opens a session that never expires (the server's own store): it
    /// needs no heartbeat and is listed as a source like any peer.
    pub fn login_permanent(
        &self,
        addr: String,
        nick: Option<String>,
        now: Instant,
    ) -> Result<SessionId, StateError> {
        let id = self.login(addr, nick, now)?;
        self.make_permanent(id, now);
        Ok(id)
    }

    /// Pushes a session's lease out of reach again (`add_files` and
    /// `remove_files` renew it to the normal lease, so a permanent session
    /// calls this after each of them).
    pub fn make_permanent(&self, session: SessionId, now: Instant) {
        // About a century: effectively no lease (checked add: never a panic).
        let forever = Duration::from_secs(100 * 365 * 24 * 3600);
        if let Some(mut s) = self.inner.sessions.get_mut(&session) {
            s.lease_expires = now.checked_add(forever).unwrap_or(s.lease_expires);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8, name: &str) -> SharedFile {
        SharedFile {
            id: FileId([n; 32]),
            name: name.into(),
            size: n as u64 * 10,
        }
    }

    fn session_at(addr: &str, source: &str) -> NewSession {
        NewSession {
            reach: Reach::Direct,
            addr: addr.into(),
            claims: vec![addr.into()],
            nick: None,
            source: Some(source.parse().unwrap()),
            peer_id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_is_held_by_one_live_session() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let real = idx
            .open_session(session_at("10.0.0.1:7000", "10.0.0.1"), now)
            .unwrap();
        idx.add_files(real, vec![file(1, "real")], now).unwrap();
        // Another host, or a live session on the same host: refused.
        for source in ["10.0.0.9", "10.0.0.1"] {
            assert_eq!(
                idx.open_session(session_at("10.0.0.1:7000", source), now),
                Err(StateError::AddressTaken("10.0.0.1:7000".into()))
            );
        }
        assert_eq!(
            idx.browse("10.0.0.1:7000", 0, 10, now).unwrap().0[0].name,
            "real"
        );
        // Silent for over half its lease (a dead connection not yet seen):
        // the same source takes over, another source still cannot.
        tokio::time::advance(Duration::from_secs(31)).await;
        let now = Instant::now();
        assert!(idx
            .open_session(session_at("10.0.0.1:7000", "10.0.0.9"), now)
            .is_err());
        let again = idx
            .open_session(session_at("10.0.0.1:7000", "10.0.0.1"), now)
            .unwrap();
        assert!(
            idx.lookup(&FileId([1; 32]), now).is_none(),
            "old session ended"
        );
        assert_eq!(idx.browse("10.0.0.1:7000", 0, 10, now).unwrap().0.len(), 0);
        idx.logout(again);
        // Once it has gone, anybody may use the address.
        assert!(idx
            .open_session(session_at("10.0.0.1:7000", "10.0.0.9"), now)
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_files_and_memory_are_capped() {
        let limits = Limits {
            max_files_per_session: 3,
            max_sessions_per_source: 2,
            memory_budget: 5 * (HOLDING_COST + 2),
            ..Limits::default()
        };
        let idx = Index::with_limits(Duration::from_secs(60), limits);
        let now = Instant::now();
        let a = idx
            .open_session(session_at("10.0.0.1:7001", "10.0.0.1"), now)
            .unwrap();
        let b = idx
            .open_session(session_at("10.0.0.1:7002", "10.0.0.1"), now)
            .unwrap();
        assert_eq!(
            idx.open_session(session_at("10.0.0.1:7003", "10.0.0.1"), now),
            Err(StateError::TooManySessions { limit: 2 })
        );
        let names = |from: u8, n: u8| {
            (from..from + n)
                .map(|i| file(i, &format!("f{i}")))
                .collect()
        };
        idx.add_files(a, names(1, 3), now).unwrap();
        // A batch over the cap is refused whole.
        assert_eq!(
            idx.add_files(a, names(4, 2), now),
            Err(StateError::TooManyFiles { limit: 3 })
        );
        assert_eq!(idx.browse("10.0.0.1:7001", 0, 10, now).unwrap().0.len(), 3);
        // Renaming a listed file is still allowed at the cap.
        assert!(idx.add_files(a, vec![file(1, "g1")], now).is_ok());
        assert_eq!(
            idx.add_files(b, names(5, 3), now),
            Err(StateError::IndexFull {
                budget: limits.memory_budget
            })
        );
        assert_eq!(idx.memory_used(), 3 * (HOLDING_COST + 2));
        idx.add_files(b, names(5, 2), now).unwrap();
        assert_eq!(idx.memory_used(), 5 * (HOLDING_COST + 2));
        idx.remove_files(a, &[FileId([2; 32])], now).unwrap();
        assert_eq!(idx.memory_used(), 4 * (HOLDING_COST + 2));
        idx.logout(a);
        idx.logout(b);
        assert_eq!(idx.memory_used(), 0, "every byte charged is released");
        assert!(idx
            .open_session(session_at("10.0.0.1:7003", "10.0.0.1"), now)
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn stats_are_counted_at_most_once_a_second() {
        let index = Index::new(Duration::from_secs(60));
        let a = index
            .login("10.0.0.1:1".into(), None, Instant::now())
            .unwrap();
        index
            .add_files(a, vec![file(1, "one")], Instant::now())
            .unwrap();
        let first = index.stats(Instant::now());
        assert_eq!((first.peers, first.files, first.bytes), (1, 1, 10));
        index
            .add_files(a, vec![file(2, "two")], Instant::now())
            .unwrap();
        tokio::time::advance(STATS_MAX_AGE / 2).await;
        assert_eq!(
            index.stats(Instant::now()),
            first,
            "answered from the cache"
        );
        tokio::time::advance(STATS_MAX_AGE / 2).await;
        let later = index.stats(Instant::now());
        assert_eq!((later.peers, later.files, later.bytes), (1, 2, 30));
    }

    #[tokio::test(start_paused = true)]
    async fn partial_holders_are_listed_apart_and_upgrade_to_complete() {
        let index = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let seed = index.login("10.0.0.1:1".into(), None, now).unwrap();
        let leecher = index.login("10.0.0.2:1".into(), None, now).unwrap();
        index
            .add_files(seed, vec![file(1, "movie.mkv")], now)
            .unwrap();
        let added = index
            .add_partial(leecher, vec![file(1, "movie.mkv")], now)
            .unwrap();
        assert_eq!(added.added, 1);
        let found = index.swarm_lookup(&FileId([1; 32]), now).unwrap();
        assert_eq!(found.complete.len(), 1);
        assert_eq!(found.partial[0].addr, "10.0.0.2:1");
        // Search and Lookup ignore partial holders.
        assert_eq!(index.lookup(&FileId([1; 32]), now).unwrap().2.len(), 1);
        assert_eq!(index.search(&["movie".into()], 10, now)[0].sources, 1);
        // A partial holding with no complete source is still found.
        index
            .add_partial(leecher, vec![file(2, "other")], now)
            .unwrap();
        let only = index.swarm_lookup(&FileId([2; 32]), now).unwrap();
        assert_eq!(
            (only.complete.len(), only.partial.len(), only.size),
            (0, 1, 20)
        );
        // A size that contradicts the complete holders is refused.
        let mut liar = file(1, "movie.mkv");
        liar.size = 5;
        assert_eq!(
            index
                .add_partial(leecher, vec![liar], now)
                .unwrap()
                .rejected,
            1
        );
        // Finishing turns the partial holding into a complete one.
        index
            .add_files(leecher, vec![file(1, "movie.mkv")], now)
            .unwrap();
        let found = index.swarm_lookup(&FileId([1; 32]), now).unwrap();
        assert_eq!((found.complete.len(), found.partial.len()), (2, 0));
        // Logging out drops partial holdings too.
        index.logout(leecher);
        assert!(index.swarm_lookup(&FileId([2; 32]), now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn search_needs_every_word_and_ranks_by_sources() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let b = idx.login("b:1".into(), None, now).unwrap();
        idx.add_files(
            a,
            vec![file(1, "Blue Monday.mp3"), file(2, "blue moon.ogg")],
            now,
        )
        .unwrap();
        idx.add_files(b, vec![file(2, "Blue Moon.ogg")], now)
            .unwrap();
        let hits = idx.search(&["BLUE".into()], 100, now);
        assert_eq!(
            hits.iter().map(|h| (h.id, h.sources)).collect::<Vec<_>>(),
            vec![(FileId([2; 32]), 2), (FileId([1; 32]), 1)]
        );
        assert_eq!(
            idx.search(&["blue".into(), "monday".into()], 100, now)
                .len(),
            1
        );
        assert!(idx
            .search(&["blue".into(), "tuesday".into()], 100, now)
            .is_empty());
        assert_eq!(idx.search(&["blue".into()], 1, now).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_cannot_remove_anothers_entries() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let b = idx.login("b:1".into(), None, now).unwrap();
        idx.add_files(a, vec![file(1, "x")], now).unwrap();
        assert_eq!(idx.remove_files(b, &[FileId([1; 32])], now).unwrap(), 0);
        assert_eq!(idx.lookup(&FileId([1; 32]), now).unwrap().2.len(), 1);
        assert_eq!(idx.remove_files(a, &[FileId([1; 32])], now).unwrap(), 1);
        assert!(idx.lookup(&FileId([1; 32]), now).is_none());
        assert!(idx.search(&["x".into()], 10, now).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_without_heartbeats() {
        let ttl = Duration::from_secs(30);
        let idx = Index::new(ttl);
        let a = idx
            .login("a:1".into(), Some("ana".into()), Instant::now())
            .unwrap();
        idx.add_files(a, vec![file(1, "song")], Instant::now())
            .unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        idx.heartbeat(a, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            idx.stats(Instant::now()).peers,
            1,
            "heartbeat renewed the lease"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        let now = Instant::now();
        assert!(
            idx.lookup(&FileId([1; 32]), now).is_none(),
            "expired peer still listed"
        );
        assert!(idx.search(&["song".into()], 10, now).is_empty());
        assert_eq!(idx.stats(now), IndexStats::default());
        assert!(idx.heartbeat(a, now).is_err());
        // The nickname is free again even before the reaper runs.
        assert!(idx.login("c:1".into(), Some("ana".into()), now).is_ok());
        assert_eq!(idx.reap_expired(now), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn whois_finds_live_nicknames_only() {
        let idx = Index::new(Duration::from_secs(30));
        let a = idx
            .login("a:1".into(), Some("ana".into()), Instant::now())
            .unwrap();
        idx.add_files(a, vec![file(1, "song")], Instant::now())
            .unwrap();
        let found = idx.whois("ana", Instant::now()).unwrap();
        assert_eq!((found.addr.as_str(), found.files), ("a:1", 1));
        assert!(idx.whois("bob", Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(idx.whois("ana", Instant::now()).is_none(), "lease ran out");
        let b = idx
            .login("b:1".into(), Some("ana".into()), Instant::now())
            .unwrap();
        assert_eq!(idx.whois("ana", Instant::now()).unwrap().addr, "b:1");
        idx.logout(b);
        assert!(idx.whois("ana", Instant::now()).is_none(), "logged out");
    }

    #[tokio::test(start_paused = true)]
    async fn bad_entries_are_rejected_and_nicks_are_unique() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), Some("ana".into()), now).unwrap();
        assert_eq!(
            idx.login("b:1".into(), Some("ana".into()), now),
            Err(StateError::NickTaken("ana".into()))
        );
        let out = idx
            .add_files(
                a,
                vec![
                    file(1, "ok"),
                    file(2, "bad\u{7}name"),
                    SharedFile {
                        id: FileId([3; 32]),
                        name: "huge".into(),
                        size: u64::MAX,
                    },
                ],
                now,
            )
            .unwrap();
        assert_eq!(
            out,
            AddOutcome {
                added: 1,
                rejected: 2
            }
        );
        // Same id with a contradicting size is refused.
        let b = idx.login("b:1".into(), None, now).unwrap();
        let out = idx
            .add_files(
                b,
                vec![SharedFile {
                    id: FileId([1; 32]),
                    name: "ok".into(),
                    size: 999,
                }],
                now,
            )
            .unwrap();
        assert_eq!(out.rejected, 1);
        idx.logout(a);
        assert!(idx.login("c:1".into(), Some("ana".into()), now).is_ok());
        assert_eq!(idx.stats(now).files, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn browse_pages_and_renames() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), Some("ana".into()), now).unwrap();
        idx.add_files(a, (1..=5).map(|n| file(n, &format!("f{n}"))).collect(), now)
            .unwrap();
        let (page, next) = idx.browse("a:1", 0, 2, now).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(next, Some(2));
        let (page, next) = idx.browse("ana", 4, 2, now).unwrap();
        assert_eq!((page.len(), next), (1, None));
        // Re-registering under a new name moves the word index along.
        idx.add_files(a, vec![file(1, "renamed")], now).unwrap();
        assert!(idx.search(&["f1".into()], 10, now).is_empty());
        assert_eq!(idx.search(&["renamed".into()], 10, now).len(), 1);
        assert!(idx.browse("nobody", 0, 2, now).is_none());
    }

    fn found(idx: &Index, words: &[&str], now: Instant) -> Vec<u8> {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let mut ids: Vec<u8> = idx
            .search(&words, 100, now)
            .iter()
            .map(|h| h.id.0[0])
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn sorted_key_lists_merge() {
        assert_eq!(
            union_sorted(vec![1, 4, 9], vec![2, 4, 10]),
            [1, 2, 4, 9, 10]
        );
        assert_eq!(union_sorted(vec![], vec![3]), [3]);
        assert_eq!(intersect_sorted(&[1, 4, 9, 12], &[2, 4, 9, 10]), [4, 9]);
        assert!(intersect_sorted(&[1], &[]).is_empty());
    }

    /// A query matching more files than are ranked lists the whole-word
    /// ones first and estimates its total.
    #[tokio::test(start_paused = true)]
    async fn a_query_matching_more_than_are_ranked_is_bounded() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let n = MAX_RANKED + 3_000;
        let mut files: Vec<SharedFile> = (0..n as u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                SharedFile {
                    id: FileId(id),
                    name: format!("zebra{i}.txt"),
                    size: 1,
                }
            })
            .collect();
        files.push(SharedFile {
            id: FileId([0xee; 32]),
            name: "ze.txt".into(),
            size: 1,
        });
        for batch in files.chunks(MAX_FILES_PER_BATCH) {
            idx.add_files(a, batch.to_vec(), now).unwrap();
        }
        let q = Query::parse(&["ze"]).unwrap();
        let found = idx.search_query(&q, &SearchFilter::default(), 10, now);
        assert!(found.truncated);
        // A 2-letter prefix's lists are exact: counted on the index.
        assert_eq!((found.total, found.total_exact), ((n + 1) as u64, true));
        assert_eq!(found.hits[0].name, "ze.txt", "the whole word first");
        // Less an excluded 4-letter prefix: still counted exactly.
        let q = Query::parse(&["ze", "-zebr"]).unwrap();
        let found = idx.search_query(&q, &SearchFilter::default(), 10, now);
        assert_eq!((found.total, found.total_exact), (1, true));
        // A 5-letter word is looked up by its first 4 letters and
        // confirmed on the names: beyond the ranked ones, estimated.
        let q = Query::parse(&["zebra"]).unwrap();
        let found = idx.search_query(&q, &SearchFilter::default(), 10, now);
        assert!(!found.total_exact && found.truncated);
        assert_eq!(found.total, n as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn colliding_word_hashes_are_told_apart_by_the_names() {
        // Every word hashes alike: one entry holds every file.
        let idx = Index::with_words(Duration::from_secs(60), WordIndex::colliding());
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let b = idx.login("b:1".into(), None, now).unwrap();
        idx.add_files(
            a,
            vec![
                file(1, "alpha one"),
                file(2, "beta two"),
                file(3, "Alpha three"),
            ],
            now,
        )
        .unwrap();
        idx.add_files(b, vec![file(2, "gamma two")], now).unwrap();
        assert_eq!(idx.inner.words.counts(), (1, 1));
        assert_eq!(found(&idx, &["alpha"], now), [1, 3]);
        assert_eq!(found(&idx, &["TWO"], now), [2]);
        assert_eq!(found(&idx, &["gamma"], now), [2]);
        assert_eq!(
            found(&idx, &["beta", "gamma"], now),
            [2],
            "two holders' names"
        );
        assert!(found(&idx, &["alpha", "two"], now).is_empty());
        assert!(found(&idx, &["delta"], now).is_empty());
        idx.remove_files(a, &[FileId([1; 32]), FileId([2; 32])], now)
            .unwrap();
        assert_eq!(found(&idx, &["alpha"], now), [3]);
        assert!(found(&idx, &["beta"], now).is_empty());
        assert_eq!(found(&idx, &["two"], now), [2]);
        idx.logout(b);
        idx.logout(a);
        assert_eq!(
            idx.inner.words.counts(),
            (0, 0),
            "the word index is emptied"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn holders_naming_a_file_differently_are_all_searchable() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let b = idx.login("b:1".into(), None, now).unwrap();
        let c = idx.login("c:1".into(), None, now).unwrap();
        idx.add_files(a, vec![file(1, "red apple")], now).unwrap();
        idx.add_files(b, vec![file(1, "green apple")], now).unwrap();
        idx.add_files(c, vec![file(1, "red apple")], now).unwrap();
        assert_eq!(found(&idx, &["red"], now), [1]);
        assert_eq!(found(&idx, &["green"], now), [1]);
        assert_eq!(idx.search(&["apple".into()], 10, now)[0].sources, 3);
        // The first holder leaves: the others still name it.
        idx.logout(a);
        assert_eq!(found(&idx, &["red"], now), [1]);
        let hit = &idx.search(&["apple".into()], 10, now)[0];
        assert_eq!((hit.name.as_str(), hit.sources), ("green apple", 2));
        assert_eq!(
            idx.browse("c:1", 0, 10, now).unwrap().0[0].name,
            "red apple"
        );
        idx.add_files(b, vec![file(1, "green pear")], now).unwrap();
        assert_eq!(found(&idx, &["green", "pear"], now), [1]);
        // Words may come from different holders' names (c still says apple).
        assert_eq!(found(&idx, &["green", "apple"], now), [1]);
        idx.logout(c);
        assert!(found(&idx, &["green", "apple"], now).is_empty());
        assert!(found(&idx, &["red"], now).is_empty());
        assert!(found(&idx, &["apple"], now).is_empty());
        idx.logout(b);
        assert_eq!(idx.inner.words.counts(), (0, 0));
        assert_eq!(idx.inner.files.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_name_shown_is_the_one_most_holders_use_and_any_holders_name_finds_it() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let liar = idx.login("x:1".into(), None, now).unwrap();
        idx.add_files(liar, vec![file(1, "evil/.bashrc")], now)
            .unwrap();
        let mut honest = Vec::new();
        for n in 0..2 {
            let s = idx.login(format!("h:{n}"), None, now).unwrap();
            idx.add_files(s, vec![file(1, "Movie.2023.mkv")], now)
                .unwrap();
            honest.push(s);
        }
        let a = idx.login("a:1".into(), None, now).unwrap();
        idx.add_files(a, vec![file(1, "alpha-release.mkv")], now)
            .unwrap();
        // Lookup shows the majority's name, not the first registrant's.
        assert_eq!(
            idx.lookup(&FileId([1; 32]), now).unwrap().0,
            "Movie.2023.mkv"
        );
        // Search shows a name that has the words searched for.
        let hit = |w: &str| idx.search(&[w.into()], 10, now)[0].name.clone();
        assert_eq!(hit("mkv"), "Movie.2023.mkv");
        assert_eq!(hit("alpha"), "alpha-release.mkv");
        assert_eq!(hit("movie"), "Movie.2023.mkv");
        // Exact-name lookup matches any holder's name, shown as it matched.
        for name in ["alpha-release.mkv", "ALPHA-RELEASE.MKV", "Movie.2023.mkv"] {
            let hits = idx.lookup_name(name, 10, now);
            assert_eq!(hits.len(), 1, "{name}");
            assert_eq!(hits[0].name.to_lowercase(), name.to_lowercase());
            assert_eq!(hits[0].sources, 4);
        }
        assert!(
            idx.lookup_name("alpha", 10, now).is_empty(),
            "whole names only"
        );
        // A holder that left no longer names the file.
        idx.logout(a);
        assert!(idx.lookup_name("alpha-release.mkv", 10, now).is_empty());
        assert!(idx.search(&["alpha".into()], 10, now).is_empty());
        for s in honest {
            idx.logout(s);
        }
        assert_eq!(idx.lookup(&FileId([1; 32]), now).unwrap().0, "evil/.bashrc");
    }

    /// Searches give their core back to a flood of other requests, not to
    /// a trickle such as 10,000 peers' heartbeats.
    #[test]
    fn searches_pause_for_a_busy_index_only() {
        let slice = SEARCH_SLICE;
        let us = std::time::Duration::from_micros;
        // 500 heartbeats a second at about 20 µs each: 1 % of a core, one
        // request every 2 ms.
        assert!(!foreground_is_busy(0, slice / 100, slice));
        assert!(!foreground_is_busy(1, us(20), slice));
        assert!(!foreground_is_busy(0, us(0), slice));
        // One registration batch; lookups coming every few microseconds,
        // however quick each one's handling.
        assert!(foreground_is_busy(1, us(1000), slice));
        assert!(foreground_is_busy(60, us(60), slice));
        // The lines: a tenth of the slice's time, one request every 50 µs.
        assert!(foreground_is_busy(1, slice / 10, slice));
        assert!(!foreground_is_busy(1, slice / 10 - us(1), slice));
        assert!(foreground_is_busy(5, us(5), us(250)));
        assert!(!foreground_is_busy(4, us(4), us(250)));
    }

    /// The first id bytes of the files `lookup_name(name)` finds, sorted.
    fn ids_by_name(idx: &Index, name: &str, now: Instant) -> Vec<u8> {
        let mut ids: Vec<u8> = idx
            .lookup_name(name, 10, now)
            .iter()
            .map(|h| h.id.0[0])
            .collect();
        ids.sort();
        ids
    }

    /// A name whose last component has no word of its own (in a folder
    /// that has one) is found by that component, ASCII or not; one whose
    /// last component has a word is not filed under the empty word.
    #[tokio::test(start_paused = true)]
    async fn last_components_without_words_are_found_by_name() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let names = [
            "music/!!!",
            "m\u{fa}sica/\u{2605}\u{2605}",
            "docs/--.x",
            "---",
        ];
        let files = (1..).zip(names).map(|(n, name)| file(n, name)).collect();
        idx.add_files(a, files, now).unwrap();
        let by_name = |n: &str| ids_by_name(&idx, n, now);
        assert_eq!(by_name("!!!"), [1]);
        assert_eq!(by_name("\u{2605}\u{2605}"), [2]);
        assert_eq!(by_name("--.x"), [3]);
        assert_eq!(by_name("---"), [4]);
    }

    #[tokio::test(start_paused = true)]
    async fn names_and_words_compare_after_normalization() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx
            .login("a:1".into(), Some("Jos\u{e9}".into()), now)
            .unwrap();
        let nfd = "cafe\u{301}.txt";
        let nfc = "caf\u{e9}.txt";
        idx.add_files(
            a,
            vec![
                file(1, nfd),
                file(2, &format!("docs/{nfc}")),
                file(3, "---"),
            ],
            now,
        )
        .unwrap();
        assert_eq!(found(&idx, &["caf\u{e9}"], now), [1, 2]);
        assert_eq!(found(&idx, &["CAFE\u{301}"], now), [1, 2]);
        let by_name = |n: &str| ids_by_name(&idx, n, now);
        assert_eq!(by_name(nfc), [1, 2], "whole name or last component");
        assert_eq!(by_name(nfd), [1, 2]);
        assert_eq!(by_name("DOCS/CAF\u{c9}.TXT"), [2]);
        assert_eq!(by_name("---"), [3], "a name without words");
        assert!(by_name("cafe.txt").is_empty());
        // Nicknames too: one nickname whatever its form, browse finds it.
        assert!(idx
            .login("b:1".into(), Some("JOSE\u{301}".into()), now)
            .is_err());
        assert!(idx.browse("jose\u{301}", 0, 10, now).is_some());
        assert_eq!(idx.whois("jos\u{e9}", now).unwrap().addr, "a:1");
    }

    #[tokio::test(start_paused = true)]
    async fn exact_names_are_not_bound_by_search_limits() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let long_word = format!("{}.flac", "x".repeat(129));
        let cjk = "\u{6f22}\u{5b57}".repeat(100) + " \u{7b2c}\u{4e00}\u{8a71}.mkv";
        let many = (0..40)
            .map(|n| format!("w{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        idx.add_files(
            a,
            vec![file(1, &long_word), file(2, &cjk), file(3, &many)],
            now,
        )
        .unwrap();
        assert_eq!(idx.lookup_name(&long_word, 10, now)[0].id, FileId([1; 32]));
        assert_eq!(idx.lookup_name(&cjk, 10, now)[0].id, FileId([2; 32]));
        assert_eq!(idx.lookup_name(&many, 10, now)[0].id, FileId([3; 32]));
    }

    #[tokio::test(start_paused = true)]
    async fn id_prefixes_find_live_files_only() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let mut one = file(1, "one");
        one.id.0[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let mut two = file(2, "two");
        two.id.0[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        idx.add_files(a, vec![one.clone(), two.clone(), file(3, "three")], now)
            .unwrap();
        let ids = |p: &str| -> Vec<FileId> {
            let mut v: Vec<FileId> = idx
                .lookup_prefix(&IdPrefix::parse(p).unwrap(), 10, now)
                .iter()
                .map(|h| h.id)
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids("deadbeef"), vec![one.id, two.id]);
        assert_eq!(ids("DEADBEEF01"), vec![one.id]);
        assert_eq!(ids(&FileId([3; 32]).to_hex()[..12]), vec![FileId([3; 32])]);
        assert!(ids("deadbee0").is_empty());
        assert_eq!(
            idx.lookup_prefix(&IdPrefix::parse("deadbeef").unwrap(), 1, now)
                .len(),
            1
        );
        idx.logout(a);
        assert!(ids("deadbeef").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_of_removed_files_are_reused_without_mixing_files_up() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        idx.add_files(a, vec![file(1, "alpha one")], now).unwrap();
        idx.remove_files(a, &[FileId([1; 32])], now).unwrap();
        idx.add_files(a, vec![file(2, "beta two")], now).unwrap();
        assert!(idx.search(&["alpha".into()], 10, now).is_empty());
        let hits = idx.search(&["beta".into()], 10, now);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].id, FileId([2; 32]));
        assert_eq!(idx.browse("a:1", 0, 10, now).unwrap().0.len(), 1);
        idx.logout(a);
        assert!(idx.search(&["beta".into()], 10, now).is_empty());
        assert_eq!(
            idx.inner.words.counts(),
            (0, 0),
            "the word index is emptied"
        );
        assert_eq!(idx.inner.files.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_with_more_holders_than_an_answer_lists_gets_a_random_choice() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(MAX_LISTED + 50) {
            let (host, port) = (i / 200, 7000 + i % 200);
            let addr = format!("10.0.{host}.1:{port}");
            let source = format!("10.0.{host}.{}", 1 + i % 200);
            let s = idx.open_session(session_at(&addr, &source), now).unwrap();
            idx.add_files(s, vec![file(1, "popular")], now).unwrap();
        }
        let listed = |idx: &Index| -> Vec<String> {
            let (_, _, sources) = idx.lookup(&FileId([1; 32]), now).unwrap();
            sources.into_iter().map(|s| s.addr).collect()
        };
        let first = listed(&idx);
        assert_eq!(first.len(), MAX_LISTED);
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "listed in address order"
        );
        // 200 of 250 alike twice by chance: about 1 in 10^53.
        assert!(
            (0..3).any(|_| listed(&idx) != first),
            "every answer lists the same holders"
        );
    }
}
