//! The upload side: serves hash lists, availability and chunks by file id.
//!
//! Requests may be pipelined; answers go out in order, each chunk as a small
//! header frame followed by its raw bytes. Only ids are accepted from the
//! wire: the file behind an id comes from the [`Library`], never from a path
//! in a message. Concurrent uploads are capped by a semaphore; a connection
//! over the cap is told `Busy` in the hello and closed.

use std::collections::HashMap;
use std::net::SocketAddr;
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
use tracing::{debug, info, warn};

use crate::library::{Holding, Library, OpenHolding, ReadChunkError};
use crate::rate::{write_limited, RateLimiter};

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

/// Accepts peer connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    library: Library,
    max_uploads: usize,
    stats: Arc<UploadStats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    serve_limited(
        listener,
        library,
        max_uploads,
        None,
        stats,
        tracker,
        shutdown,
    )
    .await
}

/// [`serve`] with an optional cap on the total rate of chunk data sent,
/// shared by every upload connection.
pub async fn serve_limited(
    listener: TcpListener,
    library: Library,
    max_uploads: usize,
    upload_limit: Option<Arc<RateLimiter>>,
    stats: Arc<UploadStats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_uploads.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (mut stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let (library, stats, shutdown) = (library.clone(), stats.clone(), shutdown.clone());
                let limit = upload_limit.clone();
                tracker.spawn(async move {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let result = tokio::select! {
                        _ = shutdown.cancelled() => Ok(()),
                        r = serve_connection(stream, &library, &stats, limit.as_deref()) => r,
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
            Err(_) => {
                debug!(%remote, "all upload slots busy; refusing");
                tracker.spawn(async move {
                    let _ = tokio::time::timeout(
                        common::limits::HELLO_TIMEOUT,
                        wire::server_handshake(&mut stream, Protocol::Peer, true),
                    )
                    .await;
                });
            }
        }
    }
}

fn refusal(code: PeerErrorCode, message: impl Into<String>) -> PeerResponse {
    PeerResponse::Error {
        code,
        message: message.into(),
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    library: &Library,
    stats: &UploadStats,
    limit: Option<&RateLimiter>,
) -> Result<(), WireError> {
    wire::server_handshake(&mut stream, Protocol::Peer, false).await?;
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
                let result = read_chunk(
                    library,
                    &mut open,
                    id,
                    index,
                    std::mem::take(&mut chunk_buf),
                )
                .await;
                match result {
                    Ok(data) => {
                        let header = PeerResponse::Chunk {
                            id,
                            index,
                            len: data.len() as u32,
                        };
                        wire::write_message(&mut writer, &header).await?;
                        write_limited(&mut writer, &data, limit).await?;
                        stats.chunks.fetch_add(1, Ordering::Relaxed);
                        stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        chunk_buf = data;
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
                            ReadChunkError::Io(_) => PeerErrorCode::Internal,
                        };
                        wire::write_message(&mut writer, &refusal(code, e.to_string())).await?;
                    }
                }
            }
        }
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

/// Reads one chunk off the runtime's threads.
async fn read_chunk(
    library: &Library,
    open: &mut HashMap<FileId, Arc<OpenHolding>>,
    id: FileId,
    index: u32,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, ReadChunkError> {
    let handle = match open.get(&id) {
        Some(h) => h.clone(),
        None => {
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
            opened
        }
    };
    tokio::task::spawn_blocking(move || handle.read_chunk(index, &mut buf).map(|_| buf))
        .await
        .map_err(|e| ReadChunkError::Io(std::io::Error::other(e)))?
}

/// Binds the chunk server's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
