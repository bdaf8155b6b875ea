//! Client-server mode: `peer put` uploads files into the index server's
//! store, and `peer get --mode client-server` downloads from that server
//! only ([`crate::pipeline::Fetcher::ClientServer`]). A client in this mode
//! talks to nobody but the server and never uploads to anyone (it starts
//! no chunk server).
//!
//! The file is hashed locally (the same id as everywhere), the server is
//! told its id, name and size, then sent the hash list and only the chunks
//! its part file does not already hold, so an interrupted upload resumes.
//! The server verifies every chunk on arrival and publishes the file when
//! it is complete. See `index_server::store` for the server side.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::hello::{HelloError, Protocol};
use common::id::ContentInfo;
use common::limits::CONNECT_TIMEOUT;
use common::peer_proto::bit_is_set;
use common::store_proto::{StoreErrorCode, StoreRequest, StoreResponse};
use common::wire::{self, Deadlines, WireError};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio_util::sync::CancellationToken;

/// How long to wait for each answer (publishing a large file takes an fsync).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("cannot read {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{0} has no file name")]
    NoName(PathBuf),
    #[error("cannot reach the server at {addr}: {reason} (is `index-server --store DIR` running there? check --index)")]
    Connect {
        addr: String,
        reason: std::io::Error,
    },
    #[error("the index server at {0} has no store; start it with `index-server --store DIR`")]
    NoStore(String),
    #[error("the store refused {name:?}: {message}")]
    Refused {
        name: String,
        code: StoreErrorCode,
        message: String,
    },
    #[error("upload interrupted; run the same command again to resume (the server keeps the verified chunks)")]
    Interrupted,
    #[error("{0}; run the same command again to resume (the server keeps the verified chunks)")]
    Wire(WireError),
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
}

// The cause is in the message, so it is a plain field, not a `source`
// (an error chain would say it twice; see `common::report`).
impl From<WireError> for PutError {
    fn from(e: WireError) -> Self {
        PutError::Wire(e)
    }
}

/// What one upload did.
#[derive(Debug, Clone, Serialize)]
pub struct PutOutcome {
    pub path: PathBuf,
    pub id: String,
    /// The name the store holds it under (may carry a ` (1)` suffix).
    pub stored_as: String,
    pub size: u64,
    pub chunks_total: u32,
    /// Chunks the server already held from an interrupted upload.
    pub chunks_resumed: u32,
    pub chunks_sent: u32,
    /// The store already held this content: nothing was sent.
    pub already_stored: bool,
}

/// Uploads one file to the store of the index server at `server`.
pub async fn put_file(
    server: &str,
    path: &Path,
    shutdown: CancellationToken,
) -> Result<PutOutcome, PutError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| PutError::NoName(path.to_path_buf()))?;
    let read_error = |reason| PutError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let info = {
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || transfer::scan::hash_file(&p))
            .await
            .map_err(|e| read_error(std::io::Error::other(e)))?
            .map_err(read_error)?
    };
    let file = Arc::new(std::fs::File::open(path).map_err(read_error)?);
    tokio::select! {
        _ = shutdown.cancelled() => Err(PutError::Interrupted),
        r = upload(server, path, &name, info, file) => r,
    }
}

async fn upload(
    server: &str,
    path: &Path,
    name: &str,
    info: ContentInfo,
    file: Arc<std::fs::File>,
) -> Result<PutOutcome, PutError> {
    let stream = transfer::net::connect_tcp(server, CONNECT_TIMEOUT)
        .await
        .map_err(|reason| PutError::Connect {
            addr: server.to_string(),
            reason,
        })?;
    let (stream, _) = transfer::net::client(stream, Protocol::Store, None)
        .await
        .map_err(|e| match e {
            WireError::Hello(HelloError::WrongProtocol) => PutError::NoStore(server.to_string()),
            other => PutError::Wire(other),
        })?;
    let (r, w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut writer = BufWriter::with_capacity(256 * 1024, w);
    let mut buf = Vec::new();
    let deadlines = Deadlines::with_idle(ANSWER_TIMEOUT);
    let mut outcome = PutOutcome {
        path: path.to_path_buf(),
        id: info.id.to_hex(),
        stored_as: name.to_string(),
        size: info.size,
        chunks_total: info.chunk_count(),
        chunks_resumed: 0,
        chunks_sent: 0,
        already_stored: false,
    };
    let refused = |code, message: String| PutError::Refused {
        name: name.to_string(),
        code,
        message: common::names::escape_for_terminal(&message).into_owned(),
    };

    wire::send_message(
        &mut writer,
        &StoreRequest::Begin {
            id: info.id,
            name: name.to_string(),
            size: info.size,
        },
    )
    .await?;
    match wire::expect_message::<_, StoreResponse>(&mut reader, &mut buf, deadlines).await? {
        StoreResponse::SendHashList => {}
        StoreResponse::AlreadyStored { name } => {
            outcome.stored_as = name;
            outcome.already_stored = true;
            return Ok(outcome);
        }
        StoreResponse::Error { code, message } => return Err(refused(code, message)),
        other => return Err(PutError::Protocol(format!("{other:?} after Begin"))),
    }

    let raw = info.hash_list_bytes();
    wire::write_message(
        &mut writer,
        &StoreRequest::HashList {
            len: raw.len() as u32,
        },
    )
    .await?;
    writer.write_all(&raw).await.map_err(WireError::from)?;
    writer.flush().await.map_err(WireError::from)?;
    let have =
        match wire::expect_message::<_, StoreResponse>(&mut reader, &mut buf, deadlines).await? {
            StoreResponse::Ready { have } => have,
            StoreResponse::Error { code, message } => return Err(refused(code, message)),
            other => return Err(PutError::Protocol(format!("{other:?} after HashList"))),
        };

    let missing: Vec<u32> = (0..info.chunk_count())
        .filter(|i| !bit_is_set(&have, *i))
        .collect();
    outcome.chunks_resumed = info.chunk_count() - missing.len() as u32;
    // Chunks are streamed without waiting for answers; TCP paces us. A
    // refusal (bad chunk) arrives as an Error before the connection closes.
    let sent = send_chunks(&mut writer, &info, &file, &missing).await;
    if let Err(e) = sent {
        return Err(
            match wire::read_message::<_, StoreResponse>(&mut reader, &mut buf, deadlines).await {
                Ok(Some(StoreResponse::Error { code, message })) => refused(code, message),
                _ => PutError::Wire(e),
            },
        );
    }
    outcome.chunks_sent = missing.len() as u32;
    wire::send_message(&mut writer, &StoreRequest::Finish).await?;
    match wire::expect_message::<_, StoreResponse>(&mut reader, &mut buf, deadlines).await? {
        StoreResponse::Stored { name } => {
            outcome.stored_as = name;
            Ok(outcome)
        }
        StoreResponse::Error { code, message } => Err(refused(code, message)),
        other => Err(PutError::Protocol(format!("{other:?} after Finish"))),
    }
}

async fn send_chunks(
    writer: &mut BufWriter<common::secure::SecureWrite<tokio::net::tcp::OwnedWriteHalf>>,
    info: &ContentInfo,
    file: &Arc<std::fs::File>,
    missing: &[u32],
) -> Result<(), WireError> {
    let mut data = Vec::new();
    for &index in missing {
        let len = info.chunk_len(index);
        let f = file.clone();
        data = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            data.resize(len, 0);
            f.read_exact_at(&mut data, index as u64 * common::CHUNK_SIZE as u64)
                .map(|_| data)
        })
        .await
        .map_err(|e| WireError::Io(std::io::Error::other(e)))??;
        wire::write_message(
            writer,
            &StoreRequest::Chunk {
                index,
                len: len as u32,
            },
        )
        .await?;
        writer.write_all(&data).await?;
    }
    writer.flush().await?;
    Ok(())
}
