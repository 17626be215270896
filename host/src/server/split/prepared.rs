//! Binary-protocol prepared statements of a split session: the client sees
//! one statement id (the writer's, where COM_STMT_PREPARE runs); a reader
//! gets the statement prepared lazily, at its first execution there, under
//! an id of its own. Executions are rewritten for the backend session they
//! go to: its statement id, and the parameter types the client sent once
//! (a backend session that never saw them gets them again).

use std::collections::HashMap;

use bytes::Bytes;

use super::Role;
use crate::sql::Class;

/// One statement the client prepared.
#[derive(Debug)]
pub struct Statement {
    /// What its text is, for the rule.
    pub class: Class,
    /// Its text, to prepare it on another backend session.
    pub text: Bytes,
    /// Its parameter count (from the writer's answer).
    params: u16,
    /// Its id on each backend session (by [`Role`]).
    ids: [Option<u32>; 2],
    /// Which backend sessions have the current parameter types.
    typed: [bool; 2],
    /// The parameter types the client sent last (two bytes each).
    types: Option<Vec<u8>>,
    /// Where it was executed last: where COM_STMT_FETCH goes.
    pub ran_on: Option<Role>,
    /// COM_STMT_SEND_LONG_DATA went to the writer since the last
    /// execution: the next one runs there.
    pub long_data: bool,
    /// Its last execution left a cursor open (a multiplexed session keeps
    /// the backend session until it is read to its end or reset).
    pub cursor: bool,
}

/// The statements a split session prepared, by the id the client knows.
#[derive(Debug, Default)]
pub struct Prepared {
    by_id: HashMap<u32, Statement>,
}

/// Statements a backend session of a multiplexed pool keeps prepared at
/// most; past it the least recently used is closed (so that a backend's
/// `max_prepared_stmt_count` is not reached by sessions that come and go).
pub const CACHED_PER_SESSION: usize = 64;

/// The statements prepared on one backend session of a multiplexed pool,
/// by text: any client session that borrows it (of the same user,
/// database and session state) executes them under its own ids.
#[derive(Debug, Default)]
pub struct Cache {
    /// Text, id there, last use.
    entries: Vec<(Bytes, u32, u64)>,
    tick: u64,
}

impl Cache {
    /// The id of `text` there, marked used.
    pub fn get(&mut self, text: &[u8]) -> Option<u32> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.iter_mut().find(|e| e.0 == text)?;
        entry.2 = tick;
        Some(entry.1)
    }

    /// Records `text` prepared there as `id`; the ids to close there: the
    /// same text's earlier id, and the least recently used past the bound.
    pub fn insert(&mut self, text: Bytes, id: u32) -> Vec<u32> {
        self.tick += 1;
        let mut closed: Vec<u32> = self
            .entries
            .extract_if(.., |e| e.0 == text)
            .map(|e| e.1)
            .collect();
        while self.entries.len() >= CACHED_PER_SESSION {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].2)
                .expect("not empty");
            closed.push(self.entries.swap_remove(oldest).1);
        }
        self.entries.push((text, id, self.tick));
        closed
    }

    /// Forgets them all (the backend session was reset).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Whether none is prepared there.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// COM_STMT_CLOSE of `id` (no answer).
pub fn close_command(id: u32) -> [u8; 5] {
    let mut c = [0x19, 0, 0, 0, 0];
    c[1..].copy_from_slice(&id.to_le_bytes());
    c
}

/// `payload` (a COM_STMT_PREPARE answer's first packet) naming `id`.
pub fn with_id(payload: &[u8], id: u32) -> Bytes {
    let mut out = payload.to_vec();
    if let Some(slot) = out.get_mut(ID) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
    Bytes::from(out)
}

/// Where the statement id sits in COM_STMT_EXECUTE, FETCH, RESET, CLOSE
/// and SEND_LONG_DATA.
const ID: std::ops::Range<usize> = 1..5;

/// The statement id a command names, if it has one.
pub fn id_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(payload.get(ID)?.try_into().ok()?))
}

/// The statement id and parameter count in COM_STMT_PREPARE's OK.
pub fn prepare_ok(payload: &[u8]) -> Option<(u32, u16)> {
    if payload.first() != Some(&0) || payload.len() < 12 {
        return None;
    }
    let id = u32::from_le_bytes(payload[1..5].try_into().ok()?);
    let params = u16::from_le_bytes(payload[7..9].try_into().ok()?);
    Some((id, params))
}

impl Prepared {
    /// Records a statement the writer prepared as `id` with `params`
    /// parameters.
    pub fn prepared(&mut self, id: u32, params: u16, text: Bytes) {
        let class = crate::sql::classify(&text);
        self.by_id.insert(
            id,
            Statement {
                class,
                text,
                params,
                ids: [Some(id), None],
                typed: [false; 2],
                types: None,
                ran_on: None,
                long_data: false,
                cursor: false,
            },
        );
    }

    /// The statement the client calls `id`.
    pub fn get(&self, id: u32) -> Option<&Statement> {
        self.by_id.get(&id)
    }

    /// The statement the client calls `id`, to change.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Statement> {
        self.by_id.get_mut(&id)
    }

    /// Forgets `id` (COM_STMT_CLOSE); where it was prepared.
    pub fn close(&mut self, id: u32) -> Option<[Option<u32>; 2]> {
        self.by_id.remove(&id).map(|s| s.ids)
    }

    /// The backend session of `role` was closed: its statements are gone.
    pub fn lost(&mut self, role: Role) {
        for s in self.by_id.values_mut() {
            s.ids[role as usize] = None;
            s.typed[role as usize] = false;
            if s.ran_on == Some(role) {
                s.ran_on = None;
            }
        }
    }

    /// Forgets everything (COM_RESET_CONNECTION, COM_CHANGE_USER).
    pub fn clear(&mut self) {
        self.by_id.clear();
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether a statement holds its backend session: long data sent for
    /// its next execution, or a cursor open.
    pub fn holds(&self) -> bool {
        self.by_id.values().any(|s| s.long_data || s.cursor)
    }

    /// An id for a new statement: not 0, not `u32::MAX` (MariaDB's "the
    /// last prepared"), none in use; after `last`.
    pub fn next_id(&self, last: u32) -> u32 {
        let mut id = last;
        loop {
            id = id.wrapping_add(1);
            if id != 0 && id != u32::MAX && !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }
}

impl Statement {
    /// Its id on the backend session of `role`, if prepared there.
    pub fn id_on(&self, role: Role) -> Option<u32> {
        self.ids[role as usize]
    }

    /// Records its id on the backend session of `role`.
    pub fn prepared_on(&mut self, role: Role, id: u32) {
        self.ids[role as usize] = Some(id);
        self.typed[role as usize] = false;
    }

    /// `payload` (a command naming this statement) for the backend session
    /// of `role`: its id there (prepared there: see [`id_on`](Self::id_on)).
    pub fn for_backend(&self, payload: &[u8], role: Role) -> Vec<u8> {
        let mut out = payload.to_vec();
        if let (Some(id), Some(slot)) = (self.id_on(role), out.get_mut(ID)) {
            slot.copy_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// COM_STMT_EXECUTE `payload` for the backend session of `role`: its id
    /// there, and the parameter types if that session lacks the ones the
    /// client sent before. Learns the types the client sends.
    pub fn execute_for(&mut self, payload: &[u8], role: Role) -> Vec<u8> {
        let mut out = self.for_backend(payload, role);
        let params = usize::from(self.params);
        // id (4), flags (1), iteration count (4), then the NULL bitmap.
        let bound_at = 10 + params.div_ceil(8);
        if params == 0 || out.len() <= bound_at {
            return out;
        }
        let types = bound_at + 1..bound_at + 1 + 2 * params;
        if out[bound_at] == 1 {
            if let Some(sent) = out.get(types) {
                self.types = Some(sent.to_vec());
                self.typed = [false; 2];
                self.typed[role as usize] = true;
            }
        } else if !self.typed[role as usize]
            && let Some(known) = &self.types
        {
            out[bound_at] = 1;
            out.splice(bound_at + 1..bound_at + 1, known.iter().copied());
            self.typed[role as usize] = true;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(params: u16) -> Prepared {
        let mut p = Prepared::default();
        p.prepared(7, params, Bytes::from_static(b"SELECT ? + ?"));
        p
    }

    /// COM_STMT_EXECUTE of statement `id`: one byte of NULL bitmap for two
    /// parameters, then (if `types`) the bound flag 1 and the types, then
    /// the values.
    fn execute(id: u32, types: bool) -> Vec<u8> {
        let mut p = vec![0x17];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0);
        if types {
            p.extend_from_slice(&[1, 8, 0, 8, 0]);
        } else {
            p.push(0);
        }
        p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn the_writer_keeps_the_clients_id_and_a_reader_gets_its_own() {
        let mut p = prepared(2);
        let s = p.get_mut(7).unwrap();
        assert_eq!(
            s.execute_for(&execute(7, true), Role::Writer),
            execute(7, true)
        );
        s.prepared_on(Role::Reader, 3);
        // The reader never saw the types: they are sent again.
        assert_eq!(
            s.execute_for(&execute(7, false), Role::Reader),
            execute(3, true)
        );
        // Now it has them.
        assert_eq!(
            s.execute_for(&execute(7, false), Role::Reader),
            execute(3, false)
        );
        assert_eq!(
            s.execute_for(&execute(7, false), Role::Writer),
            execute(7, false)
        );
    }

    #[test]
    fn new_types_reach_a_session_that_had_the_old_ones() {
        let mut p = prepared(2);
        let s = p.get_mut(7).unwrap();
        s.prepared_on(Role::Reader, 3);
        s.execute_for(&execute(7, true), Role::Reader);
        s.execute_for(&execute(7, true), Role::Writer);
        // The writer got new types last: the reader's are stale.
        assert_eq!(
            s.execute_for(&execute(7, false), Role::Reader),
            execute(3, true)
        );
    }

    #[test]
    fn a_lost_reader_forgets_its_ids_and_short_packets_pass() {
        let mut p = prepared(2);
        p.get_mut(7).unwrap().prepared_on(Role::Reader, 3);
        p.lost(Role::Reader);
        assert_eq!(p.get(7).unwrap().id_on(Role::Reader), None);
        let s = p.get_mut(7).unwrap();
        assert_eq!(s.execute_for(&[0x17, 7, 0], Role::Writer), vec![0x17, 7, 0]);
        assert_eq!(id_of(&[0x19, 7, 0, 0, 0]), Some(7));
        assert_eq!(id_of(&[0x19, 7]), None);
        assert_eq!(p.close(7), Some([Some(7), None]));
        assert!(p.is_empty());
    }

    #[test]
    fn a_sessions_cache_is_bounded_and_closes_the_least_recently_used() {
        let mut c = Cache::default();
        let text = |i: usize| Bytes::from(format!("SELECT {i}"));
        for i in 0..CACHED_PER_SESSION {
            assert!(c.insert(text(i), i as u32).is_empty());
        }
        // Statement 0 used again: 1 is now the least recently used.
        assert_eq!(c.get(b"SELECT 0"), Some(0));
        assert_eq!(c.insert(text(1000), 1000), vec![1]);
        assert_eq!(c.get(b"SELECT 1"), None);
        // The same text prepared again: its earlier id is closed.
        assert_eq!(c.insert(text(0), 2000), vec![0]);
        assert_eq!(c.get(b"SELECT 0"), Some(2000));
        c.clear();
        assert!(c.is_empty());
        assert_eq!(close_command(7), [0x19, 7, 0, 0, 0]);
        assert_eq!(
            &with_id(&[0, 9, 0, 0, 0, 1, 0], 3)[..],
            &[0, 3, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn prepare_ok_gives_id_and_parameters() {
        let ok = [0, 9, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        assert_eq!(prepare_ok(&ok), Some((9, 2)));
        assert_eq!(prepare_ok(&[0xff, 1, 2]), None);
    }
}
