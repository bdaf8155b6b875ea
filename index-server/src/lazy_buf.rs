//! A read buffer that holds memory only while it holds unread bytes.
//!
//! A session spends nearly all its life waiting for its next heartbeat; a
//! `tokio::io::BufReader` keeps its 8 KiB buffer through that wait, which
//! at 10,000 sessions was most of the index's memory per session (issue
//! 17: 16,320 B measured, target under 8 KiB). [`LazyBufReader`] reads
//! into a buffer on the stack and keeps on the heap only what the caller
//! did not take yet (the rest of a frame, pipelined requests), sized to
//! exactly that; once it is taken the heap buffer is freed. One `read`
//! system call still brings in up to [`READ_CHUNK`] bytes, so pipelined
//! requests are read together as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// How much one read from the socket may bring in (as `BufReader`'s
/// default capacity).
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// A buffered reader over `R` whose buffer is empty (no allocation) when
/// nothing is buffered. Reads that want at least [`READ_CHUNK`] bytes go
/// straight to `R`.
pub(crate) struct LazyBufReader<R> {
    inner: R,
    /// Bytes read from `inner` and not yet taken, from `pos` on.
    rest: Vec<u8>,
    pos: usize,
}

impl<R> LazyBufReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        LazyBufReader {
            inner,
            rest: Vec::new(),
            pos: 0,
        }
    }

    /// Whether bytes read from the socket are waiting to be taken (a
    /// pipelined request: answer it before flushing).
    pub(crate) fn has_buffered(&self) -> bool {
        self.pos < self.rest.len()
    }

    /// The stream read from.
    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Copies what is buffered into `out`; frees the buffer once it is
    /// all taken.
    fn take_buffered(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.rest.len() - self.pos);
        out.put_slice(&self.rest[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.rest.len() {
            self.rest = Vec::new();
            self.pos = 0;
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LazyBufReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.has_buffered() {
            this.take_buffered(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let got = read.filled();
                let now = got.len().min(out.remaining());
                out.put_slice(&got[..now]);
                if now < got.len() {
                    this.rest = got[now..].to_vec();
                    this.pos = 0;
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_socket_read_and_the_buffer_is_freed() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = LazyBufReader::new(rx);
        tx.write_all(b"abcdefghij").await.unwrap();
        let mut one = [0u8; 1];
        r.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"a");
        // The other nine bytes came with the same read and wait in memory
        // sized to them.
        assert!(r.has_buffered());
        assert_eq!(r.rest.capacity(), 9);
        let mut nine = [0u8; 9];
        r.read_exact(&mut nine).await.unwrap();
        assert_eq!(&nine, b"bcdefghij");
        assert!(!r.has_buffered());
        assert_eq!(r.rest.capacity(), 0, "nothing held between messages");
    }

    #[tokio::test]
    async fn a_large_read_goes_straight_through_and_a_close_reads_zero() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = LazyBufReader::new(rx);
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(r.rest.capacity(), 0);
    }
}
