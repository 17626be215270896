//! What goes wrong: a policy that cannot be loaded, a call that gives no
//! pool, and the bounds on text taken from a guest.

use std::borrow::Cow;

/// Longest pool name or refusal text taken from a policy.
pub const MAX_ANSWER_LEN: usize = 1024;

/// A policy that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The module file could not be read.
    #[error("policy module {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The engine refused the module or its imports.
    #[error("policy module {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Why (wasmtime's explanation, with its causes).
        message: String,
    },
}

/// Why a `route` call did not produce a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The policy refused the login; the text goes to the client.
    #[error("refused by policy: {0}")]
    Refused(String),
    /// The policy failed: it trapped, ran out of time or memory, or gave an
    /// answer that is not acceptable.
    #[error("policy failed: {0}")]
    Failed(String),
}

/// What a call of `route` answered (a pool name, a refusal text, or a
/// trap), as a pool or a [`RouteError`].
pub(super) fn answer(raw: wasmtime::Result<Result<String, String>>) -> Result<String, RouteError> {
    match raw {
        Err(e) => Err(failed(e)),
        Ok(Ok(pool)) if pool.len() > MAX_ANSWER_LEN => Err(RouteError::Failed(format!(
            "answered a pool name of {} bytes",
            pool.len()
        ))),
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(text)) => Err(RouteError::Refused(
            truncate(&text, MAX_ANSWER_LEN).into_owned(),
        )),
    }
}

/// Whether `e` is the trap of a deadline (the epoch's, or the call dropped
/// while it waited).
pub(super) fn is_interrupt(e: &wasmtime::Error) -> bool {
    matches!(
        e.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    )
}

/// A wasmtime error as a policy failure.
fn failed(e: wasmtime::Error) -> RouteError {
    let msg = if is_interrupt(&e) {
        "did not answer in time".to_owned()
    } else {
        format!("{e:#}")
    };
    RouteError::Failed(truncate(&msg, MAX_ANSWER_LEN).into_owned())
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` after
/// it when it was cut.
pub(super) fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text_borrowed() {
        assert!(matches!(truncate("abc", 3), Cow::Borrowed("abc")));
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn truncate_cuts_on_a_char_boundary() {
        assert_eq!(truncate("abcdef", 3), "abc…");
        // 'é' is two bytes: a cut inside it backs off to before it.
        assert_eq!(truncate("aéb", 2), "a…");
        assert_eq!(truncate("aéb", 3), "aé…");
        assert_eq!(truncate("€€", 1), "…");
    }

    #[test]
    fn messages() {
        assert_eq!(
            RouteError::Refused("no".into()).to_string(),
            "refused by policy: no"
        );
        assert_eq!(
            RouteError::Failed("trap".into()).to_string(),
            "policy failed: trap"
        );
        let e = PolicyLoadError::Invalid {
            path: "p.wasm".into(),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "policy module p.wasm: bad");
        let e = PolicyLoadError::Read {
            path: "p.wasm".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(e.to_string(), "policy module p.wasm: gone");
    }

    #[test]
    fn answers() {
        assert_eq!(answer(Ok(Ok("main".into()))), Ok("main".into()));
        let long = "p".repeat(MAX_ANSWER_LEN + 1);
        assert_eq!(
            answer(Ok(Ok(long))),
            Err(RouteError::Failed(format!(
                "answered a pool name of {} bytes",
                MAX_ANSWER_LEN + 1
            )))
        );
        assert_eq!(
            answer(Ok(Ok("p".repeat(MAX_ANSWER_LEN)))),
            Ok("p".repeat(MAX_ANSWER_LEN))
        );
        let refusal = "r".repeat(MAX_ANSWER_LEN + 10);
        assert_eq!(
            answer(Ok(Err(refusal))),
            Err(RouteError::Refused(format!(
                "{}…",
                "r".repeat(MAX_ANSWER_LEN)
            )))
        );
    }

    #[test]
    fn traps_as_failures() {
        let interrupt: wasmtime::Error = wasmtime::Trap::Interrupt.into();
        assert!(is_interrupt(&interrupt));
        assert_eq!(
            answer(Err(interrupt)),
            Err(RouteError::Failed("did not answer in time".into()))
        );
        let other: wasmtime::Error = wasmtime::Trap::UnreachableCodeReached.into();
        assert!(!is_interrupt(&other));
        let Err(RouteError::Failed(why)) = answer(Err(other)) else {
            panic!("not a failure")
        };
        assert!(why.contains("unreachable"), "{why}");
        let long = wasmtime::Error::msg("x".repeat(5000));
        let Err(RouteError::Failed(why)) = answer(Err(long)) else {
            panic!("not a failure")
        };
        assert_eq!(why, format!("{}…", "x".repeat(MAX_ANSWER_LEN)));
    }
}
