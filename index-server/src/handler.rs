//! One request in, one response out: the protocol logic without sockets.

use std::net::{IpAddr, SocketAddr};

use common::index_proto::{
    ErrorCode, IndexRequest, IndexResponse, Login, PeerReach, Reach, SearchFilter,
};
use common::limits::{
    DEFAULT_SEARCH_LIMIT, MAX_FILES_PER_BATCH, MAX_LOOKUP_CANDIDATES, MAX_NAME_LEN,
    MAX_SEARCH_LIMIT, MAX_SEARCH_WORDS, MAX_WORD_LEN, MIN_ID_PREFIX_LEN,
};
use common::names::MAX_EXTENSION_LEN;
use common::search::{Query, MAX_FILTER_EXTENSIONS};
use common::target::IdPrefix;
use tokio::time::Instant;

use crate::state::{
    canonical_addr, source_key, Index, NewSession, SearchOutcome, SessionId, StateError,
};

/// What a connection knows about itself.
pub struct Connection {
    /// Source IP of the TCP connection (never taken from a message).
    pub peer_ip: IpAddr,
    pub session: Option<SessionId>,
    /// What an advertised host name resolved to, looked up by the server
    /// before the `Login` that names it is handled (this module does no
    /// I/O): the name as advertised and its addresses.
    pub resolved: Option<(String, Vec<SocketAddr>)>,
    /// The connection's source port (with `peer_ip`, where the index sees
    /// it come from: a NAT's outside address); 0 when unknown.
    pub peer_port: u16,
    /// Reachability dial-backs the server made before the `LoginChecked`
    /// being handled (this module does no I/O): each address dialed and
    /// whether it proved itself (`Err`: why not, for the peer).
    pub dialbacks: Vec<(SocketAddr, Result<(), String>)>,
    /// Whether a legacy `Login` is listed as firewalled
    /// (`Config::require_proof`).
    pub require_proof: bool,
    /// Callback requests this connection's requester may make per minute
    /// (`Config::max_callbacks_per_minute`).
    pub max_callbacks_per_minute: u32,
    /// The index's relay, when it has one (`Config::relay`).
    pub relay: Option<std::sync::Arc<crate::relay::Relay>>,
    /// Whether `Punch` requests are taken (`Config::hole_punching`).
    pub hole_punching: bool,
    /// The id the connection's handshake proved (`None` in clear text):
    /// the session's id, never taken from a message.
    pub peer_id: Option<common::identity::PeerId>,
}

impl Connection {
    /// A connection from `peer_ip` that has not logged in.
    pub fn new(peer_ip: IpAddr) -> Self {
        Connection {
            peer_ip: peer_ip.to_canonical(),
            session: None,
            resolved: None,
            peer_port: 0,
            dialbacks: Vec::new(),
            require_proof: false,
            max_callbacks_per_minute: crate::DEFAULT_MAX_CALLBACKS_PER_MINUTE,
            relay: None,
            hole_punching: true,
            peer_id: None,
        }
    }

    /// The connection's source `IP:PORT` as the index sees it.
    pub fn observed(&self) -> SocketAddr {
        SocketAddr::new(self.peer_ip, self.peer_port)
    }
}

/// What a `LoginChecked` asks to publish, before any dial-back: the
/// listening port at the connection's source IP, and the advertised
/// address with what it resolves to. Each is `Err` with the reason it
/// cannot be published at all (checked without a dial-back).
pub struct Candidates {
    pub listen: Result<SocketAddr, String>,
    pub advertise: Option<Result<Advertised, String>>,
    /// The other addresses of a `LoginAddrs` (the other IP family), each
    /// as given and then the address to dial or why it cannot be.
    pub also: Vec<(String, Result<SocketAddr, String>)>,
}

/// An advertised address as it would be published: (published form,
/// address claims, addresses to dial).
pub type Advertised = (String, Vec<String>, Vec<SocketAddr>);

impl Candidates {
    /// Every address to dial back, at most [`MAX_DIALBACKS`].
    pub fn targets(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self.listen.iter().copied().collect();
        if let Some(Ok((_, _, targets))) = &self.advertise {
            all.extend(targets);
        }
        all.sort();
        all.dedup();
        all.truncate(MAX_DIALBACKS);
        all.extend(
            self.also
                .iter()
                .filter_map(|(_, t)| t.as_ref().ok().copied()),
        );
        all.sort();
        all.dedup();
        all
    }
}

/// Most addresses dialed back for the listening address and
/// `--advertise` of one login (an advertised name resolving to many
/// addresses is checked at its first few); a `LoginAddrs` adds at most
/// `MAX_ALSO_ADDRS` more.
pub const MAX_DIALBACKS: usize = 4;

/// The `also` addresses of a `LoginAddrs`, each with the address to dial
/// or why it cannot be published (an IP literal is required: names go in
/// `--advertise`).
fn also_candidates(
    conn: &Connection,
    also: &[String],
    low_ports: bool,
) -> Vec<(String, Result<SocketAddr, String>)> {
    also.iter()
        .take(common::index_proto::MAX_ALSO_ADDRS)
        .map(|a| {
            let target = match a.parse::<SocketAddr>() {
                Err(_) => Err(format!("other address {a:?} is not IP:PORT")),
                Ok(t) => {
                    let t = SocketAddr::new(t.ip().to_canonical(), t.port());
                    match unreachable_reason(t.ip(), t.port(), conn.peer_ip, low_ports) {
                        Some(why) => Err(format!("cannot publish {t}: {why}")),
                        None => Ok(t),
                    }
                }
            };
            (a.clone(), target)
        })
        .collect()
}

/// The addresses a `LoginChecked` (or a `LoginAddrs` with `also`) on
/// `conn` asks to publish.
pub fn candidates(
    conn: &Connection,
    login: &Login,
    also: &[String],
    low_ports: bool,
) -> Candidates {
    let listen = match login_address(conn, login.listen_port, None, low_ports) {
        Ok(_) => Ok(SocketAddr::new(conn.peer_ip, login.listen_port)),
        Err(why) => Err(why),
    };
    let advertise = login.advertise.clone().map(|a| {
        let (addr, claims) = login_address(conn, login.listen_port, Some(a), low_ports)?;
        let targets = match advertised_ip(&addr) {
            Some(ip) => vec![SocketAddr::new(
                ip.to_canonical(),
                addr.rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or(0),
            )],
            None => conn
                .resolved
                .as_ref()
                .map(|(_, addrs)| addrs.clone())
                .unwrap_or_default(),
        };
        let targets = targets
            .into_iter()
            .map(|t| SocketAddr::new(t.ip().to_canonical(), t.port()))
            .collect();
        Ok((addr, claims, targets))
    });
    Candidates {
        listen,
        advertise,
        also: also_candidates(conn, also, low_ports),
    }
}

/// Whether the dial-back to `target` succeeded (`Err`: why not).
fn dialed(conn: &Connection, target: SocketAddr) -> Result<(), String> {
    conn.dialbacks
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| Err("it was not dialed".into()))
}

/// The session to open for a `LoginChecked` whose dial-backs are in
/// `conn.dialbacks`: the advertised address when every address it names
/// proved itself, else the listening address when it did, else none
/// (firewalled, named by the connection's observed address). With the
/// reasons the others were not published.
fn checked_session(
    conn: &Connection,
    login: &Login,
    also: &[String],
    low_ports: bool,
) -> CheckedSession {
    let c = candidates(conn, login, also, low_ports);
    let mut refused = Vec::new();
    let mut chosen = None;
    match &c.advertise {
        None => {}
        Some(Err(why)) => refused.push(why.clone()),
        Some(Ok((addr, claims, targets))) => {
            let failures: Vec<String> = targets
                .iter()
                .filter_map(|t| dialed(conn, *t).err().map(|why| format!("{t}: {why}")))
                .collect();
            if targets.is_empty() || !failures.is_empty() || targets.len() > MAX_DIALBACKS {
                refused.push(format!(
                    "advertised address {addr} was not published: it did not prove to be this peer ({})",
                    if failures.is_empty() {
                        "too many addresses to check".to_string()
                    } else {
                        failures.join("; ")
                    }
                ));
            } else {
                chosen = Some((addr.clone(), claims.clone()));
            }
        }
    }
    match &c.listen {
        Err(why) => refused.push(why.clone()),
        Ok(target) => match dialed(conn, *target) {
            Ok(()) => {
                if chosen.is_none() {
                    chosen = Some((target.to_string(), vec![target.to_string()]));
                }
            }
            Err(why) => refused.push(format!(
                "{target} (this connection's address with the listening port) was not published: {why}"
            )),
        },
    }
    // The other family's addresses: published beside the chosen one, or
    // (nothing else proved itself) the first of them is.
    let mut others = Vec::new();
    for (given, target) in &c.also {
        match target {
            Err(why) => refused.push(why.clone()),
            Ok(t) => match dialed(conn, *t) {
                Ok(()) => {
                    let addr = t.to_string();
                    match &mut chosen {
                        None => chosen = Some((addr.clone(), vec![addr])),
                        Some((primary, claims)) => {
                            if *primary != addr && !others.contains(&addr) {
                                claims.push(addr.clone());
                                others.push(addr);
                            }
                        }
                    }
                }
                Err(why) => refused.push(format!("other address {given} was not published: {why}")),
            },
        }
    }
    match chosen {
        Some((addr, claims)) => CheckedSession {
            addr,
            claims,
            reach: Reach::Direct,
            refused,
            also: others,
        },
        None => CheckedSession {
            addr: conn.observed().to_string(),
            claims: Vec::new(),
            reach: Reach::Firewalled,
            refused,
            also: Vec::new(),
        },
    }
}

/// What a checked login publishes (see [`checked_session`]).
struct CheckedSession {
    addr: String,
    claims: Vec<String>,
    reach: Reach,
    refused: Vec<String>,
    /// Other proven addresses, published beside `addr`.
    also: Vec<String>,
}

/// The inside addresses of a `LoginAddrs` kept for a firewalled session:
/// well-formed `IP:PORT` literals only, at most `MAX_ALSO_ADDRS`.
fn lan_addresses(lan: &[String]) -> Vec<String> {
    lan.iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast())
        .take(common::index_proto::MAX_ALSO_ADDRS)
        .map(|a| a.to_string())
        .collect()
}

/// A `LoginChecked` (or `LoginAddrs`, with `also` and `lan`) whose
/// dial-backs are in `conn.dialbacks`: opens the session with what proved
/// itself, answered `WelcomeChecked`.
fn login_checked(
    index: &Index,
    conn: &mut Connection,
    login: Login,
    nonce: [u8; common::reach::NONCE_LEN],
    also: &[String],
    lan: &[String],
    now: Instant,
) -> IndexResponse {
    if conn.session.is_some() {
        return error(
            ErrorCode::AlreadyLoggedIn,
            "this connection is already logged in",
        );
    }
    if let Some(n) = &login.nick {
        if !valid_nick(n) {
            return error(
                ErrorCode::BadRequest,
                "a nickname is 1 to 32 letters, digits, '-', '_' or '.'",
            );
        }
    }
    if !index.use_nonce(nonce) {
        return error(
            ErrorCode::BadRequest,
            "this login nonce was used before (a replayed login); log in again with a fresh random nonce",
        );
    }
    let low_ports = index.limits().allow_privileged_ports;
    let CheckedSession {
        addr,
        claims,
        reach,
        refused,
        also,
    } = checked_session(conn, &login, also, low_ports);
    let new = NewSession {
        addr: addr.clone(),
        claims,
        nick: login.nick,
        source: Some(source_key(conn.peer_ip)),
        reach,
        peer_id: conn.peer_id,
    };
    match index.open_session(new, now) {
        Ok(id) => {
            conn.session = Some(id);
            let lan = match reach {
                Reach::Firewalled => lan_addresses(lan),
                Reach::Direct => Vec::new(),
            };
            index.set_other_addresses(id, also, lan);
            IndexResponse::WelcomeChecked {
                addr: (reach == Reach::Direct).then_some(addr),
                observed: conn.observed().to_string(),
                refused,
                lease_ttl_ms: index.lease_ttl().as_millis() as u64,
            }
        }
        Err(e) => state_error(e),
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> IndexResponse {
    IndexResponse::Error {
        code,
        message: message.into(),
    }
}

fn state_error(e: StateError) -> IndexResponse {
    match e {
        // Older peers know the code; the message says which case it is.
        StateError::NickTaken(_) | StateError::NickReserved { .. } => {
            error(ErrorCode::NickTaken, e.to_string())
        }
        StateError::NoSession => error(ErrorCode::NotLoggedIn, e.to_string()),
        StateError::AddressTaken(_) => error(ErrorCode::AddressTaken, e.to_string()),
        StateError::TooManySessions { .. }
        | StateError::TooManyFiles { .. }
        | StateError::IndexFull { .. } => error(ErrorCode::TooMany, e.to_string()),
    }
}

/// The advertised `HOST` of a `HOST:PORT`, without IPv6 brackets, if it
/// names an IP address rather than a host.
pub fn advertised_ip(addr: &str) -> Option<IpAddr> {
    let (host, _) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// Whether an advertised address needs a name lookup before its `Login`
/// is handled (a well-formed `HOST:PORT` whose host is not an IP address).
pub fn needs_lookup(addr: &str) -> bool {
    valid_advertise(addr) && advertised_ip(addr).is_none()
}

/// Why a peer cannot be published at `ip:port`, if it cannot: addresses no
/// downloader could reach it at (unspecified, multicast, broadcast; a
/// loopback address unless the peer itself connects from loopback, since
/// elsewhere it means the downloader's own machine), port 0, and ports
/// below 1024 unless allowed (see `Limits::allow_privileged_ports`).
fn unreachable_reason(ip: IpAddr, port: u16, source: IpAddr, low_ports: bool) -> Option<String> {
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if port == 0 {
        Some("port 0 is not reachable".into())
    } else if port < 1024 && !low_ports {
        Some(format!(
            "port {port} is a privileged port, not a peer's (peers listen on 1024 and above; an operator can allow it with index-server --allow-privileged-ports)"
        ))
    } else if ip.is_unspecified() || ip.is_multicast() || broadcast {
        Some(format!("{ip} is not the address of one host"))
    } else if ip.is_loopback() && !source.to_canonical().is_loopback() {
        Some(format!(
            "{ip} is a loopback address: other machines would reach themselves (advertise an address they can reach)"
        ))
    } else {
        None
    }
}

/// The address to publish for a login and the address keys it claims, or
/// why it is refused.
fn login_address(
    conn: &Connection,
    listen_port: u16,
    advertise: Option<String>,
    low_ports: bool,
) -> Result<(String, Vec<String>), String> {
    let Some(a) = advertise else {
        if let Some(why) = unreachable_reason(conn.peer_ip, listen_port, conn.peer_ip, low_ports) {
            return Err(format!("cannot publish listen port {listen_port}: {why}"));
        }
        let addr = SocketAddr::new(conn.peer_ip.to_canonical(), listen_port).to_string();
        return Ok((addr.clone(), vec![addr]));
    };
    if !valid_advertise(&a) {
        return Err(format!("advertised address {a:?} is not HOST:PORT"));
    }
    let port: u16 = a
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    // The port first: it needs no lookup.
    let any = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    if let Some(why) = unreachable_reason(any, port, any, low_ports) {
        return Err(format!("cannot publish {a}: {why}"));
    }
    let targets: Vec<SocketAddr> = match advertised_ip(&a) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match &conn.resolved {
            Some((name, addrs)) if *name == a && !addrs.is_empty() => addrs.clone(),
            _ => {
                return Err(format!(
                    "advertised host {a:?} does not resolve to an address"
                ))
            }
        },
    };
    let mut claims = vec![canonical_addr(&a)];
    for t in &targets {
        if let Some(why) = unreachable_reason(t.ip(), t.port(), conn.peer_ip, low_ports) {
            return Err(format!("cannot publish {a}: {why}"));
        }
        claims.push(canonical_addr(&t.to_string()));
    }
    claims.sort();
    claims.dedup();
    let addr = match advertised_ip(&a) {
        Some(_) => canonical_addr(&a),
        None => a,
    };
    Ok((addr, claims))
}

/// Checks an advertised `HOST:PORT`.
fn valid_advertise(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    addr.len() <= 255
        && !host.is_empty()
        && port.parse::<u16>().is_ok()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:_".contains(c))
}

fn valid_nick(nick: &str) -> bool {
    common::im::validate_nick(nick).is_ok()
}

/// The name a request is counted under in [`Index::request_counts`].
pub fn request_kind(request: &IndexRequest) -> &'static str {
    match request {
        IndexRequest::Login(_) => "Login",
        IndexRequest::AddFiles { .. } => "AddFiles",
        IndexRequest::RemoveFiles { .. } => "RemoveFiles",
        IndexRequest::Heartbeat => "Heartbeat",
        IndexRequest::Search { .. } => "Search",
        IndexRequest::Lookup { .. } => "Lookup",
        IndexRequest::Browse { .. } => "Browse",
        IndexRequest::Stats => "Stats",
        IndexRequest::ListPeers { .. } => "ListPeers",
        IndexRequest::WhoIs { .. } => "WhoIs",
        IndexRequest::AddPartial { .. } => "AddPartial",
        IndexRequest::SwarmLookup { .. } => "SwarmLookup",
        // The same work as `Search`, counted as one.
        IndexRequest::SearchCounted { .. } => "Search",
        IndexRequest::SearchFiltered { .. } => "Search",
        IndexRequest::LookupName { .. } => "LookupName",
        IndexRequest::LookupPrefix { .. } => "LookupPrefix",
        IndexRequest::LoginChecked { .. } => "Login",
        IndexRequest::LoginAddrs { .. } => "Login",
        IndexRequest::LookupAddrs { .. } => "Lookup",
        IndexRequest::AcceptOrders { .. } => "Login",
        IndexRequest::RelayVia { .. } => "Callback",
        IndexRequest::ListPeersReach { .. } => "ListPeers",
        IndexRequest::AcceptCallbacks => "Login",
        IndexRequest::LookupReach { .. } => "Lookup",
        IndexRequest::Callback { .. } => "Callback",
        IndexRequest::Relay { .. } => "Callback",
        IndexRequest::Punch { .. } => "Callback",
    }
}

/// The session of a logged-in connection sending a batch of `len` entries,
/// or the refusal to answer.
fn batch_session(
    conn: &Connection,
    len: usize,
    action: &str,
    what: &str,
) -> Result<SessionId, IndexResponse> {
    let Some(session) = conn.session else {
        return Err(error(
            ErrorCode::NotLoggedIn,
            format!("log in before {action}"),
        ));
    };
    if len > MAX_FILES_PER_BATCH {
        return Err(error(
            ErrorCode::TooMany,
            format!("at most {MAX_FILES_PER_BATCH} {what} per batch"),
        ));
    }
    Ok(session)
}

/// Whether `request` is a keyword search (which the server runs off the
/// runtime's worker threads; it never touches the connection's state).
pub fn is_search(request: &IndexRequest) -> bool {
    matches!(
        request,
        IndexRequest::Search { .. }
            | IndexRequest::SearchCounted { .. }
            | IndexRequest::SearchFiltered { .. }
    )
}

/// Handles one request. Pure apart from the index state it is given.
pub fn handle(
    index: &Index,
    conn: &mut Connection,
    request: IndexRequest,
    now: Instant,
) -> IndexResponse {
    index.count_request(request_kind(&request));
    match request {
        IndexRequest::Login(Login {
            listen_port,
            advertise,
            nick,
        }) => {
            if conn.session.is_some() {
                return error(
                    ErrorCode::AlreadyLoggedIn,
                    "this connection is already logged in",
                );
            }
            let low_ports = index.limits().allow_privileged_ports;
            let (addr, claims) = match login_address(conn, listen_port, advertise, low_ports) {
                Ok(pair) => pair,
                Err(message) => return error(ErrorCode::BadRequest, message),
            };
            if let Some(n) = &nick {
                if !valid_nick(n) {
                    return error(
                        ErrorCode::BadRequest,
                        "a nickname is 1 to 32 letters, digits, '-', '_' or '.'",
                    );
                }
            }
            // Unproven: without `require_proof` published as before the
            // check existed (older peers), with it listed as firewalled.
            let (addr, claims, reach) = if conn.require_proof {
                (conn.observed().to_string(), Vec::new(), Reach::Firewalled)
            } else {
                (addr, claims, Reach::Direct)
            };
            let new = NewSession {
                addr: addr.clone(),
                claims,
                nick,
                source: Some(source_key(conn.peer_ip)),
                reach,
                peer_id: conn.peer_id,
            };
            match index.open_session(new, now) {
                Ok(id) => {
                    conn.session = Some(id);
                    IndexResponse::Welcome {
                        addr,
                        lease_ttl_ms: index.lease_ttl().as_millis() as u64,
                    }
                }
                Err(e) => state_error(e),
            }
        }
        IndexRequest::LoginChecked { login, nonce } => {
            login_checked(index, conn, login, nonce, &[], &[], now)
        }
        IndexRequest::LoginAddrs {
            login,
            nonce,
            also,
            lan,
        } => login_checked(index, conn, login, nonce, &also, &lan, now),
        IndexRequest::LookupAddrs { id } => match index.lookup_addrs(&id, conn.peer_ip, now) {
            Some((name, size, sources)) => IndexResponse::SourcesAddrs {
                id,
                name,
                size,
                sources,
            },
            None => error(ErrorCode::NotFound, format!("no online peer offers {id}")),
        },
        // The connection task made the channel the orders go through
        // before this answer (this module does no I/O).
        IndexRequest::AcceptCallbacks => match conn.session {
            Some(_) => IndexResponse::Ack { count: 0 },
            None => error(ErrorCode::NotLoggedIn, "log in before taking callbacks"),
        },
        IndexRequest::LookupReach { id } => match index.lookup_reach(&id, now) {
            Some((name, size, sources)) => IndexResponse::SourcesReach {
                id,
                name,
                size,
                sources,
            },
            None => error(ErrorCode::NotFound, format!("no online peer offers {id}")),
        },
        IndexRequest::Callback {
            id,
            source,
            port,
            token,
        } => callback(index, conn, id, source, port, token, now),
        IndexRequest::Relay { id, source, token } => relay(index, conn, id, source, token, now),
        IndexRequest::RelayVia { id, source, token } => {
            relay_via(index, conn, id, source, token, now)
        }
        // The connection task made the channel the orders go through
        // before this answer (this module does no I/O).
        IndexRequest::AcceptOrders { flags } => match conn.session {
            None => error(ErrorCode::NotLoggedIn, "log in before taking orders"),
            Some(session)
                if flags & common::index_proto::ORDERS_RELAYS != 0
                    && index.session_reach(session) != Some(Reach::Direct) =>
            {
                error(
                    ErrorCode::BadRequest,
                    "only a peer with a proven address can relay for others (this one is firewalled)",
                )
            }
            Some(session) => {
                index.set_order_flags(session, flags);
                IndexResponse::Ack { count: 0 }
            }
        },
        IndexRequest::Punch { id, source, token } => punch(index, conn, id, source, token, now),
        IndexRequest::ListPeersReach { start } => {
            let (peers, next): (Vec<PeerReach>, _) =
                index.peers_reach(start as usize, MAX_FILES_PER_BATCH, now);
            IndexResponse::PeersReach { peers, next }
        }
        IndexRequest::AddFiles { files } => {
            let session = match batch_session(conn, files.len(), "adding files", "files") {
                Ok(session) => session,
                Err(refusal) => return refusal,
            };
            match index.add_files(session, files, now) {
                Ok(outcome) => IndexResponse::Ack {
                    count: outcome.added,
                },
                Err(e) => state_error(e),
            }
        }
        IndexRequest::RemoveFiles { ids } => {
            let session = match batch_session(conn, ids.len(), "removing files", "ids") {
                Ok(session) => session,
                Err(refusal) => return refusal,
            };
            match index.remove_files(session, &ids, now) {
                Ok(count) => IndexResponse::Ack { count },
                Err(e) => state_error(e),
            }
        }
        IndexRequest::Heartbeat => {
            let Some(session) = conn.session else {
                return error(ErrorCode::NotLoggedIn, "log in before heartbeating");
            };
            match index.heartbeat(session, now) {
                Ok(()) => IndexResponse::Ack { count: 0 },
                Err(e) => state_error(e),
            }
        }
        IndexRequest::Search { words, limit } => {
            match search(index, &words, limit, &SearchFilter::default(), now) {
                Ok(found) => IndexResponse::SearchResults { hits: found.hits },
                Err(refusal) => refusal,
            }
        }
        IndexRequest::Lookup { id } => match index.lookup(&id, now) {
            Some((name, size, sources)) => IndexResponse::Sources {
                id,
                name,
                size,
                sources,
            },
            None => error(ErrorCode::NotFound, format!("no online peer offers {id}")),
        },
        IndexRequest::Browse { peer, start } => {
            match index.browse(&peer, start as usize, MAX_FILES_PER_BATCH, now) {
                Some((files, next)) => IndexResponse::PeerFiles { files, next },
                None => error(ErrorCode::NotFound, format!("no online peer is {peer:?}")),
            }
        }
        IndexRequest::Stats => IndexResponse::Stats(index.stats(now)),
        IndexRequest::ListPeers { start } => {
            let (peers, next) = index.peers(start as usize, MAX_FILES_PER_BATCH, now);
            IndexResponse::Peers { peers, next }
        }
        IndexRequest::WhoIs { nick } => {
            if !valid_nick(&nick) {
                return error(
                    ErrorCode::BadRequest,
                    "a nickname is 1 to 32 letters, digits, '-', '_' or '.'",
                );
            }
            match index.whois(&nick, now) {
                Some(peer) => IndexResponse::Peers {
                    peers: vec![peer],
                    next: None,
                },
                None => error(ErrorCode::NotFound, format!("no online peer is {nick:?}")),
            }
        }
        IndexRequest::AddPartial { files } => {
            let session = match batch_session(conn, files.len(), "adding files", "files") {
                Ok(session) => session,
                Err(refusal) => return refusal,
            };
            match index.add_partial(session, files, now) {
                Ok(outcome) => IndexResponse::Ack {
                    count: outcome.added,
                },
                Err(e) => state_error(e),
            }
        }
        IndexRequest::SwarmLookup { id } => match index.swarm_lookup(&id, now) {
            Some(found) => IndexResponse::SwarmSources {
                id,
                name: found.name,
                size: found.size,
                complete: found.complete,
                partial: found.partial,
            },
            None => error(ErrorCode::NotFound, format!("no online peer offers {id}")),
        },
        IndexRequest::SearchCounted { words, limit } => {
            match search(index, &words, limit, &SearchFilter::default(), now) {
                Ok(found) => IndexResponse::SearchPage {
                    hits: found.hits,
                    total: found.total,
                },
                Err(refusal) => refusal,
            }
        }
        IndexRequest::SearchFiltered {
            words,
            limit,
            filter,
        } => match search(index, &words, limit, &filter, now) {
            Ok(found) => IndexResponse::SearchAnswer {
                hits: found.hits,
                total: found.total,
                truncated: found.truncated,
                total_exact: found.total_exact,
            },
            Err(refusal) => refusal,
        },
        // Not bound by the search-word limits: the frame and the name
        // length bound the work, as for a registration.
        IndexRequest::LookupName { name } => {
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return error(
                    ErrorCode::BadRequest,
                    format!("a file name is 1 to {MAX_NAME_LEN} bytes"),
                );
            }
            IndexResponse::SearchResults {
                hits: index.lookup_name(&name, MAX_LOOKUP_CANDIDATES as usize, now),
            }
        }
        IndexRequest::LookupPrefix { prefix } => match IdPrefix::parse(&prefix) {
            Some(p) => IndexResponse::SearchResults {
                hits: index.lookup_prefix(&p, MAX_LOOKUP_CANDIDATES as usize, now),
            },
            None => error(
                ErrorCode::BadRequest,
                format!("an id prefix is {MIN_ID_PREFIX_LEN} to 63 hex digits"),
            ),
        },
    }
}

/// The answer when an order (callback, punch, relay) cannot be sent to
/// the source's session: its queue is full (`TooMany`, try later) or it
/// takes no orders.
fn order_refused(e: crate::state::CallbackError) -> IndexResponse {
    match e {
        crate::state::CallbackError::Full => error(ErrorCode::TooMany, e.to_string()),
        e => error(ErrorCode::BadRequest, e.to_string()),
    }
}

/// Takes one request from the requester's budget of callbacks, punches
/// and relays (`index-server --max-callbacks-per-minute`); the refusal if
/// it is spent.
fn take_callback_budget(index: &Index, conn: &Connection, now: Instant) -> Option<IndexResponse> {
    let per_minute = conn.max_callbacks_per_minute;
    if index
        .callback_budget()
        .take(conn.peer_ip, 1, per_minute, now.into_std())
    {
        return None;
    }
    Some(error(
        ErrorCode::TooMany,
        format!(
            "{} asked for more than {per_minute} callbacks, punches and relays in a minute (index-server --max-callbacks-per-minute); try again later",
            conn.peer_ip
        ),
    ))
}

/// The online session listed at `source` (at most 255 bytes) that has
/// registered file `id`, or the refusal that says why there is none.
fn registered_holder(
    index: &Index,
    id: &common::id::FileId,
    source: &str,
    now: Instant,
) -> Result<SessionId, IndexResponse> {
    if source.len() > 255 {
        return Err(error(
            ErrorCode::BadRequest,
            "a peer address is at most 255 bytes",
        ));
    }
    index.holder_named(id, source, now).ok_or_else(|| {
        error(
            ErrorCode::NotFound,
            format!(
                "no online peer {:?} has registered file {id}",
                common::names::escape_for_terminal(source)
            ),
        )
    })
}

/// Forwards a callback request to the source's connection (see
/// `IndexRequest::Callback`), or says why not. Every request, refused or
/// not, counts against the requester's budget, so that probing which
/// peers hold what costs the same as asking.
fn callback(
    index: &Index,
    conn: &Connection,
    id: common::id::FileId,
    source: String,
    port: u16,
    token: [u8; common::reach::NONCE_LEN],
    now: Instant,
) -> IndexResponse {
    if let Some(refusal) = take_callback_budget(index, conn, now) {
        return refusal;
    }
    let low_ports = index.limits().allow_privileged_ports;
    if let Some(why) = unreachable_reason(conn.peer_ip, port, conn.peer_ip, low_ports) {
        return error(
            ErrorCode::BadRequest,
            format!("cannot call back to port {port}: {why}"),
        );
    }
    let session = match registered_holder(index, &id, &source, now) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let order = IndexResponse::CallbackOrder {
        id,
        target: SocketAddr::new(conn.peer_ip, port).to_string(),
        token,
    };
    match index.send_callback(session, order) {
        Ok(()) => IndexResponse::Ack { count: 1 },
        Err(e) => order_refused(e),
    }
}

/// Starts a hole punch between this connection's peer and the source
/// (see `IndexRequest::Punch`), or says why not. Counted against the same
/// budget as callbacks.
fn punch(
    index: &Index,
    conn: &Connection,
    id: common::id::FileId,
    source: String,
    token: [u8; common::reach::NONCE_LEN],
    now: Instant,
) -> IndexResponse {
    if conn.session.is_none() {
        return error(
            ErrorCode::NotLoggedIn,
            "only logged-in peers may punch holes: log in first",
        );
    }
    if !conn.hole_punching {
        return error(
            ErrorCode::BadRequest,
            "this index does not coordinate hole punching (index-server --hole-punching false)",
        );
    }
    if let Some(refusal) = take_callback_budget(index, conn, now) {
        return refusal;
    }
    let session = match registered_holder(index, &id, &source, now) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let order = IndexResponse::PunchOrder {
        id,
        token,
        peer: conn.observed().to_string(),
    };
    match index.send_callback(session, order) {
        // `source` is the session's listed address: for a firewalled
        // peer, its index connection as seen here.
        Ok(()) => IndexResponse::PunchAnswer { peer: source },
        Err(e) => order_refused(e),
    }
}

/// Arranges a relay to the source's connection (see
/// `IndexRequest::Relay`), or says why not. Counted against the same
/// budget as callbacks.
fn relay(
    index: &Index,
    conn: &Connection,
    id: common::id::FileId,
    source: String,
    token: [u8; common::reach::NONCE_LEN],
    now: Instant,
) -> IndexResponse {
    if conn.session.is_none() {
        return error(
            ErrorCode::NotLoggedIn,
            "only logged-in peers may use the relay: log in first",
        );
    }
    let Some(relay) = &conn.relay else {
        return error(
            ErrorCode::BadRequest,
            "this index does not relay (index-server --relay false)",
        );
    };
    if let Some(refusal) = take_callback_budget(index, conn, now) {
        return refusal;
    }
    let session = match registered_holder(index, &id, &source, now) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    relay_at_index(index, relay, session, id, token, now)
}

/// Arranges a relay at the index's own `relay` for the holder `session`
/// of `id` (checks done): `Ack`, or the refusal.
fn relay_at_index(
    index: &Index,
    relay: &crate::relay::Relay,
    session: SessionId,
    id: common::id::FileId,
    token: [u8; common::reach::NONCE_LEN],
    now: Instant,
) -> IndexResponse {
    if let Err(e) = relay.arrange(token, now) {
        return error(ErrorCode::TooMany, e.to_string());
    }
    match index.send_callback(session, IndexResponse::RelayOrder { id, token }) {
        Ok(()) => IndexResponse::Ack { count: 1 },
        Err(e) => {
            relay.cancel(&token);
            match e {
                crate::state::CallbackError::Full => error(ErrorCode::TooMany, e.to_string()),
                _ => error(ErrorCode::BadRequest, e.to_string()),
            }
        }
    }
}

/// `RelayVia`: a public peer that relays for others when there is one
/// (not the requester, not the source) and the source can join it,
/// else the index's own relay, as `Relay`.
fn relay_via(
    index: &Index,
    conn: &Connection,
    id: common::id::FileId,
    source: String,
    token: [u8; common::reach::NONCE_LEN],
    now: Instant,
) -> IndexResponse {
    let Some(requester) = conn.session else {
        return error(
            ErrorCode::NotLoggedIn,
            "only logged-in peers may use a relay: log in first",
        );
    };
    if let Some(refusal) = take_callback_budget(index, conn, now) {
        return refusal;
    }
    let holder = match registered_holder(index, &id, &source, now) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let peer_relay = index
        .takes_orders(holder, common::index_proto::ORDERS_RELAY_AT)
        .then(|| index.pick_peer_relay(&[requester, holder], now))
        .flatten();
    let Some((relay_session, relay_addr)) = peer_relay else {
        let Some(relay) = &conn.relay else {
            return error(
                ErrorCode::BadRequest,
                "no relay: this index does not relay (index-server --relay false) and no public peer offers to",
            );
        };
        return match relay_at_index(index, relay, holder, id, token, now) {
            IndexResponse::Ack { .. } => IndexResponse::RelayAt { relay: None },
            refusal => refusal,
        };
    };
    if let Err(e) = index.send_callback(relay_session, IndexResponse::RelayArrange { token }) {
        return error(
            ErrorCode::TooMany,
            format!("the relay peer cannot take it now ({e}); try again"),
        );
    }
    let order = IndexResponse::RelayOrderAt {
        id,
        token,
        relay: relay_addr.clone(),
    };
    match index.send_callback(holder, order) {
        Ok(()) => IndexResponse::RelayAt {
            relay: Some(relay_addr),
        },
        Err(e) => order_refused(e),
    }
}

/// A search's answer, or the refusal to answer: too many or too long
/// words, words with nothing to look for, a malformed filter.
fn search(
    index: &Index,
    words: &[String],
    limit: u32,
    filter: &SearchFilter,
    now: Instant,
) -> Result<SearchOutcome, IndexResponse> {
    if words.len() > MAX_SEARCH_WORDS || words.iter().any(|w| w.len() > MAX_WORD_LEN) {
        return Err(error(
            ErrorCode::BadRequest,
            format!("at most {MAX_SEARCH_WORDS} words of at most {MAX_WORD_LEN} bytes"),
        ));
    }
    if filter.exts.len() > MAX_FILTER_EXTENSIONS
        || filter.exts.iter().any(|e| e.len() > MAX_EXTENSION_LEN)
    {
        return Err(error(
            ErrorCode::BadRequest,
            format!(
                "at most {MAX_FILTER_EXTENSIONS} extensions of at most {MAX_EXTENSION_LEN} bytes"
            ),
        ));
    }
    let query = Query::parse(words).map_err(|e| error(ErrorCode::BadRequest, e.to_string()))?;
    let limit = if limit == 0 {
        DEFAULT_SEARCH_LIMIT
    } else {
        limit.min(MAX_SEARCH_LIMIT)
    };
    let mut filter = filter.clone();
    for e in &mut filter.exts {
        *e = e.trim_start_matches('.').to_lowercase();
    }
    let started = std::time::Instant::now();
    let found = index.search_query(&query, &filter, limit as usize, now);
    index
        .search_seconds()
        .observe(started.elapsed().as_secs_f64());
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn address_is_source_ip_plus_port_unless_advertised() {
        let index = Index::new(Duration::from_secs(60));
        let mut conn = Connection::new("10.1.2.3".parse().unwrap());
        let login = |adv: Option<&str>| {
            IndexRequest::Login(Login {
                listen_port: 6699,
                advertise: adv.map(Into::into),
                nick: None,
            })
        };
        let r = handle(&index, &mut conn, login(None), Instant::now());
        assert!(
            matches!(r, IndexResponse::Welcome { ref addr, .. } if addr == "10.1.2.3:6699"),
            "{r:?}"
        );
        let r = handle(&index, &mut conn, login(None), Instant::now());
        assert!(matches!(
            r,
            IndexResponse::Error {
                code: ErrorCode::AlreadyLoggedIn,
                ..
            }
        ));
        let mut conn = Connection::new("10.1.2.3".parse().unwrap());
        conn.resolved = Some(("peer3:7000".into(), vec!["10.1.2.4:7000".parse().unwrap()]));
        let r = handle(&index, &mut conn, login(Some("peer3:7000")), Instant::now());
        assert!(
            matches!(r, IndexResponse::Welcome { ref addr, .. } if addr == "peer3:7000"),
            "{r:?}"
        );
        let mut conn = Connection::new("10.1.2.3".parse().unwrap());
        let r = handle(&index, &mut conn, login(Some("no port")), Instant::now());
        assert!(matches!(
            r,
            IndexResponse::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_that_are_not_a_peer_are_refused() {
        let index = Index::new(Duration::from_secs(60));
        let login = |port: u16, adv: Option<&str>| {
            IndexRequest::Login(Login {
                listen_port: port,
                advertise: adv.map(Into::into),
                nick: None,
            })
        };
        let refused = |source: &str, port: u16, adv: Option<&str>| {
            let mut conn = Connection::new(source.parse().unwrap());
            conn.resolved = adv.map(|a| (a.to_string(), vec![]));
            match handle(&index, &mut conn, login(port, adv), Instant::now()) {
                IndexResponse::Error {
                    code: ErrorCode::BadRequest,
                    message,
                } => message,
                other => panic!("{source} {port} {adv:?} accepted: {other:?}"),
            }
        };
        assert!(refused("127.0.0.1", 6699, Some("localhost:22")).contains("privileged"));
        assert!(refused("127.0.0.1", 6699, Some("127.0.0.1:1")).contains("privileged"));
        assert!(refused("10.0.0.1", 22, None).contains("privileged"));
        assert!(refused("10.0.0.1", 0, None).contains("port 0"));
        assert!(refused("10.0.0.1", 6699, Some("10.0.0.2:0")).contains("port 0"));
        assert!(refused("10.0.0.1", 6699, Some("127.0.0.1:7000")).contains("loopback"));
        assert!(refused("10.0.0.1", 6699, Some("[::1]:7000")).contains("loopback"));
        assert!(refused("10.0.0.1", 6699, Some("0.0.0.0:7000")).contains("one host"));
        assert!(refused("10.0.0.1", 6699, Some("224.0.0.1:7000")).contains("one host"));
        assert!(refused("10.0.0.1", 6699, Some("no-such-host.invalid:7000")).contains("resolve"));
        // A host name that resolves to loopback is loopback too.
        let mut conn = Connection::new("10.0.0.1".parse().unwrap());
        conn.resolved = Some((
            "sneaky:7000".into(),
            vec!["127.0.0.1:7000".parse().unwrap()],
        ));
        assert!(matches!(
            handle(
                &index,
                &mut conn,
                login(6699, Some("sneaky:7000")),
                Instant::now()
            ),
            IndexResponse::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
        // Loopback from loopback is fine, and mapped IPv4 is IPv4.
        let mut conn = Connection::new("::ffff:127.0.0.1".parse().unwrap());
        let r = handle(&index, &mut conn, login(7000, None), Instant::now());
        assert!(
            matches!(r, IndexResponse::Welcome { ref addr, .. } if addr == "127.0.0.1:7000"),
            "{r:?}"
        );
        // The same address in another spelling is the same address.
        let mut conn = Connection::new("127.0.0.1".parse().unwrap());
        let r = handle(
            &index,
            &mut conn,
            login(1, Some("[::ffff:127.0.0.1]:7000")),
            Instant::now(),
        );
        assert!(
            matches!(
                r,
                IndexResponse::Error {
                    code: ErrorCode::AddressTaken,
                    ..
                }
            ),
            "{r:?}"
        );
        // An operator may allow privileged ports.
        let lenient = Index::with_limits(
            Duration::from_secs(60),
            crate::state::Limits {
                allow_privileged_ports: true,
                ..Default::default()
            },
        );
        let mut conn = Connection::new("10.0.0.1".parse().unwrap());
        let r = handle(&lenient, &mut conn, login(80, None), Instant::now());
        assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn anonymous_clients_cannot_register() {
        let index = Index::new(Duration::from_secs(60));
        let mut conn = Connection::new("127.0.0.1".parse().unwrap());
        let r = handle(
            &index,
            &mut conn,
            IndexRequest::AddFiles { files: vec![] },
            Instant::now(),
        );
        assert!(matches!(
            r,
            IndexResponse::Error {
                code: ErrorCode::NotLoggedIn,
                ..
            }
        ));
        let r = handle(
            &index,
            &mut conn,
            IndexRequest::Search {
                words: vec!["x".repeat(500)],
                limit: 0,
            },
            Instant::now(),
        );
        assert!(matches!(
            r,
            IndexResponse::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
    }
}
