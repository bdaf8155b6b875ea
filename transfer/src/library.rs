//! What this peer can serve: complete shared files and partial downloads.
//!
//! The chunk server only ever looks files up here by id; a path never comes
//! off the wire. Complete files come from scanning the shared folder
//! ([`crate::scan`]); partial files are registered by the download engine so
//! that a peer holding part of a file serves that part.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::id::{ContentInfo, FileId};
use common::index_proto::SharedFile;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

/// What tells, without reading a file, whether it may have changed since it
/// was hashed: size, modification time, and the change time and inode that
/// no user can set back (`touch -d` restores an mtime, never a ctime), so
/// an edit in place with its old mtime restored is still noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Status change time, ns since the epoch (set by the kernel on every
    /// write, rename, chmod or link change).
    pub ctime_ns: i128,
    pub dev: u64,
    pub ino: u64,
}

impl FileStamp {
    /// The stamp of a file's metadata (follow symlinks before calling).
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One complete shared file.
#[derive(Debug)]
pub struct SharedEntry {
    /// Path relative to the shared folder, `/`-separated (the name others see).
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    /// The file's state on disk when it was hashed.
    pub stamp: FileStamp,
    pub info: Arc<ContentInfo>,
}

impl SharedEntry {
    /// An entry for the file at `path` (shared as `rel`) in the state `meta`
    /// describes, with hashes already known.
    pub fn new(
        rel: String,
        path: PathBuf,
        meta: &std::fs::Metadata,
        info: Arc<ContentInfo>,
    ) -> Self {
        SharedEntry {
            rel,
            path,
            size: meta.len(),
            stamp: FileStamp::of(meta),
            info,
        }
    }
}

/// Least time between two checks of one file after downloaders reported a
/// bad chunk from it, so that a hostile client cannot keep us reading.
pub const BAD_CHUNK_REPORT_COOLDOWN: Duration = Duration::from_secs(30);
/// Most bad-chunk reports waiting to be checked at once (more are ignored).
pub const MAX_QUEUED_REPORTS: usize = 64;
/// Most files remembered as recently reported (more reports are ignored
/// until the cooldown frees some): bounds the memory and time a flood of
/// reports about many ids can cost.
pub const MAX_REPORTED_IDS: usize = 4096;

/// Bad-chunk reports from downloaders, waiting for the scanner to check them.
#[derive(Default)]
struct Reports {
    queue: Vec<(FileId, u32)>,
    /// When each id was last queued (pruned past the cooldown).
    last: HashMap<FileId, Instant>,
}

/// A file being downloaded: which chunks are verified and on disk.
#[derive(Debug)]
pub struct PartialEntry {
    pub path: PathBuf,
    pub info: Arc<ContentInfo>,
    /// The name it is registered under at the index while partial.
    pub name: String,
    have: Vec<AtomicU8>,
    /// Bumped each time a chunk is newly held: connections that push
    /// availability (`Subscribe`) wait on it.
    gained: watch::Sender<u64>,
}

impl PartialEntry {
    /// A partial file that the index lists under `name`.
    pub fn named(path: PathBuf, info: Arc<ContentInfo>, name: String) -> Self {
        let bytes = (info.chunk_count() as usize).div_ceil(8);
        PartialEntry {
            path,
            info,
            name,
            have: (0..bytes).map(|_| AtomicU8::new(0)).collect(),
            gained: watch::channel(0).0,
        }
    }

    /// Marks chunk `index` as verified and written, and wakes the
    /// connections watching this file ([`PartialEntry::watch`]).
    pub fn set(&self, index: u32) {
        if let Some(b) = self.have.get((index / 8) as usize) {
            let bit = 1 << (index % 8);
            if b.fetch_or(bit, Ordering::Release) & bit == 0 {
                self.gained.send_modify(|n| *n += 1);
            }
        }
    }

    /// Changes whenever a chunk is newly held; read [`PartialEntry::bitfield`]
    /// after it fires.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.gained.subscribe()
    }

    pub fn has(&self, index: u32) -> bool {
        self.have
            .get((index / 8) as usize)
            .is_some_and(|b| b.load(Ordering::Acquire) & (1 << (index % 8)) != 0)
    }

    /// The availability bitfield as sent in `Have`.
    pub fn bitfield(&self) -> Vec<u8> {
        self.have
            .iter()
            .map(|b| b.load(Ordering::Acquire))
            .collect()
    }
}

/// What the library holds for an id.
#[derive(Debug, Clone)]
pub enum Holding {
    Complete(Arc<SharedEntry>),
    Partial(Arc<PartialEntry>),
}

impl Holding {
    pub fn info(&self) -> &Arc<ContentInfo> {
        match self {
            Holding::Complete(e) => &e.info,
            Holding::Partial(p) => &p.info,
        }
    }
}

struct Inner {
    root: PathBuf,
    /// Replaced whole after each scan; readers clone an `Arc` under a brief
    /// read lock, so a std `RwLock` is enough (it is never held across `.await`).
    by_id: RwLock<Arc<HashMap<FileId, Arc<SharedEntry>>>>,
    partial: RwLock<HashMap<FileId, Arc<PartialEntry>>>,
    /// Bumped whenever the shared list changes; the registrar watches it.
    version: watch::Sender<u64>,
    /// Wakes the scanner early (a served file turned out to have changed).
    rescan: Notify,
    reports: Mutex<Reports>,
    /// Scans applied with [`Library::set_shared`].
    scans: AtomicU64,
    /// Files this process wrote whole and closed, for the scanner: they
    /// need not wait for the settle period.
    closed: Mutex<Vec<ClosedFile>>,
}

/// A file this process wrote whole and closed in the shared folder
/// ([`Library::closed_after_writing`], [`Library::downloaded`]).
#[derive(Debug, Clone)]
pub struct ClosedFile {
    /// Path relative to the shared folder, `/`-separated.
    pub rel: String,
    /// The file as published and its verified hashes, when known (a
    /// finished download): the scanner takes them instead of reading the
    /// whole file again, if the file still has this stamp.
    pub verified: Option<(FileStamp, Arc<ContentInfo>)>,
}

/// Cloneable handle to this peer's files.
#[derive(Clone)]
pub struct Library {
    inner: Arc<Inner>,
}

impl Library {
    /// A library for the (canonical) shared folder `root`.
    pub fn new(root: PathBuf) -> Self {
        Library {
            inner: Arc::new(Inner {
                root,
                by_id: RwLock::new(Arc::new(HashMap::new())),
                partial: RwLock::new(HashMap::new()),
                version: watch::channel(0).0,
                rescan: Notify::new(),
                reports: Mutex::new(Reports::default()),
                scans: AtomicU64::new(0),
                closed: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The canonical shared folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Replaces the complete files after a scan.
    pub fn set_shared(&self, entries: Vec<Arc<SharedEntry>>) {
        let mut map = HashMap::with_capacity(entries.len());
        for e in entries {
            // Two paths with the same content: keep the first name in order.
            map.entry(e.info.id).or_insert(e);
        }
        let changed = {
            let old = self.inner.by_id.read().unwrap_or_else(|p| p.into_inner());
            old.len() != map.len()
                || old
                    .iter()
                    .any(|(id, e)| map.get(id).is_none_or(|n| n.rel != e.rel))
        };
        *self.inner.by_id.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        self.inner.scans.fetch_add(1, Ordering::Release);
        if changed {
            self.inner.version.send_modify(|v| *v += 1);
        }
    }

    /// How many scans have been applied (each [`Library::set_shared`],
    /// changed or not): tests and status displays wait on it.
    pub fn scans(&self) -> u64 {
        self.inner.scans.load(Ordering::Acquire)
    }

    /// Snapshot of the complete shared files.
    pub fn shared(&self) -> Arc<HashMap<FileId, Arc<SharedEntry>>> {
        self.inner
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The list to register at the index.
    pub fn listing(&self) -> HashMap<FileId, SharedFile> {
        self.shared()
            .iter()
            .map(|(id, e)| {
                (
                    *id,
                    SharedFile {
                        id: *id,
                        name: e.rel.clone(),
                        size: e.size,
                    },
                )
            })
            .collect()
    }

    /// Watch this to learn that the listing changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Publishes a download in progress so that its verified chunks can be
    /// served (and, by a daemon's registrar, listed at the index as partial).
    pub fn add_partial(&self, entry: Arc<PartialEntry>) {
        self.inner
            .partial
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.info.id, entry);
        self.inner.version.send_modify(|v| *v += 1);
    }

    pub fn remove_partial(&self, id: &FileId) {
        let removed = self
            .inner
            .partial
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if removed.is_some() {
            self.inner.version.send_modify(|v| *v += 1);
        }
    }

    /// The partial files to list at the index (those not also held complete).
    pub fn partial_listing(&self) -> HashMap<FileId, SharedFile> {
        let complete = self.shared();
        self.inner
            .partial
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| !complete.contains_key(&p.info.id))
            .map(|p| {
                (
                    p.info.id,
                    SharedFile {
                        id: p.info.id,
                        name: p.name.clone(),
                        size: p.info.size,
                    },
                )
            })
            .collect()
    }

    /// The ids of the partial files (downloads in progress) now.
    pub fn partial_ids(&self) -> Vec<FileId> {
        self.inner
            .partial
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// What is held for `id`: a complete file first, else a partial one.
    pub fn get(&self, id: &FileId) -> Option<Holding> {
        if let Some(e) = self.shared().get(id) {
            return Some(Holding::Complete(e.clone()));
        }
        self.inner
            .partial
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .map(Holding::Partial)
    }

    /// Asks the scanner to look at the folder again soon.
    pub fn request_rescan(&self) {
        self.inner.rescan.notify_one();
    }

    /// Resolves when someone asked for a rescan.
    pub async fn rescan_requested(&self) {
        self.inner.rescan.notified().await
    }

    /// A downloader says chunk `index` of `id`, as served here, failed
    /// verification. Queues a check of that chunk for the scanner (which
    /// rehashes the file if the chunk really no longer matches) and wakes
    /// it. Returns false when the report is ignored: not a complete file
    /// held here, this id was queued less than
    /// [`BAD_CHUNK_REPORT_COOLDOWN`] ago, or [`MAX_QUEUED_REPORTS`] wait.
    pub fn report_bad_chunk(&self, id: FileId, index: u32) -> bool {
        let Some(entry) = self.shared().get(&id).cloned() else {
            return false;
        };
        if index >= entry.info.chunk_count() {
            return false;
        }
        let now = Instant::now();
        let mut reports = self.inner.reports.lock().unwrap_or_else(|p| p.into_inner());
        if reports.queue.len() >= MAX_QUEUED_REPORTS {
            return false;
        }
        if reports
            .last
            .get(&id)
            .is_some_and(|t| now.duration_since(*t) < BAD_CHUNK_REPORT_COOLDOWN)
        {
            return false;
        }
        if reports.last.len() >= MAX_REPORTED_IDS {
            reports
                .last
                .retain(|_, t| now.duration_since(*t) < BAD_CHUNK_REPORT_COOLDOWN);
            if reports.last.len() >= MAX_REPORTED_IDS {
                return false;
            }
        }
        reports.last.insert(id, now);
        reports.queue.push((id, index));
        drop(reports);
        self.request_rescan();
        true
    }

    /// Says that this process has written `path` whole and closed it (a
    /// finished download published into the shared folder), so the next
    /// scan shares it without waiting for it to settle, and wakes the
    /// scanner. Paths outside the shared folder are ignored.
    pub fn closed_after_writing(&self, path: &Path) {
        self.push_closed(path, None);
    }

    /// [`Library::closed_after_writing`] for a download whose every chunk
    /// was verified against `info`, published as `stamp` says: the scan
    /// shares it with these hashes instead of reading and hashing the
    /// whole file again (16 MiB per downloader, 2 GiB per lab run of 128),
    /// unless its stamp changed since.
    pub fn downloaded(&self, path: &Path, stamp: FileStamp, info: Arc<ContentInfo>) {
        self.push_closed(path, Some((stamp, info)));
    }

    fn push_closed(&self, path: &Path, verified: Option<(FileStamp, Arc<ContentInfo>)>) {
        let Ok(rel) = path.strip_prefix(self.root()) else {
            return;
        };
        let rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        self.inner
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ClosedFile { rel, verified });
        self.request_rescan();
    }

    /// Takes the files reported by [`Library::closed_after_writing`] and
    /// [`Library::downloaded`].
    pub fn take_closed(&self) -> Vec<ClosedFile> {
        std::mem::take(&mut *self.inner.closed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the bad-chunk reports waiting to be checked.
    pub fn take_reports(&self) -> Vec<(FileId, u32)> {
        std::mem::take(
            &mut self
                .inner
                .reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .queue,
        )
    }
}

/// Why a chunk could not be read for serving.
#[derive(Debug, thiserror::Error)]
pub enum ReadChunkError {
    #[error("not shared here")]
    NotFound,
    #[error("the file changed on disk since it was hashed")]
    Changed,
    #[error("the file was removed from the shared folder")]
    Removed,
    #[error("the file is outside the shared folder")]
    OutsideShare,
    #[error("read failed: {0}")]
    Io(std::io::Error),
}

// The cause is in the message, so it is a plain field, not a `source`
// (an error chain would say it twice; see `common::report`).
impl From<std::io::Error> for ReadChunkError {
    fn from(e: std::io::Error) -> Self {
        ReadChunkError::Io(e)
    }
}

/// Modification time of `meta` in nanoseconds since the epoch.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// An open file ready to serve chunks of one holding; checked once at open
/// (it must still resolve inside the shared folder) and on every read (it
/// must not have changed since it was hashed).
pub struct OpenHolding {
    pub holding: Holding,
    file: File,
}

impl OpenHolding {
    /// Opens the file behind `holding` (blocking).
    pub fn open(library: &Library, holding: Holding) -> Result<Self, ReadChunkError> {
        let path = match &holding {
            Holding::Complete(e) => {
                // A symlink may have been swapped since the scan: resolve again.
                let real = std::fs::canonicalize(&e.path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ReadChunkError::Removed,
                    _ => ReadChunkError::Changed,
                })?;
                if !real.starts_with(library.root()) {
                    return Err(ReadChunkError::OutsideShare);
                }
                real
            }
            Holding::Partial(p) => p.path.clone(),
        };
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadChunkError::Removed,
            _ => ReadChunkError::Io(e),
        })?;
        Ok(OpenHolding { holding, file })
    }

    /// Checks that chunk `index` may be served and returns its length. The
    /// reader verifies every chunk anyway; the checks only avoid sending
    /// data we know is stale (one `fstat`, no read).
    pub fn check_chunk(&self, index: u32) -> Result<usize, ReadChunkError> {
        let info = self.holding.info();
        if index >= info.chunk_count() {
            return Err(ReadChunkError::NotFound);
        }
        match &self.holding {
            Holding::Complete(e) => {
                let meta = self.file.metadata()?;
                if FileStamp::of(&meta) != e.stamp {
                    return Err(ReadChunkError::Changed);
                }
            }
            Holding::Partial(p) => {
                if !p.has(index) {
                    return Err(ReadChunkError::NotFound);
                }
            }
        }
        Ok(info.chunk_len(index))
    }

    /// Reads `len` bytes of the file at `offset` into `buf` (blocking).
    pub fn read_at(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        buf.clear();
        buf.resize(len, 0);
        self.file.read_exact_at(buf, offset)
    }

    /// The open file, for sending straight from the page cache.
    pub fn file(&self) -> &File {
        &self.file
    }
}
