//! The policy engine: loads a routing policy (a WebAssembly component of the
//! `router` world) and calls its `route` export for each login.
//!
//! One wasmtime `Engine` (component model, epoch interruption, pooling
//! allocator) per set of call limits, shared by every policy loaded with
//! them, so that a swapped-in policy shares instance slots, call slots and
//! the epoch ticker with the one it replaces. Each component is compiled once
//! (cached in memory by its SHA-256, and on disk under `cache_dir` keyed by
//! its SHA-256 and the engine's compatibility hash), checked (it must export
//! `route` and import nothing but WASI and the `host` interface), and
//! pre-instantiated; each call gets a fresh `Store` with a deadline and a
//! memory limit. The guest gets WASI only from an empty context: no
//! files, sockets, environment or args. At most `max_concurrent_calls`
//! calls run at once: on the calling event loop while the policy's calls
//! stay short, else on tokio's blocking threads (see [`Policy::route`]).
//!
//! The deadline has two halves, because a guest spends its time in two
//! places. While it runs wasm, epoch interruption traps it (a ticker thread
//! advances the epoch every millisecond). While it waits in a WASI import
//! (a `wasi:clocks` pollable it blocks on, `wasi:io/poll`), no wasm runs and
//! no epoch check happens: so calls are async (wasmtime runs the guest on a
//! fiber, and WASI's waits are futures), and the call's future is dropped
//! when the deadline passes, which unwinds the guest. Taking the waiting
//! imports away instead would not do: language runtimes (Python, Go,
//! JavaScript) import `wasi:io/poll` and the clocks whatever the policy
//! does, and a list of the imports that can wait would have to follow every
//! WASI release; a deadline around the whole call covers any of them.

mod bindings;
mod ticker;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::PoolingAllocationConfig;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config as EngineConfig, Engine, InstanceAllocationStrategy, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::config::{Instances, PolicyConfig, SelfTest};
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
/// Epoch ticks (milliseconds) a call on an event loop may take before it
/// is interrupted and the policy's calls move to blocking threads.
const INLINE_TICKS: u64 = 5;
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
    limits: Limits,
    shared: Arc<Shared>,
    log_lines: u32,
}

/// The memory cap of one call, and the most memory the call used.
struct Limits {
    memory: usize,
    peak: usize,
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
        Ok(desired <= 100_000)
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
struct Shared {
    name: String,
    settings: BTreeMap<String, String>,
    pools: PoolSource,
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

/// An engine and what the policies that use it share: instance slots, call
/// slots, the epoch ticker and compiled components.
struct PolicyEngine {
    engine: Engine,
    ticker: Arc<EpochTicker>,
    permits: Arc<Semaphore>,
    memory_limit: usize,
    slots: u32,
    /// Compiled components by module SHA-256 (a few, most recent).
    compiled: Mutex<Vec<(String, Component)>>,
    /// Hex of the engine's compatibility hash, for the disk cache.
    compat: String,
}

/// Compiled components kept in memory per engine.
const KEEP_COMPILED: usize = 4;

/// Engines by (memory limit, call slots); an engine lives while a policy
/// uses it.
static ENGINES: Mutex<Vec<(EngineKey, Weak<PolicyEngine>)>> = Mutex::new(Vec::new());

/// What an engine is built for: (memory limit in bytes, call slots).
type EngineKey = (usize, u32);

impl PolicyEngine {
    fn get(config: &PolicyConfig) -> wasmtime::Result<Arc<Self>> {
        let memory_limit =
            usize::try_from(config.memory_limit_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let key = (memory_limit, config.max_concurrent_calls);
        let mut engines = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
        engines.retain(|(_, w)| w.strong_count() > 0);
        if let Some(e) = engines
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(e);
        }
        let engine = build_engine(config, memory_limit)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let this = Arc::new(Self {
            ticker: EpochTicker::start(engine.clone()),
            compat: format!("{:016x}", hasher.finish()),
            engine,
            permits: Arc::new(Semaphore::new(config.max_concurrent_calls as usize)),
            memory_limit,
            slots: config.max_concurrent_calls,
            compiled: Mutex::new(Vec::new()),
        });
        engines.push((key, Arc::downgrade(&this)));
        Ok(this)
    }

    /// The component for `bytes` (SHA-256 `hash`): from memory, from the
    /// disk cache, or compiled (and then cached).
    fn component(
        &self,
        bytes: &[u8],
        hash: &str,
        cache_dir: Option<&Path>,
    ) -> wasmtime::Result<(Component, Origin)> {
        if let Some((_, c)) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(h, _)| h == hash)
        {
            return Ok((c.clone(), Origin::Memory));
        }
        let cached = cache_dir.map(|d| d.join(format!("{hash}-{}.cwasm", self.compat)));
        let mut origin = Origin::Compiled;
        let mut component = None;
        if let Some(path) = cached.as_deref()
            && trusted_cache_file(path)
        {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (it is in the name),
            // into a directory only this user can write (checked above).
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => {
                    component = Some(c);
                    origin = Origin::Disk;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable compile cache entry: {e:#}")
                }
            }
        }
        let component = match component {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, bytes)?;
                if let Some(path) = cached.as_deref() {
                    store_cache_file(path, &c);
                }
                c
            }
        };
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        compiled.retain(|(h, _)| h != hash);
        compiled.insert(0, (hash.to_owned(), component.clone()));
        compiled.truncate(KEEP_COMPILED);
        Ok((component, origin))
    }
}

/// Where a policy's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// Read from the disk cache.
    Disk,
    /// Already compiled in this process.
    Memory,
}

impl Origin {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compiled => "compiled",
            Self::Disk => "disk cache",
            Self::Memory => "memory",
        }
    }
}

/// Whether `path` may be loaded as compiled code: a regular file owned by
/// this user in a directory owned by this user, neither writable by others.
fn trusted_cache_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let private = |m: &std::fs::Metadata| m.uid() == uid && m.mode() & 0o022 == 0;
    let Some(dir) = path.parent() else {
        return false;
    };
    match (
        std::fs::symlink_metadata(dir),
        std::fs::symlink_metadata(path),
    ) {
        (Ok(d), Ok(f)) => d.is_dir() && private(&d) && f.is_file() && private(&f),
        _ => false,
    }
}

/// Writes a compiled component to the cache (atomically: temp file, then
/// rename). Failures only cost a recompile later, so they are logged.
fn store_cache_file(path: &Path, component: &Component) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let result = (|| -> anyhow::Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| anyhow::anyhow!("no directory"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let bytes = component
            .serialize()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), "could not write the compile cache: {e:#}");
    }
}

/// An instantiation slower than this makes `instances = "auto"` reuse
/// instances.
const REUSE_ABOVE: Duration = Duration::from_micros(250);
/// So does an initial linear memory larger than this.
const REUSE_MEMORY_ABOVE: usize = 1 << 20;

/// An instance kept for further calls.
struct Reusable {
    store: Store<CallState>,
    router: Router,
    calls: u32,
}

/// A loaded routing policy, ready to be called.
pub struct Policy {
    engine: Arc<PolicyEngine>,
    pre: RouterPre<CallState>,
    shared: Arc<Shared>,
    timeout_ticks: u64,
    hash: String,
    origin: Origin,
    imports: Vec<String>,
    /// `Some(max calls per instance)` when instances are reused.
    reuse: Option<u32>,
    idle: Mutex<Vec<Reusable>>,
    instantiation: Duration,
    /// Whether calls still run on the calling event loop (see
    /// [`Policy::route`]).
    on_event_loop: AtomicBool,
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

    /// Compiles `bytes` as a policy named after `path`: checks its exports
    /// and imports, then pre-instantiates it.
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        config: &PolicyConfig,
        pools: Arc<Pools>,
    ) -> Result<Self, PolicyLoadError> {
        Self::with_pools(bytes, path, config, PoolSource::Live(pools))
    }

    /// [`Policy::from_bytes`] with any source of pool figures.
    pub fn with_pools(
        bytes: &[u8],
        path: &Path,
        config: &PolicyConfig,
        pools: PoolSource,
    ) -> Result<Self, PolicyLoadError> {
        let invalid = |message: String| PolicyLoadError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let wasm_err = |e: wasmtime::Error| invalid(format!("{e:#}"));
        if !bytes.starts_with(b"\0asm") {
            return Err(invalid("not a WebAssembly module or component".into()));
        }
        let engine = PolicyEngine::get(config).map_err(wasm_err)?;
        let hash = sha256_hex(bytes);
        let (component, origin) = engine
            .component(bytes, &hash, config.cache_dir().as_deref())
            .map_err(wasm_err)?;
        let imports = check_component(&engine.engine, &component).map_err(invalid)?;
        let mut linker: Linker<CallState> = Linker::new(&engine.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_err)?;
        Router::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(wasm_err)?;
        let pre = linker.instantiate_pre(&component).map_err(wasm_err)?;
        let pre = RouterPre::new(pre).map_err(wasm_err)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut policy = Self {
            engine,
            pre,
            shared: Arc::new(Shared {
                name,
                settings: config.settings.clone(),
                pools,
            }),
            timeout_ticks: config.timeout_ms,
            hash,
            origin,
            imports,
            reuse: None,
            idle: Mutex::new(Vec::new()),
            instantiation: Duration::ZERO,
            on_event_loop: AtomicBool::new(true),
        };
        let initial_memory;
        (policy.instantiation, initial_memory) = policy.time_instantiation();
        policy.reuse = match config.instances {
            Instances::Fresh => None,
            Instances::Reuse => Some(config.reuse_calls.max(1)),
            // A runtime that starts slowly, or a large initial memory (a
            // snapshot of one, which every fresh instance faults in again),
            // costs more per fresh instance than isolation is worth.
            Instances::Auto => (policy.instantiation > REUSE_ABOVE
                || initial_memory > REUSE_MEMORY_ABOVE)
                .then_some(config.reuse_calls.max(1)),
        };
        Ok(policy)
    }

    /// The fastest of three instantiations (each in a new store, as a
    /// fresh-instance call does it), and the linear memory an instance
    /// starts with.
    fn time_instantiation(&self) -> (Duration, usize) {
        let _ticking = self.engine.ticker.running();
        let mut memory = 0;
        (0..3)
            .filter_map(|_| {
                let started = Instant::now();
                let mut store = self.new_store();
                // Instantiation runs the guest's initialisers (a Python or
                // JavaScript runtime starts here): give it the call's time.
                store.set_epoch_deadline(self.timeout_ticks);
                let instantiated = block_on(async {
                    tokio::time::timeout(
                        self.deadline(),
                        self.pre.instantiate_async(&mut store),
                    )
                    .await
                    .unwrap_or_else(|_| Err(wasmtime::Trap::Interrupt.into()))
                });
                match instantiated {
                    Ok(_) => {
                        let took = started.elapsed();
                        memory = store.data().limits.peak;
                        Some(took)
                    }
                    Err(e) => {
                        tracing::warn!(policy = %self.shared.name, "instantiating the policy failed: {e:#}");
                        None
                    }
                }
            })
            .min()
            .map_or((Duration::ZERO, memory), |d| (d, memory))
    }

    /// How long one instantiation takes (measured at load).
    pub fn instantiation_time(&self) -> Duration {
        self.instantiation
    }

    /// Whether instances are reused between calls.
    pub fn reuses_instances(&self) -> bool {
        self.reuse.is_some()
    }

    fn new_store(&self) -> Store<CallState> {
        let state = CallState {
            wasi: empty_wasi(),
            table: ResourceTable::new(),
            limits: Limits {
                memory: self.engine.memory_limit,
                peak: 0,
            },
            shared: Arc::clone(&self.shared),
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }

    /// The same compiled policy with `config`'s settings and new `pools`
    /// (a configuration reload that did not change the module). Its call
    /// limits stay those it was loaded with.
    pub fn rebind(&self, config: &PolicyConfig, pools: Arc<Pools>) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            pre: self.pre.clone(),
            shared: Arc::new(Shared {
                name: self.shared.name.clone(),
                settings: config.settings.clone(),
                pools: PoolSource::Live(pools),
            }),
            timeout_ticks: self.timeout_ticks,
            hash: self.hash.clone(),
            origin: Origin::Memory,
            imports: self.imports.clone(),
            reuse: self.reuse,
            idle: Mutex::new(Vec::new()),
            instantiation: self.instantiation,
            on_event_loop: AtomicBool::new(self.on_event_loop.load(Ordering::Relaxed)),
        }
    }

    /// Whether `config` asks for the call limits this policy was loaded
    /// with (otherwise a reload loads it anew).
    pub fn has_limits_of(&self, config: &PolicyConfig) -> bool {
        let memory_limit =
            usize::try_from(config.memory_limit_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        self.timeout_ticks == config.timeout_ms
            && self.engine.memory_limit == memory_limit
            && self.engine.slots == config.max_concurrent_calls
    }

    /// Where its compiled code came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The interfaces it imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Runs `cases` against this policy; the first that fails, described.
    pub fn self_test(&self, cases: &[SelfTest]) -> Result<(), String> {
        for (i, case) in cases.iter().enumerate() {
            let answer = self.route_blocking(&case.user, case.db.as_deref(), &case.client);
            let ok = match (&answer, case.expect.strip_prefix("pool:")) {
                (Ok(pool), Some(want)) => pool == want,
                (Err(RouteError::Refused(_)), None) => case.expect == "refuse",
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "self-test {} (user '{}', db {:?}, client {}) expected {}, got {answer:?}",
                    i + 1,
                    case.user,
                    case.db,
                    case.client,
                    case.expect
                ));
            }
        }
        Ok(())
    }

    /// The policy's name (its file name).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The SHA-256 of the module, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Calls `route`, waiting for a free call slot: on this thread (an
    /// event loop's) while the policy's calls stay short, else on a
    /// blocking thread.
    ///
    /// A call on the event loop gets [`INLINE_TICKS`] of its deadline (and
    /// only an instance that is ready, when instances are reused): one that
    /// runs longer is interrupted, and from then on this policy's calls run
    /// on blocking threads, that one again from the start with the full
    /// deadline. So a slow or hostile policy holds an event loop for a few
    /// milliseconds once, and a light one costs no thread hand-off.
    /// The same happens to a policy that waits in a WASI import (sleeps,
    /// polls): an event loop does not wait for a guest, so the call is
    /// dropped at its first wait and made again off the loop.
    ///
    /// Off the loop, the call's deadline covers waits too: a guest parked in
    /// a WASI import is dropped when its time is up, and its call slot is
    /// free again (see the module's documentation).
    pub async fn route(
        self: &Arc<Self>,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Result<String, RouteError> {
        let permit = Arc::clone(&self.engine.permits)
            .acquire_owned()
            .await
            .map_err(|_| RouteError::Failed("policy engine is shutting down".into()))?;
        if self.on_event_loop.load(Ordering::Relaxed) && self.timeout_ticks > INLINE_TICKS {
            let attempt = without_waiting(self.attempt(INLINE_TICKS, true, user, db, client_addr));
            let why = match attempt {
                Some(Attempt {
                    result: Some(result),
                    interrupted: false,
                    ..
                }) => return result,
                Some(Attempt { result: None, .. }) => None,
                Some(_) => Some(format!("a call ran longer than {INLINE_TICKS} ms")),
                None => Some("it waits in a WASI call (a clock or a poll)".to_owned()),
            };
            // No instance ready (`None`): this call instantiates one, off
            // the event loop.
            if let Some(why) = why {
                self.on_event_loop.store(false, Ordering::Relaxed);
                tracing::warn!(
                    policy = %self.shared.name,
                    "{why} on an event loop; this policy's calls run on blocking threads from now on"
                );
            }
        }
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
    /// limit. Not on an event loop's thread: this thread waits for the call
    /// (see [`block_on`]).
    pub fn route_blocking(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Result<String, RouteError> {
        self.route_measured(user, db, client_addr).0
    }

    /// [`Policy::route_blocking`], also returning what the call cost: its
    /// wall-clock time and the most linear memory it had.
    pub fn route_measured(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> (Result<String, RouteError>, CallCost) {
        let started = Instant::now();
        let attempt = block_on(self.attempt_within_deadline(user, db, client_addr));
        let cost = CallCost {
            duration: started.elapsed(),
            peak_memory: attempt.peak,
        };
        let result = attempt
            .result
            .unwrap_or_else(|| Err(RouteError::Failed("no instance".into())));
        (result, cost)
    }

    /// The wall-clock time a call may take (a tick is a millisecond).
    fn deadline(&self) -> Duration {
        Duration::from_millis(self.timeout_ticks)
    }

    /// One call with the full deadline, for running and for waiting: the
    /// epoch stops a guest that runs too long, and the call is dropped
    /// (the guest unwound) when the time is up while it waits in WASI.
    async fn attempt_within_deadline(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Attempt {
        let call = self.attempt(self.timeout_ticks, false, user, db, client_addr);
        tokio::time::timeout(self.deadline(), call)
            .await
            .unwrap_or_else(|_| Attempt::of(Err(wasmtime::Trap::Interrupt.into()), 0))
    }

    /// One call with an epoch deadline of `ticks`: on a fresh instance, or
    /// on a kept one (a new one, unless `ready_only`: then `result` is
    /// `None` when none is kept). Dropping the future before it ends
    /// unwinds the guest and drops its instance.
    async fn attempt(
        &self,
        ticks: u64,
        ready_only: bool,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Attempt {
        let _ticking = self.engine.ticker.running();
        match self.reuse {
            None => {
                let mut store = self.new_store();
                store.set_epoch_deadline(ticks);
                let raw = match self.pre.instantiate_async(&mut store).await {
                    Ok(router) => router.call_route(&mut store, user, db, client_addr).await,
                    Err(e) => Err(e),
                };
                Attempt::of(raw, store.data().limits.peak)
            }
            Some(max_calls) => {
                self.call_reused(max_calls, ticks, ready_only, (user, db, client_addr))
                    .await
            }
        }
    }

    /// A call on a kept instance (or a new one, kept afterwards unless it
    /// trapped or reached `max_calls`). An instance whose call is dropped
    /// is dropped with it, never kept.
    async fn call_reused(
        &self,
        max_calls: u32,
        ticks: u64,
        ready_only: bool,
        (user, db, client_addr): (&str, Option<&str>, &str),
    ) -> Attempt {
        let kept = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut instance = match kept {
            Some(i) => i,
            None if ready_only => {
                return Attempt {
                    result: None,
                    peak: 0,
                    interrupted: false,
                };
            }
            None => {
                let mut store = self.new_store();
                store.set_epoch_deadline(ticks);
                match self.pre.instantiate_async(&mut store).await {
                    Ok(router) => Reusable {
                        store,
                        router,
                        calls: 0,
                    },
                    Err(e) => return Attempt::of(Err(e), store.data().limits.peak),
                }
            }
        };
        let data = instance.store.data_mut();
        data.log_lines = 0;
        instance.store.set_epoch_deadline(ticks);
        let raw = instance
            .router
            .call_route(&mut instance.store, user, db, client_addr)
            .await;
        let attempt = Attempt::of(raw, instance.store.data().limits.peak);
        instance.calls += 1;
        // A trap may leave the instance in any state: never reuse it.
        let trapped = matches!(&attempt.result, Some(Err(RouteError::Failed(_))));
        if !trapped && instance.calls < max_calls {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(instance);
        }
        attempt
    }
}

/// Runs `call` (a policy call on an event loop) as far as it goes without
/// waiting: its answer, or `None` when the guest waits in a WASI import
/// (a clock, a poll), which an event loop does not wait for. The call is
/// then dropped here, which unwinds the guest.
fn without_waiting<F: Future>(call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(answer) => Some(answer),
        Poll::Pending => None,
    }
}

/// Runs `call` to its end on this thread, which waits for it: a blocking
/// thread of a tokio runtime (whose timers then serve the call), or a
/// thread outside any runtime (start-up, the command-line tools: then
/// wasmtime-wasi's own runtime serves it). Never on an event loop's thread.
fn block_on<F: Future>(call: F) -> F::Output {
    wasmtime_wasi::runtime::in_tokio(call)
}

/// What one call attempt gave.
struct Attempt {
    /// The answer; `None` when the call was not made.
    result: Option<Result<String, RouteError>>,
    /// The most linear memory the instance had.
    peak: usize,
    /// Whether its deadline interrupted it.
    interrupted: bool,
}

impl Attempt {
    /// The attempt that produced `raw`: a pool name, a refusal, or a trap.
    fn of(raw: wasmtime::Result<Result<String, String>>, peak: usize) -> Self {
        let interrupted = raw.as_ref().is_err_and(|e| {
            matches!(
                e.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            )
        });
        let result = match raw {
            Err(e) => Err(failed(e)),
            Ok(Ok(pool)) if pool.len() > MAX_ANSWER_LEN => Err(RouteError::Failed(format!(
                "answered a pool name of {} bytes",
                pool.len()
            ))),
            Ok(Ok(pool)) => Ok(pool),
            Ok(Err(text)) => Err(RouteError::Refused(
                truncate(&text, MAX_ANSWER_LEN).into_owned(),
            )),
        };
        Self {
            result: Some(result),
            peak,
            interrupted,
        }
    }
}

/// A wasmtime error as a policy failure.
fn failed(e: wasmtime::Error) -> RouteError {
    let msg = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "did not answer in time".to_owned(),
        _ => format!("{e:#}"),
    };
    RouteError::Failed(truncate(&msg, MAX_ANSWER_LEN).into_owned())
}

/// What one call cost.
#[derive(Debug, Clone, Copy)]
pub struct CallCost {
    /// Wall-clock time, instantiation included.
    pub duration: Duration,
    /// The most linear memory the instance had, in bytes.
    pub peak_memory: usize,
}

/// The interface prefix a policy may import besides WASI.
const HOST_INTERFACE: &str = "switchyard:policy/host@0.1.";

/// Checks that `component` exports `route` and imports only WASI and the
/// `host` interface; returns its imports.
fn check_component(engine: &Engine, component: &Component) -> Result<Vec<String>, String> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    for name in &imports {
        if !(name.starts_with("wasi:") || name.starts_with(HOST_INTERFACE)) {
            return Err(format!(
                "it imports `{name}`, which a policy may not import (only WASI and `{HOST_INTERFACE}x`)"
            ));
        }
    }
    if !ty.exports(engine).any(|(name, _)| name == "route") {
        return Err(
            "it does not export `route`: not a component of the `switchyard:policy/router` world"
                .into(),
        );
    }
    Ok(imports)
}

fn build_engine(config: &PolicyConfig, memory_limit: usize) -> wasmtime::Result<Engine> {
    // Room for two policies' kept instances (a swap) and calls in flight.
    let slots = config
        .max_concurrent_calls
        .saturating_mul(2)
        .saturating_add(4);
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(4))
        .max_memory_size(memory_limit)
        // A call runs on a fiber stack of its own (async calls).
        .total_stacks(slots)
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
