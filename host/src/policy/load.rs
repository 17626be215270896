//! Loading a policy: reading, compiling (or finding the compiled code),
//! checking what it imports and exports, pre-instantiating it and choosing
//! between fresh and reused instances; a reload that keeps the module; and
//! the configuration's self-tests.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::Policy;
use super::bindings::{Router, RouterPre};
use super::cache::{Origin, sha256_hex};
use super::call::block_on;
use super::engine::{self, PolicyEngine};
use super::error::{PolicyLoadError, RouteError};
use super::host::{CallState, PoolSource, Shared};
use super::instances::Idle;
use crate::config::{Instances, PolicyConfig, SelfTest};
use crate::pool::Pools;

/// An instantiation slower than this makes `instances = "auto"` reuse
/// instances.
const REUSE_ABOVE: Duration = Duration::from_micros(250);
/// So does an initial linear memory larger than this.
const REUSE_MEMORY_ABOVE: usize = 1 << 20;
/// The interface prefix a policy may import besides WASI.
const HOST_INTERFACE: &str = "switchyard:policy/host@0.1.";

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
        let pre = pre_instantiate(&engine.engine, &component).map_err(wasm_err)?;
        let mut policy = Self {
            engine,
            pre,
            shared: Arc::new(Shared {
                name: policy_name(path),
                settings: config.settings.clone(),
                pools,
            }),
            timeout_ticks: config.timeout_ms,
            hash,
            origin,
            imports,
            reuse: None,
            idle: Idle::new(),
            instantiation: Duration::ZERO,
            on_event_loop: AtomicBool::new(true),
            statement: None,
        };
        policy.statement = super::statement::Hook::of(&policy.pre);
        let initial_memory;
        (policy.instantiation, initial_memory) = policy.time_instantiation();
        policy.reuse = reuse_for(config, policy.instantiation, initial_memory);
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
            idle: Idle::new(),
            instantiation: self.instantiation,
            on_event_loop: AtomicBool::new(self.on_event_loop.load(Ordering::Relaxed)),
            statement: self.statement.as_ref().map(|h| h.fresh()),
        }
    }

    /// Whether `config` asks for the call limits this policy was loaded
    /// with (otherwise a reload loads it anew).
    pub fn has_limits_of(&self, config: &PolicyConfig) -> bool {
        self.timeout_ticks == config.timeout_ms
            && self.engine.memory_limit == engine::memory_limit(config)
            && self.engine.slots == config.max_concurrent_calls
    }

    /// Runs `cases` against this policy; the first that fails, described.
    pub fn self_test(&self, cases: &[SelfTest]) -> Result<(), String> {
        for (i, case) in cases.iter().enumerate() {
            let answer = self.route_blocking(&case.user, case.db.as_deref(), &case.client);
            if !meets(&case.expect, &answer) {
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
}

/// A policy's name: the file name of its module.
fn policy_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Whether `answer` is what a self-test expects: `"pool:<name>"` or
/// `"refuse"`.
fn meets(expect: &str, answer: &Result<String, RouteError>) -> bool {
    match (answer, expect.strip_prefix("pool:")) {
        (Ok(pool), Some(want)) => pool == want,
        (Err(RouteError::Refused(_)), None) => expect == "refuse",
        _ => false,
    }
}

/// `Some(calls per instance)` when instances are to be reused: as
/// `config` says, or (`"auto"`) when an instantiation takes `instantiation`
/// and an instance starts with `initial_memory` bytes.
fn reuse_for(config: &PolicyConfig, instantiation: Duration, initial_memory: usize) -> Option<u32> {
    let reuse = match config.instances {
        Instances::Fresh => false,
        Instances::Reuse => true,
        // A runtime that starts slowly, or a large initial memory (a
        // snapshot of one, which every fresh instance faults in again),
        // costs more per fresh instance than isolation is worth.
        Instances::Auto => instantiation > REUSE_ABOVE || initial_memory > REUSE_MEMORY_ABOVE,
    };
    reuse.then_some(config.reuse_calls.max(1))
}

/// `component` linked to WASI and the `host` interface, ready to be
/// instantiated.
fn pre_instantiate(
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<RouterPre<CallState>> {
    let mut linker: Linker<CallState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Router::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    RouterPre::new(linker.instantiate_pre(component)?)
}

/// Checks that `component` exports `route` and imports only WASI and the
/// `host` interface; returns its imports.
fn check_component(engine: &Engine, component: &Component) -> Result<Vec<String>, String> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    check_imports(&imports)?;
    if !ty.exports(engine).any(|(name, _)| name == "route") {
        return Err(
            "it does not export `route`: not a component of the `switchyard:policy/router` world"
                .into(),
        );
    }
    Ok(imports)
}

/// Checks that `imports` are all of WASI or the `host` interface.
fn check_imports(imports: &[String]) -> Result<(), String> {
    match imports
        .iter()
        .find(|name| !(name.starts_with("wasi:") || name.starts_with(HOST_INTERFACE)))
    {
        Some(name) => Err(format!(
            "it imports `{name}`, which a policy may not import (only WASI and `{HOST_INTERFACE}x`)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_test_expectations() {
        let pool = Ok("main".to_owned());
        let refused = Err(RouteError::Refused("no".into()));
        let failed = Err(RouteError::Failed("trap".into()));
        assert!(meets("pool:main", &pool));
        assert!(!meets("pool:other", &pool));
        assert!(!meets("refuse", &pool));
        assert!(meets("refuse", &refused));
        assert!(!meets("pool:main", &refused));
        assert!(!meets("refused", &refused));
        assert!(!meets("refuse", &failed));
        assert!(!meets("pool:main", &failed));
    }

    #[test]
    fn reuse_choice() {
        let mut config: PolicyConfig = toml::from_str("module = \"p.wasm\"").unwrap();
        config.reuse_calls = 0;
        let fast = Duration::from_micros(20);
        let slow = REUSE_ABOVE + Duration::from_micros(1);
        config.instances = Instances::Auto;
        assert_eq!(reuse_for(&config, fast, 64 << 10), None);
        assert_eq!(reuse_for(&config, REUSE_ABOVE, REUSE_MEMORY_ABOVE), None);
        assert_eq!(reuse_for(&config, slow, 0), Some(1));
        assert_eq!(reuse_for(&config, fast, REUSE_MEMORY_ABOVE + 1), Some(1));
        config.reuse_calls = 500;
        assert_eq!(reuse_for(&config, slow, 0), Some(500));
        config.instances = Instances::Fresh;
        assert_eq!(reuse_for(&config, slow, REUSE_MEMORY_ABOVE + 1), None);
        config.instances = Instances::Reuse;
        assert_eq!(reuse_for(&config, fast, 0), Some(500));
    }

    #[test]
    fn allowed_imports() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(check_imports(&[]), Ok(()));
        assert_eq!(
            check_imports(&names(&[
                "wasi:io/poll@0.2.6",
                "switchyard:policy/host@0.1.0"
            ])),
            Ok(())
        );
        assert_eq!(
            check_imports(&names(&["wasi:cli/stdout@0.2.6", "evil:net/socket"])),
            Err(
                "it imports `evil:net/socket`, which a policy may not import \
                 (only WASI and `switchyard:policy/host@0.1.x`)"
                    .into()
            )
        );
        assert!(check_imports(&names(&["switchyard:policy/host@0.2.0"])).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(policy_name(Path::new("/etc/x/route.wasm")), "route.wasm");
        assert_eq!(policy_name(Path::new("/")), "/");
    }
}
