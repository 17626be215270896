//! Advances the engine's epoch every millisecond while policy calls run, and
//! sleeps otherwise, so an idle proxy does not wake up a thousand times a
//! second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::Duration;

use wasmtime::Engine;

/// The epoch tick, which is the unit of the policy timeout.
pub const TICK: Duration = Duration::from_millis(1);

/// A thread that ticks the epoch while calls are in flight.
#[derive(Debug)]
pub struct EpochTicker {
    in_flight: AtomicUsize,
    thread: Thread,
}

/// Keeps the ticker running while held.
pub struct Ticking<'a>(&'a EpochTicker);

impl EpochTicker {
    /// Starts the ticker thread for `engine`. It ends when the last
    /// reference to the ticker is gone.
    pub fn start(engine: Engine) -> Arc<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<EpochTicker>>(0);
        let handle = thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                let weak = match rx.recv() {
                    Ok(t) => Arc::downgrade(&t),
                    Err(_) => return,
                };
                loop {
                    let Some(ticker) = weak.upgrade() else { return };
                    let busy = ticker.in_flight.load(Ordering::Acquire) > 0;
                    drop(ticker);
                    if busy {
                        thread::sleep(TICK);
                        engine.increment_epoch();
                    } else {
                        thread::park_timeout(Duration::from_secs(1));
                    }
                }
            })
            .expect("spawn the policy epoch thread");
        let ticker = Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            thread: handle.thread().clone(),
        });
        let _ = tx.send(Arc::clone(&ticker));
        ticker
    }

    /// Marks a call in flight until the returned guard is dropped.
    pub fn running(&self) -> Ticking<'_> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Ticking(self)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
