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
}

/// The statements a split session prepared, by the id the client knows.
#[derive(Debug, Default)]
pub struct Prepared {
    by_id: HashMap<u32, Statement>,
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
    fn prepare_ok_gives_id_and_parameters() {
        let ok = [0, 9, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        assert_eq!(prepare_ok(&ok), Some((9, 2)));
        assert_eq!(prepare_ok(&[0xff, 1, 2]), None);
    }
}
