//! The exchange on bytes: what it sends, in which sequence, and its
//! verdicts, with no client and no server.

use super::*;
use crate::auth::caching_sha2::{FAST_AUTH_SUCCESS, PERFORM_FULL_AUTHENTICATION};

const NONCE: [u8; auth::NONCE_LEN] = *b"0123456789abcdefghij";

fn attempt<'a>(plugin: Option<&'a str>, data: Vec<u8>, can_switch: bool) -> Attempt<'a> {
    Attempt {
        user: "alice",
        client_plugin: plugin,
        data,
        can_switch,
        nonce: &NONCE,
        seq: 2,
    }
}

fn native_token(password: &str) -> Vec<u8> {
    Sha1Password::of_password(password.as_bytes()).scramble(&NONCE)
}

fn done(action: Action) -> Verdict {
    match action {
        Action::Done(v) => v,
        _ => panic!("expected the verdict"),
    }
}

fn sent(action: Action) -> (u8, Vec<u8>, bool) {
    match action {
        Action::Send {
            seq,
            payload,
            reply,
        } => (seq, payload, reply),
        _ => panic!("expected a packet to send"),
    }
}

fn packet(bytes: &[u8]) -> Input {
    Input::Packet(Zeroizing::new(bytes.to_vec()))
}

#[test]
fn native_right_wrong_and_unknown_in_one_step() {
    let stored = PasswordHash::of_password(b"secret");
    let cache = Cache::default();
    let account = (Some(&stored), AuthPlugin::Native);
    let run = |data: Vec<u8>, account| {
        let mut x = Exchange::new(attempt(None, data, false), account, &cache, false);
        done(x.step(Input::Start).unwrap())
    };
    let right = run(native_token("secret"), account);
    assert!(right.password.is_some() && right.seq == 2 && right.used_password);
    assert!(run(native_token("wrong"), account).password.is_none());
    let unknown = run(native_token("secret"), (None, AuthPlugin::Native));
    assert!(unknown.password.is_none() && unknown.sha2_path.is_none());
    let empty = run(Vec::new(), account);
    assert!(empty.password.is_none() && !empty.used_password);
}

#[test]
fn a_client_on_another_plugin_is_switched_or_refused() {
    let stored = PasswordHash::of_password(b"secret");
    let cache = Cache::default();
    let account = (Some(&stored), AuthPlugin::Native);
    // Started with caching_sha2_password: switched, and the answer (#3)
    // verified; the verdict's packet is #4.
    let mut x = Exchange::new(
        attempt(Some("caching_sha2_password"), vec![1; 32], true),
        account,
        &cache,
        false,
    );
    let (seq, payload, reply) = sent(x.step(Input::Start).unwrap());
    assert_eq!((seq, reply), (2, true));
    assert_eq!(payload[0], 0xFE);
    assert!(payload.ends_with(&[&NONCE[..], &[0]].concat()) || payload.ends_with(&NONCE));
    let v = done(x.step(packet(&native_token("secret"))).unwrap());
    assert!(v.password.is_some() && v.seq == 4);
    // A client that cannot switch: ERR 1251 at its next packet.
    let mut x = Exchange::new(
        attempt(Some("caching_sha2_password"), vec![1; 32], false),
        account,
        &cache,
        false,
    );
    match x.step(Input::Start) {
        Err(LoginError::Deny { err, seq, .. }) => assert_eq!((err.code, seq), (1251, 2)),
        _ => panic!("expected ERR 1251"),
    }
}

#[test]
fn caching_sha2_full_over_tls_then_the_fast_path() {
    let stored = PasswordHash::of_password(b"secret");
    let cache = Cache::default();
    let account = (Some(&stored), AuthPlugin::CachingSha2);
    let scramble = caching_sha2::scramble(b"secret", &NONCE);
    let sha2 = Some("caching_sha2_password");
    // Cold cache: full authentication; over TLS the password comes as is.
    let mut x = Exchange::new(
        attempt(sha2, scramble.clone(), false),
        account,
        &cache,
        true,
    );
    let (seq, payload, reply) = sent(x.step(Input::Start).unwrap());
    assert_eq!(
        (seq, payload, reply),
        (2, vec![MORE_DATA, PERFORM_FULL_AUTHENTICATION], true)
    );
    let v = done(x.step(packet(b"secret\0")).unwrap());
    assert!(v.password.is_some() && v.seq == 4);
    assert!(matches!(v.sha2_path, Some(Sha2Path::FullTls)));
    // Now cached: "fast auth success", then the OK as #3.
    let mut x = Exchange::new(attempt(sha2, scramble, false), account, &cache, false);
    let (seq, payload, reply) = sent(x.step(Input::Start).unwrap());
    assert_eq!(
        (seq, payload, reply),
        (2, vec![MORE_DATA, FAST_AUTH_SUCCESS], false)
    );
    let v = done(x.step(Input::Sent).unwrap());
    assert!(v.password.is_some() && v.seq == 3);
    assert!(matches!(v.sha2_path, Some(Sha2Path::Fast)));
    // A wrong scramble misses the cache and goes the full way.
    let wrong = caching_sha2::scramble(b"wrong", &NONCE);
    let mut x = Exchange::new(attempt(sha2, wrong, false), account, &cache, true);
    let (_, payload, _) = sent(x.step(Input::Start).unwrap());
    assert_eq!(payload, vec![MORE_DATA, PERFORM_FULL_AUTHENTICATION]);
    assert!(done(x.step(packet(b"wrong\0")).unwrap()).password.is_none());
}

#[test]
fn caching_sha2_over_rsa_asks_for_the_key_and_the_decryption() {
    let stored = PasswordHash::of_password(b"secret");
    let cache = Cache::default();
    let account = (Some(&stored), AuthPlugin::CachingSha2);
    let key = Arc::new(RsaKey::generate().unwrap());
    let sha2 = Some("caching_sha2_password");
    let scramble = caching_sha2::scramble(b"secret", &NONCE);
    let mut x = Exchange::new(attempt(sha2, scramble, false), account, &cache, false);
    sent(x.step(Input::Start).unwrap());
    // The client asks for the public key (#3): the exchange needs the key,
    // sends it (#4), gets the block (#5) and asks for its decryption.
    assert!(matches!(
        x.step(packet(&[caching_sha2::REQUEST_PUBLIC_KEY])).unwrap(),
        Action::NeedKey
    ));
    let (seq, payload, reply) = sent(x.step(Input::Key(Arc::clone(&key))).unwrap());
    assert_eq!((seq, payload[0], reply), (4, MORE_DATA, true));
    assert!(payload[1..].starts_with(b"-----BEGIN PUBLIC KEY-----"));
    let block = key.encrypt_password(b"secret", &NONCE);
    match x.step(packet(&block)).unwrap() {
        Action::Decrypt { block: b, .. } => assert_eq!(b.as_slice(), &block[..]),
        _ => panic!("expected a decryption"),
    }
    let v = done(
        x.step(Input::Decrypted(Some(Zeroizing::new(b"secret".to_vec()))))
            .unwrap(),
    );
    assert!(v.password.is_some() && v.seq == 6);
    assert!(matches!(v.sha2_path, Some(Sha2Path::FullRsa)));
    // A block that does not decrypt: refused, at the same place.
    let cold = Cache::default();
    let mut x = Exchange::new(
        attempt(
            sha2,
            caching_sha2::scramble(b"secret", b"another nonce......."),
            false,
        ),
        account,
        &cold,
        false,
    );
    sent(x.step(Input::Start).unwrap());
    assert!(matches!(x.step(packet(&block)).unwrap(), Action::NeedKey));
    assert!(matches!(
        x.step(Input::Key(key)).unwrap(),
        Action::Decrypt { .. }
    ));
    let v = done(x.step(Input::Decrypted(None)).unwrap());
    assert!(v.password.is_none() && v.seq == 4 && v.used_password);
}

#[test]
fn input_out_of_order_ends_the_exchange() {
    let stored = PasswordHash::of_password(b"secret");
    let cache = Cache::default();
    let mut x = Exchange::new(
        attempt(None, native_token("secret"), false),
        (Some(&stored), AuthPlugin::CachingSha2),
        &cache,
        false,
    );
    assert!(matches!(x.step(Input::Sent), Err(LoginError::Close(_))));
}
