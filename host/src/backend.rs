//! Backend connections: connect, read the greeting, and log in as the
//! client's user with `SHA1(password)` and the backend's own nonce.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::auth::Sha1Password;
use crate::conn::{ConnError, PacketStream};
use crate::protocol::{
    AuthSwitchRequest, CapabilityFlags, ChangeUser, ErrPacket, Greeting, HandshakeResponse,
    MariaDbCapabilities, NATIVE_PASSWORD_PLUGIN, QueryReply, ResultSetDecoder, TextResult,
};

/// Largest packet accepted from a backend during login.
pub const MAX_LOGIN_PACKET: usize = 64 * 1024;

/// Why a backend session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// The backend did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The connection broke or the backend spoke nonsense.
    #[error("{0}")]
    Conn(#[from] ConnError),
    /// The backend asked for an authentication plugin Switchyard cannot
    /// answer without the cleartext password.
    #[error("backend requires auth plugin '{0}', which Switchyard cannot answer")]
    UnsupportedPlugin(String),
    /// The backend answered with an ERR packet.
    #[error("backend error {}: {}", .0.code, .0.message)]
    Refused(ErrPacket),
    /// The backend sent an ERR packet in place of its greeting (too many
    /// connections, host blocked or not allowed, or anything else): no user
    /// was named yet, so it is the server's state, never the user's fault.
    #[error("backend refused the connection: {} {}", .0.code, .0.message)]
    RefusedConnection(ErrPacket),
    /// The pool requires TLS and the backend does not offer it.
    #[error("backend does not offer TLS, which its pool requires")]
    TlsUnavailable,
    /// A kept session was not at rest when a login came to take it over.
    #[error("kept session not at rest: {0}")]
    NotAtRest(&'static str),
}

/// TLS towards a pool's backends.
#[derive(Clone)]
pub struct BackendTls {
    /// The rustls client.
    pub connector: tokio_rustls::TlsConnector,
    /// Whether a backend without TLS may not be used.
    pub required: bool,
    /// Tells these settings apart from every other pool's (and from their
    /// own before a reload): a kept backend session is taken over only
    /// under the settings it was opened with.
    pub id: u64,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("required", &self.required)
            .finish()
    }
}

impl BackendTls {
    /// The TLS settings of a pool, if it uses TLS.
    pub fn from_config(pool: &crate::config::PoolConfig) -> anyhow::Result<Option<Self>> {
        use crate::config::BackendTlsMode;
        use anyhow::Context;
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let required = match pool.tls {
            BackendTlsMode::Off => return Ok(None),
            BackendTlsMode::Preferred => false,
            BackendTlsMode::Required => true,
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let config = if pool.tls_verify {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(ca) = &pool.tls_ca {
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("tls_ca {}", ca.display()))?
                {
                    roots
                        .add(cert.with_context(|| format!("tls_ca {}", ca.display()))?)
                        .with_context(|| format!("tls_ca {}", ca.display()))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Some(Self {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            required,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }))
    }
}

/// `tls_verify = false`: any certificate is accepted (the handshake's
/// signatures are still checked). For backends on a trusted network only.
#[derive(Debug)]
struct NoVerification(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl BackendError {
    /// Whether the fault lies with the backend server rather than with the
    /// client's request, so that another backend of the pool should be tried.
    /// A refusal for the user (bad password, unknown database) is the
    /// client's; "too many connections" and "host blocked" are the server's.
    pub fn is_backend_fault(&self) -> bool {
        match self {
            Self::Refused(e) => is_server_fault(e),
            Self::UnsupportedPlugin(_) | Self::NotAtRest(_) => false,
            Self::Connect(_)
            | Self::Timeout
            | Self::Conn(_)
            | Self::TlsUnavailable
            | Self::RefusedConnection(_) => true,
        }
    }

    /// The backend's ERR when it refused the user (not a fault of the
    /// server's), else the error itself.
    pub fn into_refusal(self) -> Result<ErrPacket, Self> {
        match self {
            Self::Refused(err) if !is_server_fault(&err) => Ok(err),
            other => Err(other),
        }
    }
}

/// Whether an ERR from a login is the server's fault ("too many
/// connections", "host blocked", "user has too many connections") rather
/// than a refusal of the client's request.
pub fn is_server_fault(err: &ErrPacket) -> bool {
    matches!(err.code, 1040 | 1129 | 1203)
}

/// Who to log in as, and with which session properties (those of the
/// client, so that the relayed bytes mean the same on both sides).
#[derive(Debug)]
pub struct LoginRequest<'a> {
    /// The client's handshake response: user, database, charset, flags,
    /// connection attributes.
    pub client: &'a HandshakeResponse,
    /// `SHA1(password)`.
    pub password: &'a Sha1Password,
    /// The capabilities Switchyard offered the client: the client's session
    /// has exactly the client's flags within these.
    pub offered: CapabilityFlags,
    /// The MariaDB extended capabilities offered the client.
    pub offered_mariadb: MariaDbCapabilities,
}

/// A logged-in backend session.
#[derive(Debug)]
pub struct BackendSession {
    /// The packet stream, positioned after the login's OK.
    pub stream: PacketStream,
    /// The backend's thread id (its greeting's connection id).
    pub thread_id: u32,
    /// The backend's greeting nonce, which a COM_CHANGE_USER answers.
    pub nonce: Vec<u8>,
    /// The OK packet's payload that ended the login (status flags, session
    /// state), to be forwarded to the client.
    pub ok: Bytes,
    /// The capabilities the session was opened with.
    pub capabilities: CapabilityFlags,
}

/// Connects to `addr` and reads its greeting.
pub async fn connect(addr: SocketAddr) -> Result<(PacketStream, Greeting), BackendError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(BackendError::Connect)?;
    greeted(tcp).await
}

/// Reads the greeting on a connected `tcp` (a refusal in its place is the
/// backend's ERR).
async fn greeted(tcp: TcpStream) -> Result<(PacketStream, Greeting), BackendError> {
    let _ = tcp.set_nodelay(true);
    let mut stream = PacketStream::new(tcp, MAX_LOGIN_PACKET);
    let p = stream.read_seq(0).await?;
    if ErrPacket::is_err(&p.payload) {
        // In place of the greeting (pre-4.1 form, no SQLSTATE).
        let err = ErrPacket::decode(&p.payload).map_err(ConnError::from)?;
        return Err(BackendError::RefusedConnection(err));
    }
    let greeting = Greeting::decode(&p.payload).map_err(ConnError::from)?;
    Ok((stream, greeting))
}

/// The user a check without a monitor account finishes its handshake as.
pub const CHECK_USER: &str = "switchyard-check";

/// Connects to `addr`, reads its greeting and leaves politely (see
/// [`greet_and_leave`]).
pub async fn reach(addr: SocketAddr) -> Result<Greeting, BackendError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(BackendError::Connect)?;
    greet_and_leave(tcp).await
}

/// Reads the greeting on `tcp`, then finishes the handshake as
/// [`CHECK_USER`] without a password and reads the answer (an access
/// denial, or an OK followed by COM_QUIT) before closing. A connection
/// dropped right after its greeting is a handshake error, and the server
/// blocks an address after `max_connect_errors` of them in a row; a refused
/// login is not one.
pub async fn greet_and_leave(tcp: TcpStream) -> Result<Greeting, BackendError> {
    let (mut stream, greeting) = greeted(tcp).await?;
    let response = HandshakeResponse {
        capabilities: CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH,
        max_packet_size: 1 << 24,
        charset: greeting.charset,
        mariadb_capabilities: MariaDbCapabilities::empty(),
        username: CHECK_USER.into(),
        auth_response: Vec::new(),
        database: None,
        auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
        connect_attrs: None,
    };
    // The greeting is what was asked for: the rest is good manners, and
    // its failures are not the backend's.
    if stream.write(1, &response.encode()).await.is_ok()
        && let Ok(p) = stream.read_seq(2).await
        && p.payload.first() == Some(&0x00)
    {
        let _ = stream
            .write(0, &[crate::protocol::Command::Quit as u8])
            .await;
    }
    Ok(greeting)
}

/// Reads the greeting of `addr` within `timeout` (a probe).
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<Greeting, BackendError> {
    match tokio::time::timeout(timeout, reach(addr)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout),
    }
}

/// The handshake response Switchyard sends a backend for `req`: the flags
/// the client's session with Switchyard has (the client's, within what was
/// offered), so that relayed bytes mean the same on both sides.
pub fn backend_response(req: &LoginRequest<'_>, greeting: &Greeting) -> HandshakeResponse {
    let client = req.client;
    let server_caps = greeting.capabilities | CapabilityFlags::client_only();
    let offered = req.offered | CapabilityFlags::client_only();
    let mut caps = (client.capabilities & offered & server_caps)
        - (CapabilityFlags::CLIENT_SSL | CapabilityFlags::CLIENT_COMPRESS);
    caps |= CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH;
    caps.set(
        CapabilityFlags::CLIENT_CONNECT_WITH_DB,
        client.database.is_some(),
    );
    caps.set(
        CapabilityFlags::CLIENT_CONNECT_ATTRS,
        client.connect_attrs.is_some()
            && greeting
                .capabilities
                .contains(CapabilityFlags::CLIENT_CONNECT_ATTRS),
    );
    let mariadb = if greeting
        .capabilities
        .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
    {
        MariaDbCapabilities::empty()
    } else {
        client.mariadb_capabilities & req.offered_mariadb & greeting.mariadb_capabilities
    };
    HandshakeResponse {
        capabilities: caps,
        max_packet_size: client.max_packet_size,
        charset: client.charset,
        mariadb_capabilities: mariadb,
        username: client.username.clone(),
        auth_response: req.password.scramble(&greeting.auth_data),
        database: client.database.clone(),
        auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
        connect_attrs: client.connect_attrs.clone(),
    }
}

/// Flags the client negotiated with Switchyard that the backend session does
/// not get.
pub fn lost_flags(req: &LoginRequest<'_>, response: &HandshakeResponse) -> CapabilityFlags {
    let negotiated = req.client.capabilities & req.offered;
    // TLS is per hop: the client's TLS with Switchyard says nothing about
    // the backend session.
    negotiated
        - response.capabilities
        - CapabilityFlags::client_only()
        - CapabilityFlags::CLIENT_CONNECT_WITH_DB
        - CapabilityFlags::CLIENT_CONNECT_ATTRS
        - CapabilityFlags::CLIENT_SSL
}

/// Connects to `addr` and logs in for `req`.
pub async fn open(
    addr: SocketAddr,
    req: &LoginRequest<'_>,
    tls: Option<&BackendTls>,
) -> Result<BackendSession, BackendError> {
    let (mut stream, greeting) = connect(addr).await?;
    let mut response = backend_response(req, &greeting);
    let first_seq = secure(&mut stream, &mut response, &greeting, tls, addr).await?;
    let lost = lost_flags(req, &response);
    if !lost.is_empty() {
        // The client's session has flags this backend does not: relayed
        // results may not be what the client expects. It happens when a
        // backend answered the probes only after clients had connected.
        tracing::warn!(backend = %addr, flags = ?lost, "backend lacks capabilities the client negotiated");
    }
    let ok = login(&mut stream, &response, req.password, first_seq).await?;
    Ok(BackendSession {
        stream,
        thread_id: greeting.connection_id,
        nonce: greeting.auth_data,
        ok,
        capabilities: response.capabilities,
    })
}

/// Switches a freshly greeted backend connection to TLS if `tls` says
/// so and the server offers it (an SSLRequest, then the handshake), adding
/// CLIENT_SSL to `response`; a server without TLS is an error when TLS is
/// required. Returns the sequence id the login response goes out with.
async fn secure(
    stream: &mut PacketStream,
    response: &mut HandshakeResponse,
    greeting: &Greeting,
    tls: Option<&BackendTls>,
    addr: SocketAddr,
) -> Result<u8, BackendError> {
    let Some(tls) = tls else {
        return Ok(1);
    };
    if !greeting.capabilities.contains(CapabilityFlags::CLIENT_SSL) {
        return if tls.required {
            Err(BackendError::TlsUnavailable)
        } else {
            Ok(1)
        };
    }
    // The SSLRequest is the response's first 32 bytes; the whole response
    // follows over TLS.
    response.capabilities |= CapabilityFlags::CLIENT_SSL;
    let encoded = response.encode();
    stream
        .write(1, &encoded[..crate::protocol::SSL_REQUEST_LEN])
        .await
        .map_err(ConnError::from)?;
    stream
        .connect_tls(
            &tls.connector,
            rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
        )
        .await?;
    Ok(2)
}

/// Re-authenticates a logged-in backend session (opened with `caps`,
/// greeted with `nonce`) as the user of `request`: COM_CHANGE_USER with
/// a token for the backend's own nonce, following an auth switch. Returns
/// the OK's payload.
pub async fn change_user(
    stream: &mut PacketStream,
    nonce: &[u8],
    caps: CapabilityFlags,
    request: &ChangeUser,
    password: &Sha1Password,
) -> Result<Bytes, BackendError> {
    stream
        .write(0, &for_backend(request, nonce, password).encode(caps))
        .await
        .map_err(ConnError::from)?;
    follow_login(stream, password, 1).await
}

/// `request` as a backend's COM_CHANGE_USER: with a token for the backend's
/// `nonce`, as `mysql_native_password`.
fn for_backend(request: &ChangeUser, nonce: &[u8], password: &Sha1Password) -> ChangeUser {
    ChangeUser {
        username: request.username.clone(),
        auth_response: password.scramble(nonce),
        database: request.database.clone(),
        charset: request.charset,
        auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
        connect_attrs: request.connect_attrs.clone(),
    }
}

/// Logs in to a kept backend session (opened with `caps`, greeted with
/// `nonce`) as the user of `req`, once it is shown to be at rest.
///
/// One write carries two commands: `SELECT '<token>'`, with a fresh random
/// token, then COM_CHANGE_USER with the client's user, database, charset
/// and attributes (the backend authenticates the user with its nonce and
/// resets the session). The session is at rest if the first answer is the
/// whole answer to that query, within `check_within`: an answer still on its
/// way to the departed client (it quit before reading it, or while a query
/// ran) comes first and does not hold the token, which nobody knew before
/// now ([`BackendError::NotAtRest`]; the session is then dropped, and the
/// change of user with it). Returns the OK's payload.
pub async fn take_over(
    stream: &mut PacketStream,
    (nonce, caps): (&[u8], CapabilityFlags),
    req: &LoginRequest<'_>,
    check_within: Duration,
) -> Result<Bytes, BackendError> {
    if stream.has_buffered() {
        return Err(BackendError::NotAtRest("bytes after the last answer"));
    }
    let (token, query) = token_query();
    let client = req.client;
    let change = ChangeUser {
        username: client.username.clone(),
        auth_response: Vec::new(),
        database: client.database.clone(),
        charset: Some(u16::from(client.charset)),
        auth_plugin: None,
        connect_attrs: client.connect_attrs.clone(),
    };
    let change = for_backend(&change, nonce, req.password).encode(caps);
    stream
        .write_packets(&[(0, &query), (0, &change)])
        .await
        .map_err(ConnError::from)?;
    let answer = tokio::time::timeout(check_within, read_reply(stream, decoder_for(caps))).await;
    match answer {
        Ok(Ok(QueryReply::Rows(t))) if t.rows == [vec![Some(token)]] => {}
        Ok(Ok(_) | Err(_)) => return Err(BackendError::NotAtRest("another answer came first")),
        Err(_) => return Err(BackendError::NotAtRest("no answer in time")),
    }
    follow_login(stream, req.password, 1).await
}

/// `SELECT '<random token>'` as a COM_QUERY payload, and the token: an
/// answer that holds it was made after the query was sent.
fn token_query() -> (String, Vec<u8>) {
    let token = format!("switchyard-{}", hex::encode(crate::auth::generate_nonce()));
    let mut query = Vec::with_capacity(token.len() + 10);
    query.push(crate::protocol::Command::Query as u8);
    query.extend_from_slice(format!("SELECT '{token}'").as_bytes());
    (token, query)
}

/// The decoder of a reply on a session with these flags.
fn decoder_for(caps: CapabilityFlags) -> ResultSetDecoder {
    ResultSetDecoder::new(caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF))
}

/// Reads one text-protocol reply with `decoder`, from sequence id 1 on.
async fn read_reply(
    stream: &mut PacketStream,
    mut decoder: ResultSetDecoder,
) -> Result<QueryReply, ConnError> {
    let mut seq = 1u8;
    loop {
        let p = stream.read_seq(seq).await?;
        seq = seq.wrapping_add(1);
        if let Some(reply) = decoder.feed(&p.payload).map_err(ConnError::from)? {
            return Ok(reply);
        }
    }
}

/// Makes a backend session whose client left clean, and checks that it
/// was at rest: COM_RESET_CONNECTION (rolls back a transaction, releases
/// table locks and `GET_LOCK` locks, drops temporary tables, resets
/// variables) and `SELECT '<random token>'`, in one write; the answers
/// must be exactly the reset's OK and then the token's row, within
/// `within`. An answer of the departed client's still on its way comes
/// first and fails the check.
pub async fn reset_at_rest(
    stream: &mut PacketStream,
    caps: CapabilityFlags,
    within: Duration,
) -> Result<(), BackendError> {
    if stream.has_buffered() {
        return Err(BackendError::NotAtRest("bytes after the last answer"));
    }
    let (token, query) = token_query();
    let reset = [crate::protocol::Command::ResetConnection as u8];
    stream
        .write_packets(&[(0, &reset), (0, &query)])
        .await
        .map_err(ConnError::from)?;
    let answers = tokio::time::timeout(within, async {
        let reset = stream.read_seq(1).await?;
        if reset.payload.first() != Some(&0x00) {
            return Ok::<_, ConnError>(None);
        }
        read_reply(stream, decoder_for(caps)).await.map(Some)
    })
    .await;
    match answers {
        Ok(Ok(Some(QueryReply::Rows(t)))) if t.rows == [vec![Some(token)]] => {}
        Ok(Ok(_) | Err(_)) => return Err(BackendError::NotAtRest("another answer came first")),
        Err(_) => return Err(BackendError::NotAtRest("no answer in time")),
    }
    if stream.has_buffered() {
        return Err(BackendError::NotAtRest("bytes after the last answer"));
    }
    Ok(())
}

/// Sends `response` and follows the backend's answers (one auth switch to
/// `mysql_native_password` at most) to its OK, whose payload is returned.
async fn login(
    stream: &mut PacketStream,
    response: &HandshakeResponse,
    password: &Sha1Password,
    first_seq: u8,
) -> Result<Bytes, BackendError> {
    stream
        .write(first_seq, &response.encode())
        .await
        .map_err(ConnError::from)?;
    follow_login(stream, password, first_seq + 1).await
}

/// Follows a backend's answers from sequence id `seq` on (one auth switch
/// to `mysql_native_password` at most) to its OK, whose payload is
/// returned.
async fn follow_login(
    stream: &mut PacketStream,
    password: &Sha1Password,
    mut seq: u8,
) -> Result<Bytes, BackendError> {
    let mut switched = false;
    loop {
        let p = stream.read_seq(seq).await?;
        match p.payload.first() {
            Some(0x00) => return Ok(p.payload),
            Some(0xff) => {
                return Err(BackendError::Refused(
                    ErrPacket::decode(&p.payload).map_err(ConnError::from)?,
                ));
            }
            Some(0xfe) if !switched => {
                let switch = AuthSwitchRequest::decode(&p.payload).map_err(ConnError::from)?;
                if switch.plugin != NATIVE_PASSWORD_PLUGIN {
                    return Err(BackendError::UnsupportedPlugin(switch.plugin));
                }
                let token = password.scramble(&switch.data);
                stream
                    .write(seq + 1, &token)
                    .await
                    .map_err(ConnError::from)?;
                seq = seq.wrapping_add(2);
                switched = true;
            }
            _ => {
                return Err(
                    ConnError::Protocol(crate::protocol::ProtocolError::Malformed(
                        "backend login reply",
                    ))
                    .into(),
                );
            }
        }
    }
}

/// A session of Switchyard's own (the monitor account) for small queries.
#[derive(Debug)]
pub struct MonitorSession {
    stream: PacketStream,
    /// The backend's greeting.
    pub greeting: Greeting,
}

impl MonitorSession {
    /// Connects to `addr` and logs in as `user`, over TLS if `tls` (a pool
    /// of the backend's) says so.
    pub async fn open(
        addr: SocketAddr,
        user: &str,
        password: &Sha1Password,
        tls: Option<&BackendTls>,
    ) -> Result<Self, BackendError> {
        let (mut stream, greeting) = connect(addr).await?;
        let wanted = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_LONG_FLAG
            | CapabilityFlags::CLIENT_TRANSACTIONS;
        let mut response = HandshakeResponse {
            capabilities: wanted & (greeting.capabilities | CapabilityFlags::client_only())
                | CapabilityFlags::CLIENT_PROTOCOL_41
                | CapabilityFlags::CLIENT_SECURE_CONNECTION
                | CapabilityFlags::CLIENT_PLUGIN_AUTH,
            max_packet_size: 1 << 24,
            charset: 45,
            mariadb_capabilities: MariaDbCapabilities::empty(),
            username: user.to_owned(),
            auth_response: password.scramble(&greeting.auth_data),
            database: None,
            auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.into()),
            connect_attrs: None,
        };
        let first_seq = secure(&mut stream, &mut response, &greeting, tls, addr).await?;
        login(&mut stream, &response, password, first_seq).await?;
        Ok(Self { stream, greeting })
    }

    /// Runs `sql` (COM_QUERY) and reads the whole reply.
    pub async fn query(&mut self, sql: &str) -> Result<QueryReply, BackendError> {
        self.query_up_to(sql, 1024).await
    }

    /// Runs `sql`, accepting up to `max_rows` rows.
    pub async fn query_up_to(
        &mut self,
        sql: &str,
        max_rows: usize,
    ) -> Result<QueryReply, BackendError> {
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(0x03);
        payload.extend_from_slice(sql.as_bytes());
        self.stream
            .write(0, &payload)
            .await
            .map_err(ConnError::from)?;
        let decoder = ResultSetDecoder::new(false).with_max_rows(max_rows);
        Ok(read_reply(&mut self.stream, decoder).await?)
    }

    /// Runs `sql` and expects rows.
    pub async fn rows(&mut self, sql: &str) -> Result<TextResult, BackendError> {
        self.rows_up_to(sql, 1024).await
    }

    /// Runs `sql` and expects up to `max_rows` rows.
    pub async fn rows_up_to(
        &mut self,
        sql: &str,
        max_rows: usize,
    ) -> Result<TextResult, BackendError> {
        match self.query_up_to(sql, max_rows).await? {
            QueryReply::Rows(t) => Ok(t),
            QueryReply::Ok => Ok(TextResult::default()),
            QueryReply::Err(e) => Err(BackendError::Refused(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(caps: CapabilityFlags) -> Greeting {
        Greeting {
            server_version: "5.5.5-10.11.19-MariaDB".into(),
            connection_id: 1,
            auth_data: b"12345678901234567890".to_vec(),
            capabilities: caps,
            charset: 45,
            status: crate::protocol::StatusFlags::empty(),
            mariadb_capabilities: MariaDbCapabilities::all(),
            auth_plugin: NATIVE_PASSWORD_PLUGIN.into(),
        }
    }

    #[test]
    fn backend_gets_the_clients_negotiated_flags_only() {
        let all = CapabilityFlags::all();
        let client = HandshakeResponse {
            // A client asking for more than it was offered.
            capabilities: all - CapabilityFlags::CLIENT_LONG_PASSWORD,
            max_packet_size: 1 << 24,
            charset: 33,
            mariadb_capabilities: MariaDbCapabilities::all(),
            username: "u".into(),
            auth_response: vec![1; 20],
            database: None,
            auth_plugin: Some("caching_sha2_password".into()),
            connect_attrs: Some(b"\x01a\x01b".to_vec()),
        };
        let password = Sha1Password::of_password(b"pw");
        let offered = CapabilityFlags::implemented()
            - CapabilityFlags::CLIENT_LONG_PASSWORD
            - CapabilityFlags::CLIENT_DEPRECATE_EOF;
        let req = LoginRequest {
            client: &client,
            password: &password,
            offered,
            offered_mariadb: MariaDbCapabilities::MARIADB_CLIENT_PROGRESS,
        };
        let g = greeting(all - CapabilityFlags::CLIENT_LONG_PASSWORD);
        let r = backend_response(&req, &g);
        assert!(
            !r.capabilities
                .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
        );
        assert!(
            !r.capabilities
                .contains(CapabilityFlags::CLIENT_QUERY_ATTRIBUTES)
        );
        assert!(
            !r.capabilities
                .intersects(CapabilityFlags::CLIENT_SSL | CapabilityFlags::CLIENT_COMPRESS)
        );
        assert!(
            !r.capabilities
                .contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
        );
        assert!(r.capabilities.contains(
            CapabilityFlags::CLIENT_CONNECT_ATTRS | CapabilityFlags::CLIENT_SESSION_TRACK
        ));
        assert_eq!(
            r.mariadb_capabilities,
            MariaDbCapabilities::MARIADB_CLIENT_PROGRESS
        );
        assert_eq!(r.auth_plugin.as_deref(), Some(NATIVE_PASSWORD_PLUGIN));
        assert_eq!(r.charset, 33);
        assert!(
            crate::auth::verify_native(
                &crate::auth::PasswordHash::of_password(b"pw"),
                &g.auth_data,
                &r.auth_response
            )
            .is_some()
        );
        assert!(lost_flags(&req, &r).is_empty());
        // A backend without a flag does not get it either, and it is noticed.
        let g = greeting(
            all - CapabilityFlags::CLIENT_LONG_PASSWORD - CapabilityFlags::CLIENT_SESSION_TRACK,
        );
        let r = backend_response(&req, &g);
        assert!(
            !r.capabilities
                .contains(CapabilityFlags::CLIENT_SESSION_TRACK)
        );
        assert_eq!(lost_flags(&req, &r), CapabilityFlags::CLIENT_SESSION_TRACK);
    }
}
