//! A hostile routing policy, for tests only. The setting `mode.<user>` picks
//! what `route` does for that user:
//!
//! - `loop`: never returns;
//! - `panic`: panics (a trap);
//! - `memory`: allocates until it is stopped;
//! - `huge`: answers a 10 MiB pool name;
//! - `huge-refusal`: refuses with a text of almost 1 MiB;
//! - `print`: writes a line to stdout (WASI I/O that blocks), then
//!   answers as below;
//! - `slow`: computes for 20 ms, then answers as below;
//! - `sleep`: sleeps through `wasi:clocks` (a monotonic-clock pollable it
//!   blocks on, as `std::thread::sleep` does) for `sleep_ms.<user>`
//!   milliseconds (default: an hour), then answers as below;
//! - `inspect`: logs a line, then refuses with what it saw: its arguments
//!   and the live figures of every pool (`pools()`);
//! - anything else, or no setting: the pool named by `user.<user>`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "router",
});

use switchyard::policy::host;

struct Misbehave;

impl Guest for Misbehave {
    fn route(user: String, db: Option<String>, client_addr: String) -> Result<String, String> {
        match host::setting(&format!("mode.{user}")).as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("panic") => panic!("policy panics on purpose for {user}"),
            Some("memory") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("huge") => Ok("x".repeat(10 << 20)),
            Some("print") => {
                println!("policy routes {user}");
                pool_of(&user)
            }
            Some("slow") => {
                let started = std::time::Instant::now();
                let mut n: u64 = 0;
                while started.elapsed() < std::time::Duration::from_millis(20) {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
                pool_of(&user)
            }
            Some("sleep") => {
                let ms = host::setting(&format!("sleep_ms.{user}"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(3_600_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                pool_of(&user)
            }
            Some("huge-refusal") => Err("no ".repeat(300_000)),
            Some("inspect") => {
                host::log(
                    host::Level::Warn,
                    &format!("inspecting {user}\nforged line"),
                );
                let pools: Vec<String> = host::pools()
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:healthy={},total={},active={},lag={:?}",
                            p.name,
                            p.healthy_backends,
                            p.total_backends,
                            p.active_sessions,
                            p.max_lag_ms
                        )
                    })
                    .collect();
                Err(format!(
                    "user={user} db={} client={client_addr} pools={}",
                    db.as_deref().unwrap_or("-"),
                    pools.join(";")
                ))
            }
            _ => pool_of(&user),
        }
    }
}

/// The pool named by `user.<user>`.
fn pool_of(user: &str) -> Result<String, String> {
    host::setting(&format!("user.{user}")).ok_or_else(|| format!("no pool for '{user}'"))
}

export!(Misbehave);
