//! Where a backend's answer to one command ends, sans-IO: what a relay
//! needs before it may send the session's next statement elsewhere (or
//! hand the backend session to another client), and the status flags the
//! answer ends with (an open transaction, more results).
//!
//! [`ReplyFramer`] follows the answer packet by packet, from each packet's
//! length and first bytes ([`HEAD`] of them, or the whole payload if
//! shorter), without buffering rows. It knows the shapes of the answers:
//! OK / ERR; result sets (column count, definitions, the EOF between them
//! unless CLIENT_DEPRECATE_EOF, rows, the EOF or OK that ends them) and
//! SERVER_MORE_RESULTS_EXISTS chains (multi-statements, `CALL`);
//! MariaDB's cached metadata (a result without its column definitions);
//! `LOCAL INFILE` requests, after which the server waits for the client's
//! data; COM_STMT_PREPARE's answer; binary rows and cursors; COM_FIELD_LIST;
//! COM_STATISTICS's bare string; 16 MiB packets continued in chunks.

use super::reader::Reader;
use super::{MAX_PAYLOAD_CHUNK, ProtocolError, StatusFlags};

/// The most leading bytes of a packet [`ReplyFramer::packet`] reads.
pub const HEAD: usize = 32;

/// `SERVER_STATUS_CURSOR_EXISTS`: a cursor was opened (COM_STMT_EXECUTE).
const CURSOR_EXISTS: u16 = 0x0040;

/// What a command's answer looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// No answer (COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    Nothing,
    /// OK or ERR (or, for a few old commands, EOF): one packet.
    Status,
    /// A text or binary result: OK, ERR, `LOCAL INFILE`, or result sets.
    Results,
    /// COM_STMT_EXECUTE that opens a cursor: OK, ERR, or the columns of a
    /// result whose rows COM_STMT_FETCH asks for.
    Cursor,
    /// COM_STMT_FETCH: rows, then EOF; or ERR.
    Fetch,
    /// COM_STMT_PREPARE: its OK with the parameter and column definitions,
    /// or ERR.
    Prepare,
    /// COM_FIELD_LIST: column definitions, then EOF; or ERR.
    FieldList,
    /// COM_STATISTICS: one string packet.
    String,
    /// Not framed: the exchange is the proxy's own (COM_CHANGE_USER) or a
    /// stream without end (COM_BINLOG_DUMP).
    Unframed,
}

impl ReplyTo {
    /// The answer shape of the command `payload` (command byte first).
    pub fn of(payload: &[u8]) -> Self {
        match payload.first() {
            Some(0x01 | 0x18 | 0x19) => Self::Nothing,
            Some(0x03 | 0x0a | 0xfa) => Self::Results,
            Some(0x17) if payload.get(5).is_some_and(|f| f & 0x01 != 0) => Self::Cursor,
            Some(0x17) => Self::Results,
            Some(0x1c) => Self::Fetch,
            Some(0x16) => Self::Prepare,
            Some(0x04) => Self::FieldList,
            Some(0x09) => Self::String,
            Some(0x11 | 0x12 | 0x14 | 0x15 | 0x1e) | None => Self::Unframed,
            Some(_) => Self::Status,
        }
    }
}

/// Where an answer stands after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More packets of this answer follow.
    More,
    /// The server asked for a `LOCAL INFILE` and waits for the client's
    /// data (up to its empty packet); its OK or ERR follows.
    WaitsForClient,
    /// The answer is complete; the status flags it ended with (the ones
    /// known before it, for answers that carry none: ERR, COM_STMT_PREPARE).
    Done(StatusFlags),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first packet of a result (or of the whole answer).
    First,
    /// Column definitions still to come, then (unless DEPRECATE_EOF) an EOF.
    Columns { left: u64, cursor: bool },
    /// The EOF after the column definitions.
    ColumnsEof { cursor: bool },
    /// Rows, up to the EOF / OK that ends them.
    Rows,
    /// COM_STMT_PREPARE: parameter definitions, then column definitions.
    Prepared { params: u16, columns: u16 },
    /// The EOF after the parameters (then the columns).
    ParamsEof { columns: u16 },
    /// The EOF after a prepared statement's columns.
    PreparedColumnsEof,
    /// Complete.
    Done,
}

/// Follows one command's answer.
#[derive(Debug, Clone)]
pub struct ReplyFramer {
    to: ReplyTo,
    deprecate_eof: bool,
    state: State,
    status: StatusFlags,
    /// The last packet was a full chunk: the next one continues it.
    continues: bool,
    /// The last packet was an OK packet (which may report session state).
    last_ok: bool,
}

impl ReplyFramer {
    /// A framer for the answer to a command of shape `to`, on a session
    /// with (`deprecate_eof`) or without CLIENT_DEPRECATE_EOF, whose status
    /// was `status` before it.
    pub fn new(to: ReplyTo, deprecate_eof: bool, status: StatusFlags) -> Self {
        let state = match to {
            ReplyTo::Nothing | ReplyTo::Unframed => State::Done,
            ReplyTo::Fetch => State::Rows,
            ReplyTo::FieldList => State::Rows,
            _ => State::First,
        };
        Self {
            to,
            deprecate_eof,
            state,
            status,
            continues: false,
            last_ok: false,
        }
    }

    /// Whether the last packet taken was an OK packet (with 0x00 or, as
    /// the end of rows under CLIENT_DEPRECATE_EOF, 0xFE): the ones that
    /// report session state.
    pub fn was_ok(&self) -> bool {
        self.last_ok
    }

    /// Whether the answer is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next packet of the answer: its payload length `len` and
    /// its first bytes `head` (at least `min(len, HEAD)` of them, for every
    /// packet that does not continue a 16 MiB one).
    pub fn packet(&mut self, len: usize, head: &[u8]) -> Result<Step, ProtocolError> {
        if self.state == State::Done {
            return Err(ProtocolError::Malformed(
                "packet after the end of an answer",
            ));
        }
        let continued = self.continues;
        self.continues = len == MAX_PAYLOAD_CHUNK;
        self.last_ok = false;
        if continued {
            // The rest of a row or definition already counted.
            return Ok(Step::More);
        }
        if head.len() < len.min(HEAD) {
            return Err(ProtocolError::Truncated("answer packet head"));
        }
        let step = self.step(len, head)?;
        if self.continues && self.state == State::Done {
            // Only a row or a definition may be 16 MiB.
            return Err(ProtocolError::Malformed("a long packet ends an answer"));
        }
        Ok(step)
    }

    fn step(&mut self, len: usize, head: &[u8]) -> Result<Step, ProtocolError> {
        let first = head.first().copied();
        match self.state {
            State::First => self.first(len, head),
            State::Columns { left, cursor } => {
                let left = left - 1;
                self.state = match (left, self.deprecate_eof) {
                    // A cursor's definitions are followed by the status
                    // that says it was opened, even with DEPRECATE_EOF.
                    (0, _) if cursor => State::ColumnsEof { cursor },
                    (0, true) => State::Rows,
                    (0, false) => State::ColumnsEof { cursor },
                    _ => State::Columns { left, cursor },
                };
                Ok(Step::More)
            }
            State::ColumnsEof { cursor } if self.deprecate_eof => {
                // Only a cursor's: an OK with 0xFE, or, if no cursor was
                // opened after all, the first row.
                if first != Some(0xfe) || len >= MAX_PAYLOAD_CHUNK {
                    self.state = State::Rows;
                    return self.step(len, head);
                }
                self.status = ok_status(head)?;
                self.last_ok = true;
                self.after_columns(cursor)
            }
            State::ColumnsEof { cursor } => {
                if first != Some(0xfe) || len >= 9 {
                    return Err(ProtocolError::Malformed("EOF after column definitions"));
                }
                self.status = eof_status(head)?;
                self.after_columns(cursor)
            }
            State::Rows => match first {
                Some(0xff) => self.finish(),
                // With DEPRECATE_EOF the end is an OK (headed 0xFE), short
                // or not: its status sits after two length-encoded ints.
                Some(0xfe) if self.deprecate_eof && len < MAX_PAYLOAD_CHUNK => {
                    self.end_of_rows(head, true)
                }
                Some(0xfe) if len < 9 => self.end_of_rows(head, false),
                _ => Ok(Step::More),
            },
            State::Prepared { params, columns } => {
                // One definition: the parameters' come first; the last of
                // each list is followed by an EOF unless DEPRECATE_EOF.
                self.state = match (params, columns) {
                    (p, c) if p > 0 => State::Prepared {
                        params: p - 1,
                        columns: c,
                    },
                    (_, c) => State::Prepared {
                        params: 0,
                        columns: c - 1,
                    },
                };
                if params == 1 && !self.deprecate_eof {
                    self.state = State::ParamsEof { columns };
                    return Ok(Step::More);
                }
                if params == 0 && columns == 1 && !self.deprecate_eof {
                    self.state = State::PreparedColumnsEof;
                    return Ok(Step::More);
                }
                self.after_definitions()
            }
            State::ParamsEof { columns } => {
                expect_eof(first, len)?;
                self.state = State::Prepared { params: 0, columns };
                self.after_definitions()
            }
            State::PreparedColumnsEof => {
                expect_eof(first, len)?;
                self.finish()
            }
            State::Done => unreachable!("checked by packet"),
        }
    }

    /// The first packet of a result (or of the whole answer).
    fn first(&mut self, len: usize, head: &[u8]) -> Result<Step, ProtocolError> {
        let first = head.first().copied();
        match (self.to, first) {
            (ReplyTo::String, _) => self.finish(),
            (_, Some(0xff)) => self.finish(),
            (ReplyTo::Status, Some(0xfe)) if len < 9 => self.eof(head),
            (ReplyTo::Status, Some(0x00)) => self.ok(head),
            (ReplyTo::Status, _) => Err(ProtocolError::Malformed("status answer")),
            (ReplyTo::Prepare, Some(0x00)) => {
                let mut r = Reader::new(head);
                r.take(5, "prepare ok")?;
                let columns = r.u16("prepared columns")?;
                let params = r.u16("prepared parameters")?;
                self.state = State::Prepared { params, columns };
                self.after_definitions()
            }
            (ReplyTo::Prepare, _) => Err(ProtocolError::Malformed("prepare answer")),
            (_, Some(0x00)) => self.ok(head),
            (_, Some(0xfb)) if self.to == ReplyTo::Results => Ok(Step::WaitsForClient),
            (_, Some(0xfe)) => Err(ProtocolError::Malformed("result set header")),
            (_, _) => {
                let mut r = Reader::new(head);
                let count = r.lenenc_int("column count")?;
                if count == 0 {
                    return Err(ProtocolError::Malformed("column count"));
                }
                let cursor = self.to == ReplyTo::Cursor;
                // MARIADB_CLIENT_CACHE_METADATA adds a byte: 0 when the
                // column definitions are left out (the client has them).
                if !r.is_empty() && r.u8("metadata follows")? == 0 {
                    self.state = match (self.deprecate_eof, cursor) {
                        (true, false) => State::Rows,
                        _ => State::ColumnsEof { cursor },
                    };
                    return Ok(Step::More);
                }
                self.state = State::Columns {
                    left: count,
                    cursor,
                };
                Ok(Step::More)
            }
        }
    }

    /// After a prepared statement's OK or one of its definitions: done
    /// when none is left.
    fn after_definitions(&mut self) -> Result<Step, ProtocolError> {
        match self.state {
            State::Prepared {
                params: 0,
                columns: 0,
            } => self.finish(),
            _ => Ok(Step::More),
        }
    }

    /// An OK: the answer ends unless more results follow.
    fn ok(&mut self, head: &[u8]) -> Result<Step, ProtocolError> {
        self.status = ok_status(head)?;
        self.last_ok = true;
        self.next_result()
    }

    /// A classic EOF as a whole answer (old commands).
    fn eof(&mut self, head: &[u8]) -> Result<Step, ProtocolError> {
        self.status = eof_status(head)?;
        self.finish()
    }

    /// The EOF (or, with DEPRECATE_EOF, the OK) after rows.
    fn end_of_rows(&mut self, head: &[u8], ok: bool) -> Result<Step, ProtocolError> {
        self.last_ok = ok;
        self.status = if ok {
            ok_status(head)?
        } else {
            eof_status(head)?
        };
        if self.to == ReplyTo::Fetch || self.to == ReplyTo::FieldList {
            return self.finish();
        }
        self.next_result()
    }

    /// After the status that follows column definitions: a cursor's
    /// answer ends there (its rows come with COM_STMT_FETCH).
    fn after_columns(&mut self, cursor: bool) -> Result<Step, ProtocolError> {
        if cursor && self.status.bits() & CURSOR_EXISTS != 0 {
            return self.finish();
        }
        self.state = State::Rows;
        Ok(Step::More)
    }

    fn next_result(&mut self) -> Result<Step, ProtocolError> {
        if self
            .status
            .contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS)
        {
            self.state = State::First;
            Ok(Step::More)
        } else {
            self.finish()
        }
    }

    fn finish(&mut self) -> Result<Step, ProtocolError> {
        self.state = State::Done;
        Ok(Step::Done(self.status))
    }
}

/// The status flags of an OK (or OK-as-EOF) packet's head.
fn ok_status(head: &[u8]) -> Result<StatusFlags, ProtocolError> {
    let mut r = Reader::new(head);
    r.u8("ok")?;
    r.lenenc_int("affected rows")?;
    r.lenenc_int("last insert id")?;
    Ok(StatusFlags::from_bits_retain(r.u16("status flags")?))
}

/// The status flags of a classic EOF packet.
fn eof_status(head: &[u8]) -> Result<StatusFlags, ProtocolError> {
    let mut r = Reader::new(head);
    r.u8("eof")?;
    r.u16("warnings")?;
    Ok(StatusFlags::from_bits_retain(r.u16("status flags")?))
}

fn expect_eof(first: Option<u8>, len: usize) -> Result<(), ProtocolError> {
    if first == Some(0xfe) && len < 9 {
        Ok(())
    } else {
        Err(ProtocolError::Malformed("EOF after definitions"))
    }
}

#[cfg(test)]
mod tests;
