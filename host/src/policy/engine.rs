//! The wasmtime engines: one per set of call limits, shared by every policy
//! loaded with them (instance slots, call slots, the epoch ticker and the
//! compiled components), and how a component's compiled code is found.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Semaphore;
use wasmtime::PoolingAllocationConfig;
use wasmtime::component::Component;
use wasmtime::{Config as EngineConfig, Engine, InstanceAllocationStrategy};

use super::cache::{self, Origin, Recent};
use super::ticker::EpochTicker;
use crate::config::PolicyConfig;

/// Bytes of an instance slot's memory reset in place between calls.
const KEEP_RESIDENT: usize = 256 << 10;
/// Most instance slots whose memory is given back to the kernel together.
const DECOMMIT_BATCH: usize = 16;
/// Compiled components kept in memory per engine.
const KEEP_COMPILED: usize = 4;

/// An engine and what the policies that use it share: instance slots, call
/// slots, the epoch ticker and compiled components.
pub(super) struct PolicyEngine {
    pub(super) engine: Engine,
    pub(super) ticker: Arc<EpochTicker>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) memory_limit: usize,
    pub(super) slots: u32,
    /// Compiled components by module SHA-256 (a few, most recent).
    compiled: Mutex<Recent<Component>>,
    /// Hex of the engine's compatibility hash, for the disk cache.
    compat: String,
}

/// Engines by (memory limit, call slots); an engine lives while a policy
/// uses it.
static ENGINES: Mutex<Vec<(EngineKey, Weak<PolicyEngine>)>> = Mutex::new(Vec::new());

/// What an engine is built for: (memory limit in bytes, call slots).
type EngineKey = (usize, u32);

/// The memory limit of one call that `config` asks for, in bytes.
pub(super) fn memory_limit(config: &PolicyConfig) -> usize {
    mib_to_bytes(config.memory_limit_mib)
}

/// `mib` MiB in bytes, at most `usize::MAX`.
fn mib_to_bytes(mib: u64) -> usize {
    usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

impl PolicyEngine {
    /// The engine for `config`'s call limits: the one in use, or a new one.
    pub(super) fn get(config: &PolicyConfig) -> wasmtime::Result<Arc<Self>> {
        let memory_limit = memory_limit(config);
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
        let engine = build_engine(config.max_concurrent_calls, memory_limit)?;
        let this = Arc::new(Self {
            ticker: EpochTicker::start(engine.clone()),
            compat: cache::compat_hex(engine.precompile_compatibility_hash()),
            engine,
            permits: Arc::new(Semaphore::new(config.max_concurrent_calls as usize)),
            memory_limit,
            slots: config.max_concurrent_calls,
            compiled: Mutex::new(Recent::new(KEEP_COMPILED)),
        });
        engines.push((key, Arc::downgrade(&this)));
        Ok(this)
    }

    /// The component for `bytes` (SHA-256 `hash`): from memory, from the
    /// disk cache, or compiled (and then cached).
    pub(super) fn component(
        &self,
        bytes: &[u8],
        hash: &str,
        cache_dir: Option<&Path>,
    ) -> wasmtime::Result<(Component, Origin)> {
        let kept = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash);
        if let Some(c) = kept {
            return Ok((c, Origin::Memory));
        }
        let cached = cache_dir.map(|d| cache::cache_path(d, hash, &self.compat));
        let (component, origin) = match cached.as_deref().and_then(|p| self.cached(p)) {
            Some(c) => (c, Origin::Disk),
            None => {
                let c = Component::new(&self.engine, bytes)?;
                if let Some(path) = cached.as_deref() {
                    cache::store_cache_file(path, &c);
                }
                (c, Origin::Compiled)
            }
        };
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, component.clone());
        Ok((component, origin))
    }

    /// The component compiled into the cache file `path`, if it is there
    /// and may be trusted and used.
    fn cached(&self, path: &Path) -> Option<Component> {
        if !cache::trusted_cache_file(path) {
            return None;
        }
        // SAFETY: the file was written by `Component::serialize` of an
        // engine with the same compatibility hash (it is in the name),
        // into a directory only this user can write (checked above).
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compile cache entry: {e:#}");
                None
            }
        }
    }
}

/// Instance slots of an engine for `calls` concurrent calls: room for two
/// policies' kept instances (a swap) and calls in flight.
fn instance_slots(calls: u32) -> u32 {
    calls.saturating_mul(2).saturating_add(4)
}

/// Instance slots whose memory is given back to the kernel together.
fn decommit_batch(slots: u32) -> usize {
    (slots as usize / 2).clamp(1, DECOMMIT_BATCH)
}

fn build_engine(calls: u32, memory_limit: usize) -> wasmtime::Result<Engine> {
    let slots = instance_slots(calls);
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
        .decommit_batch_size(decommit_batch(slots))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots() {
        assert_eq!(instance_slots(1), 6);
        assert_eq!(instance_slots(64), 132);
        assert_eq!(instance_slots(u32::MAX), u32::MAX);
        assert_eq!(decommit_batch(6), 3);
        assert_eq!(decommit_batch(1), 1);
        assert_eq!(decommit_batch(132), DECOMMIT_BATCH);
    }

    #[test]
    fn memory_limits() {
        assert_eq!(mib_to_bytes(3), 3 << 20);
        assert_eq!(mib_to_bytes(u64::MAX), usize::MAX);
    }
}
