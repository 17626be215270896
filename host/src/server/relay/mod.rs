//! Moves bytes between a logged-in client and its backend session.
//!
//! Both directions are byte streams: one read is not one packet, and
//! clients pipeline. The client-to-backend direction ([`up`]) walks packet
//! headers (without copying) to find command boundaries, so that COM_QUIT
//! closes the backend cleanly and COM_CHANGE_USER stops the relay: the
//! backend-to-client direction ([`down`]) stops once it has written what it
//! read (it is then waiting for the backend, which has answered every
//! earlier command of a client that waits for its answers, as clients do
//! before COM_CHANGE_USER), and the session gets both streams back to
//! handle it. A watchdog ([`watch`]) ends quiet sessions by
//! `idle_timeout_ms` and `query_timeout_ms`.
//!
//! The backend-to-client direction is opaque. Once an answer fills a read
//! and both sides are plain TCP, it switches to `splice(2)` through a pipe
//! of its own (see [`super::splice`]): large results then pass from socket
//! to socket without being copied through the proxy.

mod down;
mod read;
#[cfg(test)]
mod tests;
mod up;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::codes;
use super::kill::Registry;
use crate::conn::Stream;
use crate::metrics::Metrics;
use crate::protocol::{Awaiting, ErrPacket, encode_packet};
use read::{ReadSome, read_into, read_ready};
use watch::{bits, unbits};

/// How long a backend session may take to close once its client has left
/// (it answers what the client sent before, to no one).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// COM_QUIT, as a whole packet.
const COM_QUIT_PACKET: [u8; 5] = [1, 0, 0, 0, 0x01];

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its connection.
    ClientClosed,
    /// Reading from the client failed.
    ClientReadFailed,
    /// Writing to the client failed.
    ClientWriteFailed,
    /// The client sent COM_QUIT.
    ClientQuit,
    /// The backend closed its connection.
    BackendClosed,
    /// Reading from the backend failed.
    BackendReadFailed,
    /// Writing to the backend failed.
    BackendWriteFailed,
    /// The client sent COM_CHANGE_USER (the session goes on).
    ChangeUser,
    /// `idle_timeout_ms` passed without traffic while nothing was awaited.
    IdleTimeout,
    /// `query_timeout_ms` passed without traffic while an answer was.
    QueryTimeout,
    /// The proxy is stopping: the session waited for nothing, or
    /// `shutdown_timeout_ms` passed.
    Shutdown,
    /// Another session's `KILL [CONNECTION]` named it while it held no
    /// backend session (a multiplexed session at rest).
    Killed,
}

impl End {
    /// How logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client closed",
            Self::ClientReadFailed => "client read failed",
            Self::ClientWriteFailed => "client write failed",
            Self::ClientQuit => "client quit",
            Self::BackendClosed => "backend closed",
            Self::BackendReadFailed => "backend read failed",
            Self::BackendWriteFailed => "backend write failed",
            Self::ChangeUser => "COM_CHANGE_USER",
            Self::IdleTimeout => "idle timeout",
            Self::QueryTimeout => "query timeout",
            Self::Shutdown => "shutdown",
            Self::Killed => "killed",
        }
    }

    /// The backend session is gone or unusable.
    fn backend_gone(self) -> bool {
        matches!(
            self,
            Self::BackendClosed | Self::BackendReadFailed | Self::BackendWriteFailed
        )
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// How the proxy tells sessions to stop.
#[derive(Debug, Clone, Copy)]
pub struct Stop<'a> {
    /// Stopping: close once the session waits for nothing.
    pub drain: &'a CancellationToken,
    /// Close now.
    pub now: &'a CancellationToken,
}

/// How to relay.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// When to stop because the proxy does.
    pub stop: Stop<'a>,
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
#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
    /// Bytes read from the client and sent to the backend.
    pub from_client: u64,
    /// Bytes read from the backend and sent to the client.
    pub to_client: u64,
    /// Why the relay ended.
    pub end: End,
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
        Some(_) if stats.end == End::ClientQuit => match rejoin(backend_r, backend_w) {
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

/// What both directions and the watchdog share.
struct Progress<'a> {
    metrics: &'a Metrics,
    /// Reads in either direction: what the watchdog looks at.
    moves: AtomicU64,
    /// What the backend owes the client ([`Awaiting`] as [`bits`]): set by
    /// what the client sent, cleared by any byte from the backend.
    awaiting: AtomicU16,
    /// Bytes relayed from the client.
    from_client: AtomicU64,
    /// Bytes relayed to the client.
    to_client: AtomicU64,
    /// `up` stopped for COM_CHANGE_USER (or a kept COM_QUIT): `down` stops
    /// at its next safe point.
    stop_down: Notify,
}

impl<'a> Progress<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        Self {
            metrics,
            moves: AtomicU64::new(0),
            awaiting: AtomicU16::new(bits(Awaiting::Nothing)),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            stop_down: Notify::new(),
        }
    }

    fn moved(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    fn set_awaiting(&self, a: Awaiting) {
        self.awaiting.store(bits(a), Ordering::Relaxed);
    }

    fn awaiting(&self) -> Awaiting {
        unbits(self.awaiting.load(Ordering::Relaxed))
    }

    fn sent_to_backend(&self, n: usize) {
        self.from_client.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.bytes_from_clients.add(n as u64);
    }

    fn sent_to_client(&self, n: usize) {
        self.to_client.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.bytes_to_clients.add(n as u64);
    }
}

/// The reading half of a side: plain TCP (read on readiness) or TLS.
pub(super) enum Reader {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The writing half of a side.
pub(super) enum Writer {
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

/// The relay over the two halves of each side: both directions and the
/// watchdog, until one of them ends the session.
async fn relay_halves(
    (client_r, client_w): (&mut Reader, &mut Writer),
    client_rest: BytesMut,
    (backend_r, backend_w): (&mut Reader, &mut Writer),
    backend_rest: BytesMut,
    options: Options<'_>,
) -> (RelayStats, Option<BytesMut>) {
    let progress = Progress::new(options.metrics);
    let backend_addr = options.kills.1;
    let (end, rest) = {
        let up = up::client_to_backend(client_r, &mut *backend_w, client_rest, &progress, &options);
        let down = down::backend_to_client(
            backend_r,
            &mut *client_w,
            backend_rest,
            &progress,
            backend_addr,
        );
        let watch = async {
            match options.timeouts {
                Timeouts {
                    idle: None,
                    query: None,
                } => std::future::pending().await,
                // Boxed: only sessions with a timeout pay for its timer.
                timeouts => {
                    Box::pin(watch::watch(timeouts, &progress.moves, &progress.awaiting)).await
                }
            }
        };
        tokio::pin!(up, down, watch);
        tokio::select! {
            // The backend is gone or the client cannot be written: done.
            end = &mut down => {
                if end == End::ChangeUser {
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
                        if rest.is_some() && down_end != End::ChangeUser {
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
            end = watch::stop(options.stop, &progress.moves, &progress.awaiting) => (end, None),
        }
    };
    close_quiet(end, (backend_w, client_w), &progress, &options).await;
    let stats = RelayStats {
        from_client: progress.from_client.load(Ordering::Relaxed),
        to_client: progress.to_client.load(Ordering::Relaxed),
        end,
    };
    (stats, rest)
}

/// Closes a session the watchdog ended (both directions were dropped).
async fn close_quiet(
    end: End,
    (backend_w, client_w): (&mut Writer, &mut Writer),
    progress: &Progress<'_>,
    options: &Options<'_>,
) {
    let backend_addr = options.kills.1;
    match end {
        End::QueryTimeout => {
            // The backend owes an answer and sends nothing: its session is
            // dropped (not told to quit: it is not listening), and the
            // client gets an ERR in place of the answer if none of it has
            // arrived.
            let timeout_ms = options.timeouts.query.unwrap_or_default().as_millis() as u64;
            tracing::warn!(backend = %backend_addr, query_timeout_ms = timeout_ms, "the backend sent nothing for query_timeout_ms while a command waited; closing the session");
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = backend_w.shutdown().await;
                if let Awaiting::Answer(seq) = progress.awaiting() {
                    let err = codes::query_timeout(backend_addr, timeout_ms);
                    let _ = answer_with(client_w, seq, err).await;
                }
                let _ = client_w.shutdown().await;
            })
            .await;
        }
        End::Shutdown => {
            // Nothing awaited (or `shutdown_timeout_ms` passed: then the
            // client gets ERR 1053 in place of an answer it waits for).
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                if let Awaiting::Answer(seq) = progress.awaiting() {
                    let _ = backend_w.shutdown().await;
                    let _ = answer_with(client_w, seq, codes::shutting_down()).await;
                } else {
                    let _ = backend_w.write_all(&COM_QUIT_PACKET).await;
                    let _ = backend_w.shutdown().await;
                }
                let _ = client_w.shutdown().await;
            })
            .await;
        }
        End::IdleTimeout => {
            // Both directions are dropped at a command boundary: close the
            // backend session politely, then the client (as a server
            // closing an idle connection does).
            tracing::info!("session idle for too long; closing");
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = backend_w.write_all(&COM_QUIT_PACKET).await;
                let _ = backend_w.shutdown().await;
                let _ = client_w.shutdown().await;
            })
            .await;
        }
        _ => {}
    }
}

/// Sends `err` as the packet numbered `seq` (in place of an answer).
async fn answer_with<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: u8,
    err: ErrPacket,
) -> std::io::Result<()> {
    let mut packet = BytesMut::new();
    encode_packet(seq, &err.encode(), &mut packet);
    write_flushed(w, &packet).await
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
