//! A connection's socket: reads through the worker thread's scratch buffer, vectored writes of
//! the wire's pending pages, and lingering after close.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use ntex_bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::broker::Broker;
use crate::wire;

/// Bytes one read takes at most, into the worker thread's scratch buffer (see `Io::fill`).
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// Pages of pending output handed to one vectored write.
pub(super) const WRITE_SLICES: usize = 64;
/// How long a closed connection keeps reading (and discarding) what its client still sends.
pub(super) const LINGER: Duration = Duration::from_secs(2);

thread_local! {
    /// Each worker thread reads into this and copies out what arrived, so that a connection
    /// waiting for input holds no buffer: an idle connection costs its state, not 64 KiB.
    pub(super) static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// One read from `stream` through the thread's scratch buffer, appended to `buf`. Reading and
/// writing never overlap on a connection, so the stream is not split.
pub(super) fn poll_read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut rb = ReadBuf::new(&mut scratch[..]);
        match Pin::new(stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                buf.extend_from_slice(filled);
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// The first pages of `pages` as slices for one vectored write; how many.
pub(super) fn io_slices<'a>(pages: &'a ntex_bytes::BytePages, slices: &mut [IoSlice<'a>]) -> usize {
    let mut count = 0;
    for (slot, page) in slices.iter_mut().zip(pages.iter()) {
        *slot = IoSlice::new(page);
        count += 1;
    }
    count
}

pub(super) struct Io<S> {
    pub(super) stream: S,
    pub(super) buf: BytesMut,
    pub(super) broker: Arc<Broker>,
}

impl<S> Io<S> {
    /// Every whole packet has been decoded: let go of a large read buffer, so that a connection
    /// that goes idle after a burst keeps only a small one.
    pub(super) fn release_buf(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 1024 {
            self.buf = BytesMut::new();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    /// Read more bytes; `false` when the peer closed the stream.
    pub(super) async fn fill(&mut self) -> std::io::Result<bool> {
        let Io { stream, buf, .. } = self;
        let n = poll_fn(|cx| poll_read_into(stream, buf, cx)).await?;
        if n == 0 {
            return Ok(false);
        }
        self.broker
            .metrics
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Lingering close, after the write side is shut: read and discard what the client still
    /// sends, until it closes or `LINGER` passes. Closing a socket with unread input resets the
    /// connection, and a reset can destroy the DISCONNECT just written before the client reads
    /// it (a client exceeding Receive Maximum is still sending when it is told 0x93); the
    /// sender of a DISCONNECT closes the connection [MQTT-3.14.4-2], this only lets it arrive.
    pub(super) async fn linger(&mut self) {
        let Io { stream, buf, .. } = self;
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = poll_fn(|cx| poll_read_into(stream, buf, cx)).await {
                buf.clear();
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Write everything pending, up to `WRITE_SLICES` pages per (vectored) write call.
    pub(super) async fn flush(&mut self, wire: &mut wire::Wire) -> std::io::Result<()> {
        let Some(pages) = wire.pending() else {
            return Ok(());
        };
        let mut written = 0;
        while !pages.is_empty() {
            let stream = &mut self.stream;
            let n = poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let count = io_slices(pages, &mut slices);
                Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count])
            })
            .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            pages.advance_to(n);
            written += n;
        }
        // The page list goes back to the thread's cache: kept, it would hold its last page,
        // 4 KiB, and its ring of pages, about 300 bytes, per idle connection.
        wire.written();
        self.stream.flush().await?;
        self.broker
            .metrics
            .bytes_sent
            .fetch_add(written as u64, Ordering::Relaxed);
        Ok(())
    }
}
