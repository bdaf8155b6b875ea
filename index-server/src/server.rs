//! The network side: accept loop, connection tasks, lease reaper, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::hello::Protocol;
use common::index_proto::{IndexRequest, IndexResponse};
use common::wire::{self, Deadlines, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use transfer::net::{Conn, ConnWriter};

use crate::handler::{handle, Connection};
use crate::lazy_buf::LazyBufReader;
use crate::state::Index;
use crate::store::Store;
use crate::{Config, ServerError};

/// A bound index server, ready to run.
pub struct Server {
    listener: TcpListener,
    index: Index,
    config: Config,
    store: Option<Arc<Store>>,
    /// The network page's listener (`Config::http`).
    http: Option<TcpListener>,
    /// The relay (`Config::relay`).
    relay: Option<Arc<crate::relay::Relay>>,
}

impl Server {
    /// Binds the listening socket. Port 0 picks a free port (see [`Server::local_addr`]).
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let listener =
            transfer::net::bind_listener(config.listen).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let http = match config.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::BindHttp { addr, source })?,
            ),
            None => None,
        };
        let index = Index::with_limits(config.lease_ttl, config.limits);
        let store = match &config.store {
            Some(store_config) => Some(Store::open(store_config, index.clone()).await?),
            None => None,
        };
        let relay = config.relay.map(|r| Arc::new(crate::relay::Relay::new(r)));
        Ok(Server {
            listener,
            index,
            config,
            store,
            http,
            relay,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the network page listens, when it does (`Config::http`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle to the live state (for tests and embedding).
    pub fn index(&self) -> Index {
        self.index.clone()
    }

    /// The relay, when the server has one (`Config::relay`): what it
    /// carried, for tests and the lab.
    pub fn relay(&self) -> Option<Arc<crate::relay::Relay>> {
        self.relay.clone()
    }

    /// The store, when the server has one (`--store`).
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.clone()
    }

    /// Serves until `shutdown` is cancelled, then waits for connection tasks.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Server {
            listener,
            index,
            config,
            store,
            http,
            relay,
        } = self;
        info!(addr = %listener.local_addr()?, lease_ttl = ?config.lease_ttl, "index server listening");
        let tracker = TaskTracker::new();
        // Places in all and per source address: idle connections from one
        // host cannot take them all.
        let admission = transfer::admission::Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
        );

        tracker.spawn(reap_leases(
            index.clone(),
            config.lease_ttl,
            shutdown.clone(),
        ));
        if let Some(possession) = config.possession {
            tracker.spawn(crate::possession::run(
                index.clone(),
                possession,
                shutdown.clone(),
            ));
        }
        if let (Some(store), Some(store_config)) = (&store, &config.store) {
            tracker.spawn(
                store
                    .clone()
                    .rescan_loop(store_config.rescan_interval, shutdown.clone()),
            );
        }

        if let Some(http) = http {
            let (index, shutdown) = (index.clone(), shutdown.clone());
            tracker.spawn(async move {
                if let Err(e) = crate::http::serve(http, index, shutdown).await {
                    warn!(error = %e, "the network page stopped");
                }
            });
        }

        let mut accept_backoff = transfer::net::AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off (growing
                    // pauses, one warning) instead of spinning.
                    let pause = accept_backoff.failed("index", &e);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            accept_backoff.succeeded("index");
            // The store's downloads and uploads run on these connections too.
            transfer::net::tune_socket(&stream);
            match admission.try_admit(remote.ip()) {
                Ok(permit) => {
                    let (index, config, shutdown, store, relay) = (
                        index.clone(),
                        config.clone(),
                        shutdown.clone(),
                        store.clone(),
                        relay.clone(),
                    );
                    tracker.spawn(async move {
                        serve_connection(stream, remote, index, &config, store, relay, shutdown)
                            .await;
                        drop(permit);
                    });
                }
                Err(why) => {
                    debug!(%remote, %why, "connection cap reached; refusing");
                    tracker.spawn(refuse_busy(stream));
                }
            }
        }
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within 5 s of shutdown");
        }
        info!("index server stopped");
        Ok(())
    }
}

async fn refuse_busy(stream: TcpStream) {
    let _ = tokio::time::timeout(
        common::limits::HELLO_TIMEOUT,
        transfer::net::accept(stream, &[Protocol::Index], |_| true, |_| 0),
    )
    .await;
}

async fn reap_leases(index: Index, ttl: Duration, shutdown: CancellationToken) {
    let period = (ttl / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let n = index.reap_expired(Instant::now());
                if n > 0 {
                    info!(expired = n, "removed peers whose lease ran out");
                }
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    index: Index,
    config: &Config,
    store: Option<Arc<Store>>,
    relay: Option<Arc<crate::relay::Relay>>,
    shutdown: CancellationToken,
) {
    let mut conn = Connection::new(remote.ip());
    conn.relay = relay;
    conn.hole_punching = config.hole_punching;
    conn.peer_port = remote.port();
    conn.require_proof = config.require_proof;
    conn.max_callbacks_per_minute = config.max_callbacks_per_minute;
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = dispatch(stream, &index, &mut conn, config, store) => r,
    };
    if let Some(session) = conn.session {
        index.logout(session);
        // Debug, not info: at thousands of logins a second (an index
        // restart, a login storm) one line per departure costs the index
        // a measurable share of its CPU (issue 16's login benchmark).
        debug!(%remote, "peer left; its files are withdrawn");
    }
    match result {
        Ok(()) => debug!(%remote, "connection closed"),
        Err(e) if e.is_protocol_violation() => {
            debug!(%remote, error = %e, "closing connection after bad input")
        }
        Err(e) => debug!(%remote, error = %e, "connection ended"),
    }
}

/// Per-connection request budget: a token bucket refilled every second.
struct RequestBudget {
    per_sec: u32,
    left: u32,
    window_start: Instant,
}

impl RequestBudget {
    fn new(per_sec: u32) -> Self {
        let per_sec = per_sec.max(1);
        RequestBudget {
            per_sec,
            left: per_sec,
            window_start: Instant::now(),
        }
    }

    /// Waits, if needed, until one more request may be handled.
    async fn take(&mut self) {
        if self.left == 0 {
            tokio::time::sleep_until(self.window_start + Duration::from_secs(1)).await;
        }
        let now = Instant::now();
        if now >= self.window_start + Duration::from_secs(1) {
            self.window_start = now;
            self.left = self.per_sec;
        }
        self.left -= 1;
    }
}

/// Answers the hello and hands the connection to the protocol it asked for:
/// the index, or (with a store) downloads from and uploads to the store.
async fn dispatch(
    stream: TcpStream,
    index: &Index,
    conn: &mut Connection,
    config: &Config,
    store: Option<Arc<Store>>,
) -> Result<(), WireError> {
    let accepted: &[Protocol] = match (&store, conn.relay.is_some()) {
        (Some(_), true) => &[
            Protocol::Index,
            Protocol::Peer,
            Protocol::Store,
            Protocol::Relay,
        ],
        (Some(_), false) => &[Protocol::Index, Protocol::Peer, Protocol::Store],
        (None, true) => &[Protocol::Index, Protocol::Relay],
        (None, false) => &[Protocol::Index],
    };
    let security = config.security();
    let hello = transfer::net::accept_with(stream, accepted, |_| false, |_| 0, &security);
    let (protocol, stream) = tokio::time::timeout(config.hello_timeout, hello)
        .await
        .map_err(|_| WireError::Timeout("the client's hello"))??;
    // The session's id is the one the handshake proved, never a claim.
    conn.peer_id = stream.remote();
    match (protocol, store) {
        (Protocol::Relay, _) => match (conn.relay.clone(), stream.into_clear()) {
            // The relay's leg is clear (`common::secure`): the peers' own
            // end-to-end handshake runs through it.
            (Some(relay), Some((r, w))) => {
                let stream = r
                    .reunite(w)
                    .map_err(|e| WireError::Io(std::io::Error::other(e)))?;
                relay.serve(stream).await
            }
            _ => Ok(()),
        },
        (Protocol::Peer, Some(store)) => store.serve_download(stream).await,
        (Protocol::Store, Some(store)) => store.serve_upload(stream).await,
        _ => connection_loop(stream, index, conn, config).await,
    }
}

/// How long the name lookup of an advertised host may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Looks up an advertised host name (not an IP address) before the `Login`
/// naming it is handled, so the handler can check where it points; a name
/// that does not resolve within [`LOOKUP_TIMEOUT`] resolves to nothing.
async fn resolve_advertised(conn: &mut Connection, advertise: Option<&str>) {
    conn.resolved = None;
    let Some(name) = advertise else { return };
    if conn.session.is_some() || !crate::handler::needs_lookup(name) {
        return;
    }
    let addrs = match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name)).await {
        Ok(Ok(found)) => found.take(16).collect(),
        _ => Vec::new(),
    };
    conn.resolved = Some((name.to_string(), addrs));
}

/// Largest request buffer a connection keeps between requests (a
/// heartbeat or lookup fits; a registration of many files does not).
const KEEP_FRAME_BUFFER: usize = 1024;

/// Dials back every address a `LoginChecked` asks to publish, at once, and
/// records in `conn.dialbacks` which proved to be this login's peer
/// (`common::reach`). Nothing is dialed for a logged-in connection or a
/// replayed nonce (the handler refuses those).
async fn prove_addresses(
    conn: &mut Connection,
    index: &Index,
    login: &common::index_proto::Login,
    also: &[String],
    nonce: &[u8; common::reach::NONCE_LEN],
    config: &Config,
) {
    let limit = config.dialback_timeout;
    conn.dialbacks.clear();
    if conn.session.is_some() || index.nonce_seen(nonce) {
        return;
    }
    let targets =
        crate::handler::candidates(conn, login, also, index.limits().allow_privileged_ports)
            .targets();
    // Dial-backs to the requester's own IP only reach its own host; those
    // to any other host (what --advertise can name) are what a budget per
    // requester caps, so that nobody can aim the index at a third party.
    let own = crate::dialback_budget::requester_key(conn.peer_ip);
    let (mut targets, others): (Vec<SocketAddr>, Vec<SocketAddr>) = targets
        .into_iter()
        .partition(|t| crate::dialback_budget::requester_key(t.ip()) == own);
    let per_minute = config.max_dialbacks_per_minute;
    let wanted = u32::try_from(others.len()).unwrap_or(u32::MAX);
    if wanted == 0
        || index
            .dialback_budget()
            .take(conn.peer_ip, wanted, per_minute, std::time::Instant::now())
    {
        targets.extend(others);
    } else {
        debug!(peer = %conn.peer_ip, per_minute, "reachability dial-backs over budget: not checked");
        for target in others {
            conn.dialbacks.push((
                target,
                Err(format!(
                    "not checked: {} asked for more than {per_minute} reachability checks of other hosts in a minute (index-server --max-dialbacks-per-minute); log in again later",
                    conn.peer_ip
                )),
            ));
        }
    }
    // Owned by this function: dropped (aborted) with it.
    let mut checks = tokio::task::JoinSet::new();
    for target in targets {
        let nonce = *nonce;
        let expect = conn.peer_id;
        let security = config.security();
        checks.spawn(async move {
            let dialed = dial_back(target, &nonce, expect, &security);
            let result = match tokio::time::timeout(limit, dialed).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {} ms (a NAT or firewall in the way?)",
                    limit.as_millis()
                )),
            };
            debug!(%target, ?result, "reachability dial-back");
            (target, result)
        });
    }
    while let Some(done) = checks.join_next().await {
        if let Ok(pair) = done {
            conn.dialbacks.push(pair);
        }
    }
}

/// One dial-back: connect to `target` with the peer protocol (through the
/// common connection setup; with `expect`, the session's proven id, the
/// node there must prove the same id), send a fresh challenge, check the
/// proof.
async fn dial_back(
    target: SocketAddr,
    nonce: &[u8; common::reach::NONCE_LEN],
    expect: Option<common::identity::PeerId>,
    security: &common::secure::Security,
) -> Result<(), String> {
    use common::peer_proto::{PeerRequest, PeerResponse};
    // The caller bounds the whole dial-back.
    let (stream, _) = transfer::net::connect_addrs(&[target], Duration::MAX)
        .await
        .map_err(|e| format!("cannot connect ({e})"))?;
    // In secure mode the node there must prove the session's own key: a
    // node answering for someone else fails here, before any nonce.
    let (mut stream, _) = transfer::net::client_with(stream, Protocol::Peer, expect, security)
        .await
        .map_err(|e| match e {
            WireError::Secure(e @ common::secure::SecureError::WrongPeer { .. }) => {
                format!("another node answers there ({e})")
            }
            e => format!("not a p2pshare peer there ({e})"),
        })?;
    let challenge: [u8; common::reach::NONCE_LEN] = rand::random();
    wire::send_message(&mut stream, &PeerRequest::ProveReachable { challenge })
        .await
        .map_err(|e| format!("the check could not be sent ({e})"))?;
    let mut buf = Vec::new();
    let answer = wire::expect_message::<_, PeerResponse>(
        &mut stream,
        &mut buf,
        Deadlines::with_idle(common::limits::FRAME_TIMEOUT),
    )
    .await
    .map_err(|e| format!("no proof came back ({e})"))?;
    match answer {
        PeerResponse::Reachable { proof } if proof == common::reach::proof(nonce, &challenge) => {
            Ok(())
        }
        PeerResponse::Reachable { .. } => {
            Err("another peer answers there (its proof is not this login's)".into())
        }
        PeerResponse::Error { message, .. } => Err(format!(
            "the node there refused the check: {}",
            common::names::escape_for_terminal(&message)
        )),
        _ => Err("the node there gave an unexpected answer".into()),
    }
}

async fn connection_loop(
    stream: Conn,
    index: &Index,
    conn: &mut Connection,
    config: &Config,
) -> Result<(), WireError> {
    // The store is listed under the address this client reached us at
    // (an IPv4 client of a dual-stack socket as IPv4).
    let local = stream.get_ref().0.local_addr()?;
    let local = SocketAddr::new(local.ip().to_canonical(), local.port()).to_string();
    let (read_half, writer) = stream.into_split();
    // Shared with the task that writes callback orders (whole frames under
    // the lock, so they fall between answers, never inside one).
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    // That task, once the session takes callbacks: dropped (aborted) with
    // this loop.
    let mut order_writer = tokio::task::JoinSet::new();
    // No buffer is kept while a session waits for its next request (most
    // of its life): the reader holds only unread bytes, answers wait in
    // `out` only until the pipelined requests read so far are answered,
    // and the frame buffer is dropped after a large request.
    let mut reader = LazyBufReader::new(read_half);
    let mut out: Vec<u8> = Vec::new();
    let mut buf = Vec::new();
    let mut budget = RequestBudget::new(config.max_requests_per_sec);
    let mut first = true;
    loop {
        // A sharing peer heartbeats every third of its lease; anyone else may
        // idle a while, once it has asked something: a connection that only
        // said hello keeps its place for `first_request_timeout`.
        let idle = if conn.session.is_some() {
            config.lease_ttl * 2
        } else if first {
            config.first_request_timeout.min(config.client_idle)
        } else {
            config.client_idle
        };
        first = false;
        let deadlines = Deadlines {
            idle: Some(idle),
            frame: config.frame_timeout,
        };
        let Some(request) =
            wire::read_message::<_, IndexRequest>(&mut reader, &mut buf, deadlines).await?
        else {
            return Ok(());
        };
        budget.take().await;
        if let IndexRequest::Login(login) = &request {
            resolve_advertised(conn, login.advertise.as_deref()).await;
        }
        if let IndexRequest::LoginChecked { login, nonce } = &request {
            resolve_advertised(conn, login.advertise.as_deref()).await;
            prove_addresses(conn, index, login, &[], nonce, config).await;
        }
        if let IndexRequest::LoginAddrs {
            login, nonce, also, ..
        } = &request
        {
            resolve_advertised(conn, login.advertise.as_deref()).await;
            prove_addresses(conn, index, login, also, nonce, config).await;
        }
        if matches!(
            request,
            IndexRequest::AcceptCallbacks | IndexRequest::AcceptOrders { .. }
        ) && order_writer.is_empty()
        {
            if let Some(session) = conn.session {
                let (tx, rx) = tokio::sync::mpsc::channel(crate::state::CALLBACK_QUEUE);
                index.accept_callbacks(session, tx);
                order_writer.spawn(write_orders(rx, writer.clone(), config.frame_timeout));
            }
        }
        let response: IndexResponse = if crate::handler::is_search(&request) {
            // A search may confirm thousands of names: it runs on a blocking
            // thread, at most `Index::search_slot` at once, so that the
            // runtime's workers go on serving lookups and registrations.
            let _slot = index.search_slot().await;
            let index = index.clone();
            let mut scratch = Connection::new(conn.peer_ip);
            let now = Instant::now();
            tokio::task::spawn_blocking(move || handle(&index, &mut scratch, request, now))
                .await
                .unwrap_or_else(|e| IndexResponse::Error {
                    code: common::index_proto::ErrorCode::Internal,
                    message: format!("the search failed: {e}"),
                })
        } else {
            let started = std::time::Instant::now();
            let response = handle(index, conn, request, Instant::now());
            index.note_foreground(started.elapsed());
            response
        };
        let response = crate::store::localize(response, &local);
        let frame = common::frame::encode_frame(&response)?;
        if out.is_empty() {
            out = frame;
        } else {
            out.extend_from_slice(&frame);
        }
        if buf.capacity() > KEEP_FRAME_BUFFER {
            buf = Vec::new();
        }
        // Pipelined requests already read are answered before one write.
        if !reader.has_buffered() && !reader.get_ref().has_buffered() {
            let mut w = writer.lock().await;
            w.write_all(&out).await?;
            w.flush().await?;
            out = Vec::new();
        }
    }
}

/// Writes the callback orders of one session's connection as they come
/// (`IndexRequest::AcceptCallbacks`), each within `limit`; ends with the
/// session (its sender is dropped at logout) or when a write fails.
async fn write_orders(
    mut orders: tokio::sync::mpsc::Receiver<IndexResponse>,
    writer: Arc<tokio::sync::Mutex<ConnWriter>>,
    limit: Duration,
) {
    while let Some(order) = orders.recv().await {
        let frame = match common::frame::encode_frame(&order) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "a callback order could not be encoded");
                continue;
            }
        };
        let mut w = writer.lock().await;
        let written = async {
            w.write_all(&frame).await?;
            w.flush().await
        };
        match tokio::time::timeout(limit, written).await {
            Ok(Ok(())) => debug!("callback order sent"),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_request_budget_slows_a_flood_to_its_rate() {
        let mut budget = RequestBudget::new(100);
        let start = Instant::now();
        for _ in 0..350 {
            budget.take().await;
        }
        // 350 requests at 100 per second: three full windows had to pass.
        assert_eq!(start.elapsed().as_secs(), 3);
    }
}
