//! RESP2, the Redis protocol, sans IO: commands out, replies in. Only what
//! the fleet store needs: commands are arrays of bulk strings; replies are
//! simple strings, errors, integers, bulk strings and arrays, every length
//! bounded.

/// The longest bulk string a reply may hold.
pub const MAX_BULK: usize = 1 << 20;
/// The most elements an array reply may hold.
pub const MAX_ARRAY: usize = 1 << 16;
/// How deep arrays may nest.
const MAX_DEPTH: usize = 4;
/// The longest line (`+`, `-`, `:` and length lines).
const MAX_LINE: usize = 4096;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK` and the like.
    Simple(String),
    /// `-ERR ...`: the server refused the command.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` bytes, or `$-1` (`None`).
    Bulk(Option<Vec<u8>>),
    /// `*n` values, or `*-1` (`None`).
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The value as an integer (an integer reply, or a bulk or simple
    /// string of one).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            Self::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            Self::Simple(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The value as text (a bulk or simple string).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            Self::Simple(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array reply (none for anything else).
    pub fn items(&self) -> &[Value] {
        match self {
            Self::Array(Some(v)) => v,
            _ => &[],
        }
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// Not RESP, or a length out of bounds.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// `args` as a command: an array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one reply from the start of `buf`: the value and the bytes it
/// took, or `None` if it goes on past `buf`.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    decode_at(buf, 0)
}

fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, RespError> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&buf[..end], end + 2))),
        None if buf.len() > MAX_LINE => Err(RespError::Malformed("line too long")),
        None => Ok(None),
    }
}

fn int(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(RespError::Malformed("not an integer"))
}

fn decode_at(buf: &[u8], depth: usize) -> Result<Option<(Value, usize)>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((text, head)) = line(&buf[1..])? else {
        return Ok(None);
    };
    let head = head + 1;
    let string = || String::from_utf8_lossy(text).into_owned();
    match kind {
        b'+' => Ok(Some((Value::Simple(string()), head))),
        b'-' => Ok(Some((Value::Error(string()), head))),
        b':' => Ok(Some((Value::Int(int(text)?), head))),
        b'$' => {
            let n = int(text)?;
            if n == -1 {
                return Ok(Some((Value::Bulk(None), head)));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Malformed("bulk length"))?;
            if n > MAX_BULK {
                return Err(RespError::Malformed("bulk string too long"));
            }
            let end = head + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string not followed by CRLF"));
            }
            Ok(Some((Value::Bulk(Some(buf[head..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = int(text)?;
            if n == -1 {
                return Ok(Some((Value::Array(None), head)));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Malformed("array length"))?;
            if n > MAX_ARRAY {
                return Err(RespError::Malformed("array too long"));
            }
            if depth >= MAX_DEPTH {
                return Err(RespError::Malformed("arrays nested too deep"));
            }
            let mut items = Vec::with_capacity(n.min(64));
            let mut at = head;
            for _ in 0..n {
                let Some((v, used)) = decode_at(&buf[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(v);
                at += used;
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        _ => Err(RespError::Malformed("unknown reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn replies_whole_and_in_pieces() {
        let text = b"*4\r\n+OK\r\n:-7\r\n$5\r\nhe\r\no\r\n*2\r\n$-1\r\n-ERR no\r\n";
        let (v, used) = decode(text).unwrap().unwrap();
        assert_eq!(used, text.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Simple("OK".into()),
                Value::Int(-7),
                Value::Bulk(Some(b"he\r\no".to_vec())),
                Value::Array(Some(vec![Value::Bulk(None), Value::Error("ERR no".into())])),
            ]))
        );
        for cut in 0..text.len() {
            assert_eq!(decode(&text[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(v.items()[1].as_int(), Some(-7));
        assert_eq!(v.items()[2].as_str(), Some("he\r\no"));
    }

    #[test]
    fn bounds_and_garbage() {
        assert!(decode(b"$1048577\r\n").is_err());
        assert!(decode(b"*65537\r\n").is_err());
        assert!(decode(b"$-2\r\n").is_err());
        assert!(decode(b"$3\r\nabcXY").is_err());
        assert!(decode(b"?x\r\n").is_err());
        assert!(decode(b":12a\r\n").is_err());
        assert!(decode(&[b'+'; 5000]).is_err());
        assert!(decode(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
    }
}
