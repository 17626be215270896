//! The admin endpoint in-process: a real listener on loopback, raw HTTP
//! bytes from a real socket, and a [`Control`] that records what it is
//! asked to do.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const TOKEN: &str = "admin-test-token";

/// Records what the endpoint asked for.
#[derive(Default)]
struct Fake {
    token: Option<[u8; 32]>,
    reloads: AtomicU32,
    swaps: Mutex<Vec<(usize, Option<String>)>>,
    drains: Mutex<Vec<(SocketAddr, bool)>>,
    instance_drained: std::sync::atomic::AtomicBool,
    stalled: bool,
}

impl Fake {
    fn with_token() -> Self {
        Self {
            token: Some(token_digest(TOKEN.as_bytes())),
            ..Self::default()
        }
    }

    /// Whether anything changed: a reload, a swap or a drain.
    fn changed_anything(&self) -> bool {
        self.reloads.load(Ordering::SeqCst) > 0
            || !self.swaps.lock().unwrap().is_empty()
            || !self.drains.lock().unwrap().is_empty()
    }
}

impl Control for Fake {
    fn token_digest(&self) -> Option<[u8; 32]> {
        self.token
    }

    fn status(&self) -> Value {
        json!({
            "version": "test",
            "policy": { "name": "p", "sha256": "ab" },
            "pools": [],
            "backends": [{ "addr": "127.0.0.1:3306", "state": "up" }],
        })
    }

    fn metrics(&self) -> String {
        "switchyard_uptime_seconds 1\n".into()
    }

    async fn reload(self: &Arc<Self>) -> Result<(), String> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn set_drain(&self, backend: SocketAddr, drain: bool) -> Option<()> {
        (backend.port() == 3306).then(|| self.drains.lock().unwrap().push((backend, drain)))
    }

    fn has_policy(&self, name: &str) -> bool {
        name == "named"
    }

    fn health(&self) -> Health {
        Health {
            live: !self.stalled,
            unready: self
                .instance_drained
                .load(Ordering::SeqCst)
                .then_some("draining"),
        }
    }

    fn drain_instance(&self) -> bool {
        !self.instance_drained.swap(true, Ordering::SeqCst)
    }

    async fn swap_policy(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        which: Option<String>,
    ) -> Result<String, String> {
        if !bytes.starts_with(b"\0asm") {
            return Err("not a component".into());
        }
        self.swaps.lock().unwrap().push((bytes.len(), which));
        Ok(format!("{:064x}", bytes.len()))
    }
}

/// The endpoint on a free loopback port.
fn start(fake: Fake, limits: Limits) -> (SocketAddr, Arc<Fake>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(fake);
    tokio::spawn(serve_with(listener, Arc::clone(&fake), limits).unwrap());
    (addr, fake)
}

/// A response as it came off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Everything the server sends until it closes (a reset ends it too), or
/// `None` if it sends nothing within `wait`.
async fn read_all(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Sends `raw` and reads the answer.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    parse(&read_all(&mut s, Duration::from_secs(10)).await)
}

/// A request with `Host: 127.0.0.1`, `headers` (each ending in CRLF) and
/// `body`.
fn request(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Answer {
    exchange(addr, &request(method, path, &bearer(), body)).await
}

#[tokio::test]
async fn probes_need_no_token_and_drain_turns_ready_off() {
    let (addr, fake) = start(Fake::with_token(), Limits::default());
    let probe =
        |path: &'static str| async move { exchange(addr, &request("GET", path, "", b"")).await };
    let a = probe("/live").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"), "{a:?}");
    let a = probe("/ready").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"), "{a:?}");
    // Draining needs the token; the probe then answers 503.
    let a = exchange(addr, &request("POST", "/drain", "", b"")).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(probe("/ready").await.status, 200);
    let a = call(addr, "POST", "/drain", b"").await;
    assert_eq!((a.status, a.json()["ready"].clone()), (200, json!(false)));
    assert!(fake.instance_drained.load(Ordering::SeqCst));
    let a = probe("/ready").await;
    assert_eq!((a.status, a.body.as_str()), (503, "draining\n"), "{a:?}");
    assert_eq!(probe("/live").await.status, 200, "draining is alive");
    assert_eq!(call(addr, "POST", "/ready", b"").await.status, 405);
    let (addr, _) = start(
        Fake {
            stalled: true,
            ..Fake::with_token()
        },
        Limits::default(),
    );
    let a = exchange(addr, &request("GET", "/live", "", b"")).await;
    assert_eq!((a.status, a.body.as_str()), (503, "stalled\n"), "{a:?}");
}

#[tokio::test]
async fn every_route_answers_as_documented() {
    let (addr, fake) = start(Fake::with_token(), Limits::default());
    let a = call(addr, "GET", "/status", b"").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(a.json()["version"], "test");
    assert!(a.body.ends_with("}\n"), "{a:?}");
    let a = call(addr, "GET", "/status?pretty=1", b"").await;
    assert_eq!(a.status, 200, "a query string is ignored: {a:?}");
    let a = call(addr, "GET", "/", b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(a.body.contains("<table") && a.body.contains("127.0.0.1:3306"));
    let a = call(addr, "GET", "/metrics", b"").await;
    assert_eq!(
        (a.status, a.header("content-type")),
        (200, Some("text/plain; version=0.0.4; charset=utf-8"))
    );
    assert_eq!(a.body, "switchyard_uptime_seconds 1\n");

    let a = call(addr, "POST", "/reload", b"").await;
    assert_eq!((a.status, a.json()), (200, json!({ "ok": true })));
    assert_eq!(fake.reloads.load(Ordering::SeqCst), 1);

    let a = call(addr, "POST", "/backends/127.0.0.1:3306/drain", b"").await;
    assert_eq!(
        (a.status, a.json()),
        (
            200,
            json!({ "ok": true, "backend": "127.0.0.1:3306", "draining": true })
        )
    );
    let a = call(addr, "POST", "/backends/[::1]:3306/undrain", b"").await;
    assert_eq!((a.status, &a.json()["draining"]), (200, &json!(false)));
    assert_eq!(
        *fake.drains.lock().unwrap(),
        [
            ("127.0.0.1:3306".parse().unwrap(), true),
            ("[::1]:3306".parse().unwrap(), false)
        ]
    );
    let a = call(addr, "POST", "/backends/127.0.0.1:1/drain", b"").await;
    assert_eq!((a.status, a.json()["ok"].clone()), (404, json!(false)));
    let a = call(addr, "POST", "/backends/nowhere/drain", b"").await;
    assert_eq!(a.status, 400);

    let a = call(addr, "POST", "/policy", b"\0asm-policy").await;
    assert_eq!((a.status, a.json()["ok"].clone()), (200, json!(true)));
    assert_eq!(a.json()["sha256"].as_str().unwrap().len(), 64);
    let a = call(addr, "POST", "/policy", b"not wasm").await;
    assert_eq!(a.json(), json!({ "ok": false, "error": "not a component" }));
    assert_eq!(a.status, 400);
    let a = call(addr, "POST", "/policy", b"").await;
    assert_eq!(a.status, 400);
    let a = call(addr, "POST", "/policies/named", b"\0asm").await;
    assert_eq!(a.status, 200);
    let a = call(addr, "POST", "/policies/other", b"\0asm").await;
    assert_eq!(a.status, 404);
    assert_eq!(
        *fake.swaps.lock().unwrap(),
        [(11, None), (4, Some("named".to_owned()))]
    );

    assert_eq!(call(addr, "GET", "/nothing", b"").await.status, 404);
    assert_eq!(call(addr, "DELETE", "/status", b"").await.status, 405);
    let chunked = exchange(
        addr,
        format!(
            "POST /policy HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Transfer-Encoding: chunked\r\n\r\n4\r\n\0asm\r\n0\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(chunked.status, 411);
    let a = exchange(addr, &request("GET", "/status", "", b"")).await;
    assert_eq!(
        (a.status, a.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let a = exchange(
        addr,
        &request("GET", "/status", "Authorization: Bearer wrong\r\n", b""),
    )
    .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn state_changing_routes_take_only_post() {
    let (addr, fake) = start(Fake::with_token(), Limits::default());
    for path in [
        "/reload",
        "/policy",
        "/policies/named",
        "/backends/127.0.0.1:3306/drain",
        "/backends/127.0.0.1:3306/undrain",
    ] {
        for method in ["GET", "HEAD", "PUT", "OPTIONS"] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&request(method, path, &bearer(), b"\0asm"))
                .await
                .unwrap();
            let raw = read_all(&mut s, Duration::from_secs(10)).await;
            let head = String::from_utf8_lossy(&raw);
            assert!(head.starts_with("HTTP/1.1 405 "), "{method} {path}: {head}");
        }
    }
    for path in ["/", "/status", "/metrics"] {
        assert_eq!(call(addr, "POST", path, b"").await.status, 405, "{path}");
    }
    assert!(!fake.changed_anything());
}

#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read() {
    let (addr, fake) = start(Fake::with_token(), Limits::default());
    for auth in [String::new(), "Authorization: Bearer wrong\r\n".to_owned()] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Announces a 64 MiB policy and sends 1 KiB of it, then waits.
        let head = format!(
            "POST /policy HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: {MAX_POLICY}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[0u8; 1024]).await.unwrap();
        let started = Instant::now();
        let raw = read_all(&mut s, Duration::from_secs(5)).await;
        assert!(
            !raw.is_empty(),
            "no answer while the body is outstanding ({auth:?})"
        );
        let a = parse(&raw);
        assert_eq!(a.status, 401, "{a:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered at once"
        );
    }
    // The same with `Expect: 100-continue`: refused without `100 Continue`,
    // so the client never sends the body.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /policy HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: {MAX_POLICY}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let a = parse(&read_all(&mut s, Duration::from_secs(5)).await);
    assert_eq!(a.status, 401, "{a:?}");
    assert!(!a.head.contains("100 Continue"), "{a:?}");
    assert!(!fake.changed_anything());
}

#[tokio::test]
async fn policies_up_to_64_mib_are_taken_on_both_routes() {
    let (addr, fake) = start(Fake::with_token(), Limits::default());
    // As large as the Python example policy (18.6 MB).
    let mut big = vec![0x5au8; 20 << 20];
    big[..4].copy_from_slice(b"\0asm");
    for path in ["/policy", "/policies/named"] {
        let a = call(addr, "POST", path, &big).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
    assert_eq!(
        *fake.swaps.lock().unwrap(),
        [(20 << 20, None), (20 << 20, Some("named".to_owned()))]
    );
    // Over the cap: refused from the declared length, unread.
    for path in ["/policy", "/policies/named"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Content-Length: {}\r\n\r\n",
            bearer(),
            MAX_POLICY + 1
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let a = parse(&read_all(&mut s, Duration::from_secs(5)).await);
        assert_eq!(a.status, 413, "{path}: {a:?}");
    }
    // Routes that take no body keep the small cap.
    let a = call(addr, "POST", "/reload", &vec![b'x'; MAX_BODY + 1]).await;
    assert_eq!(a.status, 413);
    assert_eq!(fake.reloads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connections_over_the_limit_are_turned_away() {
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let (addr, _fake) = start(Fake::with_token(), limits);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // The server has accepted them when the next one is turned away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = call(addr, "GET", "/status", b"").await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.json()["ok"], false);
    // A slot frees when a connection ends.
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(call(addr, "GET", "/status", b"").await.status, 200);
}

#[tokio::test]
async fn slow_heads_and_bodies_are_cut_off() {
    let limits = Limits {
        head_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let (addr, fake) = start(Fake::with_token(), limits);
    // A head that never ends (slowloris): the connection is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let raw = read_all(&mut s, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "open after {waited:?}: {raw:?}"
    );
    assert!(!String::from_utf8_lossy(&raw).contains(" 200 "));
    // A body that never ends: 408 at the request deadline.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /policy HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Content-Length: 100\r\n\r\n\0asm",
        bearer()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let a = parse(&read_all(&mut s, Duration::from_secs(5)).await);
    assert_eq!(a.status, 408, "{a:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!fake.changed_anything());
}

#[tokio::test]
async fn a_web_page_cannot_drive_a_tokenless_admin() {
    let (addr, fake) = start(Fake::default(), Limits::default());
    let port = addr.port();
    let with_host = |host: &str, extra: &str, method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\n\r\n")
            .into_bytes()
    };
    // Another site's page posting through the user's browser.
    for origin in [
        "http://evil.example".to_owned(),
        "null".to_owned(),
        format!("http://127.0.0.1:{}", port + 1),
    ] {
        let a = exchange(
            addr,
            &with_host(
                &format!("127.0.0.1:{port}"),
                &format!("Origin: {origin}\r\n"),
                "POST",
                "/reload",
            ),
        )
        .await;
        assert_eq!(a.status, 403, "{origin}: {a:?}");
    }
    // A page that rebinds its own name to 127.0.0.1: same origin, but the
    // Host is its name.
    for host in [format!("evil.example:{port}"), "evil.example".to_owned()] {
        let a = exchange(
            addr,
            &with_host(
                &host,
                &format!("Origin: http://{host}\r\n"),
                "POST",
                "/reload",
            ),
        )
        .await;
        assert_eq!(a.status, 403, "{host}: {a:?}");
        let a = exchange(addr, &with_host(&host, "", "GET", "/status")).await;
        assert_eq!(a.status, 403, "{host}: {a:?}");
    }
    assert!(!fake.changed_anything());
    // The admin's own page, curl, and the loopback names pass.
    let own = format!("127.0.0.1:{port}");
    let a = exchange(
        addr,
        &with_host(
            &own,
            &format!("Origin: http://{own}\r\n"),
            "POST",
            "/reload",
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    for host in [
        own.clone(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".into(),
    ] {
        let a = exchange(addr, &with_host(&host, "", "GET", "/status")).await;
        assert_eq!(a.status, 200, "{host}: {a:?}");
    }
    let no_host = exchange(addr, b"GET /status HTTP/1.0\r\n\r\n").await;
    assert_eq!(no_host.status, 200, "{no_host:?}");
}

#[tokio::test]
async fn with_a_token_any_host_name_works_but_other_origins_do_not() {
    let (addr, fake) = start(Fake::with_token(), Limits::default());
    let host = "admin.example.internal:9033";
    let a = exchange(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n{}\r\n", bearer()).as_bytes(),
    )
    .await;
    assert_eq!(a.status, 200, "a scraper by name: {a:?}");
    let a = exchange(
        addr,
        format!(
            "POST /reload HTTP/1.1\r\nHost: {host}\r\nOrigin: https://elsewhere.example\r\n{}Content-Length: 0\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(a.status, 403, "{a:?}");
    assert!(!fake.changed_anything());
}

#[test]
fn host_names_that_are_addresses() {
    for ok in [
        "127.0.0.1",
        "127.0.0.1:9033",
        "localhost",
        "LOCALHOST:80",
        "[::1]",
        "[::1]:9033",
        "10.1.2.3:1",
    ] {
        assert!(is_local_host(ok), "{ok}");
    }
    for bad in [
        "evil.example",
        "evil.example:9033",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "[::1]x",
        "[evil]:80",
        "127.0.0.1:",
        "127.0.0.1:99999",
        "",
    ] {
        assert!(!is_local_host(bad), "{bad}");
    }
}
