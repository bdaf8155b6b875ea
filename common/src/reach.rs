//! Reachability proofs: how the index checks that an address a peer asks
//! to publish is that peer's (issue 15; `DESIGN.md`, "Reachability").
//!
//! A peer logs in with `IndexRequest::LoginChecked`, carrying a fresh
//! random [`NONCE_LEN`]-byte login nonce that it keeps secret. The index
//! dials every address the peer asks to publish (the connection's source IP
//! with the listening port, and `--advertise`) with the peer protocol and
//! sends `PeerRequest::ProveReachable` with a fresh random challenge; the
//! node answering must send back [`proof`]`(its login nonce, challenge)`.
//! Only the peer that chose the nonce can compute it, so a third party's
//! host (which does not speak the protocol) and another peer answering on
//! someone else's behalf (which holds another nonce) both fail, and an old
//! answer is useless against a new challenge. The nonce itself never
//! travels on a dial-back.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Bytes of a login nonce and of a dial-back challenge.
pub const NONCE_LEN: usize = 16;

/// Bytes of a proof (SHA-256).
pub const PROOF_LEN: usize = 32;

/// Separates these hashes from any other use of SHA-256 in the protocol.
const DOMAIN: &[u8] = b"p2pshare reachability proof v1\0";

/// The answer to a dial-back: SHA-256(domain, nonce, challenge).
pub fn proof(nonce: &[u8; NONCE_LEN], challenge: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(nonce);
    h.update(challenge);
    h.finalize().into()
}

/// The login nonce of this node's current index session, shared between
/// the registrar (which sets a fresh one before each login) and the chunk
/// server (which answers dial-backs with it). Empty before the first login.
#[derive(Debug, Clone, Default)]
pub struct LoginNonce(Arc<Mutex<Option<[u8; NONCE_LEN]>>>);

impl LoginNonce {
    /// Replaces the nonce (at each new login).
    pub fn set(&self, nonce: [u8; NONCE_LEN]) {
        match self.0.lock() {
            Ok(mut n) => *n = Some(nonce),
            Err(poisoned) => *poisoned.into_inner() = Some(nonce),
        }
    }

    /// The current nonce, if a login has set one.
    pub fn get(&self) -> Option<[u8; NONCE_LEN]> {
        match self.0.lock() {
            Ok(n) => *n,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The proof for `challenge`, if a login has set a nonce.
    pub fn prove(&self, challenge: &[u8; NONCE_LEN]) -> Option<[u8; PROOF_LEN]> {
        self.get().map(|n| proof(&n, challenge))
    }
}

/// The first frame a source sends on a callback connection (after the
/// hello of `hello::Protocol::Callback`): the token the downloader chose in
/// its `IndexRequest::Callback`, by which it knows which request this
/// connection answers, and the source's feature bits as a chunk server
/// would send them in its hello (`hello::FEATURE_UPLOAD_QUEUE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallbackHello {
    pub token: [u8; NONCE_LEN],
    pub features: u8,
}

/// Which side of a relay a connection is (`RelayHello`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RelayRole {
    /// The side that asked for the relay and will ask for chunks.
    Downloader,
    /// The firewalled source the index sent a `RelayOrder`.
    Source,
}

/// The first frame on a connection to the index's relay (after the hello
/// of `hello::Protocol::Relay`): the token of the relay arranged by a
/// logged-in peer's `IndexRequest::Relay`, and which side this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayHello {
    pub token: [u8; NONCE_LEN],
    pub role: RelayRole,
}

/// The index's answer to a [`RelayHello`]: sent when the other side has
/// come (then every later byte is the other side's), or with the reason
/// the connection is refused (then it is closed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RelayAnswer {
    Paired,
    Refused { reason: String },
}

/// Largest encoded [`CallbackHello`], [`RelayHello`] or [`RelayAnswer`]
/// frame payload read.
pub const MAX_RELAY_FRAME_LEN: usize = 512;

/// Largest encoded [`CallbackHello`] frame payload a downloader reads.
pub const MAX_CALLBACK_HELLO_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_callback_hello() {
        let bytes = crate::frame::encode_frame(&CallbackHello {
            token: [5; NONCE_LEN],
            features: 1,
        })
        .unwrap();
        let mut expected = vec![0, 0, 0, 17];
        expected.extend([5; NONCE_LEN]);
        expected.push(1);
        assert_eq!(bytes, expected);
        assert!(bytes.len() - 4 <= MAX_CALLBACK_HELLO_LEN);
        let bytes = crate::frame::encode_frame(&RelayHello {
            token: [5; NONCE_LEN],
            role: RelayRole::Source,
        })
        .unwrap();
        assert_eq!(bytes[..4], [0, 0, 0, 17]);
        assert_eq!(bytes[20], 1);
        assert_eq!(
            crate::frame::encode_frame(&RelayAnswer::Paired).unwrap(),
            [0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn proofs_depend_on_nonce_and_challenge() {
        let (a, b) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        assert_eq!(proof(&a, &b), proof(&a, &b));
        assert_ne!(proof(&a, &b), proof(&b, &a));
        assert_ne!(proof(&a, &b), proof(&a, &a));
        let shared = LoginNonce::default();
        assert_eq!(shared.prove(&b), None);
        shared.clone().set(a);
        assert_eq!(shared.prove(&b), Some(proof(&a, &b)));
    }
}
