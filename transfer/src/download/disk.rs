//! Chunk buffers and the part file's writer.
//!
//! Received chunks land in buffers from a small pool ([`BufferPool`]), so a
//! download allocates a handful of buffers instead of one per chunk (a fresh
//! 256 KiB allocation is a new mapping: page faults and zeroing on every
//! chunk).
//!
//! Large downloads are written past the page cache (`O_DIRECT`,
//! [`ChunkWriter`]). On the machines this was measured on, buffered writes
//! of a fresh gigabyte cost the process about 0.3 s more CPU (page
//! allocation, delayed allocation) and left the `fsync` before publishing a
//! quarter of a second of write-back; with direct writes the data is on the
//! device as each chunk is written. Direct I/O needs the buffer, the
//! offset and the length aligned to the device's block: chunks are 256 KiB at
//! 256 KiB offsets and the pool's buffers start on a 4 KiB boundary. The
//! last chunk of a file whose size is not a multiple of 4 KiB goes through
//! the page cache, and a file system that refuses direct I/O (tmpfs, some
//! network file systems) gets buffered writes throughout.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing::debug;

/// Alignment of direct writes: the largest logical block size in common use.
pub const DIRECT_ALIGN: usize = 4096;

/// A chunk-sized buffer whose data starts on a [`DIRECT_ALIGN`] boundary
/// (when the allocator allows; writes check before going direct).
pub struct ChunkBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl ChunkBuf {
    fn new() -> Self {
        let raw = vec![0u8; common::CHUNK_SIZE + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        // align_offset may decline to compute; the data then starts at 0 and
        // is written through the page cache.
        let start = if start < DIRECT_ALIGN { start } else { 0 };
        ChunkBuf { raw, start, len: 0 }
    }

    /// The data, `len` bytes, for filling. Panics if `len` exceeds a chunk
    /// (callers check lengths from the wire against the hash list first).
    pub fn fill(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= common::CHUNK_SIZE, "chunk of {len} bytes");
        self.len = len;
        &mut self.raw[self.start..self.start + len]
    }

    pub fn data(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// Recycles chunk buffers between the sources (which fill them) and the
/// verifier threads (which are done with them once the chunk is written).
pub struct BufferPool {
    free: Mutex<Vec<ChunkBuf>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` idle buffers.
    pub fn new(keep: usize) -> Self {
        BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    pub fn take(&self) -> ChunkBuf {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(ChunkBuf::new)
    }

    pub fn give(&self, buf: ChunkBuf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// Writes chunks into the part file, directly where it can.
pub struct ChunkWriter {
    buffered: File,
    direct: Option<File>,
    /// Cleared when the file system refuses a direct write.
    direct_works: AtomicBool,
}

impl ChunkWriter {
    /// `buffered` is the part file as opened for resuming; with `direct`, a
    /// second descriptor is opened on `path` with `O_DIRECT` if the file
    /// system allows it.
    pub fn new(buffered: File, path: &Path, direct: bool) -> Self {
        let direct = direct.then(|| open_direct(path)).flatten();
        ChunkWriter {
            direct_works: AtomicBool::new(direct.is_some()),
            buffered,
            direct,
        }
    }

    /// Whether chunk writes currently bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct_works.load(Ordering::Relaxed)
    }

    /// Writes `data` at `offset`; blocking.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            if is_aligned(data, offset) && self.is_direct() {
                match direct.write_all_at(data, offset) {
                    Ok(()) => return Ok(()),
                    // EINVAL: this file system (or its block size) refuses
                    // direct I/O after all; the page cache takes every write
                    // from here on, including this one again.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        debug!(error = %e, "direct write refused; writing through the page cache");
                        self.direct_works.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.buffered.write_all_at(data, offset)
    }

    /// Writes `slices` back to back from `offset`; blocking. Direct, with
    /// one vectored write, when every slice is aligned.
    pub fn write_run_at(&self, slices: &[&[u8]], offset: u64) -> io::Result<()> {
        if let [one] = slices {
            return self.write_at(one, offset);
        }
        if let Some(direct) = &self.direct {
            if self.is_direct() && slices.iter().all(|s| is_aligned(s, 0)) {
                let total: usize = slices.iter().map(|s| s.len()).sum();
                let iov: Vec<io::IoSlice> = slices.iter().map(|s| io::IoSlice::new(s)).collect();
                match rustix::io::pwritev(direct, &iov, offset) {
                    Ok(n) if n == total => return Ok(()),
                    // A short write (rare: a signal, a full disk): the
                    // rest, slice by slice, says what went wrong.
                    Ok(_) => {}
                    Err(rustix::io::Errno::INVAL) => {
                        debug!("direct write refused; writing through the page cache");
                        self.direct_works.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut at = offset;
        for slice in slices {
            self.write_at(slice, at)?;
            at += slice.len() as u64;
        }
        Ok(())
    }

    /// The part file (for syncing and publishing).
    pub fn file(&self) -> &File {
        &self.buffered
    }

    pub fn into_file(self) -> File {
        self.buffered
    }
}

/// Whether a direct write of `data` at `offset` meets the alignment rules.
fn is_aligned(data: &[u8], offset: u64) -> bool {
    (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && data.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            debug!(path = %path.display(), error = %e, "no direct I/O here; writing through the page cache");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_buffers_are_aligned_and_recycled() {
        let pool = BufferPool::new(1);
        let mut a = pool.take();
        a.fill(100).copy_from_slice(&[7u8; 100]);
        assert_eq!(a.data(), &[7u8; 100][..]);
        assert_eq!(a.data().as_ptr() as usize % DIRECT_ALIGN, 0);
        let where_a = a.data().as_ptr();
        pool.give(a);
        pool.give(pool.take()); // back and forth keeps one
        let b = pool.take();
        assert_eq!(b.data().as_ptr(), where_a, "the idle buffer is reused");
        let c = pool.take(); // the pool is empty: a new one
        assert_ne!(c.data().as_ptr(), where_a);
        pool.give(b);
        pool.give(c); // over `keep`: dropped
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }

    fn sized_file(path: &Path, size: usize) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.set_len(size as u64).unwrap();
        file
    }

    #[test]
    fn writes_land_whether_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let size = common::CHUNK_SIZE * 2 + 1000; // the tail is unaligned
        let file = sized_file(&path, size);
        for direct in [true, false] {
            let writer = ChunkWriter::new(file.try_clone().unwrap(), &path, direct);
            if !direct {
                assert!(!writer.is_direct());
            }
            let pool = BufferPool::new(4);
            let mut expected = Vec::new();
            for (i, len) in [common::CHUNK_SIZE, common::CHUNK_SIZE, 1000]
                .into_iter()
                .enumerate()
            {
                let mut buf = pool.take();
                let byte = i as u8 + if direct { 1 } else { 11 };
                buf.fill(len).fill(byte);
                writer
                    .write_at(buf.data(), (i * common::CHUNK_SIZE) as u64)
                    .unwrap();
                expected.extend(std::iter::repeat_n(byte, len));
                pool.give(buf);
            }
            writer.file().sync_all().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected, "direct: {direct}");
        }
    }

    #[test]
    fn runs_of_chunks_land_in_one_write_or_slice_by_slice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let chunk = common::CHUNK_SIZE;
        let size = chunk * 5 + 1000; // the tail is unaligned
        let file = sized_file(&path, size);
        let writer = ChunkWriter::new(file, &path, true);
        let pool = BufferPool::new(8);
        let bufs: Vec<ChunkBuf> = [chunk, chunk, chunk, chunk, chunk, 1000]
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let mut b = pool.take();
                b.fill(len).fill(i as u8 + 1);
                b
            })
            .collect();
        let data: Vec<&[u8]> = bufs.iter().map(|b| b.data()).collect();
        // Chunks 1-3 together (aligned: one vectored write where direct
        // I/O works), chunk 0 alone, then 4 with the unaligned tail.
        writer.write_run_at(&data[1..4], chunk as u64).unwrap();
        writer.write_run_at(&data[..1], 0).unwrap();
        writer.write_run_at(&data[4..], 4 * chunk as u64).unwrap();
        writer.file().sync_all().unwrap();
        let expected: Vec<u8> = data.concat();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
