//! Moves bytes between a logged-in client and its backend session.
//!
//! Both directions are byte streams: one read is not one packet, and
//! clients pipeline. The client-to-backend direction walks packet headers
//! (without copying) to find command boundaries, so that COM_QUIT closes the
//! backend cleanly and COM_CHANGE_USER stops the relay: the
//! backend-to-client direction stops once it has written what it read
//! (it is then waiting for the backend, which has answered every earlier
//! command of a client that waits for its answers, as clients do before
//! COM_CHANGE_USER), and the session gets both streams back to handle it.
//!
//! The backend-to-client direction is opaque. Once an answer fills a read
//! and both sides are plain TCP, it switches to `splice(2)` through a pipe
//! of its own (see [`super::splice`]): large results then pass from socket
//! to socket without being copied through the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use crate::conn::Stream;

use super::codes;
use super::kill::{self, Registry};
use super::splice::Pipe;
use crate::metrics::Metrics;
use crate::protocol::{Awaiting, CommandScanner, ErrPacket, ScanEvent, encode_packet};

/// Smallest read, and where a direction's read size starts.
const MIN_READ: usize = 16 * 1024;
/// Largest read: a direction that keeps filling its reads (a large result
/// set, a bulk insert) grows to this, so that it moves in few syscalls.
const MAX_READ: usize = 1024 * 1024;
/// How long a backend session may take to close once its client has left
/// (it answers what the client sent before, to no one).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// COM_QUIT, as a whole packet.
const COM_QUIT_PACKET: [u8; 5] = [1, 0, 0, 0, 0x01];

/// How a session closed by `idle_timeout_ms` ends.
pub const IDLE_END: &str = "idle timeout";
/// How a session closed by `query_timeout_ms` ends.
pub const QUERY_TIMEOUT_END: &str = "query timeout";
/// How a relay stopped by COM_CHANGE_USER ends.
pub const CHANGE_USER_END: &str = "COM_CHANGE_USER";
/// How a session whose client sent COM_QUIT ends.
pub const QUIT_END: &str = "client quit";

/// What the session does once the relay is over.
#[derive(Debug)]
pub enum After {
    /// The session is over.
    Close,
    /// The client sent COM_CHANGE_USER: the streams, and the client's
    /// bytes from that command on.
    ChangeUser {
        /// The client's stream.
        client: Stream,
        /// What was read from the client, from COM_CHANGE_USER on.
        client_rest: BytesMut,
        /// The backend's stream, nothing pending on it.
        backend: Stream,
    },
    /// The client sent COM_QUIT and the backend session may be kept
    /// (`Options::keep_backend`): the backend's stream, not told to quit,
    /// for [`super::reuse`] to check and keep.
    Quit {
        /// The backend's stream.
        backend: Stream,
    },
}

/// When a relay gives up on a quiet session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Close the session after this long without traffic while no command
    /// waits for its answer (`idle_timeout_ms`).
    pub idle: Option<Duration>,
    /// Close the session after this long without traffic while a command
    /// waits for its answer (`query_timeout_ms`).
    pub query: Option<Duration>,
}

impl Timeouts {
    /// The configured ones (0: none).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Self {
            idle: ms(config.idle_timeout_ms),
            query: ms(config.query_timeout_ms),
        }
    }
}

/// How to relay.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// When to give up on a quiet session.
    pub timeouts: Timeouts,
    /// Where relayed bytes are counted.
    pub metrics: &'a Metrics,
    /// Where sessions are, for `KILL <greeting id>`, and this session's
    /// backend server.
    pub kills: (&'a Registry, SocketAddr),
    /// On COM_QUIT, stop at a safe point and hand the backend's stream
    /// back (`After::Quit`) instead of closing the backend session.
    pub keep_backend: bool,
}

/// What a relay did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayStats {
    /// Bytes read from the client and sent to the backend.
    pub from_client: u64,
    /// Bytes read from the backend and sent to the client.
    pub to_client: u64,
    /// How the session ended.
    pub end: &'static str,
}

/// Relays until either side is done. `client_rest` and `backend_rest` are
/// bytes already read from each side during login.
pub async fn relay(
    client: Stream,
    client_rest: BytesMut,
    backend: Stream,
    backend_rest: BytesMut,
    options: Options<'_>,
) -> (RelayStats, After) {
    let (mut client_r, mut client_w) = halves(client);
    let (mut backend_r, mut backend_w) = halves(backend);
    let (stats, rest) = relay_halves(
        (&mut client_r, &mut client_w),
        client_rest,
        (&mut backend_r, &mut backend_w),
        backend_rest,
        options,
    )
    .await;
    let after = match rest {
        Some(_) if stats.end == QUIT_END => match rejoin(backend_r, backend_w) {
            Some(backend) => After::Quit { backend },
            None => After::Close,
        },
        Some(client_rest) => match (rejoin(client_r, client_w), rejoin(backend_r, backend_w)) {
            (Some(client), Some(backend)) => After::ChangeUser {
                client,
                client_rest,
                backend,
            },
            _ => After::Close,
        },
        None => After::Close,
    };
    (stats, after)
}

/// The reading half of a side: plain TCP (read on readiness) or TLS.
enum Reader {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The writing half of a side.
enum Writer {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

/// The stream the halves were split from.
fn rejoin(r: Reader, w: Writer) -> Option<Stream> {
    match (r, w) {
        (Reader::Tcp(r), Writer::Tcp(w)) => r.reunite(w).ok().map(Stream::Tcp),
        (Reader::Tls(r), Writer::Tls(w)) => Some(r.unsplit(w)),
        _ => None,
    }
}

fn halves(stream: Stream) -> (Reader, Writer) {
    match stream {
        Stream::Tcp(tcp) => {
            let (r, w) = tcp.into_split();
            (Reader::Tcp(r), Writer::Tcp(w))
        }
        other => {
            let (r, w) = tokio::io::split(other);
            (Reader::Tls(r), Writer::Tls(w))
        }
    }
}

impl ReadSome for Reader {
    async fn read_some(&mut self, buf: &mut BytesMut, size: &mut usize) -> std::io::Result<usize> {
        match self {
            Self::Tcp(r) => read_ready(r, buf, size).await,
            Self::Tls(r) => read_into(r, buf, size).await,
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            Self::Tls(w) => std::pin::Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => std::pin::Pin::new(w).poll_flush(cx),
            Self::Tls(w) => std::pin::Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            Self::Tls(w) => std::pin::Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The relay over the two halves of each side.
async fn relay_halves(
    (client_r, client_w): (&mut Reader, &mut Writer),
    client_rest: BytesMut,
    (backend_r, backend_w): (&mut Reader, &mut Writer),
    backend_rest: BytesMut,
    options: Options<'_>,
) -> (RelayStats, Option<BytesMut>) {
    let change_user = Notify::new();
    let from_client = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    // Reads in either direction, and what the backend owes the client
    // ([`Awaiting`], set by what the client sent, cleared by any byte
    // from the backend): what the watchdog looks at.
    let moves = AtomicU64::new(0);
    let awaiting = AtomicU16::new(bits(Awaiting::Nothing));
    let backend_addr = options.kills.1;
    let metrics = options.metrics;
    let (end, rest) = {
        let up = async {
            let mut buf = client_rest;
            let mut up_read = MIN_READ;
            let mut scanner = CommandScanner::new();
            let end = loop {
                let (n, event) = scanner.scan(&buf);
                if n > 0 {
                    // Flushed: a TLS writer may keep records back when the
                    // socket would block (a no-op for plain TCP).
                    if write_flushed(backend_w, &buf[..n]).await.is_err() {
                        break "backend write failed";
                    }
                    from_client.fetch_add(n as u64, Ordering::Relaxed);
                    metrics.bytes_from_clients.add(n as u64);
                    buf.advance(n);
                    awaiting.store(bits(scanner.awaiting()), Ordering::Relaxed);
                }
                match event {
                    Some(ScanEvent::Kill) => {
                        let len = 4 + packet_len(&buf);
                        if buf.len() >= len {
                            // The whole statement is here (it is short).
                            let (registry, backend) = options.kills;
                            let sent = match kill::translate(&buf[4..len], backend, registry) {
                                Some(kill::Translated { payload, found }) => {
                                    if found {
                                        metrics.kills_translated.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        metrics.kills_unknown.fetch_add(1, Ordering::Relaxed);
                                    }
                                    let mut packet = BytesMut::with_capacity(4 + payload.len());
                                    encode_packet(0, &payload, &mut packet);
                                    write_flushed(backend_w, &packet).await
                                }
                                None => write_flushed(backend_w, &buf[..len]).await,
                            };
                            if sent.is_err() {
                                break "backend write failed";
                            }
                            from_client.fetch_add(len as u64, Ordering::Relaxed);
                            metrics.bytes_from_clients.add(len as u64);
                            buf.advance(len);
                            awaiting.store(bits(Awaiting::Answer(1)), Ordering::Relaxed);
                            continue;
                        }
                    }
                    Some(ScanEvent::Quit) if options.keep_backend => {
                        // Stopped as for COM_CHANGE_USER: the backend
                        // session is not told to quit.
                        change_user.notify_one();
                        return (QUIT_END, Some(buf));
                    }
                    Some(ScanEvent::Quit) => break QUIT_END,
                    Some(ScanEvent::ChangeUser) => {
                        change_user.notify_one();
                        return (CHANGE_USER_END, Some(buf));
                    }
                    None => {}
                }
                match client_r.read_some(&mut buf, &mut up_read).await {
                    Ok(0) => break "client closed",
                    Ok(_) => {
                        moves.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break "client read failed",
                }
            };
            // Close the backend session politely; it answers what came before,
            // then closes its side, which ends the other direction.
            let _ = backend_w.write_all(&COM_QUIT_PACKET).await;
            let _ = backend_w.shutdown().await;
            (end, None)
        };

        let down = async {
            let mut buf = backend_rest;
            let mut down_read = MIN_READ;
            // Set once a large answer shows up, if both sides are plain TCP.
            let mut pipe: Option<Pipe> = None;
            let end = loop {
                if !buf.is_empty() {
                    if write_flushed(client_w, &buf).await.is_err() {
                        break "client write failed";
                    }
                    to_client.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    metrics.bytes_to_clients.add(buf.len() as u64);
                    buf.clear();
                }
                if let (Some(pipe), Reader::Tcp(from), Writer::Tcp(to)) =
                    (&mut pipe, &*backend_r, &*client_w)
                {
                    if buf.capacity() > 0 {
                        give_back(std::mem::take(&mut buf));
                    }
                    // Everything read has been written: a safe point to
                    // stop at for COM_CHANGE_USER.
                    let filled = tokio::select! {
                        biased;
                        () = change_user.notified() => return CHANGE_USER_END,
                        filled = pipe.fill(from.as_ref()) => filled,
                    };
                    let n = match filled {
                        Ok(0) => break "backend closed",
                        Ok(n) => n,
                        Err(_) => break "backend read failed",
                    };
                    moves.fetch_add(1, Ordering::Relaxed);
                    awaiting.store(bits(Awaiting::Nothing), Ordering::Relaxed);
                    if pipe.drain(to.as_ref()).await.is_err() {
                        break "client write failed";
                    }
                    to_client.fetch_add(n as u64, Ordering::Relaxed);
                    metrics.bytes_to_clients.add(n as u64);
                    continue;
                }
                // As above, a safe point for COM_CHANGE_USER.
                let read = tokio::select! {
                    biased;
                    () = change_user.notified() => return CHANGE_USER_END,
                    read = backend_r.read_some(&mut buf, &mut down_read) => read,
                };
                match read {
                    Ok(0) => break "backend closed",
                    Ok(n) => {
                        moves.fetch_add(1, Ordering::Relaxed);
                        awaiting.store(bits(Awaiting::Nothing), Ordering::Relaxed);
                        if n >= MIN_READ && pipe.is_none() && splices(backend_r, client_w) {
                            // A large answer: the rest of it (and of later
                            // ones) moves by splice(2), kernel to kernel.
                            // Without a pipe, reads go on as before.
                            pipe = Pipe::new()
                                .inspect_err(|e| tracing::debug!(error = %e, "no pipe for splice"))
                                .ok();
                        }
                    }
                    Err(_) => break "backend read failed",
                }
            };
            if end.starts_with("backend")
                && let Awaiting::Answer(seq) = unbits(awaiting.load(Ordering::Relaxed))
            {
                // Gone before any of the answer a command waits for: the
                // client gets an ERR in its place rather than a bare close.
                tracing::warn!(backend = %backend_addr, "backend session lost while a command waited for its answer");
                let _ = answer_with(client_w, seq, codes::backend_lost(backend_addr)).await;
            }
            let _ = client_w.shutdown().await;
            end
        };

        let watch = async {
            match options.timeouts {
                Timeouts {
                    idle: None,
                    query: None,
                } => std::future::pending().await,
                // Boxed: only sessions with a timeout pay for its timer.
                timeouts => Box::pin(watch(timeouts, &moves, &awaiting)).await,
            }
        };

        tokio::pin!(up, down, watch);
        tokio::select! {
            // The backend is gone or the client cannot be written: done.
            end = &mut down => {
                if end == CHANGE_USER_END {
                    // Only after `up` stopped for it (not seen here yet).
                    up.await
                } else {
                    (end, None)
                }
            }
            // The client is done sending: let the backend finish and close
            // (or, for COM_CHANGE_USER, stop at a safe point), within the
            // timeouts; a client that left waits for no answer, so its
            // backend session gets [`CLOSE_GRACE`] to close.
            (end, rest) = &mut up => {
                let grace = async {
                    if rest.is_some() {
                        std::future::pending().await
                    } else {
                        tokio::time::sleep(CLOSE_GRACE).await
                    }
                };
                tokio::select! {
                    down_end = &mut down => {
                        if rest.is_some() && down_end != CHANGE_USER_END {
                            // The backend went away meanwhile.
                            (down_end, None)
                        } else {
                            (end, rest)
                        }
                    }
                    timed_out = &mut watch => (timed_out, None),
                    () = grace => (end, None),
                }
            }
            end = &mut watch => (end, None),
        }
    };
    if end == QUERY_TIMEOUT_END {
        // The backend owes an answer and sends nothing: its session is
        // dropped (not told to quit: it is not listening), and the client
        // gets an ERR in place of the answer if none of it has arrived.
        let timeout_ms = options.timeouts.query.unwrap_or_default().as_millis() as u64;
        tracing::warn!(backend = %backend_addr, query_timeout_ms = timeout_ms, "the backend sent nothing for query_timeout_ms while a command waited; closing the session");
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = backend_w.shutdown().await;
            if let Awaiting::Answer(seq) = unbits(awaiting.load(Ordering::Relaxed)) {
                let _ = answer_with(
                    client_w,
                    seq,
                    codes::query_timeout(backend_addr, timeout_ms),
                )
                .await;
            }
            let _ = client_w.shutdown().await;
        })
        .await;
    }
    if end == IDLE_END {
        // Both directions are dropped at a command boundary: close the
        // backend session politely, then the client (as a server closing
        // an idle connection does).
        tracing::info!("session idle for too long; closing");
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = backend_w.write_all(&COM_QUIT_PACKET).await;
            let _ = backend_w.shutdown().await;
            let _ = client_w.shutdown().await;
        })
        .await;
    }
    let stats = RelayStats {
        from_client: from_client.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
        end,
    };
    (stats, rest)
}

/// The payload length in a packet header at the start of `buf` (which has
/// at least the 4 header bytes).
fn packet_len(buf: &[u8]) -> usize {
    usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16
}

/// Whether the backend-to-client direction can splice: plain TCP at both
/// ends.
fn splices(from: &Reader, to: &Writer) -> bool {
    matches!((from, to), (Reader::Tcp(_), Writer::Tcp(_)))
}

/// Writes all of `bytes` and flushes: tokio-rustls accepts plaintext and
/// reports it written even when the socket would block, keeping the TLS
/// records back until the next write or flush, which on the last answer
/// of a burst would never come. For plain TCP the flush costs nothing.
async fn write_flushed<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// [`Awaiting`] as the bits of an atomic.
fn bits(a: Awaiting) -> u16 {
    match a {
        Awaiting::Nothing => 0,
        Awaiting::MoreFromClient => 1,
        Awaiting::Answer(seq) => 0x100 | u16::from(seq),
    }
}

/// The [`Awaiting`] of [`bits`].
fn unbits(b: u16) -> Awaiting {
    match b {
        0 => Awaiting::Nothing,
        1 => Awaiting::MoreFromClient,
        b => Awaiting::Answer(b as u8),
    }
}

/// Sends `err` as the packet numbered `seq` (in place of an answer).
async fn answer_with(w: &mut Writer, seq: u8, err: ErrPacket) -> std::io::Result<()> {
    let mut packet = BytesMut::new();
    encode_packet(seq, &err.encode(), &mut packet);
    write_flushed(w, &packet).await
}

/// Completes with [`IDLE_END`] once a session has had no traffic for the
/// idle timeout while the backend owed nothing (or the client was in the
/// middle of a command), or with [`QUERY_TIMEOUT_END`] once it has had none
/// for the query timeout while a command waited for its answer. It looks
/// four times per (shorter) timeout, so a session is closed between 1 and
/// 1.25 timeouts after its last traffic.
async fn watch(timeouts: Timeouts, moves: &AtomicU64, awaiting: &AtomicU16) -> &'static str {
    let shortest = match (timeouts.idle, timeouts.query) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Duration::MAX),
    };
    let tick = (shortest / 4).max(Duration::from_millis(1));
    let mut seen = moves.load(Ordering::Relaxed);
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = moves.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = tokio::time::Instant::now();
            continue;
        }
        let quiet = quiet_since.elapsed();
        let (limit, end) = match unbits(awaiting.load(Ordering::Relaxed)) {
            Awaiting::Answer(_) => (timeouts.query, QUERY_TIMEOUT_END),
            Awaiting::Nothing | Awaiting::MoreFromClient => (timeouts.idle, IDLE_END),
        };
        if limit.is_some_and(|limit| quiet >= limit) {
            return end;
        }
    }
}

/// Reads what a stream has into a buffer taken only once bytes are there
/// (and given back when drained: an idle session holds no relay buffer).
/// The read size adapts: it doubles while reads come back full and halves
/// when they come back small, between [`MIN_READ`] and [`MAX_READ`].
pub trait ReadSome {
    /// Reads into `buf`; 0 at end of stream.
    fn read_some(
        &mut self,
        buf: &mut BytesMut,
        size: &mut usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>>;
}

/// Plain TCP: wait for readiness first, so that no buffer is held while
/// waiting.
async fn read_ready(
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
async fn read_into<T: AsyncRead + Unpin>(
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

use buffers::{give_back, take_buffer};
