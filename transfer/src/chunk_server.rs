//! The upload side: serves hash lists, availability and chunks by file id.
//!
//! Requests may be pipelined; answers go out in order, each chunk as a small
//! header frame followed by its raw bytes. Only ids are accepted from the
//! wire: the file behind an id comes from the [`Library`], never from a path
//! in a message. A direct message (`Message`) is handed to the node's
//! [`Inbox`] when it has one.
//!
//! **Upload slots** (eMule's upload slots, BitTorrent's unchoked peers): a
//! requester holds one of `max_uploads` slots from its first chunk request
//! until its last connection closes (or it idles, or its turn is over,
//! while others wait); over the slots it gets a place in the fair, visible
//! queue of [`crate::upload_queue`] and is told its position (`Queued`), or,
//! when it is an older build that cannot wait, `Busy`. Hash lists, `Have`
//! and messages need no slot: a queued downloader can start with others.
//! **Connections** are capped in all and per source address ([`Admission`]);
//! over either cap the hello answers `Busy`. A connection must send its first
//! request within `FIRST_REQUEST_TIMEOUT` and is closed once it has asked for
//! no data for `UPLOAD_IDLE`: cheap requests do not keep it open.
//!
//! **Pushed availability**: a connection that sent `Subscribe` for a file
//! held partially is told of each chunk verified from then on (`Gained`),
//! between answers and while it waits for the next request.
//!
//! **Upload cap**: chunks take the node's rate limiter in turns, a whole
//! chunk per turn, not interleaved piece by piece (see the chunk request).
//! While a chunk waits for its turn, the connection is still read: a
//! `Cancel` for it (the downloader got it elsewhere) answers `Cancelled`
//! and gives the turn up, and so does the downloader closing the
//! connection, so the cap is not spent on chunks nobody will use.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::hello::{
    Protocol, FEATURE_CANCEL, FEATURE_HAVE_PUSH, FEATURE_SIGNED_MESSAGES, FEATURE_UPLOAD_QUEUE,
};
use common::id::FileId;
use common::peer_proto::{PeerErrorCode, PeerRequest, PeerResponse};
use common::reach::LoginNonce;
use common::secure::SecureWrite;
use common::wire::{self, Deadlines, WireError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::admission::Admission;
use crate::inbox::Inbox;
use crate::library::{Holding, Library, OpenHolding, ReadChunkError};
use crate::net::{Conn, ConnReader};
use crate::rate::RateLimiter;
use crate::send::send_chunk;
use crate::upload_queue::{Decision, QueueConfig, UploadQueue};

/// Counters of what this peer has uploaded.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    /// Peer-protocol connections accepted, not counting the index's
    /// reachability dial-backs (a probe, not a downloader).
    pub connections: AtomicU64,
}

impl UploadStats {
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }
}

/// Another protocol served on the chunk server's port (the overlay, a
/// store): the hello's protocol byte picks it, so one port per node carries
/// them all. Peer-protocol connections keep going to the chunk server.
pub trait ProtocolHandler: Send + Sync + 'static {
    /// The protocols this handler speaks (never `Peer`).
    fn protocols(&self) -> &[Protocol];
    /// Whether a new connection for `protocol` must be told `Busy`.
    fn is_busy(&self, _protocol: Protocol) -> bool {
        false
    }
    /// Serves one connection whose hello has been answered.
    fn serve(
        &self,
        protocol: Protocol,
        stream: Conn,
        remote: SocketAddr,
        shutdown: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

/// Accepts peer connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    library: Library,
    max_uploads: usize,
    stats: Arc<UploadStats>,
    inbox: Option<Inbox>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let config = ChunkServerConfig {
        max_uploads,
        stats,
        inbox,
        others: None,
        upload_limit: None,
        ..ChunkServerConfig::new(library)
    };
    serve_with(listener, config, tracker, shutdown).await
}

/// What a chunk server serves, besides its socket.
#[derive(Clone)]
pub struct ChunkServerConfig {
    pub library: Library,
    /// Upload slots: requesters served at once; more wait in the queue
    /// (ignored when `queue` is given).
    pub max_uploads: usize,
    /// The upload slots and queue, when the caller wants a handle on them
    /// (to list them); `None`: one with `max_uploads` slots and the default caps.
    pub queue: Option<UploadQueue>,
    /// Peer-protocol connections held at once; more are told `Busy`.
    pub max_connections: usize,
    /// Peer-protocol connections one source address may hold; more are told `Busy`.
    pub max_connections_per_ip: usize,
    /// Deadline for a new connection's first request.
    pub first_request_timeout: Duration,
    /// A connection that asked for no data for this long is closed.
    pub idle: Duration,
    pub stats: Arc<UploadStats>,
    /// Where direct messages go; `None` refuses them.
    pub inbox: Option<Inbox>,
    /// Handlers for the other protocols sharing this port (the overlay).
    pub others: Option<Arc<dyn ProtocolHandler>>,
    /// Cap on the bytes per second of all uploads together.
    pub upload_limit: Option<Arc<RateLimiter>>,
    /// This node's login nonce at the index, to answer its reachability
    /// dial-backs (`common::reach`); `None` refuses them.
    pub login_nonce: Option<LoginNonce>,
}

impl ChunkServerConfig {
    /// Serves `library` with the default caps (`common::limits`), 32 upload
    /// slots, no inbox, no other protocol and no rate cap.
    pub fn new(library: Library) -> Self {
        ChunkServerConfig {
            library,
            max_uploads: common::limits::UPLOAD_SLOTS,
            queue: None,
            max_connections: common::limits::UPLOAD_CONNECTIONS,
            max_connections_per_ip: common::limits::UPLOAD_CONNECTIONS_PER_SOURCE,
            first_request_timeout: common::limits::FIRST_REQUEST_TIMEOUT,
            idle: common::limits::UPLOAD_IDLE,
            stats: Arc::default(),
            inbox: None,
            others: None,
            upload_limit: None,
            login_nonce: None,
        }
    }
}

/// How one peer-protocol connection is held: the node's upload slots and
/// queue, and the connection's deadlines (shared by the chunk server and
/// the store).
#[derive(Debug, Clone)]
pub struct SessionRules {
    /// Upload slots and the queue of requesters waiting for one.
    pub queue: UploadQueue,
    /// Deadline for the first request.
    pub first_request: Duration,
    /// Closed after this long without a data request (chunk or hash list).
    pub idle: Duration,
    /// Answers the index's reachability dial-backs (`common::reach`);
    /// `None` refuses them.
    pub login_nonce: Option<LoginNonce>,
}

impl SessionRules {
    /// `slots` upload slots (at least 1), the default queue caps and deadlines.
    pub fn new(slots: usize) -> Self {
        SessionRules {
            queue: UploadQueue::new(QueueConfig::new(slots)),
            first_request: common::limits::FIRST_REQUEST_TIMEOUT,
            idle: common::limits::UPLOAD_IDLE,
            login_nonce: None,
        }
    }
}

/// Accepts connections until `shutdown`: the peer protocol is served here,
/// any protocol of `others` is handed to it.
pub async fn serve_with(
    listener: TcpListener,
    config: ChunkServerConfig,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let ChunkServerConfig {
        library,
        max_uploads,
        queue,
        max_connections,
        max_connections_per_ip,
        first_request_timeout,
        idle,
        stats,
        inbox,
        others,
        upload_limit,
        login_nonce,
    } = config;
    let queue = queue.unwrap_or_else(|| UploadQueue::new(QueueConfig::new(max_uploads)));
    tracker.spawn(queue.clone().run_sweeper(shutdown.clone()));
    let rules = SessionRules {
        queue,
        first_request: first_request_timeout,
        idle,
        login_nonce,
    };
    let admission = Admission::new(max_connections, max_connections_per_ip);
    let mut accepted_protocols = vec![Protocol::Peer];
    if let Some(h) = &others {
        accepted_protocols.extend(h.protocols().iter().filter(|p| **p != Protocol::Peer));
    }
    let accepted_protocols: Arc<[Protocol]> = accepted_protocols.into();
    let mut backoff = crate::net::AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors: connections wait in the backlog.
                let pause = backoff.failed("chunk server", &e);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        backoff.succeeded("chunk server");
        crate::net::tune_socket(&stream);
        let (library, stats, shutdown) = (library.clone(), stats.clone(), shutdown.clone());
        let inbox = inbox.clone();
        let limit = upload_limit.clone();
        let (rules, admission, others, accepted_protocols) = (
            rules.clone(),
            admission.clone(),
            others.clone(),
            accepted_protocols.clone(),
        );
        tracker.spawn(async move {
            // The connection's place is taken while answering the hello, so
            // a peer over a cap is told `Busy` instead of being accepted and
            // dropped. It holds no upload slot until it asks for data.
            let mut place = None;
            let hello = tokio::select! {
                _ = shutdown.cancelled() => return,
                h = crate::net::accept(stream, &accepted_protocols, |p| match p {
                    Protocol::Peer => match admission.try_admit(remote.ip()) {
                        Ok(admitted) => {
                            place = Some(admitted);
                            false
                        }
                        Err(why) => {
                            debug!(%remote, %why, "upload connection refused as busy");
                            true
                        }
                    },
                    other => others.as_ref().is_some_and(|h| h.is_busy(other)),
                }, |p| if p == Protocol::Peer { FEATURE_UPLOAD_QUEUE | FEATURE_HAVE_PUSH | FEATURE_SIGNED_MESSAGES | FEATURE_CANCEL } else { 0 }) => h,
            };
            let (protocol, stream) = match hello {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(%remote, error = %e, "hello refused");
                    return;
                }
            };
            if protocol != Protocol::Peer {
                if let Some(h) = others {
                    h.serve(protocol, stream, remote, shutdown).await;
                }
                return;
            }
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let result = tokio::select! {
                _ = shutdown.cancelled() => Ok(()),
                r = serve_peer_session(stream, remote, &library, &stats, inbox.as_ref(), limit.as_deref(), &rules) => r,
            };
            match result {
                Ok(()) => debug!(%remote, "upload connection closed"),
                Err(e) if e.is_protocol_violation() => {
                    debug!(%remote, error = %e, "closing upload connection after bad input")
                }
                Err(e) => debug!(%remote, error = %e, "upload connection ended"),
            }
            drop(place);
        });
    }
}

/// A waiting requester is told that its place moved at most this often (a
/// slot, at once): at every hand-over each of a thousand waiters moves up.
const POSITION_CALM: Duration = Duration::from_secs(1);

fn refusal(code: PeerErrorCode, message: impl Into<String>) -> PeerResponse {
    PeerResponse::Error {
        code,
        message: message.into(),
    }
}

/// Serves the peer protocol on a connection whose hello was answered (also
/// used by the index server's store, which shares its port with the index).
/// Holds one of `rules.slots` while sending each chunk or hash list; ends
/// the connection (a `Timeout` error) when the first request is later than
/// `rules.first_request` or no data was asked for during `rules.idle`.
pub async fn serve_peer_session(
    stream: Conn,
    remote: SocketAddr,
    library: &Library,
    stats: &UploadStats,
    inbox: Option<&Inbox>,
    limit: Option<&RateLimiter>,
    rules: &SessionRules,
) -> Result<(), WireError> {
    // The id the connection's handshake proved: a message's sender.
    let sender = stream.remote();
    let (r, w) = stream.into_split();
    // Small buffers until a slot is held: a queue of a thousand waiting
    // connections costs a few MiB, not a quarter of a GiB.
    let mut reader = BufReader::with_capacity(2048, r);
    let mut writer = BufWriter::with_capacity(2048, w);
    let mut big_writer = false;
    // Legacy (its own requester, never queued) until it says who it is.
    let mut requester = rules.queue.connect(remote);
    // The queue position last told on this connection.
    let mut shown: Option<u32> = None;
    let mut frame = Vec::new();
    // Files opened on this connection, so a run of chunk requests opens once.
    let mut open: HashMap<FileId, Arc<OpenHolding>> = HashMap::new();
    let mut chunk_buf: Vec<u8> = Vec::new();
    let mut counted_as_probe = false;
    // Until the first request: the short deadline. After it, `idle` from the
    // last data request (or from the start): cheap requests never extend it.
    let started = Instant::now();
    let mut hold_until = started + rules.first_request;
    // The partial file this connection subscribed to (`Subscribe`): its
    // newly held chunks are pushed between answers.
    let mut pushing: Option<Push> = None;
    // Requests read while a chunk waited for its turn ([`wait_turn`]), each
    // with whether a `Cancel` took it back meanwhile.
    let mut ahead: std::collections::VecDeque<(PeerRequest, bool)> = Default::default();
    // The downloader closed its side while a chunk waited: what it asked
    // before that is still answered (a bad-chunk report is sent just before
    // a half-close), its chunks are not.
    let mut read_closed = false;
    loop {
        if let Some(push) = &mut pushing {
            if push.changed.has_changed().unwrap_or(false) {
                push.send_gains(&mut writer).await?;
            }
            if ahead.is_empty() && reader.buffer().is_empty() && !reader.get_ref().has_buffered() {
                // Nothing more asked yet: push gains as they come until it is.
                writer.flush().await?;
                loop {
                    tokio::select! {
                        r = reader.get_mut().get_mut().readable() => { r?; break; }
                        _ = tokio::time::sleep_until(hold_until) => break,
                        changed = push.changed.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            push.send_gains(&mut writer).await?;
                            writer.flush().await?;
                        }
                    }
                }
            }
        }
        let (request, taken_back) = match ahead.pop_front() {
            Some(read_before) => read_before,
            None if read_closed => {
                writer.flush().await?;
                return Ok(());
            }
            None => {
                let left = hold_until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(WireError::Timeout("a data request"));
                }
                let Some(request) = wire::read_message::<_, PeerRequest>(
                    &mut reader,
                    &mut frame,
                    Deadlines::with_idle(left),
                )
                .await?
                else {
                    return Ok(());
                };
                (request, false)
            }
        };
        hold_until = hold_until.max(started + rules.idle);
        match request {
            // Taken back before its turn came (read while another waited).
            PeerRequest::Chunk { id, index } if taken_back => {
                wire::write_message(&mut writer, &PeerResponse::Cancelled { id, index }).await?;
            }
            // Nothing waiting to take back: already served (or never
            // asked); a `Cancel` is never answered.
            PeerRequest::Cancel { .. } => {}
            PeerRequest::HashList { id } => match library.get(&id) {
                // No slot: a hash list is 1/8192 of its file, and a queued
                // downloader needs it to start with other sources.
                Some(h) => {
                    hold_until = Instant::now() + rules.idle;
                    let raw = h.info().hash_list_bytes();
                    let header = PeerResponse::HashList {
                        id,
                        size: h.info().size,
                        len: raw.len() as u32,
                    };
                    wire::write_message(&mut writer, &header).await?;
                    writer.write_all(&raw).await?;
                }
                None => {
                    wire::write_message(
                        &mut writer,
                        &refusal(PeerErrorCode::NotFound, "not shared here"),
                    )
                    .await?
                }
            },
            PeerRequest::Subscribe { id } => {
                let answer = match library.get(&id) {
                    Some(Holding::Partial(p)) => {
                        let push = Push::new(id, p);
                        let answer = PeerResponse::Have {
                            id,
                            size: push.partial.info.size,
                            complete: false,
                            bitfield: push.sent.clone(),
                        };
                        pushing = Some(push);
                        answer
                    }
                    // Nothing to push: it holds everything already.
                    Some(Holding::Complete(e)) => PeerResponse::Have {
                        id,
                        size: e.size,
                        complete: true,
                        bitfield: Vec::new(),
                    },
                    None => refusal(PeerErrorCode::NotFound, "not shared here"),
                };
                wire::write_message(&mut writer, &answer).await?;
            }
            PeerRequest::Have { id } => {
                let answer = match library.get(&id) {
                    Some(Holding::Complete(e)) => PeerResponse::Have {
                        id,
                        size: e.size,
                        complete: true,
                        bitfield: Vec::new(),
                    },
                    Some(Holding::Partial(p)) => PeerResponse::Have {
                        id,
                        size: p.info.size,
                        complete: false,
                        bitfield: p.bitfield(),
                    },
                    None => refusal(PeerErrorCode::NotFound, "not shared here"),
                };
                wire::write_message(&mut writer, &answer).await?;
            }
            PeerRequest::Chunk { id, index } => {
                let checked = match open_holding(library, &mut open, id).await {
                    Ok(handle) => handle.check_chunk(index).map(|len| (handle, len)),
                    Err(e) => Err(e),
                };
                match checked {
                    Ok((handle, len)) => {
                        hold_until = Instant::now() + rules.idle;
                        match requester.request(id) {
                            Decision::Serve => shown = None,
                            Decision::Queued(position) => {
                                shown = Some(position);
                                wire::write_message(
                                    &mut writer,
                                    &PeerResponse::Queued { position },
                                )
                                .await?;
                                continue_or_flush(&reader, &mut writer).await?;
                                continue;
                            }
                            Decision::Busy => {
                                let no = refusal(PeerErrorCode::Busy, "every upload slot is taken");
                                wire::write_message(&mut writer, &no).await?;
                                continue_or_flush(&reader, &mut writer).await?;
                                continue;
                            }
                        }
                        if !big_writer {
                            // Served from now on: the large buffer chunks go through.
                            writer.flush().await?;
                            writer = BufWriter::with_capacity(256 * 1024, writer.into_inner());
                            big_writer = true;
                        }
                        let header = PeerResponse::Chunk {
                            id,
                            index,
                            len: len as u32,
                        };
                        let offset = index as u64 * common::CHUNK_SIZE as u64;
                        // One chunk at a time through the cap: the whole
                        // chunk is paid for in one turn, then sent. Pieces
                        // interleaved over k connections would finish k
                        // chunks together after k chunk-times; in turns the
                        // first is whole after one, the second after two,
                        // ..., so each downloader can pass its chunk on
                        // sooner (a chunk is served only once verified).
                        // The answer's first byte waits for its turn, but
                        // its last byte comes no later than interleaved.
                        if let Some(limit) = limit {
                            let turn = wait_turn(
                                limit,
                                len as u64,
                                &mut reader,
                                &mut frame,
                                &mut ahead,
                                (id, index),
                            )
                            .await?;
                            match turn {
                                Turn::Granted => {}
                                Turn::Cancelled => {
                                    debug!(%remote, %id, chunk = index, "chunk request taken back before its turn");
                                    let answer = PeerResponse::Cancelled { id, index };
                                    wire::write_message(&mut writer, &answer).await?;
                                    continue_or_flush(&reader, &mut writer).await?;
                                    continue;
                                }
                                Turn::Closed => {
                                    ahead.retain(|(r, _)| !matches!(r, PeerRequest::Chunk { .. }));
                                    read_closed = true;
                                    continue;
                                }
                            }
                        }
                        send_chunk(
                            &mut writer,
                            &header,
                            &handle,
                            offset,
                            len,
                            None,
                            &mut chunk_buf,
                        )
                        .await?;
                        stats.chunks.fetch_add(1, Ordering::Relaxed);
                        stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
                        requester.sent(id, len as u64);
                    }
                    Err(e) => {
                        open.remove(&id);
                        let code = match e {
                            ReadChunkError::NotFound => PeerErrorCode::NotFound,
                            // Gone from the share: "not here", and stop advertising it.
                            ReadChunkError::Removed => {
                                library.request_rescan();
                                PeerErrorCode::NotFound
                            }
                            ReadChunkError::Changed | ReadChunkError::OutsideShare => {
                                info!(%id, error = %e, "refusing to serve a file that changed; rescanning");
                                library.request_rescan();
                                PeerErrorCode::FileChanged
                            }
                            // Out of descriptors: come back later, like a full upload slot.
                            ReadChunkError::Io(ref io) if crate::net::is_fd_exhaustion(io) => {
                                PeerErrorCode::Busy
                            }
                            ReadChunkError::Io(_) => PeerErrorCode::Internal,
                        };
                        wire::write_message(&mut writer, &refusal(code, e.to_string())).await?;
                    }
                }
            }
            PeerRequest::BadChunk { id, index } => {
                // Checked later by the scanner, rate-limited per file: a
                // false report costs one chunk read, never a rehash.
                if library.report_bad_chunk(id, index) {
                    info!(%remote, %id, chunk = index, "a downloader reports a chunk that failed verification; checking it");
                } else {
                    debug!(%remote, %id, chunk = index, "bad-chunk report ignored (not held, or checked recently)");
                }
                wire::write_message(&mut writer, &PeerResponse::Delivered).await?;
            }
            PeerRequest::Message { from, text } => {
                let answer = match inbox {
                    Some(inbox) => inbox.answer(remote.ip(), from, text, sender, None).await,
                    None => refusal(PeerErrorCode::BadRequest, "this node takes no messages"),
                };
                wire::write_message(&mut writer, &answer).await?;
            }
            PeerRequest::SignedMessage {
                from,
                text,
                sent_unix_ms,
                signature,
            } => {
                let signature = crate::inbox::MessageSignature {
                    sent_unix_ms,
                    signature,
                };
                let answer = match inbox {
                    Some(inbox) => {
                        inbox
                            .answer(remote.ip(), from, text, sender, Some(signature))
                            .await
                    }
                    None => refusal(PeerErrorCode::BadRequest, "this node takes no messages"),
                };
                wire::write_message(&mut writer, &answer).await?;
            }
            PeerRequest::ProveReachable { challenge } => {
                // The index checking that we are reachable is no upload
                // connection: take it back out of the count, once.
                if !counted_as_probe {
                    counted_as_probe = true;
                    stats.connections.fetch_sub(1, Ordering::Relaxed);
                }
                let answer = match rules.login_nonce.as_ref().and_then(|n| n.prove(&challenge)) {
                    Some(proof) => PeerResponse::Reachable { proof },
                    None => refusal(
                        PeerErrorCode::NotFound,
                        "this node is not logged in at an index",
                    ),
                };
                wire::write_message(&mut writer, &answer).await?;
            }
            PeerRequest::Requester { token } => {
                // Its place (or slot) from an earlier connection, if any.
                requester = rules.queue.connect_announced(remote, token);
                shown = None;
                wire::write_message(&mut writer, &PeerResponse::Delivered).await?;
            }
            PeerRequest::Wait => {
                let answer = if !requester.announced() {
                    refusal(
                        PeerErrorCode::BadRequest,
                        "say who is asking (Requester) before waiting in the queue",
                    )
                } else {
                    let decision = tokio::select! {
                        d = requester.wait(shown, POSITION_CALM, common::limits::QUEUE_REFRESH) => d,
                        // Closed meanwhile: whatever comes next is not read.
                        _ = reader.get_mut().get_mut().readable() => requester.wait(shown, Duration::ZERO, Duration::ZERO).await,
                    };
                    // Waiting in the queue is not idling.
                    hold_until = Instant::now() + rules.idle;
                    match decision {
                        Decision::Serve => {
                            shown = None;
                            PeerResponse::SlotGranted
                        }
                        Decision::Queued(position) => {
                            shown = Some(position);
                            PeerResponse::Queued { position }
                        }
                        Decision::Busy => refusal(PeerErrorCode::Busy, "the upload queue is full"),
                    }
                };
                wire::write_message(&mut writer, &answer).await?;
            }
        }
        continue_or_flush(&reader, &mut writer).await?;
    }
}

/// A connection's subscription to a partial file (`Subscribe`): which
/// chunks it was told of, and the wake-up for new ones.
struct Push {
    id: FileId,
    partial: Arc<crate::library::PartialEntry>,
    changed: tokio::sync::watch::Receiver<u64>,
    /// The bitfield as the subscriber knows it.
    sent: Vec<u8>,
}

impl Push {
    fn new(id: FileId, partial: Arc<crate::library::PartialEntry>) -> Push {
        // Subscribed before the bitfield is read: a chunk set in between
        // is pushed (at worst twice told, never missed).
        let mut changed = partial.watch();
        changed.mark_unchanged();
        let sent = partial.bitfield();
        Push {
            id,
            partial,
            changed,
            sent,
        }
    }

    /// Writes a `Gained` for each chunk held since the last call (not flushed).
    async fn send_gains(
        &mut self,
        writer: &mut BufWriter<crate::net::ConnWriter>,
    ) -> Result<(), WireError> {
        // Seen before reading: a chunk set meanwhile wakes us again.
        self.changed.mark_unchanged();
        let now = self.partial.bitfield();
        for (byte, (new, old)) in now.iter().zip(self.sent.iter_mut()).enumerate() {
            let gained = new & !*old;
            for bit in 0..8u32 {
                if gained & (1 << bit) != 0 {
                    let index = byte as u32 * 8 + bit;
                    let frame = PeerResponse::Gained { id: self.id, index };
                    wire::write_message(writer, &frame).await?;
                }
            }
            *old |= gained;
        }
        Ok(())
    }
}

/// How a chunk's wait for its turn at the upload cap ended.
enum Turn {
    /// Paid for: send it.
    Granted,
    /// The downloader took the request back (`Cancel`).
    Cancelled,
    /// The downloader closed its side of the connection: the chunk is not
    /// worth its turn (at most drained unread).
    Closed,
}

/// Most requests read ahead while a chunk waits for its turn: beyond it
/// the connection is not read until the turn comes (a pipelining
/// downloader has at most its pipeline ahead; a hostile one cannot make
/// this grow).
const MAX_READ_AHEAD: usize = 64;

/// Waits for the turn of `bytes` at `limit` for chunk `chunk`, reading the
/// requests that arrive meanwhile into `ahead` (answered in order after
/// this one): a `Cancel` of this chunk ends the wait, one of a chunk in
/// `ahead` marks it taken back, one of anything else is ignored.
///
/// The wait keeps its place among other connections' turns throughout:
/// a request is read only once its whole frame is buffered, so reading it
/// takes no time (a frame that trickles in is left for after the turn,
/// never read while other connections wait behind this one).
async fn wait_turn(
    limit: &RateLimiter,
    bytes: u64,
    reader: &mut BufReader<ConnReader>,
    frame: &mut Vec<u8>,
    ahead: &mut std::collections::VecDeque<(PeerRequest, bool)>,
    chunk: (FileId, u32),
) -> Result<Turn, WireError> {
    let turn = limit.acquire(bytes);
    tokio::pin!(turn);
    loop {
        // What has arrived whole already (pipelined requests often come
        // together with the one being served).
        while ahead.len() < MAX_READ_AHEAD && whole_frame_buffered(reader.buffer()) {
            let Some(request) =
                wire::read_message::<_, PeerRequest>(reader, frame, Deadlines::default()).await?
            else {
                return Ok(Turn::Closed);
            };
            match request {
                PeerRequest::Cancel { id, index } if (id, index) == chunk => {
                    return Ok(Turn::Cancelled)
                }
                PeerRequest::Cancel { id, index } => {
                    let waiting = ahead.iter_mut().find(|(r, taken)| {
                        !*taken
                            && matches!(r, PeerRequest::Chunk { id: i, index: n } if (*i, *n) == (id, index))
                    });
                    if let Some((_, taken)) = waiting {
                        *taken = true;
                    }
                }
                other => ahead.push_back((other, false)),
            }
        }
        // A partial frame (or a full read-ahead) waits for the turn.
        let watch = ahead.len() < MAX_READ_AHEAD && reader.buffer().is_empty();
        tokio::select! {
            biased;
            _ = &mut turn => return Ok(Turn::Granted),
            filled = reader.fill_buf(), if watch => {
                if filled?.is_empty() {
                    return Ok(Turn::Closed);
                }
            }
        }
    }
}

/// Whether `buffered` begins with a whole frame (length prefix and
/// payload), so that reading it needs no I/O.
fn whole_frame_buffered(buffered: &[u8]) -> bool {
    let Some(prefix) = buffered.first_chunk::<4>() else {
        return false;
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    buffered.len() - 4 >= len
}

/// Flushes the answers unless more requests are already buffered (their
/// answers go out together).
async fn continue_or_flush<R: tokio::io::AsyncRead + Unpin>(
    reader: &BufReader<common::secure::SecureRead<R>>,
    writer: &mut BufWriter<SecureWrite<OwnedWriteHalf>>,
) -> Result<(), WireError> {
    if reader.buffer().is_empty() && !reader.get_ref().has_buffered() {
        writer.flush().await?;
    }
    Ok(())
}

/// The open file behind `id`, opened off the runtime's threads the first
/// time this connection asks for it.
async fn open_holding(
    library: &Library,
    open: &mut HashMap<FileId, Arc<OpenHolding>>,
    id: FileId,
) -> Result<Arc<OpenHolding>, ReadChunkError> {
    if let Some(h) = open.get(&id) {
        return Ok(h.clone());
    }
    let holding = library.get(&id).ok_or(ReadChunkError::NotFound)?;
    let lib = library.clone();
    let opened = tokio::task::spawn_blocking(move || OpenHolding::open(&lib, holding))
        .await
        .map_err(|e| ReadChunkError::Io(std::io::Error::other(e)))??;
    let opened = Arc::new(opened);
    if open.len() >= 16 {
        open.clear();
    }
    open.insert(id, opened.clone());
    Ok(opened)
}

/// Binds the chunk server's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
