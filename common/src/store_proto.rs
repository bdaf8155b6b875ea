//! Uploading files into an index server's store (client-server mode).
//!
//! After the hello (protocol `Store`, on the index server's own port), the
//! client sends [`StoreRequest::Begin`]; the server checks the size against
//! its quota and answers [`StoreResponse::SendHashList`] (or that it already
//! holds the file, or a refusal). The client sends [`StoreRequest::HashList`]
//! and the raw hash list (32 bytes per chunk); the server checks it against
//! the id and answers [`StoreResponse::Ready`] with the
//! chunks its part file already holds (verified), so an interrupted upload
//! resumes where it stopped. The client then sends the missing chunks, each
//! as a [`StoreRequest::Chunk`] header and `len` raw bytes, verified by the
//! server on arrival, and [`StoreRequest::Finish`]; the answer is
//! [`StoreResponse::Stored`] (published) or an error. Another `Begin` may
//! follow on the same connection.

use serde::{Deserialize, Serialize};

use crate::id::FileId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Start or resume the upload of one file.
    Begin {
        id: FileId,
        /// The name to store it under (a label: only its last component is used).
        name: String,
        size: u64,
    },
    /// Followed by `len` raw bytes: the chunk hashes, checked against the id.
    HashList { len: u32 },
    /// Followed by `len` raw bytes of chunk `index`. Not answered: a bad
    /// chunk gets an `Error` and the connection is closed.
    Chunk { index: u32, len: u32 },
    /// Every chunk was sent: verify completeness and publish.
    Finish,
}

/// Why the store refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreErrorCode {
    /// Storing the file would exceed the store's quota.
    QuotaExceeded,
    BadRequest,
    /// A chunk did not match its hash.
    BadChunk,
    /// Another upload of the same file is in progress.
    Busy,
    /// `Finish` arrived with chunks still missing.
    Incomplete,
    Internal,
    /// The server's disk has no room for the file (the message says how
    /// much is needed and free).
    OutOfSpace,
    /// This client has as many unfinished uploads as the server allows.
    TooManyPending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreResponse {
    /// `Begin` accepted: send the hash list.
    SendHashList,
    /// Send the chunks whose bit is clear (LSB first in byte `i / 8`); the
    /// others are already verified in the server's part file.
    Ready { have: Vec<u8> },
    /// The store already holds this content (under `name`): nothing to send.
    AlreadyStored { name: String },
    /// Complete, verified and published under `name`.
    Stored { name: String },
    Error {
        code: StoreErrorCode,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;

    #[test]
    fn pinned_encodings() {
        assert_eq!(
            encode_frame(&StoreRequest::Finish).unwrap(),
            [0, 0, 0, 1, 3]
        );
        assert_eq!(
            encode_frame(&StoreRequest::Chunk { index: 3, len: 7 }).unwrap(),
            [0, 0, 0, 3, 2, 3, 7]
        );
    }
}
