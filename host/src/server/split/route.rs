//! What a split session knows between statements, sans-IO: where its
//! transaction runs, what pins it, its last write, and the session state
//! its backend sessions must share.

use super::Role;
use crate::pool::gtid::Gtid;
use crate::protocol::{StateChange, StatusFlags};
use crate::sql::{Pin, SessionState, SessionView, Target};

/// At most this many session statements are kept verbatim for a session
/// whose backend sessions do not track state; past it, the session pins.
const MAX_LOGGED: usize = 64;
/// ... or this many bytes of them.
const MAX_LOGGED_BYTES: usize = 16 * 1024;

/// The session's last write, for causal reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum LastWrite {
    /// None yet (or all of them seen by every reader).
    #[default]
    None,
    /// The writer's GTID of it.
    At(Gtid),
    /// A write whose GTID is not known yet (the session does not track
    /// state): asked of the writer when a read would go to a reader.
    Unknown,
    /// A write with no GTID (the writer has no binary log): only the
    /// writer is known to have it.
    Untraceable,
}

impl LastWrite {
    /// From the writer's `@@last_gtid`: empty when the session has written
    /// nothing that was logged (nothing a replica could lack).
    pub fn of(last_gtid: &str) -> Self {
        if last_gtid.is_empty() {
            return Self::None;
        }
        match last_gtid.parse() {
            Ok(gtid) => Self::At(gtid),
            Err(_) => Self::Untraceable,
        }
    }
}

/// Session state that every backend session of the client session shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Carried {
    /// Learnt from the backend sessions' state tracking: replayed as values.
    Tracked(SessionState),
    /// The session statements that ran, in order, replayed as they are
    /// (the client does not take state tracking, so neither do its
    /// backend sessions).
    Logged(Vec<String>),
}

impl Carried {
    /// The statements that give a new backend session this state.
    pub fn replay(&self) -> Result<Vec<String>, crate::sql::NotReplayable> {
        match self {
            Self::Tracked(state) => state.replay(),
            Self::Logged(log) => Ok(log.clone()),
        }
    }

    /// The statements that take a backend session whose state was `had`
    /// to this state by adding to it, if that is possible (see
    /// [`SessionState::replay_from`]; kept statements: `had`'s are the
    /// first of these).
    pub fn replay_from(
        &self,
        had: &Carried,
    ) -> Option<Result<Vec<String>, crate::sql::NotReplayable>> {
        match (self, had) {
            (Self::Tracked(want), Self::Tracked(had)) => want.replay_from(had),
            (Self::Logged(want), Self::Logged(had)) if want.starts_with(had) => {
                Some(Ok(want[had.len()..].to_vec()))
            }
            _ => None,
        }
    }

    /// Takes a session statement `sql` that ran without error and the
    /// changes its OK reported; `false` when the state grew past what is
    /// kept (then the session pins).
    pub fn ran(&mut self, sql: &str, changes: &[StateChange]) -> bool {
        match self {
            Self::Tracked(state) => {
                state.apply(changes);
                state.ran(sql);
                true
            }
            Self::Logged(log) => {
                // The same statement again (a pool's `SET NAMES` at each
                // checkout) is kept once, last; unless it reads what it
                // sets.
                if !sql.contains('@') {
                    log.retain(|s| s != sql);
                }
                log.push(sql.to_owned());
                log.len() <= MAX_LOGGED
                    && log.iter().map(String::len).sum::<usize>() <= MAX_LOGGED_BYTES
            }
        }
    }

    /// Takes what any other statement's OK reported; whether the session
    /// state changed.
    pub fn apply(&mut self, changes: &[StateChange]) -> bool {
        let Self::Tracked(state) = self else {
            return false;
        };
        let before = state.clone();
        state.apply(changes);
        *state != before
    }
}

/// Where each backend session stands, as its last status said.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Statuses {
    /// The writer's, if it is open.
    pub writer: Option<StatusFlags>,
    /// The reader's, if it is open.
    pub reader: Option<StatusFlags>,
}

/// What the session knows that routing needs.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// Why the session stays on the writer, if it does.
    pub pinned: Option<Pin>,
    /// Where the last statement ran.
    pub previous: Option<Role>,
    /// Its last write.
    pub last_write: LastWrite,
}

impl Routing {
    /// The view the built-in rule takes.
    pub fn view(&self, statuses: Statuses) -> SessionView {
        let open = |s: Option<StatusFlags>| {
            s.is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_IN_TRANS))
        };
        let autocommit_off = |s: Option<StatusFlags>| {
            s.is_some_and(|s| !s.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT))
        };
        let (writer, reader) = (open(statuses.writer), open(statuses.reader));
        SessionView {
            in_transaction: writer || reader,
            read_only_transaction: reader && !writer,
            autocommit_off: autocommit_off(statuses.writer) || autocommit_off(statuses.reader),
            pinned: self.pinned,
            previous: self.previous.map(|r| match r {
                Role::Writer => Target::Writer,
                Role::Reader => Target::Reader,
            }),
        }
    }

    /// Takes the writer's report of a statement's changes: its GTID, if it
    /// wrote.
    pub fn wrote(&mut self, changes: &[StateChange]) -> bool {
        for change in changes {
            if let StateChange::SystemVariable { name, value } = change
                && name.eq_ignore_ascii_case("last_gtid")
            {
                self.last_write = LastWrite::of(value);
                return true;
            }
        }
        false
    }

    /// Forgets what COM_RESET_CONNECTION resets (not the last write: the
    /// data stays written).
    pub fn reset(&mut self) {
        self.pinned = None;
        self.previous = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(bits: u16) -> Option<StatusFlags> {
        Some(StatusFlags::from_bits_retain(bits))
    }

    #[test]
    fn transactions_follow_the_status_of_each_backend_session() {
        let r = Routing::default();
        let idle = r.view(Statuses {
            writer: flags(2),
            reader: flags(2),
        });
        assert!(!idle.in_transaction && !idle.autocommit_off);
        let on_writer = r.view(Statuses {
            writer: flags(3),
            reader: flags(2),
        });
        assert!(on_writer.in_transaction && !on_writer.read_only_transaction);
        let on_reader = r.view(Statuses {
            writer: None,
            reader: flags(3),
        });
        assert!(on_reader.in_transaction && on_reader.read_only_transaction);
        let autocommit_off = r.view(Statuses {
            writer: flags(0),
            reader: None,
        });
        assert!(autocommit_off.autocommit_off && !autocommit_off.in_transaction);
    }

    #[test]
    fn the_writers_last_gtid_is_the_last_write() {
        let mut r = Routing::default();
        let var = |v: &str| StateChange::SystemVariable {
            name: "last_gtid".into(),
            value: v.into(),
        };
        assert!(!r.wrote(&[StateChange::Schema("db".into())]));
        assert!(r.wrote(&[var("0-1-42")]));
        assert_eq!(r.last_write, LastWrite::At("0-1-42".parse().unwrap()));
        assert!(r.wrote(&[var("")]));
        assert_eq!(r.last_write, LastWrite::None);
        assert!(r.wrote(&[var("0-1")]));
        assert_eq!(r.last_write, LastWrite::Untraceable);
    }

    #[test]
    fn logged_state_keeps_a_repeated_statement_once_and_pins_past_its_bound() {
        let mut c = Carried::Logged(Vec::new());
        assert!(c.ran("SET NAMES utf8mb4", &[]));
        assert!(c.ran("SET time_zone = '+01:00'", &[]));
        assert!(c.ran("SET NAMES utf8mb4", &[]));
        assert!(c.ran("SET sql_mode = CONCAT(@@sql_mode, ',X')", &[]));
        assert!(c.ran("SET sql_mode = CONCAT(@@sql_mode, ',X')", &[]));
        assert_eq!(
            c.replay().unwrap(),
            [
                "SET time_zone = '+01:00'",
                "SET NAMES utf8mb4",
                "SET sql_mode = CONCAT(@@sql_mode, ',X')",
                "SET sql_mode = CONCAT(@@sql_mode, ',X')",
            ]
        );
        let grown = (0..MAX_LOGGED).all(|i| c.ran(&format!("SET @@session.v{i} = 1"), &[]));
        assert!(!grown);
    }

    #[test]
    fn tracked_state_changes_only_when_a_value_does() {
        let mut c = Carried::Tracked(SessionState::default());
        let tz = StateChange::SystemVariable {
            name: "time_zone".into(),
            value: "+01:00".into(),
        };
        assert!(c.apply(std::slice::from_ref(&tz)));
        assert!(!c.apply(&[tz]));
        assert_eq!(c.replay().unwrap(), ["SET SESSION time_zone = '+01:00'"]);
    }
}
