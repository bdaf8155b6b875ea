//! Putting a chunk's bytes on an upload connection.
//!
//! On Linux a chunk whose pages are in the page cache goes out with
//! `sendfile`: the kernel hands the file's pages to the socket, so the bytes
//! are never copied through this process and no blocking thread is woken.
//! The header is sent with `MSG_MORE`, so it leaves in the same segment as
//! the first bytes of the chunk rather than as a packet of its own.
//!
//! `sendfile` would block the async worker on a disk read if the pages were
//! not cached, so each chunk is probed first (a one-byte `RWF_NOWAIT` read
//! at its start and at its end); an uncached chunk is read on a blocking
//! thread and written from memory, as is everything on other systems and
//! on file systems that cannot `sendfile`.

use std::io;
use std::sync::Arc;

use common::peer_proto::PeerResponse;
use common::secure::SecureWrite;
use common::wire::{self, WireError};
use tokio::io::BufWriter;
use tokio::net::tcp::OwnedWriteHalf;

use crate::library::{OpenHolding, ReadChunkError};
use crate::rate::{write_limited, RateLimiter, PIECE};

/// Sends `header` and then `len` bytes of `handle`'s file from `offset`.
/// `buf` is scratch for the fallback. On an encrypted connection the bytes
/// are read (at once from the page cache, else on a blocking thread) and
/// go through the encrypting writer; `sendfile` is for clear text only.
pub async fn send_chunk(
    writer: &mut BufWriter<SecureWrite<OwnedWriteHalf>>,
    header: &PeerResponse,
    handle: &Arc<OpenHolding>,
    offset: u64,
    len: usize,
    limit: Option<&RateLimiter>,
    buf: &mut Vec<u8>,
) -> Result<(), WireError> {
    #[cfg(target_os = "linux")]
    let cached = is_cached(handle.file(), offset, len);
    #[cfg(not(target_os = "linux"))]
    let cached = false;
    if !writer.get_ref().is_clear() {
        wire::write_message(writer, header).await?;
        let mut data = std::mem::take(buf);
        let data = if cached {
            // From the page cache: a copy, no disk wait.
            handle.read_at(offset, len, &mut data)?;
            data
        } else {
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || {
                handle.read_at(offset, len, &mut data).map(|_| data)
            })
            .await
            .map_err(io::Error::other)??
        };
        write_limited(writer, &data, limit).await?;
        *buf = data;
        // The chunk's last message goes out now, as `sendfile` would send
        // it: left in the writer it would wait for the next chunk's turn.
        tokio::io::AsyncWriteExt::flush(writer).await?;
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    let (offset, len) = if cached {
        use tokio::io::AsyncWriteExt;
        writer.flush().await?; // earlier answers go first
        let stream = writer.get_ref().get_ref().as_ref();
        let frame = common::frame::encode_frame(header)?;
        send_more(stream, &frame).await?;
        match sendfile_range(stream, handle, offset, len, limit).await? {
            None => return Ok(()),
            // This file system cannot sendfile: the rest goes the slow way.
            Some(at) => (at, len - (at - offset) as usize),
        }
    } else {
        wire::write_message(writer, header).await?;
        (offset, len)
    };
    #[cfg(not(target_os = "linux"))]
    wire::write_message(writer, header).await?;
    let handle = handle.clone();
    let mut data = std::mem::take(buf);
    let data =
        tokio::task::spawn_blocking(move || handle.read_at(offset, len, &mut data).map(|_| data))
            .await
            .map_err(io::Error::other)??;
    write_limited(writer, &data, limit).await?;
    *buf = data;
    Ok(())
}

/// Sends `bytes` with `MSG_MORE`: the kernel holds them for what follows.
#[cfg(target_os = "linux")]
async fn send_more(stream: &tokio::net::TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        let result = stream.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::net::send(stream, &bytes[sent..], rustix::net::SendFlags::MORE)
                .map_err(io::Error::from)
        });
        match result {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends the range with `sendfile`; `Some(position)` if the file system
/// does not support it (the rest is then still to send).
#[cfg(target_os = "linux")]
async fn sendfile_range(
    stream: &tokio::net::TcpStream,
    handle: &OpenHolding,
    offset: u64,
    len: usize,
    limit: Option<&RateLimiter>,
) -> io::Result<Option<u64>> {
    use rustix::io::Errno;
    let mut at = offset;
    let end = offset + len as u64;
    while at < end {
        let piece = match limit {
            Some(limit) => {
                let piece = (end - at).min(PIECE as u64);
                limit.acquire(piece).await;
                piece
            }
            None => end - at,
        };
        let piece_end = at + piece;
        while at < piece_end {
            stream.writable().await?;
            let want = (piece_end - at) as usize;
            let result = stream.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, handle.file(), Some(&mut at), want)
                    .map_err(io::Error::from)
            });
            match result {
                // The file is shorter than when it was checked.
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        ReadChunkError::Changed,
                    ))
                }
                Ok(_) => {} // `at` has moved on
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e)
                    if [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP]
                        .iter()
                        .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
                {
                    return Ok(Some(at))
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(None)
}

/// Whether the first and last byte of the range are in the page cache
/// (a cheap stand-in for the whole range, which readahead fills together).
#[cfg(target_os = "linux")]
fn is_cached(file: &std::fs::File, offset: u64, len: usize) -> bool {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    if len == 0 {
        return true;
    }
    let mut probe = [0u8; 1];
    [offset, offset + len as u64 - 1].into_iter().all(|at| {
        match preadv2(
            file,
            &mut [io::IoSliceMut::new(&mut probe)],
            at,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(_) => true,
            // Kernels or file systems without RWF_NOWAIT cannot tell; their
            // pages are usually cached right after the check anyway.
            Err(Errno::OPNOTSUPP) | Err(Errno::INVAL) => true,
            Err(_) => false,
        }
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_probe_tells_cached_pages_from_dropped_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![5u8; 3 * common::CHUNK_SIZE]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = std::fs::read(&path).unwrap();
        assert!(is_cached(&file, 0, common::CHUNK_SIZE));
        assert!(is_cached(
            &file,
            2 * common::CHUNK_SIZE as u64,
            common::CHUNK_SIZE
        ));
        assert!(is_cached(&file, 0, 0));

        // Once its pages are written back and dropped, the probe must say
        // so (tmpfs keeps every page in memory: nothing to drop there).
        let on_tmpfs = rustix::fs::fstatfs(&file).is_ok_and(|s| s.f_type == 0x0102_1994);
        if !on_tmpfs {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .sync_all()
                .unwrap();
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            assert!(!is_cached(&file, 0, common::CHUNK_SIZE));
        }
    }
}
