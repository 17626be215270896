//! A raw MySQL client over a blocking socket, for what real client
//! libraries never do: pipelining on purpose, garbage, truncated packets,
//! odd auth plugins. It uses Switchyard's sans-IO codec for framing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::BytesMut;
use switchyard::auth::Sha1Password;
use switchyard::protocol::{
    AuthSwitchRequest, CapabilityFlags, ErrPacket, Greeting, HandshakeResponse,
    MariaDbCapabilities, Packet, PacketCodec, encode_packet,
};

/// A client connection speaking packets by hand.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    codec: PacketCodec,
    /// The nonce of the greeting read last.
    pub nonce: Vec<u8>,
    /// Capabilities announced beyond a plain 4.1 client's (see
    /// [`RawClient::with_capabilities`]).
    extra: CapabilityFlags,
}

/// What a login attempt ended with.
#[derive(Debug)]
pub enum LoginOutcome {
    /// OK, at this sequence id.
    Ok(u8),
    /// ERR, at this sequence id.
    Err(ErrPacket, u8),
}

/// The handshake response of a plain MySQL 4.1+ client with plugin auth.
fn handshake_response(
    user: &str,
    db: Option<&str>,
    auth_response: Vec<u8>,
    plugin: &str,
) -> HandshakeResponse {
    let mut caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_LONG_PASSWORD;
    caps.set(CapabilityFlags::CLIENT_CONNECT_WITH_DB, db.is_some());
    HandshakeResponse {
        capabilities: caps,
        max_packet_size: 1 << 24,
        charset: 45,
        mariadb_capabilities: MariaDbCapabilities::empty(),
        username: user.into(),
        auth_response,
        database: db.map(str::to_owned),
        auth_plugin: Some(plugin.into()),
        connect_attrs: None,
    }
}

/// Which way a `caching_sha2_password` login went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha2Path {
    /// No more data: the server answered at once.
    None,
    /// "fast auth success".
    Fast,
    /// Full authentication with the RSA public key.
    FullRsa,
}

impl RawClient {
    /// Connects (10 s read timeout).
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        Self::from_stream(TcpStream::connect(addr)?)
    }

    /// Connects from the local address `from` (another loopback address,
    /// to be another client to the proxy's per-address limits).
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(from, 0).into())?;
        socket.connect(&addr.into())?;
        Self::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            stream,
            buf: BytesMut::new(),
            codec: PacketCodec::new(1 << 23),
            nonce: Vec::new(),
            extra: CapabilityFlags::empty(),
        })
    }

    /// Announces `extra` capabilities too at the next login (e.g.
    /// CLIENT_SESSION_TRACK).
    pub fn with_capabilities(mut self, extra: CapabilityFlags) -> Self {
        self.extra = extra;
        self
    }

    /// The next packet; `None` when the peer closed the connection.
    pub fn read_packet(&mut self) -> Result<Option<Packet>> {
        loop {
            if let Some(p) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(p));
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next packet, which must exist.
    pub fn expect_packet(&mut self) -> Result<Packet> {
        match self.read_packet()? {
            Some(p) => Ok(p),
            None => bail!("connection closed"),
        }
    }

    /// Writes one packet.
    pub fn write_packet(&mut self, seq: u8, payload: &[u8]) -> Result<()> {
        let mut out = BytesMut::new();
        encode_packet(seq, payload, &mut out);
        self.write_raw(&out)
    }

    /// Writes bytes as they are.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads the greeting.
    pub fn greeting(&mut self) -> Result<Greeting> {
        let p = self.expect_packet()?;
        if p.seq != 0 {
            bail!("greeting has sequence id {}", p.seq);
        }
        let greeting = Greeting::decode(&p.payload)?;
        self.nonce = greeting.auth_data.clone();
        Ok(greeting)
    }

    /// Whether the peer closes the connection (after at most one ERR
    /// packet) within the read timeout.
    pub fn is_closed_by_peer(&mut self) -> bool {
        for _ in 0..2 {
            match self.read_packet() {
                Ok(None) => return true,
                Ok(Some(p)) if ErrPacket::is_err(&p.payload) => continue,
                _ => return false,
            }
        }
        false
    }

    /// Logs in as `user` with `password`, announcing `plugin` (with a
    /// made-up 32-byte response for plugins other than native, as a MySQL
    /// 8 client would send for caching_sha2_password), and follows an
    /// auth switch to mysql_native_password.
    pub fn login(
        &mut self,
        user: &str,
        password: &str,
        db: Option<&str>,
        plugin: &str,
    ) -> Result<LoginOutcome> {
        let greeting = self.greeting()?;
        self.respond(&greeting, user, password, db, plugin)
    }

    /// [`login`](Self::login) after the greeting was read.
    pub fn respond(
        &mut self,
        greeting: &Greeting,
        user: &str,
        password: &str,
        db: Option<&str>,
        plugin: &str,
    ) -> Result<LoginOutcome> {
        let secret = Sha1Password::of_password(password.as_bytes());
        let auth = if plugin == "mysql_native_password" {
            secret.scramble(&greeting.auth_data)
        } else {
            vec![0x42; 32]
        };
        let mut response = handshake_response(user, db, auth, plugin);
        response.capabilities |= self.extra;
        self.write_packet(1, &response.encode())?;
        loop {
            let p = self.expect_packet()?;
            match p.payload.first() {
                Some(0x00) => return Ok(LoginOutcome::Ok(p.seq)),
                Some(0xff) => return Ok(LoginOutcome::Err(ErrPacket::decode(&p.payload)?, p.seq)),
                Some(0xfe) => {
                    let switch = AuthSwitchRequest::decode(&p.payload)?;
                    if switch.plugin != "mysql_native_password" {
                        bail!("asked to switch to {}", switch.plugin);
                    }
                    self.write_packet(p.seq + 1, &secret.scramble(&switch.data))?;
                }
                _ => bail!("unexpected login packet {:?}", p.payload),
            }
        }
    }

    /// Logs in with `caching_sha2_password` from the start, as a MySQL 8/9
    /// client does: the fast-path scramble, then (if the server asks for
    /// full authentication) the public key request and the RSA-encrypted
    /// password. Returns the path the server took and the outcome.
    pub fn login_caching_sha2(
        &mut self,
        user: &str,
        password: &str,
        db: Option<&str>,
    ) -> Result<(Sha2Path, LoginOutcome)> {
        use switchyard::auth::caching_sha2;
        let greeting = self.greeting()?;
        let nonce = greeting.auth_data.clone();
        let auth = caching_sha2::scramble(password.as_bytes(), &nonce);
        let response = handshake_response(user, db, auth, caching_sha2::PLUGIN);
        self.write_packet(1, &response.encode())?;
        let mut path = Sha2Path::None;
        loop {
            let p = self.expect_packet()?;
            match p.payload.first() {
                Some(0x00) => return Ok((path, LoginOutcome::Ok(p.seq))),
                Some(0xff) => {
                    return Ok((
                        path,
                        LoginOutcome::Err(ErrPacket::decode(&p.payload)?, p.seq),
                    ));
                }
                Some(0x01) if p.payload[..] == [0x01, caching_sha2::FAST_AUTH_SUCCESS] => {
                    path = Sha2Path::Fast;
                }
                Some(0x01)
                    if p.payload[..] == [0x01, caching_sha2::PERFORM_FULL_AUTHENTICATION] =>
                {
                    path = Sha2Path::FullRsa;
                    self.write_packet(p.seq + 1, &[caching_sha2::REQUEST_PUBLIC_KEY])?;
                    let key = self.expect_packet()?;
                    let pem = std::str::from_utf8(&key.payload[1..])?;
                    let block = caching_sha2::encrypt_for_server(pem, password.as_bytes(), &nonce)
                        .ok_or_else(|| anyhow::anyhow!("not a public key: {pem}"))?;
                    self.write_packet(key.seq + 1, &block)?;
                }
                _ => bail!("unexpected login packet {:?}", p.payload),
            }
        }
    }

    /// A COM_CHANGE_USER packet for a client that logged in with
    /// [`login`](Self::login) (native token for `nonce`).
    pub fn change_user_packet(
        user: &str,
        password: &str,
        nonce: &[u8],
        db: Option<&str>,
    ) -> Vec<u8> {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let c = switchyard::protocol::ChangeUser {
            username: user.into(),
            auth_response: Sha1Password::of_password(password.as_bytes()).scramble(nonce),
            database: db.map(str::to_owned),
            charset: Some(45),
            auth_plugin: Some("mysql_native_password".into()),
            connect_attrs: None,
        };
        Self::command_packet(&c.encode(caps))
    }

    /// A command packet (sequence id 0) with `payload`.
    pub fn command_packet(payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_packet(0, payload, &mut out);
        out.to_vec()
    }

    /// A COM_QUERY packet for `sql`.
    pub fn query_packet(sql: &str) -> Vec<u8> {
        let mut payload = vec![0x03];
        payload.extend_from_slice(sql.as_bytes());
        Self::command_packet(&payload)
    }
}
