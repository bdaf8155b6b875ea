//! Encrypted, authenticated connections: the Noise handshake that follows
//! the hello, and the stream wrapper that carries the frames afterwards.
//!
//! ```text
//! client → server: hello (8 bytes, clear, flags CLIENT_SECURE | CLIENT_IDENTITY_STATIC)
//! server → client: hello (8 bytes, clear, features FEATURE_SECURE | FEATURE_IDENTITY_STATIC)
//! Noise_XX_25519_AESGCM_SHA256 (or XXpsk0 with a network key), prologue = both hellos:
//!   → e                      (psk0: already keyed with the network key)
//!   ← e, ee, s, es, payload  (payload: the server's ed25519 key)
//!   → s, se, payload         (payload: the client's ed25519 key)
//! then every message: length u16 BE | AES-256-GCM ciphertext (≤ 65,535 bytes)
//! ```
//!
//! Each handshake message is at most [`MAX_HANDSHAKE_MSG`] bytes after its
//! 2-byte length. The payload binds the Noise static X25519 key to the
//! node's ed25519 identity, in one of two ways chosen by the hellos
//! ([`crate::hello::identity_static`]):
//! - **identity static key** (both sides offer it; [`IDENTITY_PAYLOAD_LEN`]
//!   bytes): the static key *is* the identity key in X25519 form
//!   ([`Identity::noise_static_secret`], [`PeerId::noise_static_key`]), and
//!   the payload is the ed25519 public key, accepted only if its X25519
//!   form equals the static key the handshake proved. Completing `es`/`se`
//!   proves the secret, so no signature is needed: each side saves an
//!   ed25519 verification (about a third of a handshake's CPU).
//! - **signed** (a version-2 node without the feature; [`PAYLOAD_LEN`]
//!   bytes), as libp2p-noise does: a fresh static key per process, and
//!   the payload is the ed25519 public key, then its signature of
//!   [`BINDING_CONTEXT`] followed by the static key.
//!
//! After the handshake each side knows the other's
//! [`PeerId`]; a replayed or altered handshake message fails its AEAD check
//! (every message mixes both sides' fresh ephemeral keys), and a changed
//! hello fails the whole handshake (the hellos are the prologue).
//!
//! A network key (`--network-key`) is mixed in at the first message
//! (`psk0`): a node without it cannot produce or read any handshake
//! message of the network's nodes, and learns nothing about their keys.
//!
//! [`SecureStream`] is an `AsyncRead + AsyncWrite` over two halves of a
//! byte stream, so the frame code above is unchanged. With
//! [`Security::insecure`] it passes bytes through untouched (`--insecure`,
//! kept for the lab's comparison; both sides must choose it).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use snow::params::NoiseParams;
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::hello::Protocol;
use crate::identity::{Identity, PeerId};
use crate::limits::HELLO_TIMEOUT;
use crate::wire::{self, WireError};

mod resolver;

/// The Noise protocol without a network key.
pub const NOISE_XX: &str = "Noise_XX_25519_AESGCM_SHA256";
/// The Noise protocol with a network key (pre-shared key at the first message).
pub const NOISE_XX_PSK: &str = "Noise_XXpsk0_25519_AESGCM_SHA256";
/// Largest Noise message (ciphertext), as the Noise specification caps it.
pub const MAX_NOISE_MSG: usize = 65_535;
/// AES-GCM tag bytes per message.
const TAG_LEN: usize = 16;
/// Largest plaintext per transport message.
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MSG - TAG_LEN;
/// Largest handshake message accepted (XX's longest is 32+48+16+payload).
pub const MAX_HANDSHAKE_MSG: usize = 512;
/// What an ed25519 key signs to vouch for a Noise static key.
pub const BINDING_CONTEXT: &[u8] = b"p2pshare-noise-static-key:";
/// Bytes of a signed handshake payload: ed25519 public key, then signature.
pub const PAYLOAD_LEN: usize = 32 + 64;
/// Bytes of an identity-static handshake payload: the ed25519 public key.
pub const IDENTITY_PAYLOAD_LEN: usize = 32;
/// Bytes of a network key.
pub const NETWORK_KEY_LEN: usize = 32;

/// Why an encrypted connection could not be set up or went on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    #[error("the encrypted handshake failed ({0}): the other side has a different --network-key (or none), or is not a p2pshare node")]
    Handshake(String),
    #[error("the other side closed the connection during the encrypted handshake: it may have a different --network-key (or none), or refused our key")]
    Cut,
    #[error("a handshake message of {0} bytes is longer than the {MAX_HANDSHAKE_MSG}-byte limit")]
    TooLong(usize),
    #[error("the other side's handshake payload is malformed ({0} bytes, expected {PAYLOAD_LEN} or {IDENTITY_PAYLOAD_LEN})")]
    Payload(usize),
    #[error("the other side's identity key does not sign its handshake key: refusing an impostor or a broken node")]
    Binding,
    #[error("impostor: expected peer {expected}, but the other side proved to be {got}")]
    WrongPeer { expected: PeerId, got: PeerId },
}

/// How this node opens and accepts connections: its keys (encrypting) or
/// clear text (`--insecure`). Cheap to clone.
#[derive(Clone)]
pub struct Security(Option<Arc<Keys>>);

#[derive(Clone)]
struct Keys {
    identity: Identity,
    /// The signed mode's static key (fresh per process) and payload.
    static_private: Vec<u8>,
    payload: [u8; PAYLOAD_LEN],
    /// The identity-static mode's static key: the identity key in X25519
    /// form, and its public half (so that no handshake derives it again).
    identity_static: [u8; 32],
    identity_static_public: [u8; 32],
    /// The identity-static mode's payload: our ed25519 public key.
    identity_payload: [u8; IDENTITY_PAYLOAD_LEN],
    network_key: Option<[u8; NETWORK_KEY_LEN]>,
    /// Parsed once: the protocol name.
    params: NoiseParams,
    /// Whether to offer (client) and take (server) identity static keys;
    /// `false` only to act as a node from before that feature.
    offer_identity_static: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Security(insecure)"),
            Some(k) => write!(
                f,
                "Security({:?}, network key: {})",
                k.identity.peer_id(),
                k.network_key.is_some()
            ),
        }
    }
}

fn params(psk: bool) -> NoiseParams {
    let name = if psk { NOISE_XX_PSK } else { NOISE_XX };
    name.parse().expect("a valid Noise protocol name")
}

static PROCESS: OnceLock<Security> = OnceLock::new();

impl Security {
    /// Encrypting with `identity`, in the private network of `network_key`
    /// when given. Draws a fresh Noise static key and signs it.
    pub fn new(identity: Identity, network_key: Option<[u8; NETWORK_KEY_LEN]>) -> Security {
        let keypair = snow::Builder::new(params(false))
            .generate_keypair()
            .expect("the Noise resolver has X25519 and a random source");
        let mut signed = BINDING_CONTEXT.to_vec();
        signed.extend_from_slice(&keypair.public);
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..32].copy_from_slice(&identity.peer_id().0);
        payload[32..].copy_from_slice(&identity.sign(&signed));
        let identity_static = identity.noise_static_secret();
        let identity_static_public = identity
            .peer_id()
            .noise_static_key()
            .expect("our own public key is a valid point");
        Security(Some(Arc::new(Keys {
            identity_payload: identity.peer_id().0,
            identity,
            static_private: keypair.private,
            payload,
            identity_static,
            identity_static_public,
            params: params(network_key.is_some()),
            network_key,
            offer_identity_static: true,
        })))
    }

    /// The same keys acting as a version-2 node from before
    /// [`crate::hello::FEATURE_IDENTITY_STATIC`]: always the signed
    /// handshake. For compatibility tests and the benchmark's baseline.
    pub fn signed_only(self) -> Security {
        Security(self.0.map(|keys| {
            let mut keys = Arc::unwrap_or_clone(keys);
            keys.offer_identity_static = false;
            Arc::new(keys)
        }))
    }

    /// Whether handshakes offer (client) or take (server) the identity
    /// static key ([`crate::hello::FEATURE_IDENTITY_STATIC`]).
    pub fn offers_identity_static(&self) -> bool {
        self.0.as_ref().is_some_and(|k| k.offer_identity_static)
    }

    /// Clear text (`--insecure`): no handshake, no identity proven.
    pub fn insecure() -> Security {
        Security(None)
    }

    /// Whether connections are encrypted.
    pub fn encrypts(&self) -> bool {
        self.0.is_some()
    }

    /// This node's id, when encrypting.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.0.as_ref().map(|k| k.identity.peer_id())
    }

    /// This node's identity, when encrypting.
    pub fn identity(&self) -> Option<&Identity> {
        self.0.as_ref().map(|k| &k.identity)
    }

    /// Whether a network key is in use.
    pub fn has_network_key(&self) -> bool {
        self.0.as_ref().is_some_and(|k| k.network_key.is_some())
    }

    /// Sets the process's security, once, before its first connection
    /// (the binaries do so from `--key`, `--network-key` and `--insecure`).
    /// Returns the one already in force if it was set (or used) before.
    pub fn install(security: Security) -> Result<(), Security> {
        PROCESS.set(security)
    }

    /// The process's security: the one [`Security::install`]ed or, in
    /// programs and tests that never install one, encrypting with a key
    /// made for this process.
    pub fn process() -> Security {
        PROCESS
            .get_or_init(|| Security::new(Identity::generate(), None))
            .clone()
    }

    /// The handshake builder for the mode the hellos chose
    /// ([`crate::hello::identity_static`]), and the payload to send.
    fn builder(&self, identity_static: bool) -> Option<(snow::Builder<'_>, &[u8])> {
        let keys = self.0.as_deref()?;
        let resolver = Box::new(resolver::Resolver::new(
            keys.identity_static,
            keys.identity_static_public,
        ));
        let b = snow::Builder::with_resolver(keys.params.clone(), resolver);
        let (private, payload): (&[u8], &[u8]) = if identity_static {
            (&keys.identity_static, &keys.identity_payload)
        } else {
            (&keys.static_private, &keys.payload[..])
        };
        let b = b.local_private_key(private).expect("a 32-byte X25519 key");
        let b = match &keys.network_key {
            Some(psk) => b.psk(0, psk).expect("psk0 in an XXpsk0 pattern"),
            None => b,
        };
        Some((b, payload))
    }
}

/// The outcome of a handshake: the transport keys and the other side's id
/// (both absent in clear text).
pub struct Session {
    transport: Option<Arc<StatelessTransportState>>,
    remote: Option<PeerId>,
}

impl Session {
    /// A clear-text session (`--insecure`).
    pub fn clear() -> Session {
        Session {
            transport: None,
            remote: None,
        }
    }

    /// The other side's proven id (`None` in clear text).
    pub fn remote(&self) -> Option<PeerId> {
        self.remote
    }
}

fn noise_err(e: snow::Error) -> WireError {
    WireError::Secure(SecureError::Handshake(e.to_string()))
}

async fn send_hs<S: AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> Result<(), WireError> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await?;
    s.flush().await?;
    Ok(())
}

async fn recv_hs<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 2];
    let cut = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            WireError::Secure(SecureError::Cut)
        }
        _ => WireError::Io(e),
    };
    s.read_exact(&mut len).await.map_err(cut)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MSG {
        return Err(SecureError::TooLong(len).into());
    }
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await.map_err(cut)?;
    Ok(msg)
}

/// Checks a handshake payload against the Noise static key it must vouch
/// for; the other side's id on success. The decoder the fuzz target runs.
pub fn check_payload(payload: &[u8], remote_static: &[u8]) -> Result<PeerId, SecureError> {
    if payload.len() != PAYLOAD_LEN {
        return Err(SecureError::Payload(payload.len()));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&payload[..32]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&payload[32..]);
    let id = PeerId::from_bytes(key).map_err(|_| SecureError::Binding)?;
    let mut signed = BINDING_CONTEXT.to_vec();
    signed.extend_from_slice(remote_static);
    if !id.verify(&signed, &sig) {
        return Err(SecureError::Binding);
    }
    Ok(id)
}

/// Checks an identity-static handshake payload (an ed25519 public key)
/// against the Noise static key the handshake proved: the key's X25519
/// form must be that static key. The other side's id on success.
pub fn check_identity_payload(payload: &[u8], remote_static: &[u8]) -> Result<PeerId, SecureError> {
    let key: [u8; IDENTITY_PAYLOAD_LEN] = payload
        .try_into()
        .map_err(|_| SecureError::Payload(payload.len()))?;
    let id = PeerId(key);
    match id.noise_static_key() {
        Some(x) if x[..] == *remote_static => Ok(id),
        _ => Err(SecureError::Binding),
    }
}

fn remote_id(
    hs: &snow::HandshakeState,
    payload: &[u8],
    identity_static: bool,
) -> Result<PeerId, WireError> {
    let remote_static = hs
        .get_remote_static()
        .ok_or_else(|| SecureError::Handshake("no static key received".into()))?;
    if identity_static {
        Ok(check_identity_payload(payload, remote_static)?)
    } else {
        Ok(check_payload(payload, remote_static)?)
    }
}

/// Client side: hello, then (encrypting) the Noise handshake as initiator.
/// Returns the session and the server's feature bits; with `expect`, a
/// server that proves another id is refused ([`SecureError::WrongPeer`]).
/// The whole exchange must end within [`HELLO_TIMEOUT`].
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    protocol: Protocol,
    security: &Security,
    expect: Option<PeerId>,
) -> Result<(Session, u8), WireError> {
    let (ours, theirs) = wire::client_hello_exchange_offering(
        s,
        protocol,
        security.encrypts(),
        security.offers_identity_static(),
    )
    .await?;
    let features = crate::hello::server_features(&theirs);
    let identity_static = crate::hello::identity_static(&ours, &theirs);
    let Some((builder, our_payload)) = security
        .builder(identity_static)
        .filter(|_| protocol != Protocol::Relay)
    else {
        return Ok((Session::clear(), features));
    };
    let run = async {
        let prologue = [ours, theirs].concat();
        let mut hs = builder
            .prologue(&prologue)
            .map_err(noise_err)?
            .build_initiator()
            .map_err(noise_err)?;
        let mut buf = [0u8; MAX_HANDSHAKE_MSG];
        let n = hs.write_message(&[], &mut buf).map_err(noise_err)?;
        send_hs(s, &buf[..n]).await?;
        let msg = recv_hs(s).await?;
        let mut payload = [0u8; MAX_HANDSHAKE_MSG];
        let n = hs.read_message(&msg, &mut payload).map_err(noise_err)?;
        let remote = remote_id(&hs, &payload[..n], identity_static)?;
        if let Some(expected) = expect {
            if expected != remote {
                return Err(SecureError::WrongPeer {
                    expected,
                    got: remote,
                }
                .into());
            }
        }
        let n = hs.write_message(our_payload, &mut buf).map_err(noise_err)?;
        send_hs(s, &buf[..n]).await?;
        let transport = hs.into_stateless_transport_mode().map_err(noise_err)?;
        Ok::<_, WireError>(Session {
            transport: Some(Arc::new(transport)),
            remote: Some(remote),
        })
    };
    let session = tokio::time::timeout(HELLO_TIMEOUT, run)
        .await
        .map_err(|_| WireError::Timeout("the encrypted handshake"))??;
    Ok((session, features))
}

/// Server side: hello (see [`wire::server_hello_exchange`] for `busy` and
/// `features`), then (encrypting) the Noise handshake as responder.
/// The whole exchange must end within [`HELLO_TIMEOUT`] after the hello.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    accepted: &[Protocol],
    busy: impl FnOnce(Protocol) -> bool,
    features: impl FnOnce(Protocol) -> u8,
    security: &Security,
) -> Result<(Protocol, Session), WireError> {
    let (protocol, theirs, ours) = wire::server_hello_exchange_offering(
        s,
        accepted,
        busy,
        features,
        security.encrypts(),
        security.offers_identity_static(),
    )
    .await?;
    let identity_static = crate::hello::identity_static(&theirs, &ours);
    let Some((builder, our_payload)) = security
        .builder(identity_static)
        .filter(|_| protocol != Protocol::Relay)
    else {
        return Ok((protocol, Session::clear()));
    };
    let run = async {
        let prologue = [theirs, ours].concat();
        let mut hs = builder
            .prologue(&prologue)
            .map_err(noise_err)?
            .build_responder()
            .map_err(noise_err)?;
        let mut buf = [0u8; MAX_HANDSHAKE_MSG];
        let msg = recv_hs(s).await?;
        hs.read_message(&msg, &mut buf).map_err(noise_err)?;
        let n = hs.write_message(our_payload, &mut buf).map_err(noise_err)?;
        send_hs(s, &buf[..n]).await?;
        let msg = recv_hs(s).await?;
        let n = hs.read_message(&msg, &mut buf).map_err(noise_err)?;
        let remote = remote_id(&hs, &buf[..n], identity_static)?;
        let transport = hs.into_stateless_transport_mode().map_err(noise_err)?;
        Ok::<_, WireError>(Session {
            transport: Some(Arc::new(transport)),
            remote: Some(remote),
        })
    };
    let session = tokio::time::timeout(HELLO_TIMEOUT, run)
        .await
        .map_err(|_| WireError::Timeout("the encrypted handshake"))??;
    Ok((protocol, session))
}

/// A connection after its handshake: frames in, frames out, encrypted or
/// (`--insecure`) passed through. Made of a read and a write half so that
/// it splits into owned halves ([`SecureStream::into_split`]).
pub struct SecureStream<R, W> {
    reader: SecureRead<R>,
    writer: SecureWrite<W>,
    remote: Option<PeerId>,
}

impl<R, W> std::fmt::Debug for SecureStream<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("encrypted", &self.encrypted())
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl<R, W> SecureStream<R, W> {
    /// Wraps the two halves of the stream `session` was set up on.
    pub fn new(r: R, w: W, session: Session) -> Self {
        SecureStream {
            remote: session.remote,
            reader: SecureRead {
                inner: r,
                cipher: session.transport.clone(),
                nonce: 0,
                raw: Vec::new(),
                raw_start: 0,
                raw_end: 0,
                last_len: 0,
                plain: Vec::new(),
                plain_pos: 0,
            },
            writer: SecureWrite {
                inner: w,
                cipher: session.transport,
                nonce: 0,
                plain: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
            },
        }
    }

    /// The other side's proven id (`None` in clear text).
    pub fn remote(&self) -> Option<PeerId> {
        self.remote
    }

    /// Whether the bytes are encrypted.
    pub fn encrypted(&self) -> bool {
        self.reader.cipher.is_some()
    }

    /// The two halves of a clear-text stream (`--insecure`, or the relay's
    /// own leg), to use it raw; `None` (the stream dropped) when it
    /// encrypts.
    pub fn into_clear(self) -> Option<(R, W)> {
        if self.encrypted() {
            return None;
        }
        Some((self.reader.inner, self.writer.inner))
    }

    /// The two halves, each usable on its own task.
    pub fn into_split(self) -> (SecureRead<R>, SecureWrite<W>) {
        (self.reader, self.writer)
    }

    /// The underlying read half (for `readable`-style probes).
    pub fn get_ref(&self) -> (&R, &W) {
        (&self.reader.inner, &self.writer.inner)
    }
}

/// The read half of a [`SecureStream`].
pub struct SecureRead<R> {
    inner: R,
    cipher: Option<Arc<StatelessTransportState>>,
    nonce: u64,
    /// Ciphertext read and not yet decrypted: `raw[raw_start..raw_end]`.
    /// While in use, [`RAW_CAP`] bytes allocated once (no zeroing per read).
    raw: Vec<u8>,
    raw_start: usize,
    raw_end: usize,
    /// Ciphertext length of the last message opened: a connection whose
    /// messages are small (requests, an index session) gets a
    /// [`SMALL_CAP`] buffer and gives it back whenever it drains; one
    /// carrying large messages (chunk data) keeps its [`RAW_CAP`] buffer
    /// between reads. Before, every drained read freed the buffer and the
    /// next one allocated and zeroed 80 KiB again: 10% of all CPU time
    /// with 128 peer processes swarming at 1 MB/s (docs/benchmarks.md).
    last_len: usize,
    /// Decrypted bytes not yet handed out, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
}

/// Bytes read beyond the message being received (the next one's start).
const READ_AHEAD: usize = 16 * 1024;
/// The read buffer: a whole largest message and [`READ_AHEAD`].
const RAW_CAP: usize = 2 + MAX_NOISE_MSG + READ_AHEAD;
/// The read buffer of a connection of small messages; grown to
/// [`RAW_CAP`] when a larger message arrives.
const SMALL_CAP: usize = 4 * 1024;

impl<R> SecureRead<R> {
    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Whether bytes are waiting to be read without touching the socket:
    /// decrypted ones, or a whole encrypted message read ahead.
    pub fn has_buffered(&self) -> bool {
        if self.plain_pos < self.plain.len() {
            return true;
        }
        let avail = self
            .raw
            .get(self.raw_start..self.raw_end)
            .unwrap_or_default();
        avail.len() >= 2 && avail.len() >= 2 + u16::from_be_bytes([avail[0], avail[1]]) as usize
    }

    /// The ciphertext length of the whole message at the front of `raw`,
    /// if one is there.
    fn next_message(&self) -> io::Result<Option<usize>> {
        let avail = self
            .raw
            .get(self.raw_start..self.raw_end)
            .unwrap_or_default();
        if avail.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        if len < TAG_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an encrypted message shorter than its tag",
            ));
        }
        Ok((avail.len() >= 2 + len).then_some(len))
    }

    /// Decrypts the message of ciphertext length `len` at the front of
    /// `raw` into `out` (at least `len - TAG_LEN` bytes); its plaintext
    /// length.
    fn open(&mut self, len: usize, out: &mut [u8]) -> io::Result<usize> {
        let cipher = self.cipher.as_ref().expect("only called when encrypting");
        let at = self.raw_start + 2;
        let n = cipher
            .read_message(self.nonce, &self.raw[at..at + len], out)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an encrypted message failed its check (altered, replayed or reordered on the way)",
                )
            })?;
        self.nonce += 1;
        self.raw_start += 2 + len;
        self.last_len = len;
        Ok(n)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SecureRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cipher.is_none() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if this.plain_pos < this.plain.len() {
                let n = (this.plain.len() - this.plain_pos).min(buf.remaining());
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(len) = this.next_message()? {
                let plain_len = len - TAG_LEN;
                if buf.remaining() >= plain_len {
                    // Straight into the caller's buffer: one copy less
                    // (a chunk read lands in the chunk buffer).
                    let n = this.open(len, buf.initialize_unfilled_to(plain_len))?;
                    buf.advance(n);
                    if n > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                let mut plain = std::mem::take(&mut this.plain);
                plain.resize(plain_len, 0);
                let opened = this.open(len, &mut plain);
                this.plain = plain;
                let n = opened?;
                this.plain.truncate(n);
                this.plain_pos = 0;
                continue;
            }
            // Move the partial message to the front, then read more: the
            // rest of the message begun, and some of the next.
            if this.raw_start > 0 {
                this.raw.copy_within(this.raw_start..this.raw_end, 0);
                this.raw_end -= this.raw_start;
                this.raw_start = 0;
            }
            // A whole message must fit: its length is known once 2 bytes are in.
            let pending = match this.raw.get(..this.raw_end) {
                Some([hi, lo, ..]) => 2 + u16::from_be_bytes([*hi, *lo]) as usize,
                _ => 0,
            };
            let large = this.last_len > SMALL_CAP || pending > SMALL_CAP;
            let want = if large { RAW_CAP } else { SMALL_CAP };
            if this.raw.len() < want {
                let mut raw = vec![0u8; want];
                raw[..this.raw_end].copy_from_slice(&this.raw[..this.raw_end]);
                this.raw = raw;
            }
            let mut rb = ReadBuf::new(&mut this.raw[this.raw_end..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            this.raw_end += got;
            if polled.is_pending() && this.raw_end == 0 && !large {
                // Idle between small messages (an index session, most of
                // its life): an idle connection holds no buffers.
                this.raw = Vec::new();
                this.plain = Vec::new();
                this.plain_pos = 0;
            }
            ready!(polled)?;
            if got == 0 {
                return if this.raw_end == 0 {
                    Poll::Ready(Ok(())) // closed between messages
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of an encrypted message",
                    )))
                };
            }
        }
    }
}

/// The write half of a [`SecureStream`].
pub struct SecureWrite<W> {
    inner: W,
    cipher: Option<Arc<StatelessTransportState>>,
    nonce: u64,
    /// Plaintext gathered for the next message (at most [`MAX_PLAINTEXT`]).
    plain: Vec<u8>,
    /// Sealed messages not yet written, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
}

impl<W> SecureWrite<W> {
    /// Whether bytes go out in clear text (then [`SecureWrite::get_ref`]'s
    /// socket may be written directly, e.g. by `sendfile`, once flushed).
    pub fn is_clear(&self) -> bool {
        self.cipher.is_none()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Encrypts the gathered plaintext into one message at the end of `out`.
    fn seal(&mut self) -> io::Result<()> {
        if self.plain.is_empty() {
            return Ok(());
        }
        let plain = std::mem::take(&mut self.plain);
        let sealed = self.seal_slice(&plain);
        self.plain = plain;
        self.plain.clear();
        sealed
    }

    /// Encrypts `plain` (at most [`MAX_PLAINTEXT`] bytes) into one message
    /// at the end of `out`.
    fn seal_slice(&mut self, plain: &[u8]) -> io::Result<()> {
        let cipher = self.cipher.as_ref().expect("only called when encrypting");
        let len = plain.len() + TAG_LEN;
        let at = self.out.len();
        self.out.resize(at + 2 + len, 0);
        self.out[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
        cipher
            .write_message(self.nonce, plain, &mut self.out[at + 2..])
            .map_err(|e| io::Error::other(format!("encryption failed: {e}")))?;
        self.nonce += 1;
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> SecureWrite<W> {
    /// Writes out every sealed message.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SecureWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cipher.is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.plain.len() == MAX_PLAINTEXT {
            ready!(this.poll_drain(cx))?;
            this.seal()?;
        }
        if this.plain.is_empty() && buf.len() >= MAX_PLAINTEXT {
            // A whole message straight from the caller's bytes: one copy less.
            ready!(this.poll_drain(cx))?;
            this.seal_slice(&buf[..MAX_PLAINTEXT])?;
            return Poll::Ready(Ok(MAX_PLAINTEXT));
        }
        if this.plain.capacity() == 0 {
            this.plain.reserve_exact(MAX_PLAINTEXT);
        }
        let n = buf.len().min(MAX_PLAINTEXT - this.plain.len());
        this.plain.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cipher.is_some() {
            if !this.plain.is_empty() {
                ready!(this.poll_drain(cx))?;
                this.seal()?;
            }
            ready!(this.poll_drain(cx))?;
            // Between bursts a connection holds no buffers.
            this.plain = Vec::new();
            this.out = Vec::new();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for SecureStream<R, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for SecureStream<R, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{split, DuplexStream};

    type Pipe = SecureStream<tokio::io::ReadHalf<DuplexStream>, tokio::io::WriteHalf<DuplexStream>>;

    fn wrap(s: DuplexStream, session: Session) -> Pipe {
        let (r, w) = split(s);
        SecureStream::new(r, w, session)
    }

    /// Runs a client and a server handshake on a pipe.
    async fn pair(
        client_sec: Security,
        server_sec: Security,
        expect: Option<PeerId>,
    ) -> (Result<Pipe, WireError>, Result<Pipe, WireError>) {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let r = server(&mut b, &[Protocol::Peer], |_| false, |_| 0, &server_sec).await;
            r.map(|(_, s)| wrap(b, s))
        });
        let c = client(&mut a, Protocol::Peer, &client_sec, expect).await;
        let c = c.map(|(s, _)| wrap(a, s));
        (c, srv.await.unwrap())
    }

    #[tokio::test]
    async fn both_sides_learn_each_others_id_and_bytes_round_trip() {
        let (ci, si) = (Identity::generate(), Identity::generate());
        let (c, s) = pair(
            Security::new(ci.clone(), None),
            Security::new(si.clone(), None),
            Some(si.peer_id()),
        )
        .await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.remote(), Some(si.peer_id()));
        assert_eq!(s.remote(), Some(ci.peer_id()));
        assert!(c.encrypted());
        // Larger than several Noise messages, in odd pieces.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(70_001) {
                c.write_all(piece).await.unwrap();
            }
            c.flush().await.unwrap();
            c.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, data);
    }

    /// A drained connection of small messages gives its read buffer back;
    /// one carrying large messages keeps it (allocating and zeroing 80 KiB
    /// per drained read was 10% of a 128-peer swarm's CPU).
    #[tokio::test]
    async fn read_buffers_are_kept_for_bulk_and_given_back_when_idle() {
        let (c, s) = pair(
            Security::new(Identity::generate(), None),
            Security::new(Identity::generate(), None),
            None,
        )
        .await;
        let (_cr, mut cw) = c.unwrap().into_split();
        let (mut sr, _sw) = s.unwrap().into_split();
        // Polls once without waiting: Pending when nothing is there.
        let drained = |sr: &mut SecureRead<tokio::io::ReadHalf<DuplexStream>>| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut byte = [0u8; 1];
            let mut rb = ReadBuf::new(&mut byte);
            Pin::new(sr).poll_read(&mut cx, &mut rb).is_pending()
        };
        let mut got = vec![0u8; 60_000];
        // (message size, buffer while reading it, buffer once drained)
        let steps = [
            (100, SMALL_CAP, 0),
            (60_000, RAW_CAP, RAW_CAP),
            (200, RAW_CAP, 0),
            (300, SMALL_CAP, 0),
            (60_000, RAW_CAP, RAW_CAP),
        ];
        for (size, held, kept) in steps {
            let data = vec![7u8; size];
            cw.write_all(&data).await.unwrap();
            cw.flush().await.unwrap();
            sr.read_exact(&mut got[..size]).await.unwrap();
            assert_eq!(&got[..size], &data[..]);
            assert_eq!(sr.raw.len(), held, "reading {size}-byte messages");
            assert!(drained(&mut sr), "nothing more was sent");
            assert_eq!(sr.raw.len(), kept, "after {size}-byte messages");
        }
    }

    #[tokio::test]
    async fn an_impostor_is_refused() {
        let expected = Identity::generate().peer_id();
        let (c, _s) = pair(
            Security::new(Identity::generate(), None),
            Security::new(Identity::generate(), None),
            Some(expected),
        )
        .await;
        let err = c.err().unwrap();
        assert!(
            matches!(err, WireError::Secure(SecureError::WrongPeer { expected: e, .. }) if e == expected),
            "{err:?}"
        );
        assert!(err.to_string().contains("impostor"));
    }

    #[tokio::test]
    async fn network_keys_must_match() {
        let net = Some([9u8; 32]);
        let cases = [(net, Some([8u8; 32])), (net, None), (None, net)];
        for (ck, sk) in cases {
            let (c, s) = pair(
                Security::new(Identity::generate(), ck),
                Security::new(Identity::generate(), sk),
                None,
            )
            .await;
            // Neither side completes: the first message already fails.
            let s_err = s.expect_err("the server refuses");
            assert!(matches!(s_err, WireError::Secure(_)), "{s_err:?}");
            let c_err = c.expect_err("the client cannot finish");
            assert!(
                matches!(
                    c_err,
                    WireError::Secure(SecureError::Cut | SecureError::Handshake(_))
                ),
                "{c_err:?}"
            );
            assert!(c_err.to_string().contains("--network-key"));
        }
        let (c, s) = pair(
            Security::new(Identity::generate(), net),
            Security::new(Identity::generate(), net),
            None,
        )
        .await;
        assert!(c.is_ok() && s.is_ok());
    }

    #[tokio::test]
    async fn clear_text_needs_both_sides() {
        let (c, s) = pair(Security::insecure(), Security::insecure(), None).await;
        let (c, s) = (c.unwrap(), s.unwrap());
        assert!(!c.encrypted() && !s.encrypted() && c.remote().is_none());
        let (c, s) = pair(
            Security::insecure(),
            Security::new(Identity::generate(), None),
            None,
        )
        .await;
        assert!(matches!(
            c.err().unwrap(),
            WireError::Hello(crate::hello::HelloError::SecurityMismatch { we_encrypt: false })
        ));
        assert!(s.is_err());
    }

    /// A server handshake fed `bytes` after a valid secure hello.
    async fn server_fed(bytes: Vec<u8>) -> WireError {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let sec = Security::new(Identity::generate(), None);
            server(&mut b, &[Protocol::Peer], |_| false, |_| 0, &sec)
                .await
                .err()
                .expect("refused")
        });
        let hello =
            crate::hello::client_hello_with_flags(Protocol::Peer, crate::hello::CLIENT_SECURE);
        a.write_all(&hello).await.unwrap();
        a.write_all(&bytes).await.unwrap();
        let mut answer = [0u8; 8];
        a.read_exact(&mut answer).await.unwrap();
        drop(a);
        srv.await.unwrap()
    }

    #[tokio::test]
    async fn garbage_truncated_and_oversized_handshakes_are_refused() {
        let err = server_fed(vec![0, 5, 1, 2, 3]).await;
        assert!(
            matches!(err, WireError::Secure(SecureError::Cut)),
            "{err:?}"
        );
        let err = server_fed(vec![0xFF, 0xFF, 1]).await;
        assert!(
            matches!(err, WireError::Secure(SecureError::TooLong(65535))),
            "{err:?}"
        );
        let err = server_fed(vec![0, 3, 1, 2, 3]).await;
        assert!(
            matches!(err, WireError::Secure(SecureError::Handshake(_))),
            "{err:?}"
        );
        let mut junk = vec![0, 32];
        junk.extend([0x55; 32]);
        // A well-sized first message of junk is a valid ephemeral key in XX,
        // so the server answers and then waits for a third message that
        // never comes: it is cut, never accepted.
        let err = server_fed(junk).await;
        assert!(matches!(err, WireError::Secure(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_replayed_handshake_is_refused() {
        // Record a client's messages to one server, then replay them to
        // another run of the same server keys.
        let server_sec = Security::new(Identity::generate(), None);
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let s1 = server_sec.clone();
        let srv = tokio::spawn(async move {
            server(&mut b, &[Protocol::Peer], |_| false, |_| 0, &s1)
                .await
                .is_ok()
        });
        // A recording relay between the client and the server.
        let (mut c, mut relay_c) = tokio::io::duplex(1 << 16);
        let recorded = tokio::spawn(async move {
            let mut seen = Vec::new();
            let (mut buf, mut back) = ([0u8; 4096], [0u8; 4096]);
            let (mut ar, mut aw) = split(a);
            let (mut rr, mut rw) = split(&mut relay_c);
            loop {
                tokio::select! {
                    n = rr.read(&mut buf) => {
                        let n = n.unwrap();
                        if n == 0 { break; }
                        seen.extend_from_slice(&buf[..n]);
                        aw.write_all(&buf[..n]).await.unwrap();
                    }
                    n = ar.read(&mut back) => {
                        let n = n.unwrap();
                        if n == 0 { break; }
                        rw.write_all(&back[..n]).await.unwrap();
                    }
                }
            }
            seen
        });
        let client_sec = Security::new(Identity::generate(), None);
        client(&mut c, Protocol::Peer, &client_sec, None)
            .await
            .unwrap();
        assert!(srv.await.unwrap());
        drop(c);
        let seen = recorded.await.unwrap();
        // The replay: same hello and handshake bytes, to a fresh session.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            server(&mut b, &[Protocol::Peer], |_| false, |_| 0, &server_sec).await
        });
        a.write_all(&seen).await.unwrap();
        let err = srv.await.unwrap().err().expect("a replay is refused");
        assert!(matches!(err, WireError::Secure(_)), "{err:?}");
    }

    #[tokio::test]
    async fn an_altered_byte_is_detected() {
        let (c, s) = pair(
            Security::new(Identity::generate(), None),
            Security::new(Identity::generate(), None),
            None,
        )
        .await;
        let (c, s) = (c.unwrap(), s.unwrap());
        let (_cr, mut cw) = c.into_split();
        cw.write_all(b"hello").await.unwrap();
        cw.flush().await.unwrap();
        // Tamper: feed the server a copy of the message with one bit flipped.
        let msg = {
            let cipher = cw.cipher.clone().unwrap();
            let mut out = vec![0u8; 5 + TAG_LEN];
            cipher.write_message(1, b"hello", &mut out).unwrap();
            out[3] ^= 1;
            out
        };
        let (mut sr, _sw) = s.into_split();
        let mut got = [0u8; 5];
        sr.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let mut raw = sr.raw[sr.raw_start..sr.raw_end].to_vec();
        raw.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        raw.extend_from_slice(&msg);
        sr.raw_end = raw.len();
        sr.raw_start = 0;
        raw.resize(RAW_CAP, 0);
        sr.raw = raw;
        let err = sr.read(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn nodes_with_and_without_identity_static_keys_interoperate() {
        let (ci, si) = (Identity::generate(), Identity::generate());
        let new = |id: &Identity| Security::new(id.clone(), None);
        let old = |id: &Identity| Security::new(id.clone(), None).signed_only();
        for (c, s, identity_mode) in [
            (new(&ci), new(&si), true),
            (old(&ci), new(&si), false),
            (new(&ci), old(&si), false),
            (old(&ci), old(&si), false),
        ] {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            let srv = tokio::spawn(async move {
                let r = server(&mut b, &[Protocol::Peer], |_| false, |_| 0, &s).await;
                r.map(|(_, session)| (b, session))
            });
            // The hellos say which handshake runs: read them off the pipe.
            let (session, features) = client(&mut a, Protocol::Peer, &c, Some(si.peer_id()))
                .await
                .unwrap();
            assert_eq!(
                features & crate::hello::FEATURE_IDENTITY_STATIC != 0,
                identity_mode
            );
            assert_eq!(session.remote(), Some(si.peer_id()));
            let (b, theirs) = srv.await.unwrap().unwrap();
            assert_eq!(theirs.remote(), Some(ci.peer_id()));
            // Bytes flow both ways in either mode.
            let (mut cs, mut ss) = (wrap(a, session), wrap(b, theirs));
            cs.write_all(b"ping").await.unwrap();
            cs.flush().await.unwrap();
            let mut got = [0u8; 4];
            ss.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        }
    }

    #[tokio::test]
    async fn a_stripped_identity_static_offer_fails_the_handshake() {
        // A man in the middle clears CLIENT_IDENTITY_STATIC in the client's
        // hello: the server runs the signed handshake, the client the
        // identity one with the server's answer; the prologues differ and
        // neither side completes.
        let (mut c, relay_c) = tokio::io::duplex(1 << 16);
        let (relay_s, mut b) = tokio::io::duplex(1 << 16);
        let server_sec = Security::new(Identity::generate(), None);
        let srv = tokio::spawn(async move {
            server(&mut b, &[Protocol::Peer], |_| false, |_| 0, &server_sec).await
        });
        let mitm = tokio::spawn(async move {
            let (mut cr, mut cw) = split(relay_c);
            let (mut sr, mut sw) = split(relay_s);
            let up = async {
                let mut hello = [0u8; 8];
                cr.read_exact(&mut hello).await?;
                hello[7] &= !crate::hello::CLIENT_IDENTITY_STATIC;
                sw.write_all(&hello).await?;
                let copied = tokio::io::copy(&mut cr, &mut sw).await;
                // The client gave up: so does the relay.
                sw.shutdown().await?;
                copied
            };
            let down = tokio::io::copy(&mut sr, &mut cw);
            let _ = tokio::join!(up, down);
        });
        let client_sec = Security::new(Identity::generate(), None);
        let c_res = client(&mut c, Protocol::Peer, &client_sec, None).await;
        drop(c);
        let s_res = srv.await.unwrap();
        mitm.abort();
        assert!(c_res.is_err(), "the client must not complete");
        assert!(
            matches!(s_res, Err(WireError::Secure(_))),
            "{:?}",
            s_res.map(|_| ())
        );
    }

    #[test]
    fn identity_payloads_must_be_the_static_key() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let a_static = a.peer_id().noise_static_key().unwrap();
        // The X25519 public key of the secret we use is the id's X25519 form.
        let derived = curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(
            a.noise_static_secret(),
        );
        assert_eq!(derived.to_bytes(), a_static);
        assert_eq!(
            check_identity_payload(&a.peer_id().0, &a_static),
            Ok(a.peer_id())
        );
        // Claiming another node's id with our static key: refused.
        assert_eq!(
            check_identity_payload(&b.peer_id().0, &a_static),
            Err(SecureError::Binding)
        );
        assert_eq!(
            check_identity_payload(&a.peer_id().0[..31], &a_static),
            Err(SecureError::Payload(31))
        );
        // A signed (96-byte) payload where an identity one is due: refused.
        assert_eq!(
            check_identity_payload(&[0u8; PAYLOAD_LEN], &a_static),
            Err(SecureError::Payload(PAYLOAD_LEN))
        );
    }

    #[test]
    fn payloads_must_bind_the_static_key() {
        let id = Identity::generate();
        let static_key = [3u8; 32];
        let mut signed = BINDING_CONTEXT.to_vec();
        signed.extend_from_slice(&static_key);
        let mut payload = id.peer_id().0.to_vec();
        payload.extend_from_slice(&id.sign(&signed));
        assert_eq!(check_payload(&payload, &static_key), Ok(id.peer_id()));
        assert_eq!(
            check_payload(&payload, &[4u8; 32]),
            Err(SecureError::Binding)
        );
        assert_eq!(
            check_payload(&payload[..95], &static_key),
            Err(SecureError::Payload(95))
        );
        assert_eq!(
            check_payload(&[], &static_key),
            Err(SecureError::Payload(0))
        );
    }
}
