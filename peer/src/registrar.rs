//! Keeps this peer registered at the index: login, whole list, heartbeats,
//! additions and removals, and reconnection with backoff when the index goes
//! away (its restart loses every registration, so we register again).

use std::collections::HashMap;
use std::time::Duration;

use common::hello::HelloError;
use common::id::FileId;
use common::index_proto::{ErrorCode, IndexRequest, IndexResponse, Login, Reach, SharedFile};
use common::limits::MAX_FILES_PER_BATCH;
use common::reach::LoginNonce;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use common::wire::WireError;

use crate::index_client::{IndexClient, IndexError};
use crate::library::Library;
pub use transfer::refused::Refusals;

/// Where the registration stands, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    Connecting,
    /// Registered; the address the index publishes for us and how many files.
    Registered {
        addr: String,
        files: usize,
        /// `Firewalled`: no address this peer asked for proved itself at
        /// the index's dial-back; `addr` is then where the index sees this
        /// peer's connection come from, not an address anyone can dial.
        reach: Reach,
    },
    /// Refused for good (a nickname clash, an invalid login, another
    /// protocol version or service); not retried. The text says what to do.
    Refused(String),
}

pub struct RegistrarConfig {
    pub index: String,
    pub login: Login,
    /// Set to a fresh random nonce before each login; the chunk server
    /// answers the index's dial-backs with it (`common::reach`).
    pub login_nonce: LoginNonce,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The nickname was not chosen by the user (the host name): when it is
    /// taken, register under a free variant (`name-2`, `name-3`, ...)
    /// instead of stopping.
    pub nick_fallback: bool,
    /// Serves the callback orders the index forwards while this peer is
    /// firewalled (`crate::callback`); `None`: takes none.
    pub callbacks: Option<crate::callback::CallbackServer>,
    /// The relay this peer runs for others (`peer serve --relay`): offered
    /// to the index when it proves our address (`AcceptOrders` with
    /// `ORDERS_RELAYS`), fed the relays it arranges.
    pub relay: Option<std::sync::Arc<transfer::relay::Relay>>,
    /// Where the chunk server listens (`[::]`: both IP families), to offer
    /// the index this host's address in the other family and its inside
    /// address (`IndexRequest::LoginAddrs`); `None`: offer none.
    pub listen: Option<std::net::SocketAddr>,
}

/// What a `LoginAddrs` offers besides the connection's own address: the
/// host's address in the other IP family (when the listener on `listen`
/// takes it), and `local` (the index connection's local address: the
/// inside address behind a NAT), each with the listening port.
pub fn other_addresses(
    listen: std::net::SocketAddr,
    local: Option<std::net::SocketAddr>,
) -> (Vec<String>, Vec<String>) {
    use std::net::{IpAddr, SocketAddr};
    let dual = listen.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let takes = |ip: IpAddr| {
        let ip = ip.to_canonical();
        dual || listen.ip() == ip
            || (listen.ip() == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) && ip.is_ipv4())
    };
    // An index on this machine (tests, the lab): nothing to add.
    let Some(local) = local
        .map(|l| SocketAddr::new(l.ip().to_canonical(), l.port()))
        .filter(|l| !l.ip().is_loopback())
    else {
        return (Vec::new(), Vec::new());
    };
    let port = listen.port();
    let also = transfer::net::source_address(local.is_ipv4())
        .filter(|ip| takes(*ip))
        .map(|ip| SocketAddr::new(ip, port).to_string());
    let lan = takes(local.ip()).then(|| SocketAddr::new(local.ip(), port).to_string());
    (also.into_iter().collect(), lan.into_iter().collect())
}

/// Whether the index refused the login for a reason that retrying cannot
/// change (another protocol version or service, an invalid login), or
/// proved another key than the one pinned for it (only a person can say
/// whether the key changed on purpose; until then this peer tells it
/// nothing); a nickname clash is handled apart.
fn permanent(e: &IndexError) -> bool {
    match e {
        IndexError::Refused { code, .. } => {
            matches!(code, ErrorCode::BadRequest | ErrorCode::AlreadyLoggedIn)
        }
        IndexError::WrongIndex(_) => true,
        IndexError::Wire(WireError::Hello(h)) => !matches!(h, HelloError::Busy),
        _ => false,
    }
}

/// The `n`th variant of a nickname (`n` ≥ 2): `name-n`, the name shortened
/// (at a character boundary) so that the variant stays a valid nickname.
pub fn nick_variant(base: &str, n: u32) -> String {
    let suffix = format!("-{n}");
    let mut cut = common::limits::MAX_NICK_LEN
        .saturating_sub(suffix.len())
        .min(base.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

/// First wait before logging in again after losing the index (`peer
/// serve`'s default; doubled after each failed attempt).
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between attempts (`peer serve`'s default).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Most nickname variants tried in a row before waiting like any failure.
const MAX_NICK_VARIANTS: u32 = 1000;

/// Runs until `shutdown`. Refusals that retrying cannot fix end the loop.
pub async fn run(
    config: RegistrarConfig,
    library: Library,
    state: watch::Sender<RegistrationState>,
    shutdown: CancellationToken,
) {
    let mut backoff = config.backoff_min;
    // Lives across sessions: a refused file is warned about once, not once per reconnection.
    let mut refusals = Refusals::default();
    // A clash on the first login is someone else's nickname: give up. Once we
    // have been registered, a clash is our own old session whose lease has
    // not run out yet (a half-open connection): wait for it.
    let mut registered_once = false;
    let mut login = config.login.clone();
    let base_nick = login.nick.clone().unwrap_or_default();
    let mut variant = 1;
    // Callback uploads: they outlive one index connection, and end (are
    // aborted) when this task does.
    let mut answering = tokio::task::JoinSet::new();
    // Cleared when the index turns out to be older than callbacks.
    let mut take_callbacks = config.callbacks.is_some();
    // Cleared when the index turns out to be older than `LoginAddrs`.
    let mut offer_addrs = true;
    // Cleared when the index turns out to be older than `AcceptOrders`.
    let mut accept_orders = true;
    loop {
        state.send_replace(RegistrationState::Connecting);
        let mut calls = Calls {
            server: config.callbacks.as_ref(),
            answering: &mut answering,
            wanted: &mut take_callbacks,
            addrs: &mut offer_addrs,
            orders: &mut accept_orders,
            relay: config.relay.as_ref(),
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session(&config, &login, &library, &state, &mut backoff, &mut registered_once, &mut refusals, &mut calls) => r,
        };
        let Err(e) = result else { return };
        if let IndexError::Refused {
            code: code @ (ErrorCode::NickTaken | ErrorCode::AddressTaken),
            message,
        } = &e
        {
            if *code == ErrorCode::NickTaken && config.nick_fallback && variant < MAX_NICK_VARIANTS
            {
                // A nickname the user did not choose never stops the peer.
                variant += 1;
                let next = nick_variant(&base_nick, variant);
                warn!(taken = ?login.nick, using = %next, "the default nickname is taken by another peer; using a free variant (choose one with --nick)");
                login.nick = Some(next);
                continue;
            }
            if registered_once {
                warn!(%message, retry_in = ?backoff, "our {} is still held by our previous session; retrying", if *code == ErrorCode::NickTaken { "nickname" } else { "address" });
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.backoff_max);
                continue;
            }
            let reason = if *code == ErrorCode::NickTaken && !message.contains("--nick") {
                format!("{message} (pick another nickname with --nick or PEER_NICK)")
            } else {
                message.clone()
            };
            warn!(%reason, "the index refused this peer");
            state.send_replace(RegistrationState::Refused(reason));
            shutdown.cancelled().await;
            return;
        }
        if permanent(&e) {
            let reason = common::report::error_chain(&e);
            warn!(index = %config.index, error = %reason, "the index refused this peer for good; not retrying");
            state.send_replace(RegistrationState::Refused(reason));
            shutdown.cancelled().await;
            return;
        }
        warn!(index = %config.index, error = %common::report::error_chain(&e), retry_in = ?backoff, "lost the index; will register again");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(reconnect_delay(backoff, rand::random())) => {}
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// How long to wait before the next login after losing the index, with
/// the current `backoff` and a random `draw`: anywhere in `[0, backoff]`,
/// uniformly ("full jitter", as AWS's architecture blog measured it).
///
/// An index restart drops every peer at the same instant; a wait of
/// `backoff` plus a little jitter brought them all back within a few
/// milliseconds of each other, again and again (a thundering herd that
/// overflowed the index's listen backlog, whose dropped SYNs are retried
/// only after 1 s, then 3 s). Spread over the whole window, and with the
/// window doubling after each failure, the logins arrive at a rate the
/// index can take.
pub fn reconnect_delay(backoff: Duration, draw: u64) -> Duration {
    let window = backoff.as_micros().min(u64::MAX as u128) as u64;
    Duration::from_micros(draw % (window + 1))
}

/// The callback orders of a firewalled peer's session (`crate::callback`).
struct Calls<'a> {
    server: Option<&'a crate::callback::CallbackServer>,
    answering: &'a mut tokio::task::JoinSet<()>,
    /// Whether to ask the index for callback orders (cleared for an index
    /// too old to send them).
    wanted: &'a mut bool,
    /// Whether to log in with `LoginAddrs` (cleared for an index too old
    /// to take it).
    addrs: &'a mut bool,
    /// Whether to ask with `AcceptOrders` (cleared for an index too old).
    orders: &'a mut bool,
    /// The relay we run for others, if any.
    relay: Option<&'a std::sync::Arc<transfer::relay::Relay>>,
}

impl Calls<'_> {
    /// Serves each callback order `client` holds (at most
    /// `callback::MAX_ANSWERING` at once; more are dropped).
    fn answer(&mut self, client: &mut IndexClient, index: &str) {
        while self.answering.try_join_next().is_some() {}
        let local_port = client.local_port();
        for order in client.take_orders() {
            let Some(server) = self.server.cloned() else {
                continue;
            };
            if self.answering.len() >= crate::callback::MAX_ANSWERING {
                warn!("too many callbacks being served; dropping an order");
                continue;
            }
            match order {
                IndexResponse::CallbackOrder { id, target, token } => {
                    info!(%target, %id, "the index asks us to call a downloader back");
                    self.answering.spawn(async move {
                        if let Err(e) = server.answer(&target, token).await {
                            warn!(%target, error = %common::report::error_chain(&e), "callback failed");
                        }
                    });
                }
                IndexResponse::PunchOrder { id, token, peer } => {
                    let Some(port) = local_port else { continue };
                    info!(%peer, %id, "the index asks us to punch a hole to a downloader");
                    self.answering.spawn(async move {
                        if let Err(e) = server.answer_punch(port, &peer, token).await {
                            tracing::debug!(%peer, error = %common::report::error_chain(&e), "hole punch failed (the downloader goes through the relay)");
                        }
                    });
                }
                IndexResponse::RelayArrange { token } => match self.relay {
                    Some(relay) => match relay.arrange(token, tokio::time::Instant::now()) {
                        Ok(()) => tracing::debug!("the index arranged a relay through us"),
                        Err(e) => warn!(error = %e, "cannot relay for the index now"),
                    },
                    None => tracing::debug!("a relay order, but we relay for no one"),
                },
                IndexResponse::RelayOrderAt { id, token, relay } => {
                    info!(%id, %relay, "the index asks us to serve a downloader through a peer's relay");
                    self.answering.spawn(async move {
                        if let Err(e) = server.answer_relay(&relay, token).await {
                            warn!(error = %common::report::error_chain(&e), "relayed upload failed");
                        }
                    });
                }
                IndexResponse::RelayOrder { id, token } => {
                    info!(%id, "the index asks us to serve a downloader through its relay");
                    let index = index.to_string();
                    self.answering.spawn(async move {
                        if let Err(e) = server.answer_relay(&index, token).await {
                            warn!(error = %common::report::error_chain(&e), "relayed upload failed");
                        }
                    });
                }
                _ => {}
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &RegistrarConfig,
    login: &Login,
    library: &Library,
    state: &watch::Sender<RegistrationState>,
    backoff: &mut Duration,
    registered_once: &mut bool,
    refusals: &mut Refusals,
    calls: &mut Calls<'_>,
) -> Result<(), IndexError> {
    // From a port a hole punch may share (`IndexRequest::Punch`).
    let mut client = IndexClient::connect_shareable(&config.index).await?;
    // A fresh nonce per login, set before the index can dial back.
    let nonce: [u8; common::reach::NONCE_LEN] = rand::random();
    config.login_nonce.set(nonce);
    let (also, lan) = match config.listen {
        Some(listen) if *calls.addrs => other_addresses(listen, client.local_addr()),
        _ => (Vec::new(), Vec::new()),
    };
    let checked = if also.is_empty() && lan.is_empty() {
        IndexRequest::LoginChecked {
            login: login.clone(),
            nonce,
        }
    } else {
        IndexRequest::LoginAddrs {
            login: login.clone(),
            nonce,
            also,
            lan,
        }
    };
    let answer = match client.request(&checked).await {
        // An index from before `LoginAddrs` closes the connection: the
        // same login without the other addresses, from now on.
        Err(IndexError::Wire(WireError::Closed | WireError::Io(_)))
            if matches!(checked, IndexRequest::LoginAddrs { .. }) =>
        {
            *calls.addrs = false;
            client = IndexClient::connect_shareable(&config.index).await?;
            let nonce: [u8; common::reach::NONCE_LEN] = rand::random();
            config.login_nonce.set(nonce);
            let checked = IndexRequest::LoginChecked {
                login: login.clone(),
                nonce,
            };
            client.request(&checked).await
        }
        other => other,
    };
    let (addr, ttl, reach) = match answer {
        Ok(IndexResponse::WelcomeChecked {
            addr,
            observed,
            refused,
            lease_ttl_ms,
        }) => {
            for why in &refused {
                warn!(reason = %why, "the index did not publish an address of ours");
            }
            let reach = if addr.is_some() {
                Reach::Direct
            } else {
                warn!(%observed, "no address of ours proved reachable: the index lists this peer as firewalled (downloaders reach it only by callback, hole punch or a relay; forward a port to --listen and use --advertise to be reached directly)");
                Reach::Firewalled
            };
            (
                addr.unwrap_or(observed),
                Duration::from_millis(lease_ttl_ms.max(300)),
                reach,
            )
        }
        Ok(other) => return Err(IndexError::Unexpected(format!("{other:?}"))),
        // An index from before the check closes the connection on the
        // unknown request: log in the old way.
        Err(IndexError::Wire(WireError::Closed | WireError::Io(_))) => {
            client = IndexClient::connect(&config.index).await?;
            match client.request(&IndexRequest::Login(login.clone())).await? {
                IndexResponse::Welcome { addr, lease_ttl_ms } => (
                    addr,
                    Duration::from_millis(lease_ttl_ms.max(300)),
                    Reach::Direct,
                ),
                other => return Err(IndexError::Unexpected(format!("{other:?}"))),
            }
        }
        Err(e) => return Err(e),
    };
    *registered_once = true;
    let relays = reach == Reach::Direct && config.relay.is_some();
    if (reach == Reach::Firewalled || relays) && *calls.wanted {
        let mut flags = common::index_proto::ORDERS_RELAY_AT;
        if relays {
            flags |= common::index_proto::ORDERS_RELAYS;
        }
        let request = if *calls.orders {
            IndexRequest::AcceptOrders { flags }
        } else {
            IndexRequest::AcceptCallbacks
        };
        match client.request(&request).await {
            Ok(IndexResponse::Ack { .. }) if relays && *calls.orders => {
                info!("relaying for other peers at the index's request (peer serve --relay)")
            }
            Ok(IndexResponse::Ack { .. }) if relays => {}
            Ok(IndexResponse::Ack { .. }) => {
                info!("firewalled: downloaders reach us by callback (we connect out at the index's request)")
            }
            // An index from before `AcceptOrders`: log in again and ask
            // the old way.
            Err(e @ IndexError::Wire(WireError::Closed | WireError::Io(_))) if *calls.orders => {
                warn!("the index is too old for AcceptOrders: taking callbacks the old way, relaying for no one");
                *calls.orders = false;
                return Err(e);
            }
            Ok(other) => return Err(IndexError::Unexpected(format!("{other:?}"))),
            // An index from before callbacks closes the connection on the
            // unknown request: log in again without asking.
            Err(e @ IndexError::Wire(WireError::Closed | WireError::Io(_))) => {
                warn!("the index is too old to forward callbacks: downloaders cannot reach this firewalled peer");
                *calls.wanted = false;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    let mut changes = library.subscribe();
    changes.mark_changed();
    let mut registered: HashMap<FileId, SharedFile> = HashMap::new();
    let mut registered_partial: HashMap<FileId, SharedFile> = HashMap::new();
    // Files the index holds for this session, as its answers count them.
    let mut held = 0usize;
    let mut heartbeat = tokio::time::interval(ttl / 3);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut announced = false;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let mut listing = Listing { client: &mut client, registered: &mut registered, registered_partial: &mut registered_partial, held: &mut held };
                let refused = listing.sync(library, refusals).await?;
                if !announced {
                    info!(%addr, reach = reach.label(), nick = ?login.nick, files = held, refused, "registered at the index");
                    announced = true;
                    *backoff = config.backoff_min;
                }
                state.send_replace(RegistrationState::Registered { addr: addr.clone(), files: held, reach });
            }
            _ = heartbeat.tick() => {
                client.request(&IndexRequest::Heartbeat).await?;
            }
            // Notice at once when the index goes away, not at the next
            // heartbeat; and take callback orders as they come.
            readable = client.readable() => {
                readable?;
                client.receive_unasked().await?;
            }
        }
        calls.answer(&mut client, &config.index);
    }
}

/// What one request of a sync was, to read its answer.
#[derive(Clone, Copy)]
enum Sent {
    RemoveComplete,
    RemoveOther,
    AddNew(usize),
    Rename(usize),
    AddPartial,
}

/// This session's registrations and the connection they go through.
struct Listing<'a> {
    client: &'a mut IndexClient,
    registered: &'a mut HashMap<FileId, SharedFile>,
    registered_partial: &'a mut HashMap<FileId, SharedFile>,
    /// Entries the index holds for us: its `Ack` counts of new files
    /// accepted, less those of complete files removed.
    held: &'a mut usize,
}

impl Listing<'_> {
    /// Sends the difference between what the index has and what we share;
    /// returns how many shared files are not registered because the index
    /// would refuse them.
    async fn sync(
        &mut self,
        library: &Library,
        refusals: &mut Refusals,
    ) -> Result<usize, IndexError> {
        let mut current = library.listing();
        let refused = refusals.filter(&mut current);
        let mut current_partial = library.partial_listing();
        current_partial.retain(|_, f| f.check().is_ok());
        let (registered, registered_partial) = (&*self.registered, &*self.registered_partial);
        // A partial file that became complete is upgraded by its AddFiles, not removed.
        let gone = |id: &&FileId| !current.contains_key(id) && !current_partial.contains_key(id);
        let mut removed: Vec<FileId> = registered.keys().filter(gone).copied().collect();
        removed.sort();
        let mut removed_other: Vec<FileId> = registered_partial
            .keys()
            .filter(gone)
            .filter(|id| !registered.contains_key(id))
            .copied()
            .collect();
        removed_other.sort();
        let added_partial: Vec<SharedFile> = current_partial
            .values()
            .filter(|f| !registered_partial.contains_key(&f.id))
            .cloned()
            .collect();
        // New files and renamed ones go in separate batches, so that an
        // answer's count of accepted new files is exact.
        let (renamed, added): (Vec<SharedFile>, Vec<SharedFile>) = current
            .values()
            .filter(|f| registered.get(&f.id).is_none_or(|r| r.name != f.name))
            .cloned()
            .partition(|f| registered.contains_key(&f.id));
        // Pipelined: every batch goes out before the first answer is read.
        let mut sent = Vec::new();
        for (ids, kind) in [
            (&removed, Sent::RemoveComplete),
            (&removed_other, Sent::RemoveOther),
        ] {
            for batch in ids.chunks(MAX_FILES_PER_BATCH) {
                self.client
                    .queue(&IndexRequest::RemoveFiles {
                        ids: batch.to_vec(),
                    })
                    .await?;
                sent.push(kind);
            }
        }
        for batch in added.chunks(MAX_FILES_PER_BATCH) {
            let files = batch.to_vec();
            self.client.queue(&IndexRequest::AddFiles { files }).await?;
            sent.push(Sent::AddNew(batch.len()));
        }
        for batch in renamed.chunks(MAX_FILES_PER_BATCH) {
            let files = batch.to_vec();
            self.client.queue(&IndexRequest::AddFiles { files }).await?;
            sent.push(Sent::Rename(batch.len()));
        }
        for batch in added_partial.chunks(MAX_FILES_PER_BATCH) {
            let files = batch.to_vec();
            self.client
                .queue(&IndexRequest::AddPartial { files })
                .await?;
            sent.push(Sent::AddPartial);
        }
        self.client.flush().await?;
        let (mut refused_new, mut refused_renames) = (0, 0);
        for kind in sent {
            let count = match self.client.receive().await {
                Ok(IndexResponse::Ack { count }) => count as usize,
                // A cap of the index (files per peer, its memory budget)
                // refuses a whole batch; what it listed before stays.
                Err(IndexError::Refused {
                    code: ErrorCode::TooMany,
                    message,
                }) => {
                    warn!(%message, "the index refused a batch of our files");
                    0
                }
                Ok(other) => return Err(IndexError::Unexpected(format!("{other:?}"))),
                Err(e) => return Err(e),
            };
            match kind {
                Sent::RemoveComplete => *self.held = self.held.saturating_sub(count),
                Sent::AddNew(len) => {
                    *self.held += count.min(len);
                    refused_new += len.saturating_sub(count);
                }
                Sent::Rename(len) => refused_renames += len.saturating_sub(count),
                Sent::RemoveOther | Sent::AddPartial => {}
            }
        }
        if refused_new + refused_renames > 0 {
            // The answer counts refusals without naming them; our own check
            // passed, so it is a rule of that index (a cap, a size that
            // contradicts another peer's entry for the same id).
            warn!(
                refused = refused_new,
                renames_refused = refused_renames,
                sent = added.len() + renamed.len(),
                "the index refused some of the files sent (it does not say which)"
            );
        }
        *self.registered = current;
        *self.registered_partial = current_partial;
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nick_variants_stay_valid() {
        assert_eq!(nick_variant("host", 2), "host-2");
        let long = "é".repeat(16); // 32 bytes
        let v = nick_variant(&long, 10);
        assert!(
            v.len() <= common::limits::MAX_NICK_LEN && v.ends_with("-10"),
            "{v}"
        );
        assert!(common::im::validate_nick(&v).is_ok());
    }

    #[test]
    fn reconnections_spread_over_the_whole_backoff_window() {
        let backoff = Duration::from_millis(200);
        // A herd of peers that lost the index at the same instant.
        let mut waits: Vec<Duration> = (0..10_000u64)
            .map(|i| reconnect_delay(backoff, i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        waits.sort();
        assert!(waits.iter().all(|w| *w <= backoff), "{:?}", waits.last());
        // Every tenth of the window gets about a tenth of the herd: no
        // burst of everyone at `backoff`.
        for tenth in 0..10u32 {
            let (lo, hi) = (backoff * tenth / 10, backoff * (tenth + 1) / 10);
            let n = waits.iter().filter(|w| **w >= lo && **w < hi).count();
            assert!((800..1200).contains(&n), "{n} waits in [{lo:?}, {hi:?})");
        }
        assert_eq!(reconnect_delay(Duration::ZERO, 12345), Duration::ZERO);
        assert!(reconnect_delay(Duration::from_secs(10), u64::MAX) <= Duration::from_secs(10));
    }

    #[test]
    fn only_lasting_refusals_are_permanent() {
        let refused = |code| IndexError::Refused {
            code,
            message: String::new(),
        };
        assert!(permanent(&refused(ErrorCode::BadRequest)));
        assert!(!permanent(&refused(ErrorCode::Internal)));
        assert!(!permanent(&refused(ErrorCode::TooMany)));
        assert!(permanent(&IndexError::Wire(WireError::Hello(
            HelloError::WrongProtocol
        ))));
        assert!(!permanent(&IndexError::Wire(WireError::Hello(
            HelloError::Busy
        ))));
        assert!(!permanent(&IndexError::Wire(WireError::Closed)));
        assert!(permanent(&IndexError::WrongIndex("pinned".into())));
    }
}
