//! The client-server store: files held and served by the index server itself.
//!
//! With `--store DIR` the index server is also the classic always-on file
//! server: it shares DIR through the transfer engine (the same library,
//! hash cache and chunk serving as a peer), registers it in the index as a
//! permanent source, and accepts uploads (`peer put`) on the same port as
//! the index, told apart by the hello's protocol byte.
//!
//! Uploads are verified chunk by chunk against the hash list sent first
//! (itself checked against the id) and written to `DIR/.<id>.part`, so an
//! interrupted upload resumes; the file appears in DIR only when complete,
//! by a link that never replaces an existing file (a name already used by
//! other content gets ` (1)`, ` (2)`, …). Content the store already holds is
//! not uploaded again.
//!
//! Space: a quota caps the bytes stored plus every pending upload (in
//! progress, or abandoned with its part file still on disk); free disk
//! space is checked when an upload begins, and the part file is reserved
//! at its full size when the hash list arrives. An abandoned part file is
//! kept for a resume until it expires ([`StoreConfig::part_expiry`]), and
//! one client may have at most [`StoreConfig::max_pending_per_client`]
//! uploads pending, so disconnecting after `Begin` cannot fill the disk.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::id::{chunk_count, ContentInfo, FileId};
use common::index_proto::{IndexResponse, SharedFile};
use common::limits::{FRAME_TIMEOUT, MAX_FILE_SIZE};
use common::names::{normalize, validate_name};
use common::store_proto::{StoreErrorCode, StoreRequest, StoreResponse};
use common::wire::{self, Deadlines, WireError};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use transfer::chunk_server::UploadStats;
use transfer::download::output;
use transfer::library::{Library, SharedEntry};
use transfer::net::Conn;
use transfer::refused::Refusals;
use transfer::scan::{self, HashCache};

use crate::state::{Index, SessionId};

/// The address the store is registered under when no `--store-advertise`
/// is given: every answer replaces it with the server's address as that
/// client reached it. No peer can register it (not a valid `HOST:PORT`).
pub const STORE_SELF_ADDR: &str = "(this server)";

/// The store's nickname in the index (browse it with `peer browse store`).
pub const STORE_NICK: &str = "store";

/// How long an upload connection may sit without a message.
const UPLOAD_IDLE: Duration = Duration::from_secs(120);

/// Downloads the store sends chunks to at once (upload slots, held only
/// while a chunk is sent; further requests wait their turn).
pub const STORE_UPLOAD_SLOTS: usize = 64;

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Folder holding the stored files.
    pub dir: PathBuf,
    /// Most bytes stored (plus uploads in progress).
    pub quota: u64,
    /// `HOST:PORT` to list the store under instead of the address each
    /// client reached the server at.
    pub advertise: Option<String>,
    /// How often DIR is rescanned for files added or removed by hand.
    pub rescan_interval: Duration,
    /// How long a file put in DIR by hand must stay unchanged before it is
    /// hashed and listed ([`transfer::scan::DEFAULT_SETTLE`]).
    pub settle: Duration,
    /// Cap on the bytes per second of all downloads served from the store
    /// (the server's upload rate, u_s in the lab's formulas).
    pub max_upload_rate: Option<u64>,
    /// How long the part file of an abandoned upload is kept for a resume
    /// (counted against the quota meanwhile) before it is deleted.
    pub part_expiry: Duration,
    /// Most uploads one client (source address; IPv6 by /64) may have
    /// pending at once, in progress or abandoned and not yet expired.
    pub max_pending_per_client: usize,
}

/// Default of [`StoreConfig::quota`] (`--store-quota`).
pub const DEFAULT_QUOTA: u64 = 10 << 30;

/// Default of [`StoreConfig::part_expiry`]: long enough to resume after a
/// dropped connection or a laptop's nap, short enough that abandoned parts
/// do not hold the quota for long.
pub const DEFAULT_PART_EXPIRY: Duration = Duration::from_secs(3600);

/// Default of [`StoreConfig::max_pending_per_client`]: `peer put` uploads
/// one file at a time, so a few interrupted ones fit.
pub const DEFAULT_MAX_PENDING_PER_CLIENT: usize = 4;

impl StoreConfig {
    pub fn new(dir: PathBuf) -> Self {
        StoreConfig {
            dir,
            quota: DEFAULT_QUOTA,
            advertise: None,
            rescan_interval: Duration::from_secs(10),
            settle: scan::DEFAULT_SETTLE,
            max_upload_rate: None,
            part_expiry: DEFAULT_PART_EXPIRY,
            max_pending_per_client: DEFAULT_MAX_PENDING_PER_CLIENT,
        }
    }
}

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use store folder {path}: {reason} (create it, or pick another with --store)")]
    Dir {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the store has registered at the index, and its hash cache: changed
/// together under one lock, so two refreshes never interleave.
struct Registry {
    cache: HashCache,
    registered: HashMap<FileId, SharedFile>,
    /// Files in DIR the index refuses (a bad name put there by hand), warned about once.
    refusals: Refusals,
}

/// An upload that has begun and not been published: its bytes count
/// against the quota until it is published or its part file expires.
struct Pending {
    size: u64,
    /// The client that began it (source key); `None` for a part file
    /// found when the store opened.
    client: Option<IpAddr>,
    /// A connection is uploading it now.
    active: bool,
    /// When an abandoned part file is deleted (set when its connection ends).
    expires: Instant,
}

/// The server's store.
pub struct Store {
    library: Library,
    index: Index,
    session: SessionId,
    quota: u64,
    part_expiry: Duration,
    max_pending_per_client: usize,
    registry: Mutex<Registry>,
    /// Pending uploads (in progress or abandoned): id → what it holds.
    pending: Mutex<HashMap<FileId, Pending>>,
    /// Chunks and connections served to downloaders.
    pub uploads: Arc<UploadStats>,
    /// Chunks received and verified from `peer put`.
    pub chunks_received: AtomicU64,
    /// Shared by every download served from the store, when capped.
    upload_limit: Option<Arc<transfer::rate::RateLimiter>>,
    /// Upload slots and deadlines of download connections.
    rules: transfer::chunk_server::SessionRules,
}

impl Store {
    /// Opens (creating it if needed) and scans DIR, and registers it at `index`.
    pub async fn open(config: &StoreConfig, index: Index) -> Result<Arc<Store>, StoreError> {
        let dir_error = |reason| StoreError::Dir {
            path: config.dir.clone(),
            reason,
        };
        std::fs::create_dir_all(&config.dir).map_err(dir_error)?;
        let root = std::fs::canonicalize(&config.dir).map_err(dir_error)?;
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| STORE_SELF_ADDR.to_string());
        let session = index
            .login_permanent(addr, Some(STORE_NICK.into()), Instant::now())
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let cache = {
            let (root, settle) = (root.clone(), config.settle);
            tokio::task::spawn_blocking(move || {
                HashCache::load(Some(&root.join(".p2pshare")), &root).with_settle(settle)
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
        };
        let store = Arc::new(Store {
            library: Library::new(root.clone()),
            index,
            session,
            quota: config.quota,
            part_expiry: config.part_expiry,
            max_pending_per_client: config.max_pending_per_client.max(1),
            registry: Mutex::new(Registry {
                cache,
                registered: HashMap::new(),
                refusals: Refusals::default(),
            }),
            pending: Mutex::new(found_parts(&root, config.part_expiry)),
            uploads: Arc::new(UploadStats::default()),
            chunks_received: AtomicU64::new(0),
            upload_limit: config
                .max_upload_rate
                .map(|r| Arc::new(transfer::rate::RateLimiter::new(r))),
            rules: transfer::chunk_server::SessionRules::new(STORE_UPLOAD_SLOTS),
        });
        store.refresh().await;
        info!(folder = %root.display(), files = store.library.shared().len(), quota = config.quota, "store open");
        Ok(store)
    }

    /// The files the store serves.
    pub fn library(&self) -> &Library {
        &self.library
    }

    /// Bytes held in the store's files.
    pub fn stored_bytes(&self) -> u64 {
        self.library.shared().values().map(|e| e.size).sum()
    }

    /// Rescans DIR and brings the index up to date (on a blocking thread).
    pub async fn refresh(self: &Arc<Self>) {
        let store = self.clone();
        let done = tokio::task::spawn_blocking(move || store.refresh_blocking(None)).await;
        if let Err(e) = done {
            warn!(error = %e, "store rescan failed");
        }
    }

    fn refresh_blocking(&self, published: Option<Arc<SharedEntry>>) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = published {
            registry.cache.remember(entry);
        }
        scan::check_reports(&self.library, &mut registry.cache);
        let entries = scan::scan(self.library.root(), &mut registry.cache);
        self.library.set_shared(entries);
        let mut listing = self.library.listing();
        registry.refusals.filter(&mut listing);
        let gone: Vec<FileId> = registry
            .registered
            .keys()
            .filter(|id| !listing.contains_key(id))
            .copied()
            .collect();
        let added: Vec<SharedFile> = listing
            .values()
            .filter(|f| registry.registered.get(&f.id) != Some(f))
            .cloned()
            .collect();
        let now = Instant::now();
        for batch in gone.chunks(common::limits::MAX_FILES_PER_BATCH) {
            let _ = self.index.remove_files(self.session, batch, now);
        }
        for batch in added.chunks(common::limits::MAX_FILES_PER_BATCH) {
            if let Err(e) = self.index.add_files(self.session, batch.to_vec(), now) {
                warn!(error = %e, "store files not registered");
            }
        }
        self.index.make_permanent(self.session, now);
        registry.registered = listing;
    }

    /// Rescans every `interval` until `shutdown` (files added or removed by hand).
    pub async fn rescan_loop(
        self: Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            // Sooner when a file waits to settle; backoff after running out of descriptors.
            let wait = self
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cache
                .next_scan_in(interval);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.library.rescan_requested() => {}
            }
            self.expire_parts(Instant::now());
            self.refresh().await;
        }
    }

    /// Deletes the part files of abandoned uploads whose time has run out.
    pub fn expire_parts(&self, now: Instant) {
        let expired: Vec<FileId> = {
            let mut pending = self.pending();
            let ids: Vec<FileId> = pending
                .iter()
                .filter(|(_, p)| !p.active && p.expires <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                pending.remove(id);
            }
            ids
        };
        for id in expired {
            let part = output::part_path(self.library.root(), &id);
            match std::fs::remove_file(&part) {
                Ok(()) => info!(%id, "deleted the part file of an abandoned upload"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(error = %e, part = %part.display(), "cannot delete an expired part file")
                }
            }
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes counted against the quota: stored files and pending uploads.
    pub fn used_bytes(&self) -> u64 {
        let pending: u64 = self.pending().values().map(|p| p.size).sum();
        self.stored_bytes().saturating_add(pending)
    }

    /// Serves a downloader (peer protocol) on a connection whose hello was answered.
    pub async fn serve_download(&self, stream: Conn) -> Result<(), WireError> {
        self.uploads.connections.fetch_add(1, Ordering::Relaxed);
        let remote = stream.get_ref().0.peer_addr()?;
        // The store takes no direct messages: it is a server, not a person.
        transfer::chunk_server::serve_peer_session(
            stream,
            remote,
            &self.library,
            &self.uploads,
            None,
            self.upload_limit.as_deref(),
            &self.rules,
        )
        .await
    }

    /// Claims `id` for one upload by `client` and counts `size` bytes
    /// against the quota, or says why not: another upload of it is in
    /// progress, the client has too many pending, the quota or the disk is
    /// full. An abandoned upload of the same id is taken over (resumed),
    /// already counted.
    fn reserve(&self, id: FileId, size: u64, client: IpAddr) -> Result<(), StoreResponse> {
        let stored = self.stored_bytes();
        let mut pending = self.pending();
        if let Some(p) = pending.get_mut(&id) {
            if p.active {
                return Err(refusal(
                    StoreErrorCode::Busy,
                    "another upload of this file is in progress; try again when it has finished",
                ));
            }
            p.active = true;
            p.client = Some(client);
            return Ok(());
        }
        let mine = pending
            .values()
            .filter(|p| p.client == Some(client))
            .count();
        if mine >= self.max_pending_per_client {
            return Err(refusal(
                StoreErrorCode::TooManyPending,
                format!(
                    "this client already has {mine} unfinished uploads here, the most the server allows; resume one of them (run the same put again) or wait until they expire ({:?} after they stopped)",
                    self.part_expiry
                ),
            ));
        }
        let used = stored.saturating_add(pending.values().map(|p| p.size).sum());
        if used.saturating_add(size) > self.quota {
            return Err(refusal(
                StoreErrorCode::QuotaExceeded,
                format!(
                    "the store's quota is {} bytes and {} are used or being uploaded; a {}-byte file does not fit (ask the operator to raise --store-quota or remove files)",
                    self.quota, used, size
                ),
            ));
        }
        if let Some(free) = free_bytes(self.library.root()) {
            if size > free {
                return Err(out_of_space(size, free));
            }
        }
        pending.insert(
            id,
            Pending {
                size,
                client: Some(client),
                active: true,
                expires: Instant::now() + self.part_expiry,
            },
        );
        Ok(())
    }

    /// The connection uploading `id` ended or moved on: a part file on disk
    /// stays counted until it expires; with none, nothing is pending.
    fn release(&self, id: &FileId) {
        let has_part = output::part_path(self.library.root(), id).exists();
        let mut pending = self.pending();
        if !has_part {
            pending.remove(id);
        } else if let Some(p) = pending.get_mut(id) {
            p.active = false;
            p.expires = Instant::now() + self.part_expiry;
        }
    }

    /// The upload of `id` was published: its part file is gone.
    fn published(&self, id: &FileId) {
        self.pending().remove(id);
    }

    /// Serves one uploader (`peer put`) on a connection whose hello was answered.
    pub async fn serve_upload(self: &Arc<Self>, stream: Conn) -> Result<(), WireError> {
        let client = crate::state::source_key(stream.get_ref().0.peer_addr()?.ip());
        let (r, w) = stream.into_split();
        let mut reader = BufReader::with_capacity(256 * 1024, r);
        let mut writer = BufWriter::new(w);
        let mut upload: Option<Upload> = None;
        let result = self
            .upload_loop(&mut reader, &mut writer, &mut upload, client)
            .await;
        if let Some(u) = upload {
            self.release(&u.id);
        }
        let _ = writer.flush().await;
        result
    }

    async fn upload_loop(
        self: &Arc<Self>,
        reader: &mut BufReader<common::secure::SecureRead<tokio::net::tcp::OwnedReadHalf>>,
        writer: &mut BufWriter<common::secure::SecureWrite<tokio::net::tcp::OwnedWriteHalf>>,
        upload: &mut Option<Upload>,
        client: IpAddr,
    ) -> Result<(), WireError> {
        let mut frame = Vec::new();
        // A connection that only said hello keeps its place briefly.
        let mut idle = common::limits::FIRST_REQUEST_TIMEOUT;
        loop {
            let Some(request) = wire::read_message::<_, StoreRequest>(
                reader,
                &mut frame,
                Deadlines::with_idle(idle),
            )
            .await?
            else {
                return Ok(());
            };
            idle = UPLOAD_IDLE;
            match request {
                StoreRequest::Begin { id, name, size } => {
                    if let Some(old) = upload.take() {
                        self.release(&old.id);
                    }
                    let answer = self.begin(id, &name, size, client);
                    if matches!(answer, StoreResponse::SendHashList) {
                        *upload = Some(Upload {
                            id,
                            name,
                            size,
                            state: None,
                        });
                    }
                    wire::send_message(writer, &answer).await?;
                }
                StoreRequest::HashList { len } => {
                    let Some(u) = upload.as_mut().filter(|u| u.state.is_none()) else {
                        return fail(writer, StoreErrorCode::BadRequest, "HashList without Begin")
                            .await;
                    };
                    // Checked against the size before anything is allocated.
                    if u64::from(len) != chunk_count(u.size) * 32 {
                        return fail(
                            writer,
                            StoreErrorCode::BadRequest,
                            "hash list length does not match the size",
                        )
                        .await;
                    }
                    let mut raw = vec![0u8; len as usize];
                    wire::read_raw(reader, &mut raw, FRAME_TIMEOUT * 6).await?;
                    let info = match ContentInfo::from_hash_list(u.id, u.size, &raw) {
                        Ok(info) => Arc::new(info),
                        Err(e) => {
                            return fail(writer, StoreErrorCode::BadRequest, e.to_string()).await
                        }
                    };
                    let part = output::part_path(self.library.root(), &u.id);
                    let opened = {
                        let (part, info) = (part.clone(), info.clone());
                        tokio::task::spawn_blocking(move || {
                            let existed = part.exists();
                            let opened = output::open_part(&part, &info);
                            if opened.is_err() && !existed {
                                // Refused: leave no empty part file behind.
                                let _ = std::fs::remove_file(&part);
                            }
                            opened
                        })
                        .await
                    };
                    let (file, have) = match opened {
                        Ok(Ok(pair)) => pair,
                        Ok(Err(e)) => {
                            warn!(error = %e, part = %part.display(), "cannot open the upload's part file");
                            let (code, message) = self.write_refusal(&e, u.size);
                            return fail(writer, code, message).await;
                        }
                        Err(e) => {
                            return fail(writer, StoreErrorCode::Internal, e.to_string()).await
                        }
                    };
                    let mut bitfield = vec![0u8; have.len().div_ceil(8)];
                    for (i, h) in have.iter().enumerate() {
                        if *h {
                            bitfield[i / 8] |= 1 << (i % 8);
                        }
                    }
                    debug!(id = %u.id, resumed = have.iter().filter(|h| **h).count(), "upload ready");
                    u.state = Some(UploadState {
                        info,
                        part,
                        file: Arc::new(file),
                        have,
                    });
                    wire::send_message(writer, &StoreResponse::Ready { have: bitfield }).await?;
                }
                StoreRequest::Chunk { index, len } => {
                    let Some(state) = upload.as_mut().and_then(|u| u.state.as_mut()) else {
                        return fail(writer, StoreErrorCode::BadRequest, "Chunk before HashList")
                            .await;
                    };
                    if index >= state.info.chunk_count()
                        || len as usize != state.info.chunk_len(index)
                    {
                        return fail(writer, StoreErrorCode::BadRequest, "no such chunk").await;
                    }
                    let mut data = vec![0u8; len as usize];
                    wire::read_raw(reader, &mut data, FRAME_TIMEOUT * 3).await?;
                    let (info, file) = (state.info.clone(), state.file.clone());
                    let written = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        if !info.verify_chunk(index, &data) {
                            return Ok(false);
                        }
                        file.write_all_at(&data, index as u64 * common::CHUNK_SIZE as u64)?;
                        Ok::<_, std::io::Error>(true)
                    })
                    .await;
                    match written {
                        Ok(Ok(true)) => {
                            state.have[index as usize] = true;
                            self.chunks_received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(false)) => {
                            return fail(
                                writer,
                                StoreErrorCode::BadChunk,
                                format!("chunk {index} does not match its hash (did the file change while uploading?)"),
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, "cannot write an uploaded chunk");
                            let missing = state.have.iter().filter(|h| !**h).count() as u64;
                            let (code, message) = self.write_refusal(&e, missing * common::CHUNK_SIZE as u64);
                            return fail(writer, code, message).await;
                        }
                        Err(e) => return fail(writer, StoreErrorCode::Internal, e.to_string()).await,
                    }
                }
                StoreRequest::Finish => {
                    let Some(u) = upload.take() else {
                        return fail(writer, StoreErrorCode::BadRequest, "Finish without Begin")
                            .await;
                    };
                    let answer = self.finish(&u).await;
                    if matches!(answer, StoreResponse::Stored { .. }) {
                        self.published(&u.id);
                    } else {
                        self.release(&u.id);
                    }
                    if matches!(
                        answer,
                        StoreResponse::Error {
                            code: StoreErrorCode::Incomplete,
                            ..
                        }
                    ) {
                        // Still resumable: the verified chunks stay in the part file.
                        wire::send_message(writer, &answer).await?;
                        continue;
                    }
                    wire::send_message(writer, &answer).await?;
                }
            }
        }
    }

    /// Decides on a `Begin`: already here, refused, or go ahead.
    fn begin(&self, id: FileId, name: &str, size: u64, client: IpAddr) -> StoreResponse {
        if let Err(e) = validate_name(name) {
            return refusal(StoreErrorCode::BadRequest, e.to_string());
        }
        if size > MAX_FILE_SIZE {
            return refusal(
                StoreErrorCode::BadRequest,
                "file too large for the protocol",
            );
        }
        if let Some(e) = self.library.shared().get(&id) {
            return StoreResponse::AlreadyStored {
                name: e.rel.clone(),
            };
        }
        match self.reserve(id, size, client) {
            Ok(()) => StoreResponse::SendHashList,
            Err(answer) => answer,
        }
    }

    async fn finish(self: &Arc<Self>, u: &Upload) -> StoreResponse {
        let Some(state) = &u.state else {
            return refusal(StoreErrorCode::BadRequest, "Finish before HashList");
        };
        let missing = state.have.iter().filter(|h| !**h).count();
        if missing > 0 {
            return refusal(
                StoreErrorCode::Incomplete,
                format!(
                    "{missing} of {} chunks still missing; send them and Finish again",
                    state.have.len()
                ),
            );
        }
        let name = output::sanitize_name(&u.name, &u.id);
        // A name that equals another stored file's after normalization
        // (`CAFÉ.txt` beside `café.txt`) would make `peer get NAME`
        // ambiguous: it gets a ` (1)` suffix as an identical name would.
        let stored = self.library.shared();
        let name = unclashed_name(&name, |candidate| {
            let key = normalize(candidate);
            stored
                .values()
                .any(|e| e.info.id != u.id && normalize(&e.rel) == key)
        });
        let (part, file, root, info) = (
            state.part.clone(),
            state.file.clone(),
            self.library.root().to_path_buf(),
            state.info.clone(),
        );
        let store = self.clone();
        let published = tokio::task::spawn_blocking(move || {
            let path = output::publish(&part, &file, &root, &name)?;
            let meta = std::fs::metadata(&path)?;
            let rel = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let entry = Arc::new(SharedEntry::new(rel.clone(), path, &meta, info));
            // Known hashes go straight into the cache: the scan does not reread it.
            store.refresh_blocking(Some(entry));
            Ok::<_, std::io::Error>(rel)
        })
        .await;
        match published {
            Ok(Ok(rel)) => {
                info!(id = %u.id, name = %rel, size = u.size, "upload stored");
                StoreResponse::Stored { name: rel }
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot publish an upload");
                if is_out_of_space(&e) {
                    out_of_space(u.size, free_bytes(self.library.root()).unwrap_or(0))
                } else {
                    refusal(StoreErrorCode::Internal, format!("cannot publish: {e}"))
                }
            }
            Err(e) => refusal(StoreErrorCode::Internal, e.to_string()),
        }
    }
}

impl Store {
    /// The answer to a failed write of an upload needing `needed` more
    /// bytes: out of space (with figures) or an internal error.
    fn write_refusal(&self, e: &std::io::Error, needed: u64) -> (StoreErrorCode, String) {
        if is_out_of_space(e) {
            let free = free_bytes(self.library.root()).unwrap_or(0);
            match out_of_space(needed, free) {
                StoreResponse::Error { code, message } => (code, message),
                _ => unreachable!("out_of_space is an error"),
            }
        } else {
            (
                StoreErrorCode::Internal,
                format!("the store cannot write the file: {e}"),
            )
        }
    }
}

/// Whether an I/O error means the disk (or the user's disk quota) is full.
fn is_out_of_space(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.kind() == std::io::ErrorKind::StorageFull
        || [Errno::NOSPC, Errno::DQUOT]
            .iter()
            .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// Bytes an unprivileged process may still write on `dir`'s file system.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn out_of_space(needed: u64, free: u64) -> StoreResponse {
    refusal(
        StoreErrorCode::OutOfSpace,
        format!(
            "the server is out of space ({needed} bytes needed, {free} free); ask the operator to free space on the store's disk"
        ),
    )
}

/// Part files of uploads left from an earlier run (`DIR/.<id>.part`),
/// pending and counted from the start, each expiring `expiry` after it was
/// last written.
fn found_parts(root: &Path, expiry: Duration) -> HashMap<FileId, Pending> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return found;
    };
    let now = Instant::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(hex) = name
            .to_str()
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(".part"))
        else {
            continue;
        };
        let (Ok(id), Ok(meta)) = (hex.parse::<FileId>(), entry.metadata()) else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        found.insert(
            id,
            Pending {
                size: meta.len(),
                client: None,
                active: false,
                expires: now + expiry.saturating_sub(age),
            },
        );
    }
    found
}

/// `name`, or the first of `stem (1).ext`, `stem (2).ext`, … that `taken`
/// does not refuse (the naming of `output::publish`).
fn unclashed_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(name) {
        return name.to_string();
    }
    (1..1000)
        .map(|n| common::names::numbered_name(name, n))
        .find(|c| !taken(c))
        .unwrap_or_else(|| name.to_string())
}

/// One upload on a connection.
struct Upload {
    id: FileId,
    name: String,
    size: u64,
    state: Option<UploadState>,
}

/// An upload whose hash list has arrived.
struct UploadState {
    info: Arc<ContentInfo>,
    part: PathBuf,
    file: Arc<File>,
    have: Vec<bool>,
}

fn refusal(code: StoreErrorCode, message: impl Into<String>) -> StoreResponse {
    StoreResponse::Error {
        code,
        message: message.into(),
    }
}

/// Answers an error and ends the connection (the stream cannot be resynchronised).
async fn fail(
    writer: &mut BufWriter<common::secure::SecureWrite<tokio::net::tcp::OwnedWriteHalf>>,
    code: StoreErrorCode,
    message: impl Into<String>,
) -> Result<(), WireError> {
    let message = message.into();
    wire::send_message(writer, &refusal(code, message.clone())).await?;
    Err(WireError::Unexpected(message))
}

/// Replaces the store's placeholder address with `local` (the address this
/// client reached the server at) in an answer.
pub fn localize(response: IndexResponse, local: &str) -> IndexResponse {
    match response {
        IndexResponse::Sources {
            id,
            name,
            size,
            mut sources,
        } => {
            for s in &mut sources {
                if s.addr == STORE_SELF_ADDR {
                    s.addr = local.to_string();
                }
            }
            IndexResponse::Sources {
                id,
                name,
                size,
                sources,
            }
        }
        IndexResponse::Peers { mut peers, next } => {
            for p in &mut peers {
                if p.addr == STORE_SELF_ADDR {
                    p.addr = local.to_string();
                }
            }
            IndexResponse::Peers { peers, next }
        }
        other => other,
    }
}
