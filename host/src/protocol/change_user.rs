//! COM_CHANGE_USER: re-authenticate a connection as another user.

use super::reader::{Reader, put_lenenc_bytes};
use super::{CapabilityFlags, Command, ProtocolError};

/// A COM_CHANGE_USER payload. Its layout depends on the session's
/// capabilities (those the client negotiated at login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser {
    /// The new user.
    pub username: String,
    /// The auth response, computed with the session's nonce.
    pub auth_response: Vec<u8>,
    /// The new default database, if any.
    pub database: Option<String>,
    /// The character set / collation, when the client sent one.
    pub charset: Option<u16>,
    /// The plugin `auth_response` is for, when the client said.
    pub auth_plugin: Option<String>,
    /// Connection attributes as sent (without their length prefix).
    pub connect_attrs: Option<Vec<u8>>,
}

impl ChangeUser {
    /// Parses a payload that starts with the command byte 0x11.
    pub fn decode(payload: &[u8], caps: CapabilityFlags) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload);
        if r.u8("command")? != Command::ChangeUser as u8 {
            return Err(ProtocolError::Malformed("COM_CHANGE_USER"));
        }
        let username = String::from_utf8_lossy(r.null_terminated("user name")?).into_owned();
        let auth_response = if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
            let n = usize::from(r.u8("auth response")?);
            r.take(n, "auth response")?
        } else {
            r.null_terminated("auth response")?
        }
        .to_vec();
        let db = r.null_terminated_or_rest();
        let database = (!db.is_empty()).then(|| String::from_utf8_lossy(db).into_owned());
        let charset = if r.remaining() >= 2 {
            Some(r.u16("charset")?)
        } else {
            None
        };
        let mut auth_plugin = None;
        if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) && !r.is_empty() {
            auth_plugin = Some(String::from_utf8_lossy(r.null_terminated_or_rest()).into_owned());
        }
        let mut connect_attrs = None;
        if caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS) && !r.is_empty() {
            connect_attrs = Some(r.lenenc_bytes("connect attributes")?.to_vec());
        }
        Ok(Self {
            username,
            auth_response,
            database,
            charset,
            auth_plugin,
            connect_attrs,
        })
    }

    /// Serialises the command for a session with `caps`.
    pub fn encode(&self, caps: CapabilityFlags) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.connect_attrs.as_ref().map_or(0, Vec::len));
        out.push(Command::ChangeUser as u8);
        out.extend_from_slice(self.username.as_bytes());
        out.push(0);
        if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
            let n = self.auth_response.len().min(255);
            out.push(n as u8);
            out.extend_from_slice(&self.auth_response[..n]);
        } else {
            out.extend_from_slice(&self.auth_response);
            out.push(0);
        }
        out.extend_from_slice(self.database.as_deref().unwrap_or("").as_bytes());
        out.push(0);
        out.extend_from_slice(&self.charset.unwrap_or(45).to_le_bytes());
        if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
            out.extend_from_slice(self.auth_plugin.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        if caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS)
            && let Some(attrs) = &self.connect_attrs
        {
            put_lenenc_bytes(&mut out, attrs);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> CapabilityFlags {
        CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_CONNECT_ATTRS
    }

    #[test]
    fn round_trip() {
        let c = ChangeUser {
            username: "mysqlslave".into(),
            auth_response: vec![9; 20],
            database: Some("app".into()),
            charset: Some(224),
            auth_plugin: Some("mysql_native_password".into()),
            connect_attrs: Some(b"\x03key\x05value".to_vec()),
        };
        let bytes = c.encode(caps());
        assert_eq!(ChangeUser::decode(&bytes, caps()).unwrap(), c);
    }

    #[test]
    fn libmariadb_bytes() {
        // COM_CHANGE_USER as libmariadb sends it: user, 20-byte token,
        // no database, charset 45, plugin, attributes.
        let mut b = vec![0x11];
        b.extend_from_slice(b"u\0");
        b.push(20);
        b.extend_from_slice(&[1; 20]);
        b.push(0);
        b.extend_from_slice(&[45, 0]);
        b.extend_from_slice(b"mysql_native_password\0");
        b.extend_from_slice(b"\x04\x01a\x01b");
        let c = ChangeUser::decode(&b, caps()).unwrap();
        assert_eq!(c.username, "u");
        assert_eq!(c.auth_response, vec![1; 20]);
        assert_eq!(c.database, None);
        assert_eq!(c.charset, Some(45));
        assert_eq!(c.auth_plugin.as_deref(), Some("mysql_native_password"));
        assert_eq!(c.connect_attrs.as_deref(), Some(&b"\x01a\x01b"[..]));
        // An older client: nothing after the database.
        let c = ChangeUser::decode(b"\x11u\0\x00db\0", caps()).unwrap();
        assert_eq!(c.database.as_deref(), Some("db"));
        assert_eq!((c.charset, c.auth_plugin), (None, None));
    }

    #[test]
    fn truncated_and_wrong_bytes_are_errors() {
        assert!(ChangeUser::decode(b"", caps()).is_err());
        assert!(ChangeUser::decode(b"\x03SELECT", caps()).is_err());
        assert!(ChangeUser::decode(b"\x11user", caps()).is_err());
        assert!(ChangeUser::decode(b"\x11u\0\x14abc", caps()).is_err());
        let mut b = b"\x11u\0\x00\0\x2d\0p\0".to_vec();
        b.extend_from_slice(&[0xfc, 0xff, 0xff]);
        assert!(ChangeUser::decode(&b, caps()).is_err());
    }
}
