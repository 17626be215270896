//! Reads that hold no buffer while they wait, with a read size that adapts
//! to the traffic, and the per-thread free list of read buffers.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedReadHalf;

/// Smallest read, and where a direction's read size starts.
pub(super) const MIN_READ: usize = 16 * 1024;
/// Largest read: a direction that keeps filling its reads (a large result
/// set, a bulk insert) grows to this, so that it moves in few syscalls.
const MAX_READ: usize = 1024 * 1024;

/// Reads what a stream has into a buffer taken only once bytes are there
/// (and given back when drained: an idle session holds no relay buffer).
/// The read size adapts: it doubles while reads come back full and halves
/// when they come back small, between [`MIN_READ`] and [`MAX_READ`].
pub(super) trait ReadSome {
    /// Reads into `buf`; 0 at end of stream.
    fn read_some(
        &mut self,
        buf: &mut BytesMut,
        size: &mut usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>>;
}

/// Plain TCP: wait for readiness first, so that no buffer is held while
/// waiting.
pub(super) async fn read_ready(
    r: &OwnedReadHalf,
    buf: &mut BytesMut,
    size: &mut usize,
) -> std::io::Result<usize> {
    loop {
        // Before every wait, including after a spurious wake-up: a read
        // that fills less than the buffer leaves the readiness set, so the
        // next wait returns at once and the read would block (on an idle
        // session, every time). An empty buffer held through the wait
        // would stay with the session for as long as it is idle.
        if buf.is_empty() && buf.capacity() > 0 {
            give_back(std::mem::take(buf));
        }
        r.readable().await?;
        if buf.capacity() == 0 {
            *buf = take_buffer(*size);
        } else {
            buf.reserve(*size);
        }
        match r.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Ok(n) => {
                adapt(size, n);
                return Ok(n);
            }
            Err(e) => return Err(e),
        }
    }
}

/// TLS: a TLS stream has no readiness of its own; the buffer is taken for
/// the read (from the free list) and given back once drained.
pub(super) async fn read_into<T: AsyncRead + Unpin>(
    r: &mut T,
    buf: &mut BytesMut,
    size: &mut usize,
) -> std::io::Result<usize> {
    if buf.is_empty() && buf.capacity() > 0 {
        give_back(std::mem::take(buf));
    }
    if buf.capacity() == 0 {
        *buf = take_buffer(*size);
    } else {
        buf.reserve(*size);
    }
    let n = r.read_buf(buf).await?;
    adapt(size, n);
    Ok(n)
}

fn adapt(size: &mut usize, n: usize) {
    if n >= *size {
        *size = (*size * 2).min(MAX_READ);
    } else if n < *size / 4 {
        *size = (*size / 2).max(MIN_READ);
    }
}

/// Read buffers of [`MIN_READ`] bytes, kept per thread for the next read:
/// a session does not hold a buffer while idle, and a busy one does not pay
/// for an allocation per read.
mod buffers {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::MIN_READ;

    /// Buffers kept per thread (at most 1 MiB).
    const KEPT: usize = 64;

    thread_local! {
        static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer with room for at least `size` bytes.
    pub fn take_buffer(size: usize) -> BytesMut {
        if size <= MIN_READ
            && let Some(b) = FREE.with(|f| f.borrow_mut().pop())
        {
            return b;
        }
        BytesMut::with_capacity(size.max(MIN_READ))
    }

    /// Returns a drained buffer for reuse on this thread.
    pub fn give_back(mut buf: BytesMut) {
        buf.clear();
        // A buffer read past with `advance` takes its whole allocation back
        // (nothing is copied: it is empty).
        buf.reserve(MIN_READ);
        // Only whole, standard-size buffers are kept; larger ones are freed.
        if buf.capacity() == MIN_READ {
            FREE.with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < KEPT {
                    f.push(buf);
                }
            });
        }
    }
}

pub(super) use buffers::give_back;
use buffers::take_buffer;
