//! Session state tracking (CLIENT_SESSION_TRACK): what an OK packet says
//! changed in the session, which statement-level routing follows rather
//! than parsing SQL: system variables (with `last_gtid` among them, a
//! write's GTID on MariaDB), the current schema, and the transaction state.
//!
//! The layout after an OK's warnings, with CLIENT_SESSION_TRACK: the info
//! (a length-encoded string), then, when the status has
//! SERVER_SESSION_STATE_CHANGED, one length-encoded block of entries, each
//! a type byte and length-encoded data. Without CLIENT_SESSION_TRACK the
//! rest of the packet is the info and nothing is tracked.

use super::reader::Reader;
use super::{CapabilityFlags, ProtocolError, StatusFlags};

/// `SESSION_TRACK_SYSTEM_VARIABLES`.
const SYSTEM_VARIABLES: u8 = 0;
/// `SESSION_TRACK_SCHEMA`.
const SCHEMA: u8 = 1;
/// `SESSION_TRACK_STATE_CHANGE`.
const STATE_CHANGE: u8 = 2;
/// `SESSION_TRACK_GTIDS` (MySQL; MariaDB reports `last_gtid` as a variable).
const GTIDS: u8 = 3;
/// `SESSION_TRACK_TRANSACTION_CHARACTERISTICS`.
const TRANSACTION_CHARACTERISTICS: u8 = 4;
/// `SESSION_TRACK_TRANSACTION_STATE` (MySQL's
/// `SESSION_TRACK_TRANSACTION_TYPE`).
const TRANSACTION_STATE: u8 = 5;

/// One change an OK packet reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// A system variable's new value (`session_track_system_variables`).
    SystemVariable {
        /// Its name, as the server spells it.
        name: String,
        /// Its value, as text.
        value: String,
    },
    /// The current schema (`session_track_schema`).
    Schema(String),
    /// Some session state changed (`session_track_state_change`).
    StateChanged,
    /// GTIDs, as MySQL reports them (raw data).
    Gtids(Vec<u8>),
    /// The statements that would recreate the transaction's
    /// characteristics (`session_track_transaction_info =
    /// CHARACTERISTICS`).
    TransactionCharacteristics(String),
    /// The transaction's state (`session_track_transaction_info = STATE`).
    TransactionState(TransactionState),
    /// An entry of a type this does not know (its data skipped).
    Other(u8),
}

/// The eight-character transaction state: each position is a letter or
/// `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionState(pub [u8; 8]);

impl TransactionState {
    /// A transaction is open (`T` explicit, `I` implicit).
    pub fn open(&self) -> bool {
        matches!(self.0[0], b'T' | b'I')
    }

    /// It has written (`w` non-transactional, `W` transactional tables).
    pub fn wrote(&self) -> bool {
        self.0[3] == b'w' || self.0[4] == b'W'
    }

    /// `LOCK TABLES` is in force (`L`).
    pub fn locked_tables(&self) -> bool {
        self.0[7] == b'L'
    }
}

/// The session state changes in an OK packet's payload (0x00 or 0xFE
/// header) of a session with capabilities `caps`; empty when it reports
/// none.
pub fn state_changes(
    payload: &[u8],
    caps: CapabilityFlags,
) -> Result<Vec<StateChange>, ProtocolError> {
    let mut r = Reader::new(payload);
    if !matches!(r.u8("ok")?, 0x00 | 0xfe) {
        return Err(ProtocolError::Malformed("ok packet"));
    }
    r.lenenc_int("affected rows")?;
    r.lenenc_int("last insert id")?;
    let status = StatusFlags::from_bits_retain(r.u16("status flags")?);
    r.u16("warnings")?;
    if !caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK) {
        return Ok(Vec::new());
    }
    if r.is_empty() {
        // No info at all: some servers end the OK here.
        return Ok(Vec::new());
    }
    r.lenenc_bytes("info")?;
    if !status.contains(StatusFlags::SERVER_SESSION_STATE_CHANGED) {
        return Ok(Vec::new());
    }
    let mut block = Reader::new(r.lenenc_bytes("session state")?);
    let mut changes = Vec::new();
    while !block.is_empty() {
        let kind = block.u8("session state type")?;
        let mut data = Reader::new(block.lenenc_bytes("session state data")?);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        changes.push(match kind {
            SYSTEM_VARIABLES => StateChange::SystemVariable {
                name: text(data.lenenc_bytes("variable name")?),
                value: text(data.lenenc_bytes("variable value")?),
            },
            SCHEMA => StateChange::Schema(text(data.lenenc_bytes("schema")?)),
            STATE_CHANGE => StateChange::StateChanged,
            GTIDS => StateChange::Gtids(data.rest().to_vec()),
            TRANSACTION_CHARACTERISTICS => {
                StateChange::TransactionCharacteristics(text(data.lenenc_bytes("characteristics")?))
            }
            TRANSACTION_STATE => {
                let state = data.lenenc_bytes("transaction state")?;
                let state: [u8; 8] = state
                    .try_into()
                    .map_err(|_| ProtocolError::Malformed("transaction state"))?;
                StateChange::TransactionState(TransactionState(state))
            }
            other => StateChange::Other(other),
        });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACK: CapabilityFlags = CapabilityFlags::CLIENT_SESSION_TRACK;

    /// An OK with `status`, the info `info` and the state block `state`.
    fn ok(status: u16, info: &[u8], state: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![0x00, 1, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p.push(u8::try_from(info.len()).unwrap());
        p.extend_from_slice(info);
        if let Some(state) = state {
            p.push(u8::try_from(state.len()).unwrap());
            p.extend_from_slice(state);
        }
        p
    }

    #[test]
    fn reads_every_kind_of_entry() {
        let mut state = Vec::new();
        // last_gtid = 0-1-42
        state.extend_from_slice(b"\x00\x11\x09last_gtid\x060-1-42");
        state.extend_from_slice(b"\x01\x05\x04shop");
        state.extend_from_slice(b"\x02\x02\x011");
        state.extend_from_slice(b"\x05\x09\x08T___W___");
        state.extend_from_slice(b"\x04\x13\x12START TRANSACTION;");
        state.extend_from_slice(b"\x09\x01\x00");
        let changed = 0x4000 | 0x0001;
        let got = state_changes(&ok(changed, b"", Some(&state)), TRACK).unwrap();
        assert_eq!(
            got,
            [
                StateChange::SystemVariable {
                    name: "last_gtid".into(),
                    value: "0-1-42".into()
                },
                StateChange::Schema("shop".into()),
                StateChange::StateChanged,
                StateChange::TransactionState(TransactionState(*b"T___W___")),
                StateChange::TransactionCharacteristics("START TRANSACTION;".into()),
                StateChange::Other(9),
            ]
        );
        let StateChange::TransactionState(t) = got[3] else {
            unreachable!()
        };
        assert!(t.open() && t.wrote() && !t.locked_tables());
    }

    #[test]
    fn nothing_without_the_flag_or_the_capability() {
        let state = b"\x01\x05\x04shop";
        // The status does not say the state changed: the block is not read.
        assert_eq!(state_changes(&ok(0, b"x", Some(state)), TRACK), Ok(vec![]));
        // Without CLIENT_SESSION_TRACK the rest is the info.
        let without = ok(0x4000, b"Rows matched: 1", Some(state));
        assert_eq!(
            state_changes(&without, CapabilityFlags::empty()),
            Ok(vec![])
        );
        // An OK that ends after its warnings.
        assert_eq!(
            state_changes(b"\x00\x00\x00\x02\x40\x00\x00", TRACK),
            Ok(vec![])
        );
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        for bad in [
            // The block is longer than the packet.
            ok(0x4000, b"", None)
                .into_iter()
                .chain([9, 1])
                .collect::<Vec<u8>>(),
            // An entry's data is longer than the block.
            ok(0x4000, b"", Some(b"\x01\x09\x04shop")),
            // A variable without its value.
            ok(0x4000, b"", Some(b"\x00\x05\x04name")),
            // A transaction state that is not 8 characters.
            ok(0x4000, b"", Some(b"\x05\x04\x03T__")),
            // Not an OK.
            vec![0xff, 0, 0],
        ] {
            assert!(state_changes(&bad, TRACK).is_err(), "{bad:?}");
        }
    }
}
