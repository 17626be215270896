//! The admin HTTP endpoint: status (JSON and a page for browsers),
//! Prometheus metrics, reload, backend drain, policy upload.
//!
//! A deliberately small HTTP/1.1 server: one request per connection, every
//! size bounded (headers 16 KiB, bodies 1 MiB, a posted policy 64 MiB), a
//! deadline per request, and a bearer token checked in constant time (as
//! SHA-256 digests) when one is configured.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::metrics::{self, Outcome, header, label};
use crate::pool::Lag;
use crate::server::Shared;
use crate::server::state::token_digest;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;
const MAX_POLICY: usize = 64 << 20;
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Starts serving `listener`; the returned future runs until dropped.
pub fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    info!(admin = %listener.local_addr()?, "admin endpoint listening");
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
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                if tokio::time::timeout(REQUEST_DEADLINE, connection(socket, peer, &shared))
                    .await
                    .is_err()
                {
                    warn!(client = %peer, "admin request timed out");
                }
            });
        }
    })
}

/// One parsed request.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// An answer.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, v: &Value) -> Self {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn error(status: u16, message: &str) -> Self {
        Self::json(status, &json!({ "ok": false, "error": message }))
    }
}

async fn connection(mut socket: TcpStream, peer: SocketAddr, shared: &Arc<Shared>) {
    let response = match read_request(&mut socket).await {
        Ok(req) => {
            let r = handle(req, shared).await;
            if r.status >= 400 {
                info!(client = %peer, status = r.status, "admin request refused");
            }
            r
        }
        Err(r) => r,
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.status == 401 {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(&response.body).await;
    let _ = socket.shutdown().await;
}

async fn read_request(socket: &mut TcpStream) -> Result<Request, Response> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(Response::error(413, "request head too large"));
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Response::error(400, "incomplete request")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Response::error(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Err(Response::error(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::error(400, "HTTP/1.x only"));
    }
    let mut content_length = 0usize;
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Response::error(400, "bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| Response::error(400, "bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::error(411, "send a Content-Length"));
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_owned());
        }
    }
    let path = path.split('?').next().unwrap_or("").to_owned();
    let limit = if path == "/policy" {
        MAX_POLICY
    } else {
        MAX_BODY
    };
    if content_length > limit {
        return Err(Response::error(413, "body too large"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    if body.len() > content_length {
        return Err(Response::error(400, "more bytes than Content-Length"));
    }
    if body.len() < content_length {
        let missing = content_length - body.len();
        let mut rest = vec![0u8; missing];
        socket
            .read_exact(&mut rest)
            .await
            .map_err(|_| Response::error(400, "incomplete body"))?;
        body.extend_from_slice(&rest);
    }
    Ok(Request {
        method: method.to_owned(),
        path,
        authorization,
        body,
    })
}

fn authorized(req: &Request, shared: &Shared) -> bool {
    let Some(expected) = shared.state().admin_token.as_deref().copied() else {
        return true;
    };
    let Some(given) = req
        .authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(token_digest(given.trim().as_bytes()).ct_eq(&expected))
}

async fn handle(req: Request, shared: &Arc<Shared>) -> Response {
    if !authorized(&req, shared) {
        return Response::error(401, "a valid bearer token is required");
    }
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: page(&status(shared)).into_bytes(),
        },
        ("GET", ["status"]) => Response::json(200, &status(shared)),
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(shared).into_bytes(),
        },
        ("POST", ["reload"]) => match shared.reload().await {
            Ok(()) => Response::json(200, &json!({ "ok": true })),
            Err(e) => Response::error(400, &e),
        },
        ("POST", ["backends", addr, action @ ("drain" | "undrain")]) => {
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                return Response::error(400, "not an ip:port address");
            };
            let Some(backend) = shared.registry.alive().into_iter().find(|b| b.addr == addr) else {
                return Response::error(404, "no such backend");
            };
            let drain = *action == "drain";
            if backend.set_drain(drain) {
                info!(backend = %addr, drain, "backend drain set from the admin endpoint");
            }
            Response::json(
                200,
                &json!({ "ok": true, "backend": addr.to_string(), "draining": drain }),
            )
        }
        ("POST", ["policy"]) => {
            if req.body.is_empty() {
                return Response::error(400, "post the policy component's bytes");
            }
            match shared.swap_policy(req.body, None, None).await {
                Ok(hash) => Response::json(200, &json!({ "ok": true, "sha256": hash })),
                Err(e) => Response::error(400, &e),
            }
        }
        ("POST", ["policies", name]) => {
            if req.body.is_empty() {
                return Response::error(400, "post the policy component's bytes");
            }
            if !shared.state().named.contains_key(*name) {
                return Response::error(404, "no such policy");
            }
            match shared
                .swap_policy(req.body, None, Some((*name).to_owned()))
                .await
            {
                Ok(hash) => Response::json(200, &json!({ "ok": true, "sha256": hash })),
                Err(e) => Response::error(400, &e),
            }
        }
        (_, [""] | ["status"] | ["metrics"] | ["reload"] | ["policy"] | ["policies", _])
        | (_, ["backends", _, "drain" | "undrain"]) => Response::error(405, "method not allowed"),
        _ => Response::error(404, "no such endpoint"),
    }
}

fn lag_json(lag: Lag) -> (Value, &'static str) {
    match lag {
        Lag::Unknown => (Value::Null, "unknown"),
        Lag::NotReplica => (Value::Null, "not-replica"),
        Lag::Stopped => (Value::Null, "stopped"),
        Lag::Seconds(s) => (json!(s), "running"),
    }
}

/// The `/status` document.
fn status(shared: &Shared) -> Value {
    let state = shared.state();
    let configured: Vec<SocketAddr> = state.pools.backends().map(|b| b.addr).collect();
    let backends: Vec<Value> = shared
        .registry
        .alive()
        .iter()
        .map(|b| {
            let (lag, replication) = lag_json(b.lag());
            json!({
                "addr": b.addr.to_string(),
                "state": if b.is_up() { "up" } else { "down" },
                "draining": b.is_draining(),
                "configured": configured.contains(&b.addr),
                "sessions": b.active_sessions(),
                "read_only": b.read_only(),
                "lag_seconds": lag,
                "replication": replication,
                "last_error": b.last_error(),
            })
        })
        .collect();
    let pools: Vec<Value> = state
        .pools
        .iter()
        .map(|p| {
            let s = p.status();
            let cfg = &state.config.pools[&p.name];
            json!({
                "name": p.name,
                "balance": format!("{:?}", cfg.balance),
                "role": format!("{:?}", cfg.role),
                "max_lag": cfg.max_lag,
                "when_all_down": format!("{:?}", cfg.when_all_down),
                "healthy_backends": s.healthy_backends,
                "total_backends": s.total_backends,
                "active_sessions": s.active_sessions,
                "max_lag_ms": s.max_lag_ms,
                "backends": p.members.iter().map(|m| json!({
                    "addr": m.backend.addr.to_string(),
                    "weight": m.weight,
                    "max_connections": m.max_connections,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let users: Vec<Value> = shared
        .user_sessions
        .snapshot()
        .into_iter()
        .map(|(user, n)| json!({ "user": user, "sessions": n }))
        .collect();
    let logins: serde_json::Map<String, Value> = Outcome::ALL
        .iter()
        .map(|o| (o.label().to_owned(), json!(shared.metrics.logins(*o))))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.uptime().as_secs(),
        "shutting_down": shared.is_shutting_down(),
        "sessions": shared.metrics.sessions.load(std::sync::atomic::Ordering::Relaxed),
        "policy": { "name": state.policy.name(), "sha256": state.policy.hash() },
        "policies": state.named.iter().map(|(n, p)| (n.clone(), json!({ "name": p.name(), "sha256": p.hash() }))).collect::<serde_json::Map<_, _>>(),
        "pools": pools,
        "backends": backends,
        "users": users,
        "accounts_loaded_from_primary": shared.loaded_users.len(),
        "throttled_addresses": shared.throttle.blocked(std::time::Instant::now()),
        "logins": logins,
    })
}

/// Everything for `/metrics`.
fn render_metrics(shared: &Shared) -> String {
    let mut out = String::with_capacity(8192);
    shared.metrics.render(&mut out);
    let state = shared.state();
    let backends = shared.registry.alive();
    let per_backend = |out: &mut String,
                       name: &str,
                       help: &str,
                       f: &dyn Fn(&crate::pool::Backend) -> Option<f64>| {
        header(out, name, help, "gauge");
        for b in &backends {
            if let Some(v) = f(b) {
                let _ = writeln!(out, "{name}{{backend=\"{}\"}} {v}", b.addr);
            }
        }
    };
    per_backend(
        &mut out,
        "switchyard_backend_up",
        "Whether the backend passes its health checks (1) or not (0).",
        &|b| Some(if b.is_up() { 1.0 } else { 0.0 }),
    );
    per_backend(
        &mut out,
        "switchyard_backend_draining",
        "Whether the backend takes no new sessions (drained, or removed from the configuration).",
        &|b| {
            let configured = state.pools.backend(b.addr).is_some();
            Some(if b.is_draining() || !configured {
                1.0
            } else {
                0.0
            })
        },
    );
    per_backend(
        &mut out,
        "switchyard_backend_sessions",
        "Sessions relayed to the backend (including logins in progress).",
        &|b| Some(f64::from(b.active_sessions())),
    );
    per_backend(
        &mut out,
        "switchyard_backend_replication_lag_seconds",
        "Replication lag as last measured (absent when unknown or stopped).",
        &|b| match b.lag() {
            Lag::Seconds(s) => Some(s as f64),
            Lag::NotReplica => Some(0.0),
            _ => None,
        },
    );
    per_backend(
        &mut out,
        "switchyard_backend_read_only",
        "The backend's read_only as last read (absent when unknown).",
        &|b| b.read_only().map(|r| if r { 1.0 } else { 0.0 }),
    );
    header(
        &mut out,
        "switchyard_pool_healthy_backends",
        "Backends of the pool that qualify for a new session.",
        "gauge",
    );
    for p in state.pools.iter() {
        let _ = writeln!(
            out,
            "switchyard_pool_healthy_backends{{pool=\"{}\"}} {}",
            label(&p.name),
            p.status().healthy_backends
        );
    }
    header(
        &mut out,
        "switchyard_user_sessions",
        "Sessions per user.",
        "gauge",
    );
    for (user, n) in shared.user_sessions.snapshot() {
        let _ = writeln!(
            out,
            "switchyard_user_sessions{{user=\"{}\"}} {n}",
            label(&user)
        );
    }
    metrics::gauge(
        &mut out,
        "switchyard_accounts_loaded",
        "Accounts loaded from the primary (users.source = \"backend\").",
        shared.loaded_users.len() as i64,
    );
    metrics::gauge(
        &mut out,
        "switchyard_throttled_addresses",
        "Client addresses blocked after failed logins.",
        shared.throttle.blocked(std::time::Instant::now()) as i64,
    );
    header(
        &mut out,
        "switchyard_policy_info",
        "The routing policy in use.",
        "gauge",
    );
    let policies = std::iter::once(("", &state.policy))
        .chain(state.named.iter().map(|(n, p)| (n.as_str(), p)));
    for (which, p) in policies {
        let _ = writeln!(
            out,
            "switchyard_policy_info{{policy=\"{}\",name=\"{}\",sha256=\"{}\"}} 1",
            label(which),
            label(p.name()),
            p.hash()
        );
    }
    metrics::gauge(
        &mut out,
        "switchyard_uptime_seconds",
        "Time since the process started serving.",
        shared.uptime().as_secs() as i64,
    );
    out
}

/// A small status page for a browser.
fn page(status: &Value) -> String {
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
