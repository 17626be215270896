//! COM_CHANGE_USER in process: a real `Shared` (accounts, throttle and the
//! default policy), loopback sockets for the client and for the backend
//! session. These are the refusals, which end the session before the
//! backend session hears anything; the changes that succeed need a real
//! server (tests/e2e/proxy.rs).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::*;
use crate::auth::{NONCE_LEN, Sha1Password};
use crate::protocol::MariaDbCapabilities;
use crate::server::testing::{client, shared};

const NONCE: [u8; NONCE_LEN] = *b"abcdefghij0123456789";

/// A logged-in session of `alice` from `peer`, bound to a backend session
/// (a loopback socket): its bound streams, context, and the far ends of
/// the client's and the backend's sockets.
async fn session(shared: &Arc<Shared>) -> (Bound, SessionCtx, TcpStream, TcpStream) {
    let state = shared.state();
    let pool = Arc::clone(state.pools.get("main").unwrap());
    let lease = pool.lease(&pool.members[0]).unwrap();
    let user = shared.user_sessions.claim("alice", None).unwrap();
    let (client_end, client_far) = client().await;
    let (backend_end, backend_far) = client().await;
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SECURE_CONNECTION;
    let ctx = SessionCtx {
        backend_thread: 7,
        nonce: NONCE,
        capabilities: caps,
        mariadb_capabilities: MariaDbCapabilities::empty(),
        max_packet_size: 1 << 24,
        charset: 45,
        offered: caps,
        offered_mariadb: MariaDbCapabilities::empty(),
        pool,
        backend_nonce: vec![b'x'; NONCE_LEN].into_boxed_slice(),
        backend_caps: caps,
    };
    let bound = Bound::new((client_end, backend_end), lease, user);
    (bound, ctx, client_far, backend_far)
}

/// COM_CHANGE_USER (packet #0) to `user` with `password`'s scramble.
fn change_user(user: &str, password: &str) -> Vec<u8> {
    let mut payload = vec![0x11];
    payload.extend_from_slice(user.as_bytes());
    payload.push(0);
    let scramble = Sha1Password::of_password(password.as_bytes()).scramble(&NONCE);
    payload.push(u8::try_from(scramble.len()).unwrap());
    payload.extend_from_slice(&scramble);
    payload.push(0); // no database
    let mut packet = u32::try_from(payload.len()).unwrap().to_le_bytes()[..3].to_vec();
    packet.push(0);
    packet.extend_from_slice(&payload);
    packet
}

/// Sends `packet` as the session's next command and runs the change:
/// whether the session goes on, everything the client heard until its
/// socket closed, and everything the backend session heard.
async fn run(shared: &Arc<Shared>, peer: &str, packet: &[u8]) -> (bool, Vec<u8>, Vec<u8>) {
    let (mut bound, mut ctx, mut client_far, mut backend_far) = session(shared).await;
    // The relay hands over the command as bytes read and not relayed.
    bound.client_rest.extend_from_slice(packet);
    let peer = peer.parse().unwrap();
    let went_on = handle(bound, &mut ctx, shared, peer, None).await.is_some();
    let (mut heard, mut backend_heard) = (Vec::new(), Vec::new());
    let read = async {
        client_far.read_to_end(&mut heard).await.unwrap();
        backend_far.read_to_end(&mut backend_heard).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("both sockets closed");
    (went_on, heard, backend_heard)
}

/// The ERR packet's sequence id and code.
fn err_of(heard: &[u8]) -> (u8, u16) {
    assert!(heard.len() > 7 && heard[4] == 0xff, "not an ERR: {heard:?}");
    let len = usize::from(heard[0]) | usize::from(heard[1]) << 8 | usize::from(heard[2]) << 16;
    assert_eq!(heard.len(), 4 + len, "one packet, then the close");
    (heard[3], u16::from_le_bytes([heard[5], heard[6]]))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_refused_change_ends_the_session_after_one_err_and_counts_towards_the_throttle() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(shared(dir.path()));
    block_on(async {
        // A wrong password: ERR 1045 answering packet #0, then the close;
        // the backend session hears nothing (it is closed, not changed).
        let (went_on, heard, backend) =
            run(&shared, "127.0.0.5:1000", &change_user("alice", "guess")).await;
        assert!(!went_on);
        assert_eq!(err_of(&heard), (1, 1045));
        assert!(backend.is_empty(), "the backend heard {backend:?}");
        // The second failure blocks the address (max_failures = 2) ...
        let (_, heard, _) = run(&shared, "127.0.0.5:1001", &change_user("nobody", "x")).await;
        assert_eq!(err_of(&heard), (1, 1045));
        // ... so a right password through COM_CHANGE_USER is refused too.
        let (went_on, heard, backend) =
            run(&shared, "127.0.0.5:1002", &change_user("alice", "secret")).await;
        assert!(!went_on);
        assert_eq!(err_of(&heard), (1, 1129));
        assert!(backend.is_empty());
        // Another address is not blocked: a TLS-only user over plaintext
        // is refused as a wrong password is.
        let (_, heard, _) = run(&shared, "127.0.0.6:1000", &change_user("tls", "secret")).await;
        assert_eq!(err_of(&heard), (1, 1045));
    });
}

#[test]
fn a_policy_pool_the_configuration_lacks_ends_the_session_with_9101() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(shared(dir.path()));
    block_on(async {
        let (went_on, heard, backend) =
            run(&shared, "127.0.0.5:1000", &change_user("lost", "secret")).await;
        assert!(!went_on);
        assert_eq!(err_of(&heard), (1, 9101));
        assert!(backend.is_empty());
        // Neither user holds a session: the old claim and the new one
        // went with the session.
        assert!(shared.user_sessions.snapshot().is_empty());
    });
}

#[test]
fn a_malformed_change_user_closes_without_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(shared(dir.path()));
    block_on(async {
        // A user name without its terminator.
        let (went_on, heard, backend) =
            run(&shared, "127.0.0.5:1000", &[3, 0, 0, 0, 0x11, b'a', b'b']).await;
        assert!(!went_on);
        assert!(heard.is_empty(), "answered {heard:?}");
        assert!(backend.is_empty());
    });
}
