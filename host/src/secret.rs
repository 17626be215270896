//! Secrets in memory and on disk.
//!
//! [`Secret`] wraps a configured secret (the admin token, a monitor
//! account's `SHA1(password)`) so that a `{:?}` of the configuration or of
//! the state built from it, in a log line or a panic message, never shows
//! it; its bytes are zeroed when it is dropped.
//!
//! [`check_file`] looks at a secret file's permissions when it is loaded,
//! as OpenSSH does with private keys: a private key or token file that
//! others may read is refused (whoever can read it can act as Switchyard,
//! or as its administrator), one that its group may read is loaded with a
//! warning (a shared `ssl-cert`-style group is a deliberate choice); the
//! configuration file, which holds password hashes and perhaps the admin
//! token, only gets a warning ([`warn_if_exposed`]): refusing to start over
//! a file a package installed `0644` would be harsher than the risk.

use std::fmt;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroize;

/// A value that is never printed: its `Debug` is `Secret(..)`. Reads
/// through `Deref`; zeroed on drop.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Deref for Secret<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<'de, T: Zeroize + Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Self)
    }
}

/// What a secret file's permissions allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Only its owner may read or write it.
    Private,
    /// Its group may read or write it.
    Group,
    /// Anyone may read or write it.
    World,
}

impl Exposure {
    /// From a file's mode bits.
    pub fn of_mode(mode: u32) -> Self {
        if mode & 0o007 != 0 {
            Self::World
        } else if mode & 0o070 != 0 {
            Self::Group
        } else {
            Self::Private
        }
    }
}

/// Checks the permissions of the secret file `path` (`what` names it in
/// messages, e.g. `"tls key"`): an error when anyone may read or write it,
/// one warning line when its group may. Call it where the file is loaded,
/// at start and on every reload.
pub fn check_file(path: &Path, what: &str) -> Result<(), String> {
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .permissions()
        .mode();
    match Exposure::of_mode(mode) {
        Exposure::Private => Ok(()),
        Exposure::Group => {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:04o}", mode & 0o7777),
                "{what} is readable or writable by its group; chmod 600 unless that is intended"
            );
            Ok(())
        }
        Exposure::World => Err(format!(
            "{what} {}: permissions {:04o} let anyone read or write it; chmod 600 (or 640 for a group) and try again",
            path.display(),
            mode & 0o7777
        )),
    }
}

/// One warning line when `path`, a file that holds secrets, may be read by
/// anyone (its group reading it is a choice: `640`). Never refuses.
pub fn warn_if_exposed(path: &Path, what: &str) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode();
    if Exposure::of_mode(mode) == Exposure::World {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:04o}", mode & 0o7777),
            "{what} holds secrets and anyone may read it; chmod 600 (or 640)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("hunter2-token".to_owned());
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(..))");
        assert_eq!(s.trim(), "hunter2-token");
        let parsed: Secret<String> = toml::from_str::<toml::Value>("v = \"abc\"")
            .unwrap()
            .get("v")
            .cloned()
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(parsed.expose(), "abc");
    }

    #[test]
    fn modes_classify() {
        assert_eq!(Exposure::of_mode(0o100600), Exposure::Private);
        assert_eq!(Exposure::of_mode(0o100400), Exposure::Private);
        assert_eq!(Exposure::of_mode(0o100640), Exposure::Group);
        assert_eq!(Exposure::of_mode(0o100620), Exposure::Group);
        assert_eq!(Exposure::of_mode(0o100644), Exposure::World);
        assert_eq!(Exposure::of_mode(0o100602), Exposure::World);
    }

    #[test]
    fn world_readable_secret_files_are_refused_group_readable_ones_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "x").unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(0o600);
        assert_eq!(check_file(&path, "tls key"), Ok(()));
        chmod(0o640);
        assert_eq!(check_file(&path, "tls key"), Ok(()));
        chmod(0o644);
        let e = check_file(&path, "tls key").unwrap_err();
        assert!(e.contains("tls key") && e.contains("0644"), "{e}");
        assert!(check_file(&dir.path().join("missing"), "tls key").is_err());
    }
}
