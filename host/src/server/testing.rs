//! What the in-process tests of the session share: a real [`Shared`]
//! (accounts, throttle, limits and the default policy component, built by
//! `cargo build --release --target wasm32-wasip2 -p default-policy`) and
//! loopback sockets.

use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream};

use super::Shared;
use crate::auth::PasswordHash;
use crate::config::Config;
use crate::conn::PacketStream;

fn policy_component() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("wasm32-wasip2/release/default_policy.wasm");
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --target wasm32-wasip2 -p default-policy",
        path.display()
    );
    path
}

/// A self-signed certificate and its key (0600) in `dir`, by openssl.
fn certificate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("gate.crt"), dir.join("gate.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=gate", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}

pub(super) fn shared(dir: &std::path::Path) -> Shared {
    let config = Config::parse(&config_text(dir), std::path::Path::new("gate.toml")).unwrap();
    Shared::new(config, None).unwrap()
}

/// The configuration of [`shared`] (with a new certificate in `dir`).
pub(super) fn config_text(dir: &std::path::Path) -> String {
    let (cert, key) = certificate(dir);
    let user = |name: &str, extra: &str| {
        format!(
            "[[users]]\nname = \"{name}\"\npassword_hash = \"{}\"\n{extra}",
            PasswordHash::of_password(b"secret")
        )
    };
    format!(
        r#"listen = "127.0.0.1:0"
{alice}{tls}{limited}{lost}
[tls]
cert = "{cert}"
key = "{key}"
[throttle]
max_failures = 2
window_ms = 60000
block_ms = 60000
[pools.main]
backends = ["127.0.0.1:9"]
[policy]
module = "{module}"
cache_dir = ""
[policy.settings]
"user.alice" = "main"
"user.tls" = "main"
"user.limited" = "main"
"user.lost" = "nowhere"
"#,
        alice = user("alice", ""),
        tls = user("tls", "require_tls = true\n"),
        limited = user("limited", "max_connections = 1\n"),
        lost = user("lost", ""),
        module = policy_component().display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// The server's end of a plaintext client connection (the client's end
/// is kept open alongside it).
pub(super) async fn client() -> (PacketStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (
        PacketStream::new(accepted.unwrap().0, 16 * 1024),
        ours.unwrap(),
    )
}
