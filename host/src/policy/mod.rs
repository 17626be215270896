//! The policy engine: loads a routing policy (a WebAssembly component of the
//! `router` world) and calls its `route` export for each login.
//!
//! One wasmtime `Engine` (component model, epoch interruption, pooling
//! allocator), the component compiled and pre-instantiated once, and a fresh
//! `Store` per call with an epoch deadline and a memory limit. The guest gets
//! WASI only from an empty context: no files, sockets, environment or args.
//! Calls run on tokio's blocking threads, at most `max_concurrent_calls` at
//! once.

mod bindings;
mod ticker;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config as EngineConfig, Engine, InstanceAllocationStrategy, Store};
use wasmtime::{PoolingAllocationConfig, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::config::PolicyConfig;
use crate::pool::Pools;
use bindings::{Level, PoolStatus, Router, RouterPre};
use ticker::EpochTicker;

/// Longest pool name or refusal text taken from a policy.
pub const MAX_ANSWER_LEN: usize = 1024;
/// Longest log message taken from a policy.
const MAX_LOG_LEN: usize = 1024;
/// Bytes of an instance slot's memory reset in place between calls.
const KEEP_RESIDENT: usize = 256 << 10;
/// Most instance slots whose memory is given back to the kernel together.
const DECOMMIT_BATCH: usize = 16;
/// Log lines one call may write.
const MAX_LOG_LINES_PER_CALL: u32 = 16;

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

/// What a policy instance sees while it runs.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    shared: Arc<Shared>,
    log_lines: u32,
}

/// What every call of one policy shares.
struct Shared {
    name: String,
    settings: BTreeMap<String, String>,
    pools: Arc<Pools>,
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
        // One line per call of `log`: no forged log lines from a policy.
        let message: String = truncate(&message, MAX_LOG_LEN)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
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

/// A loaded routing policy, ready to be called.
pub struct Policy {
    engine: Engine,
    pre: RouterPre<CallState>,
    shared: Arc<Shared>,
    ticker: Arc<EpochTicker>,
    timeout_ticks: u64,
    memory_limit: usize,
    permits: Arc<Semaphore>,
    permits_total: usize,
    hash: String,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.shared.name)
            .field("sha256", &self.hash)
            .finish()
    }
}

impl Policy {
    /// Loads and compiles the component at `config.module`. Blocking: call
    /// it off the async runtime (or at start-up).
    pub fn load(config: &PolicyConfig, pools: Arc<Pools>) -> Result<Self, PolicyLoadError> {
        let path = config.module.get_ref();
        let bytes = std::fs::read(path).map_err(|source| PolicyLoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, path, config, pools)
    }

    /// Compiles `bytes` as a policy named after `path`.
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        config: &PolicyConfig,
        pools: Arc<Pools>,
    ) -> Result<Self, PolicyLoadError> {
        let invalid = |e: wasmtime::Error| PolicyLoadError::Invalid {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        };
        let memory_limit =
            usize::try_from(config.memory_limit_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let engine = build_engine(config, memory_limit).map_err(invalid)?;
        let component = Component::new(&engine, bytes).map_err(invalid)?;
        let mut linker: Linker<CallState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(invalid)?;
        Router::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(invalid)?;
        let pre = linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = RouterPre::new(pre).map_err(invalid)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Self {
            ticker: EpochTicker::start(engine.clone()),
            engine,
            pre,
            shared: Arc::new(Shared {
                name,
                settings: config.settings.clone(),
                pools,
            }),
            timeout_ticks: config.timeout_ms,
            memory_limit,
            permits: Arc::new(Semaphore::new(config.max_concurrent_calls as usize)),
            permits_total: config.max_concurrent_calls as usize,
            hash: sha256_hex(bytes),
        })
    }

    /// The same compiled policy with `config`'s settings and new `pools`
    /// (a configuration reload that did not change the module). Its call
    /// limits stay those it was loaded with.
    pub fn rebind(&self, config: &PolicyConfig, pools: Arc<Pools>) -> Self {
        Self {
            engine: self.engine.clone(),
            pre: self.pre.clone(),
            shared: Arc::new(Shared {
                name: self.shared.name.clone(),
                settings: config.settings.clone(),
                pools,
            }),
            ticker: Arc::clone(&self.ticker),
            timeout_ticks: self.timeout_ticks,
            memory_limit: self.memory_limit,
            permits: Arc::clone(&self.permits),
            permits_total: self.permits_total,
            hash: self.hash.clone(),
        }
    }

    /// Whether `config` asks for the call limits this policy was loaded
    /// with (otherwise a reload loads it anew).
    pub fn has_limits_of(&self, config: &PolicyConfig) -> bool {
        let memory_limit =
            usize::try_from(config.memory_limit_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        self.timeout_ticks == config.timeout_ms
            && self.memory_limit == memory_limit
            && self.permits_total == config.max_concurrent_calls as usize
    }

    /// The policy's name (its file name).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The SHA-256 of the module, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Calls `route` on a blocking thread, waiting for a free call slot.
    pub async fn route(
        self: &Arc<Self>,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Result<String, RouteError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| RouteError::Failed("policy engine is shutting down".into()))?;
        let this = Arc::clone(self);
        let (user, db, client_addr) = (
            user.to_owned(),
            db.map(str::to_owned),
            client_addr.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.route_blocking(&user, db.as_deref(), &client_addr)
        })
        .await
        .map_err(|e| RouteError::Failed(format!("policy call aborted: {e}")))?
    }

    /// Calls `route` on this thread: a fresh instance, a deadline, a memory
    /// limit.
    pub fn route_blocking(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Result<String, RouteError> {
        let state = CallState {
            wasi: empty_wasi(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory_limit)
                .trap_on_grow_failure(true)
                .build(),
            shared: Arc::clone(&self.shared),
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.timeout_ticks);
        let _ticking = self.ticker.running();
        let failed = |e: wasmtime::Error| {
            let msg = match e.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => "did not answer in time".to_owned(),
                _ => format!("{e:#}"),
            };
            RouteError::Failed(truncate(&msg, MAX_ANSWER_LEN).into_owned())
        };
        let router = self.pre.instantiate(&mut store).map_err(failed)?;
        let answer = router
            .call_route(&mut store, user, db, client_addr)
            .map_err(failed)?;
        match answer {
            Ok(pool) if pool.len() > MAX_ANSWER_LEN => Err(RouteError::Failed(format!(
                "answered a pool name of {} bytes",
                pool.len()
            ))),
            Ok(pool) => Ok(pool),
            Err(text) => Err(RouteError::Refused(
                truncate(&text, MAX_ANSWER_LEN).into_owned(),
            )),
        }
    }
}

fn build_engine(config: &PolicyConfig, memory_limit: usize) -> wasmtime::Result<Engine> {
    let slots = config.max_concurrent_calls.saturating_add(4);
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(4))
        .max_memory_size(memory_limit)
        // Give slot memory back to the kernel a few slots at a time: each
        // madvise costs TLB shootdowns on every core.
        .decommit_batch_size((slots as usize / 2).clamp(1, DECOMMIT_BATCH))
        // Reset the first pages of a slot in place instead of giving them
        // back to the kernel: with a small guest stack (see
        // .cargo/config.toml) that is all a light policy touches, and it
        // halves the cost of a call (27 → 12 µs for the default policy).
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT / 4);
    let mut engine_config = EngineConfig::new();
    engine_config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&engine_config)
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

fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// The SHA-256 of `bytes`, hex: a module's identity.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
