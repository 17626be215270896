//! SQL text, sans-IO: where the statements of a COM_QUERY are.
//!
//! A COM_QUERY may hold several statements (CLIENT_MULTI_STATEMENTS), cut at
//! semicolons outside quotes and comments. [`statements`] finds them as the
//! server would, or says it cannot be sure: the proxy then leaves the text
//! as it is. [`classify`] tells what a statement does, [`rule`] where the
//! built-in rule sends it, [`SessionState`] what another backend
//! session needs replayed to match the session, and [`digest`] a hash of
//! its query shape.

mod classify;
mod digest;
mod replay;
mod rule;

use std::ops::Range;

pub use classify::{Class, Kind, Pin, Transaction, classify};
pub use digest::digest;
pub use replay::{NotReplayable, SessionState};
pub use rule::{SessionView, Target, rule};

/// The statements of `text`: for each, the range from its first word (after
/// whitespace and comments) to its last non-blank byte before the `;` that
/// ends it. Blank statements (`;;`, a trailing `;`) are left out.
///
/// `None` when the cut is uncertain: an unterminated quote or comment, an
/// executable comment (`/*! ... */`, `/*M! ... */`, whose text the server
/// runs), or a backslash inside a quoted string (whether it escapes the
/// next quote depends on the session's `sql_mode`).
pub fn statements(text: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut out = Vec::new();
    // Where the current statement's code starts, once it has some.
    let mut start: Option<usize> = None;
    // Its last non-blank byte so far, plus one.
    let mut end = 0;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        match b {
            b';' => {
                if let Some(s) = start.take() {
                    out.push(s..end);
                }
                i += 1;
            }
            b'\'' | b'"' | b'`' => {
                start.get_or_insert(i);
                i = after_quoted(text, i)?;
                end = i;
            }
            b'#' => i = after_line(text, i),
            b'-' if text.get(i + 1) == Some(&b'-')
                && text
                    .get(i + 2)
                    .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) =>
            {
                i = after_line(text, i);
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                let body = &text[i + 2..];
                if body.first() == Some(&b'!') || body.starts_with(b"M!") {
                    return None;
                }
                let close = body.windows(2).position(|w| w == b"*/")?;
                i += 2 + close + 2;
            }
            b if b.is_ascii_whitespace() => i += 1,
            _ => {
                start.get_or_insert(i);
                i += 1;
                end = i;
            }
        }
    }
    if let Some(s) = start {
        out.push(s..end);
    }
    Some(out)
}

/// The index after the quoted token opening at `open`; `None` if it never
/// closes or holds a backslash.
pub(crate) fn after_quoted(text: &[u8], open: usize) -> Option<usize> {
    let quote = text[open];
    let mut i = open + 1;
    loop {
        match *text.get(i)? {
            b'\\' if quote != b'`' => return None,
            // A doubled quote stands for one and does not close.
            c if c == quote && text.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The index of the newline that ends the comment at `i` (or the end).
fn after_line(text: &[u8], i: usize) -> usize {
    text[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(text.len(), |n| i + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements of `sql`, as text.
    fn cut(sql: &str) -> Option<Vec<&str>> {
        statements(sql.as_bytes()).map(|v| v.into_iter().map(|r| &sql[r]).collect())
    }

    #[test]
    fn cuts_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(cut("KILL 5"), Some(vec!["KILL 5"]));
        assert_eq!(
            cut("kill 5; select sleep(0.05)"),
            Some(vec!["kill 5", "select sleep(0.05)"])
        );
        assert_eq!(cut(" ;; KILL 5 ;\n"), Some(vec!["KILL 5"]));
        assert_eq!(cut(""), Some(vec![]));
        assert_eq!(
            cut("SELECT 'a;b', \"c;d\", `e;f`; SELECT 'it''s;'"),
            Some(vec!["SELECT 'a;b', \"c;d\", `e;f`", "SELECT 'it''s;'"])
        );
        assert_eq!(
            cut("/* a; */ KILL 5 # b;\n; -- c;\nSELECT 1"),
            Some(vec!["KILL 5", "SELECT 1"])
        );
        // `--` without a blank after it is two minus signs.
        assert_eq!(
            cut("SELECT 1--1; KILL 5"),
            Some(vec!["SELECT 1--1", "KILL 5"])
        );
        assert_eq!(cut("SELECT 1 --"), Some(vec!["SELECT 1"]));
        // A statement that is only a quoted token.
        assert_eq!(cut("'a';`b`"), Some(vec!["'a'", "`b`"]));
        // A backslash in a backtick-quoted name is plain.
        assert_eq!(cut("SELECT 1 AS `a\\`"), Some(vec!["SELECT 1 AS `a\\`"]));
    }

    #[test]
    fn refuses_what_it_cannot_cut_for_certain() {
        for sql in [
            "SELECT 'open",
            "SELECT \"open",
            "SELECT `open",
            "SELECT 1 /* open",
            "SELECT 1 /*! , 2 */; KILL 5",
            "SELECT 1 /*M!100000 , 2 */",
            "SELECT 'a\\'; KILL 5; '",
        ] {
            assert_eq!(cut(sql), None, "{sql}");
        }
    }

    #[test]
    fn never_panics_on_cut_or_odd_bytes() {
        let samples: [&[u8]; 6] = [b"/", b"/*", b"-", b"--", b"'", b"\xff\xfe;\x00;"];
        for s in samples {
            let _ = statements(s);
        }
        for (i, r) in statements(b"\xff;\x00 x").unwrap().into_iter().enumerate() {
            assert!(r.start < r.end, "statement {i}");
        }
    }
}
