//! Log output: human-readable lines (default) or JSON, on standard error,
//! with repeated warnings and errors rate-limited per call site so that a
//! flood (a password-guessing client, a dead backend under load) cannot
//! drown the log or the disk.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Warning and error lines one call site may write per window.
const LINES_PER_WINDOW: u32 = 20;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);

/// Lines dropped by the rate limiter since start.
pub static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lets at most `per_window` warnings and errors per call site through per
/// `window`; counts the rest in [`SUPPRESSED`]. Other levels pass.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    sites: Mutex<HashMap<usize, (Instant, u32)>>,
}

impl RateLimit {
    /// The limiter with the default budget (20 lines per 10 s per site).
    pub fn new() -> Self {
        Self::with(LINES_PER_WINDOW, WINDOW)
    }

    /// A limiter with its own budget.
    pub fn with(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            sites: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let site = meta as *const Metadata<'_> as usize;
        let now = Instant::now();
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = sites.entry(site).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *count = 0;
        }
        *count += 1;
        if *count > self.per_window {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Installs the global subscriber: `SWITCHYARD_LOG` filters (default
/// `info`), `json` selects JSON lines.
pub fn init(json: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(RateLimit::new()).with_filter(filter))
        .init();
}

/// Every `every`, says how many lines the limiter dropped since the last
/// report (if any). Runs forever.
pub async fn report_suppressed(every: Duration) {
    let mut reported = SUPPRESSED.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(every).await;
        let now = SUPPRESSED.load(Ordering::Relaxed);
        if now > reported {
            tracing::warn!(
                suppressed = now - reported,
                "repeated log lines suppressed (at most {LINES_PER_WINDOW} per call site per {} s)",
                WINDOW.as_secs()
            );
            reported = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn repeated_warnings_are_limited_per_site_and_info_passes() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || writer.clone())
                .with_filter(RateLimit::with(3, Duration::from_secs(60))),
        );
        let before = SUPPRESSED.load(Ordering::Relaxed);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10 {
                tracing::warn!(i, "flood");
                tracing::info!(i, "chatter");
            }
            tracing::error!("another site");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let count = |m: &str| lines.iter().filter(|v| v["fields"]["message"] == m).count();
        assert_eq!(count("flood"), 3);
        assert_eq!(count("chatter"), 10);
        assert_eq!(count("another site"), 1);
        assert!(SUPPRESSED.load(Ordering::Relaxed) >= before + 7);
    }
}

/// `text` with its control characters (newlines, escapes) written as
/// escapes, for log messages that carry client-chosen text such as user
/// names: one log line stays one line. Quotes are left as they are.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod escape_tests {
    #[test]
    fn control_characters_are_escaped_and_quotes_kept() {
        assert_eq!(super::escape_controls("user 'a'"), "user 'a'");
        assert_eq!(
            super::escape_controls("evil\nFORGED\r\x1b[1m"),
            "evil\\nFORGED\\r\\u{1b}[1m"
        );
    }
}
