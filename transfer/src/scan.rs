//! Walking the shared folder and hashing what is new, with a persistent cache.
//!
//! Runs on a blocking thread. The rules (README "Sharing a folder" and
//! DESIGN.md "Peer daemon" say the same):
//!
//! - **Trusted cache.** A file whose [`FileStamp`] (size, mtime, ctime,
//!   device, inode) matches the cache is not read again, so restarting a
//!   peer over a large folder is quick; an edit in place with the old mtime
//!   restored still changes the ctime, so it is rehashed.
//! - **Stable files only.** A file not hashed in its current state is
//!   hashed (and so shared) only once it is *stable*: its stamp has not
//!   changed for the settle period ([`DEFAULT_SETTLE`], `--settle`). That
//!   is, its ctime is at least the settle period in the past, or this
//!   scanner has seen the same stamp for at least that long (the second
//!   rule covers file systems whose clock disagrees with ours). A file that
//!   changes while it is hashed starts over. So a file still being written
//!   is never registered under the id of its first bytes.
//! - **Errors never withdraw.** A folder that cannot be listed (or a file
//!   whose state cannot be read) keeps what was shared from it and its
//!   cached hashes. Running out of file descriptors (`EMFILE`/`ENFILE`)
//!   stops the scan and changes nothing; the caller retries with backoff
//!   ([`HashCache::next_scan_in`]).
//! - **The root is never created.** While the shared folder is missing its
//!   files are withdrawn, its cached hashes are kept (in memory and on
//!   disk, which is not written), and one warning says so.
//! - **One warning per problem.** Each problem (a broken or looping
//!   symlink, a folder that cannot be listed, a name that is not UTF-8…) is
//!   logged when it appears, and once more at `info` when it is gone.
//!
//! Names starting with `.` are not shared (that keeps the cache folder and
//! half-finished downloads out), and a symlink is followed only when it
//! resolves to a file inside the shared folder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::id::{ContentInfo, FileHasher, FileId};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::library::{FileStamp, Library, SharedEntry};
use crate::net::is_fd_exhaustion;

/// File name of the hash cache inside the cache folder.
pub const CACHE_FILE: &str = "hashes.bin";
/// The default cache folder inside a shared folder (`SHARE/.p2pshare`).
pub const CACHE_DIR: &str = ".p2pshare";
/// The cache is a local file, but may be corrupt: decode it with a limit too.
const CACHE_LIMIT: usize = 1 << 30;
/// Version 2 added ctime, device and inode to each record.
const CACHE_VERSION: u32 = 2;

/// How long a file must stay unchanged before it is hashed and shared,
/// unless configured otherwise (`peer serve --settle`, `PEER_SETTLE`).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(3);

/// First retry of a scan cut short by running out of file descriptors; it
/// doubles on each further failure, up to the rescan interval.
pub const EXHAUSTED_RETRY: Duration = Duration::from_millis(500);

#[derive(Serialize, Deserialize)]
struct CacheRecord {
    rel: String,
    stamp: FileStamp,
    id: FileId,
    hashes: Vec<u8>,
}

#[derive(Serialize, Deserialize, Default)]
struct CacheFile {
    version: u32,
    records: Vec<CacheRecord>,
}

/// Just the version, to tell an older cache from a corrupt one.
#[derive(Deserialize)]
struct CacheHeader {
    version: u32,
}

/// Hashes remembered from earlier scans (keyed by relative path), and what
/// the scanner carries from one scan to the next: files waiting to become
/// stable, problems already reported, the last list shared.
pub struct HashCache {
    path: Option<PathBuf>,
    /// The shared folder, when loaded for one: the cache folder is never
    /// created through it while it is missing.
    root: Option<PathBuf>,
    entries: HashMap<String, Arc<SharedEntry>>,
    settle: Duration,
    /// Files seen but not yet stable: the stamp and when it was first seen.
    pending: HashMap<String, (FileStamp, Instant)>,
    /// Files this process wrote whole and closed: stable at once.
    closed: HashSet<String>,
    /// Problems already logged, by key, with their path and description.
    problems: BTreeMap<String, (String, String)>,
    /// What the last complete scan shared (kept through failed scans).
    shared: Vec<Arc<SharedEntry>>,
    root_missing: bool,
    /// Consecutive scans cut short by running out of file descriptors.
    exhausted: u32,
    /// When the earliest pending file may become stable (from the last scan).
    next_due: Option<Duration>,
    hashed_total: u64,
}

impl Default for HashCache {
    fn default() -> Self {
        HashCache {
            path: None,
            root: None,
            entries: HashMap::new(),
            settle: DEFAULT_SETTLE,
            pending: HashMap::new(),
            closed: HashSet::new(),
            problems: BTreeMap::new(),
            shared: Vec::new(),
            root_missing: false,
            exhausted: 0,
            next_due: None,
            hashed_total: 0,
        }
    }
}

impl HashCache {
    /// Loads the cache from `dir` (missing or unreadable: start empty).
    pub fn load(dir: Option<&Path>, root: &Path) -> Self {
        let mut cache = HashCache {
            root: Some(root.to_path_buf()),
            ..HashCache::default()
        };
        let Some(dir) = dir else {
            return cache;
        };
        let path = dir.join(CACHE_FILE);
        cache.path = Some(path.clone());
        let Ok(bytes) = std::fs::read(&path) else {
            return cache;
        };
        let config = bincode::config::standard().with_limit::<CACHE_LIMIT>();
        match bincode::serde::decode_from_slice::<CacheHeader, _>(&bytes, config) {
            Ok((header, _)) if header.version != CACHE_VERSION => {
                info!(path = %path.display(), version = header.version, "hash cache from an older version; files will be hashed again once");
                return cache;
            }
            _ => {}
        }
        match bincode::serde::decode_from_slice::<CacheFile, _>(&bytes, config) {
            Ok((file, _)) if file.version == CACHE_VERSION => {
                for r in file.records {
                    let Ok(info) = ContentInfo::from_hash_list(r.id, r.stamp.size, &r.hashes)
                    else {
                        continue;
                    };
                    let entry = SharedEntry {
                        path: root.join(&r.rel),
                        rel: r.rel.clone(),
                        size: r.stamp.size,
                        stamp: r.stamp,
                        info: Arc::new(info),
                    };
                    cache.entries.insert(r.rel, Arc::new(entry));
                }
                debug!(entries = cache.entries.len(), "hash cache loaded");
            }
            _ => warn!(path = %path.display(), "hash cache unreadable; files will be rehashed"),
        }
        cache
    }

    /// Sets how long a file must stay unchanged before it is hashed.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Files with known hashes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no hashes are known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Files hashed (read whole) by scans through this cache so far.
    pub fn hashed_total(&self) -> u64 {
        self.hashed_total
    }

    /// Files seen but not shared yet because they are not stable.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// How long to wait before the next scan, at most `interval`: sooner
    /// when a pending file may have become stable, and with a growing
    /// backoff ([`EXHAUSTED_RETRY`], doubling) after scans cut short by
    /// running out of file descriptors.
    pub fn next_scan_in(&self, interval: Duration) -> Duration {
        let mut wait = interval;
        if let Some(due) = self.next_due {
            // A little past the due time, so one scan is enough.
            wait = wait.min(due + Duration::from_millis(10));
        }
        if self.exhausted > 0 {
            let backoff = EXHAUSTED_RETRY.saturating_mul(1 << (self.exhausted - 1).min(10));
            wait = wait.min(backoff);
        }
        wait
    }

    /// Whether scans are cut short by running out of file descriptors (the
    /// next one is a retry after a backoff).
    pub fn backing_off(&self) -> bool {
        self.exhausted > 0
    }

    /// Looks again at the files waiting to settle only (one `stat` each,
    /// no walk): true when one of them is now stable or gone, so that a
    /// full [`scan`] is worth it. Updates what they were last seen as and
    /// when the next one comes due ([`HashCache::next_scan_in`]).
    pub fn pending_settled(&mut self, root: &Path) -> bool {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut ready = false;
        let mut next_due: Option<Duration> = None;
        for (rel, (stamp, since)) in self.pending.iter_mut() {
            let Ok(meta) = std::fs::metadata(root.join(rel)) else {
                ready = true;
                continue;
            };
            let current = FileStamp::of(&meta);
            if current != *stamp {
                *stamp = current;
                *since = now;
            }
            let quiet = now
                .duration_since(*since)
                .max(ctime_age(wall, stamp.ctime_ns));
            if quiet >= self.settle {
                ready = true;
            } else {
                let due = self.settle - quiet;
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            }
        }
        self.next_due = next_due;
        ready || !self.closed.is_empty()
    }

    /// Cached files with content `id`, as they were when hashed (the
    /// caller checks that their stamp still matches).
    pub fn with_id<'a>(
        &'a self,
        id: &'a FileId,
    ) -> impl Iterator<Item = &'a Arc<SharedEntry>> + 'a {
        self.entries.values().filter(move |e| e.info.id == *id)
    }

    /// Records a file whose hashes are already known (a verified upload
    /// just published), so the next scan does not read it again.
    pub fn remember(&mut self, entry: Arc<SharedEntry>) {
        self.entries.insert(entry.rel.clone(), entry);
        self.save();
    }

    /// Marks `rel` (relative to the shared folder) as written whole and
    /// closed by this process: the next scan hashes it without waiting for
    /// the settle period ("closed after writing" is stable too).
    pub fn closed_after_writing(&mut self, rel: String) {
        self.closed.insert(rel);
    }

    /// Forgets the hashes of `rel` (they no longer match its content), so
    /// the next scan hashes it again.
    pub fn distrust(&mut self, rel: &str) {
        self.entries.remove(rel);
        self.shared.retain(|e| e.rel != rel);
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        if self.root_missing {
            return;
        }
        let records = self
            .entries
            .values()
            .map(|e| CacheRecord {
                rel: e.rel.clone(),
                stamp: e.stamp,
                id: e.info.id,
                hashes: e.info.hash_list_bytes(),
            })
            .collect();
        let file = CacheFile {
            version: CACHE_VERSION,
            records,
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                create_cache_dir(self.root.as_deref(), dir)?;
            }
            let bytes = bincode::serde::encode_to_vec(&file, bincode::config::standard())
                .map_err(std::io::Error::other)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            warn!(path = %path.display(), error = %e, "could not save the hash cache; a restart will rehash");
        }
    }
}

/// Creates the cache folder `dir`. Inside the shared folder `root`, only
/// the folders below `root` are created, never `root` itself: a share that
/// was moved away must not reappear, empty, at its old path.
fn create_cache_dir(root: Option<&Path>, dir: &Path) -> std::io::Result<()> {
    let Some(root) = root.filter(|r| dir.starts_with(r)) else {
        return std::fs::create_dir_all(dir);
    };
    let mut below: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| *a != root && a.starts_with(root))
        .collect();
    below.reverse();
    for d in below {
        match std::fs::create_dir(d) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A regular file found in the folder.
struct Found {
    rel: String,
    path: PathBuf,
    stamp: FileStamp,
}

/// What one walk over the folder found, and what went wrong.
struct Walk<'a> {
    root: &'a Path,
    found: Vec<Found>,
    /// Folders (relative; "" is the root) not listed completely: what was
    /// shared from under them stays shared.
    failed_dirs: Vec<String>,
    /// Files whose state could not be read: their previous entry stays.
    failed_files: Vec<String>,
    /// Problems seen, by key: (path, description).
    problems: BTreeMap<String, (String, String)>,
    /// Set when file descriptors ran out: the walk stops there.
    exhausted: Option<std::io::Error>,
}

impl Walk<'_> {
    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn problem(&mut self, path: &Path, what: String) {
        let shown = path.display().to_string();
        self.problems
            .insert(format!("{shown}\n{what}"), (shown, what));
    }

    /// A folder could not be listed (completely): keep its previous files.
    fn dir_failed(&mut self, dir: &Path, e: std::io::Error) {
        if is_fd_exhaustion(&e) {
            self.exhausted = Some(e);
            return;
        }
        let rel = self.rel(dir);
        self.failed_dirs.push(rel);
        self.problem(
            dir,
            format!("cannot list folder ({e}); what was shared from it stays shared"),
        );
    }

    fn dir(&mut self, dir: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => return self.dir_failed(dir, e),
        };
        for entry in entries {
            if self.exhausted.is_some() {
                return;
            }
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return self.dir_failed(dir, e),
            };
            let name = entry.file_name();
            let path = entry.path();
            let Some(name_str) = name.to_str() else {
                self.problem(&path, "name is not UTF-8; not shared".into());
                continue;
            };
            if name_str.starts_with('.') {
                continue;
            }
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    let rel = self.rel(&path);
                    self.failed_files.push(rel);
                    self.problem(&path, format!("cannot read its type ({e})"));
                    continue;
                }
            };
            if file_type.is_dir() {
                self.dir(&path);
                continue;
            }
            if file_type.is_symlink() {
                // Only files that really live inside the share; never a linked folder (loops).
                match std::fs::canonicalize(&path) {
                    Ok(real) if real.starts_with(self.root) && real.is_file() => {}
                    Ok(real) if real.is_dir() => {
                        self.problem(&path, "symlink to a folder; not followed".into());
                        continue;
                    }
                    Ok(_) => {
                        self.problem(
                            &path,
                            "symlink points outside the shared folder; not shared".into(),
                        );
                        continue;
                    }
                    Err(e) if is_fd_exhaustion(&e) => {
                        self.exhausted = Some(e);
                        return;
                    }
                    Err(e) => {
                        self.problem(
                            &path,
                            format!("symlink is broken or loops ({e}); not shared"),
                        );
                        continue;
                    }
                }
            } else if !file_type.is_file() {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                // Deleted since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let rel = self.rel(&path);
                    self.failed_files.push(rel);
                    self.problem(&path, format!("cannot read its state ({e})"));
                    continue;
                }
            };
            let rel = self.rel(&path);
            self.found.push(Found {
                rel,
                path,
                stamp: FileStamp::of(&meta),
            });
        }
    }
}

/// Whether `rel` lies under folder `dir` ("" is the root).
fn is_under(rel: &str, dir: &str) -> bool {
    dir.is_empty() || rel.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// How long ago `ctime_ns` was, by the wall clock (zero if in the future).
fn ctime_age(now: SystemTime, ctime_ns: i128) -> Duration {
    let now_ns = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let age = now_ns - ctime_ns;
    if age <= 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(age.min(u64::MAX as i128) as u64)
    }
}

/// Hashes a file from disk (blocking).
pub fn hash_file(path: &Path) -> std::io::Result<ContentInfo> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = FileHasher::new();
    let mut buf = vec![0u8; 4 * common::CHUNK_SIZE];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// Checks the chunks downloaders reported as bad ([`Library::report_bad_chunk`]):
/// a chunk that no longer matches the hash the file was shared with means
/// the file changed under an unchanged stamp, so its hashes are forgotten
/// and the next [`scan`] withdraws the stale id and hashes the file again.
/// A chunk that still matches (a false or hostile report) changes nothing.
/// Blocking: reads one chunk per report.
pub fn check_reports(library: &Library, cache: &mut HashCache) {
    let reports = library.take_reports();
    if reports.is_empty() {
        return;
    }
    let shared = library.shared();
    for (id, index) in reports {
        let Some(entry) = shared.get(&id) else {
            continue;
        };
        let matches = (|| -> std::io::Result<bool> {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&entry.path)?;
            let mut buf = vec![0u8; entry.info.chunk_len(index)];
            let offset = index as u64 * common::CHUNK_SIZE as u64;
            file.read_exact_at(&mut buf, offset)?;
            Ok(entry.info.verify_chunk(index, &buf))
        })();
        match matches {
            Ok(true) => {
                debug!(path = %entry.rel, %id, chunk = index, "reported chunk still matches; report ignored")
            }
            Ok(false) => {
                warn!(path = %entry.rel, %id, chunk = index, "a downloader's report is right: this file no longer matches the id it was shared with; withdrawing that id and hashing the file again");
                cache.distrust(&entry.rel);
            }
            Err(e) => {
                // Gone or shorter: the scan sees that itself.
                debug!(path = %entry.rel, error = %e, "cannot check a reported chunk");
            }
        }
    }
}

/// Hands the scanner the files this process wrote whole into the shared
/// folder ([`Library::closed_after_writing`], [`Library::downloaded`]):
/// each is stable at once, and a download's verified hashes are taken
/// instead of hashing it again while the file still has the stamp it was
/// published with (a file changed since is hashed as any other).
pub fn take_closed(library: &Library, cache: &mut HashCache) {
    for closed in library.take_closed() {
        if let Some((stamp, info)) = closed.verified {
            let path = library.root().join(&closed.rel);
            let same =
                std::fs::metadata(&path).is_ok_and(|m| m.is_file() && FileStamp::of(&m) == stamp);
            if same && info.size == stamp.size {
                debug!(path = %closed.rel, id = %info.id, "downloaded and verified; not hashed again");
                cache.remember(Arc::new(SharedEntry {
                    rel: closed.rel.clone(),
                    path,
                    size: stamp.size,
                    stamp,
                    info,
                }));
            }
        }
        cache.closed_after_writing(closed.rel);
    }
}

/// Scans `root`, reusing cached hashes, and returns every shareable file
/// (the rules are in the module documentation). The cache is updated and
/// saved when anything was hashed or dropped.
pub fn scan(root: &Path, cache: &mut HashCache) -> Vec<Arc<SharedEntry>> {
    cache.next_due = None;
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {
            if cache.root_missing {
                info!(folder = %root.display(), "the shared folder is back; sharing it again");
                cache.root_missing = false;
            }
        }
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            // Cannot tell (permissions on a parent…): change nothing.
            let what = format!("cannot read the shared folder ({e}); what was shared stays shared");
            let key = format!("{}\n{what}", root.display());
            if let std::collections::btree_map::Entry::Vacant(slot) = cache.problems.entry(key) {
                warn!(path = %root.display(), "{what}");
                slot.insert((root.display().to_string(), what));
            }
            return cache.shared.clone();
        }
        _ => {
            if !cache.root_missing {
                warn!(folder = %root.display(), "the shared folder is missing (moved or deleted?): its files are withdrawn until it is back; their hashes are kept and the folder is not created again");
                cache.root_missing = true;
            }
            cache.shared.clear();
            cache.pending.clear();
            return Vec::new();
        }
    }

    let mut walk = Walk {
        root,
        found: Vec::new(),
        failed_dirs: Vec::new(),
        failed_files: Vec::new(),
        problems: BTreeMap::new(),
        exhausted: None,
    };
    walk.dir(root);
    walk.found.sort_by(|a, b| a.rel.cmp(&b.rel));

    let now = Instant::now();
    let wall = SystemTime::now();
    let mut result = Vec::with_capacity(walk.found.len());
    let mut fresh = HashMap::with_capacity(walk.found.len());
    let mut pending = HashMap::new();
    let mut hashed = 0usize;
    if walk.exhausted.is_none() {
        for f in std::mem::take(&mut walk.found) {
            if let Some(cached) = cache.entries.get(&f.rel) {
                if cached.stamp == f.stamp {
                    fresh.insert(f.rel.clone(), cached.clone());
                    result.push(cached.clone());
                    continue;
                }
            }
            // Not hashed in this state: only once it is stable.
            let since = match cache.pending.get(&f.rel) {
                Some((stamp, since)) if *stamp == f.stamp => *since,
                _ => now,
            };
            let quiet = now
                .duration_since(since)
                .max(ctime_age(wall, f.stamp.ctime_ns));
            let closed = cache.closed.contains(&f.rel);
            if quiet < cache.settle && !closed {
                let due = cache.settle - quiet;
                cache.next_due = Some(cache.next_due.map_or(due, |d| d.min(due)));
                debug!(path = %f.rel, size = f.stamp.size, "not stable yet; shared once unchanged for the settle period");
                pending.insert(f.rel, (f.stamp, since));
                continue;
            }
            match hash_file(&f.path) {
                Ok(info) => {
                    let still = std::fs::metadata(&f.path).ok().map(|m| FileStamp::of(&m));
                    if still != Some(f.stamp) || info.size != f.stamp.size {
                        // Not stable after all: wait for it to settle again.
                        debug!(path = %f.rel, "file changed while hashing; waiting for it to settle");
                        cache.next_due = Some(cache.settle);
                        pending.insert(f.rel, (still.unwrap_or(f.stamp), now));
                        continue;
                    }
                    hashed += 1;
                    debug!(path = %f.rel, id = %info.id, "hashed");
                    let entry = Arc::new(SharedEntry {
                        rel: f.rel.clone(),
                        path: f.path,
                        size: f.stamp.size,
                        stamp: f.stamp,
                        info: Arc::new(info),
                    });
                    fresh.insert(f.rel, entry.clone());
                    result.push(entry);
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    walk.exhausted = Some(e);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let what = format!("cannot read file ({e}); not shared");
                    walk.problem(&f.path, what);
                }
            }
        }
    }
    cache.hashed_total += hashed as u64;

    if let Some(e) = walk.exhausted {
        // Keep everything as it was (and what was hashed meanwhile).
        for (rel, entry) in fresh {
            cache.entries.insert(rel, entry);
        }
        cache.exhausted += 1;
        let retry_in = cache.next_scan_in(Duration::MAX);
        if cache.exhausted == 1 {
            warn!(folder = %root.display(), error = %e, ?retry_in, "out of file descriptors while scanning the shared folder: nothing withdrawn, no hash forgotten; trying again with backoff (raise `ulimit -n`?)");
        } else {
            debug!(error = %e, ?retry_in, "scan still short of file descriptors");
        }
        if hashed > 0 {
            cache.save();
        }
        return cache.shared.clone();
    }
    if cache.exhausted > 0 {
        info!(folder = %root.display(), "scanning the shared folder again (file descriptors available)");
        cache.exhausted = 0;
    }

    // A scan error never withdraws a file nor forgets its hashes.
    let kept = |rel: &str| {
        walk.failed_dirs.iter().any(|d| is_under(rel, d))
            || walk.failed_files.iter().any(|f| f == rel)
    };
    for prev in &cache.shared {
        if kept(&prev.rel) && !fresh.contains_key(&prev.rel) {
            fresh.insert(prev.rel.clone(), prev.clone());
            result.push(prev.clone());
        }
    }
    for (rel, entry) in &cache.entries {
        if kept(rel) && !fresh.contains_key(rel) {
            fresh.insert(rel.clone(), entry.clone());
        }
    }
    result.sort_by(|a, b| a.rel.cmp(&b.rel));

    cache.closed.clear();
    let dropped = cache.entries.len() + hashed != fresh.len();
    cache.entries = fresh;
    cache.pending = pending;
    report_problems(cache, walk.problems);
    if hashed > 0 || dropped {
        if hashed > 0 {
            info!(hashed, total = result.len(), "shared folder scanned");
        }
        cache.save();
    }
    cache.shared = result.clone();
    result
}

/// Logs the problems that are new since the last scan (once each) and says
/// which earlier ones are gone.
fn report_problems(cache: &mut HashCache, now: BTreeMap<String, (String, String)>) {
    for (key, (path, what)) in &now {
        if !cache.problems.contains_key(key) {
            warn!(path = %path, "{what}");
        }
    }
    for (key, (path, what)) in &cache.problems {
        if !now.contains_key(key) {
            info!(path = %path, problem = %what, "no longer a problem");
        }
    }
    cache.problems = now;
}
