//! The built-in statement rule: where a statement of a session goes, from
//! what [`classify`](super::classify) says of it and what the session knows.
//! A pure function, so that the relay, a policy's "use the built-in rule"
//! and `switchyard policy route --statement` give the same answer.
//!
//! In order: a pinned session, or a statement that pins it, stays on the
//! writer; `SET autocommit` goes to the writer alone (a reader never holds a
//! transaction); other session state goes to every backend session; a read of the
//! previous statement's outcome goes where that statement ran; `START
//! TRANSACTION READ ONLY` outside a transaction may run on a reader; inside
//! a transaction everything goes where it runs; with autocommit off a
//! statement starts one (the writer's); a read goes to a reader; the rest to
//! the writer.

use super::{Class, Kind, Pin, Transaction};

/// Where a statement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The writer's backend session.
    Writer,
    /// A reader's backend session.
    Reader,
    /// Every backend session the client session holds (the ones it opens
    /// later get it replayed).
    All,
}

impl Target {
    /// Its name, as the CLI and metrics print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writer => "writer",
            Self::Reader => "reader",
            Self::All => "all",
        }
    }
}

/// What the session knows when a statement comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionView {
    /// A transaction is open (the last status had SERVER_STATUS_IN_TRANS).
    pub in_transaction: bool,
    /// The open transaction is `READ ONLY` and runs on a reader.
    pub read_only_transaction: bool,
    /// Autocommit is off: the next statement starts a transaction.
    pub autocommit_off: bool,
    /// Why the session is pinned to the writer, if it is.
    pub pinned: Option<Pin>,
    /// Where the previous statement ran (`None`: nowhere yet).
    pub previous: Option<Target>,
}

/// Where `class` goes in a session that knows `session`, and why.
pub fn rule(class: &Class, session: &SessionView) -> (Target, &'static str) {
    if session.pinned.is_some() {
        return (Target::Writer, "the session is pinned to the writer");
    }
    if class.pin.is_some() {
        return (Target::Writer, "it pins the session to the writer");
    }
    if let Some(Transaction::Autocommit(_)) = class.transaction {
        return (
            Target::Writer,
            "autocommit is the writer's: a reader never holds a transaction",
        );
    }
    if class.kind == Kind::Session {
        return (Target::All, "session state, for every backend session");
    }
    if class.reads_previous {
        let target = match session.previous {
            Some(Target::Reader) => Target::Reader,
            _ => Target::Writer,
        };
        return (target, "it reads the previous statement's outcome");
    }
    if session.in_transaction {
        return if session.read_only_transaction {
            (Target::Reader, "inside a read-only transaction")
        } else {
            (Target::Writer, "inside a transaction")
        };
    }
    if class.transaction == Some(Transaction::Begin { read_only: true }) {
        return (Target::Reader, "a read-only transaction");
    }
    if session.autocommit_off {
        return (Target::Writer, "autocommit is off: it starts a transaction");
    }
    match class.kind {
        Kind::Read => (Target::Reader, "a read outside a transaction"),
        _ => (Target::Writer, "not known to be a harmless read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify;

    fn route(sql: &str, session: SessionView) -> Target {
        rule(&classify(sql.as_bytes()), &session).0
    }

    #[test]
    fn reads_outside_transactions_go_to_readers() {
        let idle = SessionView::default();
        assert_eq!(route("SELECT * FROM t", idle), Target::Reader);
        assert_eq!(route("SELECT * FROM t FOR UPDATE", idle), Target::Writer);
        assert_eq!(route("INSERT INTO t VALUES (1)", idle), Target::Writer);
        assert_eq!(route("SET NAMES utf8mb4", idle), Target::All);
        assert_eq!(route("START TRANSACTION READ ONLY", idle), Target::Reader);
        assert_eq!(route("BEGIN", idle), Target::Writer);
        assert_eq!(route("SET autocommit = 0", idle), Target::Writer);
        assert_eq!(
            route("SET autocommit = 1, sql_mode = ''", idle),
            Target::Writer
        );
    }

    #[test]
    fn transactions_autocommit_pins_and_previous_outcomes() {
        let in_trans = SessionView {
            in_transaction: true,
            ..SessionView::default()
        };
        assert_eq!(route("SELECT 1", in_trans), Target::Writer);
        let read_only = SessionView {
            read_only_transaction: true,
            ..in_trans
        };
        assert_eq!(route("SELECT 1", read_only), Target::Reader);
        assert_eq!(route("COMMIT", read_only), Target::Reader);
        let autocommit_off = SessionView {
            autocommit_off: true,
            ..SessionView::default()
        };
        assert_eq!(route("SELECT 1", autocommit_off), Target::Writer);
        let pinned = SessionView {
            pinned: Some(Pin::TemporaryTable),
            ..SessionView::default()
        };
        assert_eq!(route("SELECT 1", pinned), Target::Writer);
        assert_eq!(route("SET NAMES utf8mb4", pinned), Target::Writer);
        assert_eq!(
            route("SELECT @x := 1", SessionView::default()),
            Target::Writer
        );
        let after_read = SessionView {
            previous: Some(Target::Reader),
            ..SessionView::default()
        };
        assert_eq!(route("SHOW WARNINGS", after_read), Target::Reader);
        assert_eq!(
            route("SELECT FOUND_ROWS()", SessionView::default()),
            Target::Writer
        );
        // The last insert id is the writer's, whatever ran last.
        assert_eq!(route("SELECT LAST_INSERT_ID()", after_read), Target::Writer);
    }
}
