//! Client to backend: forwards what the client sends as it comes, walking
//! packet headers to find the commands the relay acts on.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::read::{MIN_READ, ReadSome};
use super::{COM_QUIT_PACKET, End, Options, Progress, write_flushed};
use crate::protocol::{Awaiting, CommandScanner, ScanEvent, encode_packet};
use crate::server::kill;

/// Forwards until the client is done. KILL statements go out translated;
/// COM_QUIT closes the backend session politely, unless it is to be kept
/// (`Options::keep_backend`); COM_CHANGE_USER stops here. For those two
/// stops, the client's bytes from that command on come back with the end,
/// and `down` is told to stop at its next safe point.
pub(super) async fn client_to_backend<R: ReadSome, W: AsyncWrite + Unpin>(
    client_r: &mut R,
    backend_w: &mut W,
    mut buf: BytesMut,
    progress: &Progress<'_>,
    options: &Options<'_>,
) -> (End, Option<BytesMut>) {
    let mut read_size = MIN_READ;
    let mut scanner = CommandScanner::new();
    let end = loop {
        let (n, event) = scanner.scan(&buf);
        if n > 0 {
            // Flushed: a TLS writer may keep records back when the socket
            // would block (a no-op for plain TCP).
            if write_flushed(backend_w, &buf[..n]).await.is_err() {
                break End::BackendWriteFailed;
            }
            progress.sent_to_backend(n);
            buf.advance(n);
            progress.set_awaiting(scanner.awaiting());
        }
        match event {
            Some(ScanEvent::Kill) => match forward_kill(&buf, backend_w, progress, options).await {
                Some(Ok(len)) => {
                    buf.advance(len);
                    continue;
                }
                Some(Err(())) => break End::BackendWriteFailed,
                // Not all here yet: read on.
                None => {}
            },
            Some(ScanEvent::Quit) if options.keep_backend => {
                // Stopped as for COM_CHANGE_USER: the backend session is
                // not told to quit.
                progress.stop_down.notify_one();
                return (End::ClientQuit, Some(buf));
            }
            Some(ScanEvent::Quit) => break End::ClientQuit,
            Some(ScanEvent::ChangeUser) => {
                progress.stop_down.notify_one();
                return (End::ChangeUser, Some(buf));
            }
            None => {}
        }
        match client_r.read_some(&mut buf, &mut read_size).await {
            Ok(0) => break End::ClientClosed,
            Ok(_) => progress.moved(),
            Err(_) => break End::ClientReadFailed,
        }
    };
    // Close the backend session politely; it answers what came before,
    // then closes its side, which ends the other direction.
    let _ = backend_w.write_all(&COM_QUIT_PACKET).await;
    let _ = backend_w.shutdown().await;
    (end, None)
}

/// Forwards the KILL statement at the start of `buf`, its connection id
/// translated when it names a session of this proxy; its length, `None`
/// when the packet is not all in `buf` yet.
async fn forward_kill<W: AsyncWrite + Unpin>(
    buf: &[u8],
    backend_w: &mut W,
    progress: &Progress<'_>,
    options: &Options<'_>,
) -> Option<Result<usize, ()>> {
    let len = 4 + packet_len(buf);
    // The whole statement is needed (it is short).
    let packet = buf.get(..len)?;
    let (registry, backend) = options.kills;
    let sent = match kill::translate(&packet[4..], backend, registry) {
        Some(kill::Translated { payload, found }) => {
            let metrics = progress.metrics;
            let counter = if found {
                &metrics.kills_translated
            } else {
                &metrics.kills_unknown
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut translated = BytesMut::with_capacity(4 + payload.len());
            encode_packet(0, &payload, &mut translated);
            write_flushed(backend_w, &translated).await
        }
        None => write_flushed(backend_w, packet).await,
    };
    if sent.is_err() {
        return Some(Err(()));
    }
    progress.sent_to_backend(len);
    progress.set_awaiting(Awaiting::Answer(1));
    Some(Ok(len))
}

/// The payload length in a packet header at the start of `buf` (which has
/// at least the 4 header bytes).
fn packet_len(buf: &[u8]) -> usize {
    usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16
}
