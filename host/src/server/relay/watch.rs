//! The watchdog of a quiet session, and what the backend owes as the bits
//! of an atomic.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use super::{End, Stop, Timeouts};
use crate::protocol::Awaiting;

/// [`Awaiting`] as the bits of an atomic.
pub(super) fn bits(a: Awaiting) -> u16 {
    match a {
        Awaiting::Nothing => 0,
        Awaiting::MoreFromClient => 1,
        Awaiting::Answer(seq) => 0x100 | u16::from(seq),
    }
}

/// The [`Awaiting`] of [`bits`].
pub(super) fn unbits(b: u16) -> Awaiting {
    match b {
        0 => Awaiting::Nothing,
        1 => Awaiting::MoreFromClient,
        b => Awaiting::Answer(b as u8),
    }
}

/// Completes with [`End::IdleTimeout`] once a session has had no traffic
/// for the idle timeout while the backend owed nothing (or the client was
/// in the middle of a command), or with [`End::QueryTimeout`] once it has
/// had none for the query timeout while a command waited for its answer.
/// It looks four times per (shorter) timeout, so a session is closed
/// between 1 and 1.25 timeouts after its last traffic.
pub(super) async fn watch(timeouts: Timeouts, moves: &AtomicU64, awaiting: &AtomicU16) -> End {
    let shortest = match (timeouts.idle, timeouts.query) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Duration::MAX),
    };
    let tick = (shortest / 4).max(Duration::from_millis(1));
    let mut seen = moves.load(Ordering::Relaxed);
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = moves.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = tokio::time::Instant::now();
            continue;
        }
        let (limit, end) = match unbits(awaiting.load(Ordering::Relaxed)) {
            Awaiting::Answer(_) => (timeouts.query, End::QueryTimeout),
            Awaiting::Nothing | Awaiting::MoreFromClient => (timeouts.idle, End::IdleTimeout),
        };
        if limit.is_some_and(|limit| quiet_since.elapsed() >= limit) {
            return end;
        }
    }
}

/// How long a stopping session must be quiet, with nothing awaited, before
/// it is closed: an answer arrives in bursts, and the last burst may still
/// be on its way when the first bytes cleared what was awaited.
const QUIET_BEFORE_STOP: Duration = Duration::from_millis(300);

/// Completes with [`End::Shutdown`] when the proxy stops: at once when told
/// to close now, else once the session has been quiet for
/// [`QUIET_BEFORE_STOP`] with nothing awaited (a command under way is
/// finished first).
pub(super) async fn stop(stop: Stop<'_>, moves: &AtomicU64, awaiting: &AtomicU16) -> End {
    tokio::select! {
        () = stop.now.cancelled() => return End::Shutdown,
        () = stop.drain.cancelled() => {}
    }
    // Boxed: only a stopping session pays for its timer.
    let until_quiet = Box::pin(async {
        let tick = QUIET_BEFORE_STOP / 3;
        let mut seen = moves.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        while quiet < QUIET_BEFORE_STOP {
            tokio::time::sleep(tick).await;
            let now = moves.load(Ordering::Relaxed);
            let idle = unbits(awaiting.load(Ordering::Relaxed)) == Awaiting::Nothing;
            if now != seen || !idle {
                seen = now;
                quiet = Duration::ZERO;
            } else {
                quiet += tick;
            }
        }
    });
    tokio::select! {
        () = stop.now.cancelled() => {}
        () = until_quiet => {}
    }
    End::Shutdown
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn awaiting_survives_the_atomic() {
        for a in [
            Awaiting::Nothing,
            Awaiting::MoreFromClient,
            Awaiting::Answer(0),
            Awaiting::Answer(1),
            Awaiting::Answer(255),
        ] {
            assert_eq!(unbits(bits(a)), a);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_session_closes_once_quiet_with_nothing_awaited() {
        let (drain, now) = (CancellationToken::new(), CancellationToken::new());
        let stop_on = Stop {
            drain: &drain,
            now: &now,
        };
        let moves = AtomicU64::new(0);
        let awaiting = AtomicU16::new(bits(Awaiting::Answer(1)));
        let started = tokio::time::Instant::now();
        let (end, ()) = tokio::join!(stop(stop_on, &moves, &awaiting), async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drain.cancel();
            // The command's answer comes 5 s later.
            tokio::time::sleep(Duration::from_secs(5)).await;
            moves.fetch_add(1, Ordering::Relaxed);
            awaiting.store(bits(Awaiting::Nothing), Ordering::Relaxed);
        });
        assert_eq!(end, End::Shutdown);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(6) + QUIET_BEFORE_STOP
                && took <= Duration::from_millis(6_500),
            "{took:?}"
        );
        // Told to close now: at once, whatever is awaited.
        awaiting.store(bits(Awaiting::Answer(1)), Ordering::Relaxed);
        now.cancel();
        let started = tokio::time::Instant::now();
        assert_eq!(stop(stop_on, &moves, &awaiting).await, End::Shutdown);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn each_timeout_applies_to_its_own_state() {
        let timeouts = Timeouts {
            idle: Some(Duration::from_secs(10)),
            query: Some(Duration::from_secs(100)),
        };
        let moves = AtomicU64::new(0);
        let awaiting = AtomicU16::new(bits(Awaiting::Answer(1)));
        let started = tokio::time::Instant::now();
        let (end, ()) = tokio::join!(watch(timeouts, &moves, &awaiting), async {
            // Awaiting an answer for 50 s: the idle timeout does not apply.
            tokio::time::sleep(Duration::from_secs(50)).await;
            // Then the answer comes, and nothing after it.
            moves.fetch_add(1, Ordering::Relaxed);
            awaiting.store(bits(Awaiting::Nothing), Ordering::Relaxed);
        });
        let took = started.elapsed();
        assert_eq!(end, End::IdleTimeout);
        // Idle from 50 s on: closed between 60 and 62.5 s.
        assert!(
            took >= Duration::from_secs(60) && took <= Duration::from_millis(62_500),
            "{took:?}"
        );
        // A command that gets no byte back: the query timeout.
        awaiting.store(bits(Awaiting::Answer(1)), Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        assert_eq!(watch(timeouts, &moves, &awaiting).await, End::QueryTimeout);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(100) && took <= Duration::from_millis(102_500),
            "{took:?}"
        );
    }
}
