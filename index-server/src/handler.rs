//! One request in, one response out: the protocol logic without sockets.

use std::net::IpAddr;

use common::index_proto::{ErrorCode, IndexRequest, IndexResponse, Login};
use common::limits::{
    DEFAULT_SEARCH_LIMIT, MAX_FILES_PER_BATCH, MAX_SEARCH_LIMIT, MAX_SEARCH_WORDS, MAX_WORD_LEN,
};
use tokio::time::Instant;

use crate::state::{Index, SessionId, StateError};

/// What a connection knows about itself.
pub struct Connection {
    /// Source IP of the TCP connection (never taken from a message).
    pub peer_ip: IpAddr,
    pub session: Option<SessionId>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> IndexResponse {
    IndexResponse::Error {
        code,
        message: message.into(),
    }
}

fn state_error(e: StateError) -> IndexResponse {
    match e {
        StateError::NickTaken(_) => error(ErrorCode::NickTaken, e.to_string()),
        StateError::NoSession => error(ErrorCode::NotLoggedIn, e.to_string()),
    }
}

/// Checks an advertised `HOST:PORT`.
fn valid_advertise(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    addr.len() <= 255
        && !host.is_empty()
        && port.parse::<u16>().is_ok_and(|p| p != 0)
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
            let addr = match advertise {
                Some(a) if valid_advertise(&a) => a,
                Some(a) => {
                    return error(
                        ErrorCode::BadRequest,
                        format!("advertised address {a:?} is not HOST:PORT"),
                    )
                }
                None if listen_port == 0 => {
                    return error(ErrorCode::BadRequest, "listen port 0 is not reachable")
                }
                None => std::net::SocketAddr::new(conn.peer_ip, listen_port).to_string(),
            };
            if let Some(n) = &nick {
                if !valid_nick(n) {
                    return error(
                        ErrorCode::BadRequest,
                        "a nickname is 1 to 32 letters, digits, '-', '_' or '.'",
                    );
                }
            }
            match index.login(addr.clone(), nick, now) {
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
            if words.len() > MAX_SEARCH_WORDS || words.iter().any(|w| w.len() > MAX_WORD_LEN) {
                return error(
                    ErrorCode::BadRequest,
                    format!("at most {MAX_SEARCH_WORDS} words of at most {MAX_WORD_LEN} bytes"),
                );
            }
            let limit = if limit == 0 {
                DEFAULT_SEARCH_LIMIT
            } else {
                limit.min(MAX_SEARCH_LIMIT)
            };
            IndexResponse::SearchResults {
                hits: index.search(&words, limit as usize, now),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn address_is_source_ip_plus_port_unless_advertised() {
        let index = Index::new(Duration::from_secs(60));
        let mut conn = Connection {
            peer_ip: "10.1.2.3".parse().unwrap(),
            session: None,
        };
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
        let mut conn = Connection {
            peer_ip: "10.1.2.3".parse().unwrap(),
            session: None,
        };
        let r = handle(&index, &mut conn, login(Some("peer3:7000")), Instant::now());
        assert!(
            matches!(r, IndexResponse::Welcome { ref addr, .. } if addr == "peer3:7000"),
            "{r:?}"
        );
        let mut conn = Connection {
            peer_ip: "10.1.2.3".parse().unwrap(),
            session: None,
        };
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
    async fn anonymous_clients_cannot_register() {
        let index = Index::new(Duration::from_secs(60));
        let mut conn = Connection {
            peer_ip: "127.0.0.1".parse().unwrap(),
            session: None,
        };
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
