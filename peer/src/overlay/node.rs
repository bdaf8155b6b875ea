//! The overlay's network side: links to neighbours, the one task that owns
//! the [`Router`], and keeping the target degree.
//!
//! Each link has a reader task (frames in, with an idle deadline, into the
//! router's queue) and a writer task (a bounded queue out; a neighbour too
//! slow to keep up loses messages rather than stalling the node). Every
//! `ping_interval` the node pings its neighbours (TTL 2) to learn others,
//! and when it has fewer than `degree` neighbours it dials addresses it
//! learned or was given; a neighbour whose connection ends is dropped and so
//! replaced on the next tick. A node also stays linked to at least one of
//! the addresses it joined through (`--neighbor`), even when nodes that
//! joined through it already fill its degree: otherwise the nodes joined
//! to it and the nodes it joined to could form two overlays that never meet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hello::Protocol;
use common::overlay_proto::{MessageId, OverlayFile, OverlayMessage};
use common::wire::{self, Deadlines, WireError};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::router::{
    Action, LinkId, LocalNode, Matcher, OverlayCounters, Router, MAX_DEGREE, MAX_LINKS, PING_TTL,
};
use crate::library::Library;
use common::names::validate_name;

/// Most messages queued towards one link before new ones are dropped.
const LINK_QUEUE: usize = 256;
/// Most addresses remembered as candidate neighbours.
const HOST_CACHE: usize = 200;

/// Settings of an overlay node.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// Addresses to join through (`--neighbor`), dialled again whenever the
    /// node is below its degree.
    pub neighbors: Vec<String>,
    /// Neighbours to keep.
    pub degree: usize,
    /// How often to ping neighbours and top up the degree.
    pub ping_interval: Duration,
    /// A link silent for this long is dropped (pings keep live ones busy).
    pub link_idle: Duration,
}

/// Default of [`OverlayConfig::degree`] (and of `peer serve --degree`).
pub const DEFAULT_DEGREE: usize = 4;
/// Default of [`OverlayConfig::ping_interval`] (and of `--ping-interval`).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            neighbors: Vec::new(),
            degree: DEFAULT_DEGREE,
            ping_interval: DEFAULT_PING_INTERVAL,
            link_idle: Duration::from_secs(60),
        }
    }
}

/// What happened, for the router task.
enum Event {
    Up {
        link: LinkId,
        addr: Option<String>,
        client: bool,
        tx: mpsc::Sender<OverlayMessage>,
        stop: CancellationToken,
    },
    Message(LinkId, OverlayMessage),
    Down(LinkId),
    DialFailed(String, String),
    /// A neighbour told us the address it sees for us.
    SelfAddr(String),
}

struct Link {
    addr: Option<String>,
    client: bool,
    tx: mpsc::Sender<OverlayMessage>,
    stop: CancellationToken,
}

/// A running overlay node; also the handler of `Overlay` connections on the
/// peer's port.
#[derive(Clone)]
pub struct Overlay {
    inner: Arc<Inner>,
}

/// Links kept for search clients beyond the neighbour cap: a client sends
/// its query at once and leaves when answered, and a node full of
/// neighbours (many later nodes join through an early one) must still
/// answer them, its own daemon's searches first of all (issue 17: at
/// N = 128, a node with 8 neighbours refused every search of its own
/// daemon as busy, and that download never started).
pub const CLIENT_LINKS: usize = 8;

struct Inner {
    events: mpsc::Sender<Event>,
    counters: Arc<OverlayCounters>,
    next_link: AtomicU64,
    links: AtomicUsize,
    neighbour_addrs: Mutex<Vec<String>>,
    /// Most neighbour links; search clients may take [`CLIENT_LINKS`] more.
    max_links: usize,
    link_idle: Duration,
    listen_port: u16,
    advertise: Option<String>,
    tracker: TaskTracker,
}

/// This node as the router sees it.
struct Local {
    addr: String,
    library: Library,
}

impl LocalNode for Local {
    fn addr(&self) -> String {
        self.addr.clone()
    }
    fn file_count(&self) -> u32 {
        self.library.shared().len() as u32
    }
    /// Complete files and, after them, files still downloading: a node
    /// serves the chunks it has verified, so swarming downloaders find each
    /// other by searching again (there is no index to list partial sources).
    /// A downloader asks a partial source which chunks it holds before
    /// requesting any.
    fn search(&self, words: &[String]) -> Vec<OverlayFile> {
        let matcher = Matcher::new(words);
        let mut out: Vec<OverlayFile> = self
            .library
            .shared()
            .iter()
            // The index's name rule holds here too: searchers drop other names.
            .filter(|(id, e)| matcher.matches(id, &e.rel) && validate_name(&e.rel).is_ok())
            .map(|(id, e)| OverlayFile {
                id: *id,
                name: e.rel.clone(),
                size: e.size,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let mut partial: Vec<OverlayFile> = self
            .library
            .partial_listing()
            .into_values()
            .filter(|f| matcher.matches(&f.id, &f.name) && validate_name(&f.name).is_ok())
            .map(|f| OverlayFile {
                id: f.id,
                name: f.name,
                size: f.size,
            })
            .collect();
        partial.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(partial);
        out
    }
}

pub fn random_message_id() -> MessageId {
    MessageId(rand::random())
}

impl Overlay {
    /// Starts the node: the router task and the degree keeper. `listen` is
    /// where the peer's port listens; `advertise` overrides the address
    /// others are told.
    pub fn start(
        config: OverlayConfig,
        library: Library,
        listen: SocketAddr,
        advertise: Option<String>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Overlay {
        let mut config = config;
        // Every answer's `forwarded` is checked against MAX_LINKS: stay within it.
        if config.degree > MAX_DEGREE {
            tracing::warn!(
                degree = config.degree,
                max = MAX_DEGREE,
                "overlay degree lowered to the most a node may keep"
            );
        }
        config.degree = config.degree.clamp(1, MAX_DEGREE);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let counters = Arc::new(OverlayCounters::default());
        let overlay = Overlay {
            inner: Arc::new(Inner {
                events: events_tx,
                counters: counters.clone(),
                next_link: AtomicU64::new(1),
                links: AtomicUsize::new(0),
                neighbour_addrs: Mutex::new(Vec::new()),
                max_links: (config.degree * 2).clamp(8, MAX_LINKS as usize),
                link_idle: config.link_idle,
                listen_port: listen.port(),
                advertise: advertise.clone(),
                tracker: tracker.clone(),
            }),
        };
        // Known now if advertised or bound to a specific address; else a neighbour tells us.
        let self_addr =
            advertise.or_else(|| (!listen.ip().is_unspecified()).then(|| listen.to_string()));
        tracker.spawn(
            overlay
                .clone()
                .run(config, library, self_addr, counters, events_rx, shutdown),
        );
        overlay
    }

    pub fn counters(&self) -> Arc<OverlayCounters> {
        self.inner.counters.clone()
    }

    /// Addresses of the current neighbours (not search clients).
    pub fn neighbours(&self) -> Vec<String> {
        self.inner
            .neighbour_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn run(
        self,
        config: OverlayConfig,
        library: Library,
        self_addr: Option<String>,
        counters: Arc<OverlayCounters>,
        mut events: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) {
        let mut router = Router::new(counters);
        let mut local = Local {
            addr: self_addr.clone().unwrap_or_default(),
            library,
        };
        let mut links: HashMap<LinkId, Link> = HashMap::new();
        let mut hosts: VecDeque<String> = VecDeque::new();
        let mut dialing: HashSet<String> = HashSet::new();
        let mut joins = 0usize;
        // Join addresses warned about as unreachable, until they answer.
        let mut unreachable: HashSet<String> = HashSet::new();
        let mut joined_said = false;
        let mut tick = tokio::time::interval(config.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                // The tick first: the first one dials the join addresses
                // before links from later nodes are counted.
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => None,
                e = events.recv() => match e { Some(e) => Some(e), None => break },
            };
            let neighbours: Vec<LinkId> = links
                .iter()
                .filter(|(_, l)| !l.client)
                .map(|(id, _)| *id)
                .collect();
            let actions = match event {
                None => {
                    self.top_up(
                        &config,
                        &local.addr,
                        &links,
                        &mut hosts,
                        &mut dialing,
                        &mut joins,
                        &shutdown,
                    );
                    router.originate_ping(
                        random_message_id(),
                        PING_TTL,
                        &neighbours,
                        Instant::now(),
                    )
                }
                Some(Event::Up {
                    link,
                    addr,
                    client,
                    tx,
                    stop,
                }) => {
                    if let Some(a) = &addr {
                        dialing.remove(a);
                        // One link per neighbour address: a second one (both dialled each other) is closed.
                        let duplicate = !client
                            && links
                                .values()
                                .any(|l| !l.client && l.addr.as_deref() == Some(a.as_str()));
                        if duplicate || *a == local.addr {
                            stop.cancel();
                            continue;
                        }
                    }
                    // Admitted under the search clients' allowance: a
                    // neighbour over the cap is closed (it dials another).
                    let neighbours = links.values().filter(|l| !l.client).count();
                    if !client && neighbours >= self.inner.max_links {
                        debug!(
                            link,
                            ?addr,
                            "overlay neighbour refused: every neighbour link is taken"
                        );
                        stop.cancel();
                        continue;
                    }
                    debug!(link, ?addr, client, "overlay link up");
                    if let Some(a) = addr
                        .as_deref()
                        .filter(|a| config.neighbors.iter().any(|n| n == a))
                    {
                        // Once, and again after a warning (a full neighbour
                        // closes each link it cannot keep: no line per tick).
                        if unreachable.remove(a) || !joined_said {
                            info!(addr = %a, "joined the overlay through this --neighbor");
                            joined_said = true;
                        }
                    }
                    links.insert(
                        link,
                        Link {
                            addr,
                            client,
                            tx,
                            stop,
                        },
                    );
                    self.publish_links(&links);
                    Vec::new()
                }
                Some(Event::Down(link)) => {
                    router.link_down(link);
                    if let Some(l) = links.remove(&link) {
                        l.stop.cancel();
                        if !l.client {
                            info!(
                                addr = l.addr.as_deref().unwrap_or("-"),
                                "overlay neighbour gone"
                            );
                        }
                    }
                    self.publish_links(&links);
                    Vec::new()
                }
                Some(Event::DialFailed(addr, error)) => {
                    dialing.remove(&addr);
                    // A join address the user gave: said once until it answers
                    // (a node alone in its own overlay finds nothing).
                    if config.neighbors.contains(&addr) && unreachable.insert(addr.clone()) {
                        warn!(%addr, %error, "cannot reach this --neighbor; trying it again every {:?} (is `peer serve --mode p2p` running there?)", config.ping_interval);
                    }
                    hosts.retain(|h| *h != addr);
                    Vec::new()
                }
                Some(Event::SelfAddr(addr)) => {
                    if local.addr.is_empty() {
                        info!(%addr, "overlay address learned from a neighbour");
                        local.addr = addr;
                    }
                    Vec::new()
                }
                Some(Event::Message(link, msg)) => {
                    let Some(from_client) = links.get(&link).map(|l| l.client) else {
                        debug!(link, "message from a link already gone; dropped");
                        continue;
                    };
                    tracing::trace!(link, ?msg, "overlay message");
                    router.on_message(link, from_client, msg, &neighbours, &local, Instant::now())
                }
            };
            for action in actions {
                match action {
                    Action::Send(link, msg) => {
                        if let Some(l) = links.get(&link) {
                            tracing::trace!(link, ?msg, "overlay send");
                            if l.tx.try_send(msg).is_err() {
                                debug!(link, "overlay link queue full; message dropped");
                            }
                        }
                    }
                    Action::Learned(addr) => {
                        if addr != local.addr && !addr.is_empty() && !hosts.contains(&addr) {
                            hosts.push_back(addr);
                            if hosts.len() > HOST_CACHE {
                                hosts.pop_front();
                            }
                        }
                    }
                }
            }
        }
        for l in links.values() {
            l.stop.cancel();
        }
    }

    fn publish_links(&self, links: &HashMap<LinkId, Link>) {
        self.inner.links.store(links.len(), Ordering::Relaxed);
        let mut addrs: Vec<String> = links
            .values()
            .filter(|l| !l.client)
            .filter_map(|l| l.addr.clone())
            .collect();
        addrs.sort();
        *self
            .inner
            .neighbour_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    /// Dials candidates while below the target degree, and one join
    /// address (in turn) while linked to none of them.
    #[allow(clippy::too_many_arguments)]
    fn top_up(
        &self,
        config: &OverlayConfig,
        self_addr: &str,
        links: &HashMap<LinkId, Link>,
        hosts: &mut VecDeque<String>,
        dialing: &mut HashSet<String>,
        joins: &mut usize,
        shutdown: &CancellationToken,
    ) {
        let connected: HashSet<&str> = links
            .values()
            .filter(|l| !l.client)
            .filter_map(|l| l.addr.as_deref())
            .collect();
        let mut to_dial = Vec::new();
        // Links from later nodes may fill the degree before (or after) the
        // link towards the join addresses ends: keep one of them anyway, or
        // a line of degree-1 nodes splits in two for good.
        let joined = config
            .neighbors
            .iter()
            .any(|a| connected.contains(a.as_str()) || dialing.contains(a.as_str()));
        let joinable: Vec<&String> = config
            .neighbors
            .iter()
            .filter(|a| a.as_str() != self_addr)
            .collect();
        if !joined && !joinable.is_empty() && connected.len() < self.inner.max_links {
            to_dial.push(joinable[*joins % joinable.len()].clone());
            *joins += 1;
        }
        let have = connected.len() + dialing.len() + to_dial.len();
        if have < config.degree {
            let wanted = config.degree - have;
            let mut seen: HashSet<String> = to_dial.iter().cloned().collect();
            let candidates: Vec<String> = config
                .neighbors
                .iter()
                .chain(hosts.iter())
                .filter(|a| {
                    a.as_str() != self_addr
                        && !connected.contains(a.as_str())
                        && !dialing.contains(a.as_str())
                        && seen.insert(a.to_string())
                })
                .take(wanted)
                .cloned()
                .collect();
            to_dial.extend(candidates);
        }
        for addr in to_dial {
            dialing.insert(addr.clone());
            let (overlay, shutdown) = (self.clone(), shutdown.clone());
            self.inner.tracker.spawn(async move {
                let dialled = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = overlay.dial(&addr, shutdown.clone()) => r,
                };
                if let Err(e) = dialled {
                    debug!(%addr, error = %e, "cannot reach overlay neighbour");
                    let _ = overlay
                        .inner
                        .events
                        .send(Event::DialFailed(addr, e.to_string()))
                        .await;
                }
            });
        }
    }

    async fn dial(&self, addr: &str, shutdown: CancellationToken) -> Result<(), WireError> {
        let stream = transfer::net::connect_tcp(addr, common::limits::CONNECT_TIMEOUT).await?;
        let (mut stream, _) = transfer::net::client(stream, Protocol::Overlay, None).await?;
        wire::send_message(
            &mut stream,
            &OverlayMessage::Connect {
                listen_port: self.inner.listen_port,
                advertise: self.inner.advertise.clone(),
                client: false,
            },
        )
        .await?;
        let mut buf = Vec::new();
        match wire::expect_message::<_, OverlayMessage>(
            &mut stream,
            &mut buf,
            Deadlines::with_idle(common::limits::HELLO_TIMEOUT),
        )
        .await?
        {
            OverlayMessage::Welcome { your_addr } => {
                let _ = self.inner.events.send(Event::SelfAddr(your_addr)).await;
            }
            other => {
                return Err(WireError::Unexpected(format!(
                    "{other:?} instead of Welcome"
                )))
            }
        }
        self.attach(stream, Some(addr.to_string()), false, shutdown)
            .await;
        Ok(())
    }

    /// Starts the reader and writer of an established link and announces it.
    async fn attach(
        &self,
        stream: transfer::net::Conn,
        addr: Option<String>,
        client: bool,
        shutdown: CancellationToken,
    ) {
        let link = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let stop = shutdown.child_token();
        let (tx, mut rx) = mpsc::channel::<OverlayMessage>(LINK_QUEUE);
        let (r, w) = stream.into_split();
        let events = self.inner.events.clone();
        // A search client sends its query at once and leaves when answered:
        // one that sits silent must not keep one of the node's few links.
        let idle = if client {
            common::limits::FIRST_REQUEST_TIMEOUT
        } else {
            self.inner.link_idle
        };
        // Announced before the reader starts, so the link's first message
        // never reaches the router ahead of the link itself.
        let _ = events
            .send(Event::Up {
                link,
                addr,
                client,
                tx,
                stop: stop.clone(),
            })
            .await;
        let reader_stop = stop.clone();
        let reader_events = events.clone();
        self.inner.tracker.spawn(async move {
            let mut reader = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                let msg = tokio::select! {
                    _ = reader_stop.cancelled() => break,
                    m = wire::read_message::<_, OverlayMessage>(&mut reader, &mut buf, Deadlines::with_idle(idle)) => m,
                };
                match msg {
                    Ok(Some(m)) => {
                        if reader_events.send(Event::Message(link, m)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(link, error = %e, "overlay link ended");
                        break;
                    }
                }
            }
            reader_stop.cancel();
            let _ = reader_events.send(Event::Down(link)).await;
        });
        let writer_stop = stop.clone();
        self.inner.tracker.spawn(async move {
            let mut writer = BufWriter::new(w);
            loop {
                let msg = tokio::select! {
                    _ = writer_stop.cancelled() => break,
                    m = rx.recv() => match m { Some(m) => m, None => break },
                };
                if wire::write_message(&mut writer, &msg).await.is_err() {
                    break;
                }
                if rx.is_empty() && writer.flush().await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
            writer_stop.cancel();
        });
    }

    /// Serves an incoming `Overlay` connection whose hello was answered.
    async fn accept(
        &self,
        mut stream: transfer::net::Conn,
        remote: SocketAddr,
        shutdown: CancellationToken,
    ) {
        // An IPv4 neighbour of a dual-stack listener is named by its IPv4
        // address, so that one neighbour has one address.
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        let mut buf = Vec::new();
        let first = wire::expect_message::<_, OverlayMessage>(
            &mut stream,
            &mut buf,
            Deadlines::with_idle(common::limits::HELLO_TIMEOUT),
        )
        .await;
        let (addr, client) = match first {
            Ok(OverlayMessage::Connect {
                listen_port,
                advertise,
                client,
            }) => {
                let addr = match advertise.filter(|a| a.len() <= 255 && a.contains(':')) {
                    Some(a) => Some(a),
                    None if listen_port != 0 => {
                        Some(SocketAddr::new(remote.ip(), listen_port).to_string())
                    }
                    None => None,
                };
                (addr, client)
            }
            Ok(other) => {
                debug!(%remote, ?other, "overlay connection did not start with Connect");
                return;
            }
            Err(e) => {
                debug!(%remote, error = %e, "overlay connection failed before Connect");
                return;
            }
        };
        let welcome = OverlayMessage::Welcome {
            your_addr: addr.clone().unwrap_or_else(|| remote.to_string()),
        };
        if wire::send_message(&mut stream, &welcome).await.is_err() {
            return;
        }
        self.attach(stream, if client { None } else { addr }, client, shutdown)
            .await;
    }
}

impl transfer::chunk_server::ProtocolHandler for Overlay {
    fn protocols(&self) -> &[Protocol] {
        &[Protocol::Overlay]
    }

    /// Busy once every neighbour link and the search clients' allowance
    /// are taken: a node whose neighbour links are all taken still answers
    /// searches (its own daemon's among them).
    fn is_busy(&self, _protocol: Protocol) -> bool {
        let cap = (self.inner.max_links + CLIENT_LINKS).min(MAX_LINKS as usize);
        self.inner.links.load(Ordering::Relaxed) >= cap
    }

    fn serve(
        &self,
        _protocol: Protocol,
        stream: transfer::net::Conn,
        remote: SocketAddr,
        shutdown: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let overlay = self.clone();
        Box::pin(async move { overlay.accept(stream, remote, shutdown).await })
    }
}
