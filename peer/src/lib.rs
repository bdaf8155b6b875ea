//! The p2pshare peer: shares a folder, searches the index, and downloads
//! verified chunks directly from the peers that hold a file.
//!
//! # Layout
//! - [`addr`]: `HOST:PORT` arguments (default ports, host names).
//! - [`serve`]: the `peer serve` daemon (scan, chunk server, registrar).
//! - [`api`]: the daemon's HTTP/JSON API (axum): router, token, Host check.
//! - [`daemon`]: downloads owned by the daemon (queue, states, redb store)
//!   and the client local commands use to reach a running daemon.
//! - [`pipeline`]: one path from a name to verified bytes, every mode.
//! - [`web`]: the web page the API serves at `/` (embedded, no build step).
//! - [`metrics`]: the daemon's Prometheus metrics (`/metrics`).
//! - [`registrar`]: staying registered at the index (leases, diffs, reconnects).
//! - [`index_client`]: one connection to the index, for daemon and CLI.
//! - [`get`]: `peer get` for the hybrid model (index lookup, then download).
//! - [`im`]: instant messaging: nickname lookup at the index, then the
//!   message straight to the peer; the default nickname (host name).
//! - [`client_server`]: `peer put` into the index server's store and
//!   `peer get --mode client-server` (the server is the only source).
//! - [`overlay`]: the pure peer-to-peer overlay (Gnutella-style flooding):
//!   a socket-free routing core and its network layer.
//! - [`target`]: what `peer get TARGET` and `peer serve --fetch` name (id,
//!   id prefix, exact name), resolved by one rule in every mode.
//! - [`swarm`]: `Daemon::download`, a daemon fetching a file while serving
//!   its verified chunks and listing it at the index as partial (swarming).
//!
//! The transfer engine itself (library, scanning, chunk server, download)
//! lives in the `transfer` crate, shared with the index server's store; it
//! is re-exported here under the same names, as is the [`inbox`] of
//! direct messages.

pub mod addr;
pub mod api;
pub mod callback;
pub mod client_server;
pub mod daemon;
pub mod im;
pub mod index_client;
pub mod metrics;
pub mod overlay;
pub mod pipeline;
pub mod registrar;
pub mod serve;
pub mod stats_log;
pub mod swarm;
pub mod target;
pub mod web;

pub use transfer::{chunk_server, download, inbox, library, rate, scan};

pub use download::{DownloadOutcome, DownloadRequest, EngineConfig, Progress};
pub use serve::{Daemon, ServeConfig};
