//! Secrets the configuration reads from files of their own: more accounts
//! (`users_file`), a service account's `SHA1(password)`
//! (`password_sha1_file` of `[monitor]` and `[users]`) and the fleet
//! store's password (`[fleet] password_file`). With them the configuration
//! file holds no secret and can be public (a Kubernetes ConfigMap) while
//! these files are secret (a Kubernetes Secret).
//!
//! They are read as part of [`Config::parse`], so a reload reads them
//! again and a file that fails changes nothing.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Config, ConfigError, UserConfig, Users, check_accounts, line_col};
use crate::secret::Secret;

/// What went wrong reading a secret file.
pub(super) enum SecretFileError {
    /// In the configuration file itself, at this span.
    Here(Option<Range<usize>>, String),
    /// In (or reading) another file.
    Elsewhere(ConfigError),
}

impl SecretFileError {
    /// As an error of the configuration, `invalid` placing those of its own.
    pub(super) fn into_config_error(
        self,
        invalid: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
    ) -> ConfigError {
        match self {
            Self::Here(span, message) => invalid(span, message),
            Self::Elsewhere(e) => e,
        }
    }
}

/// The most a `users_file` may hold.
const USERS_FILE_MAX: u64 = 4 << 20;
/// The most a password file may hold.
const PASSWORD_FILE_MAX: u64 = 4096;

/// The file at `path`, at most `max` bytes of it (a larger one, or a device
/// that never ends, is an error).
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, SecretFileError> {
    use std::io::Read;
    let io = |source| {
        SecretFileError::Elsewhere(ConfigError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(io(std::io::Error::other(format!(
            "larger than {max} bytes"
        ))));
    }
    Ok(bytes)
}

/// The shape of a `users_file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserConfig>,
}

impl Config {
    /// Reads every file the configuration names for its secrets into it.
    pub(super) fn read_secret_files(&mut self) -> Result<(), SecretFileError> {
        if let Some(path) = self.users_file.clone() {
            let accounts = self.read_users_file(path.get_ref())?;
            match &mut self.users {
                Users::List(v) => v.extend(accounts),
                Users::Table(t) => t.accounts.extend(accounts),
            }
        }
        if let Some(m) = &mut self.monitor {
            m.password_sha1 = match (&m.password_sha1_file, m.password_sha1.get_ref().is_empty()) {
                (Some(_), false) => {
                    return Err(SecretFileError::Here(
                        Some(m.password_sha1.span()),
                        "[monitor] takes `password_sha1` or `password_sha1_file`, not both".into(),
                    ));
                }
                (None, true) => {
                    return Err(SecretFileError::Here(
                        Some(m.password_sha1.span()).filter(|s| !s.is_empty()),
                        "[monitor] needs `password_sha1` or `password_sha1_file`".into(),
                    ));
                }
                (None, false) => m.password_sha1.clone(),
                (Some(file), true) => Spanned::new(
                    file.span(),
                    read_sha1(file, "[monitor] password_sha1_file")?,
                ),
            };
        }
        if let Users::Table(t) = &mut self.users
            && let Some(file) = &t.password_sha1_file
        {
            if let Some(inline) = &t.password_sha1 {
                return Err(SecretFileError::Here(
                    Some(inline.span()),
                    "[users] takes `password_sha1` or `password_sha1_file`, not both".into(),
                ));
            }
            let value = read_sha1(file, "[users] password_sha1_file")?;
            t.password_sha1 = Some(Spanned::new(file.span(), value));
        }
        if let Some(f) = &mut self.fleet
            && let Some(file) = &f.password_file
        {
            if f.store.get_ref().contains('@') {
                return Err(SecretFileError::Here(
                    Some(f.store.span()),
                    "[fleet] takes a password in `store` or `password_file`, not both".into(),
                ));
            }
            f.password = Some(read_secret(file.get_ref(), "[fleet] password_file")?);
        }
        Ok(())
    }

    /// The accounts of `users_file`: valid on their own and not in the
    /// configuration file too (errors name that file and line).
    fn read_users_file(&self, path: &Path) -> Result<Vec<UserConfig>, SecretFileError> {
        let text = String::from_utf8(read_bounded(path, USERS_FILE_MAX)?).map_err(|_| {
            SecretFileError::Elsewhere(ConfigError::Io {
                path: path.to_owned(),
                source: std::io::Error::other("not UTF-8"),
            })
        })?;
        crate::secret::warn_if_exposed(path, "the users_file");
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_col(&text, span.map_or(0, |s| s.start));
            SecretFileError::Elsewhere(ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            })
        };
        let file: UsersFile =
            toml::from_str(&text).map_err(|e| invalid(e.span(), e.message().trim().to_owned()))?;
        let mut names = self
            .users
            .accounts()
            .iter()
            .map(|u| u.name.get_ref().as_str())
            .collect();
        check_accounts(&file.users, &mut names, self.tls.is_some())
            .map_err(|(span, message)| invalid(Some(span), message))?;
        Ok(file.users)
    }

    /// The files read for secrets, for a watch that reloads when they
    /// change.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let monitor = self
            .monitor
            .as_ref()
            .and_then(|m| m.password_sha1_file.as_ref());
        let service = match &self.users {
            Users::Table(t) => t.password_sha1_file.as_ref(),
            Users::List(_) => None,
        };
        let fleet = self.fleet.as_ref().and_then(|f| f.password_file.as_ref());
        [self.users_file.as_ref(), monitor, service, fleet]
            .into_iter()
            .flatten()
            .map(|p| p.get_ref().clone())
            .collect()
    }
}

/// What is wrong with the (one-line) file at `path`.
fn file_error(path: &Path, message: String) -> SecretFileError {
    SecretFileError::Elsewhere(ConfigError::Invalid {
        path: path.to_owned(),
        line: 1,
        column: 1,
        message,
    })
}

/// A secret file's text without surrounding whitespace; its permissions
/// checked as a secret file's.
fn read_secret(path: &Path, what: &str) -> Result<Secret<String>, SecretFileError> {
    let elsewhere = |message: String| file_error(path, message);
    crate::secret::check_file(path, what).map_err(elsewhere)?;
    let raw = Secret::new(read_bounded(path, PASSWORD_FILE_MAX)?);
    let text = std::str::from_utf8(raw.trim_ascii())
        .map_err(|_| elsewhere(format!("{what} is not UTF-8")))?;
    if text.is_empty() {
        return Err(elsewhere(format!("{what} is empty")));
    }
    Ok(Secret::new(text.to_owned()))
}

/// A `SHA1(password)` file: 40 hex digits.
fn read_sha1(file: &Spanned<PathBuf>, what: &str) -> Result<Secret<String>, SecretFileError> {
    let value = read_secret(file.get_ref(), what)?;
    if value.len() != 40 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(file_error(
            file.get_ref(),
            format!("{what}: must hold 40 hex digits (`switchyard hash-password --sha1`)"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:6033"
[pools.master]
backends = ["127.0.0.1:13306"]
[policy]
module = "p.wasm"
"#;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        /// Writes `name` with `mode`; its path as TOML would quote it.
        fn file(&self, name: &str, text: &str, mode: u32) -> String {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path.display().to_string()
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("sy.toml"))
    }

    const HASH: &str = "*9C01670BF00D3764A16EF8B0611F8FC02173FC31";

    #[test]
    fn accounts_from_a_users_file_join_the_file_s_own() {
        let d = Dir::new();
        let users = d.file(
            "users.toml",
            &format!(
                "[[users]]\nname = \"app\"\npassword_hash = \"{HASH}\"\nmax_connections = 3\n"
            ),
            0o440,
        );
        let list = format!(
            "users_file = \"{users}\"\n{BASE}[[users]]\nname = \"local\"\npassword_hash = \"\"\n"
        );
        let c = parse(&list).unwrap();
        let names: Vec<_> = c
            .users
            .accounts()
            .iter()
            .map(|u| u.name.get_ref().as_str())
            .collect();
        assert_eq!(names, ["local", "app"]);
        assert_eq!(c.user_limit("app"), Some(3));
        // Nothing secret in the file itself: no warning about its mode.
        assert!(!c.holds_secrets());
        assert_eq!(c.secret_files(), [PathBuf::from(&users)]);
        // The `[users]` table's shape takes them too.
        let table = format!("users_file = \"{users}\"\n{BASE}[users]\nsource = \"config\"\n");
        assert_eq!(parse(&table).unwrap().users.accounts().len(), 1);
    }

    #[test]
    fn a_users_file_s_errors_name_its_own_line() {
        let d = Dir::new();
        let cases = [
            (
                "[[users]]\nname = \"a\"\npassword_hash = \"\"\nbogus = 1\n",
                ":4:1: unknown field `bogus`",
            ),
            ("[pools.x]\nbackends = []\n", ":1:2: unknown field `pools`"),
            (
                "[[users]]\nname = \"local\"\npassword_hash = \"\"\n",
                ":2:8: user 'local' is defined twice",
            ),
            (
                "[[users]]\nname = \"t\"\npassword_hash = \"\"\nrequire_tls = true\n",
                ":2:8: user 't' requires TLS",
            ),
            (
                "[[users]]\nname = \"h\"\npassword_hash = \"*12\"\n",
                ":3:17:",
            ),
        ];
        for (text, says) in cases {
            let users = d.file("users.toml", text, 0o600);
            let config = format!(
                "users_file = \"{users}\"\n{BASE}[[users]]\nname = \"local\"\npassword_hash = \"\"\n"
            );
            let err = parse(&config).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{users}{says}")), "{text}: {err}");
        }
        let missing = format!(
            "users_file = \"{}/nope.toml\"\n{BASE}",
            d.0.path().display()
        );
        assert!(matches!(parse(&missing), Err(ConfigError::Io { .. })));
    }

    #[test]
    fn password_sha1_from_a_file() {
        let d = Dir::new();
        let sha1 = "ab".repeat(20);
        let file = d.file("monitor-sha1", &format!("  {sha1}\n"), 0o440);
        let monitor = |keys: &str| format!("{BASE}[monitor]\nuser = \"mon\"\n{keys}\n");
        let c = parse(&monitor(&format!("password_sha1_file = \"{file}\""))).unwrap();
        assert_eq!(
            c.monitor.as_ref().unwrap().password_sha1.get_ref().expose(),
            &sha1
        );
        assert!(!c.holds_secrets());
        assert!(
            parse(&monitor(&format!("password_sha1 = \"{sha1}\"")))
                .unwrap()
                .holds_secrets()
        );
        for (keys, says) in [
            (
                format!("password_sha1 = \"{sha1}\"\npassword_sha1_file = \"{file}\""),
                "sy.toml:9:17: [monitor] takes `password_sha1` or `password_sha1_file`, not both",
            ),
            (
                String::new(),
                "sy.toml:1:1: [monitor] needs `password_sha1` or `password_sha1_file`",
            ),
        ] {
            let err = parse(&monitor(&keys)).unwrap_err().to_string();
            assert_eq!(err, says);
        }
        let bad = d.file("bad", "not-hex", 0o600);
        let err = parse(&monitor(&format!("password_sha1_file = \"{bad}\""))).unwrap_err();
        assert!(err.to_string().contains("must hold 40 hex digits"), "{err}");
        // Anyone may read it: refused, as the admin token file is.
        let open = d.file("open", &sha1, 0o644);
        let err = parse(&monitor(&format!("password_sha1_file = \"{open}\""))).unwrap_err();
        assert!(err.to_string().contains("0644"), "{err}");
        let huge = d.file("huge", &"a".repeat(5000), 0o600);
        let err = parse(&monitor(&format!("password_sha1_file = \"{huge}\""))).unwrap_err();
        assert!(err.to_string().contains("larger than 4096 bytes"), "{err}");
        let empty = d.file("empty", "\n", 0o600);
        let err = parse(&monitor(&format!("password_sha1_file = \"{empty}\""))).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        // The `[users]` table's service account.
        let users = format!(
            "{BASE}[users]\nsource = \"backend\"\npool = \"master\"\nuser = \"svc\"\npassword_sha1_file = \"{file}\"\n"
        );
        let c = parse(&users).unwrap();
        let Users::Table(t) = &c.users else {
            panic!("a [users] table")
        };
        assert_eq!(t.password_sha1.as_ref().unwrap().get_ref().expose(), &sha1);
        assert_eq!(c.secret_files(), [PathBuf::from(&file)]);
    }

    #[test]
    fn the_fleet_store_s_password_from_a_file() {
        let d = Dir::new();
        let file = d.file("fleet", "s3cret\n", 0o400);
        let fleet = |store: &str| {
            format!("{BASE}[fleet]\nstore = \"{store}\"\npassword_file = \"{file}\"\n")
        };
        let c = parse(&fleet("redis://127.0.0.1:6379")).unwrap();
        let f = c.fleet.as_ref().unwrap();
        assert_eq!(
            f.password.as_ref().map(|p| p.expose().as_str()),
            Some("s3cret")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let err = parse(&fleet("redis://:pw@127.0.0.1:6379"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
    }
}
