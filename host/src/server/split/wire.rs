//! Whole packets over a stream, for the statement-by-statement relay: read
//! into one buffer, cut without copying, written back in batches (a result
//! set's rows go out in as few writes as the reads that brought them).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::{ConnError, Stream};
use crate::protocol::MAX_PAYLOAD_CHUNK;

/// Bytes gathered for a peer before they are written out even though more
/// of the answer is already here.
const BATCH: usize = 64 * 1024;

/// One packet: its sequence id and payload (a 16 MiB chunk at most).
#[derive(Debug, Clone)]
pub(super) struct Frame {
    pub seq: u8,
    pub payload: Bytes,
}

impl Frame {
    /// Whether a packet follows that continues this one's payload.
    pub fn continues(&self) -> bool {
        self.payload.len() == MAX_PAYLOAD_CHUNK
    }
}

/// A peer, as packets.
#[derive(Debug)]
pub(super) struct Wire {
    stream: Stream,
    read: BytesMut,
    out: BytesMut,
}

impl Wire {
    /// `stream`, with `read` the bytes already read from it.
    pub fn new(stream: Stream, read: BytesMut) -> Self {
        Self {
            stream,
            read,
            out: BytesMut::new(),
        }
    }

    /// The stream and what was read from it and not taken.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.read)
    }

    /// The next packet if it is all in the buffer.
    pub fn buffered(&mut self) -> Option<Frame> {
        let head = self.read.get(..4)?;
        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
        if self.read.len() < 4 + len {
            self.read.reserve(4 + len - self.read.len());
            return None;
        }
        let seq = self.read[3];
        self.read.advance(4);
        let payload = self.read.split_to(len).freeze();
        Some(Frame { seq, payload })
    }

    /// The next packet, reading as needed (each length is bounded by the
    /// header's three bytes: 16 MiB).
    pub async fn next(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.buffered() {
                return Ok(frame);
            }
            if self.read.capacity() - self.read.len() < 4096 {
                // A peer at rest has no buffer: it takes one once it sends
                // (its next command, most likely small).
                let more = if self.read.capacity() == 0 {
                    self.stream.readable().await;
                    1024
                } else {
                    16 * 1024
                };
                self.read.reserve(more);
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    /// Queues `frame` to be written, writing the batch when it is large.
    pub async fn push(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.queue(frame.seq, &frame.payload);
        if self.out.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues one packet (`payload` at most a chunk).
    pub fn queue(&mut self, seq: u8, payload: &[u8]) {
        debug_assert!(payload.len() <= MAX_PAYLOAD_CHUNK);
        let len = payload.len() as u32;
        self.out.reserve(4 + payload.len());
        self.out.put_slice(&len.to_le_bytes()[..3]);
        self.out.put_u8(seq);
        self.out.put_slice(payload);
    }

    /// Writes and flushes what is queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        self.out.clear();
        if self.out.capacity() > BATCH {
            // A large answer's buffer is not kept by an idle session.
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Sends one packet now.
    pub async fn send(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<()> {
        self.queue(seq, payload);
        self.flush().await
    }

    /// Drops a large read buffer once it is empty (an idle session keeps
    /// none).
    pub fn shrink(&mut self) {
        if self.read.is_empty() && self.read.capacity() > BATCH {
            self.read = BytesMut::new();
        }
    }

    /// Whether the peer is still there and silent, nothing buffered from
    /// it (see [`Stream::is_quiet`]).
    pub fn is_quiet(&self) -> bool {
        self.read.is_empty() && self.stream.is_quiet()
    }

    /// Lets both buffers go if they are empty: a client session at rest
    /// keeps none (thousands of idle sessions would hold their last
    /// answers' room).
    pub fn rest(&mut self) {
        if self.read.is_empty() {
            self.read = BytesMut::new();
        }
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
    }

    /// Closes the writing side.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
