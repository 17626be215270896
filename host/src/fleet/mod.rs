//! Fleet state several Switchyards share through a Redis server
//! (`[fleet] store`): failed-login counts and blocks, per-user session
//! counts held under leases that expire with their instance, and which
//! policy each instance runs.
//!
//! Redis because it is built for exactly this: shared counters and keys
//! that expire on their own, atomic read-modify-write in a Lua script, one
//! round trip per decision, and it is what operators of a fleet already
//! run (etcd's leases would do for the session counts, but it is made for
//! small, rarely written configuration; counting failed logins there is a
//! write to a Raft log per failure).
//!
//! The store is a help, never a dependency: every caller gets an answer at
//! once when it is unreachable (`StoreError::Down`) and decides locally.
//! One connection, owned by a task on the control thread's event loop;
//! sessions on the worker threads reach it through a bounded queue.

pub mod resp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

pub use resp::Value;

/// Requests waiting for the connection at most; past it, callers decide
/// locally.
const QUEUE: usize = 4096;
/// Time between two connection attempts while the store is unreachable.
const RETRY: Duration = Duration::from_millis(500);

/// Why the store gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Not connected (or the queue is full): decide locally.
    #[error("the fleet store is unreachable")]
    Down,
    /// No answer in time.
    #[error("the fleet store did not answer in time")]
    Timeout,
    /// The server refused the command.
    #[error("the fleet store refused a command: {0}")]
    Refused(String),
    /// An answer of an unexpected shape.
    #[error("unexpected answer from the fleet store")]
    Unexpected,
}

/// Where the store is: `redis://[[user]:password@]host:port[/db]`.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<crate::secret::Secret<String>>,
    db: Option<u32>,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("the store must be a redis://host:port URL")?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, None),
            Some((h, d)) => (
                h,
                Some(
                    d.parse::<u32>()
                        .map_err(|_| "the database must be a number")?,
                ),
            ),
            None => (rest, None),
        };
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or("unclosed [ in the store URL")?;
                match after.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None if after.is_empty() => (h, None),
                    None => return Err("bad address in the store URL".into()),
                }
            }
            None => match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| "bad port in the store URL")?,
            None => 6379,
        };
        if host.is_empty() {
            return Err("no host in the store URL".into());
        }
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| u.to_owned()),
                    Some(crate::secret::Secret::new(p.to_owned())),
                ),
                None => (None, Some(crate::secret::Secret::new(a.to_owned()))),
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            user,
            password,
            db,
        })
    }

    /// The URL without its password, for logs and `/status`.
    fn shown(&self) -> String {
        let auth = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => "***@".to_owned(),
            _ => String::new(),
        };
        let db = self.db.map(|d| format!("/{d}")).unwrap_or_default();
        format!("redis://{auth}{}:{}{db}", self.host, self.port)
    }
}

struct Request {
    command: Vec<u8>,
    reply: Option<oneshot::Sender<Result<Value, StoreError>>>,
}

struct Inner {
    requests: mpsc::Sender<Request>,
    up: AtomicBool,
    errors: AtomicU64,
    instance: String,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    shown: String,
}

/// The client of the fleet store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("store", &self.inner.shown)
            .field("instance", &self.inner.instance)
            .field("up", &self.is_up())
            .finish()
    }
}

/// How to reach the store and name things there.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// `redis://[[user]:password@]host[:port][/db]`.
    pub url: &'a str,
    /// The password, when the URL has none (`[fleet] password_file`).
    pub password: Option<&'a str>,
    /// This instance's name (unique in the fleet).
    pub instance: &'a str,
    /// Prepended to every key.
    pub key_prefix: &'a str,
    /// Time one command may take.
    pub timeout: Duration,
    /// How long this instance's lease lasts without renewal.
    pub lease: Duration,
}

/// Whether `url` names a store (for the configuration's checks).
pub fn check_url(url: &str) -> Result<(), String> {
    Target::parse(url).map(drop)
}

/// What a failed login came to in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; not blocked (yet).
    Counted,
    /// The address is blocked for this long (by this failure or before).
    Blocked(Duration),
}

/// Another instance, as its lease describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its `[fleet] instance` name.
    pub instance: String,
    /// What it published (JSON: version, policies).
    pub info: String,
}

const FAIL_LUA: &str = r"
local p, ip = ARGV[1], ARGV[2]
local window, maxf, block = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local left = redis.call('PTTL', p .. 'block:' .. ip)
if left > 0 then return left end
local n = redis.call('INCR', p .. 'fail:' .. ip)
if n == 1 then redis.call('PEXPIRE', p .. 'fail:' .. ip, window) end
if n < maxf then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', p .. 'block:' .. ip, '1', 'PX', block)
redis.call('DEL', p .. 'fail:' .. ip)
redis.call('ZADD', p .. 'blocks', now + block, ip)
return block
";

const BLOCKS_LUA: &str = r"
local p, after = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', p .. 'blocks', '-inf', now)
local r = redis.call('ZRANGEBYSCORE', p .. 'blocks', '(' .. after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1000)
local out = {}
for i = 1, #r, 2 do
  out[#out + 1] = r[i]
  out[#out + 1] = tostring(tonumber(r[i + 1]) - now)
  out[#out + 1] = r[i + 1]
end
return out
";

const PUBLISH_BLOCK_LUA: &str = r"
local p, ip, left = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('PTTL', p .. 'block:' .. ip) > 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', p .. 'block:' .. ip, '1', 'PX', left)
redis.call('ZADD', p .. 'blocks', now + left, ip)
return 1
";

const CLAIM_LUA: &str = r"
local p, me, user, limit, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('EXISTS', p .. 'lease:' .. me) == 0 then
  redis.call('SET', p .. 'lease:' .. me, '{}', 'PX', lease)
end
redis.call('SADD', p .. 'instances', me)
local sum = 0
for _, inst in ipairs(redis.call('SMEMBERS', p .. 'instances')) do
  if inst ~= me and redis.call('EXISTS', p .. 'lease:' .. inst) == 0 then
    redis.call('SREM', p .. 'instances', inst)
    redis.call('DEL', p .. 'sessions:' .. inst)
  elseif inst ~= me then
    sum = sum + tonumber(redis.call('HGET', p .. 'sessions:' .. inst, user) or '0')
  end
end
sum = sum + tonumber(redis.call('HGET', p .. 'sessions:' .. me, user) or '0')
if sum >= limit then return {0, sum} end
redis.call('HINCRBY', p .. 'sessions:' .. me, user, 1)
return {1, sum + 1}
";

const RELEASE_LUA: &str = r"
local key = ARGV[1] .. 'sessions:' .. ARGV[2]
if redis.call('HINCRBY', key, ARGV[3], -1) <= 0 then redis.call('HDEL', key, ARGV[3]) end
return 1
";

const REFRESH_LUA: &str = r"
local p, me, ttl, info = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
redis.call('SET', p .. 'lease:' .. me, info, 'PX', ttl)
redis.call('SADD', p .. 'instances', me)
local key = p .. 'sessions:' .. me
redis.call('DEL', key)
for i = 5, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', key, ttl * 3)
local out = {}
for _, inst in ipairs(redis.call('SMEMBERS', p .. 'instances')) do
  local v = redis.call('GET', p .. 'lease:' .. inst)
  if v then
    out[#out + 1] = inst
    out[#out + 1] = v
  end
end
return out
";

/// A Lua script and its SHA-1 (what `EVALSHA` names it by).
struct Script {
    text: &'static str,
    sha1: String,
}

impl Script {
    fn new(text: &'static str) -> Self {
        use sha1::Digest;
        Self {
            text,
            sha1: hex::encode(sha1::Sha1::digest(text.as_bytes())),
        }
    }
}

/// Every script, loaded on each connection.
struct Scripts {
    fail: Script,
    blocks: Script,
    publish_block: Script,
    claim: Script,
    release: Script,
    refresh: Script,
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    fail: Script::new(FAIL_LUA),
    blocks: Script::new(BLOCKS_LUA),
    publish_block: Script::new(PUBLISH_BLOCK_LUA),
    claim: Script::new(CLAIM_LUA),
    release: Script::new(RELEASE_LUA),
    refresh: Script::new(REFRESH_LUA),
});

impl Store {
    /// A client for `config`, and the task that keeps its connection (to
    /// run on one event loop for as long as the process serves).
    pub fn new(
        settings: Settings<'_>,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), String> {
        let mut target = Target::parse(settings.url)?;
        if let Some(p) = settings.password {
            target.password = Some(crate::secret::Secret::new(p.to_owned()));
        }
        let (requests, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            requests,
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            instance: settings.instance.to_owned(),
            prefix: settings.key_prefix.to_owned(),
            timeout: settings.timeout,
            lease: settings.lease,
            shown: target.shown(),
        });
        let task = connection(Arc::clone(&inner), target, rx);
        Ok((Self { inner }, task))
    }

    /// Whether the connection is up now.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Commands that failed (unreachable, timed out, refused).
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The store's URL, without a password.
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }

    fn failed<T>(&self, e: StoreError) -> Result<T, StoreError> {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        Err(e)
    }

    /// Runs `args` and waits for the answer (at most twice the store's
    /// timeout); at once `Down` when not connected.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Value, StoreError> {
        if !self.is_up() {
            return self.failed(StoreError::Down);
        }
        let mut command = Vec::new();
        resp::encode(args, &mut command);
        let (tx, rx) = oneshot::channel();
        let request = Request {
            command,
            reply: Some(tx),
        };
        if self.inner.requests.try_send(request).is_err() {
            return self.failed(StoreError::Down);
        }
        match tokio::time::timeout(self.inner.timeout * 2, rx).await {
            Ok(Ok(Ok(Value::Error(e)))) => self.failed(StoreError::Refused(e)),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => self.failed(e),
            Ok(Err(_)) => self.failed(StoreError::Down),
            Err(_) => self.failed(StoreError::Timeout),
        }
    }

    /// Runs `args` without waiting for the answer (dropped when not
    /// connected: the next refresh publishes the state anew).
    pub fn send(&self, args: &[&[u8]]) {
        if !self.is_up() {
            return;
        }
        let mut command = Vec::new();
        resp::encode(args, &mut command);
        if self
            .inner
            .requests
            .try_send(Request {
                command,
                reply: None,
            })
            .is_err()
        {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `EVALSHA sha1 0 prefix args...` (or `EVAL script ...`): the scripts
    /// find the key prefix in `ARGV[1]` and name their keys themselves.
    /// Every connection loads the scripts first, so the digest suffices.
    fn eval_command<'a>(
        &'a self,
        script: &'a Script,
        args: &[&'a str],
        text: bool,
    ) -> Vec<&'a [u8]> {
        let mut all: Vec<&[u8]> = if text {
            vec![b"EVAL", script.text.as_bytes()]
        } else {
            vec![b"EVALSHA", script.sha1.as_bytes()]
        };
        all.push(b"0");
        all.push(self.inner.prefix.as_bytes());
        all.extend(args.iter().map(|a| a.as_bytes()));
        all
    }

    async fn eval(&self, script: &Script, args: &[&str]) -> Result<Value, StoreError> {
        match self.call(&self.eval_command(script, args, false)).await {
            // Flushed from the server's cache meanwhile (SCRIPT FLUSH).
            Err(StoreError::Refused(e)) if e.starts_with("NOSCRIPT") => {
                self.call(&self.eval_command(script, args, true)).await
            }
            other => other,
        }
    }

    fn eval_later(&self, script: &Script, args: &[&str]) {
        self.send(&self.eval_command(script, args, false));
    }

    /// Counts a failed login of the client address `ip`; blocks it for
    /// `block` once `max_failures` fall within `window`.
    pub async fn failure(
        &self,
        ip: &str,
        window: Duration,
        max_failures: u32,
        block: Duration,
    ) -> Result<Failure, StoreError> {
        let v = self
            .eval(
                &SCRIPTS.fail,
                &[
                    ip,
                    &window.as_millis().max(1).to_string(),
                    &max_failures.to_string(),
                    &block.as_millis().max(1).to_string(),
                ],
            )
            .await?;
        match v.as_int().ok_or(StoreError::Unexpected)? {
            0 => Ok(Failure::Counted),
            ms => Ok(Failure::Blocked(Duration::from_millis(ms.max(1) as u64))),
        }
    }

    /// A login from `ip` succeeded: its failures are forgotten (not a
    /// block).
    pub fn success(&self, ip: &str) {
        let key = format!("{}fail:{ip}", self.inner.prefix);
        self.send(&[b"DEL", key.as_bytes()]);
    }

    /// Publishes a block this instance made while the store was away.
    pub async fn publish_block(&self, ip: &str, left: Duration) -> Result<(), StoreError> {
        self.eval(
            &SCRIPTS.publish_block,
            &[ip, &left.as_millis().max(1).to_string()],
        )
        .await
        .map(drop)
    }

    /// Blocks in force whose end (the store's clock, milliseconds) is
    /// after `after`: each address with how long it stays blocked, and
    /// the latest end seen (for the next call).
    pub async fn blocks_after(
        &self,
        after: i64,
    ) -> Result<(Vec<(String, Duration)>, i64), StoreError> {
        let v = self.eval(&SCRIPTS.blocks, &[&after.to_string()]).await?;
        let mut latest = after;
        let mut out = Vec::new();
        for chunk in v.items().chunks(3) {
            let [ip, left, end] = chunk else {
                return Err(StoreError::Unexpected);
            };
            let (Some(ip), Some(left), Some(end)) = (ip.as_str(), left.as_int(), end.as_int())
            else {
                return Err(StoreError::Unexpected);
            };
            latest = latest.max(end);
            if left > 0 {
                out.push((ip.to_owned(), Duration::from_millis(left as u64)));
            }
        }
        Ok((out, latest))
    }

    /// Counts a session of `user` across the fleet, unless the live
    /// instances hold `limit` of them already: `Ok(Err(count))` then.
    pub async fn claim(&self, user: &str, limit: u32) -> Result<Result<u32, u32>, StoreError> {
        let v = self
            .eval(
                &SCRIPTS.claim,
                &[
                    &self.inner.instance,
                    user,
                    &limit.to_string(),
                    &self.inner.lease.as_millis().max(1).to_string(),
                ],
            )
            .await?;
        let (Some(granted), Some(count)) = (
            v.items().first().and_then(Value::as_int),
            v.items().get(1).and_then(Value::as_int),
        ) else {
            return Err(StoreError::Unexpected);
        };
        let count = u32::try_from(count.max(0)).unwrap_or(u32::MAX);
        Ok(if granted == 1 { Ok(count) } else { Err(count) })
    }

    /// A session of `user` counted by [`Store::claim`] ended.
    pub fn release(&self, user: &str) {
        let instance = self.inner.instance.clone();
        self.eval_later(&SCRIPTS.release, &[&instance, user]);
    }

    /// Renews this instance's lease (`lease`) with `info`, replaces its
    /// session counts with `counts`, and returns every live instance.
    pub async fn refresh(
        &self,
        lease: Duration,
        info: &str,
        counts: &[(String, u32)],
    ) -> Result<Vec<Peer>, StoreError> {
        let ttl = lease.as_millis().max(1).to_string();
        let numbers: Vec<String> = counts.iter().map(|(_, n)| n.to_string()).collect();
        let mut args: Vec<&str> = vec![&self.inner.instance, &ttl, info];
        for ((user, _), n) in counts.iter().zip(&numbers) {
            args.push(user);
            args.push(n);
        }
        let v = self.eval(&SCRIPTS.refresh, &args).await?;
        v.items()
            .chunks(2)
            .map(|pair| match pair {
                [i, info] => Ok(Peer {
                    instance: i.as_str().ok_or(StoreError::Unexpected)?.to_owned(),
                    info: info.as_str().ok_or(StoreError::Unexpected)?.to_owned(),
                }),
                _ => Err(StoreError::Unexpected),
            })
            .collect()
    }
}

/// Keeps the connection: connects (again) every [`RETRY`] while the store
/// is unreachable, saying so once when it goes and once when it returns;
/// answers queued requests `Down` meanwhile.
async fn connection(inner: Arc<Inner>, target: Target, mut rx: mpsc::Receiver<Request>) {
    let mut said_down = false;
    loop {
        match tokio::time::timeout(inner.timeout * 5, connect(&target, inner.timeout)).await {
            Ok(Ok(stream)) => {
                inner.up.store(true, Ordering::Relaxed);
                if said_down {
                    info!(store = %inner.shown, "fleet store reachable again; shared limits resume");
                } else {
                    info!(store = %inner.shown, instance = %inner.instance, "fleet store connected");
                }
                let why = serve(stream, &mut rx).await;
                inner.up.store(false, Ordering::Relaxed);
                let Some(why) = why else {
                    return;
                };
                warn!(store = %inner.shown, error = %why, "fleet store unreachable; limits are this instance's own until it returns");
                said_down = true;
            }
            Ok(Err(e)) if !said_down => {
                warn!(store = %inner.shown, error = %e, "fleet store unreachable; limits are this instance's own until it returns");
                said_down = true;
            }
            Err(_) if !said_down => {
                warn!(store = %inner.shown, "fleet store unreachable (connect timed out); limits are this instance's own until it returns");
                said_down = true;
            }
            _ => {}
        }
        let until = tokio::time::Instant::now() + RETRY;
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(Request { reply: Some(tx), .. }) => {
                        let _ = tx.send(Err(StoreError::Down));
                    }
                    Some(_) => {}
                    None => return,
                },
                () = tokio::time::sleep_until(until) => break,
            }
        }
    }
}

/// A connection, authenticated and on its database.
async fn connect(target: &Target, timeout: Duration) -> std::io::Result<Conn> {
    let addr: SocketAddr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the store's host has no address"))?;
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(4096),
        timeout,
    };
    if let Some(password) = &target.password {
        let p = password.expose().as_bytes();
        let reply = match &target.user {
            Some(u) => conn.round(&[b"AUTH", u.as_bytes(), p]).await?,
            None => conn.round(&[b"AUTH", p]).await?,
        };
        if let Value::Error(e) = reply {
            return Err(std::io::Error::other(format!("AUTH refused: {e}")));
        }
    }
    if let Some(db) = target.db
        && let Value::Error(e) = conn.round(&[b"SELECT", db.to_string().as_bytes()]).await?
    {
        return Err(std::io::Error::other(format!("SELECT refused: {e}")));
    }
    let s = &*SCRIPTS;
    for script in [
        &s.fail,
        &s.blocks,
        &s.publish_block,
        &s.claim,
        &s.release,
        &s.refresh,
    ] {
        match conn
            .round(&[b"SCRIPT", b"LOAD", script.text.as_bytes()])
            .await?
        {
            Value::Bulk(Some(sha)) if sha == script.sha1.as_bytes() => {}
            other => {
                return Err(std::io::Error::other(format!(
                    "SCRIPT LOAD answered {other:?}"
                )));
            }
        }
    }
    Ok(conn)
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    async fn round(&mut self, args: &[&[u8]]) -> std::io::Result<Value> {
        let mut command = Vec::new();
        resp::encode(args, &mut command);
        self.exchange(&command).await
    }

    /// Writes `command` and reads its reply, within the timeout.
    async fn exchange(&mut self, command: &[u8]) -> std::io::Result<Value> {
        let timeout = self.timeout;
        let work = async {
            self.stream.write_all(command).await?;
            loop {
                match resp::decode(&self.buf).map_err(std::io::Error::other)? {
                    Some((v, used)) => {
                        self.buf.drain(..used);
                        return Ok(v);
                    }
                    None => {
                        let mut chunk = [0u8; 4096];
                        let n = self.stream.read(&mut chunk).await?;
                        if n == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        self.buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }
}

/// Serves requests in order until the connection fails (`Some(why)`) or
/// every sender is gone (`None`).
async fn serve(mut conn: Conn, rx: &mut mpsc::Receiver<Request>) -> Option<std::io::Error> {
    while let Some(request) = rx.recv().await {
        match conn.exchange(&request.command).await {
            Ok(v) => {
                if let Some(tx) = request.reply {
                    let _ = tx.send(Ok(v));
                }
            }
            Err(e) => {
                if let Some(tx) = request.reply {
                    let _ = tx.send(Err(match e.kind() {
                        std::io::ErrorKind::TimedOut => StoreError::Timeout,
                        _ => StoreError::Down,
                    }));
                }
                return Some(e);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        let t = Target::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.db), ("127.0.0.1", 6380, None));
        let t = Target::parse("redis://:secret@redis.svc:6379/2").unwrap();
        assert_eq!((t.host.as_str(), t.db), ("redis.svc", Some(2)));
        assert_eq!(
            t.password.as_ref().map(|p| p.expose().as_str()),
            Some("secret")
        );
        assert_eq!(t.shown(), "redis://***@redis.svc:6379/2");
        let t = Target::parse("redis://app:pw@[::1]:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
        assert_eq!(t.user.as_deref(), Some("app"));
        assert_eq!(Target::parse("redis://store").unwrap().port, 6379);
        for bad in [
            "http://x:1",
            "redis://:1",
            "redis://x:99999",
            "redis://x:1/db",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
