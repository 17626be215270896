//! A policy of the `statement-router` world: logins are routed as the
//! default policy routes them (`user.<name>`, then `default`), and each
//! statement of a split pool's session goes
//! - to the writer or a reader when it carries a routing hint comment,
//!   `/* route=writer */` or `/* route=reader */`;
//! - to the writer when it names a table of the `writer_tables` setting (a
//!   comma-separated list: tables whose readers must never lag);
//! - else where the host's built-in rule sends it.
//!
//! ```toml
//! [policy.settings]
//! "user.app" = "app"
//! writer_tables = "accounts, ledger"
//! ```

// The generated bindings lift the eight fields of `statement` as arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "statement-router",
});

use std::sync::OnceLock;

use switchyard::policy::host;

struct HintPolicy;

/// The `writer_tables` setting, lower case, read once per instance.
fn writer_tables() -> &'static [String] {
    static TABLES: OnceLock<Vec<String>> = OnceLock::new();
    TABLES.get_or_init(|| {
        host::setting("writer_tables")
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    })
}

/// Whether `text` (lower case) names `table` as a whole word.
fn names(text: &str, table: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    text.match_indices(table).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + table.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

impl Guest for HintPolicy {
    fn route(user: String, _db: Option<String>, _client_addr: String) -> Result<String, String> {
        host::setting(&format!("user.{user}"))
            .or_else(|| host::setting("default"))
            .ok_or_else(|| format!("Switchyard: no pool is configured for user '{user}'"))
    }

    fn route_statement(statement: Statement) -> Decision {
        let text = statement.text.to_ascii_lowercase();
        if text.contains("/* route=writer */") {
            return Decision::Writer;
        }
        if text.contains("/* route=reader */") {
            return Decision::Reader;
        }
        if writer_tables().iter().any(|t| names(&text, t)) {
            return Decision::Writer;
        }
        Decision::Builtin
    }
}

export!(HintPolicy);
