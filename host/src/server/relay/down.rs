//! Backend to client: opaque bytes, by `splice(2)` once answers are large
//! and both sides are plain TCP.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::read::{MIN_READ, ReadSome, give_back};
use super::{End, Progress, Reader, Writer, answer_with, codes, splices, write_flushed};
use crate::protocol::Awaiting;
use crate::server::splice::Pipe;

/// Forwards until the backend is done or the client cannot be written, or
/// (told by `up`) stops at a safe point for COM_CHANGE_USER: everything
/// read has been written. A backend lost before any of an awaited answer
/// leaves the client an ERR in its place.
pub(super) async fn backend_to_client(
    backend_r: &mut Reader,
    client_w: &mut Writer,
    mut buf: BytesMut,
    progress: &Progress<'_>,
    backend_addr: SocketAddr,
) -> End {
    let mut read_size = MIN_READ;
    // Set once a large answer shows up, if both sides are plain TCP.
    let mut pipe: Option<Pipe> = None;
    let end = loop {
        if !buf.is_empty() {
            if write_flushed(client_w, &buf).await.is_err() {
                break End::ClientWriteFailed;
            }
            progress.sent_to_client(buf.len());
            buf.clear();
        }
        if let (Some(pipe), Reader::Tcp(from), Writer::Tcp(to)) =
            (&mut pipe, &*backend_r, &*client_w)
        {
            if buf.capacity() > 0 {
                give_back(std::mem::take(&mut buf));
            }
            match splice_once(pipe, (from, to), progress).await {
                Ok(()) => continue,
                // Both streams go on, to the session.
                Err(End::ChangeUser) => return End::ChangeUser,
                Err(end) => break end,
            }
        }
        // Everything read has been written: a safe point to stop at for
        // COM_CHANGE_USER.
        let read = tokio::select! {
            biased;
            () = progress.stop_down.notified() => return End::ChangeUser,
            read = backend_r.read_some(&mut buf, &mut read_size) => read,
        };
        match read {
            Ok(0) => break End::BackendClosed,
            Ok(n) => {
                progress.moved();
                progress.set_awaiting(Awaiting::Nothing);
                if n >= MIN_READ && splices(backend_r, client_w) {
                    // A large answer: the rest of it (and of later ones)
                    // moves by splice(2), kernel to kernel. Without a pipe,
                    // reads go on as before.
                    pipe = Pipe::new()
                        .inspect_err(|e| tracing::debug!(error = %e, "no pipe for splice"))
                        .ok();
                }
            }
            Err(_) => break End::BackendReadFailed,
        }
    };
    if end.backend_gone()
        && let Awaiting::Answer(seq) = progress.awaiting()
    {
        // Gone before any of the answer a command waits for: the client
        // gets an ERR in its place rather than a bare close.
        tracing::warn!(backend = %backend_addr, "backend session lost while a command waited for its answer");
        let _ = answer_with(client_w, seq, codes::backend_lost(backend_addr)).await;
    }
    let _ = client_w.shutdown().await;
    end
}

/// Moves what the backend has to the client through `pipe`; stops first
/// (with [`End::ChangeUser`]) if told to, at this safe point.
async fn splice_once(
    pipe: &mut Pipe,
    (from, to): (&OwnedReadHalf, &OwnedWriteHalf),
    progress: &Progress<'_>,
) -> Result<(), End> {
    let filled = tokio::select! {
        biased;
        () = progress.stop_down.notified() => return Err(End::ChangeUser),
        filled = pipe.fill(from.as_ref()) => filled,
    };
    let n = match filled {
        Ok(0) => return Err(End::BackendClosed),
        Ok(n) => n,
        Err(_) => return Err(End::BackendReadFailed),
    };
    progress.moved();
    progress.set_awaiting(Awaiting::Nothing);
    if pipe.drain(to.as_ref()).await.is_err() {
        return Err(End::ClientWriteFailed);
    }
    progress.sent_to_client(n);
    Ok(())
}
