//! The login gate in process: a real `Shared` (accounts, throttle, limits
//! and the default policy component, built by `cargo build --release
//! --target wasm32-wasip2 -p default-policy`), a loopback client socket,
//! no backend. What `admit` decides is what both the first login and
//! COM_CHANGE_USER get.

use super::*;
use crate::server::testing::{client, shared};

const NONCE: [u8; auth::NONCE_LEN] = *b"abcdefghij0123456789";

/// A first login's attempt (packet #1 answered at #2) of `user` with
/// `password`, as a mysql_native_password client makes it.
fn attempt<'a>(user: &'a str, password: &str) -> Attempt<'a> {
    Attempt {
        user,
        client_plugin: None,
        data: Sha1Password::of_password(password.as_bytes()).scramble(&NONCE),
        can_switch: false,
        nonce: &NONCE,
        seq: 2,
    }
}

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
    admit(&mut stream, &gate, attempt(user, password), None).await
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

/// The gate against an in-memory [`Services`]: it sees, call by call,
/// what `admit` asks of the proxy and in which order.
mod fake {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::time::Duration;

    use super::super::*;
    use super::client;
    use crate::auth::PasswordHash;
    use crate::auth::caching_sha2::{Cache, RsaKey};
    use crate::config::{AuthPlugin, Config};
    use crate::metrics::Sha2Path;
    use crate::pool::{Pools, Registry};
    use crate::server::limits::UserSessions;
    use zeroize::Zeroizing;

    struct Fake {
        blocked: Option<Duration>,
        accounts: HashMap<&'static str, Known>,
        failures: Cell<u32>,
        successes: Cell<u32>,
        lookups: RefCell<Vec<String>>,
        routes: RefCell<Vec<(String, Option<String>)>>,
        sessions: Arc<UserSessions>,
        pool: Arc<Pool>,
        cache: Cache,
    }

    impl Fake {
        /// Users `alice` (any address), `tls` (TLS only) and `one` (one
        /// session), all with the password `secret`.
        fn new() -> Self {
            let known = |require_tls, limit| Known {
                stored: Some(PasswordHash::of_password(b"secret")),
                plugin: AuthPlugin::Native,
                require_tls,
                limit,
            };
            let config = Config::parse(
                "listen = \"127.0.0.1:0\"\n[pools.main]\nbackends = [\"127.0.0.1:9\"]\n[policy]\nmodule = \"unused.wasm\"\n",
                std::path::Path::new("fake.toml"),
            )
            .unwrap();
            let pools = Pools::from_config(&config, &Registry::default());
            Self {
                blocked: None,
                accounts: HashMap::from([
                    ("alice", known(false, None)),
                    ("tls", known(true, None)),
                    ("one", known(false, Some(1))),
                ]),
                failures: Cell::new(0),
                successes: Cell::new(0),
                lookups: RefCell::default(),
                routes: RefCell::default(),
                sessions: Arc::default(),
                pool: Arc::clone(pools.get("main").unwrap()),
                cache: Cache::default(),
            }
        }
    }

    impl Services for Fake {
        fn blocked(&self) -> Option<Duration> {
            self.blocked
        }
        async fn failed(&self) {
            self.failures.set(self.failures.get() + 1);
        }
        fn succeeded(&self) {
            self.successes.set(self.successes.get() + 1);
        }
        fn lookup(&self, user: &str) -> Known {
            self.lookups.borrow_mut().push(user.to_owned());
            self.accounts.get(user).cloned().unwrap_or(Known {
                stored: None,
                plugin: AuthPlugin::Native,
                require_tls: false,
                limit: None,
            })
        }
        async fn claim(&self, user: &str, limit: Option<u32>) -> Result<UserClaim, u32> {
            self.sessions.claim(user, limit)
        }
        async fn route(
            &self,
            user: &str,
            db: Option<&str>,
            _seq: u8,
        ) -> Result<Arc<Pool>, LoginError> {
            let call = (user.to_owned(), db.map(str::to_owned));
            self.routes.borrow_mut().push(call);
            Ok(Arc::clone(&self.pool))
        }
        fn host(&self) -> String {
            "192.0.2.7".into()
        }
        fn sha2_cache(&self) -> &Cache {
            &self.cache
        }
        async fn rsa_key(&self) -> anyhow::Result<Arc<RsaKey>> {
            anyhow::bail!("the fake has no RSA key")
        }
        async fn decrypt(
            &self,
            _: Arc<RsaKey>,
            _: Zeroizing<Vec<u8>>,
            _: [u8; auth::NONCE_LEN],
        ) -> Option<Zeroizing<Vec<u8>>> {
            None
        }
        fn sha2_path(&self, _: Sha2Path) {}
    }

    /// `admit` through `fake` for `user` with `password` and `db`.
    fn admit_with(
        fake: &Fake,
        (user, password): (&str, &str),
        db: Option<&str>,
    ) -> Result<Admitted, LoginError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut stream, _client) = client().await;
            admit(&mut stream, fake, super::attempt(user, password), db).await
        })
    }

    /// The ERR's code, sequence id and message.
    fn refusal(result: Result<Admitted, LoginError>) -> (u16, u8, String) {
        match result {
            Err(LoginError::Deny { err, seq, .. }) => (err.code, seq, err.message),
            Ok(a) => panic!("admitted to {}", a.pool.name),
            Err(LoginError::Close(why)) => panic!("closed: {why}"),
        }
    }

    #[test]
    fn a_right_password_is_routed_with_the_users_database() {
        let fake = Fake::new();
        let admitted = admit_with(&fake, ("alice", "secret"), Some("shop")).unwrap();
        assert_eq!((admitted.pool.name.as_str(), admitted.seq), ("main", 2));
        assert_eq!(admitted.password, Sha1Password::of_password(b"secret"));
        assert_eq!(
            *fake.routes.borrow(),
            [("alice".to_owned(), Some("shop".to_owned()))]
        );
        assert_eq!(fake.failures.get(), 0);
        assert_eq!(
            fake.successes.get(),
            0,
            "only the backend's acceptance clears the address's failures"
        );
    }

    #[test]
    fn a_blocked_address_is_refused_before_any_lookup() {
        let mut fake = Fake::new();
        fake.blocked = Some(Duration::from_secs(30));
        let (code, seq, message) = refusal(admit_with(&fake, ("alice", "secret"), None));
        assert_eq!((code, seq), (1129, 2));
        assert!(message.contains("192.0.2.7"), "{message}");
        assert!(fake.lookups.borrow().is_empty());
        assert!(fake.routes.borrow().is_empty());
        assert_eq!(
            fake.failures.get(),
            0,
            "a refusal while blocked is not a guess"
        );
    }

    #[test]
    fn wrong_passwords_and_unknown_users_get_the_same_answer_and_count() {
        let fake = Fake::new();
        let wrong = refusal(admit_with(&fake, ("alice", "guess"), None));
        let unknown = refusal(admit_with(&fake, ("nobody", "guess"), None));
        assert_eq!((wrong.0, wrong.1), (1045, 2));
        assert_eq!((unknown.0, unknown.1), (1045, 2));
        assert_eq!(
            wrong.2.replace("alice", "nobody"),
            unknown.2,
            "the answer must not tell a user that exists"
        );
        assert_eq!(fake.failures.get(), 2);
        assert!(fake.routes.borrow().is_empty());
    }

    #[test]
    fn a_tls_only_user_over_plaintext_is_refused_like_a_wrong_password() {
        let fake = Fake::new();
        let right = refusal(admit_with(&fake, ("tls", "secret"), None));
        let wrong = refusal(admit_with(&fake, ("tls", "guess"), None));
        assert_eq!(right, wrong, "a right password must not be told apart");
        assert_eq!(right.0, 1045);
        assert_eq!(fake.failures.get(), 2);
        assert!(fake.routes.borrow().is_empty());
    }

    #[test]
    fn the_user_limit_refuses_before_the_policy_and_frees_on_drop() {
        let fake = Fake::new();
        let first = admit_with(&fake, ("one", "secret"), None).unwrap();
        let (code, seq, _) = refusal(admit_with(&fake, ("one", "secret"), None));
        assert_eq!((code, seq), (1226, 2));
        assert_eq!(
            fake.routes.borrow().len(),
            1,
            "the refused one was not routed"
        );
        assert_eq!(fake.failures.get(), 0, "a limit is not a failed login");
        drop(first);
        admit_with(&fake, ("one", "secret"), None).unwrap();
        assert_eq!(fake.routes.borrow().len(), 2);
    }
}
