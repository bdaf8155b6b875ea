//! The download's files on disk: the `.part` file, resume, and publication.
//!
//! Chunks are written at their offset into `OUT/.<id>.part` only after they
//! verified. On resume every chunk already in the part file is hashed again
//! and kept if it matches, so nothing verified is fetched twice and a torn
//! write is simply fetched again. The finished file appears under its name
//! by a hard link (which never replaces an existing file) or, where links
//! are unsupported, a rename after a check; a clash gets ` (1)`, ` (2)`, …

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use common::id::{ContentInfo, FileId};

use crate::library::{FileStamp, Holding, Library};

/// Path of the partial file for `id` in `out_dir`.
pub fn part_path(out_dir: &Path, id: &FileId) -> PathBuf {
    out_dir.join(format!(".{}.part", id.to_hex()))
}

/// Turns a name from the network into the name the file is saved under:
/// [`common::names::safe_file_name`] (last component only, no leading dot,
/// no control or invisible characters, shortened keeping the extension),
/// or the id in hex when nothing usable is left. Never a path.
pub fn sanitize_name(name: &str, id: &FileId) -> String {
    common::names::safe_file_name(name).unwrap_or_else(|| id.to_hex())
}

/// Opens (or creates) the part file and finds which chunks it already holds.
/// The caller must own the part file ([`lock_part`]): this may resize it.
pub fn open_part(path: &Path, info: &ContentInfo) -> io::Result<(File, Vec<bool>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let have = prepare_part(&file, info)?;
    Ok((file, have))
}

/// Finds which chunks an opened part file already holds (hashing each one
/// again), or sizes it afresh when it does not have the file's size.
pub fn prepare_part(file: &File, info: &ContentInfo) -> io::Result<Vec<bool>> {
    let existing = file.metadata()?.len();
    let mut have = vec![false; info.chunk_count() as usize];
    if existing == info.size && info.size > 0 {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; common::CHUNK_SIZE];
        for (i, slot) in have.iter_mut().enumerate() {
            let len = info.chunk_len(i as u32);
            file.read_exact_at(&mut buf[..len], i as u64 * common::CHUNK_SIZE as u64)?;
            *slot = info.verify_chunk(i as u32, &buf[..len]);
        }
    } else {
        reserve(file, info.size)?;
    }
    Ok(have)
}

/// What [`lock_part`] found.
#[derive(Debug)]
pub enum PartLock {
    /// The part file, opened and locked: this download owns it until the
    /// descriptor is closed (the kernel releases the lock if the process dies).
    Owned(File),
    /// Another download (in this process or another) holds it.
    Held,
}

/// Opens (or creates) the part file at `path` and takes an exclusive
/// `flock` on it without waiting. A download owns its part file for as long
/// as it runs, so two downloads of one file into one folder never write
/// (or resize, or publish) the same file.
///
/// After the lock is taken, the path must still name the locked file: a
/// download that finished in the meantime has removed its part file (the
/// content is then published), and this one must look again rather than
/// write into an unlinked file; that case is reported as `Held` too.
pub fn lock_part(path: &Path) -> io::Result<PartLock> {
    use rustix::fs::{flock, FlockOperation};
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(PartLock::Held),
        // File systems without locks (some network ones): go on unlocked.
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "part file cannot be locked here")
        }
    }
    let ours = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => Ok(PartLock::Owned(file)),
        Ok(_) => Ok(PartLock::Held),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PartLock::Held),
        Err(e) => Err(e),
    }
}

/// Where content `id` already is, found without the network and without
/// reading file contents: a complete file of `library` (a daemon's own
/// share), or a file that the hash cache of a shared folder containing
/// `out_dir` (`SHARE/.p2pshare/hashes.bin`) knows by that id, whose stamp
/// (size, times, inode) still matches the cache. Returns the path and size.
///
/// Blocking (it may read a hash cache).
pub fn find_known(
    id: &FileId,
    out_dir: &Path,
    library: Option<&Library>,
) -> Option<(PathBuf, u64)> {
    if let Some(found) = library.and_then(|lib| find_in_library(id, lib)) {
        return Some(found);
    }
    let out_dir = std::fs::canonicalize(out_dir).ok()?;
    for root in out_dir.ancestors() {
        let cache_dir = root.join(crate::scan::CACHE_DIR);
        if !cache_dir.join(crate::scan::CACHE_FILE).is_file() {
            continue;
        }
        let cache = crate::scan::HashCache::load(Some(&cache_dir), root);
        let found = cache
            .with_id(id)
            .find(|e| unchanged(&e.path, &e.stamp))
            .map(|e| (e.path.clone(), e.size));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The daemon's own trust rule: the file is as it was when hashed.
fn unchanged(path: &Path, stamp: &FileStamp) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && FileStamp::of(&m) == *stamp)
}

/// A complete file of `library` with content `id`, unchanged since it was
/// hashed: its path and size. Blocking (one `stat`).
pub fn find_in_library(id: &FileId, library: &Library) -> Option<(PathBuf, u64)> {
    match library.get(id) {
        Some(Holding::Complete(e)) if unchanged(&e.path, &e.stamp) => {
            Some((e.path.clone(), e.size))
        }
        _ => None,
    }
}

/// A file in `out_dir` named `name` or `name (k)` (the names [`publish`]
/// gives) that holds exactly the content of `info`: the same size, and
/// every chunk matching the hash list (reading stops at the first that
/// does not). Blocking.
pub fn find_same_named(out_dir: &Path, name: &str, info: &ContentInfo) -> Option<PathBuf> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; common::CHUNK_SIZE];
    for (k, candidate) in candidates(out_dir, name).enumerate() {
        let Ok(meta) = std::fs::metadata(&candidate) else {
            // `name (k)` are handed out in order: stop at the first gap.
            if k == 0 {
                continue;
            }
            break;
        };
        if !meta.is_file() || meta.len() != info.size {
            continue;
        }
        let Ok(file) = File::open(&candidate) else {
            continue;
        };
        let same = (0..info.chunk_count()).all(|i| {
            let len = info.chunk_len(i);
            file.read_exact_at(&mut buf[..len], i as u64 * common::CHUNK_SIZE as u64)
                .is_ok()
                && info.verify_chunk(i, &buf[..len])
        });
        if same {
            return Some(candidate);
        }
    }
    None
}

/// Sizes a part file afresh, reserving its blocks where the file system can:
/// a disk too small is then an error before anything is fetched, and
/// direct writes into reserved blocks can run side by side (see
/// [`super::disk`]).
fn reserve(file: &File, size: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    use rustix::io::Errno;
    file.set_len(0)?;
    if size == 0 {
        return Ok(());
    }
    match fallocate(file, FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => file.set_len(size),
        Err(e) => Err(e.into()),
    }
}

/// Candidate final paths: `name`, then `stem (1).ext`, `stem (2).ext`, …
/// (see [`common::names::numbered_name`]).
fn candidates<'a>(out_dir: &'a Path, name: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    std::iter::once(out_dir.join(name))
        .chain((1..1000).map(move |n| out_dir.join(common::names::numbered_name(name, n))))
}

/// Makes the finished part file visible under its name without ever
/// replacing an existing file. Returns the final path.
pub fn publish(part: &Path, file: &File, out_dir: &Path, name: &str) -> io::Result<PathBuf> {
    file.sync_all()?;
    for candidate in candidates(out_dir, name) {
        match std::fs::hard_link(part, &candidate) {
            Ok(()) => {
                std::fs::remove_file(part)?;
                sync_dir(out_dir);
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) => {
                // No hard links here (some network or FAT file systems): check, then rename.
                if candidate.symlink_metadata().is_ok() {
                    continue;
                }
                std::fs::rename(part, &candidate)?;
                sync_dir(out_dir);
                return Ok(candidate);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "too many files named like {name:?} in {}",
            out_dir.display()
        ),
    ))
}

/// Copies `from`, a local file known to hold content `id` (a file of the
/// daemon's share), into `out_dir` as a download publishes: into a
/// temporary file there, whose hash list is then checked against `id` (the
/// copy is verified as downloaded chunks are), then published under `name`
/// or a numbered name, never replacing a file. A file of that name there
/// with the same content already is returned instead. Blocking.
///
/// Errors: the copy's I/O errors, or `InvalidData` when `from` no longer
/// holds `id` (changed since it was hashed).
pub fn copy_in(from: &Path, out_dir: &Path, id: &FileId, name: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(out_dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = out_dir.join(format!(
        ".{}.{}-{nanos}.copy",
        id.to_hex(),
        std::process::id()
    ));
    let result = (|| {
        let mut src = File::open(from)?;
        let mut dst = File::options().write(true).create_new(true).open(&tmp)?;
        io::copy(&mut src, &mut dst)?;
        drop(dst);
        let info = crate::scan::hash_file(&tmp)?;
        if info.id != *id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} changed since it was hashed", from.display()),
            ));
        }
        if let Some(same) = find_same_named(out_dir, name, &info) {
            std::fs::remove_file(&tmp)?;
            return Ok(same);
        }
        let file = File::open(&tmp)?;
        publish(&tmp, &file, out_dir, name)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_wire_never_become_paths() {
        let id = FileId([1; 32]);
        assert_eq!(sanitize_name("music/a b.mp3", &id), "a b.mp3");
        assert_eq!(sanitize_name("../../etc/passwd", &id), "passwd");
        assert_eq!(sanitize_name("..", &id), id.to_hex());
        assert_eq!(sanitize_name("", &id), id.to_hex());
        assert_eq!(sanitize_name("evil\\..\\x", &id), "x");
        assert_eq!(sanitize_name("a\nb", &id), "a_b");
        assert_eq!(sanitize_name("../../.bashrc", &id), "bashrc");
        assert_eq!(sanitize_name(".x.part", &id), "x.part");
        let flac = format!("{} x.flac", "a".repeat(194));
        assert_eq!(flac.len(), 201);
        assert!(sanitize_name(&flac, &id).ends_with("aaa.flac"));
    }

    #[test]
    fn a_part_file_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(".x.part");
        let PartLock::Owned(first) = lock_part(&part).unwrap() else {
            panic!("a fresh part file is free");
        };
        assert!(matches!(lock_part(&part).unwrap(), PartLock::Held));
        drop(first);
        let PartLock::Owned(second) = lock_part(&part).unwrap() else {
            panic!("closing the owner releases the lock");
        };
        // The owner publishes and removes the part: a download that was
        // waiting must not take the unlinked file.
        std::fs::remove_file(&part).unwrap();
        let waiting = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .unwrap();
        std::fs::remove_file(&part).unwrap();
        drop(second);
        drop(waiting);
        assert!(
            matches!(lock_part(&part).unwrap(), PartLock::Owned(_)),
            "a new part file is free again"
        );
    }

    #[test]
    fn the_same_content_under_its_name_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let data = common::sample::bytes(2 * common::CHUNK_SIZE + 5, 3);
        let info = common::id::content_info(&data);
        std::fs::write(dir.path().join("a.bin"), b"other").unwrap();
        assert_eq!(find_same_named(dir.path(), "a.bin", &info), None);
        let mut other = data.clone();
        other[2 * common::CHUNK_SIZE] ^= 1;
        std::fs::write(dir.path().join("a (1).bin"), &other).unwrap();
        assert_eq!(
            find_same_named(dir.path(), "a.bin", &info),
            None,
            "same size, other bytes"
        );
        std::fs::write(dir.path().join("a (2).bin"), &data).unwrap();
        assert_eq!(
            find_same_named(dir.path(), "a.bin", &info),
            Some(dir.path().join("a (2).bin"))
        );
    }

    #[test]
    fn publishing_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("song.mp3"), b"mine").unwrap();
        let part = dir.path().join(".x.part");
        std::fs::write(&part, b"theirs").unwrap();
        let f = File::open(&part).unwrap();
        let out = publish(&part, &f, dir.path(), "song.mp3").unwrap();
        assert_eq!(out, dir.path().join("song (1).mp3"));
        assert_eq!(std::fs::read(dir.path().join("song.mp3")).unwrap(), b"mine");
        assert_eq!(std::fs::read(out).unwrap(), b"theirs");
        assert!(!part.exists());
    }
}
