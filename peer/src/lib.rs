//! The p2pshare peer: shares a folder, searches the index, and downloads
//! verified chunks directly from the peers that hold a file.
//!
//! # Layout
//! - [`serve`]: the `peer serve` daemon (scan, chunk server, registrar).
//! - [`library`]: what this peer can serve, by id: complete shared files and
//!   partial downloads.
//! - [`scan`]: walking and hashing the shared folder, with a persistent cache.
//! - [`chunk_server`]: the upload side of the peer protocol.
//! - [`registrar`]: staying registered at the index (leases, diffs, reconnects).
//! - [`index_client`]: one connection to the index, for daemon and CLI.
//! - [`download`]: the transfer engine shared by every paradigm: hash list,
//!   multi-source pipelined fetching, per-chunk verification, resume, publish.
//! - [`get`]: `peer get` for the hybrid model (index lookup, then download).

pub mod chunk_server;
pub mod download;
pub mod get;
pub mod index_client;
pub mod library;
pub mod registrar;
pub mod scan;
pub mod serve;

pub use download::{DownloadOutcome, DownloadRequest, EngineConfig, Progress};
pub use serve::{Daemon, ServeConfig};
