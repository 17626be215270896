//! The client's side of authentication, for logins and COM_CHANGE_USER
//! alike: the auth switch to the account's plugin, and the exchanges of
//! `mysql_native_password` and `caching_sha2_password` (fast path, and full
//! authentication over TLS or RSA). Every packet is numbered in the
//! client's sequence. Unknown users go through the same exchange as known
//! ones and fail at its end, so the exchange does not tell which user names
//! exist.
//!
//! [`Exchange`] is the exchange without IO: fed the client's packets (and
//! the RSA key and decryptions it asks for), it says what to send and, at
//! the end, the verdict. [`exchange`] drives it over a client stream.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{LoginError, Services};
use crate::auth::caching_sha2::{self, Cache, MORE_DATA, RsaKey};
use crate::auth::{self, PasswordHash, Sha1Password};
use crate::config::AuthPlugin;
use crate::conn::PacketStream;
use crate::metrics::{Outcome, Sha2Path};
use crate::protocol::AuthSwitchRequest;
use crate::server::codes;

/// A client's first proof of its password, and where the exchange stands.
#[derive(Debug)]
pub(in crate::server) struct Attempt<'a> {
    /// The user name.
    pub user: &'a str,
    /// The plugin `data` was computed for; `None` when the client has no
    /// plugin auth (it uses `mysql_native_password`).
    pub client_plugin: Option<&'a str>,
    /// The auth data the client sent.
    pub data: Vec<u8>,
    /// Whether the client can follow an AuthSwitchRequest.
    pub can_switch: bool,
    /// The nonce the client's data answers.
    pub nonce: &'a [u8; auth::NONCE_LEN],
    /// The sequence id of Switchyard's next packet to the client.
    pub seq: u8,
}

/// How an exchange ended.
#[derive(Debug)]
pub(in crate::server) struct Verdict {
    /// `SHA1(password)` when the password was right.
    pub password: Option<Sha1Password>,
    /// The sequence id of the OK or ERR that ends the exchange.
    pub seq: u8,
    /// Whether the client sent a password (for the 1045 message).
    pub used_password: bool,
    /// The `caching_sha2_password` path taken, if that plugin ran.
    pub sha2_path: Option<Sha2Path>,
}

/// What the exchange needs next.
pub(in crate::server) enum Action {
    /// Send `payload` as packet `seq`; with `reply`, then feed the client's
    /// next packet ([`Input::Packet`]), else [`Input::Sent`].
    Send {
        seq: u8,
        payload: Vec<u8>,
        reply: bool,
    },
    /// Feed the RSA key ([`Input::Key`]).
    NeedKey,
    /// Feed the decryption of `block` with `key` for the exchange's nonce
    /// ([`Input::Decrypted`]).
    Decrypt {
        key: Arc<RsaKey>,
        block: Zeroizing<Vec<u8>>,
    },
    /// The exchange is over.
    Done(Verdict),
}

/// What the exchange is fed.
pub(in crate::server) enum Input {
    /// The first step.
    Start,
    /// The packet sent was written.
    Sent,
    /// The client's next packet (its payload).
    Packet(Zeroizing<Vec<u8>>),
    /// The RSA key.
    Key(Arc<RsaKey>),
    /// The decrypted password, if the block decrypted.
    Decrypted(Option<Zeroizing<Vec<u8>>>),
}

/// Where the exchange stands.
enum Stage {
    Start,
    /// An AuthSwitchRequest was sent; its answer comes.
    Switched,
    /// The fast path's success was sent.
    FastSent,
    /// "Perform full authentication" was sent; the password (TLS), an
    /// encrypted block or a request for the public key comes.
    FullAsked,
    /// The key is needed for `answer`.
    KeyFor(Zeroizing<Vec<u8>>),
    /// The public key was sent; the encrypted block comes.
    KeySent(Arc<RsaKey>),
    /// A block is being decrypted.
    Decrypting,
    Over,
}

/// The exchange of one authentication, without IO.
pub(in crate::server) struct Exchange<'a> {
    user: &'a str,
    nonce: [u8; auth::NONCE_LEN],
    stored: Option<&'a PasswordHash>,
    plugin: AuthPlugin,
    cache: &'a Cache,
    tls: bool,
    client_plugin: Option<AuthPlugin>,
    data: Vec<u8>,
    can_switch: bool,
    seq: u8,
    stage: Stage,
}

impl<'a> Exchange<'a> {
    /// The exchange of `attempt` against `stored` (`None`: no such user)
    /// with the account's `plugin`, over a connection with or without TLS.
    pub(in crate::server) fn new(
        attempt: Attempt<'a>,
        (stored, plugin): (Option<&'a PasswordHash>, AuthPlugin),
        cache: &'a Cache,
        tls: bool,
    ) -> Self {
        let client_plugin = match attempt.client_plugin {
            None => Some(AuthPlugin::Native),
            Some(name) => AuthPlugin::from_name(name),
        };
        Self {
            user: attempt.user,
            nonce: *attempt.nonce,
            stored,
            plugin,
            cache,
            tls,
            client_plugin,
            data: attempt.data,
            can_switch: attempt.can_switch,
            seq: attempt.seq,
            stage: Stage::Start,
        }
    }

    /// Takes `input` (what the previous action asked for) and says what
    /// comes next.
    pub(in crate::server) fn step(&mut self, input: Input) -> Result<Action, LoginError> {
        match (std::mem::replace(&mut self.stage, Stage::Over), input) {
            (Stage::Start, Input::Start) => self.start(),
            (Stage::Switched, Input::Packet(data)) => {
                self.seq = self.seq.wrapping_add(2);
                self.data = data.to_vec();
                Ok(self.with_data())
            }
            (Stage::FastSent, Input::Sent) => Ok(self.done(
                self.stored.and_then(|s| self.cache_hit(s)),
                self.seq.wrapping_add(1),
                Sha2Path::Fast,
            )),
            (Stage::FullAsked, Input::Packet(answer)) => {
                self.seq = self.seq.wrapping_add(2);
                if self.tls {
                    let mut text = answer;
                    caching_sha2::strip_nul(&mut text);
                    return Ok(self.full(Some(text), Sha2Path::FullTls));
                }
                self.stage = Stage::KeyFor(answer);
                Ok(Action::NeedKey)
            }
            (Stage::KeyFor(answer), Input::Key(key)) => {
                if answer.as_slice() == [caching_sha2::REQUEST_PUBLIC_KEY] {
                    let mut payload = Vec::with_capacity(1 + key.public_pem().len());
                    payload.push(MORE_DATA);
                    payload.extend_from_slice(key.public_pem().as_bytes());
                    let seq = self.seq;
                    self.stage = Stage::KeySent(key);
                    return Ok(Action::Send {
                        seq,
                        payload,
                        reply: true,
                    });
                }
                // Encrypted with a key the client already had, or (a client
                // that cannot do RSA) the cleartext password without TLS,
                // which is refused as a wrong password would be.
                self.stage = Stage::Decrypting;
                Ok(Action::Decrypt { key, block: answer })
            }
            (Stage::KeySent(key), Input::Packet(block)) => {
                self.seq = self.seq.wrapping_add(2);
                self.stage = Stage::Decrypting;
                Ok(Action::Decrypt { key, block })
            }
            (Stage::Decrypting, Input::Decrypted(text)) => Ok(self.full(text, Sha2Path::FullRsa)),
            _ => Err(LoginError::Close(
                "authentication exchange fed out of order".into(),
            )),
        }
    }

    /// The account's plugin, switched to if the client started with
    /// another.
    fn start(&mut self) -> Result<Action, LoginError> {
        if self.client_plugin == Some(self.plugin) {
            return Ok(self.with_data());
        }
        if !self.can_switch {
            return Err(LoginError::deny(
                codes::auth_mode_not_supported(),
                self.seq,
                Outcome::AccessDenied,
                format!(
                    "user '{}' needs {} and the client cannot switch to it",
                    self.user,
                    self.plugin.name()
                ),
            ));
        }
        let switch = AuthSwitchRequest {
            plugin: self.plugin.name().into(),
            data: self.nonce.to_vec(),
        };
        self.stage = Stage::Switched;
        Ok(Action::Send {
            seq: self.seq,
            payload: switch.encode(),
            reply: true,
        })
    }

    /// The client's data for the account's plugin is at hand.
    fn with_data(&mut self) -> Action {
        match self.plugin {
            AuthPlugin::Native => {
                let password = match self.stored {
                    Some(stored) => auth::verify_native(stored, &self.nonce, &self.data),
                    None => {
                        auth::verify_unknown_user(&self.nonce, &self.data);
                        None
                    }
                };
                Action::Done(Verdict {
                    password,
                    seq: self.seq,
                    used_password: !self.data.is_empty(),
                    sha2_path: None,
                })
            }
            AuthPlugin::CachingSha2 if self.data.is_empty() => {
                // The empty password: no more data.
                Action::Done(Verdict {
                    password: self
                        .stored
                        .and_then(|s| caching_sha2::verify_cleartext(s, b"")),
                    seq: self.seq,
                    used_password: false,
                    sha2_path: None,
                })
            }
            AuthPlugin::CachingSha2 => {
                let hit = self.stored.is_some_and(|s| self.cache_hit(s).is_some());
                let (payload, stage) = if hit {
                    (caching_sha2::FAST_AUTH_SUCCESS, Stage::FastSent)
                } else {
                    (caching_sha2::PERFORM_FULL_AUTHENTICATION, Stage::FullAsked)
                };
                self.stage = stage;
                Action::Send {
                    seq: self.seq,
                    payload: vec![MORE_DATA, payload],
                    reply: !hit,
                }
            }
        }
    }

    /// The fast path's verdict for the client's scramble.
    fn cache_hit(&self, stored: &PasswordHash) -> Option<Sha1Password> {
        self.cache
            .fast_verify(self.user, stored, &self.nonce, &self.data)
    }

    /// Full authentication's verdict on the cleartext password.
    fn full(&mut self, cleartext: Option<Zeroizing<Vec<u8>>>, path: Sha2Path) -> Action {
        let password = match (self.stored, &cleartext) {
            (Some(stored), Some(text)) if text.len() <= caching_sha2::MAX_PASSWORD_LEN => {
                let verified = caching_sha2::verify_cleartext(stored, text);
                if let Some(sha1) = &verified {
                    self.cache.remember(self.user, text, sha1);
                }
                verified
            }
            (None, Some(text)) => {
                // The same work for a user that does not exist.
                let dummy = PasswordHash::Native([0x5a; 20]);
                let _ = std::hint::black_box(caching_sha2::verify_cleartext(&dummy, text));
                None
            }
            _ => None,
        };
        self.done(password, self.seq, path)
    }

    fn done(&mut self, password: Option<Sha1Password>, seq: u8, path: Sha2Path) -> Action {
        Action::Done(Verdict {
            password,
            seq,
            used_password: true,
            sha2_path: Some(path),
        })
    }
}

/// Runs the exchange of `attempt` over `client`, against `stored` (`None`:
/// no such user) with the account's `plugin`.
pub(in crate::server) async fn exchange(
    client: &mut PacketStream,
    services: &impl Services,
    account: (Option<&PasswordHash>, AuthPlugin),
    attempt: Attempt<'_>,
) -> Result<Verdict, LoginError> {
    let nonce = *attempt.nonce;
    let mut machine = Exchange::new(attempt, account, services.sha2_cache(), client.is_tls());
    let mut input = Input::Start;
    loop {
        input = match machine.step(input)? {
            Action::Send {
                seq,
                payload,
                reply,
            } => {
                write(client, seq, &payload).await?;
                if reply {
                    Input::Packet(read(client, seq.wrapping_add(1)).await?)
                } else {
                    Input::Sent
                }
            }
            Action::NeedKey => Input::Key(services.rsa_key().await.map_err(|e| {
                LoginError::Close(format!("no RSA key for caching_sha2_password: {e:#}"))
            })?),
            Action::Decrypt { key, block } => {
                Input::Decrypted(services.decrypt(key, block, nonce).await)
            }
            Action::Done(verdict) => {
                if let Some(path) = verdict.sha2_path {
                    services.sha2_path(path);
                }
                return Ok(verdict);
            }
        };
    }
}

async fn write(client: &mut PacketStream, seq: u8, payload: &[u8]) -> Result<(), LoginError> {
    client
        .write(seq, payload)
        .await
        .map_err(|e| LoginError::client(e.into()))
}

/// The next packet's payload; the packet's buffer is zeroed once copied
/// (it may hold a password).
async fn read(client: &mut PacketStream, seq: u8) -> Result<Zeroizing<Vec<u8>>, LoginError> {
    let p = client.read_seq(seq).await.map_err(LoginError::client)?;
    let data = Zeroizing::new(p.payload.to_vec());
    if let Ok(mut owned) = p.payload.try_into_mut() {
        zeroize::Zeroize::zeroize(owned.as_mut());
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
