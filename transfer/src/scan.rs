//! Walking the shared folder and hashing what is new, with a persistent cache.
//!
//! Runs on a blocking thread. A file whose size and modification time match
//! the cache is not read again, so restarting a peer over a large folder is
//! quick. Names starting with `.` are not shared (that keeps the cache folder
//! and half-finished downloads out), and a symlink is followed only when it
//! resolves to a file inside the shared folder.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::id::{ContentInfo, FileHasher, FileId};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::library::{mtime_ns, SharedEntry};

/// File name of the hash cache inside the cache folder.
const CACHE_FILE: &str = "hashes.bin";
/// The cache is a local file, but may be corrupt: decode it with a limit too.
const CACHE_LIMIT: usize = 1 << 30;

#[derive(Serialize, Deserialize)]
struct CacheRecord {
    rel: String,
    size: u64,
    mtime_ns: i128,
    id: FileId,
    hashes: Vec<u8>,
}

#[derive(Serialize, Deserialize, Default)]
struct CacheFile {
    version: u32,
    records: Vec<CacheRecord>,
}

/// Hashes remembered from earlier scans, keyed by relative path.
#[derive(Default)]
pub struct HashCache {
    path: Option<PathBuf>,
    entries: HashMap<String, Arc<SharedEntry>>,
}

impl HashCache {
    /// Loads the cache from `dir` (missing or unreadable: start empty).
    pub fn load(dir: Option<&Path>, root: &Path) -> Self {
        let Some(dir) = dir else {
            return HashCache::default();
        };
        let path = dir.join(CACHE_FILE);
        let mut cache = HashCache {
            path: Some(path.clone()),
            entries: HashMap::new(),
        };
        let Ok(bytes) = std::fs::read(&path) else {
            return cache;
        };
        let config = bincode::config::standard().with_limit::<CACHE_LIMIT>();
        match bincode::serde::decode_from_slice::<CacheFile, _>(&bytes, config) {
            Ok((file, _)) if file.version == 1 => {
                for r in file.records {
                    let Ok(info) = ContentInfo::from_hash_list(r.id, r.size, &r.hashes) else {
                        continue;
                    };
                    let entry = SharedEntry {
                        path: root.join(&r.rel),
                        rel: r.rel.clone(),
                        size: r.size,
                        mtime_ns: r.mtime_ns,
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

    /// Records a file whose hashes are already known (a verified upload
    /// just published), so the next scan does not read it again.
    pub fn remember(&mut self, entry: Arc<SharedEntry>) {
        self.entries.insert(entry.rel.clone(), entry);
        self.save();
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let records = self
            .entries
            .values()
            .map(|e| CacheRecord {
                rel: e.rel.clone(),
                size: e.size,
                mtime_ns: e.mtime_ns,
                id: e.info.id,
                hashes: e.info.hash_list_bytes(),
            })
            .collect();
        let file = CacheFile {
            version: 1,
            records,
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
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

/// A regular file found in the folder.
struct Found {
    rel: String,
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Found>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot list folder; skipping it");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            warn!(path = %entry.path().display(), "name is not UTF-8; not shared");
            continue;
        };
        if name_str.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            walk(root, &path, out);
            continue;
        }
        if file_type.is_symlink() {
            // Only files that really live inside the share; never a linked folder (loops).
            match std::fs::canonicalize(&path) {
                Ok(real) if real.starts_with(root) && real.is_file() => {}
                Ok(_) => {
                    warn!(path = %path.display(), "symlink points outside the shared folder (or to a folder); not shared");
                    continue;
                }
                Err(_) => continue,
            }
        } else if !file_type.is_file() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        out.push(Found {
            rel,
            path,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        });
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

/// Scans `root`, reusing cached hashes, and returns every shareable file.
/// The cache is updated and saved when anything was hashed or dropped.
pub fn scan(root: &Path, cache: &mut HashCache) -> Vec<Arc<SharedEntry>> {
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut result = Vec::with_capacity(found.len());
    let mut fresh = HashMap::with_capacity(found.len());
    let mut hashed = 0usize;
    for f in found {
        if let Some(cached) = cache.entries.get(&f.rel) {
            if cached.size == f.size && cached.mtime_ns == f.mtime_ns {
                fresh.insert(f.rel.clone(), cached.clone());
                result.push(cached.clone());
                continue;
            }
        }
        match hash_file(&f.path) {
            Ok(info) => {
                // Changed while we read it? Try again on the next scan.
                let still = std::fs::metadata(&f.path)
                    .ok()
                    .map(|m| (m.len(), mtime_ns(&m)));
                if still != Some((f.size, f.mtime_ns)) || info.size != f.size {
                    debug!(path = %f.rel, "file changed while hashing; will retry");
                    continue;
                }
                hashed += 1;
                debug!(path = %f.rel, id = %info.id, "hashed");
                let entry = Arc::new(SharedEntry {
                    rel: f.rel.clone(),
                    path: f.path,
                    size: f.size,
                    mtime_ns: f.mtime_ns,
                    info: Arc::new(info),
                });
                fresh.insert(f.rel, entry.clone());
                result.push(entry);
            }
            Err(e) => warn!(path = %f.rel, error = %e, "cannot read file; not shared"),
        }
    }
    let dropped = cache.entries.len() + hashed != fresh.len();
    cache.entries = fresh;
    if hashed > 0 || dropped {
        if hashed > 0 {
            info!(hashed, total = result.len(), "shared folder scanned");
        }
        cache.save();
    }
    result
}
