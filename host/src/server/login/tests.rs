//! The login gate in process: a real `Shared` (accounts, throttle, limits
//! and the default policy component, built by `cargo build --release
//! --target wasm32-wasip2 -p default-policy`), a loopback client socket,
//! no backend. What `admit` decides is what both the first login and
//! COM_CHANGE_USER get.

use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::auth::PasswordHash;
use crate::config::Config;

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

fn shared(dir: &std::path::Path) -> Shared {
    let (cert, key) = certificate(dir);
    let user = |name: &str, extra: &str| {
        format!(
            "[[users]]\nname = \"{name}\"\npassword_hash = \"{}\"\n{extra}",
            PasswordHash::of_password(b"secret")
        )
    };
    let text = format!(
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
    );
    let config = Config::parse(&text, std::path::Path::new("gate.toml")).unwrap();
    Shared::new(config, None).unwrap()
}

/// The server's end of a plaintext client connection (the client's end
/// is kept open alongside it).
async fn client() -> (PacketStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (
        PacketStream::new(accepted.unwrap().0, 16 * 1024),
        ours.unwrap(),
    )
}

const NONCE: [u8; auth::NONCE_LEN] = *b"abcdefghij0123456789";

/// `admit` for `user` with `password` from `peer`.
async fn admit_as(
    shared: &Shared,
    peer: &str,
    (user, password): (&str, &str),
) -> Result<Admitted, LoginError> {
    let (mut stream, _client) = client().await;
    let state = shared.state();
    let gate = Gate {
        shared,
        state: &state,
        peer: peer.parse().unwrap(),
        policy: None,
    };
    let attempt = Attempt {
        user,
        client_plugin: None,
        data: Sha1Password::of_password(password.as_bytes()).scramble(&NONCE),
        can_switch: false,
        nonce: &NONCE,
        seq: 2,
    };
    admit(&mut stream, gate, attempt, None).await
}

fn code(result: Result<Admitted, LoginError>) -> (u16, u8) {
    match result {
        Err(LoginError::Deny { err, seq, .. }) => (err.code, seq),
        Ok(a) => panic!("admitted to {}", a.pool.name),
        Err(LoginError::Close(why)) => panic!("closed: {why}"),
    }
}

#[test]
fn the_gate_admits_routes_and_refuses_as_both_logins_need() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Right password: routed, the answer is packet #2.
        let admitted = admit_as(&shared, "127.0.0.2:1000", ("alice", "secret"))
            .await
            .unwrap();
        assert_eq!((admitted.pool.name.as_str(), admitted.seq), ("main", 2));
        // The user limit: a second session of `limited` gets 1226 while the
        // first is held.
        let first = admit_as(&shared, "127.0.0.2:1001", ("limited", "secret"))
            .await
            .unwrap();
        let second = admit_as(&shared, "127.0.0.2:1002", ("limited", "secret")).await;
        assert_eq!(code(second), (1226, 2));
        drop(first);
        admit_as(&shared, "127.0.0.2:1003", ("limited", "secret"))
            .await
            .unwrap();
        // A pool the configuration lacks: 9101.
        assert_eq!(
            code(admit_as(&shared, "127.0.0.2:1004", ("lost", "secret")).await),
            (9101, 2)
        );
        // From another address: the right password of a TLS-only user over
        // plaintext, and a wrong password: both 1045, both counted; the
        // second blocks the address, even for a right password.
        let tls = admit_as(&shared, "127.0.0.3:1000", ("tls", "secret")).await;
        assert_eq!(code(tls), (1045, 2));
        let wrong = admit_as(&shared, "127.0.0.3:1001", ("alice", "wrong")).await;
        assert_eq!(code(wrong), (1045, 2));
        let blocked = admit_as(&shared, "127.0.0.3:1002", ("alice", "secret")).await;
        assert_eq!(code(blocked), (1129, 2));
        // Other addresses are not affected.
        admit_as(&shared, "127.0.0.2:1005", ("alice", "secret"))
            .await
            .unwrap();
    });
}
