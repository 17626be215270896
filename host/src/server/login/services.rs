//! What the login gate needs of the proxy, as one narrow interface:
//! [`Services`]. [`Gate`] is the running proxy's; tests use fakes.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{Gate, LoginError, UserClaim};
use crate::auth::caching_sha2::{Cache, RsaKey};
use crate::auth::{self, PasswordHash};
use crate::config::AuthPlugin;
use crate::metrics::Sha2Path;
use crate::pool::Pool;
use crate::server::limits;

/// What the gate knows of a user name.
#[derive(Debug, Clone)]
pub(in crate::server) struct Known {
    /// The stored verifier; `None` for no such user.
    pub stored: Option<PasswordHash>,
    /// The plugin it must authenticate with.
    pub plugin: AuthPlugin,
    /// It must log in over TLS.
    pub require_tls: bool,
    /// How many sessions it may have (`None`: no limit).
    pub limit: Option<u32>,
}

/// What the login gate needs, for one client address.
pub(in crate::server) trait Services {
    /// How much longer the client's address is blocked, if it is.
    fn blocked(&self) -> Option<Duration>;
    /// Counts a failed login of the client's address.
    fn failed(&self) -> impl Future<Output = ()>;
    /// Clears the address's failures: called once the backend has
    /// accepted the login too, not when the gate lets it through.
    fn succeeded(&self);
    /// The account of `user`, as the client's address may use it.
    fn lookup(&self, user: &str) -> Known;
    /// Counts a session of `user`; `Err(limit)` when it has as many.
    fn claim(&self, user: &str, limit: Option<u32>)
    -> impl Future<Output = Result<UserClaim, u32>>;
    /// The policy's pool for `user` and `db`; a refusal answers at `seq`.
    fn route(
        &self,
        user: &str,
        db: Option<&str>,
        seq: u8,
    ) -> impl Future<Output = Result<Arc<Pool>, LoginError>>;
    /// The client's address, as ERR 1045 names it.
    fn host(&self) -> String;
    /// `caching_sha2_password`'s fast-path cache.
    fn sha2_cache(&self) -> &Cache;
    /// The RSA key of full authentication without TLS.
    fn rsa_key(&self) -> impl Future<Output = anyhow::Result<Arc<RsaKey>>>;
    /// `block` decrypted with `key` for `nonce` (off the event loop).
    fn decrypt(
        &self,
        key: Arc<RsaKey>,
        block: Zeroizing<Vec<u8>>,
        nonce: [u8; auth::NONCE_LEN],
    ) -> impl Future<Output = Option<Zeroizing<Vec<u8>>>>;
    /// Counts the `caching_sha2_password` path a login took.
    fn sha2_path(&self, path: Sha2Path);
}

impl Services for Gate<'_> {
    fn blocked(&self) -> Option<Duration> {
        let key = super::client_key(self.state, self.peer);
        match self.shared.throttle.check(key, Instant::now()) {
            limits::Verdict::Allow => None,
            limits::Verdict::Blocked(left) => Some(left),
        }
    }

    async fn failed(&self) {
        super::throttle_failure(self.shared, self.state, self.peer).await;
    }

    fn succeeded(&self) {
        let key = super::client_key(self.state, self.peer);
        // The fleet's count is cleared by a login of an address this
        // instance saw fail (a store command per login would cost every
        // login a round trip); the others' counts expire with their window.
        if self.shared.throttle.success(key) {
            crate::server::fleet::success(self.shared, key);
        }
    }

    fn lookup(&self, user: &str) -> Known {
        let config = &self.state.config;
        // The one lookup of the file's account.
        let account = self.state.users.get(user);
        let stored = match account {
            Some(a) => Some(a.hash.clone()),
            None => super::lookup_loaded(self.shared, self.state, user, self.peer),
        };
        let limit = account
            .and_then(|a| a.max_connections)
            .unwrap_or(config.max_connections_per_user);
        Known {
            stored,
            // The account's own plugin, else the default.
            plugin: account
                .and_then(|a| a.plugin)
                .unwrap_or(config.auth.default_plugin),
            require_tls: config.tls.as_ref().is_some_and(|t| t.require)
                || account.is_some_and(|a| a.require_tls),
            limit: (limit > 0).then_some(limit),
        }
    }

    async fn claim(&self, user: &str, limit: Option<u32>) -> Result<UserClaim, u32> {
        let mut claim = self.shared.user_sessions.claim(user, limit)?;
        crate::server::fleet::claim(self.shared, &mut claim, user, limit).await?;
        Ok(claim)
    }

    async fn route(&self, user: &str, db: Option<&str>, seq: u8) -> Result<Arc<Pool>, LoginError> {
        let (shared, state) = (self.shared, self.state);
        super::route(shared, state, self.policy, (user, db), self.peer, seq).await
    }

    fn host(&self) -> String {
        self.peer.ip().to_string()
    }

    fn sha2_cache(&self) -> &Cache {
        &self.shared.sha2_cache
    }

    async fn rsa_key(&self) -> anyhow::Result<Arc<RsaKey>> {
        self.shared.rsa_key(self.state).await
    }

    async fn decrypt(
        &self,
        key: Arc<RsaKey>,
        block: Zeroizing<Vec<u8>>,
        nonce: [u8; auth::NONCE_LEN],
    ) -> Option<Zeroizing<Vec<u8>>> {
        self.shared.decrypt_rsa_password(key, block, nonce).await
    }

    fn sha2_path(&self, path: Sha2Path) {
        self.shared.metrics.sha2_path(path);
    }
}
