//! The searching side of the overlay: `peer search --mode p2p --via ADDR`.
//!
//! The client connects to one overlay node (`--via`) as a search client and
//! sends it a `Query`; that node floods it on the client's behalf (the TTL
//! counts overlay hops from it) and the answers come back along the reverse
//! paths to the client.
//!
//! **How the cost is measured.** Every node that processes the query
//! answers once, with its matching files (possibly none) and the number of
//! neighbours it forwarded the query to; a node that drops a copy as already
//! seen answers `duplicate`. So:
//! - `nodes_reached` = distinct nodes that answered a first copy;
//! - `query_messages` = Σ forwarded: copies of the query sent over overlay
//!   links (the flooding cost; duplicates included);
//! - `hit_messages` = Σ distance over answers that carry files: overlay
//!   links their `QueryHit`s crossed on the way back (what Gnutella pays);
//! - `messages` = `query_messages + hit_messages`.
//!
//! The empty answers and duplicate notices are this implementation's
//! accounting and are not counted as cost. Every copy sent produces exactly
//! one answer, so once answers = 1 + Σ forwarded the search is complete and
//! the client stops before `--wait` runs out.
//!
//! **Counts are claims.** An answer is dropped when it is impossible: from
//! farther than the TTL (at most [`MAX_TTL`]), forwarding from the last hop
//! or to more than [`MAX_LINKS`] neighbours, or a second answer from one
//! responder. A liar can still claim copies that are never answered, so the
//! search also ends once no answer came for [`ANSWER_QUIET`] (or twice as
//! long as the last answer took, if more) and then reports `complete: false`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::hello::Protocol;
use common::id::FileId;
use common::names::validate_name;
use common::overlay_proto::OverlayMessage;
use common::wire::{self, Deadlines, WireError};
use serde::Serialize;
use tokio::time::Instant;

use super::node::random_message_id;
use super::router::{MAX_LINKS, MAX_TTL};

/// The search ends when no answer came for this long (or for twice the time
/// the last answer took to arrive, if longer), even with copies unanswered.
pub const ANSWER_QUIET: Duration = Duration::from_secs(1);

/// Default hop limit, as in Gnutella 0.6.
pub const DEFAULT_TTL: u8 = 7;

/// Default longest wait for a flooding search's answers (`--wait`, the
/// API's p2p search, a daemon's p2p downloads).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);

/// One file found, with every node that offers it.
#[derive(Debug, Clone, Serialize)]
pub struct P2pHit {
    pub id: String,
    /// The name most of the answering nodes use.
    pub name: String,
    /// Every name the nodes used for it, most used first (`peer get NAME`
    /// matches any of them).
    pub names: Vec<String>,
    pub size: u64,
    /// `HOST:PORT` of each node that has it (chunk servers).
    pub sources: Vec<String>,
}

/// What a search found and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub hits: Vec<P2pHit>,
    pub ttl: u8,
    pub nodes_reached: u64,
    pub query_messages: u64,
    pub hit_messages: u64,
    pub messages: u64,
    /// Copies dropped by nodes that had already seen the query.
    pub duplicates: u64,
    /// Whether every copy of the query was accounted for before the wait ran out.
    pub complete: bool,
    pub elapsed_ms: u64,
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("cannot reach the overlay node at {addr}: {reason} (is `peer serve --mode p2p` running there? check --via)")]
    Connect {
        addr: String,
        reason: std::io::Error,
    },
    #[error(
        "the node at {0} does not speak the overlay protocol (is it running with --mode p2p?)"
    )]
    NotOverlay(String),
    #[error("overlay node {addr}: {reason}")]
    Wire { addr: String, reason: WireError },
    #[error(transparent)]
    Query(#[from] common::search::QueryError),
    #[error(
        "at most {} words of at most {} bytes",
        common::limits::MAX_SEARCH_WORDS,
        common::limits::MAX_WORD_LEN
    )]
    TooLong,
}

/// Floods a query for `words` through the node at `via` and collects the
/// answers for at most `wait`.
pub async fn search(
    via: &str,
    words: Vec<String>,
    ttl: u8,
    wait: Duration,
) -> Result<SearchReport, SearchError> {
    common::search::Query::parse(&words)?;
    if words.len() > common::limits::MAX_SEARCH_WORDS
        || words.iter().any(|w| w.len() > common::limits::MAX_WORD_LEN)
    {
        return Err(SearchError::TooLong);
    }
    flood(via, words, ttl, wait).await
}

/// [`search`] without the check for words: `peer get` floods a whole name
/// as one word (which may have no letter or digit at all).
pub(crate) async fn flood(
    via: &str,
    words: Vec<String>,
    ttl: u8,
    wait: Duration,
) -> Result<SearchReport, SearchError> {
    let wire_err = |reason| SearchError::Wire {
        addr: via.to_string(),
        reason,
    };
    let started = Instant::now();
    // Nodes clamp it on arrival; clamp it here too, so the report says what ran.
    let ttl = ttl.clamp(1, MAX_TTL);
    let stream = transfer::net::connect_tcp(via, common::limits::CONNECT_TIMEOUT)
        .await
        .map_err(|reason| SearchError::Connect {
            addr: via.to_string(),
            reason,
        })?;
    let (mut stream, _) = transfer::net::client(stream, Protocol::Overlay, None)
        .await
        .map_err(|e| match e {
            WireError::Hello(common::hello::HelloError::WrongProtocol) => {
                SearchError::NotOverlay(via.to_string())
            }
            other => wire_err(other),
        })?;
    wire::send_message(
        &mut stream,
        &OverlayMessage::Connect {
            listen_port: 0,
            advertise: None,
            client: true,
        },
    )
    .await
    .map_err(wire_err)?;
    let mut buf = Vec::new();
    let deadline = started + wait;
    let id = random_message_id();
    wire::send_message(
        &mut stream,
        &OverlayMessage::Query {
            id,
            ttl,
            hops: 0,
            words: words.clone(),
        },
    )
    .await
    .map_err(wire_err)?;

    let mut report = SearchReport {
        hits: Vec::new(),
        ttl,
        nodes_reached: 0,
        query_messages: 0,
        hit_messages: 0,
        messages: 0,
        duplicates: 0,
        complete: false,
        elapsed_ms: 0,
    };
    let mut responders: HashSet<String> = HashSet::new();
    // id → (names with how many nodes use each, size, sources)
    type Found = (Vec<(String, u32)>, u64, Vec<String>);
    let mut files: BTreeMap<FileId, Found> = BTreeMap::new();
    // The via node's own answer is expected; each forwarded copy adds one.
    let mut expected: u64 = 1;
    let mut answers: u64 = 0;
    let mut last_answer = started;
    while answers < expected {
        let now = Instant::now();
        let quiet = ANSWER_QUIET.max(last_answer.duration_since(started) * 2);
        let left = deadline
            .min(last_answer + quiet)
            .saturating_duration_since(now);
        if left.is_zero() {
            break;
        }
        let msg = match tokio::time::timeout(
            left,
            wire::read_message::<_, OverlayMessage>(&mut stream, &mut buf, Deadlines::default()),
        )
        .await
        {
            Err(_) => break,
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(wire_err(e)),
        };
        let OverlayMessage::QueryHit {
            id: hit_id,
            responder,
            files: found,
            distance,
            forwarded,
            duplicate,
        } = msg
        else {
            continue;
        };
        if hit_id != id {
            continue;
        }
        // Impossible claims (see the module doc) are not counted at all.
        let impossible = distance > ttl
            || forwarded > MAX_LINKS
            || (distance >= ttl && forwarded > 0)
            || (!duplicate && !responder.is_empty() && responders.contains(&responder));
        if impossible {
            tracing::debug!(%responder, distance, forwarded, "ignoring an impossible answer");
            continue;
        }
        answers += 1;
        last_answer = Instant::now();
        if duplicate {
            report.duplicates += 1;
            continue;
        }
        expected += u64::from(forwarded);
        report.query_messages += u64::from(forwarded);
        if responder.is_empty() || responders.insert(responder.clone()) {
            report.nodes_reached += 1;
        }
        if !found.is_empty() {
            report.hit_messages += u64::from(distance);
        }
        for f in found {
            if validate_name(&f.name).is_err() {
                continue;
            }
            let entry = files
                .entry(f.id)
                .or_insert_with(|| (Vec::new(), f.size, Vec::new()));
            if entry.1 == f.size && !entry.2.contains(&responder) {
                entry.2.push(responder.clone());
                match entry.0.iter_mut().find(|(n, _)| *n == f.name) {
                    Some((_, count)) => *count += 1,
                    None => entry.0.push((f.name, 1)),
                }
            }
        }
    }
    report.complete = answers >= expected;
    report.messages = report.query_messages + report.hit_messages;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    let mut hits: Vec<P2pHit> = files
        .into_iter()
        .filter_map(|(id, (mut names, size, sources))| {
            // Most used first; a stable sort keeps the first seen first on ties.
            names.sort_by_key(|n| std::cmp::Reverse(n.1));
            let names: Vec<String> = names.into_iter().map(|(n, _)| n).collect();
            Some(P2pHit {
                id: id.to_hex(),
                name: names.first()?.clone(),
                names,
                size,
                sources,
            })
        })
        .collect();
    hits.sort_by(|a, b| {
        b.sources
            .len()
            .cmp(&a.sources.len())
            .then(a.name.cmp(&b.name))
    });
    report.hits = hits;
    Ok(report)
}
