//! A connection read and written as MySQL packets, for the login exchanges:
//! plain TCP, or TLS after the client's SSLRequest. After login the stream
//! and any bytes already read are handed to the relay, which treats both
//! directions as byte streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection: plain, or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: it is large, and most sessions are plain).
    Tls(Box<TlsStream<Rewind>>),
    /// TLS over TCP, Switchyard being the client (towards a backend).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Only while the TLS handshake runs.
    Upgrading,
}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_) | Self::TlsClient(_))
    }

    /// Waits until the peer sent something (or closed), where that can be
    /// known before reading (plain TCP): a session at rest then takes no
    /// read buffer while it waits.
    pub async fn readable(&self) {
        if let Self::Tcp(tcp) = self {
            let _ = tcp.readable().await;
        }
    }

    /// Whether a connection that should be silent (an idle backend
    /// session, nothing asked of it) is still open and silent: the peer
    /// neither closed it nor sent anything (a server sends only before it
    /// goes: an error, a TLS close). Reads at most one byte; a connection
    /// found wanting is not to be used again.
    pub fn is_quiet(&self) -> bool {
        let tcp = match self {
            Self::Tcp(tcp) => tcp,
            Self::TlsClient(tls) => tls.get_ref().0,
            Self::Tls(_) | Self::Upgrading => return false,
        };
        let mut byte = [0u8; 1];
        matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// A TCP stream that first gives back bytes already read from it: a client
/// may send its TLS ClientHello right behind the SSLRequest, in the same
/// read.
#[derive(Debug)]
pub struct Rewind {
    prefix: BytesMut,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn upgrading<T>() -> Poll<std::io::Result<T>> {
    Poll::Ready(Err(std::io::Error::other(
        "stream is being upgraded to TLS",
    )))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Upgrading => upgrading(),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Upgrading => upgrading(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Upgrading => upgrading(),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Upgrading => upgrading(),
        }
    }
}

use crate::protocol::{Packet, PacketCodec, ProtocolError, encode_packet};

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer sent bytes that are not a valid packet here.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

/// A stream of packets over TCP.
#[derive(Debug)]
pub struct PacketStream {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    codec: PacketCodec,
}

impl PacketStream {
    /// Wraps `stream`; packets over `max_payload` bytes are refused.
    pub fn new(stream: TcpStream, max_payload: usize) -> Self {
        Self {
            stream: Stream::Tcp(stream),
            read_buf: BytesMut::with_capacity(1024),
            write_buf: BytesMut::with_capacity(256),
            codec: PacketCodec::new(max_payload),
        }
    }

    /// Takes up a stream again after the relay (`read_buf`: bytes it
    /// read past).
    pub fn from_parts(stream: Stream, read_buf: BytesMut, max_payload: usize) -> Self {
        Self {
            stream,
            read_buf,
            write_buf: BytesMut::new(),
            codec: PacketCodec::new(max_payload),
        }
    }

    /// Reads the next packet.
    pub async fn read(&mut self) -> Result<Packet, ConnError> {
        loop {
            if let Some(p) = self.codec.decode(&mut self.read_buf)? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    /// Reads the next packet and checks its sequence id.
    pub async fn read_seq(&mut self, expected: u8) -> Result<Packet, ConnError> {
        let p = self.read().await?;
        if p.seq != expected {
            return Err(ProtocolError::PacketsOutOfSync {
                expected,
                got: p.seq,
            }
            .into());
        }
        Ok(p)
    }

    /// Writes one packet (split if large) and flushes it.
    pub async fn write(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<()> {
        self.write_buf.clear();
        encode_packet(seq, payload, &mut self.write_buf);
        self.stream.write_all(&self.write_buf).await?;
        // TLS may hold records back until flushed.
        self.stream.flush().await
    }

    /// Writes several packets (each split if large) in one write, and
    /// flushes them.
    pub async fn write_packets(&mut self, packets: &[(u8, &[u8])]) -> std::io::Result<()> {
        self.write_buf.clear();
        for (seq, payload) in packets {
            encode_packet(*seq, payload, &mut self.write_buf);
        }
        self.stream.write_all(&self.write_buf).await?;
        self.stream.flush().await
    }

    /// Runs the server side of a TLS handshake (after the client's
    /// SSLRequest); bytes already read past the SSLRequest are the start of
    /// the handshake.
    pub async fn start_tls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> Result<(), ConnError> {
        let Stream::Tcp(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return Err(ProtocolError::Malformed("a second SSLRequest").into());
        };
        let rewind = Rewind {
            prefix: std::mem::take(&mut self.read_buf),
            inner: tcp,
        };
        let tls = acceptor.accept(rewind).await?;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Runs the client side of a TLS handshake (after sending an
    /// SSLRequest to a backend).
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        server: rustls_pki_types::ServerName<'static>,
    ) -> Result<(), ConnError> {
        if !self.read_buf.is_empty() {
            return Err(ProtocolError::Malformed("bytes before the TLS handshake").into());
        }
        let Stream::Tcp(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return Err(ProtocolError::Malformed("TLS started twice").into());
        };
        let tls = connector.connect(server, tcp).await?;
        self.stream = Stream::TlsClient(Box::new(tls));
        Ok(())
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Whether bytes past the last packet read are waiting in the buffer.
    pub fn has_buffered(&self) -> bool {
        !self.read_buf.is_empty()
    }

    /// The stream and the bytes read past the last packet.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.read_buf)
    }
}
