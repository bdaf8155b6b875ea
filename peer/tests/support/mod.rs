//! Helpers shared by the peer binary's integration tests (`mod support;`).

use common::hello::Protocol;
use common::id::ContentInfo;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::wire::{self, Deadlines};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Registers `addr` at the index as the holder of `file` (for fake sources);
/// the returned connection keeps the registration alive.
pub async fn register_source(index: &str, addr: &str, file: SharedFile) -> transfer::net::Conn {
    let s = TcpStream::connect(index).await.unwrap();
    let (mut s, _) = transfer::net::client(s, Protocol::Index, None)
        .await
        .unwrap();
    let mut buf = Vec::new();
    for req in [
        IndexRequest::Login(Login {
            listen_port: 1,
            advertise: Some(addr.into()),
            nick: None,
        }),
        IndexRequest::AddFiles { files: vec![file] },
    ] {
        wire::send_message(&mut s, &req).await.unwrap();
        let r: IndexResponse = wire::expect_message(&mut s, &mut buf, Deadlines::default())
            .await
            .unwrap();
        assert!(!matches!(r, IndexResponse::Error { .. }), "{r:?}");
    }
    s
}

/// The index entry for the content `info` under `name`.
pub fn shared_as(info: &ContentInfo, name: &str) -> SharedFile {
    SharedFile {
        id: info.id,
        name: name.into(),
        size: info.size,
    }
}

/// An index server in this process on 127.0.0.1 port 0 (under this test
/// process's key): its address, and the token that stops it.
pub async fn start_index() -> (String, CancellationToken) {
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let server = index_server::Server::bind(config).await.unwrap();
    let addr = server.local_addr().to_string();
    let token = CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    (addr, token)
}
