//! The admin HTTP endpoint: status (JSON and a page for browsers),
//! Prometheus metrics, reload, backend drain, policy upload.
//!
//! HTTP/1.1 itself is hyper's; this module decides who gets in and what a
//! request may cost, from the request head alone, before a byte of the body
//! is read:
//! - a `Host` that is not an IP address or `localhost` is refused (403) when
//!   no token is configured, so a web page cannot reach a tokenless admin
//!   through a name it rebinds to 127.0.0.1 (DNS rebinding);
//! - an `Origin` other than the endpoint's own is refused (403): a page of
//!   another site cannot make a local browser reload, drain or swap;
//! - the bearer token, when one is configured, is checked (as SHA-256
//!   digests, in constant time); a request without it gets 401 and its body
//!   is never read;
//! - the body is read only for the route that takes it, up to that route's
//!   cap (a policy: 64 MiB; anything else: 1 MiB; a larger
//!   `Content-Length` gets 413 unread).
//!
//! One request per connection, at most [`Limits::max_connections`]
//! connections at once (further ones get 503), a deadline for the head and
//! one for the whole request. What the requests do goes through
//! [`Control`], which the server implements (`server/control.rs`): this
//! module imports nothing of the server's.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// SHA-256 of a bearer token: what is kept and compared (in constant time).
pub fn token_digest(token: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token).into()
}

/// What the admin endpoint can see and do in the running proxy.
pub trait Control: Send + Sync + 'static {
    /// SHA-256 of the bearer token every request must carry, if one is
    /// configured (read for each request: a reload may change it).
    fn token_digest(&self) -> Option<[u8; 32]>;
    /// The `/status` document.
    fn status(&self) -> Value;
    /// The `/metrics` text.
    fn metrics(&self) -> String;
    /// Reads the configuration file again; the reason when it is refused.
    fn reload(self: &Arc<Self>) -> impl Future<Output = Result<(), String>> + Send;
    /// Drains (`true`) or undrains a backend; `None` if there is no such
    /// backend.
    fn set_drain(&self, backend: SocketAddr, drain: bool) -> Option<()>;
    /// Whether a `[policies.<name>]` called `name` is configured.
    fn has_policy(&self, name: &str) -> bool;
    /// For `/live` and `/ready` (no token needed): whether every event
    /// loop runs, and why the instance should get no new clients, if so
    /// (draining, shutting down).
    fn health(&self) -> Health;
    /// Stops calling the instance ready (`/ready` answers 503 from now on);
    /// it still serves, and accepts clients until SIGTERM. True the first
    /// time.
    fn drain_instance(&self) -> bool;
    /// Swaps in the policy `bytes` (for the named policy `which`, else the
    /// one of `listen`); its SHA-256, or why it was refused.
    fn swap_policy(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        which: Option<String>,
    ) -> impl Future<Output = Result<String, String>> + Send;
}

/// Sends `POST path` with an empty body (and the bearer `token`) to the
/// admin endpoint at `addr`, blocking (for the command-line tool); the
/// status code.
pub fn post(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let timeout = Some(Duration::from_secs(10));
    let target = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {target}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    s.take(MAX_HEAD as u64).read_to_end(&mut head)?;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// What `/live` and `/ready` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Every event loop ran recently.
    pub live: bool,
    /// Why not ready, if not: `"draining"`, `"stopping"`.
    pub unready: Option<&'static str>,
}

/// The most a request head may take (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// The most a posted policy may take: the example policies of language
/// runtimes are 2-19 MB.
pub const MAX_POLICY: usize = 64 << 20;
/// The most any other request's body may take (they need none).
const MAX_BODY: usize = 1 << 20;

/// What the endpoint lets one client cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones get 503 and are closed.
    pub max_connections: usize,
    /// Time from accepting a connection to its whole request head.
    pub head_timeout: Duration,
    /// Time from accepting a connection to the last byte of its body.
    pub request_timeout: Duration,
    /// Time a connection may stay open in all, answer included (a client
    /// that does not read its answer).
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16,
            head_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(600),
        }
    }
}

/// Starts serving `listener` with the default [`Limits`]; the returned
/// future runs until dropped.
pub fn serve<C: Control>(
    listener: std::net::TcpListener,
    control: Arc<C>,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    serve_with(listener, control, Limits::default())
}

/// Starts serving `listener` with `limits`.
pub fn serve_with<C: Control>(
    listener: std::net::TcpListener,
    control: Arc<C>,
    limits: Limits,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    info!(admin = %listener.local_addr()?, "admin endpoint listening");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    Ok(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                warn!(
                    client = %peer,
                    max_connections = limits.max_connections,
                    "admin connection refused: too many open"
                );
                tokio::spawn(busy(socket));
                continue;
            };
            let control = Arc::clone(&control);
            tokio::spawn(async move {
                connection(socket, peer, control, limits).await;
                drop(slot);
            });
        }
    })
}

/// Answers a connection over the limit with 503 without reading from it.
async fn busy(mut socket: TcpStream) {
    let body = "{\n  \"ok\": false,\n  \"error\": \"too many admin connections\"\n}\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = socket.write_all(answer.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

async fn connection<C: Control, S>(socket: S, peer: SocketAddr, control: Arc<C>, limits: Limits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let read_by = tokio::time::Instant::now() + limits.request_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let control = Arc::clone(&control);
        async move {
            // A probe's 503 (draining) is an answer, not a refusal: a
            // kubelet asks every few seconds.
            let probe = matches!(req.uri().path(), "/ready" | "/live");
            let r = handle(req, &control, read_by).await;
            if r.status() != StatusCode::OK
                && !(probe && r.status() == StatusCode::SERVICE_UNAVAILABLE)
            {
                info!(client = %peer, status = r.status().as_u16(), "admin request refused");
            }
            Ok::<_, Infallible>(r)
        }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(MAX_HEAD)
        .keep_alive(false)
        // A client may close its sending half once its request is out
        // (`nc -N`) and still get the answer.
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
    match tokio::time::timeout(limits.connection_timeout, serving).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_timeout() => warn!(client = %peer, "admin request timed out"),
        Ok(Err(e)) if e.is_parse() || e.is_parse_status() => {
            info!(client = %peer, error = %e, "admin request refused: not HTTP/1.x");
        }
        Ok(Err(_)) => {}
        Err(_) => warn!(client = %peer, "admin connection timed out"),
    }
}

/// Serves one connection whose client sends `request` and closes its
/// sending half; everything it was answered. For the `admin_request` fuzz
/// target: the same hyper settings, head checks and routes as a real
/// connection.
#[doc(hidden)]
pub async fn exchange_for_fuzzing<C: Control>(request: &[u8], control: Arc<C>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    let limits = Limits {
        head_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        connection_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let serving = tokio::spawn(connection(server, peer, control, limits));
    let mut answer = Vec::new();
    let talk = async {
        let _ = client.write_all(request).await;
        let _ = client.shutdown().await;
        let _ = client.read_to_end(&mut answer).await;
    };
    tokio::join!(talk, async {
        let _ = serving.await;
    });
    answer
}

type Response = hyper::Response<Full<Bytes>>;

fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == 401 {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// A probe's answer: 200 `ok`, or 503 with the reason.
fn probe(result: Result<(), &'static str>) -> Response {
    match result {
        Ok(()) => respond(200, "text/plain; charset=utf-8", b"ok\n".to_vec()),
        Err(why) => respond(
            503,
            "text/plain; charset=utf-8",
            format!("{why}\n").into_bytes(),
        ),
    }
}

fn json_response(status: u16, v: &Value) -> Response {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "ok": false, "error": message }))
}

/// An error answer's status and message.
type Refusal = (u16, &'static str);

/// What a request asks for, decided from its method and path.
enum Route {
    Live,
    Ready,
    DrainInstance,
    Page,
    Status,
    Metrics,
    Reload,
    Drain(SocketAddr, bool),
    Policy(Option<String>),
}

impl Route {
    /// The route, or the status and message of the error answer (404,
    /// 405, 400).
    fn of(method: &Method, path: &str) -> Result<Self, Refusal> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let post = method == Method::POST;
        let get = method == Method::GET;
        match segments.as_slice() {
            ["live"] if get => Ok(Self::Live),
            ["ready"] if get => Ok(Self::Ready),
            ["drain"] if post => Ok(Self::DrainInstance),
            [""] if get => Ok(Self::Page),
            ["status"] if get => Ok(Self::Status),
            ["metrics"] if get => Ok(Self::Metrics),
            ["reload"] if post => Ok(Self::Reload),
            ["backends", addr, action @ ("drain" | "undrain")] if post => addr
                .parse()
                .map(|a| Self::Drain(a, *action == "drain"))
                .map_err(|_| (400, "not an ip:port address")),
            ["policy"] if post => Ok(Self::Policy(None)),
            ["policies", name] if post => Ok(Self::Policy(Some((*name).to_owned()))),
            ["live"]
            | ["ready"]
            | ["drain"]
            | [""]
            | ["status"]
            | ["metrics"]
            | ["reload"]
            | ["policy"]
            | ["policies", _]
            | ["backends", _, "drain" | "undrain"] => Err((405, "method not allowed")),
            _ => Err((404, "no such endpoint")),
        }
    }

    /// The most body this route reads.
    fn body_limit(&self) -> usize {
        match self {
            Self::Policy(_) => MAX_POLICY,
            _ => MAX_BODY,
        }
    }
}

async fn handle<C: Control>(
    req: Request<Incoming>,
    control: &Arc<C>,
    read_by: tokio::time::Instant,
) -> Response {
    let route = Route::of(req.method(), req.uri().path());
    // Probes (a kubelet, a balancer) carry no token: these two tell only
    // what the instance's readiness already shows from outside.
    match route {
        Ok(Route::Live) => return probe(control.health().live.then_some(()).ok_or("stalled")),
        Ok(Route::Ready) => return probe(control.health().unready.map_or(Ok(()), Err)),
        _ => {}
    }
    let expected = control.token_digest();
    if let Err(why) = same_origin(req.headers(), expected.is_none()) {
        return error(403, why);
    }
    if !authorized(req.headers(), expected) {
        return error(401, "a valid bearer token is required");
    }
    let route = match route {
        Ok(r) => r,
        Err((status, why)) => return error(status, why),
    };
    let body = match read_body(req, route.body_limit(), read_by).await {
        Ok(b) => b,
        Err((status, why)) => return error(status, why),
    };
    match route {
        Route::Page => respond(
            200,
            "text/html; charset=utf-8",
            page(&control.status()).into_bytes(),
        ),
        Route::Live | Route::Ready => error(500, "answered above"),
        Route::DrainInstance => {
            if control.drain_instance() {
                info!("instance draining (admin endpoint): /ready answers 503 from now on");
            }
            json_response(200, &json!({ "ok": true, "ready": false }))
        }
        Route::Status => json_response(200, &control.status()),
        Route::Metrics => respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            control.metrics().into_bytes(),
        ),
        Route::Reload => match control.reload().await {
            Ok(()) => json_response(200, &json!({ "ok": true })),
            Err(e) => error(400, &e),
        },
        Route::Drain(addr, drain) => match control.set_drain(addr, drain) {
            Some(()) => json_response(
                200,
                &json!({ "ok": true, "backend": addr.to_string(), "draining": drain }),
            ),
            None => error(404, "no such backend"),
        },
        Route::Policy(which) => {
            if body.is_empty() {
                return error(400, "post the policy component's bytes");
            }
            if let Some(name) = &which
                && !control.has_policy(name)
            {
                return error(404, "no such policy");
            }
            match control.swap_policy(body, which).await {
                Ok(hash) => json_response(200, &json!({ "ok": true, "sha256": hash })),
                Err(e) => error(400, &e),
            }
        }
    }
}

/// The body, at most `limit` bytes, by `read_by`.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    read_by: tokio::time::Instant,
) -> Result<Vec<u8>, Refusal> {
    let headers = req.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err((411, "send a Content-Length"));
    }
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or((400, "bad Content-Length"))?,
    };
    if declared > limit as u64 {
        return Err((413, "body too large"));
    }
    let reading = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout_at(read_by, reading).await {
        Ok(Ok(body)) => Ok(body.to_bytes().to_vec()),
        Ok(Err(_)) => Err((400, "incomplete body")),
        Err(_) => Err((408, "the request took too long")),
    }
}

/// Refuses a request that a web page of another site could have made: an
/// `Origin` that is not this endpoint (`http://` or `https://` and the
/// request's `Host`), and, when `tokenless`, a `Host` that is not an IP
/// address or `localhost` (a name that rebinds to this address). Requests
/// without these headers (command-line clients, scrapers) pass.
fn same_origin(headers: &HeaderMap, tokenless: bool) -> Result<(), &'static str> {
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.to_str().map_err(|_| "bad Host header")?),
        None => None,
    };
    if tokenless && host.is_some_and(|h| !is_local_host(h)) {
        return Err("Host must be an IP address or localhost (or configure a token)");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| "bad Origin header")?;
        let own = host.is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        });
        if !own {
            return Err("cross-origin requests are refused");
        }
    }
    Ok(())
}

/// Whether a `Host` header names an IP address or `localhost` (with or
/// without a port).
fn is_local_host(host: &str) -> bool {
    let is_port = |p: &str| p.parse::<u16>().is_ok();
    if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        return rest.split_once(']').is_some_and(|(v6, tail)| {
            (tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port))
                && v6.parse::<std::net::Ipv6Addr>().is_ok()
        });
    }
    let name = match host.rsplit_once(':') {
        Some((name, p)) if is_port(p) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

fn authorized(headers: &HeaderMap, expected: Option<[u8; 32]>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(token_digest(given.trim().as_bytes()).ct_eq(&expected))
}

/// A small status page for a browser.
fn page(status: &Value) -> String {
    use std::fmt::Write as _;
    let esc = |v: &Value| -> String {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Null => "–".into(),
            other => other.to_string(),
        };
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>Switchyard</title><style>body{font:14px system-ui;margin:2em}\
         table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
         .up{color:#070}.down{color:#b00}</style><h1>Switchyard</h1>",
    );
    let _ = write!(
        html,
        "<p>version {} · up {} s · {} sessions · policy {} ({})</p>",
        esc(&status["version"]),
        esc(&status["uptime_seconds"]),
        esc(&status["sessions"]),
        esc(&status["policy"]["name"]),
        esc(&status["policy"]["sha256"])
    );
    html.push_str("<h2>Pools</h2><table><tr><th>pool<th>balance<th>role<th>max lag<th>qualifying<th>sessions<th>backends</tr>");
    for p in status["pools"].as_array().into_iter().flatten() {
        let members: Vec<String> = p["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| esc(&b["addr"]))
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{} / {}<td>{}<td>{}</tr>",
            esc(&p["name"]),
            esc(&p["balance"]),
            esc(&p["role"]),
            esc(&p["max_lag"]),
            esc(&p["healthy_backends"]),
            esc(&p["total_backends"]),
            esc(&p["active_sessions"]),
            members.join(", ")
        );
    }
    html.push_str("</table><h2>Backends</h2><table><tr><th>backend<th>state<th>draining<th>sessions<th>read_only<th>replication<th>lag s<th>last error</tr>");
    for b in status["backends"].as_array().into_iter().flatten() {
        let state = esc(&b["state"]);
        let _ = write!(
            html,
            "<tr><td>{}<td class={state}>{state}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}</tr>",
            esc(&b["addr"]),
            esc(&b["draining"]),
            esc(&b["sessions"]),
            esc(&b["read_only"]),
            esc(&b["replication"]),
            esc(&b["lag_seconds"]),
            esc(&b["last_error"])
        );
    }
    html.push_str("</table><p><a href=/status>JSON</a> · <a href=/metrics>metrics</a></p>");
    html
}

#[cfg(test)]
mod tests;
