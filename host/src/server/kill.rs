//! `KILL [QUERY] <id>` where `<id>` is a connection id Switchyard gave out
//! in a greeting: clients learn that id from the handshake (Connector/J's
//! `Statement.cancel()` and query timeouts, `mysql_kill()`), but the backend
//! knows the session by its own thread id. The relay hands such a COM_QUERY
//! here and sends the backend what [`translate`] makes of it:
//!
//! - the id of a session on the same backend server: the same statement
//!   with that session's backend thread id (the backend then checks the
//!   privileges, as for any KILL);
//! - any other id at or above [`FIRST_CONNECTION_ID`] (a session on another
//!   server, or none): a `SIGNAL` that makes the backend answer exactly as
//!   MariaDB does for an unknown thread (1094, HY000), so the answer stays
//!   in the client's command sequence;
//! - ids below it are backend thread ids (from `CONNECTION_ID()` or the
//!   process list): the statement goes on unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::FIRST_CONNECTION_ID;

/// Where each logged-in session's backend thread is, by the connection id
/// its client was greeted with.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u32, Place>>,
}

/// A backend thread: its server and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The backend server.
    pub backend: SocketAddr,
    /// The thread id the backend greeted Switchyard with.
    pub thread: u32,
}

impl Registry {
    /// Records session `id` at `place` until the returned registration is
    /// dropped.
    pub fn register(self: &Arc<Self>, id: u32, place: Place) -> Registration {
        self.lock().insert(id, place);
        Registration {
            registry: Arc::clone(self),
            id,
        }
    }

    /// Where session `id` is.
    pub fn find(&self, id: u32) -> Option<Place> {
        self.lock().get(&id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Place>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's entry in the [`Registry`], removed on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    id: u32,
}

impl Registration {
    /// The session moved to another backend thread (COM_CHANGE_USER).
    pub fn moved(&self, place: Place) {
        self.registry.lock().insert(self.id, place);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// A KILL statement naming a thread id: the text before the id, and the id.
fn parse(sql: &[u8]) -> Option<(&str, u64)> {
    let sql = std::str::from_utf8(sql).ok()?;
    let body = sql.trim_end().trim_end_matches(';').trim_end();
    let (head, id) = body.rsplit_once(|c: char| c.is_ascii_whitespace())?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = id.parse().ok()?;
    let mut words = head.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("KILL") {
        return None;
    }
    let mut word = words.next();
    if word.is_some_and(|w| w.eq_ignore_ascii_case("HARD") || w.eq_ignore_ascii_case("SOFT")) {
        word = words.next();
    }
    if word.is_some_and(|w| w.eq_ignore_ascii_case("CONNECTION") || w.eq_ignore_ascii_case("QUERY"))
    {
        word = words.next();
    }
    // Anything else (`QUERY ID <query id>`, `USER <name>`) is not a thread id.
    if word.is_some() {
        return None;
    }
    Some((head.trim_end(), id))
}

/// A KILL statement rewritten by [`translate`].
#[derive(Debug, PartialEq, Eq)]
pub struct Translated {
    /// The new COM_QUERY payload.
    pub payload: Vec<u8>,
    /// Whether it names the session's backend thread (else it is the
    /// "unknown thread" SIGNAL).
    pub found: bool,
}

/// What to send the backend instead of the COM_QUERY `payload` (command
/// byte first), sent by a session on `backend`; `None` to send it as it is.
pub fn translate(payload: &[u8], backend: SocketAddr, registry: &Registry) -> Option<Translated> {
    let (head, id) = parse(payload.get(1..)?)?;
    if id < u64::from(FIRST_CONNECTION_ID) {
        return None;
    }
    let place = u32::try_from(id).ok().and_then(|id| registry.find(id));
    let (sql, found) = match place {
        Some(place) if place.backend == backend => (format!("{head} {}", place.thread), true),
        _ => (
            format!(
                "SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1094, MESSAGE_TEXT = 'Unknown thread id: {id}'"
            ),
            false,
        ),
    };
    let mut out = Vec::with_capacity(1 + sql.len());
    out.push(payload[0]);
    out.extend_from_slice(sql.as_bytes());
    Some(Translated {
        payload: out,
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        p
    }

    fn text(translated: Option<Translated>) -> Option<String> {
        translated.map(|t| {
            let p = t.payload;
            assert_eq!(p[0], 0x03);
            let sql = String::from_utf8(p[1..].to_vec()).unwrap();
            assert_eq!(t.found, !sql.starts_with("SIGNAL"), "{sql}");
            sql
        })
    }

    #[test]
    fn parses_the_thread_id_forms() {
        assert_eq!(parse(b"KILL 5"), Some(("KILL", 5)));
        assert_eq!(parse(b"kill query 7;"), Some(("kill query", 7)));
        assert_eq!(
            parse(b"KILL HARD CONNECTION 8 ; "),
            Some(("KILL HARD CONNECTION", 8))
        );
        assert_eq!(
            parse(b"KILL  SOFT\tQUERY  9"),
            Some(("KILL  SOFT\tQUERY", 9))
        );
        for other in [
            &b"KILL QUERY ID 5"[..],
            b"KILL USER bob",
            b"KILL QUERY",
            b"KILLQUERY 5",
            b"KILL QUERY -5",
            b"KILL QUERY 5 6",
            b"SELECT 5",
            b"KILL QUERY 0x10",
            b"\xff\xfe 5",
        ] {
            assert_eq!(parse(other), None, "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn translates_greeting_ids_only() {
        let registry = Arc::new(Registry::default());
        let here = addr(3306);
        let same = FIRST_CONNECTION_ID + 1;
        let elsewhere = FIRST_CONNECTION_ID + 2;
        let _a = registry.register(
            same,
            Place {
                backend: here,
                thread: 41,
            },
        );
        let b = registry.register(
            elsewhere,
            Place {
                backend: addr(3307),
                thread: 42,
            },
        );
        // A session on the same server: its backend thread id.
        assert_eq!(
            text(translate(
                &query(&format!("KILL QUERY {same}")),
                here,
                &registry
            )),
            Some("KILL QUERY 41".into())
        );
        assert_eq!(
            text(translate(&query(&format!("KILL {same};")), here, &registry)),
            Some("KILL 41".into())
        );
        // On another server, or gone: the backend's own "unknown thread".
        let unknown = |id: u32| {
            Some(format!(
                "SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1094, MESSAGE_TEXT = 'Unknown thread id: {id}'"
            ))
        };
        assert_eq!(
            text(translate(
                &query(&format!("KILL QUERY {elsewhere}")),
                here,
                &registry
            )),
            unknown(elsewhere)
        );
        drop(b);
        assert_eq!(registry.find(elsewhere), None);
        assert_eq!(
            text(translate(
                &query(&format!("KILL {}", u32::MAX)),
                here,
                &registry
            )),
            unknown(u32::MAX)
        );
        assert!(
            text(translate(&query("KILL 99999999999"), here, &registry))
                .is_some_and(|t| t.ends_with("'Unknown thread id: 99999999999'"))
        );
        // Backend thread ids and other statements pass unchanged.
        assert_eq!(translate(&query("KILL QUERY 41"), here, &registry), None);
        assert_eq!(translate(&query("SELECT 1"), here, &registry), None);
        assert_eq!(translate(&[0x03], here, &registry), None);
    }

    #[test]
    fn a_moved_session_is_found_at_its_new_place() {
        let registry = Arc::new(Registry::default());
        let id = FIRST_CONNECTION_ID + 9;
        let r = registry.register(
            id,
            Place {
                backend: addr(1),
                thread: 1,
            },
        );
        let moved = Place {
            backend: addr(2),
            thread: 2,
        };
        r.moved(moved);
        assert_eq!(registry.find(id), Some(moved));
    }
}
