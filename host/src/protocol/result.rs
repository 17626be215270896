//! OK and ERR packets.

use super::reader::Reader;
use super::{ProtocolError, StatusFlags};

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    /// The error code (1045 for access denied, ...).
    pub code: u16,
    /// The five-character SQLSTATE.
    pub sql_state: [u8; 5],
    /// The message.
    pub message: String,
}

impl ErrPacket {
    /// An ERR with `code`, `sql_state` (five ASCII characters) and `message`.
    pub fn new(code: u16, sql_state: &str, message: impl Into<String>) -> Self {
        let mut state = *b"HY000";
        if sql_state.len() == 5 {
            state.copy_from_slice(sql_state.as_bytes());
        }
        Self {
            code,
            sql_state: state,
            message: message.into(),
        }
    }

    /// Whether a payload is an ERR packet.
    pub fn is_err(payload: &[u8]) -> bool {
        payload.first() == Some(&0xff)
    }

    /// Parses an ERR payload (4.1 format, with or without the SQLSTATE).
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        if r.u8("error")? != 0xff {
            return Err(ProtocolError::Malformed("error packet"));
        }
        let code = r.u16("error code")?;
        let mut sql_state = *b"HY000";
        if r.remaining() >= 6 && payload[3] == b'#' {
            r.u8("sqlstate marker")?;
            sql_state.copy_from_slice(r.take(5, "sqlstate")?);
        }
        let message = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(Self {
            code,
            sql_state,
            message,
        })
    }

    /// Serialises the ERR in the 4.1 format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(0xff);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.push(b'#');
        out.extend_from_slice(&self.sql_state);
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    /// Serialises the ERR without the SQLSTATE, as servers do before the
    /// client has announced CLIENT_PROTOCOL_41 (e.g. "Too many connections"
    /// in place of the greeting).
    pub fn encode_pre_41(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.message.len());
        out.push(0xff);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    /// The SQLSTATE as text.
    pub fn sql_state_str(&self) -> &str {
        std::str::from_utf8(&self.sql_state).unwrap_or("HY000")
    }
}

/// The parts of an OK packet a proxy looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkPacket {
    /// Rows affected by the command.
    pub affected_rows: u64,
    /// The last insert id.
    pub last_insert_id: u64,
    /// Server status flags.
    pub status: StatusFlags,
    /// Warnings.
    pub warnings: u16,
}

impl OkPacket {
    /// Whether a payload is an OK packet (0x00 header).
    pub fn is_ok(payload: &[u8]) -> bool {
        payload.first() == Some(&0x00)
    }

    /// Parses the fixed part of an OK payload (4.1 format).
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        if !matches!(r.u8("ok")?, 0x00 | 0xfe) {
            return Err(ProtocolError::Malformed("ok packet"));
        }
        let affected_rows = r.lenenc_int("affected rows")?;
        let last_insert_id = r.lenenc_int("last insert id")?;
        let status = StatusFlags::from_bits_retain(r.u16("status flags")?);
        let warnings = r.u16("warnings")?;
        Ok(Self {
            affected_rows,
            last_insert_id,
            status,
            warnings,
        })
    }

    /// Serialises an OK without info or session state.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0];
        super::reader::put_lenenc_int(&mut out, self.affected_rows);
        super::reader::put_lenenc_int(&mut out, self.last_insert_id);
        out.extend_from_slice(&self.status.bits().to_le_bytes());
        out.extend_from_slice(&self.warnings.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_round_trips() {
        let e = ErrPacket::new(
            1045,
            "28000",
            "Access denied for user 'u'@'127.0.0.1' (using password: YES)",
        );
        let bytes = e.encode();
        assert_eq!(&bytes[..9], b"\xff\x15\x04#28000");
        assert_eq!(ErrPacket::decode(&bytes).unwrap(), e);
        assert_eq!(e.sql_state_str(), "28000");
    }

    #[test]
    fn err_without_sqlstate_and_truncated() {
        let e = ErrPacket::decode(b"\xff\x10\x04Too many connections").unwrap();
        assert_eq!(
            ErrPacket::new(1040, "08004", "Too many connections").encode_pre_41(),
            b"\xff\x10\x04Too many connections"
        );
        assert_eq!((e.code, e.sql_state_str()), (1040, "HY000"));
        assert_eq!(e.message, "Too many connections");
        assert!(ErrPacket::decode(b"\xff\x10").is_err());
        assert!(ErrPacket::decode(b"").is_err());
    }

    #[test]
    fn ok_round_trips() {
        let ok = OkPacket {
            affected_rows: 300,
            last_insert_id: 7,
            status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            warnings: 1,
        };
        assert_eq!(OkPacket::decode(&ok.encode()).unwrap(), ok);
        assert!(OkPacket::decode(b"\x00\x00").is_err());
    }
}
