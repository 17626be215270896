//! Generated bindings for the `switchyard:policy` WIT package, and the
//! conversions between its types and Switchyard's.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "router",
    // Calls are async so that a guest waiting in a WASI import (a clock, a
    // poll) can be dropped at its deadline (see `super::Policy::route`).
    exports: { default: async },
});

pub use self::switchyard::policy::host::{Level, PoolStatus};

/// The `statement-router` world: `router`'s imports (the same `host`
/// interface, so one linker serves both) and `route-statement`.
pub mod statement {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "statement-router",
        exports: { default: async },
        with: { "switchyard:policy/host": super::switchyard::policy::host },
    });
}

impl From<crate::pool::PoolStatus> for PoolStatus {
    fn from(s: crate::pool::PoolStatus) -> Self {
        Self {
            name: s.name,
            healthy_backends: s.healthy_backends,
            total_backends: s.total_backends,
            active_sessions: s.active_sessions,
            max_lag_ms: s.max_lag_ms,
        }
    }
}
