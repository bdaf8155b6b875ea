//! Callbacks ("push", issue 15): reaching a source that accepts no
//! connections (a firewalled peer, behind a NAT or a firewall) by having
//! it connect out to the downloader.
//!
//! ```text
//!  downloader                    index                     firewalled source
//!      | LookupReach {id} ---------> |                              |
//!      | <--- SourcesReach (reach) --|                              |
//!      | Callback {id, source,       |                              |
//!      |   port, token} -----------> | CallbackOrder {id, IP:port,  |
//!      |                             |   token} (on its index       |
//!      | <------------ Ack ----------|   connection) -------------> |
//!      | <====== TCP connect to IP:port, hello Protocol::Callback ===|
//!      | <============ CallbackHello {token, features} ==============|
//!      | ==== peer protocol: HashList, Have, Chunk ... (we ask) ====> |
//! ```
//!
//! `IP` is the downloader's connection address as the index sees it, so a
//! callback can only ever be aimed at the host that asked. The downloader
//! side is [`Callbacks`] (a listener and the [`Connector`] the engine asks
//! for sources it cannot dial); the source side is [`CallbackServer`]
//! (the registrar hands it each order).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hello::{Protocol, FEATURE_UPLOAD_QUEUE};
use common::id::FileId;
use common::index_proto::{IndexRequest, IndexResponse, Reach, SourceReach};
use common::limits::{CONNECT_TIMEOUT, FRAME_TIMEOUT, HELLO_TIMEOUT};
use common::reach::{CallbackHello, MAX_CALLBACK_HELLO_LEN, NONCE_LEN};
use common::wire::{self, Deadlines, WireError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{debug, info};
use transfer::chunk_server::{serve_peer_session, SessionRules, UploadStats};
use transfer::download::source::Connector;
use transfer::library::Library;
use transfer::rate::RateLimiter;

use crate::index_client::{IndexClient, IndexError};

/// Why a callback did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The index refused or could not be reached.
    #[error("the index did not forward the callback: {0}")]
    Index(#[from] IndexError),
    /// The source did not connect in time (it may be gone, or we cannot
    /// be reached at the port the index was given).
    #[error("the source did not call back within {0:?}")]
    NoCallback(Duration),
    /// Dialing the downloader, or the hello there, failed.
    #[error("cannot call back {target}: {source}")]
    Dial { target: String, source: WireError },
    #[error("the callback listener stopped")]
    Stopped,
}

/// Most callback connections being greeted at once at one downloader;
/// more are closed at once.
pub const MAX_GREETING: usize = 64;

/// Most callback orders a source serves at once; later ones are dropped
/// (the downloader asks again).
pub const MAX_ANSWERING: usize = 64;

type Pending = Mutex<HashMap<[u8; NONCE_LEN], oneshot::Sender<(TcpStream, u8)>>>;

/// The downloader's side for one download: a listener that takes the
/// sources' callback connections, the sources known to be firewalled, and
/// the [`Connector`] that asks the index for a callback to each of them.
/// Its accept loop stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Callbacks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    index: String,
    id: FileId,
    port: u16,
    pending: Pending,
    firewalled: Mutex<HashSet<String>>,
    /// The accept loop (aborted when the last handle goes).
    _accepting: JoinSet<()>,
}

impl Callbacks {
    /// Listens at `listen` (port 0: any free one) for callbacks of the
    /// sources of `id` listed by `index`.
    pub fn start(index: &str, id: FileId, listen: SocketAddr) -> std::io::Result<Self> {
        let listener = transfer::net::bind_listener(listen)?;
        let port = listener.local_addr()?.port();
        // The accept loop holds a weak handle and is owned (aborted on
        // drop) by what it points to: it ends with the last `Callbacks`.
        let inner = Arc::new_cyclic(|weak| {
            let mut accepting = JoinSet::new();
            accepting.spawn(accept_loop(listener, weak.clone()));
            Inner {
                index: index.to_string(),
                id,
                port,
                pending: Mutex::new(HashMap::new()),
                firewalled: Mutex::new(HashSet::new()),
                _accepting: accepting,
            }
        });
        Ok(Callbacks { inner })
    }

    /// The port the listener is on.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Notes that the sources named `addrs` are firewalled.
    pub fn mark_firewalled(&self, addrs: &[String]) {
        lock(&self.inner.firewalled).extend(addrs.iter().cloned());
    }

    /// Notes how each of `sources` is reached, and returns their addresses.
    pub fn note(&self, sources: Vec<SourceReach>) -> Vec<String> {
        let mut firewalled = lock(&self.inner.firewalled);
        sources
            .into_iter()
            .map(|s| {
                if s.reach == Reach::Firewalled {
                    firewalled.insert(s.source.addr.clone());
                } else {
                    firewalled.remove(&s.source.addr);
                }
                s.source.addr
            })
            .collect()
    }

    /// Asks the index to have the source listed as `source` connect to
    /// us, and waits (within `CONNECT_TIMEOUT` after the index forwarded
    /// it) for that connection: returned after its callback hello, with
    /// the source's feature bits.
    pub async fn call(&self, source: &str) -> Result<(TcpStream, u8), CallbackError> {
        let token: [u8; NONCE_LEN] = rand::random();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(token, tx);
        // Forgotten however this ends (dropped future included).
        struct Forget<'a>(&'a Pending, [u8; NONCE_LEN]);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(self.0).remove(&self.1);
            }
        }
        let _forget = Forget(&self.inner.pending, token);
        let mut client = IndexClient::connect(&self.inner.index).await?;
        let request = IndexRequest::Callback {
            id: self.inner.id,
            source: source.to_string(),
            port: self.inner.port,
            token,
        };
        match client.request(&request).await? {
            IndexResponse::Ack { .. } => {}
            other => return Err(IndexError::Unexpected(format!("{other:?}")).into()),
        }
        debug!(%source, "callback forwarded by the index; waiting for the source");
        match tokio::time::timeout(CONNECT_TIMEOUT, rx).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(_)) => Err(CallbackError::Stopped),
            Err(_) => Err(CallbackError::NoCallback(CONNECT_TIMEOUT)),
        }
    }
}

impl Connector for Callbacks {
    fn connect<'a>(
        &'a self,
        addr: &'a str,
    ) -> Option<
        std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<(TcpStream, u8)>> + Send + 'a>,
        >,
    > {
        if !lock(&self.inner.firewalled).contains(addr) {
            return None;
        }
        Some(Box::pin(async move {
            self.call(addr).await.map_err(std::io::Error::other)
        }))
    }

    fn path(&self, addr: &str) -> &'static str {
        if lock(&self.inner.firewalled).contains(addr) {
            "callback"
        } else {
            "direct"
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Takes callback connections until the last [`Callbacks`] handle goes:
/// each one's hello and [`CallbackHello`] are read within their deadlines
/// (at most [`MAX_GREETING`] at once), and a connection whose token is
/// pending goes to the caller waiting for it; any other is closed.
async fn accept_loop(listener: TcpListener, inner: std::sync::Weak<Inner>) {
    let mut greeting = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = greeting.join_next(), if !greeting.is_empty() => continue,
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        drop(strong);
        let Ok((mut stream, remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if greeting.len() >= MAX_GREETING {
            debug!(%remote, "too many callback connections being greeted; closing one");
            continue;
        }
        let inner = inner.clone();
        greeting.spawn(async move {
            match greet(&mut stream).await {
                Ok(hello) => {
                    let Some(inner) = inner.upgrade() else { return };
                    let waiting = lock(&inner.pending).remove(&hello.token);
                    match waiting {
                        Some(tx) => {
                            transfer::net::tune_socket(&stream);
                            let _ = tx.send((stream, hello.features));
                        }
                        None => debug!(%remote, "a callback with a token nobody waits for; closed"),
                    }
                }
                Err(e) => debug!(%remote, error = %e, "callback hello refused"),
            }
        });
    }
}

/// The server side of a callback connection's opening: the hello for
/// [`Protocol::Callback`], then the [`CallbackHello`] frame.
async fn greet(stream: &mut TcpStream) -> Result<CallbackHello, WireError> {
    wire::server_handshake(stream, Protocol::Callback, false).await?;
    let mut buf = Vec::new();
    let got = wire::read_frame(
        stream,
        &mut buf,
        MAX_CALLBACK_HELLO_LEN,
        Deadlines {
            idle: Some(HELLO_TIMEOUT),
            frame: FRAME_TIMEOUT,
        },
    )
    .await?;
    if !got {
        return Err(WireError::Closed);
    }
    Ok(common::frame::decode_payload(&buf)?)
}

/// The source's side: serves the callback orders the index forwards, each
/// over a connection this peer opens to the downloader, as its chunk
/// server would serve an accepted one (the same upload slots and queue).
#[derive(Clone)]
pub struct CallbackServer {
    pub library: Library,
    pub stats: Arc<UploadStats>,
    pub upload_limit: Option<Arc<RateLimiter>>,
    pub rules: SessionRules,
}

impl CallbackServer {
    /// Connects to `target`, sends the callback hello with `token`, and
    /// serves the peer protocol there until the downloader is done.
    pub async fn answer(&self, target: &str, token: [u8; NONCE_LEN]) -> Result<(), CallbackError> {
        let dial_error = |source| CallbackError::Dial {
            target: target.to_string(),
            source,
        };
        let mut stream = transfer::net::connect_tcp(target, CONNECT_TIMEOUT)
            .await
            .map_err(|e| dial_error(WireError::Io(e)))?;
        transfer::net::tune_socket(&stream);
        wire::client_handshake(&mut stream, Protocol::Callback)
            .await
            .map_err(dial_error)?;
        let hello = CallbackHello {
            token,
            features: FEATURE_UPLOAD_QUEUE,
        };
        tokio::time::timeout(FRAME_TIMEOUT, wire::send_message(&mut stream, &hello))
            .await
            .map_err(|_| dial_error(WireError::Timeout("sending the callback hello")))?
            .map_err(dial_error)?;
        let remote = stream
            .peer_addr()
            .map_err(|e| dial_error(WireError::Io(e)))?;
        info!(%target, "called back a downloader; serving it");
        self.stats
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        serve_peer_session(
            stream,
            remote,
            &self.library,
            &self.stats,
            None,
            self.upload_limit.as_deref(),
            &self.rules,
        )
        .await
        .map_err(dial_error)
    }
}
