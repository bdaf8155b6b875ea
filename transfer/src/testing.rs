//! Test support (feature `test-support`): sources that misbehave on purpose,
//! speaking the real peer protocol. Used by the integration tests of several
//! crates; never compiled into the binaries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::hello::Protocol;
use common::id::{content_info, ContentInfo};
use common::peer_proto::{PeerRequest, PeerResponse};
use common::wire::{self, Deadlines};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How a fake source behaves once asked for chunks.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Serves `n` chunks correctly, then closes the connection (a killed peer).
    DieAfter(u64),
    /// Serves `n` chunks correctly, then goes silent, connection open.
    StallAfter(u64),
    /// Answers every chunk with the right length but wrong bytes.
    Garbage,
    /// Serves only chunks with index below `n`; refuses the rest as not found.
    OnlyFirst(u32),
}

/// A running fake source.
pub struct FakeSource {
    pub addr: SocketAddr,
    /// Chunk requests answered (correctly or not).
    pub served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeSource {
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for FakeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a fake source for `data` on 127.0.0.1 port 0.
pub async fn start(data: Vec<u8>, behaviour: Behaviour) -> FakeSource {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let info = Arc::new(content_info(&data));
    let data = Arc::new(data);
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let task = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let (info, data, counter) = (info.clone(), data.clone(), counter.clone());
            connections.push(tokio::spawn(serve(stream, info, data, behaviour, counter)));
        }
    });
    FakeSource { addr, served, task }
}

async fn serve(
    stream: TcpStream,
    info: Arc<ContentInfo>,
    data: Arc<Vec<u8>>,
    behaviour: Behaviour,
    served: Arc<AtomicU64>,
) {
    let Ok((_, mut stream)) = crate::net::accept(stream, &[Protocol::Peer], |_| false, |_| 0).await
    else {
        return;
    };
    let mut buf = Vec::new();
    loop {
        let Ok(Some(req)) =
            wire::read_message::<_, PeerRequest>(&mut stream, &mut buf, Deadlines::default()).await
        else {
            return;
        };
        match req {
            PeerRequest::HashList { id } => {
                let raw = info.hash_list_bytes();
                let header = PeerResponse::HashList {
                    id,
                    size: info.size,
                    len: raw.len() as u32,
                };
                let _ = wire::write_message(&mut stream, &header).await;
                let _ = stream.write_all(&raw).await;
            }
            PeerRequest::Have { id } => {
                let header = PeerResponse::Have {
                    id,
                    size: info.size,
                    complete: true,
                    bitfield: vec![],
                };
                let _ = wire::write_message(&mut stream, &header).await;
            }
            PeerRequest::Chunk { id, index } => {
                let n = served.load(Ordering::SeqCst);
                match behaviour {
                    Behaviour::DieAfter(limit) if n >= limit => return,
                    Behaviour::StallAfter(limit) if n >= limit => {
                        // Keep the connection open and say nothing.
                        std::future::pending::<()>().await;
                    }
                    Behaviour::OnlyFirst(limit) if index >= limit => {
                        let refusal = PeerResponse::Error {
                            code: common::peer_proto::PeerErrorCode::NotFound,
                            message: "not here".into(),
                        };
                        let _ = wire::write_message(&mut stream, &refusal).await;
                        let _ = stream.flush().await;
                        continue;
                    }
                    _ => {}
                }
                served.fetch_add(1, Ordering::SeqCst);
                let start = index as usize * common::CHUNK_SIZE;
                let len = info.chunk_len(index);
                let mut chunk = data[start..start + len].to_vec();
                if matches!(behaviour, Behaviour::Garbage) {
                    for b in chunk.iter_mut() {
                        *b = b.wrapping_add(1);
                    }
                }
                let header = PeerResponse::Chunk {
                    id,
                    index,
                    len: len as u32,
                };
                if wire::write_message(&mut stream, &header).await.is_err()
                    || stream.write_all(&chunk).await.is_err()
                {
                    return;
                }
            }
            // A fake source only serves files: anything else ends the connection.
            _ => return,
        }
        let _ = stream.flush().await;
    }
}

/// Deterministic pseudo-random bytes, so that several sources can hold the
/// same file without shipping one.
pub use common::sample::bytes as random_bytes;
