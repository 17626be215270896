//! Authentication math for `mysql_native_password` (here) and
//! `caching_sha2_password` ([`caching_sha2`]), as pure functions.
//!
//! MySQL stores `H2 = SHA1(SHA1(password))` (shown as `*` + 40 hex digits in
//! `mysql.user`). A client answers the server's 20-byte nonce `s` with
//! `T = SHA1(password) XOR SHA1(s ‖ H2)`. Switchyard checks `T` against the
//! stored `H2` and, on success, keeps `H1 = SHA1(password)`, which is all it
//! needs to log in to a backend with that backend's own nonce. The password
//! itself is never seen, stored or logged.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

pub mod caching_sha2;

/// Length of a nonce (salt) and of a SHA1 digest.
pub const NONCE_LEN: usize = 20;

/// A stored password verifier, `SHA1(SHA1(password))`, or the empty
/// password.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// The account has no password.
    Empty,
    /// `SHA1(SHA1(password))`.
    Native([u8; 20]),
}

/// Why a stored hash could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "password hash must be '*' followed by 40 hex digits (as in mysql.user), or empty for no password"
)]
pub struct BadPasswordHash;

impl FromStr for PasswordHash {
    type Err = BadPasswordHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Self::Empty);
        }
        let hex_part = s.strip_prefix('*').ok_or(BadPasswordHash)?;
        let mut h = [0u8; 20];
        hex::decode_to_slice(hex_part, &mut h).map_err(|_| BadPasswordHash)?;
        Ok(Self::Native(h))
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => Ok(()),
            Self::Native(h) => write!(f, "*{}", hex::encode_upper(h)),
        }
    }
}

/// Says whether there is a password, never which: a verifier is enough
/// to guess the password offline.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("PasswordHash(empty)"),
            Self::Native(_) => f.write_str("PasswordHash(..)"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for PasswordHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl PasswordHash {
    /// The verifier MySQL's `PASSWORD()` computes for `password`.
    pub fn of_password(password: &[u8]) -> Self {
        if password.is_empty() {
            return Self::Empty;
        }
        let mut h1: [u8; 20] = Sha1::digest(password).into();
        let h2 = Sha1::digest(h1).into();
        h1.zeroize();
        Self::Native(h2)
    }
}

/// `SHA1(password)`, recovered from a client's scramble; what Switchyard
/// needs to log in to backends. Zeroed on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Sha1Password(Option<[u8; 20]>);

impl Drop for Sha1Password {
    fn drop(&mut self) {
        if let Some(h) = self.0.as_mut() {
            h.zeroize();
        }
    }
}

impl fmt::Debug for Sha1Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha1Password(..)")
    }
}

impl Sha1Password {
    /// From a known password (tests, tools).
    pub fn of_password(password: &[u8]) -> Self {
        if password.is_empty() {
            Self(None)
        } else {
            Self(Some(Sha1::digest(password).into()))
        }
    }

    /// From `SHA1(password)` as 40 hex digits (the monitor account's
    /// configured secret); `None` if it is not that.
    pub fn from_hex(hex_digits: &str) -> Option<Self> {
        let mut h = [0u8; 20];
        hex::decode_to_slice(hex_digits, &mut h).ok()?;
        Some(Self(Some(h)))
    }

    /// `SHA1(password)` as 40 hex digits, for `hash-password --sha1`.
    pub fn to_hex(&self) -> String {
        self.0.map(hex::encode_upper).unwrap_or_default()
    }

    /// Whether this stands for the empty password.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether this is the password `stored` verifies (constant time).
    pub fn matches(&self, stored: &PasswordHash) -> bool {
        match (&self.0, stored) {
            (None, PasswordHash::Empty) => true,
            (Some(h1), PasswordHash::Native(h2)) => {
                let candidate: [u8; 20] = Sha1::digest(h1).into();
                bool::from(candidate.ct_eq(h2))
            }
            _ => false,
        }
    }

    /// The `mysql_native_password` auth response for `nonce`:
    /// `SHA1(password) XOR SHA1(nonce ‖ SHA1(SHA1(password)))`, or empty for
    /// the empty password.
    pub fn scramble(&self, nonce: &[u8]) -> Vec<u8> {
        let Some(h1) = &self.0 else {
            return Vec::new();
        };
        let h2: [u8; 20] = Sha1::digest(h1).into();
        let mask = nonce_mask(nonce, &h2);
        h1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect()
    }
}

fn nonce_mask(nonce: &[u8], h2: &[u8; 20]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(nonce);
    hasher.update(h2);
    hasher.finalize().into()
}

/// Checks a client's `mysql_native_password` auth response against the
/// stored verifier, in constant time. On success returns `SHA1(password)`.
pub fn verify_native(stored: &PasswordHash, nonce: &[u8], response: &[u8]) -> Option<Sha1Password> {
    match stored {
        PasswordHash::Empty => response.is_empty().then_some(Sha1Password(None)),
        PasswordHash::Native(h2) => {
            if response.len() != 20 {
                return None;
            }
            let mask = nonce_mask(nonce, h2);
            let mut h1 = [0u8; 20];
            for (i, b) in h1.iter_mut().enumerate() {
                *b = response[i] ^ mask[i];
            }
            check_sha1(h1, h2)
        }
    }
}

/// `h1` as the session's `SHA1(password)` if `SHA1(h1)` is the stored
/// `h2` (constant time); zeroed otherwise.
fn check_sha1(mut h1: [u8; 20], h2: &[u8; 20]) -> Option<Sha1Password> {
    let candidate: [u8; 20] = Sha1::digest(h1).into();
    if bool::from(candidate.ct_eq(h2)) {
        Some(Sha1Password(Some(h1)))
    } else {
        h1.zeroize();
        None
    }
}

/// Spends the same work as [`verify_native`] for a user that does not exist,
/// so that timing does not tell which user names are known.
pub fn verify_unknown_user(nonce: &[u8], response: &[u8]) {
    let dummy = PasswordHash::Native([0x5a; 20]);
    let padded: Vec<u8> = response
        .iter()
        .copied()
        .chain(std::iter::repeat(0))
        .take(20)
        .collect();
    let _ = std::hint::black_box(verify_native(&dummy, nonce, &padded));
}

/// A fresh nonce from the operating system's CSPRNG (via the thread-local
/// ChaCha generator it seeds): 20 printable ASCII bytes, never NUL.
pub fn generate_nonce() -> [u8; NONCE_LEN] {
    let mut rng = rand::rng();
    let mut nonce = [0u8; NONCE_LEN];
    for b in &mut nonce {
        *b = rng.random_range(0x21..=0x7e);
    }
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_function_known_answers() {
        // SELECT PASSWORD('masterpass'), PASSWORD('slavepass') on MariaDB.
        assert_eq!(
            PasswordHash::of_password(b"masterpass").to_string(),
            "*9C01670BF00D3764A16EF8B0611F8FC02173FC31"
        );
        assert_eq!(
            PasswordHash::of_password(b"password").to_string(),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
        assert_eq!(PasswordHash::of_password(b""), PasswordHash::Empty);
    }

    #[test]
    fn parses_hashes() {
        let h: PasswordHash = "*2470c0c06dee42fd1618bb99005adca2ec9d1e19".parse().unwrap();
        assert_eq!(h, PasswordHash::of_password(b"password"));
        assert_eq!("".parse::<PasswordHash>(), Ok(PasswordHash::Empty));
        assert!(
            "2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
                .parse::<PasswordHash>()
                .is_err()
        );
        assert!("*2470C0".parse::<PasswordHash>().is_err());
        assert!(
            "*ZZ70C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
                .parse::<PasswordHash>()
                .is_err()
        );
    }

    #[test]
    fn scramble_known_answer() {
        // Known answer computed with Python's hashlib.
        let nonce = b"12345678901234567890";
        let token = Sha1Password::of_password(b"password").scramble(nonce);
        let h1 = Sha1::digest(b"password");
        let h2 = Sha1::digest(h1);
        let mut hasher = Sha1::new();
        hasher.update(nonce);
        hasher.update(h2);
        let mask = hasher.finalize();
        let expected: Vec<u8> = h1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(token, expected);
        assert_eq!(
            hex::encode(&token),
            "1957dce2724282e018f40d905824cb6361f88d41"
        );
    }

    #[test]
    fn verify_recovers_sha1_password_and_rejects_others() {
        let stored = PasswordHash::of_password(b"slavepass");
        let nonce = generate_nonce();
        let client = Sha1Password::of_password(b"slavepass");
        let token = client.scramble(&nonce);
        let recovered = verify_native(&stored, &nonce, &token).expect("valid");
        assert_eq!(recovered, client);
        // The recovered value logs in elsewhere with another nonce.
        let other = generate_nonce();
        assert!(verify_native(&stored, &other, &recovered.scramble(&other)).is_some());
        // Wrong password, wrong nonce, wrong length, empty.
        let wrong = Sha1Password::of_password(b"nope").scramble(&nonce);
        assert!(verify_native(&stored, &nonce, &wrong).is_none());
        assert!(verify_native(&stored, &other, &token).is_none());
        assert!(verify_native(&stored, &nonce, &token[..19]).is_none());
        assert!(verify_native(&stored, &nonce, &[]).is_none());
        // The empty password accepts only an empty response.
        assert!(verify_native(&PasswordHash::Empty, &nonce, &[]).is_some());
        assert!(verify_native(&PasswordHash::Empty, &nonce, &token).is_none());
    }

    #[test]
    fn nonces_are_printable_and_fresh() {
        let a = generate_nonce();
        let b = generate_nonce();
        assert_ne!(a, b);
        assert!(a.iter().all(|&c| (0x21..=0x7e).contains(&c)));
    }
}
