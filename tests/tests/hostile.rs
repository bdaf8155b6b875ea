//! Hostile clients against the index server: slowloris, drip-feeding, a
//! thousand idle connections, a request flood, the connection cap. In every
//! case a normal client must still be answered.

use std::time::Duration;

use common::hello::Protocol;
use common::index_proto::IndexRequest;
use common::wire;
use peer::index_client::IndexClient;
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn index_with(
    config: impl FnOnce(&mut index_server::Config),
) -> (String, tokio_util::sync::CancellationToken) {
    init_logging();
    let mut c = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config(&mut c);
    let server = index_server::Server::bind(c).await.unwrap();
    let addr = server.local_addr().to_string();
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    (addr, token)
}

async fn answered(addr: &str) {
    let mut c = IndexClient::connect(addr)
        .await
        .expect("a normal client can connect");
    c.stats().await.expect("a normal client is answered");
}

/// Waits (with a deadline) until the server closes `s`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 64];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_by_the_frame_deadline() {
    let (addr, stop) = index_with(|c| c.frame_timeout = Duration::from_millis(300)).await;
    // A header and then nothing.
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    wire::client_handshake(&mut stalled, Protocol::Index)
        .await
        .unwrap();
    stalled.write_all(&[0, 0, 0, 10, 1]).await.unwrap();
    // One byte at a time, each well within any per-read timeout.
    let mut drip = TcpStream::connect(&addr).await.unwrap();
    wire::client_handshake(&mut drip, Protocol::Index)
        .await
        .unwrap();
    let dripper = tokio::spawn(async move {
        let frame = common::frame::encode_frame(&IndexRequest::Search {
            words: vec!["x".repeat(60)],
            limit: 1,
        })
        .unwrap();
        for b in frame {
            if drip.write_all(&[b]).await.is_err() {
                return drip;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drip
    });
    answered(&addr).await;
    assert!(
        closed_within(&mut stalled, Duration::from_secs(10)).await,
        "stalled frame not cut off"
    );
    let mut drip = dripper.await.unwrap();
    assert!(
        closed_within(&mut drip, Duration::from_secs(10)).await,
        "drip-feeding client not cut off"
    );
    answered(&addr).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_block_a_normal_client() {
    // All from 127.0.0.1: lift the per-address cap (tests/tests/limits.rs
    // checks it) to see what 2,000 connections cost.
    let (addr, stop) = index_with(|c| c.max_connections_per_ip = 10_000).await;
    let rss_before = rss_bytes();
    let mut idle = Vec::new();
    for _ in 0..1800 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        wire::client_handshake(&mut s, Protocol::Index)
            .await
            .unwrap();
        idle.push(s);
    }
    // Plus some that never even say hello.
    for _ in 0..200 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    answered(&addr).await;
    // Server and clients share this process: 2,000 connections on each side
    // must stay far below what one unbounded buffer per connection would cost.
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 256 << 20,
        "memory grew by {} MiB for 2,000 idle connections",
        grown >> 20
    );
    drop(idle);
    answered(&addr).await;
    stop.cancel();
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_clear_refusal() {
    let (addr, stop) = index_with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(IndexClient::connect(&addr).await.unwrap());
    }
    let err = IndexClient::connect(&addr)
        .await
        .err()
        .expect("a fourth connection is refused");
    assert!(err.to_string().contains("busy"), "{err}");
    held.pop();
    wait_until("a slot to free up", Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { IndexClient::connect(&addr).await.is_ok() }
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_on_one_connection_does_not_starve_others() {
    let (addr, stop) = index_with(|c| c.max_requests_per_sec = 5_000).await;
    let mut flood = TcpStream::connect(&addr).await.unwrap();
    wire::client_handshake(&mut flood, Protocol::Index)
        .await
        .unwrap();
    let burst: Vec<u8> = (0..20_000)
        .flat_map(|_| common::frame::encode_frame(&IndexRequest::Stats).unwrap())
        .collect();
    let (mut reader, mut writer) = flood.into_split();
    let flooder = tokio::spawn(async move {
        let _ = writer.write_all(&burst).await;
        writer
    });
    // Drain answers in the background so the flood really is served.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = reader.read(&mut sink).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    for _ in 0..20 {
        answered(&addr).await;
    }
    stop.cancel();
    drop(flooder.await);
    let _ = drain.await;
}
