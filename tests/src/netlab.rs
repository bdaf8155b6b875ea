//! Nodes on the lab's emulated network ([`lab::netns`]): an index and
//! peers each in a network namespace of its own, some behind NAT routers,
//! driven from the test's runtime. Needs root; [`skip`] says so in one
//! line otherwise (CI runs as root).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lab::netns::{Host, HostRuntime};
use peer::registrar::RegistrationState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// `true` (after printing one line) when namespaces cannot be made here.
pub fn skip(test: &str) -> bool {
    if let Err(e) = lab::netns::available() {
        eprintln!("skipped {test}: it builds network namespaces ({e})");
        return true;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped {test}: `nft` is not installed (Debian package nftables)");
        return true;
    }
    false
}

/// An index server running inside a host's namespace.
pub struct NsIndex {
    /// Where peers reach it (the host's address: IPv4).
    pub addr: SocketAddr,
    /// Where IPv6 peers reach it (the host's IPv6 address, if it has one;
    /// the index listens dual-stack on `[::]`).
    pub addr6: Option<SocketAddr>,
    pub state: index_server::Index,
    /// Its relay, when it has one.
    pub relay: Option<std::sync::Arc<index_server::relay::Relay>>,
    shutdown: CancellationToken,
    _rt: HostRuntime,
}

impl Drop for NsIndex {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts an index on `host` (all its addresses, a free port) with
/// `config` (its `listen` is replaced).
pub async fn start_index(host: &Host, mut config: index_server::Config) -> NsIndex {
    crate::init_logging();
    let rt = host.runtime().expect("a runtime in the index's namespace");
    // Dual stack: IPv4 and IPv6 peers on one socket.
    config.listen = "[::]:0".parse().unwrap();
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = shutdown.clone();
    rt.handle().spawn(async move {
        let server = index_server::Server::bind(config)
            .await
            .expect("bind the index");
        let _ = tx.send((server.local_addr().port(), server.index(), server.relay()));
        let _ = server.run(stop).await;
    });
    let (port, state, relay) = rx.await.expect("the index started");
    NsIndex {
        addr: SocketAddr::from((host.addr, port)),
        addr6: host.addr6.map(|a| SocketAddr::from((a, port))),
        state,
        relay,
        shutdown,
        _rt: rt,
    }
}

/// A sharing peer daemon running inside a host's namespace.
pub struct NsPeer {
    /// Where its chunk server listens (the host's address and its port).
    pub listen: SocketAddr,
    pub registration: watch::Receiver<RegistrationState>,
    /// The relay it runs for others (`ServeConfig::relay`), if any.
    pub relay: Option<std::sync::Arc<transfer::relay::Relay>>,
    shutdown: CancellationToken,
    _rt: HostRuntime,
}

impl Drop for NsPeer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl NsPeer {
    /// Bytes its relay carried (0 without one).
    pub fn relayed_bytes(&self) -> u64 {
        self.relay.as_ref().map_or(0, |r| r.relayed_bytes())
    }

    /// Waits until the peer is registered, and returns that state.
    pub async fn registered(&mut self) -> RegistrationState {
        let mut rx = self.registration.clone();
        let found = {
            let waited = tokio::time::timeout(
                Duration::from_secs(30),
                rx.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
            )
            .await;
            match waited {
                Ok(Ok(s)) => Some(s.clone()),
                _ => None,
            }
        };
        found.unwrap_or_else(|| {
            panic!(
                "the peer did not register; state {:?}",
                *self.registration.borrow()
            )
        })
    }
}

/// Starts a peer on `host` sharing `share` at `index`, listening on all
/// the host's addresses (IPv6 and IPv4); `adjust` may change its config.
pub async fn start_peer(
    host: &Host,
    share: &Path,
    index: SocketAddr,
    adjust: impl FnOnce(&mut peer::ServeConfig),
) -> NsPeer {
    crate::init_logging();
    std::fs::create_dir_all(share).unwrap();
    let rt = host.runtime().expect("a runtime in the peer's namespace");
    let mut config = crate::peer_config(share, &index.to_string());
    // Dual stack, as `peer serve` by default.
    config.listen = "[::]:0".parse().unwrap();
    adjust(&mut config);
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = shutdown.clone();
    rt.handle().spawn(async move {
        let daemon = peer::serve::start(config, stop.clone())
            .await
            .expect("start the peer");
        let _ = tx.send((
            daemon.listen_addr().port(),
            daemon.registration().clone(),
            daemon.relay().cloned(),
        ));
        daemon.wait().await;
    });
    let (port, registration, relay) = rx.await.expect("the peer started");
    NsPeer {
        listen: SocketAddr::new(host.ip(), port),
        registration,
        relay,
        shutdown,
        _rt: rt,
    }
}
