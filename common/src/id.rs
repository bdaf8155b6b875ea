//! Content identity: chunk hashes and the file id that authenticates them.
//!
//! A file is cut into [`CHUNK_SIZE`] chunks (the last one may be shorter; an
//! empty file has none). Each chunk's hash is `SHA-256(chunk)`. The file id is
//!
//! ```text
//! SHA-256( "p2pshare/v1" || size as u64 little-endian || hash_0 || hash_1 || ... )
//! ```
//!
//! so a hash list fetched from any peer is checked against the id before it
//! is trusted, and every chunk is then checked against its own hash before it
//! is written. This is eDonkey's hash list with SHA-256; see DESIGN.md for why
//! a flat list rather than a Merkle tree.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Size of every chunk but the last.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Domain-separation prefix of the file id.
const ID_DOMAIN: &[u8] = b"p2pshare/v1";

/// A SHA-256 digest of one chunk.
pub type ChunkHash = [u8; 32];

/// The content id of a file. Prints and parses as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub [u8; 32]);

impl FileId {
    /// The id as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 16 hex digits, for log lines and temporary file names.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.short())
    }
}

/// Why a string is not a file id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a file id is 64 hexadecimal digits, got {0:?}")]
pub struct ParseIdError(pub String);

impl FromStr for FileId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(ParseIdError(s.chars().take(80).collect()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError(s.to_string()))?;
        Ok(FileId(out))
    }
}

/// Number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE as u64)
}

/// Length of chunk `index` of a file of `size` bytes (0 past the end).
pub fn chunk_len(size: u64, index: u64) -> usize {
    let start = index.saturating_mul(CHUNK_SIZE as u64);
    if start >= size {
        return 0;
    }
    (size - start).min(CHUNK_SIZE as u64) as usize
}

/// Hash of one chunk.
pub fn hash_chunk(data: &[u8]) -> ChunkHash {
    Sha256::digest(data).into()
}

/// The file id of a file of `size` bytes with these chunk hashes.
pub fn file_id(size: u64, hashes: &[ChunkHash]) -> FileId {
    let mut h = Sha256::new();
    h.update(ID_DOMAIN);
    h.update(size.to_le_bytes());
    for c in hashes {
        h.update(c);
    }
    FileId(h.finalize().into())
}

/// A verified description of a file's content: its id, size and chunk hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentInfo {
    pub id: FileId,
    pub size: u64,
    pub hashes: Vec<ChunkHash>,
}

impl fmt::Debug for ContentInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ContentInfo({}, {} bytes, {} chunks)",
            self.id.short(),
            self.size,
            self.hashes.len()
        )
    }
}

/// Why a hash list does not describe the file it claims to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashListError {
    #[error("hash list has {got} bytes, a {size}-byte file needs {expected}")]
    WrongLength {
        size: u64,
        got: usize,
        expected: u64,
    },
    #[error("hash list does not match file id {expected}")]
    RootMismatch { expected: FileId },
}

impl ContentInfo {
    /// Parses a raw hash list (32 bytes per chunk) received for `id` and
    /// accepts it only if it hashes to that id.
    pub fn from_hash_list(id: FileId, size: u64, raw: &[u8]) -> Result<Self, HashListError> {
        let expected = chunk_count(size) * 32;
        if raw.len() as u64 != expected {
            return Err(HashListError::WrongLength {
                size,
                got: raw.len(),
                expected,
            });
        }
        let hashes: Vec<ChunkHash> = raw
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        if file_id(size, &hashes) != id {
            return Err(HashListError::RootMismatch { expected: id });
        }
        Ok(ContentInfo { id, size, hashes })
    }

    /// The hash list as raw bytes, as it travels on the wire.
    pub fn hash_list_bytes(&self) -> Vec<u8> {
        self.hashes.iter().flat_map(|h| h.iter().copied()).collect()
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Length of chunk `index`.
    pub fn chunk_len(&self, index: u32) -> usize {
        chunk_len(self.size, index as u64)
    }

    /// Whether `data` is exactly chunk `index` of this file.
    pub fn verify_chunk(&self, index: u32, data: &[u8]) -> bool {
        match self.hashes.get(index as usize) {
            Some(expected) => data.len() == self.chunk_len(index) && hash_chunk(data) == *expected,
            None => false,
        }
    }
}

/// Incremental hasher: feed a file's bytes in any split, get its [`ContentInfo`].
pub struct FileHasher {
    pending: Vec<u8>,
    hashes: Vec<ChunkHash>,
    size: u64,
}

impl Default for FileHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl FileHasher {
    pub fn new() -> Self {
        FileHasher {
            pending: Vec::with_capacity(CHUNK_SIZE),
            hashes: Vec::new(),
            size: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (CHUNK_SIZE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == CHUNK_SIZE {
                self.hashes.push(hash_chunk(&self.pending));
                self.pending.clear();
            }
        }
        // Whole chunks straight from the caller's buffer: no copy.
        while data.len() >= CHUNK_SIZE {
            self.hashes.push(hash_chunk(&data[..CHUNK_SIZE]));
            data = &data[CHUNK_SIZE..];
        }
        self.pending.extend_from_slice(data);
    }

    pub fn finish(mut self) -> ContentInfo {
        if !self.pending.is_empty() {
            self.hashes.push(hash_chunk(&self.pending));
        }
        ContentInfo {
            id: file_id(self.size, &self.hashes),
            size: self.size,
            hashes: self.hashes,
        }
    }
}

/// Hashes a whole in-memory buffer.
pub fn content_info(data: &[u8]) -> ContentInfo {
    let mut h = FileHasher::new();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_file_has_a_fixed_id() {
        let info = content_info(b"");
        assert_eq!(info.hashes.len(), 0);
        assert_eq!(info.id, file_id(0, &[]));
        // Pinned so that an accidental change of the id scheme is caught.
        let expected: [u8; 32] =
            Sha256::digest([b"p2pshare/v1".as_slice(), &[0u8; 8]].concat()).into();
        assert_eq!(info.id.0, expected);
    }

    #[test]
    fn chunk_geometry() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_SIZE as u64), 1);
        assert_eq!(chunk_count(CHUNK_SIZE as u64 + 1), 2);
        assert_eq!(chunk_len(CHUNK_SIZE as u64 + 1, 1), 1);
        assert_eq!(chunk_len(10, 5), 0);
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let id = content_info(b"hello").id;
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, s.to_lowercase());
        assert_eq!(s.parse::<FileId>().unwrap(), id);
        assert!("xyz".parse::<FileId>().is_err());
        assert!("g".repeat(64).parse::<FileId>().is_err());
    }

    #[test]
    fn hash_list_is_checked_against_the_id() {
        let data = vec![7u8; CHUNK_SIZE * 2 + 5];
        let info = content_info(&data);
        let raw = info.hash_list_bytes();
        assert_eq!(
            ContentInfo::from_hash_list(info.id, info.size, &raw).unwrap(),
            info
        );
        let mut bad = raw.clone();
        bad[3] ^= 1;
        assert!(matches!(
            ContentInfo::from_hash_list(info.id, info.size, &bad),
            Err(HashListError::RootMismatch { .. })
        ));
        assert!(matches!(
            ContentInfo::from_hash_list(info.id, info.size, &raw[..32]),
            Err(HashListError::WrongLength { .. })
        ));
        // A size that lies is caught too: the size is part of the root.
        assert!(ContentInfo::from_hash_list(info.id, info.size - 1, &raw).is_err());
    }

    #[test]
    fn chunks_verify_individually() {
        let data: Vec<u8> = (0..CHUNK_SIZE * 3).map(|i| (i % 251) as u8).collect();
        let info = content_info(&data);
        assert!(info.verify_chunk(1, &data[CHUNK_SIZE..2 * CHUNK_SIZE]));
        assert!(!info.verify_chunk(0, &data[CHUNK_SIZE..2 * CHUNK_SIZE]));
        assert!(!info.verify_chunk(9, &data[..10]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_split_gives_the_same_id(data in proptest::collection::vec(any::<u8>(), 0..(CHUNK_SIZE * 2 + 100)), cut in any::<prop::sample::Index>()) {
            let whole = content_info(&data);
            let at = cut.index(data.len() + 1);
            let mut h = FileHasher::new();
            h.update(&data[..at]);
            h.update(&data[at..]);
            prop_assert_eq!(h.finish(), whole);
        }
    }
}
