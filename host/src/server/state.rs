//! The configuration in force and what is built from it: accounts, pools,
//! the policy, the monitor account, the admin token. A [`State`] is
//! immutable; a reload builds a new one and swaps it in atomically. Each
//! login reads the state once, at its start, so it sees one consistent
//! configuration; established sessions keep the backend they have.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::admin::token_digest;
use crate::auth::PasswordHash;
use crate::auth::caching_sha2::RsaKey;
use crate::config::{Config, PolicyConfig};
use crate::policy::{Policy, sha256_hex};
use crate::pool::health::Monitor;
use crate::pool::{Pools, Registry};
use crate::secret::Secret;

/// What a login needs of an account of the file.
#[derive(Debug, Clone)]
pub struct Account {
    /// The stored verifier.
    pub hash: PasswordHash,
    /// The plugin it must authenticate with, if the file says.
    pub plugin: Option<crate::config::AuthPlugin>,
    /// It must log in over TLS.
    pub require_tls: bool,
    /// Its own session limit, if the file sets one.
    pub max_connections: Option<u32>,
}

impl Account {
    fn of(u: &crate::config::UserConfig) -> Self {
        Self {
            hash: u.password_hash.clone(),
            plugin: u.plugin,
            require_tls: u.require_tls,
            max_connections: u.max_connections,
        }
    }
}

/// Everything built from one configuration.
#[derive(Debug)]
pub struct State {
    /// The configuration.
    pub config: Config,
    /// The file's accounts by name, indexed once per state: a login looks
    /// its user up once.
    pub users: Arc<HashMap<String, Account>>,
    /// Backend pools.
    pub pools: Arc<Pools>,
    /// The routing policy of `listen`.
    pub policy: Arc<Policy>,
    /// The `[policies.<name>]` of other listeners.
    pub named: BTreeMap<String, Arc<Policy>>,
    /// The monitor account, if configured.
    pub monitor: Option<Monitor>,
    /// SHA-256 of the admin bearer token, if one is configured.
    pub admin_token: Option<Secret<[u8; 32]>>,
    /// The TLS acceptor for clients, if `[tls]` is configured.
    pub tls: Option<Tls>,
    /// `[auth] rsa_private_key`, if configured (otherwise a generated key
    /// is used: [`super::Shared::rsa_key`]).
    pub rsa_key: Option<Arc<RsaKey>>,
}

/// A TLS acceptor (its configuration holds the private key: not printed).
#[derive(Clone)]
pub struct Tls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl State {
    /// Builds the state for `config`. Blocking (reads files, may compile
    /// the policy): call it off the event loops. With `previous`, backends
    /// are the same objects (session counts and health carry over) and a
    /// policy module that has not changed is not compiled again.
    pub fn build(
        config: Config,
        registry: &Registry,
        previous: Option<&State>,
    ) -> anyhow::Result<Self> {
        let users = config
            .users
            .accounts()
            .iter()
            .map(|u| (u.name.get_ref().clone(), Account::of(u)))
            .collect();
        let mut pools = Pools::from_config(&config, registry);
        pools.attach_tls(&config)?;
        let pools = Arc::new(pools);
        let policy = build_policy(&config.policy, &pools, previous.map(|p| &p.policy))?;
        let mut named = BTreeMap::new();
        for (name, pc) in &config.policies {
            let before = previous.and_then(|p| p.named.get(name));
            named.insert(name.clone(), Arc::new(build_policy(pc, &pools, before)?));
        }
        let monitor = config
            .monitor
            .as_ref()
            .map(|m| Monitor::from_config(m).context("monitor password_sha1"))
            .transpose()?;
        let admin_token = match &config.admin {
            Some(a) => match (&a.token, &a.token_file) {
                (Some(t), _) => Some(Secret::new(token_digest(t.trim().as_bytes()))),
                (None, Some(path)) => Some(Secret::new(read_token(path)?)),
                (None, None) => None,
            },
            None => None,
        };
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?.map(Tls);
        let rsa_key = config
            .auth
            .rsa_private_key
            .as_ref()
            .map(|p| rsa_key(p.get_ref()))
            .transpose()?;
        Ok(Self {
            tls,
            rsa_key,
            config,
            users: Arc::new(users),
            pools,
            policy: Arc::new(policy),
            named,
            monitor,
            admin_token,
        })
    }

    /// The policy called `name` (`None`: the one of `listen`).
    pub fn policy_named(&self, name: Option<&str>) -> &Arc<Policy> {
        name.and_then(|n| self.named.get(n)).unwrap_or(&self.policy)
    }

    /// This state with policy `name` (`None`: the one of `listen`)
    /// replaced (a swap).
    pub fn with_policy(&self, name: Option<&str>, policy: Policy) -> Self {
        let mut named = self.named.clone();
        let mut main = Arc::clone(&self.policy);
        match name {
            Some(n) => {
                named.insert(n.to_owned(), Arc::new(policy));
            }
            None => main = Arc::new(policy),
        }
        Self {
            config: self.config.clone(),
            users: Arc::clone(&self.users),
            pools: Arc::clone(&self.pools),
            policy: main,
            named,
            monitor: self.monitor.clone(),
            admin_token: self.admin_token.clone(),
            tls: self.tls.clone(),
            rsa_key: self.rsa_key.clone(),
        }
    }

    /// Settings a reload cannot change while running, that differ between
    /// this state and `next`.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let c = &self.config;
        if c.listen_addrs() != next.listen_addrs() {
            changed.push("listen / listeners");
        }
        if c.threads != next.threads {
            changed.push("threads");
        }
        if c.max_connections != next.max_connections {
            changed.push("max_connections");
        }
        let admin = |c: &Config| c.admin.as_ref().map(|a| *a.listen.get_ref());
        if admin(c) != admin(next) {
            changed.push("admin.listen");
        }
        // The store's URL is a secret: compared, never printed.
        let fleet = |c: &Config| {
            c.fleet.as_ref().map(|f| {
                (
                    f.store.get_ref().expose().clone(),
                    f.instance.clone(),
                    f.lease_ms,
                    f.timeout_ms,
                    f.key_prefix.clone(),
                )
            })
        };
        if fleet(c) != fleet(next) {
            changed.push("fleet");
        }
        changed
    }
}

/// The policy `config` describes: the previous one rebound to the new
/// settings and pools when its module has not changed (and its limits
/// neither), else loaded, and in both cases self-tested.
fn build_policy(
    config: &PolicyConfig,
    pools: &Arc<Pools>,
    previous: Option<&Arc<Policy>>,
) -> anyhow::Result<Policy> {
    let module = config.module.get_ref();
    let bytes =
        std::fs::read(module).with_context(|| format!("policy module {}", module.display()))?;
    let policy = match previous {
        Some(p) if p.hash() == sha256_hex(&bytes) && p.has_limits_of(config) => {
            p.rebind(config, Arc::clone(pools))
        }
        _ => load_policy(&bytes, module, config, pools)?,
    };
    policy
        .self_test(&config.selftest)
        .map_err(|e| anyhow::anyhow!("policy {}: {e}", policy.name()))?;
    Ok(policy)
}

/// Compiles (or finds compiled) the policy `bytes` for `config`, and logs
/// where it came from and what it took.
pub fn load_policy(
    bytes: &[u8],
    name: &Path,
    config: &PolicyConfig,
    pools: &Arc<Pools>,
) -> anyhow::Result<Policy> {
    let started = std::time::Instant::now();
    let policy = Policy::from_bytes(bytes, name, config, Arc::clone(pools))?;
    tracing::info!(
        policy = policy.name(),
        sha256 = policy.hash(),
        code = policy.origin().as_str(),
        load_ms = started.elapsed().as_millis() as u64,
        instantiate_us = policy.instantiation_time().as_micros() as u64,
        instances = if policy.reuses_instances() {
            "reuse"
        } else {
            "fresh"
        },
        "policy loaded"
    );
    Ok(policy)
}

/// A TLS acceptor from the configured certificate chain and key.
fn tls_acceptor(config: &crate::config::TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = config.cert.get_ref();
    let key_path = config.key.get_ref();
    crate::secret::check_file(key_path, "tls key").map_err(anyhow::Error::msg)?;
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("tls cert {}: {e}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls cert {}: no certificate",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| anyhow::anyhow!("tls key {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls cert and key")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The RSA key of `[auth] rsa_private_key`.
fn rsa_key(path: &Path) -> anyhow::Result<Arc<RsaKey>> {
    crate::secret::check_file(path, "[auth] rsa_private_key").map_err(anyhow::Error::msg)?;
    RsaKey::from_pem_file(path)
        .map(Arc::new)
        .context("[auth] rsa_private_key")
}

fn read_token(path: &Path) -> anyhow::Result<[u8; 32]> {
    crate::secret::check_file(path, "admin token_file").map_err(anyhow::Error::msg)?;
    let mut text =
        std::fs::read(path).with_context(|| format!("admin token_file {}", path.display()))?;
    let digest = token_digest(text.trim_ascii());
    zeroize::Zeroize::zeroize(&mut text);
    anyhow::ensure!(
        digest != token_digest(b""),
        "admin token_file {} is empty",
        path.display()
    );
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn settings_a_reload_cannot_change_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let shared = crate::server::testing::shared(dir.path());
        let state = shared.state();
        let with = |extra: &str| {
            let text = crate::server::testing::config_text(dir.path()).replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:0\"\n{extra}"),
            );
            Config::parse(&text, Path::new("gate.toml")).unwrap()
        };
        let same = with("");
        assert!(state.restart_only_changes(&same).is_empty());
        let fleet = with("[fleet]\nstore = \"redis://127.0.0.1:1\"\n");
        assert_eq!(state.restart_only_changes(&fleet), ["fleet"]);
        let threads = with("threads = 7");
        assert_eq!(state.restart_only_changes(&threads), ["threads"]);
    }

    #[test]
    fn a_token_file_anyone_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&path).unwrap(), token_digest(b"s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&path).unwrap_err().to_string();
        assert!(e.contains("admin token_file") && e.contains("0644"), "{e}");
    }

    #[test]
    fn private_keys_anyone_can_read_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        // The mode is checked before the content is parsed.
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let tls: crate::config::TlsConfig = toml::from_str(&format!(
            "cert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ))
        .unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(0o644);
        let e = format!("{:#}", rsa_key(&key).unwrap_err());
        assert!(e.contains("rsa_private_key") && e.contains("0644"), "{e}");
        let e = format!("{:#}", tls_acceptor(&tls).err().unwrap());
        assert!(e.contains("tls key") && e.contains("0644"), "{e}");
        // Readable by its owner only: on to the content, which is bad.
        chmod(0o600);
        let e = format!("{:#}", rsa_key(&key).unwrap_err());
        assert!(!e.contains("0644") && e.contains("rsa_private_key"), "{e}");
        let e = format!("{:#}", tls_acceptor(&tls).err().unwrap());
        assert!(!e.contains("0644") && e.contains("tls cert"), "{e}");
    }
}
