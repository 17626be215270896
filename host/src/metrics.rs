//! Counters, gauges and histograms for `/metrics`, updated lock-free on the
//! paths that count them and rendered as Prometheus text on demand.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How a login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Logged in and relaying.
    Ok,
    /// Wrong user or password (1045).
    AccessDenied,
    /// The client address is throttled after failed logins (1129).
    Throttled,
    /// `max_connections` reached (1040).
    TooManyConnections,
    /// The user's session limit reached (1226).
    UserLimit,
    /// The policy refused the login (9100).
    PolicyRefused,
    /// The policy failed or chose an unknown pool (9101).
    PolicyFailed,
    /// No backend of the pool could be used (9102).
    NoBackend,
    /// The backend refused the login (its own ERR).
    BackendRefused,
    /// The backend needs what Switchyard cannot do (9103).
    BackendUnsupported,
    /// The login did not finish within `login_timeout_ms`.
    Timeout,
    /// The client left or broke the protocol during login.
    Abandoned,
    /// The proxy is shutting down.
    ShuttingDown,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 13] = [
        Self::Ok,
        Self::AccessDenied,
        Self::Throttled,
        Self::TooManyConnections,
        Self::UserLimit,
        Self::PolicyRefused,
        Self::PolicyFailed,
        Self::NoBackend,
        Self::BackendRefused,
        Self::BackendUnsupported,
        Self::Timeout,
        Self::Abandoned,
        Self::ShuttingDown,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::AccessDenied => "access_denied",
            Self::Throttled => "throttled",
            Self::TooManyConnections => "too_many_connections",
            Self::UserLimit => "user_limit",
            Self::PolicyRefused => "policy_refused",
            Self::PolicyFailed => "policy_failed",
            Self::NoBackend => "no_backend",
            Self::BackendRefused => "backend_refused",
            Self::BackendUnsupported => "backend_unsupported",
            Self::Timeout => "timeout",
            Self::Abandoned => "abandoned",
            Self::ShuttingDown => "shutting_down",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// A counter updated from many threads: one cache line per shard, so the
/// relay's per-read updates do not bounce a line between cores.
#[derive(Debug, Default)]
pub struct ShardedCounter {
    shards: [Padded; SHARDS],
}

const SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl ShardedCounter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        let shard = SHARD.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            s.get()
        });
        self.shards[shard].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Every process-wide figure.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client connections being served (logging in or relaying).
    pub sessions: AtomicI64,
    logins: [AtomicU64; Outcome::ALL.len()],
    /// Time from accept to the client's OK, for successful logins.
    pub login_latency: Histogram,
    /// Policy `route` calls.
    pub policy_latency: Histogram,
    /// Policy calls that trapped, timed out or answered badly.
    pub policy_errors: AtomicU64,
    /// Policy calls that refused the login.
    pub policy_refusals: AtomicU64,
    /// Bytes from clients to backends.
    pub bytes_from_clients: ShardedCounter,
    /// Bytes from backends to clients.
    pub bytes_to_clients: ShardedCounter,
    /// Sessions closed for being idle.
    pub idle_closed: AtomicU64,
    /// Backend sessions kept after their clients quit.
    pub backend_kept: AtomicU64,
    /// Kept backend sessions a login found not at rest (closed).
    pub backend_not_at_rest: AtomicU64,
    /// Backend sessions closed when their clients quit, for want of room.
    pub backend_no_room: AtomicU64,
    /// Backend sessions closed when their clients quit because the reset
    /// that makes them clean (no transaction, no locks) failed or an
    /// answer was still on its way.
    pub backend_not_clean: AtomicU64,
    /// Logins that took over a kept backend session.
    pub backend_reused: AtomicU64,
    /// Backend sessions kept now, on every worker.
    pub backend_idle: std::sync::atomic::AtomicI64,
    /// Configuration reloads that took effect.
    pub reloads_ok: AtomicU64,
    /// Configuration reloads that were refused.
    pub reloads_failed: AtomicU64,
    /// Policy modules swapped in through the admin endpoint.
    pub policy_swaps: AtomicU64,
    /// Policy modules refused by the admin endpoint.
    pub policy_swaps_failed: AtomicU64,
    /// Times a client address was blocked after failed logins.
    pub throttle_blocks: AtomicU64,
    /// COM_CHANGE_USER outcomes, by [`ChangeUserOutcome`].
    change_users: [AtomicU64; ChangeUserOutcome::ALL.len()],
    /// caching_sha2_password exchanges, by [`Sha2Path`].
    sha2_paths: [AtomicU64; Sha2Path::ALL.len()],
    /// `KILL <greeting id>` statements: translated to a backend thread, or
    /// answered 1094 (the session is elsewhere or gone).
    pub kills_translated: AtomicU64,
    /// See `kills_translated`.
    pub kills_unknown: AtomicU64,
    /// Statements that outran `query_timeout_ms`, by what became of their
    /// backend thread: killed (by the monitor account), or not (the KILL
    /// failed, or no `[monitor]`).
    pub runaway_killed: AtomicU64,
    /// See `runaway_killed`.
    pub runaway_not_killed: AtomicU64,
    /// PROXY protocol headers, by [`ProxyHeader`].
    proxy_headers: [AtomicU64; ProxyHeader::ALL.len()],
    /// Statement-level routing (split pools).
    pub split: SplitMetrics,
    /// Backend sessions shared between client sessions.
    pub multiplex: MultiplexMetrics,
}

/// What came of a connection to a `proxy_protocol` listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A header naming the client.
    Proxied = 0,
    /// A header naming no one (`UNKNOWN`, `LOCAL`): the balancer itself.
    Local = 1,
    /// From an address not in `proxy_trusted`.
    Untrusted = 2,
    /// Not a header, or a header that breaks the format.
    Malformed = 3,
    /// No whole header within `login_timeout_ms`, or the peer left.
    Missing = 4,
}

impl ProxyHeader {
    /// Every result, in label order.
    pub const ALL: [Self; 5] = [
        Self::Proxied,
        Self::Local,
        Self::Untrusted,
        Self::Malformed,
        Self::Missing,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Proxied => "proxied",
            Self::Local => "local",
            Self::Untrusted => "untrusted",
            Self::Malformed => "malformed",
            Self::Missing => "missing",
        }
    }
}

/// Why a multiplexed client session kept its backend sessions after a
/// command (it is not at rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A transaction is open.
    Transaction = 0,
    /// Autocommit is off: the next statement opens one.
    AutocommitOff = 1,
    /// The session is pinned (see `switchyard_sessions_pinned_total`).
    Pinned = 2,
    /// It has binary-protocol prepared statements.
    Prepared = 3,
    /// The last answer left warnings (or was an error) that the next
    /// statement may read.
    Warnings = 4,
}

impl Held {
    /// Every reason, in label order.
    pub const ALL: [Self; 5] = [
        Self::Transaction,
        Self::AutocommitOff,
        Self::Pinned,
        Self::Prepared,
        Self::Warnings,
    ];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transaction => "transaction",
            Self::AutocommitOff => "autocommit-off",
            Self::Pinned => "pinned",
            Self::Prepared => "prepared-statements",
            Self::Warnings => "warnings",
        }
    }
}

/// How a multiplexed session came by a backend session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Borrow {
    /// An idle one with the session's state already.
    Same = 0,
    /// An idle one whose state the session's only adds to: given only
    /// what differs (all of it, for one of no state).
    Replayed = 1,
    /// An idle one of other state: reset, then given the session's state.
    Reset = 2,
    /// None idle: a new one opened (a backend login).
    Opened = 3,
}

impl Borrow {
    const LABELS: [&'static str; 4] = ["same-state", "replayed", "reset", "opened"];
}

/// What multiplexed sessions did.
#[derive(Debug, Default)]
pub struct MultiplexMetrics {
    /// Backend sessions taken for a statement, by [`Borrow`].
    borrows: [AtomicU64; 4],
    /// Backend sessions given back at rest.
    pub releases: AtomicU64,
    /// Commands after which a session kept its backend sessions, by
    /// [`Held`].
    held: [AtomicU64; 5],
    /// Statements that waited for a backend session (every backend of the
    /// pool at its `max_connections`): served, then timed out.
    waits: [AtomicU64; 2],
    /// Backend sessions idle, waiting for a statement.
    pub idle: AtomicI64,
    /// Idle backend sessions closed to make room for a session of another
    /// user, database or state shape.
    pub evicted: AtomicU64,
}

impl MultiplexMetrics {
    /// Counts a borrow.
    pub fn borrowed(&self, how: Borrow) {
        self.borrows[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Borrows of kind `how` so far.
    pub fn borrow_count(&self, how: Borrow) -> u64 {
        self.borrows[how as usize].load(Ordering::Relaxed)
    }

    /// Counts a command after which the session was not at rest.
    pub fn held(&self, why: Held) {
        self.held[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wait for a backend session: served or timed out.
    pub fn waited(&self, served: bool) {
        self.waits[usize::from(!served)].fetch_add(1, Ordering::Relaxed);
    }

    /// The figures, as the admin status shows them.
    pub fn status(&self) -> serde_json::Value {
        let map = |labels: &[&str],
                   counters: &[AtomicU64]|
         -> serde_json::Map<String, serde_json::Value> {
            labels
                .iter()
                .zip(counters)
                .map(|(l, n)| ((*l).to_owned(), n.load(Ordering::Relaxed).into()))
                .collect()
        };
        serde_json::json!({
            "borrows": map(&Borrow::LABELS, &self.borrows),
            "releases": self.releases.load(Ordering::Relaxed),
            "held": map(&Held::ALL.map(Held::label), &self.held),
            "waits": map(&["served", "timed-out"], &self.waits),
            "idle_backend_sessions": self.idle.load(Ordering::Relaxed),
            "evicted": self.evicted.load(Ordering::Relaxed),
        })
    }

    fn render(&self, out: &mut String) {
        labeled(
            out,
            "switchyard_multiplex_borrows_total",
            "Backend sessions multiplexed sessions took for a statement, by how the session's state was given.",
            "how",
            &by_label(Borrow::LABELS, &self.borrows),
        );
        counter(
            out,
            "switchyard_multiplex_releases_total",
            "Backend sessions multiplexed sessions gave back at rest.",
            self.releases.load(Ordering::Relaxed),
        );
        labeled(
            out,
            "switchyard_multiplex_held_total",
            "Commands after which a multiplexed session kept its backend sessions, by reason.",
            "reason",
            &by_label(Held::ALL.map(Held::label), &self.held),
        );
        labeled(
            out,
            "switchyard_multiplex_waits_total",
            "Statements that waited for a backend session (the pool full), by outcome.",
            "result",
            &by_label(["served", "timed-out"], &self.waits),
        );
        counter(
            out,
            "switchyard_multiplex_evictions_total",
            "Idle backend sessions closed to make room for another user's, database's or shape's.",
            self.evicted.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "switchyard_multiplex_idle_backend_sessions",
            "Backend sessions idle between multiplexed sessions' statements.",
            self.idle.load(Ordering::Relaxed),
        );
    }
}

/// What split pools' sessions did.
#[derive(Debug, Default)]
pub struct SplitMetrics {
    /// Statements by where they went: writer, reader, every backend
    /// session.
    routed: [AtomicU64; 3],
    /// Sessions pinned to the writer, by [`Pin`](crate::sql::Pin).
    pinned: [AtomicU64; crate::sql::Pin::ALL.len()],
    /// Reads after the session's own write, by what became of them: a
    /// reader had applied it, sent to the writer, a reader caught up within
    /// the wait.
    causal: [AtomicU64; 3],
    /// Backend sessions split pools' client sessions hold now.
    pub backend_sessions: AtomicI64,
    /// Split pools' client sessions now.
    pub client_sessions: AtomicI64,
}

/// Where a split session's statement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// The writer.
    Writer = 0,
    /// A reader.
    Reader = 1,
    /// Every backend session.
    All = 2,
}

/// What became of a read that followed the session's own write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causal {
    /// The reader had applied the write.
    Reader = 0,
    /// No reader had: the writer answered.
    Writer = 1,
    /// The reader caught up within `causal_wait_ms`.
    Waited = 2,
}

impl SplitMetrics {
    /// Counts a statement.
    pub fn routed(&self, to: Routed) {
        self.routed[to as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Statements routed to `to` so far.
    pub fn routed_count(&self, to: Routed) -> u64 {
        self.routed[to as usize].load(Ordering::Relaxed)
    }

    /// Counts a session pinned for `why`.
    pub fn pinned(&self, why: crate::sql::Pin) {
        if let Some(i) = crate::sql::Pin::ALL.iter().position(|p| *p == why) {
            self.pinned[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a read after a write.
    pub fn causal(&self, what: Causal) {
        self.causal[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads after writes so far that ended as `what`.
    pub fn causal_count(&self, what: Causal) -> u64 {
        self.causal[what as usize].load(Ordering::Relaxed)
    }

    /// The figures, as the admin status shows them.
    pub fn status(&self) -> serde_json::Value {
        let routed = |r: Routed| self.routed_count(r);
        let causal = |c: Causal| self.causal_count(c);
        let pinned: serde_json::Map<String, serde_json::Value> = crate::sql::Pin::ALL
            .iter()
            .zip(&self.pinned)
            .map(|(p, n)| (p.label().to_owned(), n.load(Ordering::Relaxed).into()))
            .collect();
        serde_json::json!({
            "routed": {
                "writer": routed(Routed::Writer),
                "reader": routed(Routed::Reader),
                "all": routed(Routed::All),
            },
            "pinned": pinned,
            "causal_reads": {
                "reader": causal(Causal::Reader),
                "writer": causal(Causal::Writer),
                "waited": causal(Causal::Waited),
            },
            "backend_sessions": self.backend_sessions.load(Ordering::Relaxed),
            "client_sessions": self.client_sessions.load(Ordering::Relaxed),
        })
    }

    fn render(&self, out: &mut String) {
        labeled(
            out,
            "switchyard_statements_routed_total",
            "Statements of split pools' sessions, by where they went.",
            "target",
            &by_label(["writer", "reader", "all"], &self.routed),
        );
        labeled(
            out,
            "switchyard_sessions_pinned_total",
            "Split pools' sessions pinned to the writer, by reason.",
            "reason",
            &by_label(crate::sql::Pin::ALL.map(|p| p.label()), &self.pinned),
        );
        labeled(
            out,
            "switchyard_causal_reads_total",
            "Reads that followed the session's own write, by what answered them.",
            "result",
            &by_label(["reader", "writer", "waited"], &self.causal),
        );
        gauge(
            out,
            "switchyard_split_backend_sessions",
            "Backend sessions that split pools' client sessions hold.",
            self.backend_sessions.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "switchyard_split_sessions",
            "Client sessions of split pools (backend sessions per client session: the gauge above over this one).",
            self.client_sessions.load(Ordering::Relaxed),
        );
    }
}

/// How a COM_CHANGE_USER ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeUserOutcome {
    /// Same pool: the backend session re-authenticated in place.
    InPlace,
    /// Another pool: a new backend session.
    Moved,
    /// Refused before the backend was touched; the session goes on.
    Refused,
    /// The session ended (a backend refusal, a broken exchange, a timeout).
    Failed,
}

impl ChangeUserOutcome {
    /// Every outcome, in metric order.
    pub const ALL: [Self; 4] = [Self::InPlace, Self::Moved, Self::Refused, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::InPlace => "in_place",
            Self::Moved => "moved",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// The path a caching_sha2_password exchange took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha2Path {
    /// The cached verifier answered the scramble.
    Fast,
    /// Full authentication, the password inside TLS.
    FullTls,
    /// Full authentication, the password RSA-encrypted.
    FullRsa,
}

impl Sha2Path {
    /// Every path, in metric order.
    pub const ALL: [Self; 3] = [Self::Fast, Self::FullTls, Self::FullRsa];

    fn label(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::FullTls => "full_tls",
            Self::FullRsa => "full_rsa",
        }
    }
}

impl Metrics {
    /// Counts a login's outcome.
    pub fn login(&self, outcome: Outcome) {
        self.logins[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Logins so far with `outcome`.
    pub fn logins(&self, outcome: Outcome) -> u64 {
        self.logins[outcome.index()].load(Ordering::Relaxed)
    }

    /// Counts a COM_CHANGE_USER's outcome.
    pub fn change_user(&self, outcome: ChangeUserOutcome) {
        self.change_users[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what a `proxy_protocol` listener's connection sent.
    pub fn proxy_header(&self, result: ProxyHeader) {
        self.proxy_headers[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a caching_sha2_password exchange.
    pub fn sha2_path(&self, path: Sha2Path) {
        self.sha2_paths[path as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the process-wide figures; `extra` appends the rest (pools,
    /// backends) in the same format.
    pub fn render(&self, out: &mut String) {
        self.render_logins(out);
        self.render_policy_calls(out);
        self.render_relay(out);
        self.render_kept_backend_sessions(out);
        self.render_operations(out);
        self.render_commands(out);
        self.split.render(out);
        self.multiplex.render(out);
        counter(
            out,
            "switchyard_log_lines_suppressed_total",
            "Log lines dropped by the rate limiter.",
            crate::logging::SUPPRESSED.load(Ordering::Relaxed),
        );
    }

    /// Sessions and logins.
    fn render_logins(&self, out: &mut String) {
        gauge(
            out,
            "switchyard_sessions",
            "Client connections being served (logging in or relaying).",
            self.sessions.load(Ordering::Relaxed),
        );
        header(
            out,
            "switchyard_logins_total",
            "Logins by outcome.",
            "counter",
        );
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "switchyard_logins_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.logins(o)
            );
        }
        self.login_latency.render(
            out,
            "switchyard_login_duration_seconds",
            "Time from accept to the client's OK, for successful logins.",
        );
    }

    /// Policy calls: their duration, failures and refusals.
    fn render_policy_calls(&self, out: &mut String) {
        self.policy_latency.render(
            out,
            "switchyard_policy_call_duration_seconds",
            "Duration of policy route calls, including the wait for a call slot.",
        );
        counter(
            out,
            "switchyard_policy_errors_total",
            "Policy calls that trapped, timed out or answered badly.",
            self.policy_errors.load(Ordering::Relaxed),
        );
        counter(
            out,
            "switchyard_policy_refusals_total",
            "Policy calls that refused the login.",
            self.policy_refusals.load(Ordering::Relaxed),
        );
    }

    /// Relayed traffic and idle sessions closed.
    fn render_relay(&self, out: &mut String) {
        labeled(
            out,
            "switchyard_bytes_total",
            "Bytes relayed, by direction.",
            "direction",
            &[
                ("from_clients", self.bytes_from_clients.get()),
                ("to_clients", self.bytes_to_clients.get()),
            ],
        );
        counter(
            out,
            "switchyard_idle_sessions_closed_total",
            "Sessions closed by idle_timeout_ms.",
            self.idle_closed.load(Ordering::Relaxed),
        );
    }

    /// Backend sessions kept for later logins (`idle_sessions`).
    fn render_kept_backend_sessions(&self, out: &mut String) {
        labeled(
            out,
            "switchyard_backend_sessions_kept_total",
            "Backend sessions whose client quit, by what became of them (pools with idle_sessions).",
            "result",
            &[
                ("kept", self.backend_kept.load(Ordering::Relaxed)),
                (
                    "not_at_rest",
                    self.backend_not_at_rest.load(Ordering::Relaxed),
                ),
                ("no_room", self.backend_no_room.load(Ordering::Relaxed)),
                ("not_clean", self.backend_not_clean.load(Ordering::Relaxed)),
            ],
        );
        counter(
            out,
            "switchyard_backend_sessions_reused_total",
            "Logins that took over a kept backend session with COM_CHANGE_USER.",
            self.backend_reused.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "switchyard_backend_sessions_idle",
            "Backend sessions kept for later logins now.",
            self.backend_idle.load(Ordering::Relaxed),
        );
    }

    /// Reloads, policy swaps and throttling.
    fn render_operations(&self, out: &mut String) {
        labeled(
            out,
            "switchyard_reloads_total",
            "Configuration reloads, by result.",
            "result",
            &[
                ("ok", self.reloads_ok.load(Ordering::Relaxed)),
                ("failed", self.reloads_failed.load(Ordering::Relaxed)),
            ],
        );
        labeled(
            out,
            "switchyard_policy_swaps_total",
            "Policy modules posted to the admin endpoint, by result.",
            "result",
            &[
                ("ok", self.policy_swaps.load(Ordering::Relaxed)),
                ("failed", self.policy_swaps_failed.load(Ordering::Relaxed)),
            ],
        );
        counter(
            out,
            "switchyard_throttle_blocks_total",
            "Times a client address was blocked after failed logins.",
            self.throttle_blocks.load(Ordering::Relaxed),
        );
        labeled(
            out,
            "switchyard_proxy_headers_total",
            "Connections to proxy_protocol listeners, by what their PROXY header came to.",
            "result",
            &by_label(ProxyHeader::ALL.map(|r| r.label()), &self.proxy_headers),
        );
    }

    /// Commands the proxy takes part in: COM_CHANGE_USER,
    /// caching_sha2_password exchanges, KILL.
    fn render_commands(&self, out: &mut String) {
        labeled(
            out,
            "switchyard_change_user_total",
            "COM_CHANGE_USER commands, by outcome.",
            "outcome",
            &by_label(
                ChangeUserOutcome::ALL.map(|o| o.label()),
                &self.change_users,
            ),
        );
        labeled(
            out,
            "switchyard_caching_sha2_exchanges_total",
            "caching_sha2_password exchanges (logins and COM_CHANGE_USER), by path.",
            "path",
            &by_label(Sha2Path::ALL.map(|p| p.label()), &self.sha2_paths),
        );
        labeled(
            out,
            "switchyard_kills_total",
            "KILL statements naming a greeting connection id, by what was sent on.",
            "result",
            &[
                ("translated", self.kills_translated.load(Ordering::Relaxed)),
                ("unknown", self.kills_unknown.load(Ordering::Relaxed)),
            ],
        );
        labeled(
            out,
            "switchyard_query_timeouts_total",
            "Statements that outran query_timeout_ms (their sessions were closed), by whether their backend thread was killed.",
            "thread",
            &[
                ("killed", self.runaway_killed.load(Ordering::Relaxed)),
                (
                    "not_killed",
                    self.runaway_not_killed.load(Ordering::Relaxed),
                ),
            ],
        );
    }
}

/// `(label, count)` for a family of counters in the order of `labels`.
fn by_label<'a>(
    labels: impl IntoIterator<Item = &'a str>,
    counters: &[AtomicU64],
) -> Vec<(&'a str, u64)> {
    labels
        .into_iter()
        .zip(counters)
        .map(|(l, c)| (l, c.load(Ordering::Relaxed)))
        .collect()
}

/// Writes `# HELP` and `# TYPE`.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes a labelless counter.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

/// Writes a counter family with one label.
pub fn labeled(out: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    header(out, name, help, "counter");
    for (value, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {v}");
    }
}

/// Writes a labelless gauge.
pub fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {v}");
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.login(Outcome::Ok);
        m.login(Outcome::Ok);
        m.login(Outcome::AccessDenied);
        m.login_latency.observe(Duration::from_micros(700));
        m.login_latency.observe(Duration::from_secs(30));
        m.bytes_to_clients.add(5);
        std::thread::scope(|s| {
            s.spawn(|| m.bytes_to_clients.add(7));
        });
        m.change_user(ChangeUserOutcome::Moved);
        m.change_user(ChangeUserOutcome::Refused);
        m.change_user(ChangeUserOutcome::Refused);
        m.sha2_path(Sha2Path::FullRsa);
        m.kills_unknown.fetch_add(3, Ordering::Relaxed);
        m.runaway_killed.fetch_add(2, Ordering::Relaxed);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "switchyard_change_user_total{outcome=\"in_place\"} 0",
            "switchyard_change_user_total{outcome=\"moved\"} 1",
            "switchyard_change_user_total{outcome=\"refused\"} 2",
            "switchyard_change_user_total{outcome=\"failed\"} 0",
            "switchyard_caching_sha2_exchanges_total{path=\"fast\"} 0",
            "switchyard_caching_sha2_exchanges_total{path=\"full_rsa\"} 1",
            "switchyard_kills_total{result=\"translated\"} 0",
            "switchyard_kills_total{result=\"unknown\"} 3",
            "switchyard_query_timeouts_total{thread=\"killed\"} 2",
            "switchyard_query_timeouts_total{thread=\"not_killed\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in {out}");
        }
        assert!(
            out.contains("switchyard_logins_total{outcome=\"ok\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("switchyard_logins_total{outcome=\"access_denied\"} 1\n"));
        assert!(out.contains("switchyard_login_duration_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(out.contains("switchyard_login_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("switchyard_login_duration_seconds_bucket{le=\"10\"} 1\n"));
        assert!(out.contains("switchyard_login_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(out.contains("switchyard_login_duration_seconds_count 2\n"));
        assert!(out.contains("switchyard_bytes_total{direction=\"to_clients\"} 12\n"));
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
        assert_eq!(label("a\"b\\"), "a\\\"b\\\\");
    }

    #[test]
    fn renders_the_families_in_order() {
        let mut out = String::new();
        Metrics::default().render(&mut out);
        let families: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            families,
            [
                "switchyard_sessions gauge",
                "switchyard_logins_total counter",
                "switchyard_login_duration_seconds histogram",
                "switchyard_policy_call_duration_seconds histogram",
                "switchyard_policy_errors_total counter",
                "switchyard_policy_refusals_total counter",
                "switchyard_bytes_total counter",
                "switchyard_idle_sessions_closed_total counter",
                "switchyard_backend_sessions_kept_total counter",
                "switchyard_backend_sessions_reused_total counter",
                "switchyard_backend_sessions_idle gauge",
                "switchyard_reloads_total counter",
                "switchyard_policy_swaps_total counter",
                "switchyard_throttle_blocks_total counter",
                "switchyard_proxy_headers_total counter",
                "switchyard_change_user_total counter",
                "switchyard_caching_sha2_exchanges_total counter",
                "switchyard_kills_total counter",
                "switchyard_query_timeouts_total counter",
                "switchyard_statements_routed_total counter",
                "switchyard_sessions_pinned_total counter",
                "switchyard_causal_reads_total counter",
                "switchyard_split_backend_sessions gauge",
                "switchyard_split_sessions gauge",
                "switchyard_multiplex_borrows_total counter",
                "switchyard_multiplex_releases_total counter",
                "switchyard_multiplex_held_total counter",
                "switchyard_multiplex_waits_total counter",
                "switchyard_multiplex_evictions_total counter",
                "switchyard_multiplex_idle_backend_sessions gauge",
                "switchyard_log_lines_suppressed_total counter",
            ]
        );
    }
}
