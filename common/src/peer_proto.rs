//! Messages between two peers: the transfer protocol.
//!
//! After the hello, the downloader sends [`PeerRequest`] frames and the
//! serving peer answers each with one [`PeerResponse`] header, in order, so
//! requests may be pipelined. `HashList` and `Chunk` headers are followed by
//! exactly `len` raw bytes (file data never travels inside a serialized
//! value). Any peer that holds a chunk can serve it, including one that is
//! still downloading the file: `Have` tells which chunks it holds.
//! `Message` carries a direct message between two users (see [`crate::im`]).
//!
//! **Upload queue** (appended later; old peers never see these): a server
//! whose hello carries [`crate::hello::FEATURE_UPLOAD_QUEUE`] may be sent
//! `Requester` (who is asking, so a reconnection keeps its place). A chunk
//! request from such a requester when every upload slot is taken is
//! answered `Queued { position }` instead of being served; the requester
//! then sends `Wait`, which is answered with `SlotGranted` as soon as an
//! upload slot is its own, with `Queued` when its position changed (at most
//! about once a second) and at least every [`crate::limits::QUEUE_REFRESH`]. Requesters that never sent `Requester` (older
//! builds) get `Error { code: Busy }` as before.
//!
//! **Pushed availability** (appended later still; BitTorrent's HAVE): a
//! server whose hello carries [`crate::hello::FEATURE_HAVE_PUSH`] may be
//! sent `Subscribe { id }`, answered like `Have`; from then on, each chunk
//! of `id` the server verifies is announced on that connection with an
//! unsolicited `Gained { id, index }` frame, sent between answers (never
//! inside one), so a downloader learns of a new chunk at once instead of
//! at its next `Have`. Older servers are never sent `Subscribe` (their
//! downloaders keep asking `Have`); older clients never send it, so never
//! see `Gained`.
//!
//! **Cancel** (appended later still; BitTorrent's CANCEL): a server whose
//! hello carries [`crate::hello::FEATURE_CANCEL`] may be sent `Cancel { id,
//! index }` for a chunk already requested on that connection, when the
//! downloader got the chunk elsewhere (an endgame duplicate won). A request
//! still waiting for its turn at the server's upload cap is then answered
//! `Cancelled { id, index }` in its place (answers stay in order: the
//! request still gets exactly one answer); one already being sent is not
//! affected. `Cancel` itself is never answered.

use serde::{Deserialize, Serialize};

use crate::id::FileId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The file's chunk hashes, checked by the receiver against the id.
    HashList { id: FileId },
    /// One chunk of the file.
    Chunk { id: FileId, index: u32 },
    /// Which chunks of the file this peer holds.
    Have { id: FileId },
    /// A direct message to this peer's user (instant messaging): sent peer
    /// to peer, never through the index. `from` is the sender's nickname.
    Message { from: String, text: String },
    /// Chunk `index` of `id`, as this peer served it, failed verification:
    /// its file may have changed without its id being updated. The peer
    /// checks that chunk (rate-limited per file) and, if it no longer
    /// matches, withdraws the id and hashes the file again. Answered with
    /// `Delivered`.
    BadChunk { id: FileId, index: u32 },
    /// Who is asking: `token` is chosen by the requester (random, one per
    /// process) and, with the source address, names its place in the
    /// upload queue, so that a reconnection keeps it. Only sent to servers
    /// whose hello has [`crate::hello::FEATURE_UPLOAD_QUEUE`]; answered
    /// with `Delivered`.
    Requester { token: u64 },
    /// Waits in the upload queue: answered with `SlotGranted` once an
    /// upload slot is held for this requester, else with `Queued` when the
    /// position changed (at most about once a second) or after
    /// [`crate::limits::QUEUE_REFRESH`] at the latest.
    Wait,
    /// The index's dial-back (`crate::reach`): prove that this node is the
    /// one whose login nonce the index holds. Answered with `Reachable`
    /// (`proof = reach::proof(nonce, challenge)`), or `Error { NotFound }`
    /// by a node that has not logged in.
    ProveReachable {
        challenge: [u8; crate::reach::NONCE_LEN],
    },
    /// Which chunks of the file this peer holds (answered as `Have`), and
    /// from then on each chunk it gains, pushed as `Gained` on this
    /// connection. Only sent to servers whose hello has
    /// [`crate::hello::FEATURE_HAVE_PUSH`].
    Subscribe { id: FileId },
    /// A direct message signed with the sender's node key
    /// ([`crate::im::sign_message`]: over the receiver's id, the send time,
    /// `from` and `text`). Only sent to servers whose hello has
    /// [`crate::hello::FEATURE_SIGNED_MESSAGES`] (older ones are sent
    /// `Message`); the receiver checks it against the key the connection
    /// proved and refuses one that does not verify (`BadRequest`).
    /// Answered like `Message`.
    SignedMessage {
        from: String,
        text: String,
        /// When it was sent, milliseconds since the Unix epoch.
        sent_unix_ms: u64,
        /// [`crate::im::SIGNATURE_LEN`] bytes (any other length is refused).
        signature: Vec<u8>,
    },
    /// Takes back the request for chunk `index` of `id` made on this
    /// connection, if the server has not started sending it: it is then
    /// answered `Cancelled` instead. Never answered itself. Only sent to
    /// servers whose hello has [`crate::hello::FEATURE_CANCEL`].
    Cancel { id: FileId, index: u32 },
}

/// Why a peer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerErrorCode {
    /// This peer does not offer that file (or that chunk, yet).
    NotFound,
    /// The file changed on disk since it was hashed; it is being rehashed.
    FileChanged,
    /// All upload slots are taken.
    Busy,
    BadRequest,
    Internal,
    /// Too many messages from this sender; try again later.
    RateLimited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Followed by `len` raw bytes: 32 per chunk.
    HashList { id: FileId, size: u64, len: u32 },
    /// Followed by `len` raw bytes of chunk `index`.
    Chunk { id: FileId, index: u32, len: u32 },
    /// Bit `i` (LSB first in byte `i / 8`) set when chunk `i` is held.
    /// `complete` peers send an empty bitfield.
    Have {
        id: FileId,
        size: u64,
        complete: bool,
        bitfield: Vec<u8>,
    },
    Error {
        code: PeerErrorCode,
        message: String,
    },
    /// Answer to `Message` (it is in the receiver's inbox) and to
    /// `BadChunk` (the report was taken).
    Delivered,
    /// Every upload slot is taken: the request was not served, the
    /// requester holds place `position` (1 = next) in the upload queue.
    Queued { position: u32 },
    /// An upload slot is held for this requester: ask for chunks again.
    SlotGranted,
    /// Answer to `ProveReachable`.
    Reachable {
        proof: [u8; crate::reach::PROOF_LEN],
    },
    /// Unsolicited, after `Subscribe { id }`: this peer now holds chunk
    /// `index` of `id`. Sent between answers, never answering a request.
    Gained { id: FileId, index: u32 },
    /// The answer to a chunk request taken back with `Cancel` before it
    /// was served: no data follows.
    Cancelled { id: FileId, index: u32 },
}

/// Whether bit `index` is set in a `Have` bitfield.
pub fn bit_is_set(bitfield: &[u8], index: u32) -> bool {
    bitfield
        .get((index / 8) as usize)
        .is_some_and(|b| b & (1 << (index % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;

    #[test]
    fn pinned_encodings() {
        let id = FileId([0xAB; 32]);
        let mut expected = vec![0, 0, 0, 34, 1];
        expected.extend([0xAB; 32]);
        expected.push(5);
        assert_eq!(
            encode_frame(&PeerRequest::Chunk { id, index: 5 }).unwrap(),
            expected
        );
        let header = PeerResponse::Chunk {
            id,
            index: 0,
            len: 262144,
        };
        // 262144 needs the 4-byte varint form: marker 252, then u32 LE.
        let bytes = encode_frame(&header).unwrap();
        assert_eq!(&bytes[bytes.len() - 5..], &[252, 0x00, 0x00, 0x04, 0x00]);
    }

    #[test]
    fn pinned_message_encodings() {
        let msg = PeerRequest::Message {
            from: "a".into(),
            text: "b".into(),
        };
        assert_eq!(
            encode_frame(&msg).unwrap(),
            [0, 0, 0, 5, 3, 1, b'a', 1, b'b']
        );
        assert_eq!(
            encode_frame(&PeerResponse::Delivered).unwrap(),
            [0, 0, 0, 1, 4]
        );
        let limited = PeerResponse::Error {
            code: PeerErrorCode::RateLimited,
            message: String::new(),
        };
        assert_eq!(encode_frame(&limited).unwrap(), [0, 0, 0, 3, 3, 5, 0]);
    }

    #[test]
    fn pinned_bad_chunk_encoding() {
        let report = PeerRequest::BadChunk {
            id: FileId([0xCD; 32]),
            index: 7,
        };
        let mut expected = vec![0, 0, 0, 34, 4];
        expected.extend([0xCD; 32]);
        expected.push(7);
        assert_eq!(encode_frame(&report).unwrap(), expected);
    }

    #[test]
    fn pinned_queue_encodings() {
        // Appended variants: the old ones keep their numbers.
        assert_eq!(
            encode_frame(&PeerRequest::Requester { token: 7 }).unwrap(),
            [0, 0, 0, 2, 5, 7]
        );
        assert_eq!(encode_frame(&PeerRequest::Wait).unwrap(), [0, 0, 0, 1, 6]);
        assert_eq!(
            encode_frame(&PeerResponse::Queued { position: 3 }).unwrap(),
            [0, 0, 0, 2, 5, 3]
        );
        assert_eq!(
            encode_frame(&PeerResponse::SlotGranted).unwrap(),
            [0, 0, 0, 1, 6]
        );
    }

    #[test]
    fn pinned_reachability_encodings() {
        let mut expected = vec![0, 0, 0, 17, 7];
        expected.extend([3; 16]);
        assert_eq!(
            encode_frame(&PeerRequest::ProveReachable { challenge: [3; 16] }).unwrap(),
            expected
        );
        let mut expected = vec![0, 0, 0, 33, 7];
        expected.extend([4; 32]);
        assert_eq!(
            encode_frame(&PeerResponse::Reachable { proof: [4; 32] }).unwrap(),
            expected
        );
    }

    #[test]
    fn pinned_push_encodings() {
        // Appended variants: every older one keeps its tag.
        let mut expected = vec![0, 0, 0, 33, 8];
        expected.extend([0xEE; 32]);
        assert_eq!(
            encode_frame(&PeerRequest::Subscribe {
                id: FileId([0xEE; 32])
            })
            .unwrap(),
            expected
        );
        let mut expected = vec![0, 0, 0, 73, 9, 1, b'a', 1, b'b', 251, 0xE8, 0x03, 64];
        expected.extend([0xAB; 64]);
        assert_eq!(
            encode_frame(&PeerRequest::SignedMessage {
                from: "a".into(),
                text: "b".into(),
                sent_unix_ms: 1_000,
                signature: vec![0xAB; 64],
            })
            .unwrap(),
            expected
        );
        let mut expected = vec![0, 0, 0, 34, 8];
        expected.extend([0xEE; 32]);
        expected.push(9);
        assert_eq!(
            encode_frame(&PeerResponse::Gained {
                id: FileId([0xEE; 32]),
                index: 9
            })
            .unwrap(),
            expected
        );
    }

    #[test]
    fn pinned_cancel_encodings() {
        // Appended variants: every older one keeps its tag.
        let mut expected = vec![0, 0, 0, 34, 10];
        expected.extend([0xEE; 32]);
        expected.push(7);
        assert_eq!(
            encode_frame(&PeerRequest::Cancel {
                id: FileId([0xEE; 32]),
                index: 7
            })
            .unwrap(),
            expected
        );
        let mut expected = vec![0, 0, 0, 34, 9];
        expected.extend([0xEE; 32]);
        expected.push(7);
        assert_eq!(
            encode_frame(&PeerResponse::Cancelled {
                id: FileId([0xEE; 32]),
                index: 7
            })
            .unwrap(),
            expected
        );
    }

    #[test]
    fn bitfield_bits() {
        assert!(bit_is_set(&[0b0000_0010], 1));
        assert!(!bit_is_set(&[0b0000_0010], 0));
        assert!(!bit_is_set(&[], 100));
    }
}
