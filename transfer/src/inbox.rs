//! A node's inbox of direct messages (the instant-messaging hybrid).
//!
//! Messages arrive peer to peer as `PeerRequest::Message` on the chunk
//! server's port; the index never sees them. The inbox first limits how
//! fast one source address may send (a token bucket per IP, per /64 for
//! IPv6; bad messages count too), then checks each message (sender
//! nickname, size, no terminal control characters), logs it, keeps the last few in memory and appends them to a JSON-lines
//! file (normally `SHARE/.p2pshare/inbox.jsonl`) so that `peer inbox`, a
//! separate process on the same machine, can show them. The file is
//! compacted to the last `capacity` messages whenever it reaches twice that,
//! so it stays bounded; it is created readable by its owner only.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::identity::PeerId;
use common::im::{validate_message_text, validate_nick, MessageTextError, NickError};
use common::peer_proto::{PeerErrorCode, PeerResponse};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// Name of the inbox file inside a peer's state folder.
pub const INBOX_FILE: &str = "inbox.jsonl";

/// Most source addresses tracked by the rate limiter at once.
const MAX_TRACKED_SENDERS: usize = 4096;

/// Most bytes `read_file` reads (from the end of the file). A compacted
/// inbox of 100 maximal messages is under 2 MiB.
const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;

/// Asks whether nickname `nick` belongs to the node key `id` (the peer
/// daemon asks the index which key holds the nickname): `Some(true)` or
/// `Some(false)`, `None` when that could not be found out.
pub type SenderCheck =
    Arc<dyn Fn(String, PeerId) -> Pin<Box<dyn Future<Output = Option<bool>> + Send>> + Send + Sync>;

/// Longest a [`SenderCheck`] may take before the message is kept as
/// unverified.
pub const SENDER_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How an inbox keeps and limits messages.
#[derive(Clone)]
pub struct InboxConfig {
    /// Messages kept (in memory, and in the file after compaction).
    pub capacity: usize,
    /// Messages one source may send at once.
    pub burst: u32,
    /// After the burst, one more message per `refill`.
    pub refill: Duration,
    /// JSON-lines file the messages are appended to; `None` keeps them in memory only.
    pub file: Option<PathBuf>,
    /// How a sender's nickname is checked against the key its connection
    /// proved; `None`: never (every message unverified).
    pub sender_check: Option<SenderCheck>,
}

impl std::fmt::Debug for InboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConfig")
            .field("capacity", &self.capacity)
            .field("burst", &self.burst)
            .field("refill", &self.refill)
            .field("file", &self.file)
            .field("sender_check", &self.sender_check.is_some())
            .finish()
    }
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            capacity: 100,
            burst: 5,
            refill: Duration::from_secs(1),
            file: None,
            sender_check: None,
        }
    }
}

/// One received message, as kept and as written to the inbox file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// The sender's nickname as they gave it (see `verified`).
    pub from: String,
    /// The node id the sender's connection proved in its handshake (signed
    /// with the sender's ed25519 key); absent in clear text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    /// Whether `from` is the nickname of the key in `sender_id` (the index
    /// lists the nickname's online session under that key): true
    /// ("verified"), false ("unverified": another key holds it, nobody
    /// holds it now, or no key was proven), absent when it could not be
    /// checked (messages from before the check, or the index did not
    /// answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// The sender's ed25519 signature of the message (hex, 64 bytes):
    /// anyone can check it with `common::im::verify_message`, `sender_id`,
    /// this node's id and `sent_unix_ms`. Absent for messages from older
    /// peers (that could not sign) and in clear text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When the sender signed it, milliseconds since the Unix epoch (the
    /// sender's clock); with `signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_unix_ms: Option<u64>,
    /// The IP address the message came from (the TCP connection's, not a claim).
    pub source: String,
    /// When it arrived, milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    pub text: String,
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryRefused {
    #[error("bad sender nickname: {0}")]
    BadNick(NickError),
    #[error(transparent)]
    BadText(#[from] MessageTextError),
    #[error("too many messages from {source_addr}: at most {burst} at once, then one every {refill:?}; try again in {retry_after:?}")]
    RateLimited {
        source_addr: IpAddr,
        burst: u32,
        refill: Duration,
        retry_after: Duration,
    },
    #[error("too many different senders right now; try again later")]
    TooManySenders,
    #[error("the message's signature does not verify with the key this connection proved")]
    BadSignature,
}

/// A direct message's signature as it arrived
/// (`PeerRequest::SignedMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSignature {
    /// When the sender says it sent it, milliseconds since the Unix epoch.
    pub sent_unix_ms: u64,
    /// The signature bytes (64 when well formed).
    pub signature: Vec<u8>,
}

// The cause is in the message, so it is a plain field, not a `source`
// (an error chain would say it twice; see `common::report`).
impl From<NickError> for DeliveryRefused {
    fn from(e: NickError) -> Self {
        DeliveryRefused::BadNick(e)
    }
}

impl DeliveryRefused {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> PeerErrorCode {
        match self {
            DeliveryRefused::BadNick(_)
            | DeliveryRefused::BadText(_)
            | DeliveryRefused::BadSignature => PeerErrorCode::BadRequest,
            DeliveryRefused::RateLimited { .. } | DeliveryRefused::TooManySenders => {
                PeerErrorCode::RateLimited
            }
        }
    }
}

/// A token bucket per source: `burst` tokens, one more every `refill`.
struct RateLimiter {
    burst: u32,
    refill: Duration,
    /// source → (tokens, when they were counted).
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    fn tokens_now(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(since).as_secs_f64()
            / self.refill.as_secs_f64().max(1e-9);
        (tokens + refilled).min(self.burst as f64)
    }

    /// Takes one token for `source`, or says how long until one is there.
    fn take(&mut self, source: IpAddr, now: Instant) -> Result<(), DeliveryRefused> {
        let source = rate_key(source);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_TRACKED_SENDERS {
            // A full bucket is the same as no bucket: forget those.
            let burst = self.burst as f64;
            let refill = self.refill;
            self.buckets.retain(|_, (tokens, since)| {
                let refilled =
                    now.saturating_duration_since(*since).as_secs_f64() / refill.as_secs_f64();
                *tokens + refilled < burst
            });
            if self.buckets.len() >= MAX_TRACKED_SENDERS {
                return Err(DeliveryRefused::TooManySenders);
            }
        }
        let (tokens, since) = self
            .buckets
            .get(&source)
            .copied()
            .unwrap_or((self.burst as f64, now));
        let tokens = self.tokens_now(tokens, since, now);
        if tokens >= 1.0 {
            self.buckets.insert(source, (tokens - 1.0, now));
            Ok(())
        } else {
            self.buckets.insert(source, (tokens, now));
            Err(DeliveryRefused::RateLimited {
                source_addr: source,
                burst: self.burst,
                refill: self.refill,
                retry_after: self.refill.mul_f64(1.0 - tokens),
            })
        }
    }
}

/// The address a sender is limited by (see [`crate::admission::source_key`]).
fn rate_key(ip: IpAddr) -> IpAddr {
    crate::admission::source_key(ip)
}

/// The inbox file and how many lines it has.
struct InboxFile {
    path: PathBuf,
    lines: usize,
}

struct Inner {
    config: InboxConfig,
    recent: Mutex<VecDeque<InboxMessage>>,
    limiter: Mutex<RateLimiter>,
    /// Locked only on blocking threads (file I/O).
    file: Option<Mutex<InboxFile>>,
    received: AtomicU64,
}

/// Handle to a node's inbox; cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inbox {
    /// Opens the inbox, loading the last messages from its file if there is
    /// one. Blocking (reads the file): call it off the async runtime.
    pub fn open(config: InboxConfig) -> Inbox {
        let capacity = config.capacity.max(1);
        let mut recent = VecDeque::new();
        let mut lines = 0;
        if let Some(path) = &config.file {
            match read_file(path) {
                Ok(old) => {
                    lines = old.len();
                    let skip = old.len().saturating_sub(capacity);
                    recent.extend(old.into_iter().skip(skip));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read the inbox file; starting empty")
                }
            }
        }
        let file = config
            .file
            .clone()
            .map(|path| Mutex::new(InboxFile { path, lines }));
        Inbox {
            inner: Arc::new(Inner {
                limiter: Mutex::new(RateLimiter {
                    burst: config.burst.max(1),
                    refill: config.refill.max(Duration::from_millis(1)),
                    buckets: HashMap::new(),
                }),
                config: InboxConfig { capacity, ..config },
                recent: Mutex::new(recent),
                file,
                received: AtomicU64::new(0),
            }),
        }
    }

    /// Checks, rate-limits, logs and stores one unsigned message from
    /// `source` (an older peer's `Message`).
    pub async fn deliver(
        &self,
        source: IpAddr,
        from: String,
        text: String,
        sender: Option<PeerId>,
    ) -> Result<(), DeliveryRefused> {
        self.deliver_signed(source, from, text, sender, None).await
    }

    /// [`Inbox::deliver`] for a message that may carry its sender's
    /// signature: one that does not verify with `sender` (the key the
    /// connection proved) as signer and this process's key as receiver is
    /// refused with [`DeliveryRefused::BadSignature`].
    pub async fn deliver_signed(
        &self,
        source: IpAddr,
        from: String,
        text: String,
        sender: Option<PeerId>,
        signature: Option<MessageSignature>,
    ) -> Result<(), DeliveryRefused> {
        // The limit comes first, so that a flood of bad messages is limited too.
        lock(&self.inner.limiter).take(source, Instant::now())?;
        validate_nick(&from)?;
        validate_message_text(&text)?;
        if let Some(sig) = &signature {
            let me = common::secure::Security::process().peer_id();
            let good = match (sender, me) {
                (Some(sender), Some(me)) => common::im::verify_message(
                    &sender,
                    &me,
                    sig.sent_unix_ms,
                    &from,
                    &text,
                    &sig.signature,
                ),
                // Clear text proves no key to check a signature against.
                _ => false,
            };
            if !good {
                return Err(DeliveryRefused::BadSignature);
            }
        }
        let verified = match (sender, &self.inner.config.sender_check) {
            (None, _) => Some(false),
            (Some(id), Some(check)) => {
                tokio::time::timeout(SENDER_CHECK_TIMEOUT, check(from.clone(), id))
                    .await
                    .ok()
                    .flatten()
            }
            (Some(_), None) => None,
        };
        let message = InboxMessage {
            sender_id: sender.map(|id| id.to_string()),
            verified,
            signature: signature.as_ref().map(|s| hex::encode(&s.signature)),
            sent_unix_ms: signature.as_ref().map(|s| s.sent_unix_ms),
            from,
            source: source.to_string(),
            received_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            text,
        };
        // Debug formatting escapes the newlines and tabs a message may hold.
        info!(from = %message.from, %source, verified = ?message.verified, text = ?message.text, "message received");
        {
            let mut recent = lock(&self.inner.recent);
            recent.push_back(message.clone());
            while recent.len() > self.inner.config.capacity {
                recent.pop_front();
            }
        }
        self.inner.received.fetch_add(1, Ordering::Relaxed);
        if self.inner.file.is_some() {
            let inner = self.inner.clone();
            let written = tokio::task::spawn_blocking(move || inner.append(&message)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot write the inbox file; the message is kept in memory only")
                }
                Err(e) => warn!(error = %e, "inbox writer failed"),
            }
        }
        Ok(())
    }

    /// The kept messages, oldest first.
    pub fn recent(&self) -> Vec<InboxMessage> {
        lock(&self.inner.recent).iter().cloned().collect()
    }

    /// Messages taken since the inbox was opened.
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// The answer to a `Message` request: `Delivered` or a refusal.
    pub async fn answer(
        &self,
        source: IpAddr,
        from: String,
        text: String,
        sender: Option<PeerId>,
        signature: Option<MessageSignature>,
    ) -> PeerResponse {
        match self
            .deliver_signed(source, from, text, sender, signature)
            .await
        {
            Ok(()) => PeerResponse::Delivered,
            Err(e) => {
                // A flood is refused without filling the log.
                if matches!(e, DeliveryRefused::RateLimited { .. }) {
                    debug!(%source, error = %e, "message refused");
                } else {
                    info!(%source, error = %e, "message refused");
                }
                PeerResponse::Error {
                    code: e.code(),
                    message: e.to_string(),
                }
            }
        }
    }
}

impl Inner {
    /// Appends one line; rewrites the file with the kept messages when it
    /// has reached twice the capacity.
    fn append(&self, message: &InboxMessage) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut file = lock(file);
        if let Some(dir) = file.path.parent() {
            // Only the cache folder itself (`SHARE/.p2pshare`), never the
            // shared folder: one moved away must not reappear, empty.
            match std::fs::create_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        if file.lines + 1 >= 2 * self.config.capacity {
            // Rebuilt from the file itself (not from memory, where a message
            // still being appended by another call may already sit).
            let mut kept = match read_file(&file.path) {
                Ok(old) => old,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            };
            kept.push(message.clone());
            let kept = &kept[kept.len().saturating_sub(self.config.capacity)..];
            let tmp = file.path.with_extension("jsonl.tmp");
            let mut out = open_private(&tmp, false)?;
            for m in kept {
                out.write_all(&json_line(m)?)?;
            }
            out.sync_all()?;
            drop(out);
            // Rename is atomic: a reader sees the old file or the new one.
            std::fs::rename(&tmp, &file.path)?;
            file.lines = kept.len();
        } else {
            open_private(&file.path, true)?.write_all(&json_line(message)?)?;
            file.lines += 1;
        }
        Ok(())
    }
}

fn json_line(m: &InboxMessage) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// Opens for appending or truncating, created with owner-only permissions.
fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The inbox file of a shared folder: `SHARE/.p2pshare/inbox.jsonl`.
pub fn inbox_file_in(share: &Path) -> PathBuf {
    share.join(".p2pshare").join(INBOX_FILE)
}

/// Reads an inbox file, oldest first. Lines that do not parse (one being
/// written right now, say) are skipped; only the last 8 MiB are read.
pub fn read_file(path: &Path) -> std::io::Result<Vec<InboxMessage>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX_READ_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(MAX_READ_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    if start > 0 {
        lines.next(); // probably cut in the middle
    }
    Ok(lines
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_allows_a_burst_then_one_per_refill() {
        let mut limiter = RateLimiter {
            burst: 3,
            refill: Duration::from_secs(1),
            buckets: HashMap::new(),
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.take(ip("10.0.0.1"), t0).unwrap();
        }
        let refused = limiter.take(ip("10.0.0.1"), t0).unwrap_err();
        assert!(matches!(refused, DeliveryRefused::RateLimited { .. }));
        // Another source has its own bucket.
        limiter.take(ip("10.0.0.2"), t0).unwrap();
        // One token back after one refill period, not two.
        let t1 = t0 + Duration::from_millis(1000);
        limiter.take(ip("10.0.0.1"), t1).unwrap();
        assert!(limiter.take(ip("10.0.0.1"), t1).is_err());
        // Never more than the burst, however long the wait.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            limiter.take(ip("10.0.0.1"), t2).unwrap();
        }
        assert!(limiter.take(ip("10.0.0.1"), t2).is_err());
    }

    #[test]
    fn ipv6_senders_are_limited_by_their_64() {
        assert_eq!(
            rate_key(ip("2001:db8::1")),
            rate_key(ip("2001:db8::ffff:2"))
        );
        assert_ne!(rate_key(ip("2001:db8::1")), rate_key(ip("2001:db8:0:1::1")));
        assert_eq!(rate_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[tokio::test]
    async fn messages_are_checked_kept_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = inbox_file_in(dir.path());
        let config = InboxConfig {
            capacity: 3,
            burst: 100,
            file: Some(path.clone()),
            ..InboxConfig::default()
        };
        let inbox = Inbox::open(config.clone());
        let from = ip("127.0.0.1");
        assert!(matches!(
            inbox
                .deliver(from, "bad nick".into(), "hi".into(), None)
                .await,
            Err(DeliveryRefused::BadNick(_))
        ));
        assert!(matches!(
            inbox
                .deliver(from, "ana".into(), "x".repeat(5000), None)
                .await,
            Err(DeliveryRefused::BadText(MessageTextError::TooLong { .. }))
        ));
        for i in 0..10 {
            inbox
                .deliver(from, "ana".into(), format!("hello {i}\nline two"), None)
                .await
                .unwrap();
        }
        assert_eq!(inbox.received(), 10);
        let texts: Vec<String> = inbox.recent().into_iter().map(|m| m.text).collect();
        assert_eq!(texts.len(), 3);
        assert_eq!(texts[2], "hello 9\nline two");
        // The file holds at most twice the capacity and ends with the newest.
        let on_disk = read_file(&path).unwrap();
        assert!(on_disk.len() <= 6, "{} lines", on_disk.len());
        assert_eq!(on_disk.last().unwrap().text, "hello 9\nline two");
        // A restarted inbox starts from the file.
        let reopened = Inbox::open(config);
        assert_eq!(reopened.recent().last().unwrap().text, "hello 9\nline two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "inbox readable by others: {mode:o}");
        }
    }

    #[test]
    fn torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INBOX_FILE);
        let good = InboxMessage {
            from: "ana".into(),
            sender_id: None,
            verified: None,
            signature: None,
            sent_unix_ms: None,
            source: "127.0.0.1".into(),
            received_unix_ms: 1,
            text: "hi".into(),
        };
        let mut bytes = json_line(&good).unwrap();
        bytes.extend_from_slice(b"{\"from\":\"bo");
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_file(&path).unwrap(), vec![good]);
    }

    #[tokio::test]
    async fn a_sender_is_verified_against_the_key_its_connection_proved() {
        use common::identity::Identity;
        let ana = Identity::generate().peer_id();
        let check: SenderCheck = Arc::new(move |nick: String, id: PeerId| {
            Box::pin(async move { Some(nick == "ana" && id == ana) })
        });
        let inbox = Inbox::open(InboxConfig {
            burst: 100,
            sender_check: Some(check),
            ..InboxConfig::default()
        });
        let from = ip("127.0.0.1");
        let mallory = Identity::generate().peer_id();
        for (nick, key) in [("ana", Some(ana)), ("ana", Some(mallory)), ("ana", None)] {
            inbox
                .deliver(from, nick.into(), "hi".into(), key)
                .await
                .unwrap();
        }
        let got: Vec<(Option<bool>, Option<String>)> = inbox
            .recent()
            .into_iter()
            .map(|m| (m.verified, m.sender_id))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(true), Some(ana.to_string())),
                (Some(false), Some(mallory.to_string())),
                (Some(false), None),
            ]
        );
    }
}
