//! A statement's digest: a hash of its text with literals, comments and
//! spacing normalized, so that every execution of one query shape has the
//! same digest (what a policy's per-statement hook keys on).

/// FNV-1a, 64 bits.
const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// The digest of `text`: string and number literals become `?`, comments
/// go, runs of spacing become one space, letters are folded to lower case
/// (outside quoted identifiers).
pub fn digest(text: &[u8]) -> u64 {
    let mut hash = OFFSET;
    let mut put = |b: u8| {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(PRIME);
    };
    let mut i = 0;
    let mut space = false;
    let mut last = b' ';
    while i < text.len() {
        let b = text[i];
        let next = text.get(i + 1).copied();
        let word_before = last.is_ascii_alphanumeric() || last == b'_';
        let token = match b {
            b'/' if next == Some(b'*') => {
                i = find(text, i + 2, b"*/").map_or(text.len(), |end| end + 2);
                space = true;
                continue;
            }
            b'-' if next == Some(b'-')
                && text.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) =>
            {
                i = find(text, i, b"\n").map_or(text.len(), |end| end + 1);
                space = true;
                continue;
            }
            b'#' => {
                i = find(text, i, b"\n").map_or(text.len(), |end| end + 1);
                space = true;
                continue;
            }
            b'\'' | b'"' => {
                i = after_string(text, i);
                Some(b'?')
            }
            b'`' => {
                let end = super::after_quoted(text, i).unwrap_or(text.len());
                if space {
                    put(b' ');
                    space = false;
                }
                text[i..end].iter().for_each(|c| put(*c));
                last = b'`';
                i = end;
                continue;
            }
            b'0'..=b'9' if !word_before => {
                while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == b'.') {
                    i += 1;
                }
                Some(b'?')
            }
            c if c.is_ascii_whitespace() => {
                space = true;
                i += 1;
                None
            }
            c => {
                i += 1;
                Some(c.to_ascii_lowercase())
            }
        };
        if let Some(t) = token {
            if space && last != b' ' {
                put(b' ');
            }
            space = false;
            put(t);
            last = t;
        }
    }
    hash
}

/// Where the string literal opened at `open` ends (a backslash escapes
/// the next byte, as under the default `sql_mode`; a doubled quote stands
/// for one); the text's end if it does not.
fn after_string(text: &[u8], open: usize) -> usize {
    let quote = text[open];
    let mut i = open + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            c if c == quote && text.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

fn find(text: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    text.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn one_query_shape_one_digest() {
        let d = |s: &str| digest(s.as_bytes());
        let point = d("SELECT c FROM sbtest1 WHERE id=4242");
        assert_eq!(point, d("select  c\nFROM sbtest1 /* hint */ WHERE id=7"));
        assert_eq!(point, d("SELECT c FROM sbtest1 WHERE id=12 -- trailing\n"));
        assert_ne!(point, d("SELECT c FROM sbtest2 WHERE id=4242"));
        assert_ne!(point, d("SELECT d FROM sbtest1 WHERE id=4242"));
        assert_eq!(
            d("INSERT INTO t VALUES ('a', 1.5, \"x\\\"y\")"),
            d("insert into t values ('it''s', 2, 'z')")
        );
        // Quoted identifiers keep their case; a digit inside a name stays.
        assert_ne!(d("SELECT `A` FROM t1"), d("SELECT `a` FROM t1"));
        assert_ne!(d("SELECT a FROM t1"), d("SELECT a FROM t2"));
        // Unterminated quotes and comments end the text; no panic.
        let _ = d("SELECT 'open");
        let _ = d("SELECT /* open");
        let _ = d("");
    }
}
