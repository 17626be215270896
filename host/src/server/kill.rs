//! `KILL [QUERY] <id>` where `<id>` is a connection id Switchyard gave out
//! in a greeting: clients learn that id from the handshake (Connector/J's
//! `Statement.cancel()` and query timeouts, `mysql_kill()`), but the backend
//! knows the session by its own thread id. The relay hands a short
//! COM_QUERY that may hold a KILL statement (one of several statements,
//! too: node-mysql2's pool sends `kill ?; select sleep(0.05)`), and any
//! COM_PROCESS_KILL, here and sends the backend what [`translate`] makes
//! of it:
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

use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use super::FIRST_CONNECTION_ID;
use super::connection_id_at;
use crate::sql;

/// Where each session's backend thread is (once it is logged in), by the
/// connection id its client was greeted with.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u32, Option<Place>>>,
    /// Sessions at rest (multiplexed, holding no backend session): what
    /// ends each, and its user.
    resting: Mutex<HashMap<u32, Resting>>,
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

/// A session at rest, for a KILL that names it.
#[derive(Debug, Clone)]
pub struct Resting {
    /// Cancelled to end it (`KILL [CONNECTION]`).
    pub ends: CancellationToken,
    /// Its user: only a session of the same user may kill it (the
    /// killer's `CONNECTION ADMIN` is the backend's to know, and no
    /// backend thread is there to ask).
    pub user: Arc<str>,
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

    /// Session `id`, if it is at rest (a multiplexed session holding no
    /// backend session).
    pub fn resting(&self, id: u32) -> Option<Resting> {
        self.resting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn set_resting(&self, id: u32, at_rest: Option<Resting>) {
        let mut resting = self.resting.lock().unwrap_or_else(|p| p.into_inner());
        match at_rest {
            Some(r) => {
                resting.insert(id, r);
            }
            None => {
                resting.remove(&id);
            }
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
        self.registry.set_resting(self.id, None);
    }

    /// The session holds no backend session now (a multiplexed session at
    /// rest): a KILL naming it finds no thread to kill; `KILL [CONNECTION]`
    /// by a session of `user` cancels `ends`.
    pub fn rests(&self, ends: &CancellationToken, user: &Arc<str>) {
        self.registry.lock().insert(self.id, None);
        self.registry.set_resting(
            self.id,
            Some(Resting {
                ends: ends.clone(),
                user: Arc::clone(user),
            }),
        );
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.registry.set_resting(self.id, None);
    }
}

/// The greeting id a KILL names and whether it is `KILL QUERY` (one
/// statement of a COM_QUERY, or COM_PROCESS_KILL: a connection).
pub fn named(payload: &[u8]) -> Option<(u32, bool)> {
    match *payload.first()? {
        COM_QUERY => {
            let text = &payload[1..];
            if !text.windows(4).any(|w| w.eq_ignore_ascii_case(b"KILL")) {
                return None;
            }
            let [statement] = sql::statements(text)?.try_into().ok()?;
            let (head, id) = parse(&text[statement])?;
            let query = head
                .split_ascii_whitespace()
                .any(|w| w.eq_ignore_ascii_case("QUERY"));
            Some((u32::try_from(id).ok()?, query))
        }
        COM_PROCESS_KILL => Some((
            u32::from_le_bytes(payload.get(1..5)?.try_into().ok()?),
            false,
        )),
        _ => None,
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

/// A command with KILLs rewritten by [`translate`].
#[derive(Debug, PartialEq, Eq)]
pub struct Translated {
    /// The new payload (command byte first).
    pub payload: Vec<u8>,
    /// Whether every greeting id in it named a session on this backend
    /// (else one became the "unknown thread" SIGNAL).
    pub found: bool,
}

/// COM_QUERY.
const COM_QUERY: u8 = 0x03;
/// COM_PROCESS_KILL: a connection id, 4 bytes.
const COM_PROCESS_KILL: u8 = 0x0c;

/// What to send the backend instead of the command `payload` (command byte
/// first) sent by a session on `backend`; `None` to send it as it is.
///
/// A COM_QUERY may hold several statements: each KILL among them is
/// translated in place, the rest of the text left byte for byte (a text
/// [`sql::statements`] cannot cut for certain is left whole). An id that
/// names a session elsewhere becomes the "unknown thread" SIGNAL, which,
/// as the server's own error would, ends the statements there.
/// COM_PROCESS_KILL by greeting id gets the backend thread id, or the
/// SIGNAL (as a COM_QUERY: the answer, an ERR at #1, is the same).
pub fn translate(payload: &[u8], backend: SocketAddr, registry: &Registry) -> Option<Translated> {
    match *payload.first()? {
        COM_QUERY => translate_query(&payload[1..], backend, registry),
        COM_PROCESS_KILL => translate_process_kill(payload.get(1..)?, backend, registry),
        _ => None,
    }
}

/// Where the session a lone KILL (a COM_QUERY of one KILL statement, or
/// COM_PROCESS_KILL) names by greeting id runs now; `None` for any other
/// command, an id that is no greeting id, or a session still logging in.
/// A session with several backend sessions (a split pool's) runs where its
/// last statement ran: there the KILL must go.
pub fn place_named(payload: &[u8], registry: &Registry) -> Option<Place> {
    let id = match *payload.first()? {
        COM_QUERY => {
            let text = &payload[1..];
            // Every statement of a split session comes here: most name no
            // KILL, and need no cut.
            if !text.windows(4).any(|w| w.eq_ignore_ascii_case(b"KILL")) {
                return None;
            }
            let [statement] = sql::statements(text)?.try_into().ok()?;
            parse(&text[statement])?.1
        }
        COM_PROCESS_KILL => u32::from_le_bytes(payload.get(1..5)?.try_into().ok()?).into(),
        _ => return None,
    };
    registry.lookup(u32::try_from(id).ok()?)?
}

/// Where the session greeted with `id` is, as seen from `backend`: its
/// thread there, `Err` if it is elsewhere or logging in; `None` if `id` is
/// no greeting id held now (then it is a backend thread id).
fn place_of(id: u64, backend: SocketAddr, registry: &Registry) -> Option<Result<u32, ()>> {
    match registry.lookup(u32::try_from(id).ok()?)? {
        Some(place) if place.backend == backend => Some(Ok(place.thread)),
        _ => Some(Err(())),
    }
}

/// What the backend answers for an unknown thread, as MariaDB words it.
fn unknown_thread(id: u64) -> String {
    format!(
        "SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1094, MESSAGE_TEXT = 'Unknown thread id: {id}'"
    )
}

fn translate_query(text: &[u8], backend: SocketAddr, registry: &Registry) -> Option<Translated> {
    // Most queries name no KILL: no cut needed.
    if !text.windows(4).any(|w| w.eq_ignore_ascii_case(b"KILL")) {
        return None;
    }
    let mut out = vec![COM_QUERY];
    let (mut copied, mut changed, mut found) = (0, false, true);
    for statement in sql::statements(text)? {
        let Some((head, id)) = parse(&text[statement.clone()]) else {
            continue;
        };
        let Some(place) = place_of(id, backend, registry) else {
            continue;
        };
        out.extend_from_slice(&text[copied..statement.start]);
        let sql = match place {
            Ok(thread) => format!("{head} {thread}"),
            Err(()) => {
                found = false;
                unknown_thread(id)
            }
        };
        out.extend_from_slice(sql.as_bytes());
        copied = statement.end;
        changed = true;
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&text[copied..]);
    Some(Translated {
        payload: out,
        found,
    })
}

fn translate_process_kill(
    id: &[u8],
    backend: SocketAddr,
    registry: &Registry,
) -> Option<Translated> {
    let id = u32::from_le_bytes(id.try_into().ok()?);
    let (payload, found) = match place_of(id.into(), backend, registry)? {
        Ok(thread) => {
            let mut p = vec![COM_PROCESS_KILL];
            p.extend_from_slice(&thread.to_le_bytes());
            (p, true)
        }
        Err(()) => {
            let mut p = vec![COM_QUERY];
            p.extend_from_slice(unknown_thread(id.into()).as_bytes());
            (p, false)
        }
    };
    Some(Translated { payload, found })
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
    fn a_lone_kill_names_where_its_session_runs() {
        let registry = Arc::new(Registry::default());
        let held = registry.reserve();
        let place = Place {
            backend: addr(3307),
            thread: 41,
        };
        held.moved(place);
        let id = held.id();
        assert_eq!(
            place_named(&query(&format!("KILL QUERY {id}")), &registry),
            Some(place)
        );
        let mut process_kill = vec![COM_PROCESS_KILL];
        process_kill.extend_from_slice(&id.to_le_bytes());
        assert_eq!(place_named(&process_kill, &registry), Some(place));
        assert_eq!(
            place_named(&query(&format!("KILL {id}; SELECT 1")), &registry),
            None
        );
        assert_eq!(place_named(&query("KILL 5"), &registry), None);
        assert_eq!(place_named(&query("SELECT 1"), &registry), None);
    }

    #[test]
    fn a_kill_names_its_id_and_whether_it_is_a_query_kill() {
        assert_eq!(named(&query("KILL QUERY 5")), Some((5, true)));
        assert_eq!(named(&query("kill connection 6;")), Some((6, false)));
        assert_eq!(named(&query("KILL HARD 7")), Some((7, false)));
        assert_eq!(named(&[COM_PROCESS_KILL, 8, 0, 0, 0]), Some((8, false)));
        assert_eq!(named(&query("SELECT 1")), None);
        assert_eq!(named(&query("KILL 1; KILL 2")), None);
        let registry = Arc::new(Registry::default());
        let held = registry.reserve();
        let ends = CancellationToken::new();
        let user: Arc<str> = Arc::from("app");
        held.rests(&ends, &user);
        let resting = registry.resting(held.id()).unwrap();
        assert_eq!(&*resting.user, "app");
        resting.ends.cancel();
        assert!(ends.is_cancelled());
        held.moved(Place {
            backend: addr(3306),
            thread: 9,
        });
        assert!(registry.resting(held.id()).is_none());
        held.rests(&ends, &user);
        let id = held.id();
        drop(held);
        assert!(registry.resting(id).is_none());
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
            Some("KILL 41;".into())
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
    fn translates_each_kill_of_several_statements_and_process_kill() {
        let registry = Arc::new(Registry::default());
        let here = addr(3306);
        let place = |backend, thread| Place { backend, thread };
        let a = register(&registry, place(here, 41));
        let b = register(&registry, place(addr(3307), 42));
        let (same, elsewhere) = (a.id(), b.id());
        let sql =
            |t: Option<Translated>| t.map(|t| (String::from_utf8(t.payload).unwrap(), t.found));
        // node-mysql2's pool, and text around the KILLs kept byte for byte.
        assert_eq!(
            text(translate(
                &query(&format!("kill {same}; select sleep(0.05)")),
                here,
                &registry
            )),
            Some("kill 41; select sleep(0.05)".into())
        );
        assert_eq!(
            text(translate(
                &query(&format!(
                    "SELECT 'KILL {same}';\n/* c; */ KILL QUERY {same};KILL {same} ;"
                )),
                here,
                &registry
            )),
            Some(
                "SELECT 'KILL {same}';\n/* c; */ KILL QUERY 41;KILL 41 ;"
                    .replace("{same}", &same.to_string())
            )
        );
        // One named elsewhere: the SIGNAL in its place ends the statements
        // there, as the server's own 1094 would.
        let signal = format!(
            "\x03KILL QUERY 41; SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1094, MESSAGE_TEXT = 'Unknown thread id: {elsewhere}'; SELECT 1"
        );
        assert_eq!(
            sql(translate(
                &query(&format!("KILL QUERY {same}; KILL {elsewhere}; SELECT 1")),
                here,
                &registry
            )),
            Some((signal, false))
        );
        // A KILL only in a string, a text that cannot be cut for certain,
        // a KILL of a backend thread id: as they are.
        for unchanged in [
            format!("SELECT 'KILL {same}'"),
            format!("SELECT 'a\\'; KILL {same}"),
            format!("SELECT 1 /*!; KILL {same} */"),
            "SELECT 1; KILL 41".to_owned(),
        ] {
            assert_eq!(
                translate(&query(&unchanged), here, &registry),
                None,
                "{unchanged}"
            );
        }
        // COM_PROCESS_KILL.
        let process_kill = |id: u32| [&[0x0c][..], &id.to_le_bytes()].concat();
        let mut to_41 = vec![0x0c];
        to_41.extend_from_slice(&41u32.to_le_bytes());
        assert_eq!(
            translate(&process_kill(same), here, &registry),
            Some(Translated {
                payload: to_41,
                found: true
            })
        );
        let (payload, found) = sql(translate(&process_kill(elsewhere), here, &registry)).unwrap();
        assert!(!found);
        assert!(
            payload.starts_with("\x03SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1094"),
            "{payload}"
        );
        assert_eq!(translate(&process_kill(41), here, &registry), None);
        assert_eq!(translate(&[0x0c, 1, 2, 3], here, &registry), None);
        assert_eq!(translate(&[0x0c], here, &registry), None);
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
