//! Node identity: every node (peer daemon, index server, store) holds an
//! ed25519 key pair, and its [`PeerId`] is the 32-byte public key.
//!
//! A PeerId is shown as lowercase RFC 4648 base32 without padding (52
//! characters, [`PeerId::to_string`]); human tables show its first
//! [`SHORT_LEN`] characters ([`PeerId::short`]), `--json` and anything meant
//! to be copied the full form. The key file format is [`Identity::to_file_text`]:
//! one header line and the 32-byte secret seed in the same base32.
//!
//! Pure: no files or sockets here (key files are read and written by
//! `transfer::keyfile`).

use std::fmt;
use std::str::FromStr;

use data_encoding::{Encoding, Specification};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

/// Characters of the short form shown in human tables (60 bits: enough to
/// tell apart the peers of any one network, not to authenticate one).
pub const SHORT_LEN: usize = 12;
/// Characters of a full PeerId (32 bytes in base32 without padding).
pub const PEER_ID_LEN: usize = 52;
/// First line of a key file.
pub const KEY_FILE_HEADER: &str = "p2pshare node key v1";

/// Lowercase RFC 4648 base32 without padding.
fn base32() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding().expect("a valid base32 alphabet")
}

/// A node's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

/// Why a text is not a PeerId, or a key file not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("a peer id has {PEER_ID_LEN} characters, this one has {0}")]
    Length(usize),
    #[error("a peer id uses only the letters a-z and the digits 2-7 (base32)")]
    Alphabet,
    #[error("these 32 bytes are not an ed25519 public key (or a weak one, of small order)")]
    NotAKey,
    #[error("not a p2pshare key file: the first line must be {KEY_FILE_HEADER:?}")]
    KeyFileHeader,
    #[error("the key file's second line must be the 32-byte secret in base32 ({PEER_ID_LEN} characters a-z, 2-7)")]
    KeyFileSecret,
}

impl PeerId {
    /// The first [`SHORT_LEN`] characters of the full form.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(SHORT_LEN);
        s
    }

    /// Whether `sig` is this key's signature of `msg`. Strict
    /// verification (ed25519-dalek's `verify_strict`): a weak key (of
    /// small order) or a signature whose R is of small order is refused,
    /// since with those a "signature" of zeros verifies for about one
    /// message in four under the cofactorless equation (RFC 8032 section
    /// 5.1.7 leaves the check to the verifier; the fuzzer found one).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Some(key) = self.key() else {
            return false;
        };
        key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    }

    /// These bytes as an ed25519 key, unless they are not a point or are
    /// a weak key (small order: nobody holds its secret, and every
    /// X25519 exchange with its Montgomery form is known in advance).
    fn key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .ok()
            .filter(|k| !k.is_weak())
    }

    /// This key in X25519 (Montgomery) form: the Noise static key a node
    /// with this id uses when both sides negotiate
    /// `hello::FEATURE_IDENTITY_STATIC` (the birational map of RFC 7748,
    /// as libsodium's `crypto_sign_ed25519_pk_to_curve25519`). `None` if
    /// these bytes are not an ed25519 public key or are a weak one.
    pub fn noise_static_key(&self) -> Option<[u8; 32]> {
        Some(self.key()?.to_montgomery().to_bytes())
    }

    /// The id of these bytes if they are an ed25519 public key that is
    /// not weak (of small order).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<PeerId, IdentityError> {
        let id = PeerId(bytes);
        id.key().ok_or(IdentityError::NotAKey)?;
        Ok(id)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32().encode(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

/// Decodes 32 bytes of lowercase (or uppercase) base32 without padding.
fn decode32(s: &str) -> Result<[u8; 32], IdentityError> {
    let s = s.trim();
    if s.len() != PEER_ID_LEN {
        return Err(IdentityError::Length(s.chars().count()));
    }
    let lower = s.to_ascii_lowercase();
    let bytes = base32()
        .decode(lower.as_bytes())
        .map_err(|_| IdentityError::Alphabet)?;
    bytes.try_into().map_err(|_| IdentityError::Alphabet)
}

impl FromStr for PeerId {
    type Err = IdentityError;

    /// Parses the full form (case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerId::from_bytes(decode32(s)?)
    }
}

/// Splits a dial address `PEERID@HOST:PORT` (a source the index listed
/// with its id: the connection must prove that id) or plain `HOST:PORT`.
pub fn split_dial_addr(addr: &str) -> Result<(Option<PeerId>, &str), IdentityError> {
    match addr.split_once('@') {
        Some((id, rest)) => Ok((Some(id.parse()?), rest)),
        None => Ok((None, addr)),
    }
}

/// The dial address of `addr` for a node that must prove `id`.
pub fn dial_addr(id: Option<PeerId>, addr: &str) -> String {
    match id {
        Some(id) => format!("{id}@{addr}"),
        None => addr.to_string(),
    }
}

/// A node's key pair.
#[derive(Clone)]
pub struct Identity {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        write!(f, "Identity({:?})", self.peer_id())
    }
}

impl Identity {
    /// A new random key pair (from the operating system's random source).
    pub fn generate() -> Identity {
        Identity::from_secret(rand::random::<[u8; 32]>())
    }

    /// The key pair of a 32-byte secret seed.
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        Identity {
            key: ed25519_dalek::SigningKey::from_bytes(&secret),
        }
    }

    /// This node's id (its public key).
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.key.verifying_key().to_bytes())
    }

    /// The X25519 secret of this key pair (the clamped half of SHA-512 of
    /// the seed that ed25519 signs with, as libsodium's
    /// `crypto_sign_ed25519_sk_to_curve25519`): the Noise static key whose
    /// public half is [`PeerId::noise_static_key`]. Used for
    /// Diffie-Hellman only inside the Noise handshake; see DESIGN.md for why
    /// sharing one key between ed25519 and X25519 is sound.
    pub fn noise_static_secret(&self) -> [u8; 32] {
        self.key.to_scalar_bytes()
    }

    /// The ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// The key file's text: [`KEY_FILE_HEADER`], then the secret seed in base32.
    pub fn to_file_text(&self) -> String {
        format!(
            "{KEY_FILE_HEADER}\n{}\n",
            base32().encode(&self.key.to_bytes())
        )
    }

    /// Reads a key file's text ([`Identity::to_file_text`]).
    pub fn from_file_text(text: &str) -> Result<Identity, IdentityError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(KEY_FILE_HEADER) {
            return Err(IdentityError::KeyFileHeader);
        }
        let secret = lines
            .next()
            .ok_or(IdentityError::KeyFileSecret)
            .and_then(|l| decode32(l).map_err(|_| IdentityError::KeyFileSecret))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(IdentityError::KeyFileSecret);
        }
        Ok(Identity::from_secret(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weak (small-order) keys are no ids: a zero "signature" under one
    /// verifies for about one message in four without the strict check.
    #[test]
    fn weak_keys_are_refused_and_verify_nothing() {
        // y = 1 (the neutral point), y = 0 and y = -1 (orders 4 and 2).
        let mut neutral = [0u8; 32];
        neutral[0] = 1;
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        for weak in [neutral, [0u8; 32], minus_one] {
            assert_eq!(PeerId::from_bytes(weak), Err(IdentityError::NotAKey));
            let id = PeerId(weak);
            assert_eq!(id.noise_static_key(), None);
            for i in 0u8..16 {
                assert!(!id.verify(&[i], &[0u8; 64]), "message {i}");
            }
        }
        // A real key still signs and verifies.
        let me = Identity::generate();
        assert!(me.peer_id().verify(b"m", &me.sign(b"m")));
        assert!(PeerId::from_bytes(me.peer_id().0).is_ok());
    }

    #[test]
    fn peer_ids_round_trip_and_refuse_bad_text() {
        let id = Identity::generate().peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), PEER_ID_LEN);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
        assert_eq!(text.parse::<PeerId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<PeerId>().unwrap(), id);
        assert_eq!(id.short(), text[..SHORT_LEN]);
        assert_eq!(text[..51].parse::<PeerId>(), Err(IdentityError::Length(51)));
        let mut bad = text.clone();
        bad.replace_range(0..1, "1");
        assert_eq!(bad.parse::<PeerId>(), Err(IdentityError::Alphabet));
    }

    #[test]
    fn dial_addresses_carry_an_optional_id() {
        let id = Identity::generate().peer_id();
        let full = dial_addr(Some(id), "[::1]:6699");
        assert_eq!(split_dial_addr(&full).unwrap(), (Some(id), "[::1]:6699"));
        assert_eq!(split_dial_addr("h:1").unwrap(), (None, "h:1"));
        assert!(split_dial_addr("nope@h:1").is_err());
    }

    #[test]
    fn pinned_encoding() {
        let id = Identity::from_secret([7; 32]).peer_id();
        // RFC 4648 base32 of the public key of seed 07…07, lowercase.
        assert_eq!(
            data_encoding::BASE32_NOPAD
                .encode(&id.0)
                .to_ascii_lowercase(),
            id.to_string()
        );
    }

    #[test]
    fn signatures_verify_only_with_their_key_and_message() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"hello");
        assert!(a.peer_id().verify(b"hello", &sig));
        assert!(!a.peer_id().verify(b"hellO", &sig));
        assert!(!b.peer_id().verify(b"hello", &sig));
    }

    #[test]
    fn key_file_text_round_trips_and_refuses_other_content() {
        let me = Identity::generate();
        let back = Identity::from_file_text(&me.to_file_text()).unwrap();
        assert_eq!(back.peer_id(), me.peer_id());
        assert_eq!(
            Identity::from_file_text("hello\n").unwrap_err(),
            IdentityError::KeyFileHeader
        );
        assert_eq!(
            Identity::from_file_text(&format!("{KEY_FILE_HEADER}\nshort\n")).unwrap_err(),
            IdentityError::KeyFileSecret
        );
        assert_eq!(
            Identity::from_file_text(&format!("{KEY_FILE_HEADER}\n")).unwrap_err(),
            IdentityError::KeyFileSecret
        );
        let extra = format!("{}junk\n", me.to_file_text());
        assert_eq!(
            Identity::from_file_text(&extra).unwrap_err(),
            IdentityError::KeyFileSecret
        );
    }
}
