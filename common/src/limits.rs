//! Every protocol cap and default timeout, in one place.

use std::time::Duration;

/// Protocol version spoken by this build. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest control frame (any serialized message). Checked against the
/// length prefix before anything is allocated. File data never travels in a
/// control frame, so 1 MiB is ample (libtorrent refuses messages over 1 MiB).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Longest file name accepted by the index, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Most files in one `AddFiles` batch; a batch of maximal names still fits a frame.
pub const MAX_FILES_PER_BATCH: usize = 512;

/// Most search words in one query.
pub const MAX_SEARCH_WORDS: usize = 16;

/// Longest search word, in bytes.
pub const MAX_WORD_LEN: usize = 128;

/// Most candidate files one search ranks: a query that matches more (a
/// two-letter prefix of a million files) ranks its whole-word matches
/// first and then the others in index order up to this many, and
/// estimates its total from them, so that no query holds the index for
/// more than a few milliseconds.
pub const MAX_RANKED: usize = 5_000;

/// Default and hard cap of search results (Napster answered at most 100).
pub const DEFAULT_SEARCH_LIMIT: u32 = 100;
pub const MAX_SEARCH_LIMIT: u32 = 1000;

/// Largest file the protocol describes: 1 TiB (4 Mi chunks, a 128 MiB hash list).
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Deadline for the 8-byte hello exchange.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for the rest of a frame once its first byte has arrived.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for connecting to an index or a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest nickname, in bytes.
pub const MAX_NICK_LEN: usize = 32;

/// Longest direct message text, in bytes (checked by sender and receiver).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Upload connections (peer protocol) a peer holds at once; more are told
/// `Busy` in the hello. Holding one costs a socket and a task, not a slot.
pub const UPLOAD_CONNECTIONS: usize = 256;

/// Upload connections one source address (IPv4, or IPv6 /64) may hold at
/// once: one download opens one connection per source, so 8 leaves room
/// for several downloads from one host (or one NAT) and keeps a single
/// host from taking every place (libtorrent allows one per IP per torrent).
pub const UPLOAD_CONNECTIONS_PER_SOURCE: usize = 8;

/// A new upload connection must send its first request within this long.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An upload connection that asked for no data (a chunk or a hash list) for
/// this long is closed; cheap requests (`Have`, messages) do not extend it.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// Upload slots of a serving peer (`peer serve --max-uploads`) without an
/// upload cap: requesters served at once; further ones wait in its upload
/// queue. With a cap, [`upload_slots_for`].
pub const UPLOAD_SLOTS: usize = 32;

/// Upload rate each slot should get at least, bytes per second, where the
/// upload rate is capped: half a chunk a second, so a request waits at most
/// about two seconds per requester ahead of it.
pub const UPLOAD_SLOT_RATE: u64 = 128 * 1024;

/// Fewest upload slots a capped peer keeps (BitTorrent unchokes 4).
pub const UPLOAD_SLOTS_MIN: usize = 4;

/// The default upload slots of a peer whose uploads are capped at `rate`
/// bytes per second: one per [`UPLOAD_SLOT_RATE`], from
/// [`UPLOAD_SLOTS_MIN`] to [`UPLOAD_SLOTS`]; [`UPLOAD_SLOTS`] without a cap.
///
/// As eMule and aMule derive their slots from the upload limit (a slot per
/// few KB/s), and BitTorrent unchokes a handful of peers: in a swarm every
/// request queued at an uploader is a chunk nobody else is asked for, and
/// with 32 slots at 1 MB/s a request waited behind up to 31 others (8 s).
/// Issue 17, 128 processes at 1 MB/s each and a seed at 4 MB/s (hybrid,
/// one run each): 1.29 and 1.32 of the P2P bound with this rule (8 slots,
/// the seed 31), 1.42 to 1.46 with 32 (both with three copies of a chunk
/// in the endgame); docs/benchmarks.md.
pub fn upload_slots_for(rate: Option<u64>) -> usize {
    match rate {
        None | Some(0) => UPLOAD_SLOTS,
        Some(r) => (r.div_ceil(UPLOAD_SLOT_RATE) as usize).clamp(UPLOAD_SLOTS_MIN, UPLOAD_SLOTS),
    }
}

/// A requester waiting in the upload queue (`PeerRequest::Wait`) is
/// answered at least this often, so that its read deadline never fires
/// while it waits and a dead connection is noticed.
pub const QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// Most requesters waiting in one peer's upload queue. Each waiting one
/// costs about 100 bytes of queue state (plus, while connected, one small
/// connection); past this, requesters are told `Busy` as before.
pub const UPLOAD_QUEUE_MAX: usize = 4096;

/// Most places in the upload queue one source address (IPv4, IPv6 /64)
/// may hold, so that one host cannot fill the queue with made-up
/// requester tokens; a NAT with several users still gets several places.
pub const UPLOAD_QUEUE_PER_SOURCE: usize = 16;

/// How long a waiting requester keeps its place after its last connection
/// closed: a reconnection within it keeps the place, after it the place
/// is given up (so a requester that never comes back holds nothing).
pub const UPLOAD_QUEUE_GRACE: Duration = Duration::from_secs(60);

/// While others wait, a requester holds an upload slot at most this long
/// before it goes back to the end of the queue (eMule rotates its slots
/// the same way), so a long download cannot keep a slot forever.
pub const UPLOAD_SLOT_TIME: Duration = Duration::from_secs(300);

/// While others wait, a slot whose holder asked for no chunk for this long
/// is given to the next in the queue.
pub const UPLOAD_SLOT_IDLE: Duration = Duration::from_secs(5);

/// Fewest hex digits of an id prefix that stands for an id (`peer get
/// 1a2b3c4d`): 32 bits, so that a prefix picks one of 64 index shards and a
/// random collision among a million files is rare (about 1 in 4,000).
pub const MIN_ID_PREFIX_LEN: usize = 8;

/// Most candidates the index answers to an exact-name or id-prefix lookup
/// (more than one is ambiguous: they are listed for the user to choose).
pub const MAX_LOOKUP_CANDIDATES: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_peers_get_a_slot_per_128_kib_per_second() {
        assert_eq!(upload_slots_for(None), UPLOAD_SLOTS);
        assert_eq!(upload_slots_for(Some(0)), UPLOAD_SLOTS);
        assert_eq!(upload_slots_for(Some(100_000)), UPLOAD_SLOTS_MIN);
        assert_eq!(upload_slots_for(Some(1_000_000)), 8);
        assert_eq!(upload_slots_for(Some(4_000_000)), 31);
        assert_eq!(upload_slots_for(Some(1 << 30)), UPLOAD_SLOTS);
    }
}
