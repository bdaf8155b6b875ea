//! One source of a download: a pipelined connection to one peer.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::hello::{Protocol, FEATURE_CANCEL, FEATURE_HAVE_PUSH, FEATURE_UPLOAD_QUEUE};
use common::id::{chunk_count, ContentInfo, FileId};
use common::limits::MAX_FILE_SIZE;
use common::peer_proto::{bit_is_set, PeerErrorCode, PeerRequest, PeerResponse};
use common::wire::{self, Deadlines, WireError};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use super::scheduler::Pick;
use super::{Shared, SourceState, VerifyJob};
use crate::net::{connect_tcp, Conn, ConnReader, ConnWriter};

/// Why a source was given up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("does not have the file (any more)")]
    NotFound,
    #[error("its copy of the file changed on disk")]
    FileChanged,
    #[error("all its upload slots are busy")]
    Busy,
    #[error("sent data that failed verification")]
    BadData,
    #[error("stalled: no data for {0:?}")]
    Stalled(Duration),
    #[error("broke the protocol: {0}")]
    Protocol(String),
}

/// This process's requester token (`PeerRequest::Requester`): random, the
/// same for every connection, so that all of them share one place in a
/// source's upload queue and a reconnection finds it again.
pub fn requester_token() -> u64 {
    static TOKEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// A connection being made by a [`Connector`]: the stream, on which the
/// hello is done, and the source's feature bits.
pub type Connecting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<(Conn, u8)>> + Send + 'a>>;

/// How the engine reaches a source other than by dialing its address: a
/// peer that accepts no connections is asked, through the index, to
/// connect out to us (a callback), punched through to, or reached through
/// a relay. Addresses it does not handle are dialed as usual.
pub trait Connector: std::fmt::Debug + Send + Sync + 'static {
    /// A connection to the source named `addr` on which this node speaks
    /// the peer protocol as the client (hello and handshake already done,
    /// whichever side opened it; the engine checks the source's proven id
    /// against the listed one), with the
    /// source's feature bits (`hello::FEATURE_UPLOAD_QUEUE`); `None`: dial
    /// `addr` directly. The engine bounds the whole future by three times
    /// its `connect_timeout` (an index round trip, a connection set up by
    /// the other side, maybe a first login and a failed attempt).
    fn connect<'a>(&'a self, addr: &'a str) -> Option<Connecting<'a>>;

    /// How the source named `addr` is reached: `direct`, `callback`,
    /// `punched` or `relayed` (for `peer get --json`).
    fn path(&self, addr: &str) -> &'static str;

    /// Every address the source named `addr` is published at (`addr` and
    /// its other IP family's), dialed together with Happy Eyeballs
    /// (`net::connect_addrs`); empty (the default): `addr` alone.
    fn addresses(&self, _addr: &str) -> Vec<String> {
        Vec::new()
    }

    /// For a `relayed` source, which relay carried it: a public peer's
    /// `IP:PORT`, or `index` for the index's own (for `peer get --json`).
    fn via(&self, _addr: &str) -> Option<String> {
        None
    }
}

/// Longest wait for the answer to `Wait` (the source answers at least
/// every `QUEUE_REFRESH`).
const QUEUE_ANSWER_DEADLINE: Duration = Duration::from_secs(3 * 5);

/// A handshaken connection to a peer's chunk server.
pub struct PeerConnection {
    reader: BufReader<ConnReader>,
    writer: BufWriter<ConnWriter>,
    buf: Vec<u8>,
    stall: Duration,
    /// The source keeps an upload queue (and was told who we are).
    queue_aware: bool,
    /// The `Delivered` answering our `Requester` is still to be read.
    requester_unanswered: bool,
    /// The source pushes availability (`Subscribe`).
    pushes: bool,
    /// The file subscribed to and its chunk count, once `Subscribe` was
    /// answered with a partial holding: `Gained` frames may come.
    subscribed: Option<(FileId, u32)>,
    /// Chunks announced by `Gained` and not yet taken ([`Self::take_gained`]).
    gained: Vec<u32>,
    /// The source takes back requests (`Cancel`).
    cancels: bool,
}

impl PeerConnection {
    /// Connects as this process's requester ([`requester_token`]).
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        stall: Duration,
    ) -> Result<Self, SourceError> {
        Self::connect_as(addr, connect_timeout, stall, requester_token()).await
    }

    /// Connects, and tells a source with an upload queue that the
    /// requester is `token`. An `addr` of the form `PEERID@HOST:PORT`
    /// (a source as the index listed it) must prove that id, or it is
    /// refused as an impostor.
    pub async fn connect_as(
        addr: &str,
        connect_timeout: Duration,
        stall: Duration,
        token: u64,
    ) -> Result<Self, SourceError> {
        Self::connect_via(addr, None, connect_timeout, stall, token).await
    }

    /// [`Self::connect_as`], through `connector` when it handles `addr`
    /// (a callback or a relay), within `connect_timeout` either way.
    pub async fn connect_via(
        addr: &str,
        connector: Option<&dyn Connector>,
        connect_timeout: Duration,
        stall: Duration,
        token: u64,
    ) -> Result<Self, SourceError> {
        let (expect, addr) = common::identity::split_dial_addr(addr)
            .map_err(|e| SourceError::Protocol(format!("bad source address: {e}")))?;
        // The id the index listed for this source, if it listed one.
        let expect = expect.or_else(|| crate::net::listed_id(addr));
        if let Some(connecting) = connector.and_then(|c| c.connect(addr)) {
            // A callback or a relay takes a round trip to the index and a
            // connection set up from the other side (and a first login).
            let connect_timeout = connect_timeout.saturating_mul(3);
            let (stream, features) = tokio::time::timeout(connect_timeout, connecting)
                .await
                .map_err(|_| {
                    SourceError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("not connected within {connect_timeout:?}"),
                    ))
                })?
                .map_err(SourceError::Connect)?;
            // A callback's source opened the connection: its id is checked here.
            if let (Some(expected), Some(got)) = (expect, stream.remote()) {
                if expected != got {
                    return Err(SourceError::Protocol(
                        common::secure::SecureError::WrongPeer { expected, got }.to_string(),
                    ));
                }
            }
            return Self::handshaken(stream, features, stall, token).await;
        }
        let alternatives: Option<Vec<std::net::SocketAddr>> = connector
            .map(|c| c.addresses(addr))
            .filter(|all| all.len() > 1)
            .and_then(|all| all.iter().map(|a| a.parse().ok()).collect());
        let stream: TcpStream = match alternatives {
            Some(all) => crate::net::connect_addrs(&all, connect_timeout)
                .await
                .map(|(stream, _)| stream),
            None => connect_tcp(addr, connect_timeout).await,
        }
        .map_err(SourceError::Connect)?;
        let (conn, features) = crate::net::client(stream, Protocol::Peer, expect)
            .await
            .map_err(|e| match e {
                WireError::Hello(common::hello::HelloError::Busy) => SourceError::Busy,
                // Never retried: it is not who the index said.
                WireError::Secure(e @ common::secure::SecureError::WrongPeer { .. }) => {
                    SourceError::Protocol(e.to_string())
                }
                other => SourceError::Wire(other),
            })?;
        Self::handshaken(conn, features, stall, token).await
    }

    /// A connection whose hello is done (the source's feature bits are
    /// `features`); a source with an upload queue is told we are `token`.
    async fn handshaken(
        stream: Conn,
        features: u8,
        stall: Duration,
        token: u64,
    ) -> Result<Self, SourceError> {
        let (r, w) = stream.into_split();
        let mut conn = PeerConnection {
            // Small on purpose: a chunk read larger than the buffer goes
            // straight into the chunk buffer instead of through this one.
            reader: BufReader::with_capacity(16 * 1024, r),
            writer: BufWriter::new(w),
            buf: Vec::new(),
            stall,
            queue_aware: features & FEATURE_UPLOAD_QUEUE != 0,
            requester_unanswered: false,
            pushes: features & FEATURE_HAVE_PUSH != 0,
            subscribed: None,
            gained: Vec::new(),
            cancels: features & FEATURE_CANCEL != 0,
        };
        if conn.queue_aware {
            // Goes out with the first request; its answer is read first.
            conn.queue(&PeerRequest::Requester { token }).await?;
            conn.requester_unanswered = true;
        }
        Ok(conn)
    }

    /// Whether the source takes back chunk requests (`Cancel`).
    pub fn cancels(&self) -> bool {
        self.cancels
    }

    /// Whether the source keeps an upload queue (answers `Queued`).
    pub fn queue_aware(&self) -> bool {
        self.queue_aware
    }

    async fn queue(&mut self, req: &PeerRequest) -> Result<(), SourceError> {
        Ok(wire::write_message(&mut self.writer, req).await?)
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        self.writer
            .flush()
            .await
            .map_err(|e| SourceError::Wire(WireError::Io(e)))
    }

    async fn header(&mut self) -> Result<PeerResponse, SourceError> {
        self.header_within(self.stall).await
    }

    /// The next answer, the first byte of which must come within `idle`.
    /// `Gained` frames pushed before it are taken note of on the way (they
    /// do not extend the deadline).
    async fn header_within(&mut self, idle: Duration) -> Result<PeerResponse, SourceError> {
        let until = tokio::time::Instant::now() + idle;
        let stall = self.stall;
        let deadlines = |now: tokio::time::Instant| Deadlines {
            idle: Some(until.saturating_duration_since(now)),
            frame: stall,
        };
        if self.requester_unanswered {
            self.requester_unanswered = false;
            let d = deadlines(tokio::time::Instant::now());
            match wire::expect_message(&mut self.reader, &mut self.buf, d).await {
                Ok(PeerResponse::Delivered) => {}
                Err(WireError::Timeout(_)) => return Err(SourceError::Stalled(idle)),
                Err(e) => return Err(e.into()),
                Ok(other) => {
                    return Err(SourceError::Protocol(format!(
                        "expected the requester to be acknowledged, got {other:?}"
                    )))
                }
            }
        }
        loop {
            let d = deadlines(tokio::time::Instant::now());
            return match wire::expect_message(&mut self.reader, &mut self.buf, d).await {
                Err(WireError::Timeout(_)) => Err(SourceError::Stalled(idle)),
                Err(e) => Err(e.into()),
                Ok(PeerResponse::Gained { id, index }) => {
                    self.note_gain(id, index)?;
                    continue;
                }
                Ok(PeerResponse::Error { code, message }) => Err(match code {
                    PeerErrorCode::NotFound => SourceError::NotFound,
                    PeerErrorCode::FileChanged => SourceError::FileChanged,
                    PeerErrorCode::Busy => SourceError::Busy,
                    // Shown to the user: never raw terminal control from a peer.
                    _ => SourceError::Protocol(
                        common::names::escape_for_terminal(&message).into_owned(),
                    ),
                }),
                Ok(other) => Ok(other),
            };
        }
    }

    /// Records a pushed `Gained`: only for the file subscribed to, and
    /// within it.
    fn note_gain(&mut self, id: FileId, index: u32) -> Result<(), SourceError> {
        match self.subscribed {
            Some((sub, chunks)) if sub == id && index < chunks => {
                // At most one per chunk is pending: a source repeating
                // itself cannot grow this past the file's chunk count.
                if !self.gained.contains(&index) {
                    self.gained.push(index);
                }
                Ok(())
            }
            _ => Err(SourceError::Protocol(format!(
                "announced chunk {index} of a file not subscribed to"
            ))),
        }
    }

    /// Chunks the source announced since the last call.
    pub(super) fn take_gained(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.gained)
    }

    /// Whether the source pushes its new chunks to us (a `Subscribe` was
    /// answered with a partial holding).
    pub fn subscribed(&self) -> bool {
        self.subscribed.is_some()
    }

    /// Resolves when something arrived while no request is out: from a
    /// subscribed source, a pushed `Gained` (read it with
    /// [`Self::read_pushed`]). Cancel-safe: nothing is consumed.
    pub(super) async fn push_arrived(&mut self) -> Result<(), SourceError> {
        use tokio::io::AsyncBufReadExt;
        self.reader
            .fill_buf()
            .await
            .map(|_| ())
            .map_err(|e| SourceError::Wire(WireError::Io(e)))
    }

    /// Whether the data already received begins with a pushed `Gained`
    /// frame (not an answer): then [`Self::read_pushed`] takes it
    /// without waiting.
    pub(super) fn pushed_frame_next(&self) -> bool {
        static GAINED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        // The frame's length and the variant's tag, as any `Gained` starts.
        let start = GAINED.get_or_init(|| {
            let probe = PeerResponse::Gained {
                id: FileId([0; 32]),
                index: 0,
            };
            common::frame::encode_frame(&probe)
                .map(|f| f[..5].to_vec())
                .unwrap_or_default()
        });
        let buffered = self.reader.buffer();
        self.subscribed.is_some()
            && !start.is_empty()
            && buffered.len() > 4
            && buffered[4] == start[4]
    }

    /// Reads the frame that [`Self::push_arrived`] announced: with no
    /// request out, only a `Gained` may come.
    pub(super) async fn read_pushed(&mut self) -> Result<(), SourceError> {
        let deadlines = Deadlines {
            idle: Some(self.stall),
            frame: self.stall,
        };
        match wire::expect_message(&mut self.reader, &mut self.buf, deadlines).await {
            Ok(PeerResponse::Gained { id, index }) => self.note_gain(id, index),
            Err(WireError::Timeout(_)) => Err(SourceError::Stalled(self.stall)),
            Err(e) => Err(e.into()),
            Ok(other) => Err(SourceError::Protocol(format!(
                "sent {other:?} when nothing was asked"
            ))),
        }
    }

    async fn raw(&mut self, out: &mut [u8]) -> Result<(), SourceError> {
        match wire::read_raw(&mut self.reader, out, self.stall).await {
            Err(WireError::Timeout(_)) => Err(SourceError::Stalled(self.stall)),
            other => Ok(other?),
        }
    }

    /// Fetches and verifies the hash list of `id` (its size comes with it and
    /// is authenticated by the id).
    pub async fn hash_list(&mut self, id: FileId) -> Result<ContentInfo, SourceError> {
        self.queue(&PeerRequest::HashList { id }).await?;
        self.flush().await?;
        match self.header().await? {
            PeerResponse::HashList { id: got, size, len } => {
                // Check the claimed length before allocating for it.
                if got != id || size > MAX_FILE_SIZE || len as u64 != chunk_count(size) * 32 {
                    return Err(SourceError::Protocol(format!(
                        "hash list header does not fit: size {size}, len {len}"
                    )));
                }
                let mut raw = vec![0u8; len as usize];
                self.raw(&mut raw).await?;
                ContentInfo::from_hash_list(id, size, &raw).map_err(|_| SourceError::BadData)
            }
            // Hash lists need no slot here, but a source may think otherwise.
            PeerResponse::Queued { .. } => Err(SourceError::Busy),
            other => Err(SourceError::Protocol(format!(
                "expected a hash list, got {other:?}"
            ))),
        }
    }

    /// Fetches chunk `index` of the file `info` describes and verifies it
    /// against its hash: the chunk's bytes (`info.chunk_len(index)` of
    /// them). Used where one chunk is wanted outside a download (the
    /// index's proof-of-possession check).
    ///
    /// # Errors
    /// [`SourceError::BadData`] when the bytes do not match the hash list,
    /// [`SourceError::NotFound`] / `FileChanged` / `Busy` as the source
    /// answered (a queued request counts as `Busy`), `Protocol` for an
    /// answer that does not fit, `Stalled` after the stall timeout.
    pub async fn chunk(&mut self, info: &ContentInfo, index: u32) -> Result<Vec<u8>, SourceError> {
        if index >= info.chunk_count() {
            return Err(SourceError::Protocol(format!(
                "chunk {index} asked of a file of {} chunks",
                info.chunk_count()
            )));
        }
        self.queue(&PeerRequest::Chunk { id: info.id, index })
            .await?;
        self.flush().await?;
        match self.header().await? {
            PeerResponse::Chunk { id, index: i, len }
                if id == info.id && i == index && len as usize == info.chunk_len(index) =>
            {
                let mut data = vec![0u8; len as usize];
                self.raw(&mut data).await?;
                if info.verify_chunk(index, &data) {
                    Ok(data)
                } else {
                    Err(SourceError::BadData)
                }
            }
            PeerResponse::Queued { .. } => Err(SourceError::Busy),
            other => Err(SourceError::Protocol(format!(
                "expected chunk {index}, got {other:?}"
            ))),
        }
    }

    /// Asks which chunks the peer holds: `None` means all of them.
    pub async fn have(
        &mut self,
        id: FileId,
        info: &ContentInfo,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        self.queue(&PeerRequest::Have { id }).await?;
        self.flush().await?;
        let answer = self.header().await?;
        check_have(answer, info)
    }

    /// Which chunks the peer holds (`None`: all of them), from a source
    /// that pushes availability: asked with `Subscribe`, so each chunk it
    /// gains from now on is announced ([`Self::take_gained`]). Falls back
    /// to [`Self::have`] for sources that do not push.
    pub async fn subscribe(
        &mut self,
        id: FileId,
        info: &ContentInfo,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        if !self.pushes {
            return self.have(id, info).await;
        }
        self.queue(&PeerRequest::Subscribe { id }).await?;
        self.flush().await?;
        let answer = self.header().await?;
        let have = check_have(answer, info)?;
        if have.is_some() {
            self.subscribed = Some((id, info.chunk_count()));
        }
        Ok(have)
    }
}

/// Checks a `Have` answer against the file: `None` means every chunk.
fn check_have(answer: PeerResponse, info: &ContentInfo) -> Result<Option<Vec<u8>>, SourceError> {
    {
        match answer {
            PeerResponse::Have {
                complete: true,
                size,
                ..
            } if size == info.size => Ok(None),
            PeerResponse::Have {
                complete: false,
                bitfield,
                size,
                ..
            } if size == info.size
                && bitfield.len() == (info.chunk_count() as usize).div_ceil(8) =>
            {
                Ok(Some(bitfield))
            }
            other => Err(SourceError::Protocol(format!(
                "unexpected availability answer {other:?}"
            ))),
        }
    }
}

/// Takes the chunks a subscribed source announced into its availability
/// (`have`, and the scheduler's counts); a source that now holds every
/// chunk counts as complete from here on.
fn apply_gains(
    shared: &Shared,
    index: usize,
    conn: &mut PeerConnection,
    have: &mut Option<Vec<u8>>,
) {
    let gained = conn.take_gained();
    let Some(bits) = have.as_mut() else {
        return;
    };
    if gained.is_empty() {
        return;
    }
    for chunk in gained {
        if let Some(byte) = bits.get_mut((chunk / 8) as usize) {
            *byte |= 1 << (chunk % 8);
        }
        shared.scheduler.gained(index, chunk);
    }
    let total = shared.info.chunk_count();
    if (0..total).all(|i| bit_is_set(bits, i)) {
        *have = None;
        shared.scheduler.set_have(index, None);
    }
}

/// Longest a banned source's connection is kept to deliver a bad-chunk report.
const REPORT_DEADLINE: Duration = Duration::from_secs(2);

/// Tells a source that chunk `chunk` it sent failed verification, so that a
/// peer whose file changed without its id being updated notices and
/// withdraws the stale id. Best effort, within [`REPORT_DEADLINE`]: the
/// chunks still in flight go back to the pool first, then the report is
/// sent behind them and the answers are drained (closing with answers
/// unread would reset the connection before the report is read).
async fn report_bad_chunk(
    shared: &Shared,
    mut conn: PeerConnection,
    id: FileId,
    chunk: u32,
    inflight: &mut VecDeque<Pending>,
) {
    let unanswered: Vec<u32> = inflight
        .drain(..)
        .filter_map(|p| match p {
            Pending::Chunk(c) => Some(c),
            Pending::Have => None,
        })
        .collect();
    shared.give_back(unanswered.len());
    shared.scheduler.release(unanswered);
    let deliver = async {
        conn.queue(&PeerRequest::BadChunk { id, index: chunk })
            .await?;
        conn.flush().await?;
        conn.writer
            .shutdown()
            .await
            .map_err(|e| SourceError::Wire(WireError::Io(e)))?;
        // Everything up to the source's close: the answers, then EOF.
        let mut sink = [0u8; 64 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut conn.reader, &mut sink)
                .await
                .map_err(|e| SourceError::Wire(WireError::Io(e)))?;
            if n == 0 {
                return Ok::<_, SourceError>(());
            }
        }
    };
    match tokio::time::timeout(REPORT_DEADLINE, deliver).await {
        Ok(Ok(())) => tracing::debug!(%id, chunk, "told the source about its bad chunk"),
        Ok(Err(e)) => {
            tracing::debug!(%id, chunk, error = %e, "could not tell the source about its bad chunk")
        }
        Err(_) => tracing::debug!(%id, chunk, "gave up telling the source about its bad chunk"),
    }
}

/// Takes back (`Cancel`) the newest chunk requests in flight beyond
/// `depth` that are not taken back yet; their `Cancelled` answers return
/// them to the pool.
async fn trim(
    conn: &mut PeerConnection,
    id: FileId,
    inflight: &VecDeque<Pending>,
    taken_back: &mut Vec<u32>,
    depth: usize,
) -> Result<(), SourceError> {
    let live: Vec<u32> = inflight
        .iter()
        .filter_map(|p| match *p {
            Pending::Chunk(c) if !taken_back.contains(&c) => Some(c),
            _ => None,
        })
        .collect();
    for &c in live.iter().skip(depth) {
        conn.queue(&PeerRequest::Cancel { id, index: c }).await?;
        taken_back.push(c);
    }
    tracing::debug!(
        taken_back = live.len().saturating_sub(depth),
        depth,
        "a swarm formed: shorter pipeline"
    );
    Ok(())
}

/// Waits for the next answer from a source that takes requests back; when
/// meanwhile a chunk in flight here is verified from another source (an
/// endgame duplicate won), asks this one to take it back (`Cancel`), so
/// its upload turn goes to a chunk somebody still needs. Returns once the
/// answer has begun to arrive.
async fn take_back_done(
    shared: &Shared,
    conn: &mut PeerConnection,
    id: FileId,
    inflight: &VecDeque<Pending>,
    taken_back: &mut Vec<u32>,
) -> Result<(), SourceError> {
    loop {
        // Registered before the look, so no completion is missed.
        let completed = shared.scheduler.completed.notified();
        let mut sent = false;
        for p in inflight {
            if let Pending::Chunk(c) = *p {
                if !taken_back.contains(&c) && shared.scheduler.is_done(c) {
                    tracing::trace!(chunk = c, "taking back a chunk verified elsewhere");
                    conn.queue(&PeerRequest::Cancel { id, index: c }).await?;
                    taken_back.push(c);
                    sent = true;
                }
            }
        }
        if sent {
            conn.flush().await?;
        }
        if taken_back.len() >= inflight.len() {
            // Everything here is taken back: only the answers are left.
            return Ok(());
        }
        tokio::select! {
            arrived = conn.push_arrived() => {
                arrived?;
                if !conn.pushed_frame_next() {
                    return Ok(());
                }
                // A `Gained` before the answer: noted, and back to waiting.
                conn.read_pushed().await?;
            }
            _ = completed => {}
        }
    }
}

/// A request on the wire whose answer has not been read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    Chunk(u32),
    /// A `Have` refresh queued between chunk requests (partial sources).
    Have,
}

/// Fetches chunks from one source until the download is finished, the
/// source fails, or it is banned. Chunks in flight when it stops go back
/// to the pool.
pub(super) async fn run(
    shared: Arc<Shared>,
    index: usize,
    addr: String,
) -> Result<(), SourceError> {
    let mut inflight: VecDeque<Pending> = VecDeque::new();
    let result = fetch_loop(&shared, index, &addr, &mut inflight).await;
    shared.scheduler.forget(index);
    let unanswered: Vec<u32> = inflight
        .drain(..)
        .filter_map(|p| match p {
            Pending::Chunk(c) => Some(c),
            Pending::Have => None,
        })
        .collect();
    shared.give_back(unanswered.len());
    shared.scheduler.release(unanswered);
    result
}

async fn fetch_loop(
    shared: &Shared,
    index: usize,
    addr: &str,
    inflight: &mut VecDeque<Pending>,
) -> Result<(), SourceError> {
    let spare = shared.take_spare(addr);
    let connected = async {
        let mut conn = match spare {
            Some(conn) => conn,
            None => {
                PeerConnection::connect_via(
                    addr,
                    shared.config.connector.as_deref(),
                    shared.config.connect_timeout,
                    shared.config.stall_timeout,
                    shared.config.requester(),
                )
                .await?
            }
        };
        // Told of each new chunk by a source that pushes; asked now and
        // then otherwise (older peers).
        let have = conn.subscribe(shared.info.id, &shared.info).await?;
        Ok::<_, SourceError>((conn, have))
    }
    .await;
    // Tell the coordinator this source is ready (or dead), then wait for the start.
    shared.ready.fetch_add(1, Ordering::AcqRel);
    shared.ready_changed.notify_one();
    let (mut conn, mut have) = connected?;
    shared.scheduler.set_have(index, have.as_deref());
    shared.started.cancelled().await;
    let states = &shared.progress.sources;
    states.set(index, addr, SourceState::Active, None);
    // Our place in the source's upload queue while its slots are all taken:
    // no chunk is asked for, the source is waited on (`Wait`) meanwhile.
    let mut queued: Option<u32> = None;

    let id = shared.info.id;
    let refresh = shared.config.have_refresh;
    let mut last_have = tokio::time::Instant::now();
    // Chunks in flight here that another source delivered first and that
    // this one was asked to take back (`Cancel`).
    let mut taken_back: Vec<u32> = Vec::new();
    loop {
        if shared.scheduler.is_banned(index) {
            if let Some(chunk) = shared.scheduler.bad_chunk(index) {
                report_bad_chunk(shared, conn, id, chunk, inflight).await;
            }
            return Err(SourceError::BadData);
        }
        apply_gains(shared, index, &mut conn, &mut have);
        let depth = shared.depth();
        let mut chunks_inflight = inflight.iter().filter(|p| **p != Pending::Have).count();
        if conn.cancels() && chunks_inflight > depth + taken_back.len() {
            // The pipeline got shorter (a swarm formed): the newest
            // requests beyond it go back to the pool once taken back.
            trim(&mut conn, id, inflight, &mut taken_back, depth).await?;
        }
        // A partial source gains chunks as it downloads: ask again now and
        // then, in the pipeline, without stopping the chunk requests
        // (unless it tells us itself).
        if have.is_some()
            && !conn.subscribed()
            && chunks_inflight > 0
            && !inflight.contains(&Pending::Have)
            && last_have.elapsed() >= refresh
        {
            conn.queue(&PeerRequest::Have { id }).await?;
            inflight.push_back(Pending::Have);
            last_have = tokio::time::Instant::now();
        }
        // Top the pipeline up once half of it has been answered, so that
        // requests go out (and wake the uploader) in batches, not one by one.
        let top_up = chunks_inflight <= depth / 2 && queued.is_none();
        while top_up && chunks_inflight < depth {
            // A complete source (a seed, a finished peer) is never left
            // idle for the budget: one request may go beyond it.
            let beyond_budget_ok = have.is_none() && chunks_inflight == 0;
            if !shared.take_request() {
                if !beyond_budget_ok {
                    break;
                }
                shared.in_flight.fetch_add(1, Ordering::AcqRel);
            }
            let available = |i: u32| have.as_ref().is_none_or(|b| bit_is_set(b, i));
            match shared
                .scheduler
                .next(index, available, chunks_inflight == 0)
            {
                Pick::Chunk(c) => {
                    tracing::trace!(source = index, chunk = c, "requesting");
                    inflight.push_back(Pending::Chunk(c));
                    chunks_inflight += 1;
                    conn.queue(&PeerRequest::Chunk { id, index: c }).await?;
                }
                Pick::Wait | Pick::Finished => {
                    shared.untake_request();
                    break;
                }
            }
        }
        if inflight.is_empty() {
            if shared.scheduler.is_finished() {
                return Ok(());
            }
            if let Some(position) = queued {
                // Every request was answered: wait for our turn (the other
                // sources go on meanwhile).
                conn.queue(&PeerRequest::Wait).await?;
                conn.flush().await?;
                match conn.header_within(QUEUE_ANSWER_DEADLINE).await? {
                    PeerResponse::Queued { position: p } => {
                        if p != position {
                            tracing::debug!(source = %addr, position = p, "moved up in the upload queue");
                        }
                        queued = Some(p);
                        states.set(index, addr, SourceState::Queued, Some(p));
                    }
                    PeerResponse::SlotGranted => {
                        tracing::debug!(source = %addr, "an upload slot is ours");
                        queued = None;
                        states.set(index, addr, SourceState::Active, None);
                    }
                    other => {
                        return Err(SourceError::Protocol(format!(
                            "expected an upload queue answer, got {other:?}"
                        )))
                    }
                }
                continue;
            }
            // Nothing for us now: wait for released chunks (or, for a partial
            // source, for it to get more), then look again.
            let waiting = shared.scheduler.changed.notified();
            let freed = shared.in_flight_freed.notified();
            let subscribed = conn.subscribed();
            tokio::select! {
                _ = waiting => {}
                _ = freed => {}
                arrived = conn.push_arrived(), if subscribed => {
                    arrived?;
                    conn.read_pushed().await?;
                }
                // From the last look, not from now: other sources' chunks
                // wake this wait far more often than `refresh`, and a
                // fresh sleep each time would never end.
                _ = tokio::time::sleep_until(last_have + refresh) => {
                    if have.is_some() && !subscribed {
                        have = conn.have(id, &shared.info).await?;
                        shared.scheduler.set_have(index, have.as_deref());
                    }
                    last_have = tokio::time::Instant::now();
                }
            }
            continue;
        }
        conn.flush().await?;
        if conn.cancels() {
            take_back_done(shared, &mut conn, id, inflight, &mut taken_back).await?;
        }
        let expected = match *inflight.front().expect("pipeline is not empty") {
            Pending::Chunk(c) => c,
            Pending::Have => {
                let answer = conn.header().await?;
                have = check_have(answer, &shared.info)?;
                shared.scheduler.set_have(index, have.as_deref());
                inflight.pop_front();
                continue;
            }
        };
        match conn.header().await? {
            PeerResponse::Chunk {
                id: got,
                index: i,
                len,
            } if got == id && i == expected => {
                if len as usize != shared.info.chunk_len(i) {
                    return Err(SourceError::Protocol(format!(
                        "chunk {i} announced with {len} bytes"
                    )));
                }
                if let Some(limit) = &shared.config.download_limit {
                    limit.acquire(len as u64).await;
                }
                let mut data = shared.buffers.take();
                let filled = conn.raw(data.fill(len as usize)).await;
                if let Err(e) = filled {
                    shared.buffers.give(data);
                    return Err(e);
                }
                inflight.pop_front();
                taken_back.retain(|c| *c != i);
                shared.give_back(1);
                shared.scheduler.received(i);
                shared
                    .bytes_received
                    .fetch_add(len as u64, Ordering::Relaxed);
                states.received(index, addr, len as u64);
                // The verifier owns the chunk from here (and releases it if it is bad).
                if shared
                    .verify
                    .send(VerifyJob {
                        source: index,
                        index: i,
                        data,
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            PeerResponse::Cancelled { id: got, index: i }
                if got == id && i == expected && taken_back.contains(&i) =>
            {
                // Taken back before it was sent: its turn went to others.
                inflight.pop_front();
                taken_back.retain(|c| *c != i);
                shared.give_back(1);
                // Verified elsewhere (only the duplicate's bookkeeping
                // changes), or trimmed from the pipeline (missing again).
                shared.scheduler.release([i]);
            }
            PeerResponse::Queued { position } if conn.queue_aware() => {
                // Not served: the chunk goes back to the pool for others.
                inflight.pop_front();
                shared.give_back(1);
                shared.scheduler.release([expected]);
                if queued.is_none() {
                    tracing::debug!(source = %addr, position, "every upload slot there is taken; queued");
                }
                queued = Some(position);
                states.set(index, addr, SourceState::Queued, Some(position));
            }
            other => {
                return Err(SourceError::Protocol(format!(
                    "expected chunk {expected}, got {other:?}"
                )))
            }
        }
    }
}
