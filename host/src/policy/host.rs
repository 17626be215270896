//! What a guest sees while it runs: the state of one call (an empty WASI
//! context, a memory limit) and the `host` interface it may import (log,
//! settings, pool figures).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, Level, PoolStatus};
use super::error::truncate;
use crate::pool::Pools;

/// Longest log message taken from a policy.
const MAX_LOG_LEN: usize = 1024;
/// Log lines one call may write.
const MAX_LOG_LINES_PER_CALL: u32 = 16;
/// Most table elements a guest may have.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What a policy instance sees while it runs.
pub(super) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: Limits,
    shared: Arc<Shared>,
    /// Lines logged by the current call.
    pub(super) log_lines: u32,
}

impl CallState {
    /// The state of a call (or of a kept instance) of the policy `shared`,
    /// with `memory` bytes of linear memory at most.
    pub(super) fn new(memory: usize, shared: Arc<Shared>) -> Self {
        Self {
            wasi: empty_wasi(),
            table: ResourceTable::new(),
            limits: Limits { memory, peak: 0 },
            shared,
            log_lines: 0,
        }
    }
}

/// The memory cap of one call, and the most memory the call used.
pub(super) struct Limits {
    memory: usize,
    pub(super) peak: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            // A trap, not a failed grow: a guest that ignores a failed
            // grow must not go on.
            wasmtime::bail!("policy exceeded its memory limit of {} bytes", self.memory);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Where `pools()` gets its figures.
#[derive(Debug, Clone)]
pub enum PoolSource {
    /// The proxy's live pools.
    Live(Arc<Pools>),
    /// Fixed figures (offline tools, self-tests).
    Fixed(Vec<crate::pool::PoolStatus>),
}

impl PoolSource {
    fn status(&self) -> Vec<crate::pool::PoolStatus> {
        match self {
            Self::Live(p) => p.status(),
            Self::Fixed(v) => v.clone(),
        }
    }
}

/// What every call of one policy shares.
pub(super) struct Shared {
    /// The policy's name (its file name).
    pub(super) name: String,
    pub(super) settings: BTreeMap<String, String>,
    pub(super) pools: PoolSource,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::switchyard::policy::host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let message = one_line(&message);
        let policy = self.shared.name.as_str();
        match level {
            Level::Debug => tracing::debug!(policy, "{message}"),
            Level::Info => tracing::info!(policy, "{message}"),
            Level::Warn => tracing::warn!(policy, "{message}"),
            Level::Error => tracing::error!(policy, "{message}"),
        }
        if self.log_lines == MAX_LOG_LINES_PER_CALL {
            tracing::warn!(policy, "further log lines of this call are dropped");
        }
    }

    fn setting(&mut self, key: String) -> Option<String> {
        self.shared.settings.get(&key).cloned()
    }

    fn pools(&mut self) -> Vec<PoolStatus> {
        self.shared
            .pools
            .status()
            .into_iter()
            .map(PoolStatus::from)
            .collect()
    }
}

/// A policy's log message as one line of at most [`MAX_LOG_LEN`] bytes
/// (and the `…`): one line per call of `log`, no forged log lines from a
/// policy.
fn one_line(message: &str) -> String {
    truncate(message, MAX_LOG_LEN)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// WASI with nothing in it: no preopened directories, no environment, no
/// arguments, no network; stdio discards. Clocks and random work.
fn empty_wasi() -> WasiCtx {
    WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::bindings::switchyard::policy::host::Host;
    use wasmtime::ResourceLimiter;

    fn state(settings: &[(&str, &str)], pools: PoolSource) -> CallState {
        let shared = Shared {
            name: "test.wasm".into(),
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            pools,
        };
        CallState::new(1 << 20, Arc::new(shared))
    }

    #[test]
    fn log_lines_are_single_and_bounded() {
        assert_eq!(one_line("a\nb\r\tc\u{1b}[0m"), "a b  c [0m");
        let long = one_line(&"é".repeat(MAX_LOG_LEN));
        assert_eq!(long, format!("{}…", "é".repeat(MAX_LOG_LEN / 2)));
    }

    #[test]
    fn log_counts_lines_per_call() {
        let mut s = state(&[], PoolSource::Fixed(Vec::new()));
        for _ in 0..MAX_LOG_LINES_PER_CALL + 3 {
            s.log(Level::Debug, "line".into());
        }
        assert_eq!(s.log_lines, MAX_LOG_LINES_PER_CALL + 3);
    }

    #[test]
    fn settings_and_fixed_pools() {
        let status = crate::pool::PoolStatus {
            name: "main".into(),
            healthy_backends: 1,
            total_backends: 2,
            active_sessions: 3,
            max_lag_ms: Some(4),
        };
        let mut s = state(&[("tier", "gold")], PoolSource::Fixed(vec![status]));
        assert_eq!(s.setting("tier".into()).as_deref(), Some("gold"));
        assert_eq!(s.setting("other".into()), None);
        let pools = s.pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].name, "main");
        assert_eq!(
            (
                pools[0].healthy_backends,
                pools[0].total_backends,
                pools[0].active_sessions,
                pools[0].max_lag_ms
            ),
            (1, 2, 3, Some(4))
        );
    }

    #[test]
    fn memory_limit_traps_and_peak_is_kept() {
        let mut limits = Limits {
            memory: 1000,
            peak: 0,
        };
        assert!(limits.memory_growing(0, 600, None).unwrap());
        assert!(limits.memory_growing(600, 400, None).unwrap());
        assert_eq!(limits.peak, 600);
        assert!(limits.memory_growing(600, 1000, None).unwrap());
        let e = limits.memory_growing(1000, 1001, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy exceeded its memory limit of 1000 bytes"
        );
        assert_eq!(limits.peak, 1000);
        assert!(limits.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(
            !limits
                .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
                .unwrap()
        );
    }
}
