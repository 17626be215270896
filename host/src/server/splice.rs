//! Moving bytes from one TCP socket to another without copying them
//! through user space: `splice(2)` from the source socket into a pipe, and
//! from the pipe into the destination socket. The kernel hands the pages
//! along (for loopback and most NICs), so a large result set costs the
//! proxy syscalls and no memory bandwidth.
//!
//! Only for plain TCP on both sides; TLS needs the bytes. splice(2) has
//! no `MSG_NOSIGNAL`: writing into a connection the peer has reset raises
//! SIGPIPE, so the process must ignore it (Rust programs do by default, and
//! so does the daemon) to get `EPIPE` instead.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// How much one splice moves at most, and the pipe's size.
pub const PIPE_SIZE: usize = 1024 * 1024;

/// A pipe to splice through, non-blocking at both ends. It is empty
/// between [`Pipe::fill`] and the [`Pipe::drain`] that empties it.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe.
    held: usize,
    /// What the pipe can hold.
    size: usize,
}

impl Pipe {
    /// A new pipe of (at most) [`PIPE_SIZE`] bytes: as large as the system
    /// lets an unprivileged process make it (`fs.pipe-max-size`).
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded; both descriptors are ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; a failure leaves the
        // default size (64 KiB), which still works.
        let size = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let size = if size > 0 {
            size as usize
        } else {
            // SAFETY: as above.
            let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if size <= 0 {
                return Err(io::Error::last_os_error());
            }
            size as usize
        };
        Ok(Self {
            read,
            write,
            held: 0,
            size,
        })
    }

    /// Moves what `from` has (up to the pipe's size) into the empty pipe,
    /// waiting until it has something. 0 at end of stream.
    pub async fn fill(&mut self, from: &TcpStream) -> io::Result<usize> {
        debug_assert_eq!(self.held, 0, "fill with bytes still in the pipe");
        let fd = from.as_raw_fd();
        let n = loop {
            from.readable().await?;
            // WouldBlock means the socket has nothing (the pipe is empty),
            // so try_io rightly clears its readiness.
            match from.try_io(Interest::READABLE, || {
                splice(fd, self.write.as_raw_fd(), self.size)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other?,
            }
        };
        self.held = n;
        Ok(n)
    }

    /// Moves everything in the pipe to `to`, waiting while it is full.
    pub async fn drain(&mut self, to: &TcpStream) -> io::Result<()> {
        let fd = to.as_raw_fd();
        while self.held > 0 {
            to.writable().await?;
            // WouldBlock means the socket is full (the pipe is not empty).
            match to.try_io(Interest::WRITABLE, || {
                splice(self.read.as_raw_fd(), fd, self.held)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.held -= n,
            }
        }
        Ok(())
    }
}

/// One non-blocking `splice(2)` of up to `len` bytes.
fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors we hold open, no user memory involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connect);
        (accepted.unwrap().0, connected.unwrap())
    }

    /// 8 MiB through a pipe, from one connection to another, unchanged and
    /// in order; then the end of the stream.
    #[tokio::test]
    async fn moves_a_stream_between_sockets() {
        let (mut source_far, source) = pair().await;
        let (dest, mut dest_far) = pair().await;
        let data: Vec<u8> = (0..8 * 1024 * 1024u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            source_far.write_all(&data).await.unwrap();
            source_far.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            dest_far.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut pipe = Pipe::new().unwrap();
        let mut moved = 0;
        loop {
            let n = pipe.fill(&source).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= pipe.size);
            pipe.drain(&dest).await.unwrap();
            moved += n;
        }
        drop(dest);
        writer.await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(moved, expected.len());
        assert!(got == expected, "bytes changed on the way");
    }

    /// A destination that has gone away is an error, not a hang.
    #[tokio::test]
    async fn drain_to_a_closed_peer_fails() {
        let (mut source_far, source) = pair().await;
        let (dest, dest_far) = pair().await;
        drop(dest_far);
        let data = vec![1u8; 4 * 1024 * 1024];
        tokio::spawn(async move {
            let _ = source_far.write_all(&data).await;
        });
        let mut pipe = Pipe::new().unwrap();
        let mut failed = false;
        for _ in 0..64 {
            if pipe.fill(&source).await.unwrap() == 0 {
                break;
            }
            if pipe.drain(&dest).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writing to a closed connection never failed");
    }
}
