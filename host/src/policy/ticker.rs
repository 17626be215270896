//! Advances the engine's epoch every millisecond while policy calls run, and
//! for a moment after the last one (so that a busy proxy does not wake the
//! thread for every login), then sleeps: an idle proxy does not wake up a
//! thousand times a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::Duration;

use wasmtime::Engine;

/// The epoch tick, which is the unit of the policy timeout.
pub const TICK: Duration = Duration::from_millis(1);
/// Ticks the thread goes on ticking after the last call before it sleeps.
const LINGER_TICKS: u32 = 200;

/// A thread that ticks the epoch while calls are in flight.
#[derive(Debug)]
pub struct EpochTicker {
    in_flight: AtomicUsize,
    parked: AtomicBool,
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
                let mut idle_ticks = 0;
                loop {
                    let Some(ticker) = weak.upgrade() else { return };
                    if ticker.in_flight.load(Ordering::SeqCst) > 0 {
                        idle_ticks = 0;
                    } else if idle_ticks < LINGER_TICKS {
                        idle_ticks += 1;
                    } else {
                        ticker.parked.store(true, Ordering::SeqCst);
                        // A call that started before `parked` was set did
                        // not unpark us: look again before sleeping.
                        if ticker.in_flight.load(Ordering::SeqCst) == 0 {
                            drop(ticker);
                            thread::park_timeout(Duration::from_secs(1));
                            let Some(ticker) = weak.upgrade() else { return };
                            ticker.parked.store(false, Ordering::SeqCst);
                        } else {
                            ticker.parked.store(false, Ordering::SeqCst);
                        }
                        // Woken by a call (which resets this) or by the
                        // timeout (then sleep again at once).
                        idle_ticks = LINGER_TICKS;
                        continue;
                    }
                    drop(ticker);
                    thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the policy epoch thread");
        let ticker = Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            thread: handle.thread().clone(),
        });
        let _ = tx.send(Arc::clone(&ticker));
        ticker
    }

    /// Marks a call in flight until the returned guard is dropped.
    pub fn running(&self) -> Ticking<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Ticking(self)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
