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
pub fn open_part(path: &Path, info: &ContentInfo) -> io::Result<(File, Vec<bool>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
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
        reserve(&file, info.size)?;
    }
    Ok((file, have))
}

/// Sizes a new part file, reserving its blocks where the file system can:
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
