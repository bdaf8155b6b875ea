//! Upload slots and the fair queue of requesters waiting for one (eMule's
//! upload queue, made visible).
//!
//! **Rules.**
//! - A *requester* is a source address ([`source_key`]: IPv4, or IPv6 /64)
//!   plus the token it announced with `PeerRequest::Requester` (random, one
//!   per downloading process). All its connections share one slot or one
//!   place. A connection that announced nothing (an older build) is a
//!   requester of its own and is told `Busy` when no slot is free, as before.
//! - A requester holds an upload slot (at most `slots` at once) from the
//!   chunk request that got it until its last connection closes; while
//!   others wait, it gives the slot up after asking for nothing for
//!   `slot_idle`, and goes back to the end of the queue after holding it
//!   for `slot_time` (slot rotation).
//! - Over the slots, a requester gets the next place at the **end** of the
//!   queue (first come, first served) and is told its position. Asking
//!   again never moves it forward; a new token starts at the end too, so
//!   announcing tokens cannot jump the queue, only take more places, which
//!   `max_waiting_per_source` caps (the address comes from the TCP
//!   connection and cannot be made up).
//! - A place is kept while the requester has no connection for up to
//!   `grace` (it reconnects and finds it again); after that it is lost.
//! - A freed slot goes at once to the first *connected* requester in the
//!   queue: absent ones keep their place but no slot idles for them.
//! - At most `max_waiting` places in all; over a cap a requester is told
//!   `Busy` (and retries later with backoff, as with an older peer).
//!
//! One `Mutex` over the whole state, never held across an `.await`; every
//! change bumps a [`watch`] epoch that waiting connections listen to.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::id::FileId;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::source_key;

/// The caps and times of an upload queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Upload slots: requesters served at once (at least 1).
    pub slots: usize,
    /// Most requesters waiting in all.
    pub max_waiting: usize,
    /// Most places one source address may hold.
    pub max_waiting_per_source: usize,
    /// How long a place is kept without a connection.
    pub grace: Duration,
    /// Longest a slot is held while others wait.
    pub slot_time: Duration,
    /// A holder asking for nothing this long loses its slot while others wait.
    pub slot_idle: Duration,
}

impl QueueConfig {
    /// `slots` upload slots and the defaults of `common::limits`.
    pub fn new(slots: usize) -> Self {
        QueueConfig {
            slots: slots.max(1),
            max_waiting: common::limits::UPLOAD_QUEUE_MAX,
            max_waiting_per_source: common::limits::UPLOAD_QUEUE_PER_SOURCE,
            grace: common::limits::UPLOAD_QUEUE_GRACE,
            slot_time: common::limits::UPLOAD_SLOT_TIME,
            slot_idle: common::limits::UPLOAD_SLOT_IDLE,
        }
    }
}

/// Who a place or a slot belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    source: IpAddr,
    token: Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Token {
    /// Announced with `Requester`: may wait in the queue.
    Announced(u64),
    /// An older build's connection: its own requester, never queued.
    Connection(u64),
}

/// What to do with a chunk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A slot is held: send it.
    Serve,
    /// Not now: the requester holds this place (1 = next).
    Queued(u32),
    /// No slot and no place (an older build, or the queue is full).
    Busy,
}

/// Bytes per second over the last second or so.
#[derive(Debug, Clone)]
pub(crate) struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    rate: f64,
}

impl RateMeter {
    pub(crate) fn new(now: Instant) -> Self {
        RateMeter {
            window_start: now,
            window_bytes: 0,
            rate: 0.0,
        }
    }

    pub(crate) fn add(&mut self, bytes: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Duration::from_secs(1) {
            self.rate = self.window_bytes as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_bytes = 0;
        }
        self.window_bytes += bytes;
    }

    pub(crate) fn rate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed > Duration::from_secs(2) {
            0.0
        } else if self.rate == 0.0 && elapsed > Duration::from_millis(100) {
            // Less than a second in: what was sent so far.
            self.window_bytes as f64 / elapsed.as_secs_f64()
        } else {
            self.rate
        }
    }
}

#[derive(Debug)]
struct Holder {
    since: Instant,
    last_data: Instant,
    addr: SocketAddr,
    file: Option<FileId>,
    bytes: u64,
    meter: RateMeter,
}

#[derive(Debug)]
struct Waiter {
    since_wall: SystemTime,
    left_at: Option<Instant>,
    addr: SocketAddr,
    file: Option<FileId>,
}

#[derive(Debug, Default)]
struct State {
    /// Open connections per requester (absent: none).
    conns: HashMap<Key, u32>,
    holders: HashMap<Key, Holder>,
    /// The queue, first = next.
    order: VecDeque<Key>,
    waiters: HashMap<Key, Waiter>,
    /// Places held per source address.
    per_source: HashMap<IpAddr, usize>,
}

impl State {
    fn connected(&self, key: &Key) -> bool {
        self.conns.contains_key(key)
    }

    fn position(&self, key: &Key) -> Option<u32> {
        self.order
            .iter()
            .position(|k| k == key)
            .map(|i| i as u32 + 1)
    }

    fn connected_waiter(&self) -> bool {
        self.order.iter().any(|k| self.connected(k))
    }

    fn remove_waiter(&mut self, key: &Key) -> Option<Waiter> {
        let w = self.waiters.remove(key)?;
        if let Some(i) = self.order.iter().position(|k| k == key) {
            self.order.remove(i);
        }
        if let Some(n) = self.per_source.get_mut(&key.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&key.source);
            }
        }
        Some(w)
    }

    fn push_waiter(&mut self, key: Key, addr: SocketAddr, file: Option<FileId>) {
        self.order.push_back(key);
        *self.per_source.entry(key.source).or_default() += 1;
        self.waiters.insert(
            key,
            Waiter {
                since_wall: SystemTime::now(),
                left_at: None,
                addr,
                file,
            },
        );
    }

    fn make_holder(&mut self, key: Key, addr: SocketAddr, file: Option<FileId>, now: Instant) {
        self.holders.insert(
            key,
            Holder {
                since: now,
                last_data: now,
                addr,
                file,
                bytes: 0,
                meter: RateMeter::new(now),
            },
        );
    }

    /// Gives free slots to the first connected waiters; true if any moved.
    fn grant(&mut self, slots: usize, now: Instant) -> bool {
        let mut free = slots.saturating_sub(self.holders.len());
        let mut moved = false;
        let mut i = 0;
        while free > 0 && i < self.order.len() {
            let key = self.order[i];
            if !self.connected(&key) {
                i += 1;
                continue;
            }
            let w = self.remove_waiter(&key).expect("queued keys are waiters");
            self.make_holder(key, w.addr, w.file, now);
            free -= 1;
            moved = true;
        }
        moved
    }
}

/// The upload slots and queue of one chunk server; cheap to clone.
#[derive(Debug, Clone)]
pub struct UploadQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: QueueConfig,
    state: Mutex<State>,
    /// Bumped on every change of slots or places.
    epoch: watch::Sender<u64>,
    next_connection: AtomicU64,
}

impl UploadQueue {
    pub fn new(config: QueueConfig) -> Self {
        let config = QueueConfig {
            slots: config.slots.max(1),
            ..config
        };
        UploadQueue {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                epoch: watch::channel(0).0,
                next_connection: AtomicU64::new(0),
            }),
        }
    }

    /// The caps and times in force.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.inner.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// A new connection from `remote` that announced nothing (yet): its own
    /// requester, which is never queued. Dropping the handle ends it.
    pub fn connect(&self, remote: SocketAddr) -> Requester {
        let n = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        self.attach(remote, Token::Connection(n))
    }

    /// A connection from `remote` whose requester announced `token`: it
    /// shares the slot or place of that requester's other connections, and
    /// finds its place again if it comes back within the grace period.
    pub fn connect_announced(&self, remote: SocketAddr, token: u64) -> Requester {
        self.attach(remote, Token::Announced(token))
    }

    fn attach(&self, remote: SocketAddr, token: Token) -> Requester {
        let key = Key {
            source: source_key(remote.ip()),
            token,
        };
        let now = Instant::now();
        let moved = {
            let mut st = self.state();
            *st.conns.entry(key).or_default() += 1;
            if let Some(w) = st.waiters.get_mut(&key) {
                w.left_at = None;
                w.addr = remote;
            }
            st.grant(self.inner.config.slots, now)
        };
        if moved || token_is_announced(&token) {
            self.changed();
        }
        Requester {
            queue: self.clone(),
            key,
            remote,
        }
    }

    fn detach(&self, key: &Key) {
        let now = Instant::now();
        {
            let mut st = self.state();
            let Some(n) = st.conns.get_mut(key) else {
                return;
            };
            *n -= 1;
            if *n > 0 {
                return;
            }
            st.conns.remove(key);
            if st.holders.remove(key).is_some() {
                st.grant(self.inner.config.slots, now);
            } else if let Some(w) = st.waiters.get_mut(key) {
                w.left_at = Some(now);
            }
        }
        self.changed();
    }

    /// Forgets places past their grace, takes slots from holders idle while
    /// others wait, and hands free slots on. Run about once a second
    /// ([`UploadQueue::run_sweeper`]).
    pub fn sweep(&self) {
        let now = Instant::now();
        let config = &self.inner.config;
        let changed = {
            let mut st = self.state();
            let expired: Vec<Key> = st
                .waiters
                .iter()
                .filter(|(_, w)| {
                    w.left_at
                        .is_some_and(|t| now.saturating_duration_since(t) >= config.grace)
                })
                .map(|(k, _)| *k)
                .collect();
            let mut changed = !expired.is_empty();
            for k in &expired {
                st.remove_waiter(k);
            }
            if st.connected_waiter() {
                let before = st.holders.len();
                st.holders
                    .retain(|_, h| now.saturating_duration_since(h.last_data) < config.slot_idle);
                changed |= st.holders.len() != before;
            }
            changed | st.grant(config.slots, now)
        };
        if changed {
            self.changed();
        }
    }

    /// Sweeps every second until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }

    /// Slots held now.
    pub fn slots_in_use(&self) -> usize {
        self.state().holders.len()
    }

    /// Requesters waiting now (connected or within their grace).
    pub fn waiting(&self) -> usize {
        self.state().order.len()
    }

    /// Who is served and who waits, for `peer uploads` and the API.
    pub fn snapshot(&self) -> UploadsSnapshot {
        let now = Instant::now();
        let st = self.state();
        let mut active: Vec<(Instant, ActiveUpload)> = st
            .holders
            .values()
            .map(|h| {
                (
                    h.since,
                    ActiveUpload {
                        peer: h.addr.to_string(),
                        file_id: h.file.map(|f| f.to_hex()),
                        name: None,
                        rate_bps: h.meter.rate(now).round() as u64,
                        bytes: h.bytes,
                        held_s: now.saturating_duration_since(h.since).as_secs(),
                    },
                )
            })
            .collect();
        active.sort_by_key(|(since, _)| *since);
        let queue = st
            .order
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let w = &st.waiters[k];
                QueuedRequester {
                    peer: w.addr.to_string(),
                    position: i as u32 + 1,
                    waiting_since: w
                        .since_wall
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    connected: st.connected(k),
                    file_id: w.file.map(|f| f.to_hex()),
                }
            })
            .collect();
        UploadsSnapshot {
            slots: self.inner.config.slots,
            slots_in_use: st.holders.len(),
            active: active.into_iter().map(|(_, a)| a).collect(),
            queue,
        }
    }
}

fn token_is_announced(t: &Token) -> bool {
    matches!(t, Token::Announced(_))
}

/// One connection's view of the queue: its requester's slot or place.
/// Dropping it closes the connection's share (the last one of a requester
/// frees its slot, or starts its place's grace period).
#[derive(Debug)]
pub struct Requester {
    queue: UploadQueue,
    key: Key,
    remote: SocketAddr,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.queue.detach(&self.key);
    }
}

impl Requester {
    /// Whether it announced itself (may wait in the queue).
    pub fn announced(&self) -> bool {
        token_is_announced(&self.key.token)
    }

    /// A chunk of `file` is asked for: serve it, or the place in the queue.
    pub fn request(&self, file: FileId) -> Decision {
        let q = &self.queue;
        let config = &q.inner.config;
        let now = Instant::now();
        let key = self.key;
        let (decision, changed) = {
            let mut st = q.state();
            let others_wait = st.order.iter().any(|k| *k != key && st.connected(k));
            if let Some(h) = st.holders.get_mut(&key) {
                if others_wait && now.saturating_duration_since(h.since) >= config.slot_time {
                    // Rotation: back to the end of the queue.
                    st.holders.remove(&key);
                    st.push_waiter(key, self.remote, Some(file));
                    st.grant(config.slots, now);
                    let d = match st.position(&key) {
                        Some(p) => Decision::Queued(p),
                        None => Decision::Serve,
                    };
                    (d, true)
                } else {
                    h.last_data = now;
                    h.file = Some(file);
                    (Decision::Serve, false)
                }
            } else if st.waiters.contains_key(&key) {
                if let Some(w) = st.waiters.get_mut(&key) {
                    w.file = Some(file);
                }
                let moved = st.grant(config.slots, now);
                match st.position(&key) {
                    Some(p) => (Decision::Queued(p), moved),
                    None => {
                        if let Some(h) = st.holders.get_mut(&key) {
                            h.last_data = now;
                        }
                        (Decision::Serve, true)
                    }
                }
            } else if st.holders.len() < config.slots && !st.connected_waiter() {
                st.make_holder(key, self.remote, Some(file), now);
                (Decision::Serve, true)
            } else if !self.announced()
                || st.order.len() >= config.max_waiting
                || st.per_source.get(&key.source).copied().unwrap_or(0)
                    >= config.max_waiting_per_source
            {
                (Decision::Busy, false)
            } else {
                st.push_waiter(key, self.remote, Some(file));
                let p = st.position(&key).expect("just queued");
                (Decision::Queued(p), true)
            }
        };
        if changed {
            q.changed();
        }
        decision
    }

    /// Waits in the queue: `Serve` as soon as a slot is held for this
    /// requester; `Queued(p)` once its place differs from `shown`, but not
    /// before `calm` has passed (so a queue of thousands is not sent a
    /// message each at every hand-over), or after `refresh` at the latest.
    /// A requester holding no place asks for one (`Busy` when it cannot
    /// have one).
    pub async fn wait(&self, shown: Option<u32>, calm: Duration, refresh: Duration) -> Decision {
        let mut epoch = self.queue.inner.epoch.subscribe();
        let start = Instant::now();
        let deadline = start + refresh;
        let calm_until = start + calm.min(refresh);
        loop {
            // Looked at after subscribing: no change is missed.
            let (position, file) = {
                let st = self.queue.state();
                if st.holders.contains_key(&self.key) {
                    return Decision::Serve;
                }
                (
                    st.position(&self.key),
                    st.waiters.get(&self.key).and_then(|w| w.file),
                )
            };
            let position = match position {
                Some(p) => p,
                None => return self.request(file.unwrap_or(FileId([0; 32]))),
            };
            let now = Instant::now();
            if shown != Some(position) && now >= calm_until {
                return Decision::Queued(position);
            }
            // A moved place waits for the calm to end (a grant does not).
            let wake = if shown != Some(position) {
                calm_until
            } else {
                deadline
            };
            tokio::select! {
                r = epoch.changed() => if r.is_err() { return Decision::Queued(position) },
                _ = tokio::time::sleep_until(wake) => {
                    if wake == deadline {
                        return Decision::Queued(position);
                    }
                }
            }
        }
    }

    /// `bytes` of `file` were sent to this requester.
    pub fn sent(&self, file: FileId, bytes: u64) {
        let now = Instant::now();
        let mut st = self.queue.state();
        if let Some(h) = st.holders.get_mut(&self.key) {
            h.file = Some(file);
            h.bytes += bytes;
            h.last_data = now;
            h.meter.add(bytes, now);
        }
    }
}

/// Who is served and who waits (`GET /api/uploads`, `peer uploads --json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct UploadsSnapshot {
    /// Upload slots (`--max-uploads`).
    pub slots: usize,
    pub slots_in_use: usize,
    /// Requesters holding a slot, longest first.
    pub active: Vec<ActiveUpload>,
    /// Requesters waiting, in queue order.
    pub queue: Vec<QueuedRequester>,
}

/// A requester holding an upload slot.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ActiveUpload {
    /// `IP:PORT` of its latest connection.
    pub peer: String,
    /// The file it asked for last (hex id), if any yet.
    pub file_id: Option<String>,
    /// That file's name, filled in by whoever knows the library.
    pub name: Option<String>,
    /// Bytes per second sent over the last second or so.
    pub rate_bps: u64,
    /// Bytes sent since it got the slot.
    pub bytes: u64,
    /// Seconds it has held the slot.
    pub held_s: u64,
}

/// A requester waiting for a slot.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct QueuedRequester {
    /// `IP:PORT` of its latest connection.
    pub peer: String,
    /// 1 = next.
    pub position: u32,
    /// When it joined the queue, seconds since the Unix epoch.
    pub waiting_since: u64,
    /// Whether it has a connection now (else it is within its grace period).
    pub connected: bool,
    /// The file it asked for (hex id).
    pub file_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const F: FileId = FileId([7; 32]);

    fn queue(slots: usize) -> UploadQueue {
        UploadQueue::new(QueueConfig {
            grace: Duration::from_secs(30),
            // Holders here never idle out (tested on its own below).
            slot_idle: Duration::from_secs(3600),
            ..QueueConfig::new(slots)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn first_come_first_served_with_positions() {
        let q = queue(1);
        let a = q.connect_announced(addr("10.0.0.1:1000"), 1);
        let b = q.connect_announced(addr("10.0.0.2:1000"), 2);
        let c = q.connect_announced(addr("10.0.0.3:1000"), 3);
        let d = q.connect_announced(addr("10.0.0.4:1000"), 4);
        assert_eq!(a.request(F), Decision::Serve);
        assert_eq!(c.request(F), Decision::Queued(1));
        assert_eq!(b.request(F), Decision::Queued(2));
        assert_eq!(d.request(F), Decision::Queued(3));
        // Asking again never moves a requester forward or back.
        assert_eq!(d.request(F), Decision::Queued(3));
        assert_eq!(b.request(F), Decision::Queued(2));
        assert_eq!(a.request(F), Decision::Serve);
        // The holder leaves: the head gets the slot, the others move up.
        drop(a);
        assert_eq!(
            c.wait(Some(1), Duration::ZERO, Duration::from_secs(5))
                .await,
            Decision::Serve
        );
        assert_eq!(
            b.wait(Some(2), Duration::ZERO, Duration::from_secs(5))
                .await,
            Decision::Queued(1)
        );
        assert_eq!(
            d.wait(Some(3), Duration::ZERO, Duration::from_secs(5))
                .await,
            Decision::Queued(2)
        );
        let snap = q.snapshot();
        assert_eq!(snap.slots_in_use, 1);
        assert_eq!(snap.active[0].peer, "10.0.0.3:1000");
        let order: Vec<_> = snap
            .queue
            .iter()
            .map(|w| (w.peer.as_str(), w.position))
            .collect();
        assert_eq!(order, [("10.0.0.2:1000", 1), ("10.0.0.4:1000", 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_place_per_requester_and_older_builds_are_told_busy() {
        let q = queue(1);
        let holder = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(holder.request(F), Decision::Serve);
        // Two connections of one requester share its place.
        let w1 = q.connect_announced(addr("10.0.0.2:1"), 9);
        let w2 = q.connect_announced(addr("10.0.0.2:2"), 9);
        assert_eq!(w1.request(F), Decision::Queued(1));
        assert_eq!(w2.request(F), Decision::Queued(1));
        // The same token from another address is another requester.
        let other = q.connect_announced(addr("10.0.0.3:1"), 9);
        assert_eq!(other.request(F), Decision::Queued(2));
        // A connection that announced nothing cannot wait: Busy.
        let old = q.connect(addr("10.0.0.4:1"));
        assert_eq!(old.request(F), Decision::Busy);
        assert_eq!(q.waiting(), 2);
        // A holder's second connection is served on its slot.
        let holder2 = q.connect_announced(addr("10.0.0.1:2"), 1);
        assert_eq!(holder2.request(F), Decision::Serve);
        drop(holder);
        assert_eq!(
            holder2.request(F),
            Decision::Serve,
            "the slot stays while a connection does"
        );
        drop(holder2);
        assert_eq!(
            w2.wait(Some(1), Duration::ZERO, Duration::from_secs(1))
                .await,
            Decision::Serve
        );
        assert_eq!(w1.request(F), Decision::Serve);
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_survives_a_reconnection_within_the_grace_only() {
        let q = queue(1);
        let holder = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(holder.request(F), Decision::Serve);
        let a = q.connect_announced(addr("10.0.0.2:1"), 2);
        let b = q.connect_announced(addr("10.0.0.3:1"), 3);
        assert_eq!(a.request(F), Decision::Queued(1));
        assert_eq!(b.request(F), Decision::Queued(2));
        drop(a);
        tokio::time::advance(Duration::from_secs(20)).await;
        q.sweep();
        let snap = q.snapshot();
        assert_eq!(snap.queue.len(), 2);
        assert!(!snap.queue[0].connected);
        // Back within the grace (from another port): still first.
        let a = q.connect_announced(addr("10.0.0.2:2"), 2);
        assert_eq!(a.request(F), Decision::Queued(1));
        assert_eq!(q.snapshot().queue[0].peer, "10.0.0.2:2");
        // Gone for longer than the grace: the place is lost.
        drop(a);
        tokio::time::advance(Duration::from_secs(31)).await;
        q.sweep();
        assert_eq!(
            b.wait(Some(2), Duration::ZERO, Duration::from_secs(1))
                .await,
            Decision::Queued(1)
        );
        let a = q.connect_announced(addr("10.0.0.2:3"), 2);
        assert_eq!(
            a.request(F),
            Decision::Queued(2),
            "a lost place starts at the end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_absent_head_keeps_its_place_but_no_slot_waits_for_it() {
        let q = queue(1);
        let holder = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(holder.request(F), Decision::Serve);
        let a = q.connect_announced(addr("10.0.0.2:1"), 2);
        let b = q.connect_announced(addr("10.0.0.3:1"), 3);
        assert_eq!(a.request(F), Decision::Queued(1));
        assert_eq!(b.request(F), Decision::Queued(2));
        drop(a);
        drop(holder);
        // The slot went to the first connected waiter.
        assert_eq!(
            b.wait(Some(2), Duration::ZERO, Duration::from_secs(1))
                .await,
            Decision::Serve
        );
        let a = q.connect_announced(addr("10.0.0.2:2"), 2);
        assert_eq!(a.request(F), Decision::Queued(1));
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_floods_are_capped() {
        let q = UploadQueue::new(QueueConfig {
            max_waiting: 5,
            max_waiting_per_source: 3,
            slot_idle: Duration::from_secs(3600),
            ..QueueConfig::new(1)
        });
        let holder = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(holder.request(F), Decision::Serve);
        // One address, many made-up tokens: three places, then Busy.
        let flood: Vec<_> = (0..10)
            .map(|t| q.connect_announced(addr("10.9.9.9:1"), 100 + t))
            .collect();
        let answers: Vec<_> = flood.iter().map(|r| r.request(F)).collect();
        assert_eq!(&answers[..3], [1, 2, 3].map(Decision::Queued));
        assert!(
            answers[3..].iter().all(|d| *d == Decision::Busy),
            "{answers:?}"
        );
        // Others still get places, up to the total cap.
        let x = q.connect_announced(addr("10.0.0.5:1"), 5);
        let y = q.connect_announced(addr("10.0.0.6:1"), 6);
        let z = q.connect_announced(addr("10.0.0.7:1"), 7);
        assert_eq!(x.request(F), Decision::Queued(4));
        assert_eq!(y.request(F), Decision::Queued(5));
        assert_eq!(z.request(F), Decision::Busy);
        // Requesters that never come back lose their places after the grace.
        drop(flood);
        tokio::time::advance(q.config().grace).await;
        q.sweep();
        assert_eq!(q.waiting(), 2);
        assert_eq!(x.request(F), Decision::Queued(1));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_holders_and_long_holders_give_way_to_waiters() {
        let q = UploadQueue::new(QueueConfig {
            slot_idle: Duration::from_secs(5),
            slot_time: Duration::from_secs(60),
            ..QueueConfig::new(1)
        });
        let holder = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(holder.request(F), Decision::Serve);
        // Nobody waits: an idle holder keeps its slot.
        tokio::time::advance(Duration::from_secs(10)).await;
        q.sweep();
        assert_eq!(holder.request(F), Decision::Serve);
        let w = q.connect_announced(addr("10.0.0.2:1"), 2);
        assert_eq!(w.request(F), Decision::Queued(1));
        tokio::time::advance(Duration::from_secs(6)).await;
        q.sweep();
        assert_eq!(
            w.wait(Some(1), Duration::ZERO, Duration::from_secs(1))
                .await,
            Decision::Serve
        );
        // The idle one asks again: back to the end of the queue.
        assert_eq!(holder.request(F), Decision::Queued(1));
        // A busy holder keeps its slot for slot_time, then rotates.
        for _ in 0..11 {
            tokio::time::advance(Duration::from_secs(5)).await;
            w.sent(F, 1000);
            assert_eq!(w.request(F), Decision::Serve);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(w.request(F), Decision::Queued(1));
        assert_eq!(
            holder
                .wait(Some(1), Duration::ZERO, Duration::from_secs(1))
                .await,
            Decision::Serve
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_answered_at_least_every_refresh() {
        let q = queue(1);
        let holder = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(holder.request(F), Decision::Serve);
        let w = q.connect_announced(addr("10.0.0.2:1"), 2);
        assert_eq!(w.request(F), Decision::Queued(1));
        let started = Instant::now();
        assert_eq!(
            w.wait(Some(1), Duration::ZERO, Duration::from_secs(5))
                .await,
            Decision::Queued(1)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_place_is_told_after_the_calm_a_slot_at_once() {
        let q = queue(1);
        let holder = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(holder.request(F), Decision::Serve);
        let a = q.connect_announced(addr("10.0.0.2:1"), 2);
        let b = q.connect_announced(addr("10.0.0.3:1"), 3);
        assert_eq!(a.request(F), Decision::Queued(1));
        assert_eq!(b.request(F), Decision::Queued(2));
        let calm = Duration::from_secs(1);
        let started = Instant::now();
        let (b_wait, a_wait, ()) = tokio::join!(
            b.wait(Some(2), calm, Duration::from_secs(5)),
            a.wait(Some(1), calm, Duration::from_secs(5)),
            async { drop(holder) }
        );
        assert_eq!(a_wait, Decision::Serve);
        assert_eq!(b_wait, Decision::Queued(1));
        assert_eq!(
            started.elapsed(),
            calm,
            "the move is told once the calm is over"
        );
        // The grant itself came at once.
        let holder = q.connect_announced(addr("10.0.0.1:2"), 1);
        assert_eq!(holder.request(F), Decision::Queued(2));
        let started = Instant::now();
        let (granted, ()) = tokio::join!(b.wait(Some(1), calm, Duration::from_secs(5)), async {
            drop(a)
        });
        assert_eq!(granted, Decision::Serve);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_counts_bytes_and_rate() {
        let q = queue(2);
        let h = q.connect_announced(addr("10.0.0.1:1"), 1);
        assert_eq!(h.request(F), Decision::Serve);
        for _ in 0..4 {
            tokio::time::advance(Duration::from_millis(500)).await;
            h.sent(F, 500_000);
        }
        let snap = q.snapshot();
        assert_eq!(snap.active.len(), 1);
        assert_eq!(snap.active[0].bytes, 2_000_000);
        assert_eq!(snap.active[0].file_id.as_deref(), Some(F.to_hex().as_str()));
        assert!(
            (900_000..=1_100_000).contains(&snap.active[0].rate_bps),
            "{snap:?}"
        );
    }
}
