// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A write buffer that holds memory only while it holds data.
//!
//! [`LazyBufWriter`] coalesces small writes like tokio's `BufWriter` (same rules: a write that
//! does not fit flushes first, a write at least as large as the buffer goes straight through),
//! but allocates its buffer on the first buffered write and releases it once a flush has
//! written it out. A connection that is idle between requests, or connected and silent, then
//! holds no write buffer: with many mostly idle connections this buffer was a large part of
//! what each one costs.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffers writes to `W` up to `capacity` bytes; see the module documentation.
#[derive(Debug)]
pub(crate) struct LazyBufWriter<W> {
    inner: W,
    /// The buffered bytes; unallocated while nothing is buffered.
    buf: Vec<u8>,
    /// How much of `buf` a flush in progress has already written.
    written: usize,
    capacity: usize,
}

impl<W: AsyncWrite + Unpin> LazyBufWriter<W> {
    /// A writer that buffers up to `capacity` bytes; 0 writes straight through.
    pub(crate) fn with_capacity(capacity: usize, inner: W) -> Self {
        LazyBufWriter {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity,
        }
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Return the inner writer. Anything still buffered is lost.
    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// Write out everything buffered, then release the buffer.
    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write the buffered data",
                    )));
                }
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Append `data`, which the caller has checked fits in the buffer.
    fn buffer(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.capacity);
        }
        self.buf.extend_from_slice(data);
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LazyBufWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > this.capacity {
            ready!(this.poll_flush_buf(cx))?;
        }
        if data.len() >= this.capacity {
            Pin::new(&mut this.inner).poll_write(cx, data)
        } else {
            this.buffer(data);
            Poll::Ready(Ok(data.len()))
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total = bufs
            .iter()
            .fold(0usize, |total, b| total.saturating_add(b.len()));
        if this.buf.len() + total > this.capacity {
            ready!(this.poll_flush_buf(cx))?;
        }
        if total >= this.capacity {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        } else {
            for b in bufs {
                this.buffer(b);
            }
            Poll::Ready(Ok(total))
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for LazyBufWriter<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio_test::io::Builder;

    #[tokio::test]
    async fn small_writes_are_coalesced_until_flush_and_the_buffer_is_released() {
        let mock = Builder::new().write(b"head body").build();
        let mut w = LazyBufWriter::with_capacity(16, mock);
        assert_eq!(w.buf.capacity(), 0, "nothing allocated before the first write");
        w.write_all(b"head ").await.unwrap();
        w.write_all(b"body").await.unwrap();
        assert_eq!(w.buf.capacity(), 16);
        w.flush().await.unwrap();
        assert_eq!(w.buf.capacity(), 0, "released once written out");
    }

    #[tokio::test]
    async fn a_write_that_does_not_fit_flushes_first_and_a_large_one_goes_straight_through() {
        let mock = Builder::new()
            .write(b"0123456789")
            .write(b"abcdefghijklmnop")
            .write(b"xyz")
            .build();
        let mut w = LazyBufWriter::with_capacity(16, mock);
        w.write_all(b"0123456789").await.unwrap();
        w.write_all(b"abcdefghijklmnop").await.unwrap();
        assert_eq!(w.buf.capacity(), 0, "the large write was not copied");
        w.write_all(b"xyz").await.unwrap();
        w.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn vectored_writes_are_buffered_when_they_fit() {
        let mock = Builder::new().write(b"ab").write(b"cd").build();
        let mut w = LazyBufWriter::with_capacity(8, mock);
        let n = w
            .write_vectored(&[io::IoSlice::new(b"a"), io::IoSlice::new(b"b")])
            .await
            .unwrap();
        assert_eq!(n, 2);
        w.flush().await.unwrap();
        // Too large for the buffer: handed to the inner writer, which takes the first slice.
        let n = w
            .write_vectored(&[io::IoSlice::new(b"cd"), io::IoSlice::new(b"efghijk")])
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn zero_capacity_writes_straight_through() {
        let mock = Builder::new().write(b"a").write(b"b").build();
        let mut w = LazyBufWriter::with_capacity(0, mock);
        w.write_all(b"a").await.unwrap();
        w.write_all(b"b").await.unwrap();
        assert_eq!(w.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_partial_flush_resumes_where_it_stopped() {
        let mock = Builder::new().write(b"abc").write(b"def").build();
        let mut w = LazyBufWriter::with_capacity(16, mock);
        w.write_all(b"abcdef").await.unwrap();
        // The mock accepts "abc" first, then "def": the flush loops until all is written.
        w.flush().await.unwrap();
        assert_eq!(w.written, 0);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_unwritten_bytes() {
        let mock = Builder::new()
            .write(b"ab")
            .write_error(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
            .build();
        let mut w = LazyBufWriter::with_capacity(16, mock);
        w.write_all(b"abcd").await.unwrap();
        assert!(w.flush().await.is_err());
        assert_eq!(&w.buf[w.written..], b"cd");
    }
}
