//! The index's relay (`index-server --relay`): the engine shared with
//! public peers that relay (`peer serve --relay`), in `transfer::relay`.

pub use transfer::relay::*;
