//! A policy swap and a reload that overlap, on a real `Shared` with real
//! policy components (built by `cargo build --release --target
//! wasm32-wasip2 -p default-policy -p by-client-policy`), no backend.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard::config::Config;
use switchyard::server::Shared;

/// A policy component of this workspace.
fn component(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --target wasm32-wasip2 -p default-policy -p by-client-policy",
        path.display()
    );
    path
}

fn config_text(marker: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[pools.main]
backends = ["127.0.0.1:9"]
[policy]
module = "{}"
cache_dir = ""
[policy.settings]
marker = "{marker}"
"#,
        component("default_policy").display()
    )
}

/// `POST /policy` whose client hangs up (or times out) while the policy
/// compiles, and a reload in the meantime: the reload must stay in force.
/// Before the fix the swap's lock went with its caller, the reload ran at
/// once, and the compile, when done, stored the policy into the state it
/// had started from, undoing the reload.
#[test]
fn a_swap_whose_caller_gives_up_does_not_undo_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text("before")).unwrap();
    let shared = Arc::new(Shared::new(Config::load(&path).unwrap(), Some(path.clone())).unwrap());
    let posted = std::fs::read(component("by_client_policy")).unwrap();
    std::fs::write(&path, config_text("after")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let swap = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move { shared.swap_policy(posted, None, None).await }
        });
        // The swap has taken the lock and is compiling (the cache is off)
        // when its caller goes away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        swap.abort();
        shared.reload().await.unwrap();
    });
    // Waits for every compile still running.
    drop(runtime);
    let state = shared.state();
    assert_eq!(
        state.config.policy.settings["marker"], "after",
        "the reload was undone"
    );
    assert_eq!(
        state.policy.hash(),
        switchyard::policy::sha256_hex(&std::fs::read(component("default_policy")).unwrap()),
        "a reload loads the configured module again"
    );
}
