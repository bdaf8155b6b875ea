//! Messages of the pure peer-to-peer overlay (Gnutella 0.6 style).
//!
//! After the hello (protocol `Overlay`, on a peer's usual port) the side
//! that connected sends [`OverlayMessage::Connect`] and the other answers
//! [`OverlayMessage::Welcome`]; from then on either side may send any
//! message at any time. `Ping` and `Query` are flooded with a hop limit
//! (`ttl`) and a unique [`MessageId`]; `Pong` and `QueryHit` travel back
//! along the reverse path of the message they answer. A search client
//! (`peer search --mode p2p`) connects with `client: true`: it is never sent
//! floods, only the hits for its own queries.

use serde::{Deserialize, Serialize};

use crate::id::FileId;

/// A flooded message's unique id (random, 16 bytes as in Gnutella).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", hex::encode(&self.0[..6]))
    }
}

/// One matching file in a `QueryHit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayFile {
    pub id: FileId,
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverlayMessage {
    /// First message of the connecting side.
    Connect {
        /// Port this node serves on (0 for a search client); paired with the
        /// connection's source IP unless `advertise` is given.
        listen_port: u16,
        advertise: Option<String>,
        /// A search client, not a neighbour: never sent floods.
        client: bool,
    },
    /// The accepting side's answer: the address it sees for the connector.
    Welcome { your_addr: String },
    /// Flooded: who is out there?
    Ping { id: MessageId, ttl: u8, hops: u8 },
    /// Answer to a `Ping`, routed back: a node that can be a neighbour.
    Pong {
        id: MessageId,
        addr: String,
        files: u32,
    },
    /// Flooded: files whose names contain every word (or a 64-digit id).
    Query {
        id: MessageId,
        ttl: u8,
        hops: u8,
        words: Vec<String>,
    },
    /// Answer to a `Query`, routed back. Every node that processes a query
    /// answers once (with no files when nothing matches), and a node that
    /// drops a copy as already seen answers with `duplicate: true`, so the
    /// searcher can count the nodes reached and the messages spent, and
    /// stop waiting once every copy is accounted for.
    QueryHit {
        id: MessageId,
        /// `HOST:PORT` of the responder's chunk server.
        responder: String,
        files: Vec<OverlayFile>,
        /// Hops the query had travelled when it reached the responder.
        distance: u8,
        /// Neighbours the responder forwarded the query to.
        forwarded: u32,
        duplicate: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;

    #[test]
    fn pinned_encodings() {
        let ping = OverlayMessage::Ping {
            id: MessageId([7; 16]),
            ttl: 2,
            hops: 0,
        };
        let mut expected = vec![0, 0, 0, 19, 2];
        expected.extend([7; 16]);
        expected.extend([2, 0]);
        assert_eq!(encode_frame(&ping).unwrap(), expected);
    }
}
