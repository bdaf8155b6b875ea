//! Reachability at login (issue 15): the index dials back every address a
//! peer asks to publish and publishes only those that prove to be that
//! peer. On loopback here, and on the emulated network with NAT routers
//! (network namespaces; skipped with one line when not root).

use std::time::Duration;

use common::index_proto::{IndexRequest, IndexResponse, Login, Reach};
use peer::index_client::{IndexClient, IndexError};
use peer::registrar::RegistrationState;
use tests::*;

/// Writes `len` bytes of sample data (seeded by `seed`) to `share/f.bin`:
/// the bytes and their file id.
fn shared_file(share: &std::path::Path, len: usize, seed: u64) -> (Vec<u8>, common::id::FileId) {
    let data = random_bytes(len, seed);
    write_file(share, "f.bin", &data);
    let id = common::id::content_info(&data).id;
    (data, id)
}

/// The path (direct, callback, punched, relayed) of each source that
/// delivered chunks.
fn paths_used(per_source: &[transfer::download::SourceReport]) -> Vec<&'static str> {
    per_source
        .iter()
        .filter(|s| s.chunks > 0)
        .map(|s| s.path)
        .collect()
}

fn checked(listen_port: u16, advertise: Option<String>, nonce: [u8; 16]) -> IndexRequest {
    IndexRequest::LoginChecked {
        login: Login {
            listen_port,
            advertise,
            nick: None,
        },
        nonce,
    }
}

/// A third party's host at `bind`: it answers every connection with a line
/// of text, as a web server might, and notes where each came from.
async fn web_server(
    bind: &str,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
) {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let serving = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let Ok((mut s, from)) = listener.accept().await else {
                    return;
                };
                seen.lock().unwrap().push(from);
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
            }
        }
    });
    (addr, serving, seen)
}

/// A checked login on a new connection that listens at `target`'s port and
/// advertises `target`: the address published (if any) and the reasons
/// for those refused.
async fn login_advertising(
    index: &Index,
    target: std::net::SocketAddr,
) -> (Option<String>, Vec<String>) {
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let answer = client
        .request(&checked(
            target.port(),
            Some(target.to_string()),
            rand::random(),
        ))
        .await
        .unwrap();
    let IndexResponse::WelcomeChecked { addr, refused, .. } = answer else {
        panic!("{answer:?}")
    };
    (addr, refused)
}

/// The reach the index lists for the peer published at `addr`.
fn listed_reach(index: &Index, addr: &str) -> Option<Reach> {
    let (peers, _) = index
        .state
        .peers_reach(0, 1000, tokio::time::Instant::now());
    peers
        .into_iter()
        .find(|p| p.summary.addr == addr)
        .map(|p| p.reach)
}

/// A peer on loopback answers the dial-back: it is published as before,
/// listed as direct, and its files have it as a source.
#[tokio::test]
async fn a_peer_that_answers_the_dial_back_is_published() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "a.bin", &random_bytes(1000, 1));
    let mut peer = start_peer(dir.path(), &index.addr_string()).await;
    peer.wait_registered(1).await;
    let state = peer.daemon.registration().borrow().clone();
    let RegistrationState::Registered { addr, reach, .. } = state else {
        panic!("{state:?}")
    };
    assert_eq!(reach, Reach::Direct);
    assert_eq!(addr, peer.addr());
    assert_eq!(listed_reach(&index, &addr), Some(Reach::Direct));
    peer.stop().await;
    index.stop().await;
}

/// A client that asks to be published at another peer's address (its
/// listening port, or --advertise) is refused: that peer's proof is not
/// this login's. It is listed as firewalled, never at that address.
#[tokio::test]
async fn a_peer_answering_on_someone_elses_behalf_is_refused() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut victim = start_peer(dir.path(), &index.addr_string()).await;
    victim.wait_registered(0).await;
    let port = victim.daemon.listen_addr().port();
    let mut thief = IndexClient::connect(&index.addr_string()).await.unwrap();
    let answer = thief
        .request(&checked(port, Some(victim.addr()), rand::random()))
        .await
        .unwrap();
    let IndexResponse::WelcomeChecked {
        addr,
        observed,
        refused,
        ..
    } = answer
    else {
        panic!("{answer:?}")
    };
    assert_eq!(addr, None, "published at someone else's address");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().all(|r| r.contains("another peer answers")),
        "{refused:?}"
    );
    assert_eq!(listed_reach(&index, &observed), Some(Reach::Firewalled));
    // Nobody but the victim is listed at its address.
    let (peers, _) = index
        .state
        .peers_reach(0, 1000, tokio::time::Instant::now());
    assert_eq!(
        peers
            .iter()
            .filter(|p| p.summary.addr == victim.addr())
            .count(),
        1
    );
    victim.stop().await;
    index.stop().await;
}

/// An --advertise address where something that is not a p2pshare peer
/// listens (a third party's host) is never published, and neither is one
/// where nothing listens.
#[tokio::test]
async fn an_advertised_third_party_host_is_refused() {
    let index = start_index().await;
    let (target, serving, _) = web_server("127.0.0.1:0").await;
    let (addr, refused) = login_advertising(&index, target).await;
    assert_eq!(addr, None);
    assert!(
        refused.iter().any(|r| r.contains("not a p2pshare peer")),
        "{refused:?}"
    );
    serving.abort();
    index.stop().await;
}

/// A login nonce is good once: the same nonce again (a replayed login) is
/// refused with the reason, and the connection stays usable.
#[tokio::test]
async fn a_replayed_login_nonce_is_refused() {
    let index = start_index().await;
    let nonce = rand::random();
    let mut first = IndexClient::connect(&index.addr_string()).await.unwrap();
    let answer = first.request(&checked(40000, None, nonce)).await.unwrap();
    assert!(
        matches!(answer, IndexResponse::WelcomeChecked { .. }),
        "{answer:?}"
    );
    let mut replay = IndexClient::connect(&index.addr_string()).await.unwrap();
    match replay.request(&checked(40001, None, nonce)).await {
        Err(IndexError::Refused { message, .. }) => {
            assert!(message.contains("replayed"), "{message}")
        }
        other => panic!("a replayed nonce was accepted: {other:?}"),
    }
    assert!(replay.stats().await.is_ok());
    index.stop().await;
}

/// With --require-proof, a peer logging in the old way (no proof) is
/// listed as firewalled, not at the address it claims.
#[tokio::test]
async fn an_unproven_old_login_is_firewalled_when_proof_is_required() {
    let server = index_server::Server::bind(index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        require_proof: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let index = run_index(server);
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let answer = client
        .request(&IndexRequest::Login(Login {
            listen_port: 40000,
            advertise: Some("127.0.0.1:40002".into()),
            nick: None,
        }))
        .await
        .unwrap();
    let IndexResponse::Welcome { addr, .. } = answer else {
        panic!("{answer:?}")
    };
    assert_ne!(addr, "127.0.0.1:40002");
    assert_eq!(listed_reach(&index, &addr), Some(Reach::Firewalled));
    index.stop().await;
}

/// On the emulated network: a peer on the public segment is proven and
/// published; a peer behind a home router is firewalled (the router drops
/// the dial-back), listed under its router's address; a public peer that
/// advertises a third party's host is published at its own address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachability_on_the_emulated_network() {
    if netlab::skip("reachability_on_the_emulated_network") {
        return;
    }
    let mut lan = lab::netns::Lan::create().unwrap();
    let index_host = lan.add_host("index", None, None).unwrap();
    let public_host = lan.add_host("public", None, None).unwrap();
    let third_party = lan.add_host("third", None, None).unwrap();
    let mut router = lan.add_router("home", lab::netns::NatKind::Home).unwrap();
    let home_host = lan.add_behind(&mut router, "homepeer").unwrap();
    let index = netlab::start_index(
        &index_host,
        index_server::Config {
            dialback_timeout: Duration::from_millis(800),
            ..Default::default()
        },
    )
    .await;
    let dirs = tempfile::tempdir().unwrap();
    let mut public =
        netlab::start_peer(&public_host, &dirs.path().join("p"), index.addr, |_| {}).await;
    let mut behind =
        netlab::start_peer(&home_host, &dirs.path().join("h"), index.addr, |_| {}).await;
    // A listener on the third party's host that is no peer.
    let listener = third_party
        .run_in(|| async { std::net::TcpListener::bind("0.0.0.0:0") })
        .unwrap()
        .unwrap();
    let third =
        std::net::SocketAddr::from((third_party.addr, listener.local_addr().unwrap().port()));
    let mut liar = netlab::start_peer(&public_host, &dirs.path().join("l"), index.addr, |c| {
        c.advertise = Some(third.to_string());
    })
    .await;

    match public.registered().await {
        RegistrationState::Registered { addr, reach, .. } => {
            assert_eq!(reach, Reach::Direct);
            assert_eq!(addr, public.listen.to_string());
        }
        other => panic!("{other:?}"),
    }
    match behind.registered().await {
        RegistrationState::Registered { addr, reach, .. } => {
            assert_eq!(reach, Reach::Firewalled, "published at {addr}");
            assert!(
                addr.starts_with(&format!("{}:", router.public_addr())),
                "{addr}"
            );
        }
        other => panic!("{other:?}"),
    }
    match liar.registered().await {
        RegistrationState::Registered { addr, reach, .. } => {
            assert_eq!(reach, Reach::Direct);
            assert_eq!(addr, liar.listen.to_string(), "published at {addr}");
        }
        other => panic!("{other:?}"),
    }
    let (peers, _) = index.state.peers_reach(0, 100, tokio::time::Instant::now());
    assert!(
        peers.iter().all(|p| p.summary.addr != third.to_string()),
        "{peers:?}"
    );
    drop((public, behind, liar, index, listener));
    lan.remove();
}

/// One requester cannot make the index dial another host of its choosing
/// over and over: with a budget of 3 dial-backs a minute, logins past it
/// are answered at once with the other host's address unchecked (saying
/// why), the host named by --advertise (127.0.0.2, another host than the
/// client's 127.0.0.1) sees exactly 3 connections from the index, while
/// the client's own address is still checked every time.
#[tokio::test]
async fn dial_backs_per_requester_are_capped() {
    init_logging();
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        lease_ttl: Duration::from_secs(30),
        max_dialbacks_per_minute: 3,
        ..Default::default()
    };
    let index = run_index(index_server::Server::bind(config).await.unwrap());
    let (target, serving, seen) = web_server("127.0.0.2:0").await;
    let mut refusals = Vec::new();
    for _ in 0..6 {
        let (addr, refused) = login_advertising(&index, target).await;
        assert_eq!(addr, None, "the victim's address was published");
        refusals.push(refused);
    }
    // The advertised host was checked for the first three logins (and
    // failed: not a peer), not at all after; the client's own address
    // (127.0.0.1, where nothing listens on that port) was checked each time.
    for (i, refused) in refusals.iter().enumerate() {
        let unchecked = refused.iter().any(|r| r.contains("not checked"));
        assert_eq!(unchecked, i >= 3, "login {i}: {refused:?}");
        assert_eq!(refused.len(), 2, "login {i}: {refused:?}");
    }
    assert!(
        refusals[5]
            .iter()
            .any(|r| r.contains("--max-dialbacks-per-minute")),
        "{:?}",
        refusals[5]
    );
    // A marker connection, accepted after every earlier one (the backlog
    // is in order): then count the index's connections.
    let marker = tokio::net::TcpStream::connect(target).await.unwrap();
    let marker_addr = marker.local_addr().unwrap();
    wait_until("the marker is accepted", Duration::from_secs(10), || {
        let accepted = seen.lock().unwrap().contains(&marker_addr);
        async move { accepted }
    })
    .await;
    let from_index = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|a| **a != marker_addr)
        .count();
    assert_eq!(from_index, 3, "dial-backs that reached the victim");
    serving.abort();
    index.stop().await;
}

/// An index that checks no address on another host than the client's
/// (a dial-back budget of 0), and a peer that listens on 127.0.0.2 only:
/// the dial-back to its connection's address (127.0.0.1) finds nothing
/// and its advertised 127.0.0.2 is not checked, so it is firewalled, as
/// behind a NAT. Returns the index, the peer and the name it is listed
/// under (its observed address).
async fn firewalled_pair(
    share: &std::path::Path,
    max_callbacks_per_minute: u32,
) -> (Index, Peer, String) {
    let (index, _, source, listed) =
        firewalled_pair_with(share, max_callbacks_per_minute, Default::default()).await;
    (index, source, listed)
}

/// The index, its relay, a firewalled peer and the name it is listed
/// under.
type FirewalledSetup = (
    Index,
    std::sync::Arc<index_server::relay::Relay>,
    Peer,
    String,
);

/// [`firewalled_pair`] with the index's relay configured, and its handle.
/// The index does not coordinate hole punching: on loopback a
/// simultaneous open may succeed, and these tests are about the relay.
async fn firewalled_pair_with(
    share: &std::path::Path,
    max_callbacks_per_minute: u32,
    relay: index_server::relay::RelayConfig,
) -> FirewalledSetup {
    firewalled_setup(share, max_callbacks_per_minute, relay, false).await
}

async fn firewalled_setup(
    share: &std::path::Path,
    max_callbacks_per_minute: u32,
    relay: index_server::relay::RelayConfig,
    hole_punching: bool,
) -> FirewalledSetup {
    let server = index_server::Server::bind(index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        lease_ttl: Duration::from_secs(30),
        max_dialbacks_per_minute: 0,
        max_callbacks_per_minute,
        relay: Some(relay),
        hole_punching,
        ..Default::default()
    })
    .await
    .unwrap();
    let relay = server.relay().unwrap();
    let index = run_index(server);
    let mut config = peer_config(share, &index.addr_string());
    config.listen = "127.0.0.2:0".parse().unwrap();
    let mut source = start_peer_with(config).await;
    source.wait_registered(1).await;
    let state = source.daemon.registration().borrow().clone();
    let RegistrationState::Registered { addr, reach, .. } = state else {
        panic!("{state:?}")
    };
    assert_eq!(reach, Reach::Firewalled, "listed at {addr}");
    (index, relay, source, addr)
}

/// `peer get` with or without callbacks (`None`), at `index`.
async fn get_with_callbacks(
    index: &Index,
    id: &str,
    out: &std::path::Path,
    callbacks: Option<&str>,
) -> Result<peer::pipeline::Fetched, peer::pipeline::FetchError> {
    let options = peer::pipeline::FetchOptions {
        callbacks: callbacks.map(|a| a.parse().unwrap()),
        ..peer::pipeline::FetchOptions::new(
            out.to_path_buf(),
            test_engine(),
            std::sync::Arc::new(peer::download::Progress::default()),
        )
    };
    let fetcher = peer::pipeline::Fetcher::Hybrid {
        index: index.addr_string(),
    };
    peer::pipeline::fetch(
        &fetcher,
        id,
        options,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
}

/// A firewalled source cannot be dialed: a downloader that only dials
/// (Napster's and eMule's plain transfer) finds no source. With callbacks
/// the index has the source connect out to the downloader, which fetches
/// and verifies the whole file over that connection, and says so
/// (`path: callback`).
#[tokio::test]
async fn a_firewalled_source_is_reached_by_callback() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = shared_file(&dir.path().join("share"), 600_000, 15);
    let id = id.to_hex();
    let (index, source, _) = firewalled_pair(&dir.path().join("share"), 120).await;

    match get_with_callbacks(&index, &id, &dir.path().join("plain"), None).await {
        Err(peer::pipeline::FetchError::NotOffered(_)) => {}
        other => panic!("a firewalled source was dialed: {other:?}"),
    }
    let fetched = get_with_callbacks(&index, &id, &dir.path().join("out"), Some("127.0.0.1:0"))
        .await
        .expect("the download by callback");
    let got = std::fs::read(&fetched.download.path).unwrap();
    assert!(got == data, "the file differs");
    let used = paths_used(&fetched.download.per_source);
    assert!(!used.is_empty(), "{:?}", fetched.download.per_source);
    assert!(
        used.iter().all(|p| *p == "callback"),
        "{:?}",
        fetched.download.per_source
    );
    let json = serde_json::to_value(&fetched).unwrap();
    assert_eq!(json["per_source"][0]["path"], "callback", "{json}");
    assert!(source.chunks_served() > 0);
    source.stop().await;
    index.stop().await;
}

/// A raw index client whose connection comes from `from` (another
/// loopback address: another requester).
async fn client_from(from: &str, index: &Index) -> transfer::net::Conn {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(from.parse().unwrap()).unwrap();
    let stream = socket.connect(index.addr).await.unwrap();
    transfer::net::client(stream, common::hello::Protocol::Index, None)
        .await
        .unwrap()
        .0
}

async fn ask(stream: &mut transfer::net::Conn, request: &IndexRequest) -> IndexResponse {
    common::wire::send_message(stream, request).await.unwrap();
    let mut buf = Vec::new();
    common::wire::expect_message(
        stream,
        &mut buf,
        common::wire::Deadlines::with_idle(Duration::from_secs(10)),
    )
    .await
    .unwrap()
}

/// Callback requests for a file the named peer has not registered, or
/// for a peer that is not online, are refused with the reason; nothing
/// is forwarded.
#[tokio::test]
async fn a_callback_for_an_unregistered_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, id) = shared_file(&dir.path().join("share"), 1000, 16);
    let (index, source, listed) = firewalled_pair(&dir.path().join("share"), 120).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let callback = |id, source: &str| IndexRequest::Callback {
        id,
        source: source.into(),
        port: 40000,
        token: rand::random(),
    };
    let other = common::id::FileId([0x5A; 32]);
    for (request, why) in [
        (callback(other, &listed), "has registered file"),
        (callback(id, "127.0.0.9:1234"), "has registered file"),
    ] {
        match client.request(&request).await {
            Err(IndexError::Refused { code, message }) => {
                assert_eq!(code, common::index_proto::ErrorCode::NotFound);
                assert!(message.contains(why), "{message}");
            }
            other => panic!("accepted: {other:?}"),
        }
    }
    // A port no one can be sent to.
    match client
        .request(&IndexRequest::Callback {
            id,
            source: listed.clone(),
            port: 22,
            token: [0; 16],
        })
        .await
    {
        Err(IndexError::Refused { message, .. }) => {
            assert!(message.contains("privileged"), "{message}")
        }
        other => panic!("accepted: {other:?}"),
    }
    assert!(client.stats().await.is_ok(), "the connection stays usable");
    source.stop().await;
    index.stop().await;
}

/// One requester flooding callback requests is refused past its budget
/// (5 a minute here), saying why; the source is asked to connect out only
/// for those within it; another requester still downloads by callback.
#[tokio::test]
async fn callback_floods_are_rate_limited_per_requester() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = shared_file(&dir.path().join("share"), 300_000, 17);
    let (index, source, listed) = firewalled_pair(&dir.path().join("share"), 5).await;
    // Where the flood asks callbacks to go: it counts the connections.
    let (target, serving, seen) = web_server("127.0.0.3:0").await;
    let mut flood = client_from("127.0.0.3:0", &index).await;
    let mut answers = Vec::new();
    for _ in 0..8 {
        let request = IndexRequest::Callback {
            id,
            source: listed.clone(),
            port: target.port(),
            token: rand::random(),
        };
        answers.push(ask(&mut flood, &request).await);
    }
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            IndexResponse::Ack { count: 1 } => assert!(i < 5, "request {i} was forwarded"),
            IndexResponse::Error { code, message } => {
                assert!(i >= 5, "request {i} refused: {message}");
                assert_eq!(*code, common::index_proto::ErrorCode::TooMany);
                assert!(message.contains("--max-callbacks-per-minute"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    wait_until(
        "the 5 forwarded callbacks arrive",
        Duration::from_secs(10),
        || {
            let n = seen.lock().unwrap().len();
            async move { n >= 5 }
        },
    )
    .await;
    // Another requester (127.0.0.1) is not held back by that flood.
    let fetched = get_with_callbacks(
        &index,
        &id.to_hex(),
        &dir.path().join("out"),
        Some("127.0.0.1:0"),
    )
    .await
    .expect("another requester's download by callback");
    assert!(std::fs::read(&fetched.download.path).unwrap() == data);
    assert_eq!(
        seen.lock().unwrap().len(),
        5,
        "callbacks beyond the budget were made"
    );
    serving.abort();
    source.stop().await;
    index.stop().await;
}

/// Where a node of the matrix sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// On the public segment, IPv4 and IPv6.
    Public,
    /// Behind a home router (IPv4 only).
    Home,
    /// Behind a strict NAT (IPv4 only).
    Strict,
    /// On the public segment with IPv6 only.
    V6Only,
    /// A downloader behind the same home router as the home source.
    SameHome,
}

impl Position {
    fn has_ipv6(self) -> bool {
        matches!(self, Position::Public | Position::V6Only)
    }

    fn has_ipv4(self) -> bool {
        self != Position::V6Only
    }
}

/// The path a pair should take, `None` when it has no IP family in
/// common (an IPv6-only node and one behind an IPv4 NAT: not tried).
fn expected_path(src: Position, dl: Position) -> Option<&'static str> {
    use Position::*;
    let common = (src.has_ipv4() && dl.has_ipv4()) || (src.has_ipv6() && dl.has_ipv6());
    if !common || (dl == SameHome && src != Home) {
        return None;
    }
    Some(match (src, dl) {
        // Published addresses: dialed (IPv6 first where both have it).
        (Public | V6Only, _) => "direct",
        // Behind the same router: its inside address, from the index.
        (Home, SameHome) => "lan",
        (_, Public) => "callback",
        // Both behind home routers (endpoint-independent, port
        // preserving): a TCP simultaneous open gets through.
        (Home, Home) => "punched",
        // A strict NAT on either side: through the index's relay.
        _ => "relayed",
    })
}

/// The matrix on the emulated network: a source in each position
/// {public (dual stack), home NAT, strict NAT, IPv6-only} and a
/// downloader in each of those and behind the source's home router, every
/// pair with an IP family in common. Every pair completes and verifies,
/// by the path [`expected_path`] names: a public source is dialed
/// (`direct`; an IPv6-only downloader reaches a dual-stack source at the
/// IPv6 address its dial-back proved), a source behind either NAT
/// connects out to a public downloader (`callback`), two peers behind
/// different home routers punch a hole (`punched`), two behind the same
/// router connect at the source's inside address (`lan`), and a pair with
/// a strict NAT and the other side behind any NAT is relayed by the
/// public peer that offers it (`peer serve --relay`, `relayed` via its
/// address), which carried at least those three files (the index's own
/// relay nothing); the dual-stack source is published at both its
/// addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reachability_matrix_on_the_emulated_network() {
    if netlab::skip("the_reachability_matrix_on_the_emulated_network") {
        return;
    }
    let mut lan = lab::netns::Lan::create().unwrap();
    let index_host = lan.add_host("index", None, None).unwrap();
    let relay_host = lan.add_host("relay", None, None).unwrap();
    let ipv6 = index_host.addr6.is_some();
    if !ipv6 {
        eprintln!("the_reachability_matrix_on_the_emulated_network: namespaces get no IPv6 here; the IPv6-only pairs are skipped");
    }
    // A router of each kind per side: sources and downloaders behind
    // different NATs, but for the SameHome downloader.
    let mut routers: Vec<_> = ["s", "d"]
        .iter()
        .map(|side| {
            (
                lan.add_router(&format!("home{side}"), lab::netns::NatKind::Home)
                    .unwrap(),
                lan.add_router(&format!("strict{side}"), lab::netns::NatKind::Strict)
                    .unwrap(),
            )
        })
        .collect();
    let with_ipv6 = |p: &Position| ipv6 || *p != Position::V6Only;
    let source_positions: Vec<Position> = [
        Position::Public,
        Position::Home,
        Position::Strict,
        Position::V6Only,
    ]
    .into_iter()
    .filter(with_ipv6)
    .collect();
    let downloader_positions: Vec<Position> = [
        Position::Public,
        Position::Home,
        Position::Strict,
        Position::V6Only,
        Position::SameHome,
    ]
    .into_iter()
    .filter(with_ipv6)
    .collect();
    let mut host = |pos: Position, role: &str| {
        let (home, strict) = &mut routers[usize::from(role == "dl")];
        match pos {
            Position::Public => lan.add_host(&format!("{role}pub"), None, None).unwrap(),
            Position::V6Only => lan.add_host_v6only(&format!("{role}six")).unwrap(),
            Position::Home => lan.add_behind(home, &format!("{role}home")).unwrap(),
            Position::Strict => lan.add_behind(strict, &format!("{role}strict")).unwrap(),
            Position::SameHome => lan.add_behind(&mut routers[0].0, "dlsame").unwrap(),
        }
    };
    let source_hosts: Vec<_> = source_positions.iter().map(|p| host(*p, "src")).collect();
    let downloader_hosts: Vec<_> = downloader_positions
        .iter()
        .map(|p| host(*p, "dl"))
        .collect();
    let index = netlab::start_index(
        &index_host,
        index_server::Config {
            dialback_timeout: Duration::from_millis(800),
            ..Default::default()
        },
    )
    .await;
    let index_for = |pos: Position| match pos {
        Position::V6Only => index.addr6.unwrap(),
        _ => index.addr,
    };
    let dirs = tempfile::tempdir().unwrap();
    // A public peer that relays for others.
    let mut relay_peer =
        netlab::start_peer(&relay_host, &dirs.path().join("relay"), index.addr, |c| {
            c.relay = Some(transfer::relay::RelayConfig {
                arrange_wait: transfer::relay::PEER_RELAY_ARRANGE_WAIT,
                ..Default::default()
            });
        })
        .await;
    relay_peer.registered().await;
    let mut sources = Vec::new();
    let mut files = Vec::new();
    for (i, (pos, h)) in source_positions.iter().zip(&source_hosts).enumerate() {
        let share = dirs.path().join(format!("src{i}"));
        let data = random_bytes(700_000, 100 + i as u64);
        write_file(&share, "f.bin", &data);
        let mut peer = netlab::start_peer(h, &share, index_for(*pos), |_| {}).await;
        match peer.registered().await {
            RegistrationState::Registered { reach, addr, .. } => {
                let expected = if pos.has_ipv6() {
                    Reach::Direct
                } else {
                    Reach::Firewalled
                };
                assert_eq!(reach, expected, "{pos:?} source listed at {addr}");
            }
            other => panic!("{other:?}"),
        }
        files.push((common::id::content_info(&data).id, data));
        sources.push(peer);
    }
    // Every file listed before any download starts.
    wait_until("every file is listed", Duration::from_secs(20), || {
        let state = index.state.clone();
        let ids: Vec<_> = files.iter().map(|(id, _)| *id).collect();
        async move {
            ids.iter().all(|id| {
                state
                    .lookup_reach(id, tokio::time::Instant::now())
                    .is_some()
            })
        }
    })
    .await;
    // The dual-stack source is published at its IPv4 address and, proven
    // by its own dial-back, at its IPv6 one.
    let (_, _, public) = index
        .state
        .lookup_addrs(
            &files[0].0,
            index_host.addr.into(),
            tokio::time::Instant::now(),
        )
        .unwrap();
    if let Some(addr6) = source_hosts[0].addr6 {
        let six = std::net::SocketAddr::new(addr6.into(), sources[0].listen.port());
        assert_eq!(public[0].also, [six.to_string()], "{public:?}");
    }
    // Every pair at once, each download on its downloader's host.
    let runtimes: Vec<_> = downloader_hosts
        .iter()
        .map(|h| h.runtime().unwrap())
        .collect();
    let mut pairs = Vec::new();
    for (s, src_pos) in source_positions.iter().enumerate() {
        for (d, dl_pos) in downloader_positions.iter().enumerate() {
            let Some(expected) = expected_path(*src_pos, *dl_pos) else {
                continue;
            };
            let id = files[s].0.to_hex();
            let out = dirs.path().join(format!("out-{s}-{d}"));
            let index = index_for(*dl_pos).to_string();
            let job = runtimes[d].handle().spawn(async move {
                let options = peer::pipeline::FetchOptions {
                    callbacks: Some("[::]:0".parse().unwrap()),
                    ..peer::pipeline::FetchOptions::new(
                        out,
                        test_engine(),
                        std::sync::Arc::new(peer::download::Progress::default()),
                    )
                };
                let fetcher = peer::pipeline::Fetcher::Hybrid { index };
                peer::pipeline::fetch(
                    &fetcher,
                    &id,
                    options,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await
            });
            pairs.push((s, *src_pos, *dl_pos, expected, job));
        }
    }
    assert_eq!(
        pairs.len(),
        if ipv6 { 13 } else { 10 },
        "9 IPv4 pairs, 3 with IPv6-only nodes (where namespaces have IPv6), 1 same NAT"
    );
    let mut table = Vec::new();
    for (s, src_pos, dl_pos, expected, job) in pairs {
        let result = job.await.unwrap();
        let path = match &result {
            Ok(fetched) => {
                let got = std::fs::read(&fetched.download.path).unwrap();
                assert!(
                    got == files[s].1,
                    "{src_pos:?} -> {dl_pos:?}: the file differs"
                );
                let used: Vec<_> = fetched
                    .download
                    .per_source
                    .iter()
                    .filter(|r| r.chunks > 0)
                    .collect();
                assert_eq!(used.len(), 1, "{:?}", fetched.download.per_source);
                match &used[0].via {
                    Some(via) => format!("{} via {via}", used[0].path),
                    None => used[0].path.to_string(),
                }
            }
            Err(e) => format!("failed: {e}"),
        };
        eprintln!("source {src_pos:?} -> downloader {dl_pos:?}: {path}");
        table.push((src_pos, dl_pos, path, expected));
    }
    let via_peer = format!("relayed via {}", relay_peer.listen);
    for (src_pos, dl_pos, path, expected) in &table {
        let expected = match *expected {
            "relayed" => via_peer.as_str(),
            other => other,
        };
        assert!(
            path == expected,
            "source {src_pos:?} -> downloader {dl_pos:?}: {path} (expected {expected})"
        );
    }
    let relayed = relay_peer.relayed_bytes();
    assert!(
        relayed >= 3 * 700_000,
        "the relay peer carried {relayed} bytes"
    );
    assert_eq!(index.relay.as_ref().unwrap().relayed_bytes(), 0);
    drop((sources, relay_peer, runtimes, index));
    lan.remove();
}

/// A downloader that cannot be called back either (its callback port is
/// on 127.0.0.2, where the index's dial-back to its connection's address
/// 127.0.0.1 does not reach) gets the file from a firewalled source
/// through the index's relay: verified, shown as `relayed`, and every
/// byte of it went through the relay.
#[tokio::test]
async fn a_firewalled_pair_is_connected_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = shared_file(&dir.path().join("share"), 500_000, 18);
    let id = id.to_hex();
    let (index, relay, source, _) =
        firewalled_pair_with(&dir.path().join("share"), 120, Default::default()).await;
    let fetched = get_with_callbacks(&index, &id, &dir.path().join("out"), Some("127.0.0.2:0"))
        .await
        .expect("the download through the relay");
    assert!(std::fs::read(&fetched.download.path).unwrap() == data);
    let paths = paths_used(&fetched.download.per_source);
    assert_eq!(paths, ["relayed"], "{:?}", fetched.download.per_source);
    assert!(
        relay.relayed_bytes() >= data.len() as u64,
        "the relay carried {} bytes",
        relay.relayed_bytes()
    );
    source.stop().await;
    index.stop().await;
}

/// The relay and hole punching are for logged-in peers: a relay or punch
/// request from a client that did not log in is refused, and so is a
/// connection to the relay with a token no logged-in peer arranged; the
/// reason is said each time.
#[tokio::test]
async fn the_relay_refuses_clients_that_are_not_logged_in() {
    let dir = tempfile::tempdir().unwrap();
    let (_, id) = shared_file(&dir.path().join("share"), 1000, 19);
    let (index, relay, source, listed) =
        firewalled_pair_with(&dir.path().join("share"), 120, Default::default()).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let request = IndexRequest::Relay {
        id,
        source: listed.clone(),
        token: rand::random(),
    };
    match client.request(&request).await {
        Err(IndexError::Refused { code, message }) => {
            assert_eq!(code, common::index_proto::ErrorCode::NotLoggedIn);
            assert!(message.contains("only logged-in peers"), "{message}");
        }
        other => panic!("relayed for a client that did not log in: {other:?}"),
    }
    let punch = IndexRequest::Punch {
        id,
        source: listed.clone(),
        token: rand::random(),
    };
    match client.request(&punch).await {
        Err(IndexError::Refused { code, message }) => {
            assert_eq!(code, common::index_proto::ErrorCode::NotLoggedIn);
            assert!(message.contains("only logged-in peers"), "{message}");
        }
        other => panic!("a punch for a client that did not log in: {other:?}"),
    }
    match peer::callback::join_relay(
        &index.addr_string(),
        rand::random(),
        common::reach::RelayRole::Downloader,
    )
    .await
    {
        Err(e) => assert!(e.to_string().contains("no relay is arranged"), "{e}"),
        Ok(_) => panic!("joined a relay nobody arranged"),
    }
    assert_eq!(relay.relayed_bytes(), 0);
    assert!(client.stats().await.is_ok(), "the connection stays usable");
    source.stop().await;
    index.stop().await;
}

/// Past the relay's cap of sessions (1 here) a logged-in peer's relay
/// request is refused, saying so; once the first relay is used and gone,
/// one can be arranged again, and a second downloader still gets its file
/// through it.
#[tokio::test]
async fn relays_beyond_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = shared_file(&dir.path().join("share"), 200_000, 20);
    let relay_config = index_server::relay::RelayConfig {
        max_sessions: 1,
        pair_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let (index, relay, source, listed) =
        firewalled_pair_with(&dir.path().join("share"), 120, relay_config).await;
    // A logged-in client (its listening port is not checked here: any).
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let answer = client
        .request(&checked(40000, None, rand::random()))
        .await
        .unwrap();
    assert!(
        matches!(answer, IndexResponse::WelcomeChecked { .. }),
        "{answer:?}"
    );
    let relay_request = |token| IndexRequest::Relay {
        id,
        source: listed.clone(),
        token,
    };
    // The first is arranged (and the source joins it, waiting for us).
    let first = client
        .request(&relay_request(rand::random()))
        .await
        .unwrap();
    assert_eq!(first, IndexResponse::Ack { count: 1 });
    match client.request(&relay_request(rand::random())).await {
        Err(IndexError::Refused { code, message }) => {
            assert_eq!(code, common::index_proto::ErrorCode::TooMany);
            assert!(message.contains("--relay-max-sessions"), "{message}");
        }
        other => panic!("a relay past the cap: {other:?}"),
    }
    // The unused first one expires (its pair timeout), then a download
    // goes through the relay.
    let fetched = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = get_with_callbacks(
                &index,
                &id.to_hex(),
                &dir.path().join("out"),
                Some("127.0.0.2:0"),
            )
            .await;
            match got {
                Ok(f) => break f,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "not yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no download through the relay: {e}"),
            }
        }
    };
    assert!(std::fs::read(&fetched.download.path).unwrap() == data);
    assert!(relay.relayed_bytes() >= data.len() as u64);
    source.stop().await;
    index.stop().await;
}

/// A serving daemon's download (swarming: it lists complete and partial
/// holders) uses firewalled sources too: here the source calls the
/// daemon back.
#[tokio::test]
async fn a_daemon_download_reaches_a_firewalled_source() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = shared_file(&dir.path().join("share"), 400_000, 21);
    let (index, source, _) = firewalled_pair(&dir.path().join("share"), 120).await;
    let mut downloader = start_peer(&dir.path().join("dl"), &index.addr_string()).await;
    downloader.wait_registered(0).await;
    let outcome = downloader
        .daemon
        .download(
            id,
            dir.path().join("dl-out"),
            test_engine(),
            std::sync::Arc::new(peer::download::Progress::default()),
        )
        .await
        .expect("the daemon's download by callback");
    assert!(std::fs::read(&outcome.path).unwrap() == data);
    let paths = paths_used(&outcome.per_source);
    assert_eq!(paths, ["callback"], "{:?}", outcome.per_source);
    downloader.stop().await;
    source.stop().await;
    index.stop().await;
}

/// A logged-in peer's punch request is answered with the firewalled
/// source's observed address (where to connect), and counts against the
/// same budget as callbacks: past it, refused with the reason.
#[tokio::test]
async fn a_punch_is_answered_with_the_source_address_and_budgeted() {
    let dir = tempfile::tempdir().unwrap();
    let (_, id) = shared_file(&dir.path().join("share"), 1000, 22);
    let (index, _, source, listed) =
        firewalled_setup(&dir.path().join("share"), 2, Default::default(), true).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let answer = client
        .request(&checked(40000, None, rand::random()))
        .await
        .unwrap();
    assert!(
        matches!(answer, IndexResponse::WelcomeChecked { .. }),
        "{answer:?}"
    );
    let punch = IndexRequest::Punch {
        id,
        source: listed.clone(),
        token: rand::random(),
    };
    for _ in 0..2 {
        match client.request(&punch).await {
            Ok(IndexResponse::PunchAnswer { peer }) => assert_eq!(peer, listed),
            other => panic!("{other:?}"),
        }
    }
    match client.request(&punch).await {
        Err(IndexError::Refused { code, message }) => {
            assert_eq!(code, common::index_proto::ErrorCode::TooMany);
            assert!(message.contains("--max-callbacks-per-minute"), "{message}");
        }
        other => panic!("a punch past the budget: {other:?}"),
    }
    source.stop().await;
    index.stop().await;
}

/// A node that answers the index's dial-backs with `nonce` (as a peer's
/// chunk server does) on a dual-stack listener (`[::]`, IPv6 and IPv4).
async fn prover(nonce: [u8; 16]) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = transfer::net::bind_listener("[::]:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = tokio::spawn(async move {
        use common::peer_proto::{PeerRequest, PeerResponse};
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (_, mut s) =
                    transfer::net::accept(s, &[common::hello::Protocol::Peer], |_| false, |_| 0)
                        .await?;
                let mut buf = Vec::new();
                let request: PeerRequest = common::wire::expect_message(
                    &mut s,
                    &mut buf,
                    common::wire::Deadlines::with_idle(Duration::from_secs(5)),
                )
                .await?;
                if let PeerRequest::ProveReachable { challenge } = request {
                    let proof = common::reach::proof(&nonce, &challenge);
                    common::wire::send_message(&mut s, &PeerResponse::Reachable { proof }).await?;
                }
                Ok::<_, common::wire::WireError>(())
            });
        }
    });
    (port, serving)
}

/// Dual stack at the index: a `LoginAddrs` naming the peer's IPv6 address
/// besides its IPv4 connection gets it dialed back and published beside
/// the listening address (`LookupAddrs` lists it), while an address in it
/// that does not prove itself is refused with the reason. A firewalled
/// peer's inside addresses go only to requesters from its own public IP
/// (here 127.0.0.1), not to others (127.0.0.2).
#[tokio::test]
async fn other_family_addresses_are_proven_and_inside_ones_stay_behind_the_nat() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped other_family_addresses_are_proven_and_inside_ones_stay_behind_the_nat: no IPv6 loopback here");
        return;
    }
    let index = start_index().await;
    let nonce: [u8; 16] = rand::random();
    let (port, serving) = prover(nonce).await;
    let (_, id) = shared_file(tempfile::tempdir().unwrap().path(), 1000, 30);
    let file = |id| common::index_proto::SharedFile {
        id,
        name: "f.bin".into(),
        size: 1000,
    };
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let login = IndexRequest::LoginAddrs {
        login: Login {
            listen_port: port,
            advertise: None,
            nick: None,
        },
        nonce,
        also: vec![format!("[::1]:{port}"), "[::1]:1".into()],
        lan: vec!["192.168.7.2:4000".into()],
    };
    let IndexResponse::WelcomeChecked { addr, refused, .. } = client.request(&login).await.unwrap()
    else {
        panic!("not welcomed")
    };
    assert_eq!(addr, Some(format!("127.0.0.1:{port}")));
    assert!(
        refused.len() == 1 && refused[0].contains("[::1]:1"),
        "{refused:?}"
    );
    client
        .request(&IndexRequest::AddFiles {
            files: vec![file(id)],
        })
        .await
        .unwrap();
    // A firewalled peer (nothing listens at its port) with an inside address.
    let mut behind = IndexClient::connect(&index.addr_string()).await.unwrap();
    let other = common::id::FileId([0x33; 32]);
    let login = IndexRequest::LoginAddrs {
        login: Login {
            listen_port: 1,
            advertise: None,
            nick: None,
        },
        nonce: rand::random(),
        also: vec![],
        lan: vec!["192.168.7.2:4000".into()],
    };
    let IndexResponse::WelcomeChecked { addr: None, .. } = behind.request(&login).await.unwrap()
    else {
        panic!("a peer listening nowhere was published")
    };
    behind
        .request(&IndexRequest::AddFiles {
            files: vec![file(other)],
        })
        .await
        .unwrap();

    let mut asker = IndexClient::connect(&index.addr_string()).await.unwrap();
    let (_, _, found) = asker.lookup_addrs(id).await.unwrap().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].also, [format!("[::1]:{port}")]);
    assert!(found[0].lan.is_empty(), "a direct peer's inside address");
    let (_, _, found) = asker.lookup_addrs(other).await.unwrap().unwrap();
    assert_eq!(found[0].source.reach, Reach::Firewalled);
    assert_eq!(found[0].lan, ["192.168.7.2:4000"], "same public IP");
    // From another address: no inside address.
    let mut elsewhere = client_from("127.0.0.2:0", &index).await;
    match ask(&mut elsewhere, &IndexRequest::LookupAddrs { id: other }).await {
        IndexResponse::SourcesAddrs { sources, .. } => {
            assert!(sources[0].lan.is_empty(), "{sources:?}")
        }
        answer => panic!("{answer:?}"),
    }
    serving.abort();
    index.stop().await;
}

/// `peer serve --relay`: a public peer relays for a firewalled pair that
/// can neither call back nor punch (a downloader whose callback port is
/// not reachable, an index that coordinates no punching). The index
/// hands out that peer rather than its own relay; every byte goes through
/// the peer (counted there), none through the index, every chunk is
/// verified, and `--json` says `relayed` via that peer's address.
#[tokio::test]
async fn a_firewalled_pair_is_relayed_through_a_public_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (data, id) = shared_file(&dir.path().join("share"), 500_000, 31);
    let (index, index_relay, source, _) =
        firewalled_pair_with(&dir.path().join("share"), 120, Default::default()).await;
    let mut config = peer_config(&dir.path().join("relay-share"), &index.addr_string());
    std::fs::create_dir_all(&config.share).unwrap();
    config.relay = Some(transfer::relay::RelayConfig {
        arrange_wait: transfer::relay::PEER_RELAY_ARRANGE_WAIT,
        ..Default::default()
    });
    let mut relay_peer = start_peer_with(config).await;
    relay_peer.wait_registered(0).await;
    let relay_addr = relay_peer.addr();
    let fetched = get_with_callbacks(
        &index,
        &id.to_hex(),
        &dir.path().join("out"),
        Some("127.0.0.2:0"),
    )
    .await
    .expect("the download through the relay peer");
    assert!(std::fs::read(&fetched.download.path).unwrap() == data);
    let used: Vec<_> = fetched
        .download
        .per_source
        .iter()
        .filter(|s| s.chunks > 0)
        .collect();
    assert_eq!(used.len(), 1, "{:?}", fetched.download.per_source);
    assert_eq!(used[0].path, "relayed");
    assert_eq!(used[0].via.as_deref(), Some(relay_addr.as_str()));
    let json = serde_json::to_value(&fetched).unwrap();
    assert_eq!(json["per_source"][0]["via"], relay_addr, "{json}");
    let carried = relay_peer.daemon.relay().unwrap().relayed_bytes();
    assert!(
        carried >= data.len() as u64,
        "the relay peer carried {carried} bytes"
    );
    assert_eq!(
        index_relay.relayed_bytes(),
        0,
        "bytes went through the index"
    );
    relay_peer.stop().await;
    source.stop().await;
    index.stop().await;
}

/// Only the index arranges relays at a peer: a connection to a peer's
/// relay with a token the index never sent is refused (after the short
/// wait for an order on its way), and nothing is relayed.
#[tokio::test]
async fn a_peer_relay_refuses_tokens_the_index_did_not_arrange() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = peer_config(dir.path(), &index.addr_string());
    config.relay = Some(transfer::relay::RelayConfig {
        arrange_wait: Duration::from_millis(200),
        ..Default::default()
    });
    let mut relay_peer = start_peer_with(config).await;
    relay_peer.wait_registered(0).await;
    match peer::callback::join_relay(
        &relay_peer.addr(),
        rand::random(),
        common::reach::RelayRole::Downloader,
    )
    .await
    {
        Err(e) => assert!(e.to_string().contains("no relay is arranged"), "{e}"),
        Ok(_) => panic!("joined a relay the index never arranged"),
    }
    assert_eq!(relay_peer.daemon.relay().unwrap().relayed_bytes(), 0);
    relay_peer.stop().await;
    index.stop().await;
}
