//! The relay engine (issue 15), run by the index (`index-server --relay`)
//! and by public peers that offer it (`peer serve --relay`): when neither
//! a downloader nor a firewalled source accepts connections, both connect
//! out to a relay and it splices the two connections, passing opaque
//! bytes both ways at a capped rate. It never looks into them and stores
//! nothing: the downloader verifies every chunk as from any source.
//!
//! A relay is arranged only by the index: at the index by a logged-in
//! session's `IndexRequest::Relay`, at a peer by the index's
//! `IndexResponse::RelayArrange` order on that peer's own index
//! connection ([`Relay::arrange`], which makes a pending entry under the
//! requester's token); a connection to the relay whose token has no entry
//! (after [`RelayConfig::arrange_wait`], for an order still on its way),
//! or comes after the entry expired ([`RelayConfig::pair_timeout`]), is
//! refused with the reason. Caps: [`RelayConfig::max_sessions`] relays pending or
//! running at once, [`RelayConfig::session_rate`] bytes per second per
//! relay (both directions together), [`RelayConfig::total_rate`] over all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rate::RateLimiter;
use common::reach::{RelayAnswer, RelayHello, RelayRole, MAX_RELAY_FRAME_LEN, NONCE_LEN};
use common::wire::{self, Deadlines, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info};

/// How the relay is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Bytes per second through one relay, both directions together.
    pub session_rate: u64,
    /// Bytes per second through all relays together.
    pub total_rate: u64,
    /// Relays pending or running at once; more are refused.
    pub max_sessions: usize,
    /// How long an arranged relay waits for both sides to connect.
    pub pair_timeout: Duration,
    /// A relay that carries nothing either way for this long is closed
    /// (one direction may wait longer while the other carries bytes).
    pub idle: Duration,
    /// How long a connection whose token is not arranged yet waits for it
    /// (a peer relay: the index's order may arrive after the two sides;
    /// the index arranges before it answers, so it waits 0).
    pub arrange_wait: Duration,
}

/// [`RelayConfig::arrange_wait`] of a peer relay.
pub const PEER_RELAY_ARRANGE_WAIT: Duration = Duration::from_secs(3);

/// Default of [`RelayConfig::session_rate`] (`--relay-rate`): 4 MiB/s.
pub const DEFAULT_RELAY_SESSION_RATE: u64 = 4 << 20;
/// Default of [`RelayConfig::total_rate`] (`--relay-total-rate`): 32 MiB/s.
pub const DEFAULT_RELAY_TOTAL_RATE: u64 = 32 << 20;
/// Default of [`RelayConfig::max_sessions`] (`--relay-max-sessions`).
pub const DEFAULT_RELAY_MAX_SESSIONS: usize = 256;

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            session_rate: DEFAULT_RELAY_SESSION_RATE,
            total_rate: DEFAULT_RELAY_TOTAL_RATE,
            max_sessions: DEFAULT_RELAY_MAX_SESSIONS,
            pair_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            arrange_wait: Duration::ZERO,
        }
    }
}

/// One arranged relay waiting for its sides.
struct Pending {
    made: Instant,
    /// The first side to come, waiting for the second's connection.
    waiting: Option<(RelayRole, oneshot::Sender<TcpStream>)>,
}

/// The index's relay: arranged relays, running ones, and what they carried.
pub struct Relay {
    config: RelayConfig,
    pending: Mutex<HashMap<[u8; NONCE_LEN], Pending>>,
    running: AtomicUsize,
    total: RateLimiter,
    relayed: AtomicU64,
    /// Woken at each arrangement (for connections that came first).
    arranged: tokio::sync::Notify,
}

/// Why a relay could not be arranged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("the relay is at its cap of {0} sessions (index-server --relay-max-sessions); try again later")]
    Full(usize),
    #[error("this token is already arranged")]
    TokenTaken,
}

impl Relay {
    /// A relay with no session yet, capped by `config`.
    pub fn new(config: RelayConfig) -> Self {
        Relay {
            config,
            pending: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            total: RateLimiter::new(config.total_rate.max(1)),
            relayed: AtomicU64::new(0),
            arranged: tokio::sync::Notify::new(),
        }
    }

    /// Its caps.
    pub fn config(&self) -> RelayConfig {
        self.config
    }

    /// Bytes relayed so far, both directions.
    pub fn relayed_bytes(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Relays running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; NONCE_LEN], Pending>> {
        match self.pending.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Arranges a relay under `token` (from a logged-in session's
    /// request); it waits [`RelayConfig::pair_timeout`] for both sides.
    pub fn arrange(&self, token: [u8; NONCE_LEN], now: Instant) -> Result<(), RelayError> {
        let mut pending = self.lock();
        let timeout = self.config.pair_timeout;
        pending.retain(|_, p| now.duration_since(p.made) < timeout);
        if pending.len() + self.running() >= self.config.max_sessions {
            return Err(RelayError::Full(self.config.max_sessions));
        }
        if pending.contains_key(&token) {
            return Err(RelayError::TokenTaken);
        }
        pending.insert(
            token,
            Pending {
                made: now,
                waiting: None,
            },
        );
        drop(pending);
        self.arranged.notify_waiters();
        Ok(())
    }

    /// Forgets an arranged relay (its order could not be sent).
    pub fn cancel(&self, token: &[u8; NONCE_LEN]) {
        self.lock().remove(token);
    }

    /// Serves one connection to the relay whose hello was answered: reads
    /// its [`RelayHello`], pairs it with the other side, and (on the side
    /// that came first) splices the two until both are done.
    pub async fn serve(self: Arc<Self>, mut stream: TcpStream) -> Result<(), WireError> {
        let mut buf = Vec::new();
        let got = wire::read_frame(
            &mut stream,
            &mut buf,
            MAX_RELAY_FRAME_LEN,
            Deadlines::with_idle(common::limits::HELLO_TIMEOUT),
        )
        .await?;
        if !got {
            return Err(WireError::Closed);
        }
        let hello: RelayHello = common::frame::decode_payload(&buf)?;
        self.wait_arranged(&hello.token).await;
        let now = Instant::now();
        let waiting = {
            let mut pending = self.lock();
            let expired = pending
                .get(&hello.token)
                .is_some_and(|p| now.duration_since(p.made) >= self.config.pair_timeout);
            if expired {
                pending.remove(&hello.token);
            }
            match pending.get_mut(&hello.token) {
                None => Err("no relay is arranged with this token (only a logged-in peer's Relay request arranges one, and it waits a few seconds)".to_string()),
                Some(p) => match p.waiting.take() {
                    None => {
                        let (tx, rx) = oneshot::channel();
                        p.waiting = Some((hello.role, tx));
                        Ok(Err(rx))
                    }
                    Some((role, _)) if role == hello.role => {
                        Err("this side of the relay is already connected".to_string())
                    }
                    Some((_, tx)) => {
                        pending.remove(&hello.token);
                        Ok(Ok(tx))
                    }
                },
            }
        };
        let waiting = match waiting {
            Ok(w) => w,
            Err(reason) => {
                debug!(%reason, "relay connection refused");
                let answer = RelayAnswer::Refused { reason };
                let _ = tokio::time::timeout(
                    common::limits::FRAME_TIMEOUT,
                    wire::send_message(&mut stream, &answer),
                )
                .await;
                return Ok(());
            }
        };
        let first_rx = match waiting {
            // The second side: hand our connection to the first, which splices.
            Ok(tx) => {
                let _ = tx.send(stream);
                return Ok(());
            }
            Err(rx) => rx,
        };
        let other = match tokio::time::timeout(self.config.pair_timeout, first_rx).await {
            Ok(Ok(other)) => other,
            _ => {
                self.cancel(&hello.token);
                let answer = RelayAnswer::Refused {
                    reason: "the other side did not connect to the relay in time".into(),
                };
                let _ = tokio::time::timeout(
                    common::limits::FRAME_TIMEOUT,
                    wire::send_message(&mut stream, &answer),
                )
                .await;
                return Ok(());
            }
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        struct Running<'a>(&'a AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _running = Running(&self.running);
        let mut other = other;
        for s in [&mut stream, &mut other] {
            tokio::time::timeout(
                common::limits::FRAME_TIMEOUT,
                wire::send_message(s, &RelayAnswer::Paired),
            )
            .await
            .map_err(|_| WireError::Timeout("the relay's answer"))??;
        }
        info!("relay paired; splicing");
        let session = RateLimiter::new(self.config.session_rate.max(1));
        let (mut ar, mut aw) = stream.split();
        let (mut br, mut bw) = other.split();
        let (active, start) = (AtomicU64::new(0), Instant::now());
        let (one, two) = tokio::join!(
            self.pump(&mut ar, &mut bw, &session, &active, start),
            self.pump(&mut br, &mut aw, &session, &active, start)
        );
        debug!(a_to_b = ?one, b_to_a = ?two, "relay ended");
        Ok(())
    }

    /// Waits up to [`RelayConfig::arrange_wait`] for `token` to be
    /// arranged (returns at once when it is, or when the wait is 0).
    async fn wait_arranged(&self, token: &[u8; NONCE_LEN]) {
        let deadline = Instant::now() + self.config.arrange_wait;
        loop {
            let notified = self.arranged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().contains_key(token) || Instant::now() >= deadline {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Copies `from` to `to` at the session's and the total rate until
    /// `from` ends (then shuts `to` down for writing), or until neither
    /// direction of the relay carried anything for [`RelayConfig::idle`]
    /// (`active`: when either last did, in ms since `start`).
    async fn pump<R, W>(
        &self,
        from: &mut R,
        to: &mut W,
        session: &RateLimiter,
        active: &AtomicU64,
        start: Instant,
    ) -> std::io::Result<u64>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; 16 * 1024];
        let mut moved = 0u64;
        let idle_ms = self.config.idle.as_millis() as u64;
        loop {
            let n = match tokio::time::timeout(self.config.idle, from.read(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => {
                    let now = start.elapsed().as_millis() as u64;
                    if now.saturating_sub(active.load(Ordering::Relaxed)) < idle_ms {
                        // The other direction is busy: this one may wait.
                        continue;
                    }
                    0
                }
            };
            if n == 0 {
                let _ = to.shutdown().await;
                return Ok(moved);
            }
            session.acquire(n as u64).await;
            self.total.acquire(n as u64).await;
            to.write_all(&buf[..n]).await?;
            moved += n as u64;
            active.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.relayed.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// A peer's chunk server hands relay connections (`Protocol::Relay`) to
/// its [`Relay`] through this (`peer serve --relay`).
pub struct RelayHandler(pub Arc<Relay>);

impl crate::chunk_server::ProtocolHandler for RelayHandler {
    fn protocols(&self) -> &[common::hello::Protocol] {
        &[common::hello::Protocol::Relay]
    }

    fn serve(
        &self,
        _protocol: common::hello::Protocol,
        stream: crate::net::Conn,
        remote: std::net::SocketAddr,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        let relay = self.0.clone();
        Box::pin(async move {
            // The relay's leg is clear (`common::secure`): the two peers'
            // own handshake runs end to end through it.
            let Some(stream) = crate::net::into_tcp(stream) else {
                return;
            };
            tokio::select! {
                served = relay.serve(stream) => {
                    if let Err(e) = served {
                        debug!(%remote, error = %e, "relay connection ended");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn arranged_relays_are_capped_and_expire() {
        let relay = Relay::new(RelayConfig {
            max_sessions: 2,
            pair_timeout: Duration::from_secs(10),
            ..Default::default()
        });
        let now = Instant::now();
        assert_eq!(relay.arrange([1; NONCE_LEN], now), Ok(()));
        assert_eq!(
            relay.arrange([1; NONCE_LEN], now),
            Err(RelayError::TokenTaken)
        );
        assert_eq!(relay.arrange([2; NONCE_LEN], now), Ok(()));
        assert_eq!(relay.arrange([3; NONCE_LEN], now), Err(RelayError::Full(2)));
        relay.cancel(&[2; NONCE_LEN]);
        assert_eq!(relay.arrange([3; NONCE_LEN], now), Ok(()));
        // Unpaired ones expire after the pair timeout and free their place.
        let later = now + Duration::from_secs(10);
        assert_eq!(relay.arrange([4; NONCE_LEN], later), Ok(()));
        assert_eq!(relay.arrange([5; NONCE_LEN], later), Ok(()));
    }
}
