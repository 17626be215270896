//! `KILL [QUERY] <id>` where `<id>` is a connection id Switchyard gave out
//! in a greeting: clients learn that id from the handshake (Connector/J's
//! `Statement.cancel()` and query timeouts, `mysql_kill()`), but the backend
//! knows the session by its own thread id. The relay hands such a COM_QUERY
//! here and sends the backend what [`translate`] makes of it:
//!
//! - the id of a session on the same backend server: the same statement
//!   with that session's backend thread id (the backend then checks the
//!   privileges, as for any KILL);
//! - the id of a session on another server (or one still logging in): a
//!   `SIGNAL` that makes the backend answer exactly as MariaDB does for an
//!   unknown thread (1094, HY000), so the answer stays in the client's
//!   command sequence;
//! - any other id is a backend thread id (from `CONNECTION_ID()` or the
//!   process list; busy servers hand out ids above [`FIRST_CONNECTION_ID`]
//!   too): the statement goes on unchanged.
//!
//! Greeting ids are handed out by the registry itself, from
//! [`FIRST_CONNECTION_ID`] up, and an id is never handed out again while a
//! session holds it (from its greeting to its end), even after the
//! counter wraps: two live sessions never share one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

#[cfg(doc)]
use super::FIRST_CONNECTION_ID;
use super::connection_id_at;

/// Where each session's backend thread is (once it is logged in), by the
/// connection id its client was greeted with.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u32, Option<Place>>>,
    next: AtomicU32,
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
    /// A connection id for a new session's greeting, held (no other
    /// session gets it) until the returned registration is dropped.
    pub fn reserve(self: &Arc<Self>) -> Registration {
        let mut sessions = self.lock();
        // Ids in use are skipped: there are far fewer sessions than ids,
        // so this ends after a step or two.
        let id = loop {
            let id = connection_id_at(self.next.fetch_add(1, Ordering::Relaxed));
            if !sessions.contains_key(&id) {
                break id;
            }
        };
        sessions.insert(id, None);
        Registration {
            registry: Arc::clone(self),
            id,
        }
    }

    /// Whether `id` is a greeting id held by a session now, and where that
    /// session is (`None` while it logs in).
    pub fn lookup(&self, id: u32) -> Option<Option<Place>> {
        self.lock().get(&id).copied()
    }

    /// Where session `id` is.
    #[cfg(test)]
    pub fn find(&self, id: u32) -> Option<Place> {
        self.lookup(id).flatten()
    }

    #[cfg(test)]
    fn start_at(&self, n: u32) {
        self.next.store(n, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Option<Place>>> {
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
    /// The connection id it holds.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The session is (now) on this backend thread: logged in, or moved
    /// by COM_CHANGE_USER.
    pub fn moved(&self, place: Place) {
        self.registry.lock().insert(self.id, Some(place));
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
    // Not a greeting id held now: a backend thread id.
    let place = registry.lookup(u32::try_from(id).ok()?)?;
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
    use crate::server::FIRST_CONNECTION_ID as FIRST_CONNECTION_ID_FOR_TESTS;

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

    /// A registration placed at `place`.
    fn register(registry: &Arc<Registry>, place: Place) -> Registration {
        let r = registry.reserve();
        r.moved(place);
        r
    }

    #[test]
    fn translates_greeting_ids_only() {
        let registry = Arc::new(Registry::default());
        let here = addr(3306);
        let _a = register(
            &registry,
            Place {
                backend: here,
                thread: 41,
            },
        );
        let b = register(
            &registry,
            Place {
                backend: addr(3307),
                thread: 42,
            },
        );
        let logging_in = registry.reserve();
        let (same, elsewhere) = (_a.id(), b.id());
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
        // On another server, or not logged in yet: the backend's own
        // "unknown thread".
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
        assert_eq!(
            text(translate(
                &query(&format!("KILL {}", logging_in.id())),
                here,
                &registry
            )),
            unknown(logging_in.id())
        );
        drop(b);
        assert_eq!(registry.find(elsewhere), None);
        // Ids no session holds are backend thread ids, whatever their size
        // (busy servers hand out large ones): unchanged.
        assert_eq!(
            translate(&query(&format!("KILL {elsewhere}")), here, &registry),
            None
        );
        assert_eq!(
            translate(&query(&format!("KILL {}", u32::MAX)), here, &registry),
            None
        );
        assert_eq!(translate(&query("KILL 99999999999"), here, &registry), None);
        assert_eq!(translate(&query("KILL QUERY 41"), here, &registry), None);
        assert_eq!(translate(&query("SELECT 1"), here, &registry), None);
        assert_eq!(translate(&[0x03], here, &registry), None);
    }

    #[test]
    fn ids_held_by_sessions_are_not_handed_out_again_after_a_wrap() {
        let registry = Arc::new(Registry::default());
        let first = registry.reserve();
        assert_eq!(first.id(), FIRST_CONNECTION_ID_FOR_TESTS);
        let top = registry.reserve();
        // The counter comes round to the first id while both still hold
        // theirs.
        registry.start_at(0);
        let next = registry.reserve();
        assert_ne!(next.id(), first.id());
        assert_ne!(next.id(), top.id());
        let place = Place {
            backend: addr(1),
            thread: 7,
        };
        next.moved(place);
        first.moved(Place {
            backend: addr(1),
            thread: 8,
        });
        assert_eq!(registry.find(next.id()).map(|p| p.thread), Some(7));
        assert_eq!(registry.find(first.id()).map(|p| p.thread), Some(8));
        // Given back, an id can be handed out again.
        let id = first.id();
        drop(first);
        registry.start_at(0);
        assert_eq!(registry.reserve().id(), id);
    }

    #[test]
    fn a_moved_session_is_found_at_its_new_place() {
        let registry = Arc::new(Registry::default());
        let r = register(
            &registry,
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
        assert_eq!(registry.find(r.id()), Some(moved));
    }
}
