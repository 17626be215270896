//! Compiled code kept for later: the last few components in memory, by the
//! module's SHA-256, and every one on disk under `cache_dir`, keyed by the
//! module's SHA-256 and the engine's compatibility hash.

use std::path::{Path, PathBuf};

use wasmtime::component::Component;

/// Where a policy's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// Read from the disk cache.
    Disk,
    /// Already compiled in this process.
    Memory,
}

impl Origin {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compiled => "compiled",
            Self::Disk => "disk cache",
            Self::Memory => "memory",
        }
    }
}

/// The SHA-256 of `bytes`, hex: a module's identity.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The last few values by key, most recent first.
pub(super) struct Recent<T> {
    entries: Vec<(String, T)>,
    keep: usize,
}

impl<T: Clone> Recent<T> {
    /// Keeps `keep` values at most.
    pub(super) const fn new(keep: usize) -> Self {
        Self {
            entries: Vec::new(),
            keep,
        }
    }

    /// The value under `key`.
    pub(super) fn get(&self, key: &str) -> Option<T> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Puts `value` under `key` as the most recent; the least recent goes
    /// when there are too many.
    pub(super) fn insert(&mut self, key: &str, value: T) {
        self.entries.retain(|(k, _)| k != key);
        self.entries.insert(0, (key.to_owned(), value));
        self.entries.truncate(self.keep);
    }
}

/// The cache file of the module with SHA-256 `hash` compiled by an engine
/// with compatibility hash `compat`.
pub(super) fn cache_path(dir: &Path, hash: &str, compat: &str) -> PathBuf {
    dir.join(format!("{hash}-{compat}.cwasm"))
}

/// The hex of an engine's compatibility hash (see
/// `Engine::precompile_compatibility_hash`): compiled code is loaded only
/// by an engine with the same one.
pub(super) fn compat_hex(compat: impl std::hash::Hash) -> String {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    compat.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Whether `path` may be loaded as compiled code: a regular file owned by
/// this user in a directory owned by this user, neither writable by others.
pub(super) fn trusted_cache_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let private = |m: &std::fs::Metadata| m.uid() == uid && m.mode() & 0o022 == 0;
    let Some(dir) = path.parent() else {
        return false;
    };
    match (
        std::fs::symlink_metadata(dir),
        std::fs::symlink_metadata(path),
    ) {
        (Ok(d), Ok(f)) => d.is_dir() && private(&d) && f.is_file() && private(&f),
        _ => false,
    }
}

/// Writes a compiled component to the cache (atomically: temp file, then
/// rename). Failures only cost a recompile later, so they are logged.
pub(super) fn store_cache_file(path: &Path, component: &Component) {
    let result = write_private(path, || {
        component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))
    });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), "could not write the compile cache: {e:#}");
    }
}

/// Writes the `bytes` made once the directory is there to `path`
/// atomically (a temp file, then a rename), the directory made if missing,
/// both private to this user.
fn write_private(
    path: &Path,
    bytes: impl FnOnce() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = bytes()?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut f, &bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sha256_of_nothing() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn origins() {
        assert_eq!(Origin::Compiled.as_str(), "compiled");
        assert_eq!(Origin::Disk.as_str(), "disk cache");
        assert_eq!(Origin::Memory.as_str(), "memory");
    }

    #[test]
    fn recent_keeps_the_last_few() {
        let mut r = Recent::new(2);
        assert_eq!(r.get("a"), None);
        r.insert("a", 1);
        r.insert("b", 2);
        r.insert("a", 3);
        assert_eq!((r.get("a"), r.get("b")), (Some(3), Some(2)));
        // "b" is the least recent now.
        r.insert("c", 4);
        assert_eq!(
            (r.get("a"), r.get("b"), r.get("c")),
            (Some(3), None, Some(4))
        );
        assert_eq!(r.entries.len(), 2);
    }

    #[test]
    fn cache_paths() {
        let compat = compat_hex(["some", "engine"]);
        assert_eq!(compat.len(), 16);
        assert_eq!(compat, compat_hex(["some", "engine"]));
        assert_ne!(compat, compat_hex(["other", "engine"]));
        assert_eq!(
            cache_path(Path::new("/c"), "abc", &compat),
            PathBuf::from(format!("/c/abc-{compat}.cwasm"))
        );
    }

    #[test]
    fn only_private_files_are_trusted() {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-cache-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("sub").join("x.cwasm");
        assert!(!trusted_cache_file(&path));
        write_private(&path, || Ok(b"compiled".to_vec())).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"compiled");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert!(trusted_cache_file(&path));
        // No temp file left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&path, 0o622);
        assert!(!trusted_cache_file(&path));
        set(&path, 0o600);
        set(path.parent().unwrap(), 0o777);
        assert!(!trusted_cache_file(&path));
        set(path.parent().unwrap(), 0o700);
        // A directory is not a cache file, nor is a symlink to one.
        assert!(!trusted_cache_file(path.parent().unwrap()));
        let link = path.with_file_name("link.cwasm");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(!trusted_cache_file(&link));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
