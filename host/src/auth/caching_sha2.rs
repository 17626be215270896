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
//!
//! The RSA block comes from a client that has not authenticated, so its
//! decryption must not leak the key through its timing (the Marvin attack
//! on PKCS#1 and OAEP decryption): it is AWS-LC's, through `aws-lc-rs`,
//! which blinds the private-key operation and checks the padding in
//! constant time. It costs about a millisecond of CPU, so the server runs
//! it off its event loops.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
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
    private: OaepPrivateDecryptingKey,
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
    /// The file holds a private key that cannot serve: not RSA, or not of
    /// 2048 to 8192 bits.
    #[error("{path}: the key is not an RSA key of 2048 to 8192 bits ({why})")]
    Rejected {
        /// The file.
        path: String,
        /// AWS-LC's reason.
        why: String,
    },
    /// Generating or encoding failed.
    #[error("RSA key: {0}")]
    Rsa(String),
}

impl RsaKey {
    /// A fresh key pair ([`RSA_BITS`] bits, from AWS-LC's CSPRNG). Slow
    /// (tens to hundreds of milliseconds): call it off the event loops.
    pub fn generate() -> Result<Self, RsaKeyError> {
        const _: () = assert!(RSA_BITS == 2048);
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| RsaKeyError::Rsa("generating a key pair failed".into()))?;
        Self::from_private(private)
    }

    /// The private key in `path` (PEM: `BEGIN PRIVATE KEY`, as
    /// `openssl genpkey` writes, or `BEGIN RSA PRIVATE KEY`), of 2048 to
    /// 8192 bits.
    pub fn from_pem_file(path: &Path) -> Result<Self, RsaKeyError> {
        let shown = || path.display().to_string();
        let text = Zeroizing::new(std::fs::read(path).map_err(|source| RsaKeyError::Read {
            path: shown(),
            source,
        })?);
        let pkcs8 = match PrivatePkcs8KeyDer::from_pem_slice(&text) {
            Ok(der) => Zeroizing::new(der.secret_pkcs8_der().to_vec()),
            Err(_) => match PrivatePkcs1KeyDer::from_pem_slice(&text) {
                Ok(der) => pkcs8_of_pkcs1(der.secret_pkcs1_der()),
                Err(_) => return Err(RsaKeyError::Parse(shown())),
            },
        };
        let private =
            PrivateDecryptingKey::from_pkcs8(&pkcs8).map_err(|e| RsaKeyError::Rejected {
                path: shown(),
                why: e.to_string(),
            })?;
        Self::from_private(private)
    }

    fn from_private(private: PrivateDecryptingKey) -> Result<Self, RsaKeyError> {
        let spki = private
            .public_key()
            .as_der()
            .map_err(|_| RsaKeyError::Rsa("encoding the public key failed".into()))?;
        let public_pem = pem("PUBLIC KEY", spki.as_ref());
        let private = OaepPrivateDecryptingKey::new(private)
            .map_err(|_| RsaKeyError::Rsa("not an RSA-OAEP key".into()))?;
        Ok(Self {
            private,
            public_pem,
        })
    }

    /// The public key as clients expect it (`BEGIN PUBLIC KEY`, PEM: a
    /// `SubjectPublicKeyInfo` in base64 lines of 64 characters, as OpenSSL
    /// writes it).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Decrypts a client's RSA-OAEP (SHA-1) block and undoes the XOR with
    /// `nonce`: the cleartext password, without its NUL terminator. `None`
    /// for anything that is not such a block. Constant-time (AWS-LC), but
    /// about a millisecond of CPU: call it off the event loops.
    pub fn decrypt_password(&self, block: &[u8], nonce: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if nonce.is_empty() || block.len() != self.private.key_size_bytes() {
            return None;
        }
        let mut plain = Zeroizing::new(vec![0; self.private.min_output_size()]);
        let len = self
            .private
            .decrypt(&OAEP_SHA1_MGF1SHA1, block, &mut plain, None)
            .ok()?
            .len();
        plain.truncate(len);
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

/// PEM of `der` under `label`: base64 in lines of 64 characters, each line
/// ended by LF, as OpenSSL and the `pem-rfc7468` crate write it.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 is ASCII: every chunk is a whole string.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The PKCS#8 `PrivateKeyInfo` that wraps a PKCS#1 `RSAPrivateKey`
/// (version 0, algorithm rsaEncryption with NULL parameters), as
/// `openssl pkcs8 -topk8 -nocrypt` writes it.
fn pkcs8_of_pkcs1(pkcs1: &[u8]) -> Zeroizing<Vec<u8>> {
    /// `INTEGER 0`, then `SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }`.
    const VERSION_AND_ALGORITHM: &[u8] = &[
        0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
        0x01, 0x05, 0x00,
    ];
    let mut key = Zeroizing::new(Vec::with_capacity(pkcs1.len() + 8));
    key.push(0x04); // OCTET STRING
    der_length(&mut key, pkcs1.len());
    key.extend_from_slice(pkcs1);
    let mut out = Zeroizing::new(Vec::with_capacity(key.len() + 32));
    out.push(0x30); // SEQUENCE
    der_length(&mut out, VERSION_AND_ALGORITHM.len() + key.len());
    out.extend_from_slice(VERSION_AND_ALGORITHM);
    out.extend_from_slice(&key);
    out
}

/// Appends a DER length.
fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// What a client without TLS sends in full authentication: `password`
/// (NUL-terminated, XOR `nonce`) encrypted with RSA-OAEP (SHA-1) to the
/// server's public key `pem`. For tests and tools; `None` if `pem` is not
/// an RSA public key.
pub fn encrypt_for_server(pem: &str, password: &[u8], nonce: &[u8]) -> Option<Vec<u8>> {
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).ok()?;
    let key =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(spki.as_ref()).ok()?).ok()?;
    let mut plain = Zeroizing::new(password.to_vec());
    plain.push(0);
    for (i, b) in plain.iter_mut().enumerate() {
        *b ^= nonce[i % nonce.len()];
    }
    let mut block = vec![0; key.ciphertext_size()];
    let len = key
        .encrypt(&OAEP_SHA1_MGF1SHA1, &plain, &mut block, None)
        .ok()?
        .len();
    block.truncate(len);
    Some(block)
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

    /// Runs openssl with `args` in `dir`.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/setup.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    /// Keys as operators make them with openssl load in both PEM forms,
    /// and the public key served is byte for byte what openssl writes for
    /// it (the PEM clients read).
    #[test]
    fn rsa_key_files_as_openssl_writes_them() {
        let dir = std::env::temp_dir().join(format!("sy-rsa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let genpkey = |bits: &str, out: &str| {
            let bits = format!("rsa_keygen_bits:{bits}");
            openssl(
                &dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    &bits,
                    "-out",
                    out,
                ],
            );
        };
        genpkey("2048", "k8.pem");
        openssl(
            &dir,
            &["rsa", "-in", "k8.pem", "-traditional", "-out", "k1.pem"],
        );
        openssl(
            &dir,
            &["pkey", "-in", "k8.pem", "-pubout", "-out", "pub.pem"],
        );
        genpkey("1024", "small.pem");
        let want = std::fs::read_to_string(dir.join("pub.pem")).unwrap();
        for (f, header) in [
            ("k8.pem", "-----BEGIN PRIVATE KEY-----"),
            ("k1.pem", "-----BEGIN RSA PRIVATE KEY-----"),
        ] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(text.starts_with(header), "{f}: {text}");
            let k = RsaKey::from_pem_file(&dir.join(f)).unwrap();
            assert_eq!(k.public_pem(), want, "{f}");
            let block = k.encrypt_password(b"pw", NONCE);
            assert_eq!(
                k.decrypt_password(&block, NONCE)
                    .as_deref()
                    .map(Vec::as_slice),
                Some(&b"pw"[..])
            );
        }
        // openssl reads the public key of a generated key, and writes it
        // back the same.
        let key = RsaKey::generate().unwrap();
        std::fs::write(dir.join("gen.pem"), key.public_pem()).unwrap();
        openssl(
            &dir,
            &["pkey", "-pubin", "-in", "gen.pem", "-out", "gen2.pem"],
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("gen2.pem")).unwrap(),
            key.public_pem()
        );
        std::fs::write(dir.join("bad.pem"), "not a key").unwrap();
        assert!(matches!(
            RsaKey::from_pem_file(&dir.join("bad.pem")),
            Err(RsaKeyError::Parse(_))
        ));
        assert!(matches!(
            RsaKey::from_pem_file(&dir.join("small.pem")),
            Err(RsaKeyError::Rejected { .. })
        ));
        assert!(matches!(
            RsaKey::from_pem_file(&dir.join("missing.pem")),
            Err(RsaKeyError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pkcs8_wrapping_lengths() {
        let mut v = Vec::new();
        der_length(&mut v, 5);
        der_length(&mut v, 200);
        der_length(&mut v, 1218);
        der_length(&mut v, 70_000);
        assert_eq!(v, [5, 0x81, 200, 0x82, 0x04, 0xc2, 0x83, 0x01, 0x11, 0x70]);
    }
}
