//! A TCP stream read and written as MySQL packets, for the login exchanges.
//! After login the stream and any bytes already read are handed to the
//! relay, which treats both directions as byte streams.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    codec: PacketCodec,
}

impl PacketStream {
    /// Wraps `stream`; packets over `max_payload` bytes are refused.
    pub fn new(stream: TcpStream, max_payload: usize) -> Self {
        Self {
            stream,
            read_buf: BytesMut::with_capacity(1024),
            write_buf: BytesMut::with_capacity(256),
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
        self.stream.write_all(&self.write_buf).await
    }

    /// The socket's peer address, for logs.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// The stream and the bytes read past the last packet.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.read_buf)
    }
}
