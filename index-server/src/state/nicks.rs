//! Nicknames owned by keys (issue 16): the index binds a nickname to the
//! node key (`PeerId`) that first registered it and keeps it reserved for
//! that key for [`super::Limits::nick_reservation`] after its last session
//! ends, so nobody takes it over after a disconnect; a node that logs in
//! again with its key replaces its own previous session at once.
//!
//! Clear-text sessions (`--insecure`, no key) can use nicknames no key has
//! reserved, and reserve nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use common::identity::PeerId;
use dashmap::DashMap;
use tokio::time::Instant;

use super::{normalize, Index, SessionId, StateError};

/// Most nicknames kept reserved at once (about 100 bytes each): past it a
/// new nickname still works but is not reserved (logged once per sweep).
pub const MAX_RESERVED_NICKS: usize = 1_000_000;
/// Reservations are swept (expired ones dropped) every this many lease
/// reaps.
const SWEEP_EVERY: u64 = 16;

/// Which key owns each reserved nickname.
#[derive(Default)]
pub(super) struct NickKeys {
    /// normalized nickname → owner.
    bound: DashMap<String, Binding>,
    reaps: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    key: PeerId,
    /// When its last session ended (`None`: a session of the key holds it).
    offline_since: Option<Instant>,
}

impl Index {
    /// The key a session's handshake proved.
    fn session_key(&self, session: SessionId) -> Option<PeerId> {
        self.inner.sessions.get(&session).and_then(|s| s.peer_id)
    }

    /// Whether two sessions proved the same key (never in clear text).
    pub(super) fn same_key(&self, a: SessionId, b: SessionId) -> bool {
        match (self.session_key(a), self.session_key(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
    }

    /// Refuses `nick` to `session` when another key reserved it.
    pub(super) fn check_nick_owner(
        &self,
        session: SessionId,
        nick: &str,
        now: Instant,
    ) -> Result<(), StateError> {
        let reservation = self.inner.limits.nick_reservation;
        if reservation.is_zero() {
            return Ok(());
        }
        let key = self.session_key(session);
        let Some(b) = self.inner.nick_keys.bound.get(&normalize(nick)).map(|b| *b) else {
            return Ok(());
        };
        if Some(b.key) == key {
            return Ok(());
        }
        let reserved = match b.offline_since {
            None => true,
            Some(since) => since + reservation > now,
        };
        if reserved {
            return Err(StateError::NickReserved {
                nick: nick.to_string(),
                owner: b.key.short(),
                days: reservation.as_secs().div_ceil(86_400),
            });
        }
        Ok(())
    }

    /// Binds `nick` to `session`'s key (if it has one), online.
    pub(super) fn bind_nick(&self, session: SessionId, nick: &str) {
        if self.inner.limits.nick_reservation.is_zero() {
            return;
        }
        let Some(key) = self.session_key(session) else {
            return;
        };
        let bound = &self.inner.nick_keys.bound;
        let norm = normalize(nick);
        if bound.len() >= MAX_RESERVED_NICKS && !bound.contains_key(&norm) {
            return;
        }
        bound.insert(
            norm,
            Binding {
                key,
                offline_since: None,
            },
        );
    }

    /// `nick`, held by a session of `key` that ended now: its reservation
    /// starts.
    pub(super) fn nick_offline(&self, nick: &str, key: Option<PeerId>) {
        let Some(key) = key else { return };
        if let Some(mut b) = self.inner.nick_keys.bound.get_mut(&normalize(nick)) {
            if b.key == key {
                b.offline_since = Some(Instant::now());
            }
        }
    }

    /// Drops reservations that ran out (every [`SWEEP_EVERY`]th call).
    pub(super) fn sweep_nicks(&self, now: Instant) {
        let keys = &self.inner.nick_keys;
        if !keys
            .reaps
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            return;
        }
        let reservation = self.inner.limits.nick_reservation;
        keys.bound.retain(|_, b| {
            b.offline_since
                .is_none_or(|since| since + reservation > now)
        });
        if keys.bound.len() >= MAX_RESERVED_NICKS {
            tracing::warn!(
                reserved = keys.bound.len(),
                "the table of reserved nicknames is full: new nicknames are not reserved"
            );
        }
    }

    /// How many nicknames are reserved (online or not).
    pub fn reserved_nicks(&self) -> usize {
        self.inner.nick_keys.bound.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::identity::{Identity, PeerId};
    use common::index_proto::Reach;
    use tokio::time::Instant;

    use super::super::{Index, NewSession, SessionId, StateError};

    fn key() -> Option<PeerId> {
        Some(Identity::generate().peer_id())
    }

    fn open(
        idx: &Index,
        addr: &str,
        nick: &str,
        peer_id: Option<PeerId>,
    ) -> Result<SessionId, StateError> {
        idx.open_session(
            NewSession {
                addr: addr.into(),
                claims: vec![addr.into()],
                nick: Some(nick.into()),
                source: None,
                reach: Reach::Direct,
                peer_id,
            },
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_nickname_stays_with_its_key_after_a_disconnect() {
        let idx = Index::new(Duration::from_secs(60));
        let (ana, mallory) = (key(), key());
        let a = open(&idx, "a:1", "ana", ana).unwrap();
        idx.logout(a);
        // Before: the first login after a disconnect took the nickname.
        let taken = open(&idx, "m:1", "Ana", mallory);
        assert!(
            matches!(&taken, Err(StateError::NickReserved { nick, days: 7, .. }) if nick == "Ana"),
            "{taken:?}"
        );
        let clear = open(&idx, "c:1", "ana", None);
        assert!(
            matches!(clear, Err(StateError::NickReserved { .. })),
            "{clear:?}"
        );
        // Its owner gets it back; the others keep other nicknames.
        open(&idx, "a:2", "ana", ana).unwrap();
        open(&idx, "m:2", "mallory", mallory).unwrap();
        // Days later, the reservation has run out.
        let idx2 = Index::new(Duration::from_secs(60));
        let a = open(&idx2, "a:1", "ana", ana).unwrap();
        idx2.logout(a);
        tokio::time::advance(Duration::from_secs(7 * 86_400 + 1)).await;
        idx2.reap_expired(Instant::now());
        open(&idx2, "m:1", "ana", mallory).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_logging_in_again_replaces_its_session_at_once() {
        let idx = Index::new(Duration::from_secs(60));
        let ana = key();
        let old = open(&idx, "a:1", "ana", ana).unwrap();
        // Its old connection died unseen: the same key logs in at once,
        // from the same address and nickname, and no lease is waited for.
        let new = open(&idx, "a:1", "ana", ana).unwrap();
        assert_ne!(old, new);
        assert!(
            !idx.inner.sessions.contains_key(&old),
            "the old session ended"
        );
        assert_eq!(idx.whois("ana", Instant::now()).unwrap().addr, "a:1");
        // Another key cannot do that, online or not.
        assert!(matches!(
            open(&idx, "b:1", "ana", key()),
            Err(StateError::NickTaken(_) | StateError::NickReserved { .. })
        ));
        assert!(matches!(
            open(&idx, "a:1", "bob", key()),
            Err(StateError::AddressTaken(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn clear_text_nicknames_work_as_before_and_reserve_nothing() {
        let idx = Index::new(Duration::from_secs(60));
        let a = open(&idx, "a:1", "ana", None).unwrap();
        assert!(matches!(
            open(&idx, "b:1", "ana", None),
            Err(StateError::NickTaken(_))
        ));
        idx.logout(a);
        assert_eq!(idx.reserved_nicks(), 0);
        open(&idx, "b:1", "ana", key()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_reservation_when_turned_off() {
        let limits = super::super::Limits {
            nick_reservation: Duration::ZERO,
            ..Default::default()
        };
        let idx = Index::with_limits(Duration::from_secs(60), limits);
        let a = open(&idx, "a:1", "ana", key()).unwrap();
        idx.logout(a);
        open(&idx, "m:1", "ana", key()).unwrap();
    }
}
