//! Callbacks ("push", issue 15): reaching a source that accepts no
//! connections (a firewalled peer, behind a NAT or a firewall) by having
//! it connect out to the downloader.
//!
//! ```text
//!  downloader                    index                     firewalled source
//!      | LookupReach {id} ---------> |                              |
//!      | <--- SourcesReach (reach) --|                              |
//!      | Callback {id, source,       |                              |
//!      |   port, token} -----------> | CallbackOrder {id, IP:port,  |
//!      |                             |   token} (on its index       |
//!      | <------------ Ack ----------|   connection) -------------> |
//!      | <====== TCP connect to IP:port, hello Protocol::Callback ===|
//!      | <============ CallbackHello {token, features} ==============|
//!      | ==== peer protocol: HashList, Have, Chunk ... (we ask) ====> |
//! ```
//!
//! `IP` is the downloader's connection address as the index sees it, so a
//! callback can only ever be aimed at the host that asked. The downloader
//! side is [`Callbacks`] (a listener and the [`Connector`] the engine asks
//! for sources it cannot dial); the source side is [`CallbackServer`]
//! (the registrar hands it each order).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hello::{Protocol, FEATURE_UPLOAD_QUEUE};
use common::id::FileId;
use common::index_proto::{IndexRequest, IndexResponse, Login, Reach, SourceAddrs};
use common::limits::{CONNECT_TIMEOUT, FRAME_TIMEOUT, HELLO_TIMEOUT};
use common::peer_proto::{PeerErrorCode, PeerRequest, PeerResponse};
use common::reach::{
    CallbackHello, LoginNonce, RelayAnswer, RelayHello, RelayRole, MAX_CALLBACK_HELLO_LEN,
    MAX_RELAY_FRAME_LEN, NONCE_LEN,
};
use common::wire::{self, Deadlines, WireError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{debug, info};
use transfer::chunk_server::{serve_peer_session, SessionRules, UploadStats};
use transfer::download::source::Connector;
use transfer::library::Library;
use transfer::net::Conn;
use transfer::rate::RateLimiter;

use crate::index_client::{IndexClient, IndexError};

/// Why a callback did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The index refused or could not be reached.
    #[error("the index did not forward the callback: {0}")]
    Index(#[from] IndexError),
    /// The source did not connect in time (it may be gone, or we cannot
    /// be reached at the port the index was given).
    #[error("the source did not call back within {0:?}")]
    NoCallback(Duration),
    /// Dialing the downloader, or the hello there, failed.
    #[error("cannot call back {target}: {source}")]
    Dial { target: String, source: WireError },
    #[error("the callback listener stopped")]
    Stopped,
    /// The hole punch failed (a strict NAT on either side, or a source
    /// that is gone).
    #[error("hole punch: {0}")]
    Punch(String),
    /// The relay through the index failed.
    #[error("relay: {0}")]
    Relay(String),
}

/// Most callback connections being greeted at once at one downloader;
/// more are closed at once.
pub const MAX_GREETING: usize = 64;

/// Most callback orders a source serves at once; later ones are dropped
/// (the downloader asks again).
pub const MAX_ANSWERING: usize = 64;

type Pending = Mutex<HashMap<[u8; NONCE_LEN], oneshot::Sender<(Conn, u8)>>>;

/// The downloader's side for one download: a listener that takes the
/// sources' callback connections, the sources known to be firewalled, and
/// the [`Connector`] that asks the index for a callback to each of them.
/// Its accept loop stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Callbacks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    index: String,
    /// The file asked for (set once it is resolved: [`Callbacks::set_file`]).
    id: std::sync::OnceLock<FileId>,
    port: u16,
    pending: Pending,
    firewalled: Mutex<HashSet<String>>,
    /// How each source that was not dialed was reached last.
    paths: Mutex<HashMap<String, &'static str>>,
    /// Every published address of sources that have several (dual
    /// stack), by the name they are listed under.
    addresses: Mutex<HashMap<String, Vec<String>>>,
    /// Inside addresses of firewalled sources behind our own NAT.
    lan: Mutex<HashMap<String, Vec<String>>>,
    /// The relay each relayed source went through last: a public peer's
    /// address, or `index` for the index's own.
    via: Mutex<HashMap<String, String>>,
    /// The index closed the connection on `RelayVia` (an older index):
    /// ask with `Relay` from then on.
    no_relay_via: std::sync::atomic::AtomicBool,
    /// Sources a hole punch did not reach: the next connection to them
    /// goes straight to the relay (a strict NAT does not change its mind).
    unpunchable: Mutex<HashSet<String>>,
    /// Our session at the index (logged in on first need): the relay is
    /// for logged-in peers, and its dial-back says whether we can take
    /// callbacks at all.
    session: tokio::sync::Mutex<Option<Session>>,
    /// The nonce of that login, to answer its dial-back on our listener.
    nonce: LoginNonce,
    /// The accept loop (aborted when the last handle goes).
    _accepting: JoinSet<()>,
}

/// A logged-in connection to the index.
struct Session {
    client: IndexClient,
    /// Whether our callback port proved reachable at the login (an index
    /// older than the check: assumed so, and there is no relay).
    reachable: bool,
    /// When the index last heard from us on it (renews the lease).
    last: tokio::time::Instant,
    /// The session's lease, from the login's answer.
    lease: Duration,
}

impl Callbacks {
    /// Listens at `listen` (port 0: any free one) for callbacks of the
    /// sources of `id` listed by `index`.
    pub fn start(index: &str, id: FileId, listen: SocketAddr) -> std::io::Result<Self> {
        let callbacks = Self::listen(index, listen)?;
        callbacks.set_file(id);
        Ok(callbacks)
    }

    /// The file whose sources are reached (once; later calls are ignored).
    pub fn set_file(&self, id: FileId) {
        let _ = self.inner.id.set(id);
    }

    fn file(&self) -> Result<FileId, CallbackError> {
        self.inner
            .id
            .get()
            .copied()
            .ok_or_else(|| CallbackError::Index(IndexError::Unexpected("no file set".into())))
    }

    /// [`Self::start`] before the file is known ([`Self::set_file`]
    /// before the first source is reached): the listener, and a login
    /// ([`Self::warm`]) may begin while the file is looked up.
    pub fn listen(index: &str, listen: SocketAddr) -> std::io::Result<Self> {
        let listener = transfer::net::bind_listener(listen)?;
        let port = listener.local_addr()?.port();
        // The accept loop holds a weak handle and is owned (aborted on
        // drop) by what it points to: it ends with the last `Callbacks`.
        let inner = Arc::new_cyclic(|weak| {
            let mut accepting = JoinSet::new();
            accepting.spawn(accept_loop(listener, weak.clone()));
            Inner {
                index: index.to_string(),
                id: std::sync::OnceLock::new(),
                port,
                pending: Mutex::new(HashMap::new()),
                firewalled: Mutex::new(HashSet::new()),
                paths: Mutex::new(HashMap::new()),
                addresses: Mutex::new(HashMap::new()),
                lan: Mutex::new(HashMap::new()),
                via: Mutex::new(HashMap::new()),
                no_relay_via: std::sync::atomic::AtomicBool::new(false),
                unpunchable: Mutex::new(HashSet::new()),
                session: tokio::sync::Mutex::new(None),
                nonce: LoginNonce::default(),
                _accepting: accepting,
            }
        });
        Ok(Callbacks { inner })
    }

    /// The port the listener is on.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Notes how each of `sources` is reached (firewalled or not, its
    /// other addresses, its inside addresses behind our NAT), and returns
    /// the names they are listed under.
    pub fn note(&self, sources: Vec<SourceAddrs>) -> Vec<String> {
        let mut firewalled = lock(&self.inner.firewalled);
        let mut addresses = lock(&self.inner.addresses);
        let mut lan = lock(&self.inner.lan);
        sources
            .into_iter()
            .map(|s| {
                let name = s.source.source.addr;
                if s.source.reach == Reach::Firewalled {
                    firewalled.insert(name.clone());
                } else {
                    firewalled.remove(&name);
                }
                if s.also.is_empty() {
                    addresses.remove(&name);
                } else {
                    let all = std::iter::once(name.clone()).chain(s.also).collect();
                    addresses.insert(name.clone(), all);
                }
                if s.lan.is_empty() {
                    lan.remove(&name);
                } else {
                    lan.insert(name.clone(), s.lan);
                }
                name
            })
            .collect()
    }

    /// Asks the index to have the source listed as `source` connect to
    /// us, and waits (within `CONNECT_TIMEOUT` after the index forwarded
    /// it) for that connection: returned after its callback hello, with
    /// the source's feature bits.
    pub async fn call(&self, source: &str) -> Result<(Conn, u8), CallbackError> {
        let token: [u8; NONCE_LEN] = rand::random();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(token, tx);
        // Forgotten however this ends (dropped future included).
        struct Forget<'a>(&'a Pending, [u8; NONCE_LEN]);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(self.0).remove(&self.1);
            }
        }
        let _forget = Forget(&self.inner.pending, token);
        let request = IndexRequest::Callback {
            id: self.file()?,
            source: source.to_string(),
            port: self.inner.port,
            token,
        };
        match self.ask(&request).await? {
            IndexResponse::Ack { .. } => {}
            other => return Err(IndexError::Unexpected(format!("{other:?}")).into()),
        }
        debug!(%source, "callback forwarded by the index; waiting for the source");
        match tokio::time::timeout(CONNECT_TIMEOUT, rx).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(_)) => Err(CallbackError::Stopped),
            Err(_) => Err(CallbackError::NoCallback(CONNECT_TIMEOUT)),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("reachable", &self.reachable)
            .finish_non_exhaustive()
    }
}

impl Callbacks {
    /// Logs in at the index (a fresh nonce; our callback port is the
    /// listening port the index checks).
    async fn login(&self) -> Result<Session, IndexError> {
        // From a port a hole punch may share.
        let mut client = IndexClient::connect_shareable(&self.inner.index).await?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        self.inner.nonce.set(nonce);
        let login = IndexRequest::LoginChecked {
            login: Login {
                listen_port: self.inner.port,
                advertise: None,
                nick: None,
            },
            nonce,
        };
        match client.request(&login).await {
            Ok(IndexResponse::WelcomeChecked {
                addr,
                observed,
                lease_ttl_ms,
                ..
            }) => {
                let reachable = addr.is_some();
                info!(%observed, reachable, "logged in at the index for callbacks and relays");
                Ok(Session {
                    client,
                    reachable,
                    last: tokio::time::Instant::now(),
                    lease: Duration::from_millis(lease_ttl_ms),
                })
            }
            Ok(other) => Err(IndexError::Unexpected(format!("{other:?}"))),
            // An index from before the check (and before the relay).
            Err(IndexError::Wire(WireError::Closed | WireError::Io(_))) => Ok(Session {
                client: IndexClient::connect(&self.inner.index).await?,
                reachable: true,
                last: tokio::time::Instant::now(),
                lease: Duration::ZERO,
            }),
            Err(e) => Err(e),
        }
    }

    /// Logs in at the index now, if not yet (a failure is left for the
    /// first real use to report): run beside the file's lookup, so that a
    /// callback later does not wait for the login and its dial-back.
    pub async fn warm(&self) {
        if let Err(e) = self.reachable().await {
            debug!(error = %e, "early login for callbacks failed; trying again on first use");
        }
    }

    /// Whether sources can call us back (logs in first if needed).
    async fn reachable(&self) -> Result<bool, IndexError> {
        let mut session = self.inner.session.lock().await;
        if session.is_none() {
            *session = Some(self.login().await?);
        }
        Ok(session.as_ref().is_some_and(|s| s.reachable))
    }

    /// Sends `request` on our logged-in connection (logging in again once
    /// if the connection or the session was lost).
    async fn ask(&self, request: &IndexRequest) -> Result<IndexResponse, IndexError> {
        let mut session = self.inner.session.lock().await;
        for attempt in 0..2 {
            if session.is_none() {
                *session = Some(self.login().await?);
            }
            let Some(s) = session.as_mut() else { continue };
            // Keeps the lease of a long download's session: renewed when a
            // third of it has passed, not before every request (a round
            // trip to the index on a callback's critical path).
            let renewed = if s.last.elapsed() >= s.lease / 3 {
                s.client.request(&IndexRequest::Heartbeat).await.map(|_| ())
            } else {
                Ok(())
            };
            let result = match renewed {
                Ok(()) => s.client.request(request).await,
                Err(e) => Err(e),
            };
            if result.is_ok() {
                s.last = tokio::time::Instant::now();
            }
            match result {
                Err(IndexError::Wire(_))
                | Err(IndexError::Refused {
                    code: common::index_proto::ErrorCode::NotLoggedIn,
                    ..
                }) if attempt == 0 => *session = None,
                other => return other,
            }
        }
        Err(IndexError::Unexpected("no session at the index".into()))
    }

    /// The local port of our index connection, if it can be shared.
    async fn session_port(&self) -> Option<u16> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .and_then(|s| s.client.local_port())
    }

    /// Reaches the firewalled source listed as `source` by TCP hole
    /// punching: the index tells it to connect to us while we connect to
    /// it, each from its index connection's port.
    pub async fn punch(&self, source: &str) -> Result<(Conn, u8), CallbackError> {
        let token: [u8; NONCE_LEN] = rand::random();
        let request = IndexRequest::Punch {
            id: self.file()?,
            source: source.to_string(),
            token,
        };
        let peer = match self.ask(&request).await? {
            IndexResponse::PunchAnswer { peer } => peer,
            other => return Err(IndexError::Unexpected(format!("{other:?}")).into()),
        };
        let punch_error = |e: std::io::Error| CallbackError::Punch(e.to_string());
        let port = self
            .session_port()
            .await
            .ok_or_else(|| CallbackError::Punch("no shareable index connection".into()))?;
        let addr: SocketAddr = peer
            .parse()
            .map_err(|_| CallbackError::Punch(format!("{peer} is not IP:PORT")))?;
        let stream = transfer::net::connect_from_port(port, addr, PUNCH_TIMEOUT)
            .await
            .map_err(punch_error)?;
        // Closed with a reset, not TIME_WAIT: the next connection to this
        // source (after the hash list) uses the same two ports.
        let _ = stream.set_zero_linger();
        let (hello, stream) = tokio::time::timeout(CONNECT_TIMEOUT, greet_callback(stream))
            .await
            .map_err(|_| CallbackError::NoCallback(CONNECT_TIMEOUT))?
            .map_err(|e| CallbackError::Punch(e.to_string()))?;
        if hello.token != token {
            return Err(CallbackError::Punch("the source sent another token".into()));
        }
        debug!(%source, "punched through");
        Ok((stream, hello.features))
    }

    /// Reaches the firewalled source listed as `source` through a relay
    /// the index chooses (a public peer that relays, or its own):
    /// arranges it, connects there, and waits for the source's callback
    /// hello through it. Notes which relay it was ([`Connector::via`]).
    pub async fn relay(&self, source: &str) -> Result<(Conn, u8), CallbackError> {
        use std::sync::atomic::Ordering;
        let token: [u8; NONCE_LEN] = rand::random();
        let (id, source_name) = (self.file()?, source.to_string());
        let relay_at = if self.inner.no_relay_via.load(Ordering::Relaxed) {
            None
        } else {
            let request = IndexRequest::RelayVia {
                id,
                source: source_name.clone(),
                token,
            };
            match self.ask(&request).await {
                Ok(IndexResponse::RelayAt { relay }) => Some(relay),
                Ok(other) => return Err(IndexError::Unexpected(format!("{other:?}")).into()),
                // An index from before `RelayVia` closes the connection.
                Err(IndexError::Wire(_)) => {
                    self.inner.no_relay_via.store(true, Ordering::Relaxed);
                    *self.inner.session.lock().await = None;
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        let relay = match relay_at {
            Some(relay) => relay,
            None => {
                let request = IndexRequest::Relay {
                    id,
                    source: source_name,
                    token,
                };
                match self.ask(&request).await? {
                    IndexResponse::Ack { .. } => None,
                    other => return Err(IndexError::Unexpected(format!("{other:?}")).into()),
                }
            }
        };
        let at = relay.clone().unwrap_or_else(|| self.inner.index.clone());
        let stream = join_relay(&at, token, RelayRole::Downloader).await?;
        lock(&self.inner.via).insert(
            source.to_string(),
            relay.unwrap_or_else(|| "index".to_string()),
        );
        // The handshake runs end to end with the source, through the relay.
        let (hello, stream) = tokio::time::timeout(CONNECT_TIMEOUT, greet_callback(stream))
            .await
            .map_err(|_| CallbackError::NoCallback(CONNECT_TIMEOUT))?
            .map_err(|source| CallbackError::Relay(source.to_string()))?;
        if hello.token != token {
            return Err(CallbackError::Relay(
                "the relayed source sent another token".into(),
            ));
        }
        debug!(%source, "relayed through the index");
        Ok((stream, hello.features))
    }

    /// Reaches a firewalled source: by callback when sources can call us
    /// back, else (or when that fails) by a hole punch, else through the
    /// relay.
    async fn reach(&self, source: &str) -> std::io::Result<(Conn, u8)> {
        // Behind the same NAT: its inside address, before anything else.
        let lan = lock(&self.inner.lan).get(source).cloned();
        if let Some(lan) = lan {
            match dial_lan(&lan).await {
                Ok(pair) => {
                    lock(&self.inner.paths).insert(source.to_string(), "lan");
                    return Ok(pair);
                }
                Err(e) => {
                    debug!(%source, error = %e, "its inside address did not answer; trying a callback")
                }
            }
        }
        let reachable = self.reachable().await.map_err(std::io::Error::other)?;
        if reachable {
            match self.call(source).await {
                Ok(pair) => {
                    lock(&self.inner.paths).insert(source.to_string(), "callback");
                    return Ok(pair);
                }
                Err(e) => debug!(%source, error = %e, "callback failed; trying a hole punch"),
            }
        }
        if !lock(&self.inner.unpunchable).contains(source) {
            match self.punch(source).await {
                Ok(pair) => {
                    lock(&self.inner.paths).insert(source.to_string(), "punched");
                    return Ok(pair);
                }
                Err(e) => {
                    debug!(%source, error = %e, "hole punch failed; trying the relay");
                    lock(&self.inner.unpunchable).insert(source.to_string());
                }
            }
        }
        let pair = self.relay(source).await.map_err(std::io::Error::other)?;
        lock(&self.inner.paths).insert(source.to_string(), "relayed");
        Ok(pair)
    }
}

/// How long a dial to a source's inside address (behind our own NAT) may
/// take: a round trip on a LAN, so a wrong address costs little.
pub const LAN_TIMEOUT: Duration = Duration::from_secs(1);

/// Dials a source behind our own NAT at its inside addresses `lan` (the
/// index hands them only to a requester with the same public IP), and
/// says the peer protocol's hello there.
async fn dial_lan(lan: &[String]) -> std::io::Result<(Conn, u8)> {
    let addrs: Vec<SocketAddr> = lan.iter().filter_map(|a| a.parse().ok()).collect();
    let (stream, _) = transfer::net::connect_addrs(&addrs, LAN_TIMEOUT).await?;
    // Within the hello's limit; the engine checks the source's id.
    tokio::time::timeout(
        HELLO_TIMEOUT,
        transfer::net::client(stream, Protocol::Peer, None),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello"))?
    .map_err(std::io::Error::other)
}

/// Connects to the relay at `index` (the index, or a public peer that
/// relays) as `role` of the relay arranged under `token`, and waits until
/// the other side is there.
pub async fn join_relay(
    index: &str,
    token: [u8; NONCE_LEN],
    role: RelayRole,
) -> Result<TcpStream, CallbackError> {
    let limit = CONNECT_TIMEOUT + RELAY_PAIR_WAIT;
    tokio::time::timeout(limit, join_relay_now(index, token, role))
        .await
        .map_err(|_| CallbackError::Relay(format!("not paired within {limit:?}")))?
}

async fn join_relay_now(
    index: &str,
    token: [u8; NONCE_LEN],
    role: RelayRole,
) -> Result<TcpStream, CallbackError> {
    let relay_error = |e: WireError| CallbackError::Relay(e.to_string());
    let mut stream = transfer::net::connect_tcp(index, CONNECT_TIMEOUT)
        .await
        .map_err(|e| relay_error(WireError::Io(e)))?;
    transfer::net::tune_socket(&stream);
    // The relay's own leg is clear by design: the two peers run their own
    // handshake end to end through it (`common::secure`).
    wire::client_hello_exchange(&mut stream, Protocol::Relay, false)
        .await
        .map_err(relay_error)?;
    wire::send_message(&mut stream, &RelayHello { token, role })
        .await
        .map_err(relay_error)?;
    let mut buf = Vec::new();
    let got = wire::read_frame(
        &mut stream,
        &mut buf,
        MAX_RELAY_FRAME_LEN,
        Deadlines::with_idle(RELAY_PAIR_WAIT),
    )
    .await
    .map_err(relay_error)?;
    if !got {
        return Err(relay_error(WireError::Closed));
    }
    let answer: RelayAnswer =
        common::frame::decode_payload(&buf).map_err(|e| relay_error(e.into()))?;
    match answer {
        RelayAnswer::Paired => Ok(stream),
        RelayAnswer::Refused { reason } => Err(CallbackError::Relay(format!(
            "the index refused: {}",
            common::names::escape_for_terminal(&reason)
        ))),
    }
}

/// How long both sides of a hole punch try to connect: long enough for
/// the kernel's first SYN retransmission (after 1 s), which gets through
/// when the first SYN reached the other NAT before that side's own left.
pub const PUNCH_TIMEOUT: Duration = Duration::from_millis(2500);

/// Longest wait at the relay for the other side.
pub const RELAY_PAIR_WAIT: Duration = Duration::from_secs(15);

impl Connector for Callbacks {
    fn connect<'a>(&'a self, addr: &'a str) -> Option<transfer::download::source::Connecting<'a>> {
        if !lock(&self.inner.firewalled).contains(addr) {
            return None;
        }
        Some(Box::pin(self.reach(addr)))
    }

    fn path(&self, addr: &str) -> &'static str {
        lock(&self.inner.paths)
            .get(addr)
            .copied()
            .unwrap_or("direct")
    }

    fn via(&self, addr: &str) -> Option<String> {
        if self.path(addr) != "relayed" {
            return None;
        }
        lock(&self.inner.via).get(addr).cloned()
    }

    fn addresses(&self, addr: &str) -> Vec<String> {
        lock(&self.inner.addresses)
            .get(addr)
            .cloned()
            .unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Takes callback connections until the last [`Callbacks`] handle goes:
/// each one's hello and [`CallbackHello`] are read within their deadlines
/// (at most [`MAX_GREETING`] at once), and a connection whose token is
/// pending goes to the caller waiting for it; any other is closed.
async fn accept_loop(listener: TcpListener, inner: std::sync::Weak<Inner>) {
    let mut greeting = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = greeting.join_next(), if !greeting.is_empty() => continue,
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        drop(strong);
        let Ok((stream, remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if greeting.len() >= MAX_GREETING {
            debug!(%remote, "too many callback connections being greeted; closing one");
            continue;
        }
        let inner = inner.clone();
        greeting.spawn(async move {
            let nonce = inner.upgrade().map(|i| i.nonce.clone()).unwrap_or_default();
            transfer::net::tune_socket(&stream);
            match greet(stream, &nonce).await {
                Ok(None) => {}
                Ok(Some((hello, stream))) => {
                    let Some(inner) = inner.upgrade() else { return };
                    let waiting = lock(&inner.pending).remove(&hello.token);
                    match waiting {
                        Some(tx) => {
                            let _ = tx.send((stream, hello.features));
                        }
                        None => debug!(%remote, "a callback with a token nobody waits for; closed"),
                    }
                }
                Err(e) => debug!(%remote, error = %e, "callback hello refused"),
            }
        });
    }
}

/// The server side of a connection to the callback listener: a source's
/// callback (the hello for [`Protocol::Callback`], then the
/// [`CallbackHello`] frame: `Some`), or the index's dial-back of our login
/// (the peer protocol's `ProveReachable`, answered with `nonce`: `None`).
async fn greet(
    stream: TcpStream,
    nonce: &LoginNonce,
) -> Result<Option<(CallbackHello, Conn)>, WireError> {
    let (protocol, mut stream) = transfer::net::accept(
        stream,
        &[Protocol::Callback, Protocol::Peer],
        |_| false,
        |_| 0,
    )
    .await?;
    if protocol == Protocol::Peer {
        let mut buf = Vec::new();
        let deadlines = Deadlines::with_idle(HELLO_TIMEOUT);
        let answer = match wire::expect_message(&mut stream, &mut buf, deadlines).await? {
            PeerRequest::ProveReachable { challenge } => match nonce.prove(&challenge) {
                Some(proof) => PeerResponse::Reachable { proof },
                None => PeerResponse::Error {
                    code: PeerErrorCode::NotFound,
                    message: "not logged in".into(),
                },
            },
            _ => PeerResponse::Error {
                code: PeerErrorCode::BadRequest,
                message: "this port takes callbacks only".into(),
            },
        };
        tokio::time::timeout(FRAME_TIMEOUT, wire::send_message(&mut stream, &answer))
            .await
            .map_err(|_| WireError::Timeout("sending the proof"))??;
        return Ok(None);
    }
    let hello = read_callback_hello(&mut stream).await?;
    Ok(Some((hello, stream)))
}

/// The hello of a callback arriving through the relay or a punched
/// connection (the source speaks first, as on a callback connection; the
/// handshake runs end to end with it).
async fn greet_callback(stream: TcpStream) -> Result<(CallbackHello, Conn), WireError> {
    let (_, mut stream) =
        transfer::net::accept(stream, &[Protocol::Callback], |_| false, |_| 0).await?;
    let hello = read_callback_hello(&mut stream).await?;
    Ok((hello, stream))
}

async fn read_callback_hello(stream: &mut Conn) -> Result<CallbackHello, WireError> {
    let mut buf = Vec::new();
    let got = wire::read_frame(
        stream,
        &mut buf,
        MAX_CALLBACK_HELLO_LEN,
        Deadlines {
            idle: Some(HELLO_TIMEOUT),
            frame: FRAME_TIMEOUT,
        },
    )
    .await?;
    if !got {
        return Err(WireError::Closed);
    }
    Ok(common::frame::decode_payload(&buf)?)
}

/// The source's side: serves the callback orders the index forwards, each
/// over a connection this peer opens to the downloader, as its chunk
/// server would serve an accepted one (the same upload slots and queue).
#[derive(Clone)]
pub struct CallbackServer {
    /// What is served (the daemon's library).
    pub library: Library,
    /// The daemon's upload counters.
    pub stats: Arc<UploadStats>,
    /// The daemon's cap on all uploads together, bytes per second.
    pub upload_limit: Option<Arc<RateLimiter>>,
    /// The chunk server's upload slots, queue and deadlines.
    pub rules: SessionRules,
}

impl CallbackServer {
    /// Connects to `target`, sends the callback hello with `token`, and
    /// serves the peer protocol there until the downloader is done.
    pub async fn answer(&self, target: &str, token: [u8; NONCE_LEN]) -> Result<(), CallbackError> {
        let stream = transfer::net::connect_tcp(target, CONNECT_TIMEOUT)
            .await
            .map_err(|e| CallbackError::Dial {
                target: target.to_string(),
                source: WireError::Io(e),
            })?;
        transfer::net::tune_socket(&stream);
        info!(%target, "called back a downloader; serving it");
        self.serve_over(stream, target, token).await
    }

    /// Connects to the downloader at `peer` from local `port` (that of our
    /// index connection) while it connects to us (a TCP simultaneous
    /// open; see `IndexRequest::Punch`), and serves it there.
    pub async fn answer_punch(
        &self,
        port: u16,
        peer: &str,
        token: [u8; NONCE_LEN],
    ) -> Result<(), CallbackError> {
        let dial_error = |e| CallbackError::Dial {
            target: peer.to_string(),
            source: WireError::Io(e),
        };
        let addr: SocketAddr = peer
            .parse()
            .map_err(|_| dial_error(std::io::Error::other("not an IP:PORT")))?;
        let stream = transfer::net::connect_from_port(port, addr, PUNCH_TIMEOUT)
            .await
            .map_err(dial_error)?;
        info!(%peer, "punched through to a downloader; serving it");
        self.serve_over(stream, peer, token).await
    }

    /// Joins the relay at `index` (the index's, or a public peer's)
    /// arranged under `token` and serves the downloader at its other end.
    pub async fn answer_relay(
        &self,
        index: &str,
        token: [u8; NONCE_LEN],
    ) -> Result<(), CallbackError> {
        let stream = join_relay(index, token, RelayRole::Source).await?;
        info!(%index, "serving a downloader through the index's relay");
        self.serve_over(stream, "the relay", token).await
    }

    /// Opens a callback on `stream` (to `target`, for messages) and serves
    /// the peer protocol on it.
    async fn serve_over(
        &self,
        stream: TcpStream,
        target: &str,
        token: [u8; NONCE_LEN],
    ) -> Result<(), CallbackError> {
        let dial_error = |source| CallbackError::Dial {
            target: target.to_string(),
            source,
        };
        let remote = stream
            .peer_addr()
            .map_err(|e| dial_error(WireError::Io(e)))?;
        // The downloader checks our id against the one the index listed.
        let (mut stream, _) = transfer::net::client(stream, Protocol::Callback, None)
            .await
            .map_err(dial_error)?;
        let hello = CallbackHello {
            token,
            features: FEATURE_UPLOAD_QUEUE,
        };
        tokio::time::timeout(FRAME_TIMEOUT, wire::send_message(&mut stream, &hello))
            .await
            .map_err(|_| dial_error(WireError::Timeout("sending the callback hello")))?
            .map_err(dial_error)?;
        self.stats
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        serve_peer_session(
            stream,
            remote,
            &self.library,
            &self.stats,
            None,
            self.upload_limit.as_deref(),
            &self.rules,
        )
        .await
        .map_err(dial_error)
    }
}
