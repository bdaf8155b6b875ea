//! A transfer whose bytes on the wire are captured by a relaying proxy
//! (no tcpdump needed): what an eavesdropper on the path would see.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy from a new loopback port to `target` that keeps a copy of
/// every byte it relays, both ways.
pub async fn recording_proxy(target: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let (mut ir, mut iw) = inbound.into_split();
                let (mut or, mut ow) = outbound.into_split();
                let a = copy_recording(&mut ir, &mut ow, record.clone());
                let b = copy_recording(&mut or, &mut iw, record);
                let _ = tokio::join!(a, b);
            });
        }
    });
    (addr, seen)
}

async fn copy_recording(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    record: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Downloads a file full of a known marker from a source through a
/// [`recording_proxy`], with this process's connection security; returns
/// every byte the proxy saw and the marker.
pub async fn captured_transfer() -> (Vec<u8>, Vec<u8>) {
    let marker = b"PLAINTEXT-MARKER-0123456789".to_vec();
    let data: Vec<u8> = marker
        .iter()
        .copied()
        .cycle()
        .take(2 * common::CHUNK_SIZE + 77)
        .collect();
    let info = common::id::content_info(&data);
    let source =
        crate::fake::start(data.clone(), crate::fake::Behaviour::OnlyFirst(u32::MAX)).await;
    let (proxy, seen) = recording_proxy(source.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let got = peer::download::download(
        peer::download::DownloadRequest {
            id: info.id,
            name: "marked.bin".into(),
            sources: vec![proxy.to_string()],
            out_dir: dir.path().to_path_buf(),
        },
        crate::test_engine(),
        Arc::new(peer::download::Progress::default()),
        None,
        peer::download::StartOnly,
        CancellationToken::new(),
    )
    .await
    .expect("the download through the proxy completes");
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let captured = seen.lock().unwrap().clone();
    assert!(captured.len() > data.len(), "the proxy saw the transfer");
    (captured, marker)
}
