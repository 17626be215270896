//! The server greeting, Protocol::HandshakeV10.

use super::reader::Reader;
use super::{CapabilityFlags, MariaDbCapabilities, ProtocolError, StatusFlags};

/// The first packet of a connection, sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The server's version string (MariaDB's starts with "5.5.5-").
    pub server_version: String,
    /// The connection (thread) id.
    pub connection_id: u32,
    /// The nonce the client scrambles its password with (20 bytes, no NUL).
    pub auth_data: Vec<u8>,
    /// Capabilities of the server.
    pub capabilities: CapabilityFlags,
    /// The server's default character set / collation id.
    pub charset: u8,
    /// Status flags.
    pub status: StatusFlags,
    /// MariaDB's extended capabilities; only on the wire when
    /// CLIENT_LONG_PASSWORD (CLIENT_MYSQL) is clear.
    pub mariadb_capabilities: MariaDbCapabilities,
    /// The default authentication plugin.
    pub auth_plugin: String,
}

impl Greeting {
    /// Parses a greeting payload. A payload that starts with 0xFF is an ERR
    /// packet (the server refused the connection): check for it first.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        if r.u8("greeting")? != 10 {
            return Err(ProtocolError::Malformed("greeting protocol version"));
        }
        let server_version =
            String::from_utf8_lossy(r.null_terminated("server version")?).into_owned();
        let connection_id = r.u32("connection id")?;
        let mut auth_data = r.take(8, "auth data")?.to_vec();
        r.u8("filler")?;
        let lower = u32::from(r.u16("capabilities")?);
        let mut greeting = Greeting {
            server_version,
            connection_id,
            auth_data: Vec::new(),
            capabilities: CapabilityFlags::from_bits_retain(lower),
            charset: 0,
            status: StatusFlags::empty(),
            mariadb_capabilities: MariaDbCapabilities::empty(),
            auth_plugin: String::new(),
        };
        if r.is_empty() {
            greeting.auth_data = auth_data;
            return Ok(greeting);
        }
        greeting.charset = r.u8("charset")?;
        greeting.status = StatusFlags::from_bits_retain(r.u16("status")?);
        let upper = u32::from(r.u16("capabilities")?) << 16;
        greeting.capabilities = CapabilityFlags::from_bits_retain(lower | upper);
        let auth_len = usize::from(r.u8("auth data length")?);
        r.take(6, "reserved")?;
        let ext = r.u32("extended capabilities")?;
        if !greeting
            .capabilities
            .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
        {
            greeting.mariadb_capabilities = MariaDbCapabilities::from_bits_retain(ext);
        }
        if greeting
            .capabilities
            .contains(CapabilityFlags::CLIENT_SECURE_CONNECTION)
        {
            let len = auth_len.saturating_sub(8).max(13);
            let part2 = r.take(len.min(r.remaining()), "auth data")?;
            auth_data.extend_from_slice(part2);
            if auth_data.last() == Some(&0) {
                auth_data.pop();
            }
        }
        greeting.auth_data = auth_data;
        if greeting
            .capabilities
            .contains(CapabilityFlags::CLIENT_PLUGIN_AUTH)
        {
            greeting.auth_plugin =
                String::from_utf8_lossy(r.null_terminated_or_rest()).into_owned();
        }
        Ok(greeting)
    }

    /// Serialises the greeting as a payload. `auth_data` must be 20 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let caps = self.capabilities.bits();
        let mut out = Vec::with_capacity(128);
        out.push(10);
        out.extend_from_slice(self.server_version.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        let (part1, part2) = self.auth_data.split_at(self.auth_data.len().min(8));
        out.extend_from_slice(part1);
        out.push(0);
        out.extend_from_slice(&(caps as u16).to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&self.status.bits().to_le_bytes());
        out.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        out.push((self.auth_data.len() + 1) as u8);
        out.extend_from_slice(&[0; 6]);
        let ext = if self
            .capabilities
            .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
        {
            0
        } else {
            self.mariadb_capabilities.bits()
        };
        out.extend_from_slice(&ext.to_le_bytes());
        out.extend_from_slice(part2);
        out.push(0);
        out.extend_from_slice(self.auth_plugin.as_bytes());
        out.push(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A greeting captured from MariaDB 10.11.19 (Debian 12), `--no-defaults
    /// --character-set-server=utf8mb4`.
    const MARIADB_GREETING: &[u8] = b"\x0a5.5.5-10.11.19-MariaDB-0+deb12u1-log\x00\x0b\x00\x00\x00\
^+\\l*-BD\x00\xfe\xf7-\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00\
mx5=rIRB1o^h\x00mysql_native_password\x00";

    #[test]
    fn decodes_a_captured_mariadb_greeting() {
        let g = Greeting::decode(MARIADB_GREETING).unwrap();
        assert_eq!(g.server_version, "5.5.5-10.11.19-MariaDB-0+deb12u1-log");
        assert_eq!(g.connection_id, 11);
        assert_eq!(g.auth_data, b"^+\\l*-BDmx5=rIRB1o^h");
        assert_eq!(g.charset, 0x2d);
        assert!(g.capabilities.contains(CapabilityFlags::CLIENT_PROTOCOL_41));
        assert!(g.capabilities.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH));
        assert!(
            !g.capabilities
                .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
        );
        assert_eq!(g.mariadb_capabilities.bits(), 0x1d);
        assert_eq!(g.auth_plugin, "mysql_native_password");
        assert_eq!(g.encode(), MARIADB_GREETING);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for n in 0..MARIADB_GREETING.len() - 30 {
            let _ = Greeting::decode(&MARIADB_GREETING[..n]);
        }
        assert!(Greeting::decode(&[]).is_err());
        assert!(Greeting::decode(b"\x09abc\0").is_err());
    }
}
