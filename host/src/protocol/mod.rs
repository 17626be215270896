//! The MySQL client/server protocol, sans IO.
//!
//! This module owns the wire format: packet framing, the server greeting
//! (HandshakeV10), the client's HandshakeResponse41, auth switch requests,
//! COM_CHANGE_USER,
//! OK/ERR packets and the command bytes a proxy must recognise. Everything
//! here works on byte buffers and never touches a socket; incomplete input is
//! `Ok(None)`, hostile input is an error value, never a panic.

mod change_user;
mod command;
mod flags;
mod greeting;
mod packet;
pub mod proxy_header;
mod reader;
mod reply;
mod response;
mod result;
mod resultset;
mod session_track;

pub use change_user::ChangeUser;
pub use command::{Awaiting, Command, CommandScanner, MAX_KILL_PAYLOAD, ScanEvent};
pub use flags::{CapabilityFlags, MariaDbCapabilities, StatusFlags};
pub use greeting::Greeting;
pub use packet::{MAX_PAYLOAD_CHUNK, Packet, PacketCodec, encode_packet};
pub use reader::Reader;
pub use reply::{HEAD as REPLY_HEAD, ReplyFramer, ReplyTo, Step as ReplyStep};
pub use response::{AuthSwitchRequest, HandshakeResponse, SSL_REQUEST_LEN};
pub use result::{ErrPacket, OkPacket};
pub use resultset::{QueryReply, ResultSetDecoder, TextResult};
pub use session_track::{StateChange, TransactionState, state_changes};

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

#[cfg(test)]
mod hostile_input {
    //! Random and mutated bytes into every decoder: errors, never panics.

    use super::*;
    use bytes::BytesMut;

    /// A small deterministic generator (xorshift64*), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = (self.next() as usize) % (max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn valid_response() -> Vec<u8> {
        HandshakeResponse {
            capabilities: CapabilityFlags::implemented(),
            max_packet_size: 1 << 24,
            charset: 45,
            mariadb_capabilities: MariaDbCapabilities::empty(),
            username: "user".into(),
            auth_response: vec![7; 20],
            database: Some("db".into()),
            auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
            connect_attrs: Some(b"\x03key\x05value".to_vec()),
        }
        .encode()
    }

    #[test]
    fn random_bytes_never_panic_a_decoder() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let b = rng.bytes(200);
            let _ = Greeting::decode(&b);
            let _ = HandshakeResponse::decode(&b);
            let _ = AuthSwitchRequest::decode(&b);
            let _ = ChangeUser::decode(&b, CapabilityFlags::implemented());
            let _ = ErrPacket::decode(&b);
            let _ = OkPacket::decode(&b);
            let mut buf = BytesMut::from(&b[..]);
            let codec = PacketCodec::new(64);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let mut scanner = CommandScanner::new();
            let (n, _) = scanner.scan(&b);
            assert!(n <= b.len());
        }
    }

    #[test]
    fn mutated_responses_never_panic() {
        let base = valid_response();
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            b.truncate((rng.next() as usize) % (b.len() + 1));
            if let Ok(r) = HandshakeResponse::decode(&b) {
                // Whatever decodes re-encodes without panicking.
                let _ = r.encode();
            }
        }
    }
}
