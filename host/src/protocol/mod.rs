//! The MySQL client/server protocol, sans IO.
//!
//! This module owns the wire format: packet framing, the server greeting
//! (HandshakeV10), the client's HandshakeResponse41, auth switch requests,
//! OK/ERR packets and the command bytes a proxy must recognise. Everything
//! here works on byte buffers and never touches a socket; incomplete input is
//! `Ok(None)`, hostile input is an error value, never a panic.

mod command;
mod flags;
mod greeting;
mod packet;
mod reader;
mod response;
mod result;

pub use command::{Command, CommandScanner, ScanEvent};
pub use flags::{CapabilityFlags, MariaDbCapabilities, StatusFlags};
pub use greeting::Greeting;
pub use packet::{MAX_PAYLOAD_CHUNK, Packet, PacketCodec, encode_packet};
pub use reader::Reader;
pub use response::{AuthSwitchRequest, HandshakeResponse};
pub use result::{ErrPacket, OkPacket};

/// The authentication plugin Switchyard speaks on both sides.
pub const NATIVE_PASSWORD_PLUGIN: &str = "mysql_native_password";

/// Why bytes from a peer could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A packet or a field ends before its declared length.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A packet is larger than this phase of the protocol allows.
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    PacketTooLarge {
        /// The payload length the peer announced.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A packet arrived with an unexpected sequence id.
    #[error("packets out of order: expected sequence id {expected}, got {got}")]
    PacketsOutOfSync {
        /// The sequence id the exchange called for.
        expected: u8,
        /// The one that arrived.
        got: u8,
    },
    /// A field holds a value the protocol does not allow here.
    #[error("malformed {0}")]
    Malformed(&'static str),
}
