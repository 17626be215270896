//! The admin endpoint with an in-memory [`Control`] that counts what
//! requests made it do, for the `admin_request` fuzz target.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use serde_json::{Value, json};

use crate::admin::{self, Control};

/// The bearer token the fake endpoint requires.
pub const ADMIN_TOKEN: &str = "fuzz-token";

/// What one request got.
#[derive(Debug)]
pub struct AdminExchange {
    /// Every byte of the answer.
    pub answer: Vec<u8>,
    /// How many reloads, drains and policy swaps it made.
    pub changes: usize,
}

#[derive(Default)]
struct Fake {
    changes: AtomicUsize,
}

impl Fake {
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}

impl Control for Fake {
    fn token_digest(&self) -> Option<[u8; 32]> {
        Some(admin::token_digest(ADMIN_TOKEN.as_bytes()))
    }
    fn status(&self) -> Value {
        json!({ "backends": [{ "addr": "127.0.0.1:3306" }] })
    }
    fn metrics(&self) -> String {
        "switchyard_up 1\n".into()
    }
    async fn reload(self: &Arc<Self>) -> Result<(), String> {
        self.changed();
        Ok(())
    }
    fn set_drain(&self, backend: SocketAddr, _drain: bool) -> Option<()> {
        self.changed();
        (backend.port() == 3306).then_some(())
    }
    fn has_policy(&self, name: &str) -> bool {
        name == "main"
    }
    fn health(&self) -> admin::Health {
        admin::Health {
            live: true,
            unready: None,
        }
    }
    fn drain_instance(&self) -> bool {
        self.changed();
        true
    }
    async fn swap_policy(
        self: &Arc<Self>,
        _bytes: Vec<u8>,
        _which: Option<String>,
    ) -> Result<String, String> {
        self.changed();
        Err("not a component".into())
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

/// Sends `request` (raw bytes, then the client's half-close) to an admin
/// endpoint that requires [`ADMIN_TOKEN`].
pub fn admin_request(request: &[u8]) -> AdminExchange {
    let control = Arc::new(Fake::default());
    let answer = RUNTIME.block_on(admin::exchange_for_fuzzing(request, Arc::clone(&control)));
    AdminExchange {
        answer,
        changes: control.changes.load(Ordering::Relaxed),
    }
}
