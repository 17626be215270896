//! RSA password decryption (`RsaKey::decrypt_password`, what a client
//! without TLS sends in caching_sha2_password's full authentication):
//! arbitrary blocks and nonces never panic and yield at most a key's worth
//! of bytes; a password encrypted as a client does decrypts to itself, and
//! a tampered block does not panic.
//!
//! The key is a fresh small one (`BITS`) loaded through
//! `RsaKey::from_pem_file`: the same code as the proxy's 2048-bit key at a
//! cost per decryption that allows millions of runs; passwords are sealed
//! with the `rsa` crate's OAEP as a client does. Should the implementation
//! refuse keys that small, the target falls back to `RsaKey::generate()`
//! and `RsaKey::encrypt_password`.
//!
//! Input: a mode byte (bit 0: round trip, bit 1: tamper), a nonce length
//! byte, the nonce, then the block (or the password, at most
//! `MAX_PASSWORD` bytes).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::{Oaep, RsaPublicKey};
use switchyard::auth::caching_sha2::RsaKey;

/// The key's size: the smallest whose OAEP (SHA-1) block holds a password
/// of a few bytes.
const BITS: usize = 384;
/// The longest password such a block holds, with its NUL.
const MAX_PASSWORD: usize = BITS / 8 - 2 * 20 - 2 - 1;

/// The proxy's key, and its public half when the target made it.
static KEY: LazyLock<(RsaKey, Option<RsaPublicKey>)> = LazyLock::new(|| {
    let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, BITS).expect("a small key");
    let pem = private.to_pkcs8_pem(LineEnding::LF).expect("PEM");
    let path = std::env::temp_dir().join(format!("switchyard-fuzz-{}.pem", std::process::id()));
    std::fs::write(&path, pem.as_bytes()).expect("writing the key");
    let key = RsaKey::from_pem_file(&path);
    let _ = std::fs::remove_file(&path);
    match key {
        Ok(key) => (key, Some(private.to_public_key())),
        Err(_) => (RsaKey::generate().expect("an RSA key"), None),
    }
});

/// `password` sealed as a client does: NUL-terminated, XOR `nonce`, OAEP.
fn seal(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    let (key, public) = &*KEY;
    let Some(public) = public else {
        return key.encrypt_password(password, nonce);
    };
    let plain: Vec<u8> = password
        .iter()
        .chain([&0])
        .zip(nonce.iter().cycle())
        .map(|(p, n)| p ^ n)
        .collect();
    public
        .encrypt(&mut rand_core::OsRng, Oaep::new::<sha1::Sha1>(), &plain)
        .expect("a password that fits")
}

fuzz_target!(|data: &[u8]| {
    let [mode, nonce_len, rest @ ..] = data else {
        return;
    };
    let (nonce, block) = rest.split_at(usize::from(*nonce_len).min(rest.len()));
    let key = &KEY.0;
    if mode & 1 == 0 {
        let plain = key.decrypt_password(block, nonce);
        if nonce.is_empty() {
            assert!(plain.is_none());
        }
        if let Some(p) = plain {
            assert!(p.len() < block.len());
        }
        return;
    }
    let nonce = if nonce.is_empty() { &[0x5a][..] } else { nonce };
    let password = &block[..block.len().min(MAX_PASSWORD)];
    let mut sealed = seal(password, nonce);
    let plain = key
        .decrypt_password(&sealed, nonce)
        .expect("a sealed password decrypts");
    assert_eq!(&plain[..], password);
    if mode & 2 != 0 {
        let at = usize::from(*nonce_len) % sealed.len();
        sealed[at] ^= mode | 1;
        let _ = key.decrypt_password(&sealed, nonce);
    }
});
