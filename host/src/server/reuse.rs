//! Backend sessions kept after their clients quit, for later logins to take
//! over (a pool's `idle_sessions`).
//!
//! When a client of such a pool sends COM_QUIT, the relay stops at a safe
//! point and hands the backend session back instead of closing it; it is
//! kept while the backend has fewer than `idle_sessions` kept on this
//! worker, and only once it is clean: a COM_RESET_CONNECTION (which rolls
//! back an open transaction and releases its row locks, `LOCK TABLES` and
//! `GET_LOCK` locks) answered first and alone, so a kept session never
//! holds what its departed client held ([`backend::reset_at_rest`]). A later
//! login routed to that backend takes the newest kept session whose flags
//! fit its own ([`Shape`]) and whose TLS meets its pool's (opened under the
//! same TLS settings, and TLS for real where they require it), checks that it is at rest
//! (no answer still on its way to the departed client) and logs in with
//! COM_CHANGE_USER, both in one write ([`backend::take_over`]): the backend
//! authenticates the new user with its own nonce and resets the session
//! (transactions, temporary tables, variables, prepared statements). So a
//! login still authenticates at the backend, without a new TCP connection,
//! greeting and thread.
//!
//! Kept sessions live per worker thread: a socket stays with the event loop
//! that registered it, and taking one needs no lock. Each worker closes its
//! sessions that waited `idle_session_ms` (with COM_QUIT).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{self, BackendSession, BackendTls};
use crate::conn::{PacketStream, Stream};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::protocol::{CapabilityFlags, Command, MariaDbCapabilities};

/// How long a kept session may take to answer the at-rest check: a
/// literal SELECT; a slower answer most likely waits behind a query of the
/// departed client's, and a new session is opened instead.
const AT_REST_WITHIN: Duration = Duration::from_millis(100);
/// How long a COM_QUIT may take to write.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a worker looks for kept sessions that waited too long.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The client-side choices that decide a backend session's flags: a kept
/// session fits a login of the same shape (against the same backend, the
/// same choices give the same session flags; the database, attributes and
/// charset are the COM_CHANGE_USER's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    caps: CapabilityFlags,
    mariadb: MariaDbCapabilities,
}

impl Shape {
    /// The shape of a client session with these flags, offered these.
    pub(super) fn of(
        (client, offered): (CapabilityFlags, CapabilityFlags),
        (client_mariadb, offered_mariadb): (MariaDbCapabilities, MariaDbCapabilities),
    ) -> Self {
        let login_only = CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_CONNECT_ATTRS
            | CapabilityFlags::CLIENT_SSL;
        Self {
            caps: (client & offered) - login_only,
            mariadb: client_mariadb & offered_mariadb,
        }
    }
}

/// The TLS a backend session was opened with: the pool settings' id
/// ([`BackendTls::id`]) and whether the session is TLS for real (a
/// `preferred` pool's may not be); `None` for a pool without TLS.
type TlsRecord = Option<(u64, bool)>;

/// Whether a session opened with `kept` meets what `demand` (the taking
/// pool's settings) asks: the same settings, and TLS for real where they
/// require it.
fn meets(kept: TlsRecord, demand: Option<&BackendTls>) -> bool {
    match (kept, demand) {
        (None, None) => true,
        (Some((id, actual)), Some(t)) => id == t.id && (actual || !t.required),
        _ => false,
    }
}

/// A backend session waiting for a login.
struct Kept {
    session: BackendSession,
    shape: Shape,
    tls: TlsRecord,
    expires: Instant,
}

thread_local! {
    /// This worker's kept sessions, by backend address.
    static KEPT: RefCell<HashMap<SocketAddr, Vec<Kept>>> = RefCell::default();
}

/// What the session knew of its backend session when its client quit.
pub(super) struct Quitting<'a> {
    /// The backend's stream.
    pub stream: Stream,
    /// The backend's thread id.
    pub thread_id: u32,
    /// The greeting nonce a COM_CHANGE_USER answers.
    pub nonce: &'a [u8],
    /// The backend session's flags.
    pub capabilities: CapabilityFlags,
    /// The shape of the client session it served.
    pub shape: Shape,
}

/// Keeps the backend session of a client that quit, if `pool` (the pool
/// it was opened in) has room for it on this worker and it can be made
/// clean; otherwise closes it. The reset goes out now, when no login waits
/// for it; whether the session stayed at rest is checked again when a
/// login takes it over (see [`backend::take_over`]).
pub(super) async fn keep(quitting: Quitting<'_>, addr: SocketAddr, pool: &Pool, metrics: &Metrics) {
    let tls = pool.tls.as_ref().map(|t| (t.id, quitting.stream.is_tls()));
    let mut stream = PacketStream::from_parts(
        quitting.stream,
        bytes::BytesMut::new(),
        backend::MAX_LOGIN_PACKET,
    );
    let has_room =
        || KEPT.with_borrow(|k| k.get(&addr).map_or(0, Vec::len) < pool.idle_sessions as usize);
    if !has_room() {
        metrics.backend_no_room.fetch_add(1, Ordering::Relaxed);
        return quit(stream).await;
    }
    if let Err(e) = backend::reset_at_rest(&mut stream, quitting.capabilities, AT_REST_WITHIN).await
    {
        tracing::debug!(backend = %addr, error = %e, "a backend session could not be made clean; closed");
        metrics.backend_not_clean.fetch_add(1, Ordering::Relaxed);
        return quit(stream).await;
    }
    // Others may have been kept while this one was reset.
    if !has_room() {
        metrics.backend_no_room.fetch_add(1, Ordering::Relaxed);
        return quit(stream).await;
    }
    let kept = Kept {
        session: BackendSession {
            stream,
            thread_id: quitting.thread_id,
            nonce: quitting.nonce.to_vec(),
            ok: bytes::Bytes::new(),
            capabilities: quitting.capabilities,
        },
        shape: quitting.shape,
        tls,
        expires: Instant::now() + pool.idle_session_max,
    };
    KEPT.with_borrow_mut(|k| k.entry(addr).or_default().push(kept));
    metrics.backend_kept.fetch_add(1, Ordering::Relaxed);
    metrics.backend_idle.fetch_add(1, Ordering::Relaxed);
}

/// The newest kept session of `addr` (on this worker) that fits `shape`
/// and meets the TLS settings `tls` of the pool that takes it.
pub(super) fn take(
    addr: SocketAddr,
    shape: Shape,
    tls: Option<&BackendTls>,
    metrics: &Metrics,
) -> Option<BackendSession> {
    let now = Instant::now();
    KEPT.with_borrow_mut(|k| {
        let list = k.get_mut(&addr)?;
        let i = list
            .iter()
            .rposition(|kept| kept.shape == shape && meets(kept.tls, tls) && kept.expires > now)?;
        metrics.backend_idle.fetch_sub(1, Ordering::Relaxed);
        Some(list.remove(i).session)
    })
}

/// Logs in to `session` as the user of `req` once it is shown at rest
/// (COM_CHANGE_USER).
pub(super) async fn take_over(
    mut session: BackendSession,
    req: &backend::LoginRequest<'_>,
) -> Result<BackendSession, backend::BackendError> {
    let ok = backend::take_over(
        &mut session.stream,
        (&session.nonce, session.capabilities),
        req,
        AT_REST_WITHIN,
    )
    .await?;
    session.ok = ok;
    Ok(session)
}

/// Closes kept sessions that waited too long, every second, on this
/// worker; on shutdown (when this future is dropped), the rest too.
pub(super) async fn sweep(metrics: &Metrics) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let expired = take_all(|kept| kept.expires <= now, metrics);
        for session in expired {
            tokio::spawn(quit(session.stream));
        }
    }
}

/// Closes every kept session of this worker.
pub(super) async fn close_all(metrics: &Metrics) {
    let all = take_all(|_| true, metrics);
    for session in all {
        quit(session.stream).await;
    }
}

fn take_all(which: impl Fn(&Kept) -> bool, metrics: &Metrics) -> Vec<BackendSession> {
    let mut out = Vec::new();
    KEPT.with_borrow_mut(|k| {
        for list in k.values_mut() {
            // In order: `take` relies on the newest being last.
            out.extend(
                list.extract_if(.., |kept| which(kept))
                    .map(|kept| kept.session),
            );
        }
        k.retain(|_, list| !list.is_empty());
    });
    metrics
        .backend_idle
        .fetch_sub(out.len() as i64, Ordering::Relaxed);
    out
}

/// Ends a backend session politely: COM_QUIT, then close.
pub(super) async fn quit(mut stream: PacketStream) {
    let _ = tokio::time::timeout(QUIT_TIMEOUT, stream.write(0, &[Command::Quit as u8])).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(client: CapabilityFlags) -> Shape {
        Shape::of(
            (client, CapabilityFlags::implemented()),
            (
                MariaDbCapabilities::all(),
                MariaDbCapabilities::implemented(),
            ),
        )
    }

    fn tls(required: bool) -> BackendTls {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);
        BackendTls {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            required,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    #[test]
    fn a_kept_session_serves_only_pools_whose_tls_it_meets() {
        let preferred = tls(false);
        let required = tls(true);
        // Opened without TLS: only for pools without TLS.
        assert!(meets(None, None));
        assert!(!meets(None, Some(&required)));
        assert!(!meets(None, Some(&preferred)));
        // Opened by a `preferred` (or unverified) pool: never for another
        // pool's settings, whatever they ask.
        assert!(meets(Some((preferred.id, true)), Some(&preferred)));
        assert!(meets(Some((preferred.id, false)), Some(&preferred)));
        assert!(!meets(Some((preferred.id, true)), Some(&required)));
        assert!(!meets(Some((preferred.id, true)), None));
        // Settings that require TLS take only sessions that have it.
        assert!(meets(Some((required.id, true)), Some(&required)));
        assert!(!meets(Some((required.id, false)), Some(&required)));
    }

    #[test]
    fn shapes_differ_by_what_shapes_the_session_only() {
        let base = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_MULTI_RESULTS;
        // The database, attributes and TLS of the login itself do not
        // matter: COM_CHANGE_USER carries the first two, TLS is per hop.
        let login_only = CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_CONNECT_ATTRS
            | CapabilityFlags::CLIENT_SSL;
        assert_eq!(shape(base), shape(base | login_only));
        // Result-shaping flags do.
        assert_ne!(
            shape(base),
            shape(base | CapabilityFlags::CLIENT_DEPRECATE_EOF)
        );
        assert_ne!(
            shape(base),
            shape(base - CapabilityFlags::CLIENT_MULTI_RESULTS)
        );
        // A flag Switchyard did not offer is not part of the session.
        let offered = CapabilityFlags::implemented() - CapabilityFlags::CLIENT_DEPRECATE_EOF;
        let of = |client| {
            Shape::of(
                (client, offered),
                (MariaDbCapabilities::empty(), MariaDbCapabilities::empty()),
            )
        };
        assert_eq!(of(base), of(base | CapabilityFlags::CLIENT_DEPRECATE_EOF));
    }
}
