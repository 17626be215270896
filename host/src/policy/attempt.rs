//! What one call attempt gave: the answer, checked; the memory the
//! instance had; whether the deadline cut it short.

use super::error::{self, RouteError};

/// What one call attempt gave.
pub(super) struct Attempt {
    /// The answer; `None` when the call was not made.
    pub(super) result: Option<Result<String, RouteError>>,
    /// The most linear memory the instance had.
    pub(super) peak: usize,
    /// Whether its deadline interrupted it.
    pub(super) interrupted: bool,
}

impl Attempt {
    /// The attempt that produced `raw`: a pool name, a refusal, or a trap.
    pub(super) fn of(raw: wasmtime::Result<Result<String, String>>, peak: usize) -> Self {
        let interrupted = raw.as_ref().is_err_and(error::is_interrupt);
        Self {
            result: Some(error::answer(raw)),
            peak,
            interrupted,
        }
    }

    /// The call that was not made: no instance was ready.
    pub(super) fn not_made() -> Self {
        Self {
            result: None,
            peak: 0,
            interrupted: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts() {
        let a = Attempt::of(Err(wasmtime::Trap::Interrupt.into()), 10);
        assert!(a.interrupted);
        assert_eq!(a.peak, 10);
        assert_eq!(
            a.result,
            Some(Err(RouteError::Failed("did not answer in time".into())))
        );
        let a = Attempt::of(Err(wasmtime::Trap::StackOverflow.into()), 0);
        assert!(!a.interrupted);
        assert!(matches!(a.result, Some(Err(RouteError::Failed(_)))));
        let a = Attempt::of(Ok(Err("no".into())), 0);
        assert!(!a.interrupted);
        assert_eq!(a.result, Some(Err(RouteError::Refused("no".into()))));
        let a = Attempt::not_made();
        assert!(a.result.is_none() && !a.interrupted && a.peak == 0);
    }
}
