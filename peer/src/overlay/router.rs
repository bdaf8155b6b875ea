//! The overlay's message routing, without sockets: what a node does with
//! each message, as a list of messages to send on which links.
//!
//! The network layer ([`super::node`]) owns one `Router` in one task and
//! feeds it every message in arrival order, so the seen-table's
//! insert-if-absent is a single map operation with nothing to race against.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::overlay_proto::{MessageId, OverlayFile, OverlayMessage};

/// Identifies one connection (a neighbour or a search client).
pub type LinkId = u64;

/// Marks messages this node originated (its own pings).
pub const LOCAL: LinkId = 0;

/// Most flooded message ids remembered, and for how long.
pub const SEEN_CAPACITY: usize = 65_536;
pub const SEEN_TTL: Duration = Duration::from_secs(600);

/// Most files in one `QueryHit`.
pub const MAX_HITS_PER_ANSWER: usize = 100;

/// Farthest a query travels, in overlay hops from the node that floods it
/// for its search client (Gnutella 0.6: TTL(0) = TTL(i) + Hops(i), "usually
/// 7"; servents lower excessive TTLs). Applied on arrival, whatever the TTL
/// and hops a message claims.
pub const MAX_TTL: u8 = 7;

/// Farthest a ping travels from the node that sent it: the TTL this
/// implementation's own pings carry (they only look for neighbours'
/// neighbours), so a ping with a huge TTL cannot draw pongs from the whole
/// overlay.
pub const PING_TTL: u8 = 2;

/// Most links (neighbours and search clients) one node holds, so the most
/// neighbours it can forward a query to: a larger `forwarded` in an answer
/// is a lie. Nodes keep at most `MAX_DEGREE` neighbours and twice that links.
pub const MAX_LINKS: u32 = 64;

/// Largest target degree (`--degree`).
pub const MAX_DEGREE: usize = MAX_LINKS as usize / 2;

/// New floods (queries and pings seen for the first time) one link may
/// bring, as a token bucket: this many at once, then `FLOOD_RATE` a second.
/// Floods beyond it are dropped. Generous for real use (a swarming download
/// repeats its search every 300 ms; a lab of 64 such downloaders brings
/// each link about 50 new queries a second), tight against a flooder.
pub const FLOOD_BURST: f64 = 200.0;
pub const FLOOD_RATE: f64 = 100.0;

/// What a node has counted; read by tests and logs.
#[derive(Debug, Default)]
pub struct OverlayCounters {
    /// Messages received on any link.
    pub messages_in: AtomicU64,
    /// Messages sent on any link.
    pub messages_out: AtomicU64,
    /// Queries processed (first copy of each id).
    pub queries_processed: AtomicU64,
    /// Copies of queries and pings dropped because their id was seen before.
    pub duplicates_dropped: AtomicU64,
    /// Query hits passed on towards their origin.
    pub hits_routed: AtomicU64,
    /// Pings processed (first copy of each id).
    pub pings_processed: AtomicU64,
    /// Queries and pings dropped because their link sent floods too fast.
    pub floods_limited: AtomicU64,
    /// Queries and pings dropped as relayed farther than `MAX_TTL` allows.
    pub too_far_dropped: AtomicU64,
    /// Answers not passed on because they claimed impossible counts.
    pub hits_rejected: AtomicU64,
}

impl OverlayCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Flooded ids seen recently, each with the link its first copy came from
/// (the reverse path for answers). Bounded in count and age.
pub struct SeenTable {
    routes: HashMap<MessageId, LinkId>,
    order: VecDeque<(MessageId, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl SeenTable {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        SeenTable {
            routes: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front().copied() {
            if self.order.len() <= self.capacity && now.duration_since(at) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.routes.remove(&id);
        }
    }

    /// Records `id` as first seen on `from`. `Err(route)` if it was already
    /// seen (with the link its first copy came from). One map operation.
    pub fn insert(&mut self, id: MessageId, from: LinkId, now: Instant) -> Result<(), LinkId> {
        self.expire(now);
        match self.routes.entry(id) {
            std::collections::hash_map::Entry::Occupied(o) => Err(*o.get()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(from);
                self.order.push_back((id, now));
                Ok(())
            }
        }
    }

    /// The link the first copy of `id` came from.
    pub fn route(&self, id: &MessageId) -> Option<LinkId> {
        self.routes.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// What the router needs to know about this node.
pub trait LocalNode {
    /// `HOST:PORT` of this node's chunk server, as others reach it.
    fn addr(&self) -> String;
    /// Number of files shared.
    fn file_count(&self) -> u32;
    /// Shared files matching every word (or a 64-digit id).
    fn search(&self, words: &[String]) -> Vec<OverlayFile>;
}

/// Something the network layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(LinkId, OverlayMessage),
    /// A `Pong` answered one of our pings: a candidate neighbour.
    Learned(String),
}

/// Tokens of one link's flood budget.
#[derive(Debug, Clone, Copy)]
struct FloodBucket {
    tokens: f64,
    at: Instant,
}

/// The routing state of one node.
pub struct Router {
    seen: SeenTable,
    counters: Arc<OverlayCounters>,
    /// One flood budget per link; dropped with the link (`link_down`).
    floods: HashMap<LinkId, FloodBucket>,
}

/// Hops a flooded message may still be forwarded, after clamping on arrival.
/// `distance` is how far the receiving node is from where the flood started,
/// `limit` the farthest it may go; `ttl - 1` is what the message itself allows.
fn remaining_hops(ttl: u8, distance: u8, limit: u8) -> u8 {
    ttl.saturating_sub(1).min(limit.saturating_sub(distance))
}

impl Router {
    pub fn new(counters: Arc<OverlayCounters>) -> Self {
        Router {
            seen: SeenTable::new(SEEN_CAPACITY, SEEN_TTL),
            counters,
            floods: HashMap::new(),
        }
    }

    /// Forgets a closed link's flood budget.
    pub fn link_down(&mut self, link: LinkId) {
        self.floods.remove(&link);
    }

    /// Takes one flood from `link`'s budget; false when it has none left.
    fn take_flood(&mut self, link: LinkId, now: Instant) -> bool {
        let bucket = self.floods.entry(link).or_insert(FloodBucket {
            tokens: FLOOD_BURST,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * FLOOD_RATE;
        bucket.tokens = (bucket.tokens + refilled).min(FLOOD_BURST);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.counters.floods_limited.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    pub fn counters(&self) -> &Arc<OverlayCounters> {
        &self.counters
    }

    /// Starts a ping flood from this node.
    pub fn originate_ping(
        &mut self,
        id: MessageId,
        ttl: u8,
        neighbours: &[LinkId],
        now: Instant,
    ) -> Vec<Action> {
        let _ = self.seen.insert(id, LOCAL, now);
        neighbours
            .iter()
            .map(|l| Action::Send(*l, OverlayMessage::Ping { id, ttl, hops: 0 }))
            .collect()
    }

    /// Handles one message that arrived on `from`. `neighbours` are the
    /// neighbour links floods go to (search clients are not among them);
    /// `from_client` says the message came from a search client, for which
    /// this node floods as the originator (the first hop keeps the full TTL).
    pub fn on_message(
        &mut self,
        from: LinkId,
        from_client: bool,
        msg: OverlayMessage,
        neighbours: &[LinkId],
        node: &dyn LocalNode,
        now: Instant,
    ) -> Vec<Action> {
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        match msg {
            OverlayMessage::Ping { id, ttl, hops } => {
                if from_client {
                    return out;
                }
                // This node is hops + 1 from the pinger.
                let distance = hops.saturating_add(1);
                if distance > PING_TTL {
                    self.counters
                        .too_far_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return out;
                }
                if self.seen.route(&id).is_none() && !self.take_flood(from, now) {
                    return out;
                }
                if self.seen.insert(id, from, now).is_err() {
                    self.counters
                        .duplicates_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return out;
                }
                self.counters
                    .pings_processed
                    .fetch_add(1, Ordering::Relaxed);
                out.push(Action::Send(
                    from,
                    OverlayMessage::Pong {
                        id,
                        addr: node.addr(),
                        files: node.file_count(),
                    },
                ));
                let ttl = remaining_hops(ttl, distance, PING_TTL);
                if ttl > 0 {
                    for l in neighbours.iter().filter(|l| **l != from) {
                        out.push(Action::Send(
                            *l,
                            OverlayMessage::Ping {
                                id,
                                ttl,
                                hops: hops.saturating_add(1),
                            },
                        ));
                    }
                }
            }
            OverlayMessage::Pong { id, addr, files } => match self.seen.route(&id) {
                Some(LOCAL) => out.push(Action::Learned(addr)),
                Some(back) if back != from => {
                    out.push(Action::Send(back, OverlayMessage::Pong { id, addr, files }))
                }
                _ => {}
            },
            OverlayMessage::Query {
                id,
                ttl,
                hops,
                words,
            } => {
                // A search client's query starts here (hops 0, whatever it
                // claims); a neighbour's copy is at least one hop out.
                let hops = if from_client { 0 } else { hops.max(1) };
                if hops > MAX_TTL {
                    self.counters
                        .too_far_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return out;
                }
                if self.seen.route(&id).is_none() && !self.take_flood(from, now) {
                    return out;
                }
                if let Err(first) = self.seen.insert(id, from, now) {
                    self.counters
                        .duplicates_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    // Tell the searcher this copy is accounted for.
                    out.push(Action::Send(
                        first,
                        OverlayMessage::QueryHit {
                            id,
                            responder: node.addr(),
                            files: Vec::new(),
                            distance: hops,
                            forwarded: 0,
                            duplicate: true,
                        },
                    ));
                    return out;
                }
                self.counters
                    .queries_processed
                    .fetch_add(1, Ordering::Relaxed);
                // The first hop keeps the client's TTL (the TTL counts hops
                // from this node); nothing goes beyond MAX_TTL hops from it.
                let remaining = if from_client {
                    ttl.min(MAX_TTL)
                } else {
                    remaining_hops(ttl, hops, MAX_TTL)
                };
                let mut forwarded = 0u32;
                if remaining > 0 {
                    for l in neighbours.iter().filter(|l| **l != from) {
                        forwarded += 1;
                        out.push(Action::Send(
                            *l,
                            OverlayMessage::Query {
                                id,
                                ttl: remaining,
                                hops: hops.saturating_add(1),
                                words: words.clone(),
                            },
                        ));
                    }
                }
                let mut files = node.search(&words);
                files.truncate(MAX_HITS_PER_ANSWER);
                out.push(Action::Send(
                    from,
                    OverlayMessage::QueryHit {
                        id,
                        responder: node.addr(),
                        files,
                        distance: hops,
                        forwarded,
                        duplicate: false,
                    },
                ));
            }
            OverlayMessage::QueryHit {
                id,
                responder,
                mut files,
                distance,
                forwarded,
                duplicate,
            } => {
                // Only back along the path the query came: never a flood.
                let Some(back) = self.seen.route(&id).filter(|b| *b != from && *b != LOCAL) else {
                    return out;
                };
                // Counts no honest node reports: farther than a query goes,
                // more neighbours than a node holds, forwarding from the
                // last hop. Not passed on, so a liar cannot make the
                // searcher wait for answers that never come.
                if distance > MAX_TTL
                    || forwarded > MAX_LINKS
                    || (distance == MAX_TTL && forwarded > 0)
                    || (duplicate && (forwarded > 0 || !files.is_empty()))
                {
                    self.counters.hits_rejected.fetch_add(1, Ordering::Relaxed);
                    return out;
                }
                files.truncate(MAX_HITS_PER_ANSWER);
                self.counters.hits_routed.fetch_add(1, Ordering::Relaxed);
                out.push(Action::Send(
                    back,
                    OverlayMessage::QueryHit {
                        id,
                        responder,
                        files,
                        distance,
                        forwarded,
                        duplicate,
                    },
                ));
            }
            // Handshake messages are the network layer's business.
            OverlayMessage::Connect { .. } | OverlayMessage::Welcome { .. } => {}
        }
        let sent = out.iter().filter(|a| matches!(a, Action::Send(..))).count();
        self.counters
            .messages_out
            .fetch_add(sent as u64, Ordering::Relaxed);
        out
    }
}

/// Whether a shared file named `name` with id `id` matches a query (see
/// [`Matcher`]).
pub fn matches(words: &[String], id: &common::FileId, name: &str) -> bool {
    Matcher::new(words).matches(id, name)
}

/// A query as an overlay node answers it, parsed once for all its files:
/// the single word is the id, a prefix of it (8 hex digits or more), or
/// the whole name (`names::name_matches`: what `peer get NAME` floods, with
/// no limit on its words); otherwise the words match as at the index
/// (`common::search::Query`: prefixes, folding, runs of unspaced scripts,
/// exclusions), so both modes find the same files.
pub struct Matcher {
    /// The single word, as an id, an id prefix and a normalized name.
    only: Option<(
        Option<common::FileId>,
        Option<common::target::IdPrefix>,
        String,
    )>,
    query: Option<common::search::Query>,
}

impl Matcher {
    pub fn new(words: &[String]) -> Matcher {
        let only = match words {
            [only] => Some((
                only.to_ascii_lowercase().parse::<common::FileId>().ok(),
                common::target::IdPrefix::parse(only),
                common::names::normalize(only),
            )),
            _ => None,
        };
        Matcher {
            only,
            query: common::search::Query::parse(words).ok(),
        }
    }

    pub fn matches(&self, id: &common::FileId, name: &str) -> bool {
        if let Some((full, prefix, key)) = &self.only {
            if let Some(wanted) = full {
                return wanted == id;
            }
            if prefix.as_ref().is_some_and(|p| p.matches(id))
                || common::names::name_matches(name, key)
            {
                return true;
            }
        }
        self.query
            .as_ref()
            .is_some_and(|q| q.match_name(name).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::FileId;

    struct Node;
    impl LocalNode for Node {
        fn addr(&self) -> String {
            "10.0.0.1:6699".into()
        }
        fn file_count(&self) -> u32 {
            1
        }
        fn search(&self, words: &[String]) -> Vec<OverlayFile> {
            let (id, name) = (FileId([1; 32]), "Blue Monday.mp3");
            if matches(words, &id, name) {
                vec![OverlayFile {
                    id,
                    name: name.into(),
                    size: 5,
                }]
            } else {
                vec![]
            }
        }
    }

    fn query(ttl: u8, hops: u8) -> OverlayMessage {
        OverlayMessage::Query {
            id: MessageId([9; 16]),
            ttl,
            hops,
            words: vec!["blue".into()],
        }
    }

    fn sends(actions: &[Action]) -> Vec<(LinkId, &OverlayMessage)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(l, m) => Some((*l, m)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_query_is_answered_forwarded_with_one_less_ttl_and_dropped_when_seen() {
        let mut r = Router::new(Arc::default());
        let now = Instant::now();
        let out = r.on_message(1, false, query(3, 2), &[1, 2, 3], &Node, now);
        let s = sends(&out);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().any(|(l, m)| *l == 2
            && matches!(
                m,
                OverlayMessage::Query {
                    ttl: 2,
                    hops: 3,
                    ..
                }
            )));
        assert!(s.iter().any(|(l, m)| *l == 1
            && matches!(m, OverlayMessage::QueryHit { files, forwarded: 2, duplicate: false, distance: 2, .. } if files.len() == 1)));
        // The same id again, from another link: only a duplicate notice back the first path.
        let out = r.on_message(3, false, query(3, 2), &[1, 2, 3], &Node, now);
        assert_eq!(
            sends(&out),
            vec![(
                1,
                &OverlayMessage::QueryHit {
                    id: MessageId([9; 16]),
                    responder: "10.0.0.1:6699".into(),
                    files: vec![],
                    distance: 2,
                    forwarded: 0,
                    duplicate: true
                }
            )]
        );
        assert_eq!(OverlayCounters::get(&r.counters().queries_processed), 1);
        assert_eq!(OverlayCounters::get(&r.counters().duplicates_dropped), 1);
    }

    #[test]
    fn ttl_one_is_not_forwarded_and_a_client_query_keeps_its_ttl() {
        let mut r = Router::new(Arc::default());
        let out = r.on_message(1, false, query(1, 0), &[1, 2], &Node, Instant::now());
        assert_eq!(sends(&out).len(), 1, "only the answer");
        let mut r = Router::new(Arc::default());
        let out = r.on_message(7, true, query(1, 0), &[1, 2], &Node, Instant::now());
        let s = sends(&out);
        assert!(s.iter().any(|(l, m)| *l == 1
            && matches!(
                m,
                OverlayMessage::Query {
                    ttl: 1,
                    hops: 1,
                    ..
                }
            )));
        assert!(s
            .iter()
            .any(|(l, m)| *l == 7 && matches!(m, OverlayMessage::QueryHit { forwarded: 2, .. })));
    }

    #[test]
    fn hits_go_back_along_the_reverse_path_only() {
        let mut r = Router::new(Arc::default());
        let now = Instant::now();
        r.on_message(4, false, query(5, 1), &[4, 5, 6], &Node, now);
        let hit = OverlayMessage::QueryHit {
            id: MessageId([9; 16]),
            responder: "x:1".into(),
            files: vec![],
            distance: 2,
            forwarded: 0,
            duplicate: false,
        };
        let out = r.on_message(5, false, hit.clone(), &[4, 5, 6], &Node, now);
        assert_eq!(sends(&out), vec![(4, &hit)]);
        // A hit for a query never seen goes nowhere.
        let stray = OverlayMessage::QueryHit {
            id: MessageId([1; 16]),
            responder: "x:1".into(),
            files: vec![],
            distance: 2,
            forwarded: 0,
            duplicate: false,
        };
        assert!(r
            .on_message(5, false, stray, &[4, 5, 6], &Node, now)
            .is_empty());
    }

    #[test]
    fn pongs_to_our_pings_teach_addresses() {
        let mut r = Router::new(Arc::default());
        let now = Instant::now();
        let id = MessageId([3; 16]);
        assert_eq!(r.originate_ping(id, 2, &[1, 2], now).len(), 2);
        let out = r.on_message(
            1,
            false,
            OverlayMessage::Pong {
                id,
                addr: "10.0.0.9:1".into(),
                files: 0,
            },
            &[1, 2],
            &Node,
            now,
        );
        assert_eq!(out, vec![Action::Learned("10.0.0.9:1".into())]);
    }

    #[test]
    fn ttl_and_hops_are_clamped_on_arrival() {
        // From a neighbour: TTL 255 at hop 3 may go 4 more hops (7 in all).
        let mut r = Router::new(Arc::default());
        let out = r.on_message(1, false, query(255, 3), &[1, 2], &Node, Instant::now());
        assert!(sends(&out).iter().any(|(l, m)| *l == 2
            && matches!(
                m,
                OverlayMessage::Query {
                    ttl: 4,
                    hops: 4,
                    ..
                }
            )));
        // At hop 7 it is answered and not forwarded; beyond 7 it is dropped.
        let mut r = Router::new(Arc::default());
        let out = r.on_message(1, false, query(255, 7), &[1, 2], &Node, Instant::now());
        assert_eq!(sends(&out).len(), 1, "only the answer: {out:?}");
        assert!(matches!(
            sends(&out)[0].1,
            OverlayMessage::QueryHit { forwarded: 0, .. }
        ));
        let mut r = Router::new(Arc::default());
        assert!(r
            .on_message(1, false, query(255, 8), &[1, 2], &Node, Instant::now())
            .is_empty());
        // From a search client: hops claimed are ignored, TTL at most 7.
        let mut r = Router::new(Arc::default());
        let out = r.on_message(9, true, query(255, 200), &[1], &Node, Instant::now());
        assert!(sends(&out).iter().any(|(l, m)| *l == 1
            && matches!(
                m,
                OverlayMessage::Query {
                    ttl: 7,
                    hops: 1,
                    ..
                }
            )));
        // A ping goes two hops from its sender, whatever its TTL.
        let mut r = Router::new(Arc::default());
        let ping = |ttl, hops| OverlayMessage::Ping {
            id: MessageId([ttl; 16]),
            ttl,
            hops,
        };
        let out = r.on_message(1, false, ping(255, 0), &[1, 2], &Node, Instant::now());
        assert!(sends(&out).iter().any(|(l, m)| *l == 2
            && matches!(
                m,
                OverlayMessage::Ping {
                    ttl: 1,
                    hops: 1,
                    ..
                }
            )));
        let out = r.on_message(1, false, ping(254, 1), &[1, 2], &Node, Instant::now());
        assert_eq!(sends(&out).len(), 1, "pong only: {out:?}");
        assert!(r
            .on_message(1, false, ping(253, 2), &[1, 2], &Node, Instant::now())
            .is_empty());
    }

    #[test]
    fn floods_from_one_link_are_rate_limited() {
        let mut r = Router::new(Arc::default());
        let now = Instant::now();
        let flood = |i: u32| OverlayMessage::Query {
            id: MessageId({
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&i.to_le_bytes());
                b
            }),
            ttl: 3,
            hops: 1,
            words: vec!["blue".into()],
        };
        let mut processed = 0;
        for i in 0..1000 {
            if !r
                .on_message(1, false, flood(i), &[1, 2], &Node, now)
                .is_empty()
            {
                processed += 1;
            }
        }
        assert_eq!(processed, FLOOD_BURST as u32);
        // Another link has its own budget; the first refills with time.
        assert!(!r
            .on_message(2, false, flood(5000), &[1, 2], &Node, now)
            .is_empty());
        let later = now + Duration::from_secs(1);
        let mut refilled = 0;
        for i in 1000..2000 {
            if !r
                .on_message(1, false, flood(i), &[1, 2], &Node, later)
                .is_empty()
            {
                refilled += 1;
            }
        }
        assert_eq!(refilled, FLOOD_RATE as u32);
        assert_eq!(
            OverlayCounters::get(&r.counters().floods_limited),
            1000 - 200 + 1000 - 100
        );
        // A copy of a query already seen costs nothing (it is only a duplicate).
        let out = r.on_message(1, false, flood(0), &[1, 2], &Node, later);
        assert!(matches!(
            sends(&out)[0].1,
            OverlayMessage::QueryHit {
                duplicate: true,
                ..
            }
        ));
    }

    #[test]
    fn impossible_answers_are_not_passed_on() {
        let mut r = Router::new(Arc::default());
        let now = Instant::now();
        r.on_message(4, false, query(5, 1), &[4, 5], &Node, now);
        let hit = |distance, forwarded, duplicate| OverlayMessage::QueryHit {
            id: MessageId([9; 16]),
            responder: "x:1".into(),
            files: vec![],
            distance,
            forwarded,
            duplicate,
        };
        for lie in [
            hit(2, 4_000_000_000, false),
            hit(8, 0, false),
            hit(7, 1, false),
            hit(3, 2, true),
        ] {
            assert!(
                r.on_message(5, false, lie.clone(), &[4, 5], &Node, now)
                    .is_empty(),
                "{lie:?}"
            );
        }
        assert_eq!(OverlayCounters::get(&r.counters().hits_rejected), 4);
        assert_eq!(
            r.on_message(5, false, hit(2, 3, false), &[4, 5], &Node, now)
                .len(),
            1
        );
    }

    #[test]
    fn the_seen_table_is_bounded() {
        let mut t = SeenTable::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..10u8 {
            assert!(t.insert(MessageId([i; 16]), 1, now).is_ok());
        }
        assert!(t.len() <= 4);
        assert_eq!(t.insert(MessageId([9; 16]), 2, now), Err(1));
        let later = now + Duration::from_secs(61);
        assert!(t.insert(MessageId([9; 16]), 2, later).is_ok());
    }

    #[test]
    fn matching_by_words_or_id() {
        let id = FileId([1; 32]);
        // Prefixes match, as at the index (issue 13).
        assert!(matches(
            &["BLUE".into(), "mon".into()],
            &id,
            "Blue Monday.mp3"
        ));
        assert!(!matches(
            &["BLUE".into(), "mon".into(), "-monday".into()],
            &id,
            "Blue Monday.mp3"
        ));
        assert!(!matches(&["onday".into()], &id, "Blue Monday.mp3"));
        assert!(matches(&["beyonce".into()], &id, "Beyonc\u{e9}.mp3"));
        assert!(matches(&["blue monday".into()], &id, "Blue Monday.mp3"));
        assert!(matches(&[id.to_hex()], &id, "x"));
        assert!(!matches(&[FileId([2; 32]).to_hex()], &id, "x"));
        assert!(!matches(&[], &id, "x"));
        // Normalized words, whole names, id prefixes.
        assert!(matches(&["caf\u{e9}".into()], &id, "Cafe\u{301}.txt"));
        assert!(matches(
            &["CAF\u{c9}.TXT".into()],
            &id,
            "dir/cafe\u{301}.txt"
        ));
        assert!(matches(&["---".into()], &id, "---"));
        let long = format!("{}.flac", "x".repeat(300));
        assert!(matches(std::slice::from_ref(&long), &id, &long));
        assert!(matches(&[id.to_hex()[..8].to_uppercase()], &id, "x"));
        assert!(!matches(&[FileId([2; 32]).to_hex()[..8].into()], &id, "x"));
    }
}
