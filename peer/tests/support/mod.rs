//! Helpers shared by the peer binary's integration tests (`mod support;`).

use common::hello::Protocol;
use common::id::ContentInfo;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::wire::{self, Deadlines};
use tokio::net::TcpStream;

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
