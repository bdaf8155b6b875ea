//! The p2pshare wire protocol, shared by the index server and every peer.
//!
//! Nothing here opens a socket or spawns a task: it is the pure protocol, so
//! that it can be unit-tested, fuzzed and reused by every paradigm.
//!
//! # Layout
//! - [`id`]: content identity. A file's [`FileId`] is a SHA-256 root over its
//!   size and the list of its 256 KiB chunk hashes, so every chunk is verified
//!   on arrival and a bad source is caught at chunk granularity.
//! - [`frame`]: length-prefixed frames and the one bincode configuration
//!   (byte limit, trailing bytes rejected).
//! - [`hello`]: the fixed 8-byte versioned handshake that opens every
//!   connection, readable by any future version.
//! - [`identity`]: node keys and [`identity::PeerId`]s (ed25519 public keys).
//! - [`secure`]: the Noise handshake after the hello and the encrypting
//!   stream wrapper every connection runs through (or clear text with
//!   `--insecure` on both sides).
//! - [`index_proto`]: peer/client ⇄ index server messages.
//! - [`peer_proto`]: peer ⇄ peer messages (hash lists, chunks, availability).
//! - [`store_proto`]: client → index server store uploads (client-server mode).
//! - [`overlay_proto`]: the pure peer-to-peer overlay (ping/pong, flooded
//!   queries, hits routed back).
//! - [`wire`]: async frame I/O over any `AsyncRead`/`AsyncWrite`, with a
//!   deadline on every whole frame.
//! - [`limits`]: every cap and default timeout in one place.
//! - [`names`]: file-name tokenisation and validation for keyword search.
//! - [`search`]: how a query matches names (folding, prefixes, runs of
//!   unspaced scripts, exclusions), the same in the index and the overlay.
//! - [`target`]: a file as a user names it (id, id prefix, exact name) and
//!   the one ambiguity rule every mode uses.
//! - [`im`]: nickname and direct-message rules (instant messaging).
//! - [`units`]: durations and sizes as typed on the command line.
//! - [`sample`]: deterministic pseudo-random sample content.
//! - [`report`]: an error and its causes, each said once, for the commands.
//! - `fuzzing` (feature `fuzzing`): the checks the fuzz targets run.

pub mod env_vars;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hello;
pub mod id;
pub mod identity;
pub mod im;
pub mod index_proto;
pub mod limits;
pub mod names;
pub mod overlay_proto;
pub mod peer_proto;
pub mod reach;
pub mod report;
pub mod sample;
pub mod search;
pub mod secure;
pub mod store_proto;
pub mod target;
pub mod units;
pub mod wire;

pub use id::{FileId, CHUNK_SIZE};
