//! The transfer engine of p2pshare, shared by every paradigm: the hybrid
//! peers, the client-server store and the pure peer-to-peer overlay all
//! serve and fetch files through this crate.
//!
//! # Layout
//! - [`library`]: what a node can serve, by id: complete shared files and
//!   partial downloads (with the bitfield of verified chunks).
//! - [`scan`]: walking and hashing a shared folder, with a persistent cache.
//! - [`chunk_server`]: the upload side of the peer protocol (hash lists,
//!   availability, chunks), with upload slots held only while data is sent; `send` puts a chunk's
//!   bytes on the socket (`sendfile` from the page cache where it can).
//! - [`download`]: one verified multi-source download: hash list, pipelined
//!   sources, scheduler with endgame, verifier threads, resume, publish;
//!   pooled chunk buffers and direct (`O_DIRECT`) writes in `download::disk`.
//! - [`inbox`]: direct messages received on the chunk server's port
//!   (checked, rate-limited per source, kept and written to a file).
//! - [`net`]: connecting with a deadline, and the secure connection setup
//!   ([`net::connect`], [`net::accept`]) every connection goes through.
//! - [`keyfile`]: node key and network key files (created 0600, checked).
//! - [`admission`]: connection caps in all and per source address.
//! - [`upload_queue`]: upload slots and the fair, visible queue of
//!   requesters waiting for one.
//! - `testing` (feature `test-support`): misbehaving fake sources for tests.
//! - [`rate`]: token-bucket rate limits shared by all connections of a node.
//! - [`metrics`]: Prometheus metrics: the engine's counters and families
//!   read from live state when scraped, shared by the peer and the index.
//! - [`refused`]: shared files left out of a registration because the index
//!   would refuse their names, warned about once each.

pub mod admission;
pub mod chunk_server;
pub mod download;
pub mod inbox;
pub mod keyfile;
pub mod library;
pub mod metrics;
pub mod net;
pub mod rate;
pub mod refused;
pub mod relay;
pub mod scan;
mod send;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod upload_queue;

pub use download::{DownloadError, DownloadOutcome, DownloadRequest, EngineConfig, Progress};
