//! What a COM_QUERY does, for statement-level routing: the host's
//! built-in, conservative classification. Anything not known to be a
//! harmless read is a write.
//!
//! It reads the statement's words (outside strings and comments) and knows:
//! the leading keyword; `SELECT ... FOR UPDATE` / `LOCK IN SHARE MODE` /
//! `INTO`; functions with side effects (`GET_LOCK`, `NEXTVAL`,
//! `LAST_INSERT_ID(expr)`, ...) and functions it does not know (a stored
//! function may write); statements that read the previous statement's
//! outcome (`SHOW WARNINGS`, `FOUND_ROWS()`, `ROW_COUNT()`, ...); state
//! that cannot be carried to another backend session (temporary tables,
//! user variables, `GET_LOCK`, `LOCK TABLES`, SQL-level `PREPARE`,
//! `SQL_CALC_FOUND_ROWS`, `HANDLER`); and transaction control.

use super::after_quoted;
#[cfg(doc)]
use super::statements;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read without side effects: a reader may run it (outside a
    /// transaction).
    Read,
    /// Session state (`SET` of session variables, `SET NAMES`, `USE`): every
    /// backend session of the client session needs it.
    Session,
    /// Anything else: the writer.
    Write,
}

/// State a statement leaves on its backend session that cannot be carried
/// to another: the client session stays on the writer from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// `CREATE TEMPORARY TABLE`.
    TemporaryTable,
    /// A user variable set (`SET @x`, `@x :=`, `INTO @x`).
    UserVariable,
    /// `GET_LOCK()`.
    Lock,
    /// `LOCK TABLES`.
    LockTables,
    /// SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE`.
    Prepare,
    /// `SQL_CALC_FOUND_ROWS`.
    FoundRows,
    /// `HANDLER ... OPEN`.
    Handler,
    /// Session state the proxy cannot give another backend session (too
    /// much of it, or a value it cannot quote).
    SessionState,
}

impl Pin {
    /// Every reason, in metric order.
    pub const ALL: [Self; 8] = [
        Self::TemporaryTable,
        Self::UserVariable,
        Self::Lock,
        Self::LockTables,
        Self::Prepare,
        Self::FoundRows,
        Self::Handler,
        Self::SessionState,
    ];

    /// Its name, as metrics and logs print it.
    pub fn label(self) -> &'static str {
        match self {
            Self::TemporaryTable => "temporary_table",
            Self::UserVariable => "user_variable",
            Self::Lock => "get_lock",
            Self::LockTables => "lock_tables",
            Self::Prepare => "sql_prepare",
            Self::FoundRows => "sql_calc_found_rows",
            Self::Handler => "handler",
            Self::SessionState => "session_state",
        }
    }
}

/// Transaction control a statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transaction {
    /// `BEGIN`, `START TRANSACTION` (`READ ONLY` or not).
    Begin { read_only: bool },
    /// `COMMIT`, `ROLLBACK` (not `ROLLBACK TO SAVEPOINT`).
    End,
    /// `SET autocommit = ...`.
    Autocommit(bool),
    /// A statement that commits implicitly (DDL, `LOCK TABLES`, ...).
    ImplicitCommit,
}

/// What the host knows of a COM_QUERY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Where it may run.
    pub kind: Kind,
    /// It reads the outcome of the session's previous statement (`SHOW
    /// WARNINGS`, `FOUND_ROWS()`, `ROW_COUNT()`, `GET DIAGNOSTICS`): it must
    /// run where that statement ran. (`LAST_INSERT_ID()` and `LASTVAL()`
    /// read what the last write set, whenever it ran: the writer's.)
    pub reads_previous: bool,
    /// State it leaves that pins the session to the writer.
    pub pin: Option<Pin>,
    /// Its transaction control.
    pub transaction: Option<Transaction>,
    /// More than one statement (CLIENT_MULTI_STATEMENTS).
    pub multi: bool,
}

impl Class {
    const fn of(kind: Kind) -> Self {
        Self {
            kind,
            reads_previous: false,
            pin: None,
            transaction: None,
            multi: false,
        }
    }
}

/// Classifies the text of a COM_QUERY (without its command byte).
/// Several statements are a write; so is a text that cannot be cut for
/// certain (see [`statements`]).
pub fn classify(text: &[u8]) -> Class {
    // One pass: the tokens of the whole text, cut at its top-level `;`. A
    // token takes two bytes or more, most of the time: one allocation.
    let mut toks: Vec<Token<'_>> = Vec::with_capacity(text.len() / 2 + 1);
    toks.extend(tokens(text));
    if toks.last() == Some(&Token::Uncertain) {
        return Class::of(Kind::Write);
    }
    let mut cut = toks
        .split(|t| *t == Token::Punct(b';'))
        .filter(|s| !s.is_empty());
    let Some(first) = cut.next() else {
        return Class::of(Kind::Write);
    };
    let mut class = statement(first);
    for next in cut {
        let next = statement(next);
        class.kind = Kind::Write;
        class.multi = true;
        class.pin = class.pin.or(next.pin);
        class.transaction = next.transaction.or(class.transaction);
    }
    class
}

/// A token of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A keyword or a name.
    Word(&'a [u8]),
    /// A `backtick`-quoted name.
    Quoted,
    /// A string literal.
    Literal,
    /// A number (or a name starting with a digit).
    Number(&'a [u8]),
    /// `@name` (a user variable).
    UserVar,
    /// `@@` (a system variable follows).
    SysVar,
    /// Any other byte.
    Punct(u8),
    /// What cannot be cut for certain (see [`statements`]): an open quote
    /// or comment, an executable comment, a backslash in a string. The
    /// last token.
    Uncertain,
}

/// The tokens of a COM_QUERY's text; [`Token::Uncertain`] ends them where
/// [`statements`] would refuse the text.
fn tokens(s: &[u8]) -> impl Iterator<Item = Token<'_>> {
    let word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            let b = *s.get(i)?;
            let start = i;
            i += 1;
            match b {
                b if b.is_ascii_whitespace() => {}
                b'\'' | b'"' | b'`' => {
                    let Some(end) = after_quoted(s, start) else {
                        i = s.len();
                        return Some(Token::Uncertain);
                    };
                    i = end;
                    return Some(if b == b'`' {
                        Token::Quoted
                    } else {
                        Token::Literal
                    });
                }
                b'#' => {
                    i = s[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(s.len(), |n| i + n)
                }
                b'-' if s.get(i) == Some(&b'-')
                    && s.get(i + 1)
                        .is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) =>
                {
                    i = s[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(s.len(), |n| i + n);
                }
                b'/' if s.get(i) == Some(&b'*') => {
                    let body = &s[i + 1..];
                    let close = body.windows(2).position(|w| w == b"*/");
                    match close {
                        Some(n) if body.first() != Some(&b'!') && !body.starts_with(b"M!") => {
                            i += 1 + n + 2;
                        }
                        _ => {
                            i = s.len();
                            return Some(Token::Uncertain);
                        }
                    }
                }
                b'@' if s.get(i) == Some(&b'@') => {
                    i += 1;
                    return Some(Token::SysVar);
                }
                b'@' => {
                    match s.get(i) {
                        Some(b'\'' | b'"' | b'`') => {
                            // `@'name'`.
                            let Some(end) = after_quoted(s, i) else {
                                i = s.len();
                                return Some(Token::Uncertain);
                            };
                            i = end;
                        }
                        _ => {
                            while s.get(i).is_some_and(|&c| word_byte(c) || c == b'.') {
                                i += 1;
                            }
                        }
                    }
                    return Some(Token::UserVar);
                }
                b if b.is_ascii_digit() => {
                    while s.get(i).is_some_and(|&c| word_byte(c) || c == b'.') {
                        i += 1;
                    }
                    return Some(Token::Number(&s[start..i]));
                }
                b if word_byte(b) => {
                    while s.get(i).is_some_and(|&c| word_byte(c)) {
                        i += 1;
                    }
                    return Some(Token::Word(&s[start..i]));
                }
                b => return Some(Token::Punct(b)),
            }
        }
    })
}

/// `word` in upper case, if it is short enough to be a keyword or a
/// built-in function.
fn upper(word: &[u8]) -> Option<([u8; 32], usize)> {
    let mut buf = [0u8; 32];
    buf.get_mut(..word.len())?
        .iter_mut()
        .zip(word)
        .for_each(|(d, s)| *d = s.to_ascii_uppercase());
    Some((buf, word.len()))
}

/// Whether `token` is the keyword `kw` (upper case).
fn is(token: Option<&Token<'_>>, kw: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

/// One statement's class, from its tokens.
fn statement(toks: &[Token<'_>]) -> Class {
    let first = toks.first();
    let mut class = match first {
        Some(Token::Word(w)) => by_keyword(w, toks),
        Some(Token::Punct(b'(')) => Class::of(Kind::Read),
        _ => Class::of(Kind::Write),
    };
    scan_words(toks, &mut class);
    class
}

/// The class a statement's leading keyword gives it (before
/// [`scan_words`]).
fn by_keyword(first: &[u8], toks: &[Token<'_>]) -> Class {
    let Some((buf, n)) = upper(first) else {
        return Class::of(Kind::Write);
    };
    let second = toks.get(1);
    let mut class = Class::of(Kind::Write);
    match &buf[..n] {
        b"SELECT" | b"WITH" | b"VALUES" => class.kind = Kind::Read,
        b"SHOW" => show(toks, &mut class),
        b"DESC" | b"DESCRIBE" | b"EXPLAIN" => class.kind = Kind::Read,
        b"SET" => set(toks, &mut class),
        b"USE" => class.kind = Kind::Session,
        b"BEGIN" if !is(second, "NOT") => {
            class.transaction = Some(Transaction::Begin { read_only: false });
        }
        b"START" if is(second, "TRANSACTION") => {
            let read_only = toks
                .windows(2)
                .any(|w| is(w.first(), "READ") && is(w.get(1), "ONLY"));
            class.transaction = Some(Transaction::Begin { read_only });
        }
        b"COMMIT" => class.transaction = Some(Transaction::End),
        b"ROLLBACK" if !toks.iter().any(|t| is(Some(t), "TO")) => {
            class.transaction = Some(Transaction::End);
        }
        b"CREATE" => {
            if toks.iter().take(4).any(|t| is(Some(t), "TEMPORARY")) {
                class.pin = Some(Pin::TemporaryTable);
            } else {
                class.transaction = Some(Transaction::ImplicitCommit);
            }
        }
        b"DROP" if is(second, "PREPARE") => class.pin = Some(Pin::Prepare),
        b"DROP" if !is(second, "TEMPORARY") => {
            class.transaction = Some(Transaction::ImplicitCommit);
        }
        b"LOCK" => {
            class.pin = Some(Pin::LockTables);
            class.transaction = Some(Transaction::ImplicitCommit);
        }
        b"ALTER" | b"RENAME" | b"TRUNCATE" | b"GRANT" | b"REVOKE" | b"UNLOCK" | b"INSTALL"
        | b"UNINSTALL" | b"ANALYZE" | b"OPTIMIZE" | b"REPAIR" => {
            class.transaction = Some(Transaction::ImplicitCommit);
        }
        b"PREPARE" | b"EXECUTE" | b"DEALLOCATE" => class.pin = Some(Pin::Prepare),
        b"HANDLER" => class.pin = Some(Pin::Handler),
        b"GET" if toks.iter().take(3).any(|t| is(Some(t), "DIAGNOSTICS")) => {
            class.reads_previous = true;
        }
        _ => {}
    }
    class
}

/// `SHOW`: the statements that read the catalogue are reads; `SHOW
/// WARNINGS` / `ERRORS` read the previous statement's outcome; the rest
/// (replication and server status, process lists) belong to the writer.
fn show(toks: &[Token<'_>], class: &mut Class) {
    let mut words = toks[1..].iter().filter_map(|t| match t {
        Token::Word(w) => upper(w),
        _ => None,
    });
    let mut next = words.next();
    if next.as_ref().is_some_and(|(b, n)| &b[..*n] == b"FULL") {
        next = words.next();
    }
    let Some((buf, n)) = next else {
        return;
    };
    match &buf[..n] {
        b"WARNINGS" | b"ERRORS" | b"COUNT" => {
            class.reads_previous = true;
            class.kind = Kind::Read;
        }
        b"TABLES" | b"COLUMNS" | b"FIELDS" | b"DATABASES" | b"SCHEMAS" | b"CREATE" | b"INDEX"
        | b"INDEXES" | b"KEYS" | b"TABLE" | b"CHARACTER" | b"CHARSET" | b"COLLATION"
        | b"ENGINES" | b"FUNCTION" | b"PROCEDURE" | b"TRIGGERS" | b"EVENTS" | b"VARIABLES"
        | b"PLUGINS" | b"PRIVILEGES" => class.kind = Kind::Read,
        _ => {}
    }
}

/// `SET`: session variables are session state; `GLOBAL`, passwords, roles
/// and `SET STATEMENT` belong to the writer; user variables pin;
/// `autocommit` is transaction control.
fn set(toks: &[Token<'_>], class: &mut Class) {
    class.kind = Kind::Session;
    // Items are cut at commas outside parentheses.
    let mut depth = 0usize;
    let items = toks[1..].split(|t| {
        match t {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth = depth.saturating_sub(1),
            _ => {}
        }
        depth == 0 && *t == Token::Punct(b',')
    });
    for item in items {
        // The variable's name, after `@@`, `SESSION` / `LOCAL` and a dot.
        let mut name = item.iter().filter(|t| {
            !matches!(t, Token::SysVar | Token::Punct(b'.'))
                && !is(Some(t), "SESSION")
                && !is(Some(t), "LOCAL")
        });
        match name.next() {
            Some(Token::UserVar) => {
                class.pin = Some(Pin::UserVariable);
                class.kind = Kind::Write;
            }
            Some(Token::Word(w)) => {
                let Some((buf, n)) = upper(w) else { continue };
                match &buf[..n] {
                    b"GLOBAL" | b"PASSWORD" | b"ROLE" | b"DEFAULT" | b"STATEMENT" => {
                        class.kind = Kind::Write;
                    }
                    b"AUTOCOMMIT" => {
                        let value =
                            name.find(|t| **t != Token::Punct(b'=') && **t != Token::Punct(b':'));
                        let on = match value {
                            Some(Token::Word(v)) => {
                                if v.eq_ignore_ascii_case(b"ON") || v.eq_ignore_ascii_case(b"TRUE")
                                {
                                    Some(true)
                                } else if v.eq_ignore_ascii_case(b"OFF")
                                    || v.eq_ignore_ascii_case(b"FALSE")
                                {
                                    Some(false)
                                } else {
                                    None
                                }
                            }
                            Some(Token::Number(b"1")) => Some(true),
                            Some(Token::Number(b"0")) => Some(false),
                            _ => None,
                        };
                        match on {
                            Some(on) => class.transaction = Some(Transaction::Autocommit(on)),
                            None => class.kind = Kind::Write,
                        }
                    }
                    _ => {}
                }
            }
            // Anything else (`SET` alone, odd tokens): the writer's.
            _ => class.kind = Kind::Write,
        }
    }
}

/// What any statement's words add: side-effect and unknown functions,
/// locking reads, `INTO`, user variable assignments, the pins, and reads of
/// the previous statement's outcome.
fn scan_words(toks: &[Token<'_>], class: &mut Class) {
    // Reads and session state: what could make them the writer's.
    let read = class.kind != Kind::Write;
    for (i, t) in toks.iter().enumerate() {
        let next = toks.get(i + 1);
        match t {
            Token::UserVar if next == Some(&Token::Punct(b':')) => {
                class.pin = Some(Pin::UserVariable);
                class.kind = Kind::Write;
            }
            Token::Word(w) => {
                let call = next == Some(&Token::Punct(b'('));
                // Most words are names: only calls and words as long as
                // the keywords below are looked at.
                if !call && !matches!(w.len(), 4..=8 | 19) {
                    continue;
                }
                let Some((buf, n)) = upper(w) else {
                    if read && call {
                        class.kind = Kind::Write;
                    }
                    continue;
                };
                let word = &buf[..n];
                let qualified = i > 0 && toks[i - 1] == Token::Punct(b'.');
                match word {
                    b"SQL_CALC_FOUND_ROWS" => {
                        class.pin = Some(Pin::FoundRows);
                        class.kind = Kind::Write;
                    }
                    b"INTO" if read => {
                        class.kind = Kind::Write;
                        if toks[i + 1..].contains(&Token::UserVar) {
                            class.pin = Some(Pin::UserVariable);
                        }
                    }
                    b"UPDATE" | b"DELETE" | b"INSERT" | b"REPLACE" | b"SHARE" | b"ANALYZE"
                        if read =>
                    {
                        class.kind = Kind::Write;
                    }
                    b"NEXT" | b"PREVIOUS" if is(next, "VALUE") => class.kind = Kind::Write,
                    _ if call && !qualified => function(word, class),
                    _ if call && read => class.kind = Kind::Write,
                    _ => {}
                }
            }
            Token::Quoted if read && next == Some(&Token::Punct(b'(')) => {
                class.kind = Kind::Write;
            }
            _ => {}
        }
    }
}

/// A call of `name` (upper case).
fn function(name: &[u8], class: &mut Class) {
    match name {
        b"GET_LOCK" => {
            class.pin = Some(Pin::Lock);
            class.kind = Kind::Write;
        }
        b"FOUND_ROWS" | b"ROW_COUNT" => class.reads_previous = true,
        // The session's last insert id and sequence value outlive the
        // statement that set them, and only the writer sets them: the
        // writer's, not the previous statement's backend.
        b"LAST_INSERT_ID" | b"LASTVAL" => class.kind = Kind::Write,
        _ if class.kind == Kind::Write => {}
        _ if harmless(name) => {}
        // Side effects (LAST_INSERT_ID(expr), NEXTVAL, RELEASE_LOCK, ...),
        // a backend's own values (CONNECTION_ID), or a function this list
        // does not know (a stored function may write): the writer's.
        _ => class.kind = Kind::Write,
    }
}

/// Whether `name` (upper case), followed by `(`, is a keyword or a
/// built-in function without side effects.
fn harmless(name: &[u8]) -> bool {
    name.starts_with(b"JSON_") || name.starts_with(b"ST_") || HARMLESS.binary_search(&name).is_ok()
}

/// Keywords that take `(` and built-in functions without side effects,
/// sorted.
const HARMLESS: &[&[u8]] = &[
    b"ABS",
    b"ACOS",
    b"ADDDATE",
    b"ADDTIME",
    b"AES_DECRYPT",
    b"AES_ENCRYPT",
    b"AGAINST",
    b"ALL",
    b"AND",
    b"ANY",
    b"AS",
    b"ASCII",
    b"ASIN",
    b"ATAN",
    b"ATAN2",
    b"AVG",
    b"BETWEEN",
    b"BIN",
    b"BINARY",
    b"BIT_AND",
    b"BIT_COUNT",
    b"BIT_LENGTH",
    b"BIT_OR",
    b"BIT_XOR",
    b"BY",
    b"CASE",
    b"CAST",
    b"CEIL",
    b"CEILING",
    b"CHAR",
    b"CHARACTER_LENGTH",
    b"CHARSET",
    b"CHAR_LENGTH",
    b"CHR",
    b"COALESCE",
    b"COERCIBILITY",
    b"COLLATION",
    b"COMPRESS",
    b"CONCAT",
    b"CONCAT_WS",
    b"CONV",
    b"CONVERT",
    b"CONVERT_TZ",
    b"COS",
    b"COT",
    b"COUNT",
    b"CRC32",
    b"CUME_DIST",
    b"CURDATE",
    b"CURRENT_DATE",
    b"CURRENT_TIME",
    b"CURRENT_TIMESTAMP",
    b"CURRENT_USER",
    b"CURTIME",
    b"DATABASE",
    b"DATE",
    b"DATEDIFF",
    b"DATE_ADD",
    b"DATE_FORMAT",
    b"DATE_SUB",
    b"DAY",
    b"DAYNAME",
    b"DAYOFMONTH",
    b"DAYOFWEEK",
    b"DAYOFYEAR",
    b"DEGREES",
    b"DENSE_RANK",
    b"DISTINCT",
    b"DIV",
    b"ELSE",
    b"ELT",
    b"EXCEPT",
    b"EXISTS",
    b"EXP",
    b"EXPORT_SET",
    b"EXTRACT",
    b"FIELD",
    b"FIND_IN_SET",
    b"FIRST_VALUE",
    b"FLOOR",
    b"FORCE",
    b"FORMAT",
    b"FROM",
    b"FROM_BASE64",
    b"FROM_DAYS",
    b"FROM_UNIXTIME",
    b"GREATEST",
    b"GROUP_CONCAT",
    b"HAVING",
    b"HEX",
    b"HOUR",
    b"IF",
    b"IFNULL",
    b"IGNORE",
    b"IN",
    b"INDEX",
    b"INET6_ATON",
    b"INET6_NTOA",
    b"INET_ATON",
    b"INET_NTOA",
    b"INSTR",
    b"INTERSECT",
    b"INTERVAL",
    b"IS",
    b"ISNULL",
    b"IS_IPV4",
    b"IS_IPV6",
    b"JOIN",
    b"KEY",
    b"LAG",
    b"LAST_DAY",
    b"LAST_VALUE",
    b"LCASE",
    b"LEAD",
    b"LEAST",
    b"LEFT",
    b"LENGTH",
    b"LIKE",
    b"LIMIT",
    b"LN",
    b"LOCALTIME",
    b"LOCALTIMESTAMP",
    b"LOCATE",
    b"LOG",
    b"LOG10",
    b"LOG2",
    b"LOWER",
    b"LPAD",
    b"LTRIM",
    b"MAKEDATE",
    b"MAKETIME",
    b"MAKE_SET",
    b"MATCH",
    b"MAX",
    b"MD5",
    b"MEDIAN",
    b"MICROSECOND",
    b"MIN",
    b"MINUTE",
    b"MOD",
    b"MONTH",
    b"MONTHNAME",
    b"NOT",
    b"NOW",
    b"NTH_VALUE",
    b"NTILE",
    b"NULLIF",
    b"OCT",
    b"OCTET_LENGTH",
    b"ON",
    b"OR",
    b"ORD",
    b"OVER",
    b"PARTITION",
    b"PERCENTILE_CONT",
    b"PERCENTILE_DISC",
    b"PERCENT_RANK",
    b"PERIOD_ADD",
    b"PERIOD_DIFF",
    b"PI",
    b"POSITION",
    b"POW",
    b"POWER",
    b"QUARTER",
    b"QUOTE",
    b"RADIANS",
    b"RAND",
    b"RANK",
    b"REGEXP",
    b"REGEXP_INSTR",
    b"REGEXP_REPLACE",
    b"REGEXP_SUBSTR",
    b"REPEAT",
    b"REVERSE",
    b"RIGHT",
    b"RLIKE",
    b"ROUND",
    b"ROW",
    b"ROW_NUMBER",
    b"RPAD",
    b"RTRIM",
    b"SECOND",
    b"SEC_TO_TIME",
    b"SELECT",
    b"SHA",
    b"SHA1",
    b"SHA2",
    b"SIGN",
    b"SIN",
    b"SOME",
    b"SOUNDEX",
    b"SPACE",
    b"SQRT",
    b"STD",
    b"STDDEV",
    b"STDDEV_POP",
    b"STDDEV_SAMP",
    b"STRCMP",
    b"STR_TO_DATE",
    b"SUBDATE",
    b"SUBSTR",
    b"SUBSTRING",
    b"SUBSTRING_INDEX",
    b"SUBTIME",
    b"SUM",
    b"SYSDATE",
    b"TAN",
    b"THEN",
    b"TIME",
    b"TIMEDIFF",
    b"TIMESTAMP",
    b"TIMESTAMPADD",
    b"TIMESTAMPDIFF",
    b"TIME_FORMAT",
    b"TIME_TO_SEC",
    b"TO_BASE64",
    b"TO_DAYS",
    b"TO_SECONDS",
    b"TRIM",
    b"TRUNCATE",
    b"UCASE",
    b"UNCOMPRESS",
    b"UNCOMPRESSED_LENGTH",
    b"UNHEX",
    b"UNION",
    b"UNIX_TIMESTAMP",
    b"UPPER",
    b"USE",
    b"USER",
    b"USING",
    b"UTC_DATE",
    b"UTC_TIME",
    b"UTC_TIMESTAMP",
    b"UUID",
    b"VALUES",
    b"VARIANCE",
    b"VAR_POP",
    b"VAR_SAMP",
    b"VERSION",
    b"WEEK",
    b"WEEKDAY",
    b"WEEKOFYEAR",
    b"WEIGHT_STRING",
    b"WHEN",
    b"WHERE",
    b"WITH",
    b"XOR",
    b"YEAR",
    b"YEARWEEK",
];

#[cfg(test)]
mod tests;
