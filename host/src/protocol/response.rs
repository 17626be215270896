//! The client's HandshakeResponse41 and the server's AuthSwitchRequest.

use super::reader::{Reader, put_lenenc_bytes};
use super::{CapabilityFlags, MariaDbCapabilities, ProtocolError};

/// The client's answer to the greeting (Protocol::HandshakeResponse41).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// The client's capability flags.
    pub capabilities: CapabilityFlags,
    /// The largest packet the client wants to receive.
    pub max_packet_size: u32,
    /// The client's character set / collation id.
    pub charset: u8,
    /// MariaDB extended capabilities (zero from MySQL clients).
    pub mariadb_capabilities: MariaDbCapabilities,
    /// The user name.
    pub username: String,
    /// The auth response (scramble) for `auth_plugin`.
    pub auth_response: Vec<u8>,
    /// The database to use, when the client named one.
    pub database: Option<String>,
    /// The plugin `auth_response` was computed for, when the client said.
    pub auth_plugin: Option<String>,
    /// The connection attributes block as sent (without its length prefix).
    pub connect_attrs: Option<Vec<u8>>,
}

/// Length of an SSLRequest packet, the first 32 bytes of a response.
pub const SSL_REQUEST_LEN: usize = 32;

impl HandshakeResponse {
    /// Parses a HandshakeResponse41 payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        let capabilities = CapabilityFlags::from_bits_retain(r.u32("capabilities")?);
        if !capabilities.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
            return Err(ProtocolError::Malformed(
                "handshake response (pre-4.1 protocol)",
            ));
        }
        let max_packet_size = r.u32("max packet size")?;
        let charset = r.u8("charset")?;
        r.take(19, "filler")?;
        let ext = r.u32("extended capabilities")?;
        if payload.len() == SSL_REQUEST_LEN && capabilities.contains(CapabilityFlags::CLIENT_SSL) {
            return Err(ProtocolError::Malformed("handshake response (SSLRequest)"));
        }
        let username = String::from_utf8_lossy(r.null_terminated("user name")?).into_owned();
        let auth_response =
            if capabilities.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) {
                r.lenenc_bytes("auth response")?
            } else if capabilities.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
                let n = usize::from(r.u8("auth response")?);
                r.take(n, "auth response")?
            } else {
                r.null_terminated("auth response")?
            }
            .to_vec();
        let mut database = None;
        if capabilities.contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB) && !r.is_empty() {
            let db = r.null_terminated_or_rest();
            if !db.is_empty() {
                database = Some(String::from_utf8_lossy(db).into_owned());
            }
        }
        let mut auth_plugin = None;
        if capabilities.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) && !r.is_empty() {
            auth_plugin = Some(String::from_utf8_lossy(r.null_terminated_or_rest()).into_owned());
        }
        let mut connect_attrs = None;
        if capabilities.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS) && !r.is_empty() {
            connect_attrs = Some(r.lenenc_bytes("connect attributes")?.to_vec());
        }
        let mariadb_capabilities = if capabilities.contains(CapabilityFlags::CLIENT_LONG_PASSWORD) {
            MariaDbCapabilities::empty()
        } else {
            MariaDbCapabilities::from_bits_retain(ext)
        };
        Ok(Self {
            capabilities,
            max_packet_size,
            charset,
            mariadb_capabilities,
            username,
            auth_response,
            database,
            auth_plugin,
            connect_attrs,
        })
    }

    /// Serialises the response; the optional parts are written when their
    /// capability flag is set.
    pub fn encode(&self) -> Vec<u8> {
        let caps = self.capabilities;
        let mut out = Vec::with_capacity(128 + self.connect_attrs.as_ref().map_or(0, Vec::len));
        out.extend_from_slice(&caps.bits().to_le_bytes());
        out.extend_from_slice(&self.max_packet_size.to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&[0; 19]);
        let ext = if caps.contains(CapabilityFlags::CLIENT_LONG_PASSWORD) {
            0
        } else {
            self.mariadb_capabilities.bits()
        };
        out.extend_from_slice(&ext.to_le_bytes());
        out.extend_from_slice(self.username.as_bytes());
        out.push(0);
        if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) {
            put_lenenc_bytes(&mut out, &self.auth_response);
        } else if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
            // One length byte: at most 255 bytes of auth data.
            let n = self.auth_response.len().min(255);
            out.push(n as u8);
            out.extend_from_slice(&self.auth_response[..n]);
        } else {
            out.extend_from_slice(&self.auth_response);
            out.push(0);
        }
        if caps.contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB) {
            out.extend_from_slice(self.database.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
            out.extend_from_slice(self.auth_plugin.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        if caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS) {
            put_lenenc_bytes(&mut out, self.connect_attrs.as_deref().unwrap_or(&[]));
        }
        out
    }
}

/// A server's request to continue authentication with another plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    /// The plugin to switch to.
    pub plugin: String,
    /// The plugin's data (for mysql_native_password, a fresh 20-byte nonce).
    pub data: Vec<u8>,
}

impl AuthSwitchRequest {
    /// Parses a payload that starts with 0xFE.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        if r.u8("auth switch")? != 0xfe || r.is_empty() {
            return Err(ProtocolError::Malformed("auth switch request"));
        }
        let plugin = String::from_utf8_lossy(r.null_terminated("auth switch plugin")?).into_owned();
        let mut data = r.rest().to_vec();
        if data.last() == Some(&0) {
            data.pop();
        }
        Ok(Self { plugin, data })
    }

    /// Serialises the request (the data is followed by a NUL, as servers do).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.plugin.len() + self.data.len() + 1);
        out.push(0xfe);
        out.extend_from_slice(self.plugin.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.data);
        out.push(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HandshakeResponse {
        HandshakeResponse {
            capabilities: CapabilityFlags::implemented() - CapabilityFlags::CLIENT_LONG_PASSWORD,
            max_packet_size: 16 << 20,
            charset: 45,
            mariadb_capabilities: MariaDbCapabilities::MARIADB_CLIENT_PROGRESS,
            username: "mysqlslave".into(),
            auth_response: vec![9; 20],
            database: Some("app".into()),
            auth_plugin: Some("mysql_native_password".into()),
            connect_attrs: Some(b"\x0c_client_name\x0alibmariadb".to_vec()),
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(HandshakeResponse::decode(&r.encode()).unwrap(), r);
        let mut short = sample();
        short.capabilities -= CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_CONNECT_ATTRS;
        short.connect_attrs = None;
        assert_eq!(HandshakeResponse::decode(&short.encode()).unwrap(), short);
    }

    #[test]
    fn decodes_a_response_without_attributes() {
        // A 4.1 client without connection attributes or lenenc auth data.
        let mut p = Vec::new();
        p.extend_from_slice(&0x00aaa20au32.to_le_bytes()); // caps incl. PROTOCOL_41
        p.extend_from_slice(&0x01000000u32.to_le_bytes());
        p.push(33);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"root\0");
        p.push(20);
        p.extend_from_slice(&[1; 20]);
        p.extend_from_slice(b"test\0mysql_native_password\0");
        let r = HandshakeResponse::decode(&p).unwrap();
        assert_eq!(r.username, "root");
        assert_eq!(r.auth_response, vec![1; 20]);
        assert_eq!(r.database.as_deref(), Some("test"));
        assert_eq!(r.auth_plugin.as_deref(), Some("mysql_native_password"));
    }

    #[test]
    fn malformed_responses_are_errors() {
        let bytes = sample().encode();
        for n in 0..bytes.len() - 1 {
            // Truncations either fail or drop trailing optional parts; none panics.
            let _ = HandshakeResponse::decode(&bytes[..n]);
        }
        assert!(HandshakeResponse::decode(&bytes[..20]).is_err());
        // SSLRequest when TLS was not offered.
        let mut ssl = bytes[..32].to_vec();
        ssl[1] |= 0x08;
        assert!(HandshakeResponse::decode(&ssl).is_err());
        // Pre-4.1 clients are refused.
        let mut old = bytes.clone();
        old[1] &= !0x02;
        assert!(HandshakeResponse::decode(&old).is_err());
    }

    #[test]
    fn round_trips_without_secure_connection() {
        // Without CLIENT_SECURE_CONNECTION (or lenenc auth data) the auth
        // response is NUL-terminated, on the way out as on the way in
        // (found by the handshake_response fuzz target).
        let mut old = sample();
        old.capabilities -= CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_SECURE_CONNECTION;
        old.auth_response = vec![3, 0xff, 0xff, 0xff];
        let bytes = old.encode();
        assert_eq!(&bytes[32..32 + 11 + 5], b"mysqlslave\0\x03\xff\xff\xff\0");
        assert_eq!(HandshakeResponse::decode(&bytes).unwrap(), old);
    }

    #[test]
    fn auth_switch_round_trips() {
        let a = AuthSwitchRequest {
            plugin: "mysql_native_password".into(),
            data: vec![5; 20],
        };
        let bytes = a.encode();
        assert_eq!(bytes.len(), 1 + 22 + 21);
        assert_eq!(AuthSwitchRequest::decode(&bytes).unwrap(), a);
        assert!(AuthSwitchRequest::decode(&[0xfe]).is_err());
        assert!(AuthSwitchRequest::decode(b"\xfeabc").is_err());
    }
}
