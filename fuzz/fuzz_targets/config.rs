//! `Config::parse` (TOML, then validation) on arbitrary text: a config or
//! an error whose line and column are inside the text (or, for a file the
//! text names, such as `users_file`, an error of that file).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchyard::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
            // Errors of the text itself (not of a file it names, such as
            // `users_file`) point into it.
            if let ConfigError::Invalid {
                line, column, path, ..
            } = e
                && path == Path::new("fuzz.toml")
            {
                let lines = text.split('\n').count();
                assert!((1..=lines).contains(&line), "line {line} of {lines}");
                let width = text.split('\n').nth(line - 1).map_or(0, str::len);
                assert!(
                    (1..=width + 1).contains(&column),
                    "column {column} of {width}"
                );
            }
        }
    }
});
