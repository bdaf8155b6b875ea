//! The upload side: serves hash lists, availability and chunks by file id.
//!
//! Requests may be pipelined; answers go out in order, each chunk as a small
//! header frame followed by its raw bytes. Only ids are accepted from the
//! wire: the file behind an id comes from the [`Library`], never from a path
//! in a message. Concurrent uploads are capped by a semaphore; a connection
//! over the cap is told `Busy` in the hello and closed. A direct message
//! (`Message`) is handed to the node's [`Inbox`] when it has one.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::hello::Protocol;
use common::id::FileId;
use common::peer_proto::{PeerErrorCode, PeerRequest, PeerResponse};
use common::wire::{self, Deadlines, WireError};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::inbox::Inbox;
use crate::library::{Holding, Library, OpenHolding, ReadChunkError};
use crate::rate::RateLimiter;
use crate::send::send_chunk;

/// How long an upload connection may sit without a request.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// Counters of what this peer has uploaded.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
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
        stream: TcpStream,
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
        library,
        max_uploads,
        stats,
        inbox,
        others: None,
        upload_limit: None,
    };
    serve_with(listener, config, tracker, shutdown).await
}

/// What a chunk server serves, besides its socket.
#[derive(Clone)]
pub struct ChunkServerConfig {
    pub library: Library,
    /// Most simultaneous peer-protocol connections; more are told `Busy`.
    pub max_uploads: usize,
    pub stats: Arc<UploadStats>,
    /// Where direct messages go; `None` refuses them.
    pub inbox: Option<Inbox>,
    /// Handlers for the other protocols sharing this port (the overlay).
    pub others: Option<Arc<dyn ProtocolHandler>>,
    /// Cap on the bytes per second of all uploads together.
    pub upload_limit: Option<Arc<RateLimiter>>,
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
        stats,
        inbox,
        others,
        upload_limit,
    } = config;
    let slots = Arc::new(Semaphore::new(max_uploads.max(1)));
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
        let (mut stream, remote) = match accepted {
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
        let (slots, others, accepted_protocols) =
            (slots.clone(), others.clone(), accepted_protocols.clone());
        tracker.spawn(async move {
            // The upload slot is taken while answering the hello, so a peer
            // over the cap is told `Busy` instead of being accepted and dropped.
            let mut permit = None;
            let hello = tokio::select! {
                _ = shutdown.cancelled() => return,
                h = wire::server_handshake_any(&mut stream, &accepted_protocols, |p| match p {
                    Protocol::Peer => {
                        permit = slots.try_acquire_owned().ok();
                        permit.is_none()
                    }
                    other => others.as_ref().is_some_and(|h| h.is_busy(other)),
                }) => h,
            };
            let protocol = match hello {
                Ok(p) => p,
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
                r = serve_peer_session(stream, remote, &library, &stats, inbox.as_ref(), limit.as_deref()) => r,
            };
            match result {
                Ok(()) => debug!(%remote, "upload connection closed"),
                Err(e) if e.is_protocol_violation() => {
                    debug!(%remote, error = %e, "closing upload connection after bad input")
                }
                Err(e) => debug!(%remote, error = %e, "upload connection ended"),
            }
            drop(permit);
        });
    }
}

fn refusal(code: PeerErrorCode, message: impl Into<String>) -> PeerResponse {
    PeerResponse::Error {
        code,
        message: message.into(),
    }
}

/// Serves the peer protocol on a connection whose hello was answered (also
/// used by the index server's store, which shares its port with the index).
pub async fn serve_peer_session(
    stream: TcpStream,
    remote: SocketAddr,
    library: &Library,
    stats: &UploadStats,
    inbox: Option<&Inbox>,
    limit: Option<&RateLimiter>,
) -> Result<(), WireError> {
    let (r, w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut writer = BufWriter::with_capacity(256 * 1024, w);
    let mut frame = Vec::new();
    // Files opened on this connection, so a run of chunk requests opens once.
    let mut open: HashMap<FileId, Arc<OpenHolding>> = HashMap::new();
    let mut chunk_buf: Vec<u8> = Vec::new();
    loop {
        let Some(request) = wire::read_message::<_, PeerRequest>(
            &mut reader,
            &mut frame,
            Deadlines::with_idle(UPLOAD_IDLE),
        )
        .await?
        else {
            return Ok(());
        };
        match request {
            PeerRequest::HashList { id } => match library.get(&id) {
                Some(h) => {
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
                        let header = PeerResponse::Chunk {
                            id,
                            index,
                            len: len as u32,
                        };
                        let offset = index as u64 * common::CHUNK_SIZE as u64;
                        send_chunk(
                            &mut writer,
                            &header,
                            &handle,
                            offset,
                            len,
                            limit,
                            &mut chunk_buf,
                        )
                        .await?;
                        stats.chunks.fetch_add(1, Ordering::Relaxed);
                        stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        open.remove(&id);
                        let code = match e {
                            ReadChunkError::NotFound => PeerErrorCode::NotFound,
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
                    Some(inbox) => inbox.answer(remote.ip(), from, text).await,
                    None => refusal(PeerErrorCode::BadRequest, "this node takes no messages"),
                };
                wire::write_message(&mut writer, &answer).await?;
            }
        }
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
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
