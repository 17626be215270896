//! `caching_sha2_password`, the MySQL 8 default and the only password
//! plugin MySQL 9 clients may offer, on Switchyard's side.
//!
//! Switchyard stores `mysql_native_password` verifiers only, and logs in to
//! backends with `SHA1(password)`. A `caching_sha2_password` client proves
//! its password in one of two ways:
//! - **fast path**: `XOR(SHA256(pw), SHA256(SHA256(SHA256(pw)) ‖ nonce))`.
//!   Only a holder of `SHA256(SHA256(pw))` can check it, and it yields
//!   `SHA256(pw)`, not what a backend needs. So, like MySQL's own cache, the
//!   fast path works for a user only after a full authentication in this
//!   process has put `SHA256(SHA256(pw))` and `SHA1(pw)` into the [`Cache`];
//! - **full authentication**: the client sends its password, in cleartext
//!   inside TLS, or without TLS encrypted with Switchyard's RSA public key
//!   (RSA-OAEP, the password XOR the nonce). Switchyard checks it against
//!   the stored double-SHA1 verifier, keeps `SHA1(pw)` (and fills the
//!   cache), and zeroes the cleartext at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::{PasswordHash, Sha1Password};

/// The plugin's name on the wire.
pub const PLUGIN: &str = "caching_sha2_password";
/// First byte of an AuthMoreData packet.
pub const MORE_DATA: u8 = 0x01;
/// AuthMoreData status: the fast path succeeded; OK or ERR follows.
pub const FAST_AUTH_SUCCESS: u8 = 0x03;
/// AuthMoreData status: send the password (TLS) or ask for the key.
pub const PERFORM_FULL_AUTHENTICATION: u8 = 0x04;
/// The client's request for the server's RSA public key.
pub const REQUEST_PUBLIC_KEY: u8 = 0x02;
/// Length of a fast-path scramble (a SHA-256 digest).
pub const SCRAMBLE_LEN: usize = 32;
/// Users whose fast-path verifiers are kept.
pub const CACHE_CAPACITY: usize = 16 * 1024;
/// Size of a generated RSA key.
pub const RSA_BITS: usize = 2048;
/// Longest cleartext password accepted (MySQL's limit is lower).
pub const MAX_PASSWORD_LEN: usize = 1024;

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What a client's fast-path scramble is, for `password` and `nonce` (the
/// client's side: tests and tools).
pub fn scramble(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let mut h1 = sha256(&[password]);
    let h2 = sha256(&[&h1]);
    let mask = sha256(&[&h2, nonce]);
    let out = h1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
    h1.zeroize();
    out
}

/// Checks a cleartext password against the stored verifier in constant
/// time; on success, `SHA1(password)`.
pub fn verify_cleartext(stored: &PasswordHash, password: &[u8]) -> Option<Sha1Password> {
    match stored {
        PasswordHash::Empty => password.is_empty().then(|| Sha1Password(None)),
        PasswordHash::Native(h2) => {
            if password.is_empty() {
                return None;
            }
            super::check_sha1(Sha1::digest(password).into(), h2)
        }
    }
}

/// A user's fast-path verifier and what the backends need.
struct Entry {
    /// `SHA256(SHA256(password))`.
    verifier: [u8; 32],
    /// `SHA1(password)`.
    sha1: Sha1Password,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.verifier.zeroize();
    }
}

/// Fast-path verifiers of the users that completed a full authentication
/// since the process started (MySQL's server keeps the same cache). An
/// entry is used only while the user's stored verifier still matches it.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("users", &self.len()).finish()
    }
}

impl Cache {
    /// Users cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no user is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `user`'s verified cleartext `password`.
    pub fn remember(&self, user: &str, password: &[u8], sha1: &Sha1Password) {
        let mut h1 = sha256(&[password]);
        let entry = Entry {
            verifier: sha256(&[&h1]),
            sha1: sha1.clone(),
        };
        h1.zeroize();
        let mut entries = self.lock();
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(user) {
            // Full: drop an arbitrary entry; that user's next login takes
            // the full path again.
            if let Some(k) = entries.keys().next().cloned() {
                entries.remove(&k);
            }
        }
        entries.insert(user.to_owned(), entry);
    }

    /// Forgets `user` (its stored verifier changed).
    pub fn forget(&self, user: &str) {
        self.lock().remove(user);
    }

    /// The fast path: checks `scramble` for `nonce` against `user`'s cached
    /// verifier, in constant time. `None` when it does not match or the
    /// user is not cached (then the full path runs).
    pub fn fast_verify(
        &self,
        user: &str,
        stored: &PasswordHash,
        nonce: &[u8],
        scramble: &[u8],
    ) -> Option<Sha1Password> {
        if scramble.len() != SCRAMBLE_LEN {
            return None;
        }
        let mut entries = self.lock();
        let entry = entries.get(user)?;
        if !entry.sha1.matches(stored) {
            // The account's password changed since: the entry is stale.
            entries.remove(user);
            return None;
        }
        let mask = sha256(&[&entry.verifier, nonce]);
        let mut candidate = [0u8; 32];
        for (i, c) in candidate.iter_mut().enumerate() {
            *c = scramble[i] ^ mask[i];
        }
        let ok = bool::from(sha256(&[&candidate]).ct_eq(&entry.verifier));
        candidate.zeroize();
        ok.then(|| entry.sha1.clone())
    }
}

/// Switchyard's RSA key pair for full authentication without TLS.
pub struct RsaKey {
    private: RsaPrivateKey,
    public_pem: String,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaKey(..)")
    }
}

/// Why an RSA key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RsaKeyError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an RSA private key in PEM (PKCS#8 or PKCS#1).
    #[error("{0} is not an RSA private key in PEM (PKCS#8 or PKCS#1)")]
    Parse(String),
    /// Generating or encoding failed.
    #[error("RSA key: {0}")]
    Rsa(String),
}

impl RsaKey {
    /// A fresh key pair ([`RSA_BITS`] bits, from the OS's CSPRNG). Slow
    /// (tens to hundreds of milliseconds): call it off the event loops.
    pub fn generate() -> Result<Self, RsaKeyError> {
        let private = RsaPrivateKey::new(&mut rand_core::OsRng, RSA_BITS)
            .map_err(|e| RsaKeyError::Rsa(e.to_string()))?;
        Self::from_private(private)
    }

    /// The private key in `path` (PEM: `BEGIN PRIVATE KEY`, as
    /// `openssl genpkey` writes, or `BEGIN RSA PRIVATE KEY`).
    pub fn from_pem_file(path: &Path) -> Result<Self, RsaKeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| RsaKeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        let private = RsaPrivateKey::from_pkcs8_pem(&text)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&text))
            .map_err(|_| RsaKeyError::Parse(path.display().to_string()))?;
        Self::from_private(private)
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, RsaKeyError> {
        let public_pem = RsaPublicKey::from(&private)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| RsaKeyError::Rsa(e.to_string()))?;
        Ok(Self {
            private,
            public_pem,
        })
    }

    /// The public key as clients expect it (`BEGIN PUBLIC KEY`, PEM).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Decrypts a client's RSA-OAEP (SHA-1) block and undoes the XOR with
    /// `nonce`: the cleartext password, without its NUL terminator. `None`
    /// for anything that is not such a block. Blinded, so that its timing
    /// does not depend on the key.
    pub fn decrypt_password(&self, block: &[u8], nonce: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if nonce.is_empty() || block.len() > 1024 {
            return None;
        }
        let mut plain = Zeroizing::new(
            self.private
                .decrypt_blinded(&mut rand_core::OsRng, Oaep::new::<Sha1>(), block)
                .ok()?,
        );
        for (i, b) in plain.iter_mut().enumerate() {
            *b ^= nonce[i % nonce.len()];
        }
        strip_nul(&mut plain);
        Some(plain)
    }

    /// Encrypts `password` for `nonce` as a client does (tests, tools).
    pub fn encrypt_password(&self, password: &[u8], nonce: &[u8]) -> Vec<u8> {
        encrypt_for_server(&self.public_pem, password, nonce).unwrap_or_default()
    }
}

/// What a client without TLS sends in full authentication: `password`
/// (NUL-terminated, XOR `nonce`) encrypted with RSA-OAEP (SHA-1) to the
/// server's public key `pem`. For tests and tools; `None` if `pem` is not
/// an RSA public key.
pub fn encrypt_for_server(pem: &str, password: &[u8], nonce: &[u8]) -> Option<Vec<u8>> {
    use rsa::pkcs8::DecodePublicKey;
    let key = RsaPublicKey::from_public_key_pem(pem).ok()?;
    let mut plain = Zeroizing::new(password.to_vec());
    plain.push(0);
    for (i, b) in plain.iter_mut().enumerate() {
        *b ^= nonce[i % nonce.len()];
    }
    key.encrypt(&mut rand_core::OsRng, Oaep::new::<Sha1>(), &plain)
        .ok()
}

/// Drops the NUL that terminates a password sent in full authentication.
pub fn strip_nul(password: &mut Zeroizing<Vec<u8>>) {
    if password.last() == Some(&0) {
        password.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &[u8; 20] = b"abcdefghij0123456789";

    #[test]
    fn scramble_known_answer() {
        // Computed with Python's hashlib as mysql-connector-python does:
        // XOR(SHA256(pw), SHA256(SHA256(SHA256(pw)) + nonce)).
        let s = scramble(b"secret", NONCE);
        let h1 = Sha256::digest(b"secret");
        let h2 = Sha256::digest(h1);
        let mask = Sha256::digest([h2.as_slice(), NONCE].concat());
        let expected: Vec<u8> = h1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(s, expected);
        assert_eq!(s.len(), SCRAMBLE_LEN);
        assert!(scramble(b"", NONCE).is_empty());
    }

    #[test]
    fn cleartext_is_checked_against_the_native_verifier() {
        let stored = PasswordHash::of_password(b"pw1");
        let got = verify_cleartext(&stored, b"pw1").expect("right password");
        assert_eq!(got, Sha1Password::of_password(b"pw1"));
        assert!(verify_cleartext(&stored, b"pw2").is_none());
        assert!(verify_cleartext(&stored, b"").is_none());
        assert!(verify_cleartext(&PasswordHash::Empty, b"").is_some());
        assert!(verify_cleartext(&PasswordHash::Empty, b"x").is_none());
    }

    #[test]
    fn fast_path_needs_a_full_authentication_first() {
        let cache = Cache::default();
        let stored = PasswordHash::of_password(b"pw1");
        let s = scramble(b"pw1", NONCE);
        assert!(cache.fast_verify("u", &stored, NONCE, &s).is_none());
        let sha1 = verify_cleartext(&stored, b"pw1").unwrap();
        cache.remember("u", b"pw1", &sha1);
        assert_eq!(
            cache.fast_verify("u", &stored, NONCE, &s),
            Some(Sha1Password::of_password(b"pw1"))
        );
        // Wrong password, other nonce, other user, bad lengths.
        assert!(
            cache
                .fast_verify("u", &stored, NONCE, &scramble(b"pw2", NONCE))
                .is_none()
        );
        assert!(
            cache
                .fast_verify("u", &stored, b"01234567890123456789", &s)
                .is_none()
        );
        assert!(cache.fast_verify("v", &stored, NONCE, &s).is_none());
        assert!(cache.fast_verify("u", &stored, NONCE, &s[..31]).is_none());
        assert!(cache.fast_verify("u", &stored, NONCE, &[]).is_none());
        // A changed password makes the entry stale, and it goes.
        let changed = PasswordHash::of_password(b"pw3");
        assert!(cache.fast_verify("u", &changed, NONCE, &s).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let cache = Cache::default();
        let sha1 = Sha1Password::of_password(b"p");
        for i in 0..CACHE_CAPACITY + 10 {
            cache.remember(&format!("u{i}"), b"p", &sha1);
        }
        assert_eq!(cache.len(), CACHE_CAPACITY);
    }

    #[test]
    fn rsa_round_trip_and_garbage() {
        let key = RsaKey::generate().expect("generate");
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        let block = key.encrypt_password(b"hunter2", NONCE);
        assert_eq!(
            key.decrypt_password(&block, NONCE)
                .as_deref()
                .map(Vec::as_slice),
            Some(&b"hunter2"[..])
        );
        // Another nonce gives another (wrong) password; garbage gives none.
        assert_ne!(
            key.decrypt_password(&block, b"zzzzzzzzzzzzzzzzzzzz")
                .as_deref()
                .map(Vec::as_slice),
            Some(&b"hunter2"[..])
        );
        assert!(key.decrypt_password(b"hunter2\0", NONCE).is_none());
        assert!(key.decrypt_password(&[0u8; 256], NONCE).is_none());
        assert!(key.decrypt_password(&[], NONCE).is_none());
        assert!(key.decrypt_password(&vec![1u8; 5000], NONCE).is_none());
    }

    #[test]
    fn rsa_key_files() {
        let dir = std::env::temp_dir().join(format!("sy-rsa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = RsaKey::generate().unwrap();
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        let pkcs8 = key.private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let pkcs1 = key.private.to_pkcs1_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.join("k8.pem"), pkcs8.as_bytes()).unwrap();
        std::fs::write(dir.join("k1.pem"), pkcs1.as_bytes()).unwrap();
        std::fs::write(dir.join("bad.pem"), "not a key").unwrap();
        for f in ["k8.pem", "k1.pem"] {
            let k = RsaKey::from_pem_file(&dir.join(f)).unwrap();
            assert_eq!(k.public_pem(), key.public_pem());
        }
        assert!(matches!(
            RsaKey::from_pem_file(&dir.join("bad.pem")),
            Err(RsaKeyError::Parse(_))
        ));
        assert!(matches!(
            RsaKey::from_pem_file(&dir.join("missing.pem")),
            Err(RsaKeyError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
