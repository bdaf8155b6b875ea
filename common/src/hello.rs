//! The versioned hello that opens every connection.
//!
//! It is a fixed 8-byte record, not a bincode frame, so that any future
//! version can still read it and answer with a clear refusal instead of
//! misparsing a frame and hanging:
//!
//! ```text
//! client → server: "P2PS" | version u16 BE | protocol u8 | flags u8
//! server → client: "P2PS" | version u16 BE | status u8   | features u8
//! ```
//!
//! The server's last byte carries feature bits ([`FEATURE_UPLOAD_QUEUE`],
//! [`FEATURE_SECURE`]); the client's carries flags ([`CLIENT_SECURE`]).
//! The hello stays in clear text; with [`CLIENT_SECURE`] on both sides the
//! Noise handshake of `crate::secure` follows, and both hellos are its
//! prologue, so a hello changed on the way makes the handshake fail.

use crate::limits::PROTOCOL_VERSION;

pub const MAGIC: [u8; 4] = *b"P2PS";
pub const HELLO_LEN: usize = 8;

/// Server feature bit: this peer keeps a visible upload queue. A client
/// that sees it may send `PeerRequest::Requester` and is then answered
/// `Queued` instead of `Busy` when every upload slot is taken
/// (`crate::peer_proto`).
pub const FEATURE_UPLOAD_QUEUE: u8 = 1;

/// Server feature bit: this peer pushes availability. A client that sees
/// it may send `PeerRequest::Subscribe` and is then told each chunk the
/// peer gains (`PeerResponse::Gained`) instead of asking `Have` again and
/// again (`crate::peer_proto`).
pub const FEATURE_HAVE_PUSH: u8 = 2;

/// Server feature bit: this server encrypts (it was started without
/// `--insecure`), and answers a client without [`CLIENT_SECURE`] with
/// [`HelloStatus::SecurityMismatch`]. Set in every answer, so that a
/// refused client can say which side to change.
pub const FEATURE_SECURE: u8 = 4;

// Feature bits are a shared, scarce resource (8 in all): each new one
// takes the next free bit and is listed in the test
// `feature_bits_are_distinct`, which fails on a bit assigned twice.

/// Server feature bit: this peer takes signed direct messages
/// (`PeerRequest::SignedMessage`); older peers are sent `Message`.
pub const FEATURE_SIGNED_MESSAGES: u8 = 8;

/// Server feature bit: this peer takes back chunk requests still waiting
/// for their turn at its upload cap (`PeerRequest::Cancel`, answered
/// `PeerResponse::Cancelled`; `crate::peer_proto`). A downloader that got
/// the chunk elsewhere first frees the turn for others.
pub const FEATURE_CANCEL: u8 = 16;

/// Server feature bit, answered to a client with
/// [`CLIENT_IDENTITY_STATIC`]: this server's Noise static key is its
/// identity key in X25519 form, and it takes the client's the same way
/// (`crate::secure`: no signature in the handshake payloads). Servers of
/// version 2 without it run the signed handshake.
pub const FEATURE_IDENTITY_STATIC: u8 = 32;

/// Client flag bit: "I run the Noise handshake next" (this client was
/// started without `--insecure`).
pub const CLIENT_SECURE: u8 = 1;

/// Client flag bit: "I can use my identity key as my Noise static key"
/// (see [`FEATURE_IDENTITY_STATIC`]); sent with [`CLIENT_SECURE`].
pub const CLIENT_IDENTITY_STATIC: u8 = 2;

/// Whether a connection whose hellos are `client` and `server` runs the
/// handshake with identity static keys: the client offered it and the
/// server took it. Both sides compute it from the same bytes (which are
/// also the handshake's prologue, so a bit flipped on the way fails it).
pub fn identity_static(client: &[u8; HELLO_LEN], server: &[u8; HELLO_LEN]) -> bool {
    client_flags(client) & CLIENT_IDENTITY_STATIC != 0
        && server_features(server) & FEATURE_IDENTITY_STATIC != 0
}

/// Which protocol the connection will speak after the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A peer or a client talking to the index server.
    Index = 1,
    /// A peer talking to another peer (chunks, and later flooding and messages).
    Peer = 2,
    /// The pure peer-to-peer overlay (Gnutella-style ping/pong, query flooding).
    Overlay = 3,
    /// Uploading files into an index server's store (client-server mode).
    Store = 4,
    /// A firewalled source connecting out to a downloader that asked the
    /// index for a callback (`index_proto::IndexRequest::Callback`): after
    /// the hello the source sends a `reach::CallbackHello` frame, then the
    /// downloader speaks the peer protocol as a client over it and the
    /// source answers as a chunk server would.
    Callback = 5,
    /// One side of a relay through the index
    /// (`index_proto::IndexRequest::Relay`): after the hello the client
    /// sends a `reach::RelayHello` and reads a `reach::RelayAnswer`; once
    /// paired, the bytes go through to the other side unchanged.
    Relay = 6,
}

impl Protocol {
    /// The protocol named by a hello's protocol byte, if this build knows it.
    pub fn from_byte(byte: u8) -> Option<Protocol> {
        match byte {
            1 => Some(Protocol::Index),
            2 => Some(Protocol::Peer),
            3 => Some(Protocol::Overlay),
            4 => Some(Protocol::Store),
            5 => Some(Protocol::Callback),
            6 => Some(Protocol::Relay),
            _ => None,
        }
    }
}

/// The server's answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStatus {
    Ok = 0,
    UnsupportedVersion = 1,
    WrongProtocol = 2,
    /// The server is at its connection cap; try again later.
    Busy = 3,
    /// One side runs with `--insecure` and the other does not: the server's
    /// [`FEATURE_SECURE`] bit says which.
    SecurityMismatch = 4,
}

/// Why a hello was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("the other side is not a p2pshare node (bad magic bytes)")]
    BadMagic,
    #[error("{}", version_text(*.ours, *.theirs))]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("wrong service: this port speaks another p2pshare protocol (index vs peer port?)")]
    WrongProtocol,
    #[error("the server is busy (connection limit reached); try again later")]
    Busy,
    #[error("{}", mismatch_text(*.we_encrypt))]
    SecurityMismatch {
        /// Whether this side encrypts (was started without `--insecure`).
        we_encrypt: bool,
    },
    #[error("unknown hello field value {0}")]
    Unknown(u8),
}

/// Which side to upgrade when the versions differ (nodes speak only their
/// own version: version 2 made every connection encrypted, so there is no
/// common subset to fall back to without a downgrade).
fn version_text(ours: u16, theirs: u16) -> String {
    let which = if ours < theirs {
        "upgrade this node"
    } else {
        "upgrade the other node"
    };
    format!(
        "protocol version mismatch: this node speaks version {ours}, the other side version \
         {theirs}: {which} (nodes of different versions do not talk to each other)"
    )
}

/// What to change when one side runs with `--insecure` and the other not.
fn mismatch_text(we_encrypt: bool) -> &'static str {
    if we_encrypt {
        "the other side runs in clear text (--insecure) and this side encrypts: \
         start the other side without --insecure (or, for a lab comparison only, both sides with it)"
    } else {
        "the other side requires encryption and this side was started with --insecure: \
         drop --insecure here (or start the other side with --insecure too)"
    }
}

/// The client's hello in clear text (flags 0, as `--insecure` sends it).
pub fn client_hello(protocol: Protocol) -> [u8; HELLO_LEN] {
    hello_with(protocol as u8)
}

/// The client's hello with `flags` ([`CLIENT_SECURE`]) in its last byte.
pub fn client_hello_with_flags(protocol: Protocol, flags: u8) -> [u8; HELLO_LEN] {
    let mut hello = hello_with(protocol as u8);
    hello[7] = flags;
    hello
}

/// The flags of a client's hello (0 from `--insecure` clients).
pub fn client_flags(bytes: &[u8; HELLO_LEN]) -> u8 {
    bytes[7]
}

pub fn server_hello(status: HelloStatus) -> [u8; HELLO_LEN] {
    hello_with(status as u8)
}

/// The server's answer with feature bits in its last byte.
pub fn server_hello_with_features(status: HelloStatus, features: u8) -> [u8; HELLO_LEN] {
    let mut hello = hello_with(status as u8);
    hello[7] = features;
    hello
}

/// The feature bits of a server's answer (0 from builds that had none).
pub fn server_features(bytes: &[u8; HELLO_LEN]) -> u8 {
    bytes[7]
}

/// Magic, our version, then `field` (the protocol asked for, or the answer).
fn hello_with(field: u8) -> [u8; HELLO_LEN] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], field, 0]
}

/// Server side: what to answer to a client's hello for `expected` protocol.
/// `Err(BadMagic)` means: not one of us, close without answering.
pub fn check_client_hello(
    bytes: &[u8; HELLO_LEN],
    expected: Protocol,
) -> Result<HelloStatus, HelloError> {
    check_client_hello_any(bytes, &[expected]).map(|(status, _)| status)
}

/// Server side for a port that speaks several protocols: what to answer,
/// and which of `accepted` the client asked for (`None` with
/// `WrongProtocol` or `UnsupportedVersion`).
/// `Err(BadMagic)` means: not one of us, close without answering.
pub fn check_client_hello_any(
    bytes: &[u8; HELLO_LEN],
    accepted: &[Protocol],
) -> Result<(HelloStatus, Option<Protocol>), HelloError> {
    if bytes[..4] != MAGIC {
        return Err(HelloError::BadMagic);
    }
    let theirs = u16::from_be_bytes([bytes[4], bytes[5]]);
    if theirs != PROTOCOL_VERSION {
        return Ok((HelloStatus::UnsupportedVersion, None));
    }
    match Protocol::from_byte(bytes[6]).filter(|p| accepted.contains(p)) {
        Some(p) => Ok((HelloStatus::Ok, Some(p))),
        None => Ok((HelloStatus::WrongProtocol, None)),
    }
}

/// Client side, for a client that encrypts when `we_encrypt`: success, or a
/// clear error, also when the server accepted but does not run the same
/// mode (a server or a man in the middle that drops [`FEATURE_SECURE`]
/// gets a refusal, never clear text).
pub fn check_server_hello_mode(
    bytes: &[u8; HELLO_LEN],
    we_encrypt: bool,
) -> Result<(), HelloError> {
    let server_encrypts = server_features(bytes) & FEATURE_SECURE != 0;
    match check_server_hello(bytes) {
        Err(HelloError::Unknown(4)) => Err(HelloError::SecurityMismatch { we_encrypt }),
        Ok(()) if server_encrypts != we_encrypt => Err(HelloError::SecurityMismatch { we_encrypt }),
        other => other,
    }
}

/// Client side: turns the server's answer into success or a clear error
/// (without the encryption mode: see [`check_server_hello_mode`]).
pub fn check_server_hello(bytes: &[u8; HELLO_LEN]) -> Result<(), HelloError> {
    if bytes[..4] != MAGIC {
        return Err(HelloError::BadMagic);
    }
    let theirs = u16::from_be_bytes([bytes[4], bytes[5]]);
    match bytes[6] {
        0 if theirs == PROTOCOL_VERSION => Ok(()),
        0 | 1 => Err(HelloError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        }),
        2 => Err(HelloError::WrongProtocol),
        3 => Err(HelloError::Busy),
        other => Err(HelloError::Unknown(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_bits_are_distinct() {
        // Every server feature bit; a new one is added here.
        let bits = [
            FEATURE_UPLOAD_QUEUE,
            FEATURE_HAVE_PUSH,
            FEATURE_SECURE,
            FEATURE_SIGNED_MESSAGES,
            FEATURE_CANCEL,
            FEATURE_IDENTITY_STATIC,
        ];
        let mut seen = 0u8;
        for bit in bits {
            assert_eq!(bit.count_ones(), 1, "{bit} is not a single bit");
            assert_eq!(seen & bit, 0, "bit {bit} is assigned twice");
            seen |= bit;
        }
    }

    #[test]
    fn pinned_bytes() {
        assert_eq!(
            client_hello(Protocol::Index),
            [b'P', b'2', b'P', b'S', 0, 2, 1, 0]
        );
        assert_eq!(
            client_hello_with_flags(Protocol::Peer, CLIENT_SECURE),
            [b'P', b'2', b'P', b'S', 0, 2, 2, 1]
        );
        assert_eq!(
            server_hello(HelloStatus::Busy),
            [b'P', b'2', b'P', b'S', 0, 2, 3, 0]
        );
    }

    #[test]
    fn encryption_mode_mismatch_is_refused_both_ways() {
        let secure_ok = server_hello_with_features(HelloStatus::Ok, FEATURE_SECURE);
        let clear_ok = server_hello_with_features(HelloStatus::Ok, 0);
        assert_eq!(check_server_hello_mode(&secure_ok, true), Ok(()));
        assert_eq!(check_server_hello_mode(&clear_ok, false), Ok(()));
        // A stripped feature bit is a refusal, not a downgrade.
        assert_eq!(
            check_server_hello_mode(&clear_ok, true),
            Err(HelloError::SecurityMismatch { we_encrypt: true })
        );
        assert_eq!(
            check_server_hello_mode(&secure_ok, false),
            Err(HelloError::SecurityMismatch { we_encrypt: false })
        );
        let refused = server_hello_with_features(HelloStatus::SecurityMismatch, FEATURE_SECURE);
        let err = check_server_hello_mode(&refused, false).unwrap_err();
        assert!(err.to_string().contains("drop --insecure here"), "{err}");
        let refused = server_hello_with_features(HelloStatus::SecurityMismatch, 0);
        let err = check_server_hello_mode(&refused, true).unwrap_err();
        assert!(err.to_string().contains("without --insecure"), "{err}");
    }

    #[test]
    fn version_mismatch_is_reported_both_ways() {
        let mut hello = client_hello(Protocol::Peer);
        hello[5] = 9;
        assert_eq!(
            check_client_hello(&hello, Protocol::Peer),
            Ok(HelloStatus::UnsupportedVersion)
        );
        let mut answer = server_hello(HelloStatus::UnsupportedVersion);
        answer[5] = 9;
        assert_eq!(
            check_server_hello(&answer),
            Err(HelloError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 9
            })
        );
        assert_eq!(
            check_client_hello(b"GET / HT", Protocol::Peer),
            Err(HelloError::BadMagic)
        );
        assert_eq!(
            check_client_hello(&client_hello(Protocol::Index), Protocol::Peer),
            Ok(HelloStatus::WrongProtocol)
        );
    }

    /// Frozen fixtures of version 1 (before encryption), as its nodes sent
    /// them: this version refuses them, and the message says which side
    /// to upgrade, both ways.
    #[test]
    fn version_1_nodes_are_refused_with_the_side_to_upgrade() {
        const V1_CLIENT_PEER_HELLO: [u8; 8] = [b'P', b'2', b'P', b'S', 0, 1, 2, 0];
        const V1_SERVER_REFUSAL: [u8; 8] = [b'P', b'2', b'P', b'S', 0, 1, 1, 0];
        const V1_SERVER_OK: [u8; 8] = [b'P', b'2', b'P', b'S', 0, 1, 0, 3];
        assert_eq!(
            check_client_hello(&V1_CLIENT_PEER_HELLO, Protocol::Peer),
            Ok(HelloStatus::UnsupportedVersion)
        );
        for answer in [V1_SERVER_REFUSAL, V1_SERVER_OK] {
            let err = check_server_hello(&answer).unwrap_err();
            assert_eq!(
                err,
                HelloError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: 1
                }
            );
            assert!(err.to_string().contains("upgrade the other node"), "{err}");
        }
        // Seen from an older node: this side says to upgrade itself.
        let older = HelloError::VersionMismatch { ours: 1, theirs: 2 };
        assert!(older.to_string().contains("upgrade this node"), "{older}");
    }

    #[test]
    fn one_port_accepts_a_set_of_protocols() {
        let accepted = [Protocol::Peer, Protocol::Overlay];
        assert_eq!(
            check_client_hello_any(&client_hello(Protocol::Overlay), &accepted),
            Ok((HelloStatus::Ok, Some(Protocol::Overlay)))
        );
        assert_eq!(
            check_client_hello_any(&client_hello(Protocol::Store), &accepted),
            Ok((HelloStatus::WrongProtocol, None))
        );
        let mut unknown = client_hello(Protocol::Peer);
        unknown[6] = 200;
        assert_eq!(
            check_client_hello_any(&unknown, &accepted),
            Ok((HelloStatus::WrongProtocol, None))
        );
        assert_eq!(client_hello(Protocol::Overlay)[6], 3);
        assert_eq!(client_hello(Protocol::Store)[6], 4);
        assert_eq!(client_hello(Protocol::Callback)[6], 5);
        assert_eq!(client_hello(Protocol::Relay)[6], 6);
    }
}
