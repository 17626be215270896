//! The client's side of authentication, for logins and COM_CHANGE_USER
//! alike: which plugin the account gets, the auth switch, and the
//! exchanges of `mysql_native_password` and `caching_sha2_password`
//! (fast path, and full authentication over TLS or RSA). Every packet is
//! numbered in the client's sequence. Unknown users go through the same
//! exchange as known ones and fail at its end, so the exchange does not
//! tell which user names exist.

use zeroize::Zeroizing;

use crate::auth::caching_sha2::{self, MORE_DATA};
use crate::auth::{self, PasswordHash, Sha1Password};
use crate::config::AuthPlugin;
use crate::conn::PacketStream;
use crate::metrics::{Outcome, Sha2Path};
use crate::protocol::AuthSwitchRequest;
use crate::server::{Shared, State, codes};

use super::LoginError;

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
}

/// Runs the exchange for `attempt` against `stored` (`None`: no such user).
pub(in crate::server) async fn exchange(
    client: &mut PacketStream,
    shared: &Shared,
    state: &State,
    (stored, plugin): (Option<&PasswordHash>, AuthPlugin),
    attempt: Attempt<'_>,
) -> Result<Verdict, LoginError> {
    let Attempt {
        user,
        client_plugin,
        mut data,
        can_switch,
        nonce,
        mut seq,
    } = attempt;
    let started_with = match client_plugin {
        None => Some(AuthPlugin::Native),
        Some(name) => AuthPlugin::from_name(name),
    };
    // A client that started with another plugin is switched to it.
    if started_with != Some(plugin) {
        if !can_switch {
            return Err(LoginError::deny(
                codes::auth_mode_not_supported(),
                seq,
                Outcome::AccessDenied,
                format!(
                    "user '{user}' needs {} and the client cannot switch to it",
                    plugin.name()
                ),
            ));
        }
        let switch = AuthSwitchRequest {
            plugin: plugin.name().into(),
            data: nonce.to_vec(),
        };
        write(client, seq, &switch.encode()).await?;
        data = read(client, seq.wrapping_add(1)).await?;
        seq = seq.wrapping_add(2);
    }
    let used_password = !data.is_empty();
    match plugin {
        AuthPlugin::Native => {
            let password = match stored {
                Some(stored) => auth::verify_native(stored, nonce, &data),
                None => {
                    auth::verify_unknown_user(nonce, &data);
                    None
                }
            };
            Ok(Verdict {
                password,
                seq,
                used_password,
            })
        }
        AuthPlugin::CachingSha2 => {
            caching_sha2_exchange(client, shared, state, stored, user, nonce, data, seq).await
        }
    }
}

/// `caching_sha2_password` after the client's scramble: the fast path if
/// the cache allows, else full authentication.
#[allow(clippy::too_many_arguments)]
async fn caching_sha2_exchange(
    client: &mut PacketStream,
    shared: &Shared,
    state: &State,
    stored: Option<&PasswordHash>,
    user: &str,
    nonce: &[u8; auth::NONCE_LEN],
    scramble: Vec<u8>,
    mut seq: u8,
) -> Result<Verdict, LoginError> {
    if scramble.is_empty() {
        // The empty password: no more data.
        return Ok(Verdict {
            password: stored.and_then(|s| caching_sha2::verify_cleartext(s, b"")),
            seq,
            used_password: false,
        });
    }
    if let Some(stored) = stored
        && let Some(password) = shared
            .sha2_cache
            .fast_verify(user, stored, nonce, &scramble)
    {
        shared.metrics.sha2_path(Sha2Path::Fast);
        write(client, seq, &[MORE_DATA, caching_sha2::FAST_AUTH_SUCCESS]).await?;
        return Ok(Verdict {
            password: Some(password),
            seq: seq.wrapping_add(1),
            used_password: true,
        });
    }
    write(
        client,
        seq,
        &[MORE_DATA, caching_sha2::PERFORM_FULL_AUTHENTICATION],
    )
    .await?;
    let mut answer = Zeroizing::new(read(client, seq.wrapping_add(1)).await?);
    seq = seq.wrapping_add(2);
    let cleartext = if client.is_tls() {
        shared.metrics.sha2_path(Sha2Path::FullTls);
        caching_sha2::strip_nul(&mut answer);
        Some(answer)
    } else {
        shared.metrics.sha2_path(Sha2Path::FullRsa);
        let key = shared.rsa_key(state).await.map_err(|e| {
            LoginError::Close(format!("no RSA key for caching_sha2_password: {e:#}"))
        })?;
        let block = if answer.as_slice() == [caching_sha2::REQUEST_PUBLIC_KEY] {
            let mut packet = Vec::with_capacity(1 + key.public_pem().len());
            packet.push(MORE_DATA);
            packet.extend_from_slice(key.public_pem().as_bytes());
            write(client, seq, &packet).await?;
            let block = Zeroizing::new(read(client, seq.wrapping_add(1)).await?);
            seq = seq.wrapping_add(2);
            block
        } else {
            // Encrypted with a key the client already had, or (a client
            // that cannot do RSA) the cleartext password without TLS,
            // which is refused as a wrong password would be.
            answer
        };
        shared.decrypt_rsa_password(key, block, *nonce).await
    };
    let password = match (stored, &cleartext) {
        (Some(stored), Some(text)) if text.len() <= caching_sha2::MAX_PASSWORD_LEN => {
            let verified = caching_sha2::verify_cleartext(stored, text);
            if let Some(sha1) = &verified {
                shared.sha2_cache.remember(user, text, sha1);
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
    Ok(Verdict {
        password,
        seq,
        used_password: true,
    })
}

async fn write(client: &mut PacketStream, seq: u8, payload: &[u8]) -> Result<(), LoginError> {
    client
        .write(seq, payload)
        .await
        .map_err(|e| LoginError::client(e.into()))
}

/// The next packet's payload; the packet's buffer is zeroed once copied
/// (it may hold a password).
async fn read(client: &mut PacketStream, seq: u8) -> Result<Vec<u8>, LoginError> {
    let p = client.read_seq(seq).await.map_err(LoginError::client)?;
    let data = p.payload.to_vec();
    if let Ok(mut owned) = p.payload.try_into_mut() {
        zeroize::Zeroize::zeroize(owned.as_mut());
    }
    Ok(data)
}
