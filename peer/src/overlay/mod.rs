//! Pure peer-to-peer mode: a Gnutella 0.6 style overlay, no server at all.
//!
//! Nodes keep a few neighbours (ping/pong to learn others, a target degree,
//! dead neighbours replaced), flood queries with a hop limit and a unique
//! id, drop ids already seen, answer from their own share, and route hits
//! back along the reverse path. A file found this way is fetched with the
//! same verified multi-source engine as in every other mode.
//!
//! # Layout
//! - [`router`]: the routing core, without sockets (seen-table, TTL,
//!   reverse path, counters); unit-tested on its own.
//! - [`node`]: the network side: links, the router task, the degree keeper;
//!   it handles `Overlay` connections on the peer's usual port.
//! - [`search`]: the searching client and how it measures the cost.
//! - `peer get --mode p2p` searches, then downloads from the nodes that
//!   answered, through [`crate::pipeline`].

pub mod node;
pub mod router;
pub mod search;

pub use node::{Overlay, OverlayConfig, DEFAULT_DEGREE, DEFAULT_PING_INTERVAL};
pub use router::OverlayCounters;
pub use search::{search, SearchReport, DEFAULT_TTL, DEFAULT_WAIT};
