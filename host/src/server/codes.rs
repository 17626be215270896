//! The ERR packets Switchyard itself sends, with their codes. The README
//! lists them; keep the two in step.

use crate::protocol::ErrPacket;

/// Wrong password or unknown user (MySQL's own code and wording).
pub const ACCESS_DENIED: u16 = 1045;
/// The client cannot use the plugin its account requires.
pub const NOT_SUPPORTED_AUTH_MODE: u16 = 1251;
/// The proxy serves `max_connections` sessions already.
pub const TOO_MANY_CONNECTIONS: u16 = 1040;
/// The client address is blocked after too many failed logins.
pub const HOST_BLOCKED: u16 = 1129;
/// The user has as many sessions as it may have.
pub const USER_LIMIT: u16 = 1226;
/// The proxy is shutting down.
pub const SHUTDOWN_IN_PROGRESS: u16 = 1053;
/// The routing policy refused the login; the message is the policy's text.
pub const POLICY_REFUSED: u16 = 9100;
/// The routing policy failed (trap, timeout, bad or unknown pool).
pub const POLICY_FAILED: u16 = 9101;
/// No backend of the chosen pool could be reached.
pub const NO_BACKEND: u16 = 9102;
/// A backend needs something Switchyard cannot provide (e.g. an auth plugin).
pub const BACKEND_UNSUPPORTED: u16 = 9103;
/// The server refuses for an option it runs with, e.g. `read_only`.
pub const OPTION_PREVENTS_STATEMENT: u16 = 1290;
/// A prepared statement id the session does not know (MySQL's code and
/// wording).
pub const UNKNOWN_STMT_HANDLER: u16 = 1243;
/// A KILL of another user's thread without the privilege (MariaDB's code
/// and wording).
pub const KILL_DENIED: u16 = 1095;
/// COM_STMT_FETCH of a statement with no open cursor (MySQL's code).
pub const STMT_HAS_NO_OPEN_CURSOR: u16 = 1421;
/// The backend session ended while a command waited for its answer.
pub const BACKEND_LOST: u16 = 9104;
/// The backend sent nothing for `query_timeout_ms` while a command waited.
pub const QUERY_TIMEOUT: u16 = 9105;

/// ERR 1045 / 28000, as MySQL words it.
pub fn access_denied(user: &str, host: &str, used_password: bool) -> ErrPacket {
    ErrPacket::new(
        ACCESS_DENIED,
        "28000",
        format!(
            "Access denied for user '{user}'@'{host}' (using password: {})",
            if used_password { "YES" } else { "NO" }
        ),
    )
}

/// ERR 1251 / 08004, as MySQL words it.
pub fn auth_mode_not_supported() -> ErrPacket {
    ErrPacket::new(
        NOT_SUPPORTED_AUTH_MODE,
        "08004",
        "Client does not support authentication protocol requested by server; consider upgrading MySQL client",
    )
}

/// ERR 1040 / 08004.
pub fn too_many_connections() -> ErrPacket {
    ErrPacket::new(TOO_MANY_CONNECTIONS, "08004", "Too many connections")
}

/// ERR 1040 / 08004, sent in place of the greeting: the address has
/// `[throttle] max_pending_logins` connections logging in already.
pub fn too_many_pending(host: &str) -> ErrPacket {
    ErrPacket::new(
        TOO_MANY_CONNECTIONS,
        "08004",
        format!("Too many connections from '{host}' that have not logged in yet"),
    )
}

/// ERR 1129 / HY000, sent in place of the greeting (or in place of the
/// OK of an authentication it stops).
pub fn host_blocked(host: &str, left: std::time::Duration) -> ErrPacket {
    ErrPacket::new(
        HOST_BLOCKED,
        "HY000",
        format!(
            "Host '{host}' is blocked because of many failed logins; try again in {} s",
            left.as_secs().max(1)
        ),
    )
}

/// ERR 1226 / 42000, as MySQL words it.
pub fn user_limit(user: &str, limit: u32) -> ErrPacket {
    ErrPacket::new(
        USER_LIMIT,
        "42000",
        format!(
            "User '{user}' has exceeded the 'max_user_connections' resource (current value: {limit})"
        ),
    )
}

/// ERR 1053 / 08S01.
pub fn shutting_down() -> ErrPacket {
    ErrPacket::new(SHUTDOWN_IN_PROGRESS, "08S01", "Server shutdown in progress")
}

/// ERR 9100 / 28000 with the policy's own text.
pub fn policy_refused(text: &str) -> ErrPacket {
    ErrPacket::new(POLICY_REFUSED, "28000", text)
}

/// ERR 9101 / HY000.
pub fn policy_failed(user: &str, why: &str) -> ErrPacket {
    ErrPacket::new(
        POLICY_FAILED,
        "HY000",
        format!("Switchyard: the routing policy failed for user '{user}': {why}"),
    )
}

/// ERR 9102 / HY000, naming the pool.
pub fn no_backend(pool: &str, tried: usize) -> ErrPacket {
    ErrPacket::new(
        NO_BACKEND,
        "HY000",
        format!("Switchyard: no backend of pool '{pool}' is available ({tried} tried)"),
    )
}

/// ERR 9102 / HY000: a multiplexed pool had no backend session free for a
/// statement within its `multiplex_wait_ms`.
pub fn pool_full(pool: &str, waited_ms: u64) -> ErrPacket {
    ErrPacket::new(
        NO_BACKEND,
        "HY000",
        format!(
            "Switchyard: every backend of pool '{pool}' is at its max_connections; no backend session came free within {waited_ms} ms"
        ),
    )
}

/// ERR 9103 / HY000.
pub fn backend_unsupported(why: &str) -> ErrPacket {
    ErrPacket::new(BACKEND_UNSUPPORTED, "HY000", format!("Switchyard: {why}"))
}

/// ERR 9104 / 08S01 (a communication failure: the session is closed).
pub fn backend_lost(backend: std::net::SocketAddr) -> ErrPacket {
    ErrPacket::new(
        BACKEND_LOST,
        "08S01",
        format!(
            "Switchyard: lost the backend session ({backend}) before its answer; the session is closed"
        ),
    )
}

/// ERR 9105 / 08S01 (the session is closed).
pub fn query_timeout(backend: std::net::SocketAddr, timeout_ms: u64) -> ErrPacket {
    ErrPacket::new(
        QUERY_TIMEOUT,
        "08S01",
        format!(
            "Switchyard: the backend ({backend}) sent nothing for query_timeout_ms ({timeout_ms} ms); the session is closed"
        ),
    )
}

/// ERR 1095 / HY000: a KILL of session `id` (at rest, another user's), as
/// MariaDB refuses a KILL without `CONNECTION ADMIN`.
pub fn kill_denied(id: u32) -> ErrPacket {
    ErrPacket::new(
        KILL_DENIED,
        "HY000",
        format!("You are not owner of thread {id}"),
    )
}

/// ERR 1243 / HY000: statement `id` is not one the session prepared.
pub fn unknown_statement(id: u32, command: &str) -> ErrPacket {
    ErrPacket::new(
        UNKNOWN_STMT_HANDLER,
        "HY000",
        format!("Unknown prepared statement handler ({id}) given to {command}"),
    )
}

/// ERR 1421 / HY000: COM_STMT_FETCH with no cursor open.
pub fn no_open_cursor(id: u32) -> ErrPacket {
    ErrPacket::new(
        STMT_HAS_NO_OPEN_CURSOR,
        "HY000",
        format!("The statement ({id}) has no open cursor"),
    )
}
