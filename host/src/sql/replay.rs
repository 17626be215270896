//! The session state a client session has set, learnt from its backend
//! session's state tracking (not by parsing SQL), and the statements that
//! give a backend session opened later the same state.
//!
//! Tracked with `session_track_system_variables = '*'` and
//! `session_track_schema = ON`: every session variable the client changes
//! (`SET NAMES` shows as the three character set variables), and the current
//! schema. Not replayed: variables that are the server's to report
//! (`last_gtid`, `in_transaction`), `autocommit` (a reader must never hold a
//! transaction open; routing follows autocommit itself), and the tracking
//! settings, which are the proxy's.
//!
//! One thing tracking misses: MariaDB reports the three character set
//! variables `SET NAMES ... COLLATE ...` sets but not
//! `collation_connection` (found by the e2e test). So the last `SET NAMES`
//! / `SET CHARACTER SET` statement is kept verbatim ([`SessionState::ran`])
//! and replayed first.

use std::collections::BTreeMap;

use super::{Kind, classify};
use crate::protocol::StateChange;

/// Variables never replayed (lower case).
const NOT_REPLAYED: &[&str] = &[
    "autocommit",
    "in_transaction",
    "last_gtid",
    "session_track_schema",
    "session_track_state_change",
    "session_track_system_variables",
    "session_track_transaction_info",
];

/// The variables `SET NAMES` sets.
const SET_BY_NAMES: &[&str] = &[
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
];

/// Why a session's state cannot be given to another backend session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReplayable {
    /// A variable name that is not a plain identifier.
    Name(String),
    /// A value this cannot quote the same way under every `sql_mode` (it
    /// holds a backslash).
    Value(String),
}

/// What a client session has set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// Session variables by name (lower case), with their values as text.
    variables: BTreeMap<String, String>,
    /// The current schema, once it changed.
    schema: Option<String>,
    /// The last `SET NAMES` / `SET CHARACTER SET` statement.
    names: Option<String>,
}

impl SessionState {
    /// Takes the changes an OK packet reported.
    pub fn apply(&mut self, changes: &[StateChange]) {
        for change in changes {
            match change {
                StateChange::SystemVariable { name, value } => {
                    let name = name.to_ascii_lowercase();
                    if !NOT_REPLAYED.contains(&name.as_str()) {
                        self.variables.insert(name, value.clone());
                    }
                }
                StateChange::Schema(schema) => self.schema = Some(schema.clone()),
                _ => {}
            }
        }
    }

    /// Takes a statement the session ran without error, after the changes
    /// its OK reported ([`apply`](Self::apply)): a `SET NAMES` or `SET
    /// CHARACTER SET` (session state, as [`classify`] says) is kept to be
    /// replayed as it is, in place of the character set variables it set.
    pub fn ran(&mut self, sql: &str) {
        if classify(sql.as_bytes()).kind != Kind::Session {
            return;
        }
        let mut words = sql.split_ascii_whitespace();
        let set = words.next().is_some_and(|w| w.eq_ignore_ascii_case("SET"));
        let names = words.next().is_some_and(|w| {
            ["NAMES", "CHARACTER", "CHARSET"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
        });
        if set && names {
            self.names = Some(sql.trim().trim_end_matches(';').to_owned());
            // What it set is its to replay: the variables' values reported
            // so far (by its own OK too) would undo its collation.
            for v in SET_BY_NAMES {
                self.variables.remove(*v);
            }
        }
    }

    /// Whether nothing was set.
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty() && self.schema.is_none() && self.names.is_none()
    }

    /// The statements that take a backend session of state `had` to this
    /// one by adding to it, if that is possible: `had` sets no variable
    /// this state does not (only new values), no other `SET NAMES`, no
    /// other schema. Only what differs.
    pub fn replay_from(&self, had: &SessionState) -> Option<Result<Vec<String>, NotReplayable>> {
        if had.names.is_some() && had.names != self.names {
            return None;
        }
        if had.schema.is_some() && had.schema != self.schema {
            return None;
        }
        if had
            .variables
            .keys()
            .any(|k| !self.variables.contains_key(k))
        {
            return None;
        }
        let changed = SessionState {
            variables: self
                .variables
                .iter()
                .filter(|(k, v)| had.variables.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            schema: self.schema.clone().filter(|_| had.schema != self.schema),
            names: self.names.clone().filter(|_| had.names != self.names),
        };
        Some(changed.replay())
    }

    /// The statements that give another backend session this state: the
    /// last `SET NAMES`, one `SET SESSION` of every variable, then `USE` of
    /// the schema.
    pub fn replay(&self) -> Result<Vec<String>, NotReplayable> {
        let mut statements: Vec<String> = self.names.iter().cloned().collect();
        if !self.variables.is_empty() {
            let mut set = String::from("SET SESSION ");
            for (i, (name, value)) in self.variables.iter().enumerate() {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(NotReplayable::Name(name.clone()));
                }
                if i > 0 {
                    set.push_str(", ");
                }
                set.push_str(name);
                set.push_str(" = ");
                set.push_str(&literal(value).ok_or_else(|| NotReplayable::Value(name.clone()))?);
            }
            statements.push(set);
        }
        if let Some(schema) = &self.schema {
            statements.push(format!("USE `{}`", schema.replace('`', "``")));
        }
        Ok(statements)
    }
}

/// `value` as an SQL literal: a number as it is, anything else quoted
/// (quotes doubled); `None` if it holds a backslash, which reads
/// differently with and without `NO_BACKSLASH_ESCAPES`.
fn literal(value: &str) -> Option<String> {
    let number = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && value.parse::<f64>().is_ok();
    if number {
        return Some(value.to_owned());
    }
    if value.contains('\\') {
        return None;
    }
    Some(format!("'{}'", value.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> StateChange {
        StateChange::SystemVariable {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn from_another_state_only_what_differs_when_it_only_adds() {
        let mut had = SessionState::default();
        had.apply(&[var("time_zone", "+01:00"), var("sql_mode", "ANSI")]);
        let mut want = had.clone();
        want.apply(&[var("time_zone", "+02:00"), var("sql_select_limit", "5")]);
        assert_eq!(
            want.replay_from(&had),
            Some(Ok(vec![
                "SET SESSION sql_select_limit = 5, time_zone = '+02:00'".to_owned()
            ]))
        );
        assert_eq!(want.replay_from(&want), Some(Ok(vec![])));
        assert_eq!(
            want.replay_from(&SessionState::default()),
            Some(want.replay())
        );
        // A variable `had` set that the wanted state leaves at its default:
        // not by adding.
        assert_eq!(had.replay_from(&want), None);
        let mut elsewhere = had.clone();
        elsewhere.apply(&[StateChange::Schema("other".into())]);
        assert_eq!(had.replay_from(&elsewhere), None);
    }

    #[test]
    fn replays_the_last_value_of_each_variable_then_the_schema() {
        let mut state = SessionState::default();
        assert!(state.is_empty());
        assert_eq!(state.replay(), Ok(vec![]));
        state.apply(&[
            var("time_zone", "+01:00"),
            var("SQL_MODE", "ANSI_QUOTES"),
            var("last_gtid", "0-1-5"),
            var("autocommit", "OFF"),
            StateChange::StateChanged,
        ]);
        state.apply(&[
            var("time_zone", "+02:00"),
            var("wait_timeout", "1234"),
            var("lc_time_names", "it's"),
            StateChange::Schema("sh`op".into()),
        ]);
        assert_eq!(
            state.replay(),
            Ok(vec![
                "SET SESSION lc_time_names = 'it''s', sql_mode = 'ANSI_QUOTES', \
                 time_zone = '+02:00', wait_timeout = 1234"
                    .to_owned(),
                "USE `sh``op`".to_owned(),
            ])
        );
    }

    #[test]
    fn keeps_the_last_set_names_to_replay_first() {
        let mut state = SessionState::default();
        state.ran("SELECT 1");
        state.ran("SET sql_mode = ''");
        assert!(state.is_empty(), "only SET NAMES is kept as text");
        state.ran("SET NAMES latin1");
        // Its own OK reports the character sets: SET NAMES replays them.
        state.apply(&[var("character_set_client", "utf8mb4")]);
        state.ran("set names utf8mb4 collate utf8mb4_bin;");
        assert_eq!(
            state.replay(),
            Ok(vec!["set names utf8mb4 collate utf8mb4_bin".to_owned()])
        );
        // A later change of one of them is replayed after it.
        state.apply(&[var("character_set_results", "latin1")]);
        assert_eq!(
            state.replay(),
            Ok(vec![
                "set names utf8mb4 collate utf8mb4_bin".to_owned(),
                "SET SESSION character_set_results = 'latin1'".to_owned(),
            ])
        );
    }

    #[test]
    fn refuses_what_it_cannot_quote_for_certain() {
        let mut state = SessionState::default();
        state.apply(&[var("secure_path", "C:\\tmp")]);
        assert_eq!(
            state.replay(),
            Err(NotReplayable::Value("secure_path".into()))
        );
        let mut state = SessionState::default();
        state.apply(&[var("a = 1; DROP TABLE t; --", "x")]);
        assert!(matches!(state.replay(), Err(NotReplayable::Name(_))));
    }
}
