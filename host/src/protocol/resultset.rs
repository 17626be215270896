//! The reply to a COM_QUERY in the text protocol, for Switchyard's own small
//! queries (health checks): OK, ERR, or a result set of column definitions
//! and rows of length-encoded strings. Fed one packet payload at a time.

use super::reader::Reader;
use super::{ErrPacket, ProtocolError};

/// Most columns accepted in a result set.
const MAX_COLUMNS: usize = 512;
/// Most rows accepted in a result set, unless the decoder is told
/// otherwise ([`ResultSetDecoder::with_max_rows`]).
const MAX_ROWS: usize = 1024;

/// A decoded text result set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl TextResult {
    /// The value of column `name` (compared case-insensitively) in row `row`.
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let col = self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))?;
        self.rows.get(row)?.get(col)?.as_deref()
    }

    /// Whether the result has a column called `name`.
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.eq_ignore_ascii_case(name))
    }
}

/// The whole reply to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryReply {
    /// OK: the statement returned no rows.
    Ok,
    /// ERR.
    Err(ErrPacket),
    /// A result set.
    Rows(TextResult),
}

#[derive(Debug)]
enum State {
    Start,
    Columns { remaining: usize },
    ColumnsEof,
    Rows,
}

/// Decodes a query reply packet by packet.
#[derive(Debug)]
pub struct ResultSetDecoder {
    deprecate_eof: bool,
    state: State,
    result: TextResult,
    max_rows: usize,
}

impl ResultSetDecoder {
    /// A decoder for a session with (or without) `CLIENT_DEPRECATE_EOF`.
    pub fn new(deprecate_eof: bool) -> Self {
        Self {
            deprecate_eof,
            state: State::Start,
            result: TextResult::default(),
            max_rows: MAX_ROWS,
        }
    }

    /// The same, accepting up to `max_rows` rows (a reply with more is an
    /// error, never a truncated result).
    pub fn with_max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows;
        self
    }

    /// Takes the next packet's payload; returns the reply once complete.
    pub fn feed(&mut self, payload: &[u8]) -> Result<Option<QueryReply>, ProtocolError> {
        let first = *payload.first().ok_or(ProtocolError::Truncated("reply"))?;
        match self.state {
            State::Start => match first {
                0x00 => Ok(Some(QueryReply::Ok)),
                0xff => Ok(Some(QueryReply::Err(ErrPacket::decode(payload)?))),
                // LOCAL INFILE requests are never expected here.
                0xfb => Err(ProtocolError::Malformed("reply")),
                _ => {
                    let n = Reader::new(payload).lenenc_int("column count")?;
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if n == 0 || n > MAX_COLUMNS {
                        return Err(ProtocolError::Malformed("column count"));
                    }
                    self.state = State::Columns { remaining: n };
                    Ok(None)
                }
            },
            State::Columns { remaining } => {
                let mut r = Reader::new(payload);
                for what in ["catalog", "schema", "table", "org_table"] {
                    r.lenenc_bytes(what)?;
                }
                let name = r.lenenc_bytes("column name")?;
                self.result
                    .columns
                    .push(String::from_utf8_lossy(name).into_owned());
                self.state = match (remaining - 1, self.deprecate_eof) {
                    (0, true) => State::Rows,
                    (0, false) => State::ColumnsEof,
                    (n, _) => State::Columns { remaining: n },
                };
                Ok(None)
            }
            State::ColumnsEof => {
                if !is_eof(payload) {
                    return Err(ProtocolError::Malformed("end of column definitions"));
                }
                self.state = State::Rows;
                Ok(None)
            }
            State::Rows => {
                if first == 0xff {
                    return Ok(Some(QueryReply::Err(ErrPacket::decode(payload)?)));
                }
                if is_eof(payload) {
                    return Ok(Some(QueryReply::Rows(std::mem::take(&mut self.result))));
                }
                if self.result.rows.len() >= self.max_rows {
                    return Err(ProtocolError::Malformed("result set: too many rows"));
                }
                let mut r = Reader::new(payload);
                let mut row = Vec::with_capacity(self.result.columns.len());
                for _ in 0..self.result.columns.len() {
                    if r.remaining() > 0 && payload[payload.len() - r.remaining()] == 0xfb {
                        r.u8("NULL")?;
                        row.push(None);
                    } else {
                        let v = r.lenenc_bytes("row value")?;
                        row.push(Some(String::from_utf8_lossy(v).into_owned()));
                    }
                }
                self.result.rows.push(row);
                Ok(None)
            }
        }
    }
}

/// An EOF packet (under `CLIENT_DEPRECATE_EOF`, the OK with an 0xFE header
/// that ends the rows; a row can start with 0xFE only as an 8-byte length,
/// which a packet this short cannot hold).
fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenenc(s: &[u8]) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s);
        v
    }

    fn column(name: &str) -> Vec<u8> {
        let mut p = Vec::new();
        for part in [&b"def"[..], b"", b"", b"", name.as_bytes(), name.as_bytes()] {
            p.extend(lenenc(part));
        }
        p.extend_from_slice(&[0x0c, 0x21, 0, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
        p
    }

    fn feed_all(d: &mut ResultSetDecoder, packets: &[Vec<u8>]) -> Option<QueryReply> {
        let mut out = None;
        for (i, p) in packets.iter().enumerate() {
            out = d.feed(p).unwrap();
            if out.is_some() {
                assert_eq!(i, packets.len() - 1, "reply ended early");
            }
        }
        out
    }

    #[test]
    fn rows_with_nulls_classic_eof() {
        let eof = vec![0xfe, 0, 0, 2, 0];
        let mut row = lenenc(b"10");
        row.push(0xfb);
        let packets = vec![
            vec![2],
            column("read_only"),
            column("Seconds_Behind_Master"),
            eof.clone(),
            row,
            eof,
        ];
        let r = feed_all(&mut ResultSetDecoder::new(false), &packets).unwrap();
        let QueryReply::Rows(t) = r else {
            panic!("{r:?}")
        };
        assert_eq!(t.get(0, "READ_ONLY"), Some("10"));
        assert_eq!(t.get(0, "seconds_behind_master"), None);
        assert!(t.has_column("Seconds_Behind_Master"));
        assert_eq!(t.rows.len(), 1);
    }

    #[test]
    fn empty_result_with_deprecate_eof() {
        let ok_eof = vec![0xfe, 0, 0, 2, 0, 0, 0];
        assert!(is_eof(&ok_eof));
        let packets = vec![vec![1], column("x"), ok_eof];
        let r = feed_all(&mut ResultSetDecoder::new(true), &packets).unwrap();
        assert_eq!(
            r,
            QueryReply::Rows(TextResult {
                columns: vec!["x".into()],
                rows: vec![]
            })
        );
    }

    #[test]
    fn ok_and_err() {
        assert_eq!(
            ResultSetDecoder::new(false).feed(&[0, 0, 0, 2, 0, 0, 0]),
            Ok(Some(QueryReply::Ok))
        );
        let err = ErrPacket::new(1227, "42000", "denied").encode();
        assert!(matches!(
            ResultSetDecoder::new(false).feed(&err),
            Ok(Some(QueryReply::Err(e))) if e.code == 1227
        ));
    }

    #[test]
    fn hostile_replies_are_errors() {
        let mut d = ResultSetDecoder::new(false);
        assert!(d.feed(&[]).is_err());
        assert!(
            ResultSetDecoder::new(false)
                .feed(&[0xfc, 0xff, 0xff])
                .is_err()
        );
        let mut d = ResultSetDecoder::new(false);
        d.feed(&[1]).unwrap();
        assert!(d.feed(&[5, b'a']).is_err());
        let mut d = ResultSetDecoder::new(true);
        d.feed(&[1]).unwrap();
        d.feed(&column("x")).unwrap();
        assert!(d.feed(&[9, b'a']).is_err());
        for _ in 0..MAX_ROWS {
            d.feed(&lenenc(b"1")).unwrap();
        }
        assert!(d.feed(&lenenc(b"1")).is_err());
        // Random bytes: errors or progress, never a panic.
        let mut seed = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut d = ResultSetDecoder::new(seed & 1 == 0);
            for _ in 0..6 {
                let len = (seed % 24) as usize;
                let p: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (seed >> 33) as u8
                    })
                    .collect();
                if !matches!(d.feed(&p), Ok(None)) {
                    break;
                }
            }
        }
    }
}
