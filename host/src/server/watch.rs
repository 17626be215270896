//! Files Switchyard follows while it runs: the configuration file and the
//! files it reads secrets from (reloaded when they change) and the policy
//! modules (swapped in when they change).
//!
//! A file is followed through symbolic links: Kubernetes updates a mounted
//! ConfigMap or Secret by pointing its `..data` link at a new directory, so
//! the name stays and the file it resolves to changes. Polled (4 times a
//! second), not inotify: a swapped link raises no event on the file the
//! name resolved to before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::info;

use super::Shared;

/// What tells a file's versions apart without reading it: the file the
/// name resolves to, its size, modification time and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(PathBuf, u64, Option<SystemTime>, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let resolved = std::fs::canonicalize(path).ok();
        Self(resolved.and_then(|r| {
            let m = std::fs::metadata(&r).ok()?;
            Some((r, m.len(), m.modified().ok(), m.ino()))
        }))
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }
}

/// How often files are looked at.
const POLL: Duration = Duration::from_millis(250);
/// How long a changed file is left to settle before it is read.
const SETTLE: Duration = Duration::from_millis(50);

async fn read(path: &Path) -> Option<Vec<u8>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .ok()?
        .ok()
}

/// Reloads the configuration whenever its file, or a file it reads its
/// secrets from (`users_file`, `password_sha1_file`, ...), changes (with
/// `watch_config`): the same reload as SIGHUP, so a file that does not
/// load changes nothing and is logged. The same bytes again (a link
/// swapped to an equal copy) reload nothing.
pub(super) async fn config_file(shared: Arc<Shared>) {
    let Some(path) = shared.config_path.clone() else {
        return;
    };
    let files = |shared: &Shared| {
        let mut files = vec![path.clone()];
        files.extend(shared.state().config.secret_files());
        files
    };
    let stamps = |files: &[PathBuf]| files.iter().map(|f| Stamp::of(f)).collect::<Vec<_>>();
    let mut watched = files(&shared);
    let mut seen = stamps(&watched);
    let mut loaded = digest(&watched).await;
    loop {
        tokio::time::sleep(POLL).await;
        // A reload may have named other files: watch those from now on.
        let current = files(&shared);
        if current != watched {
            seen = stamps(&current);
            loaded = digest(&current).await;
            watched = current;
            continue;
        }
        let now = stamps(&watched);
        if now == seen || !now.iter().all(Stamp::exists) {
            continue;
        }
        tokio::time::sleep(SETTLE).await;
        seen = stamps(&watched);
        if !shared.state().config.watch_config {
            continue;
        }
        let Some(now) = digest(&watched).await else {
            continue;
        };
        if loaded.as_deref() == Some(now.as_str()) {
            continue;
        }
        loaded = Some(now);
        info!(config = %path.display(), "configuration file changed on disk; reloading");
        let _ = shared.reload().await;
    }
}

/// One digest of the files' contents together (`None` if one is missing).
async fn digest(files: &[PathBuf]) -> Option<String> {
    let mut all = Vec::new();
    for f in files {
        let mut bytes = read(f).await?;
        all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        all.extend_from_slice(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
    }
    let d = crate::policy::sha256_hex(&all);
    zeroize::Zeroize::zeroize(&mut all);
    Some(d)
}

/// Swaps in a policy module again whenever its file changes (by the file
/// its name resolves to, size, modification time and, on a change,
/// content), for every policy whose `watch` is on.
pub(super) async fn policy_files(shared: Arc<Shared>) {
    let mut seen: HashMap<Option<String>, Stamp> = HashMap::new();
    {
        let state = shared.state();
        for name in std::iter::once(None).chain(state.named.keys().cloned().map(Some)) {
            let path = state.config.policy_config(name.as_deref()).module.get_ref();
            seen.insert(name, Stamp::of(path));
        }
    }
    loop {
        tokio::time::sleep(POLL).await;
        let state = shared.state();
        for name in std::iter::once(None).chain(state.named.keys().cloned().map(Some)) {
            let config = state.config.policy_config(name.as_deref());
            let path = config.module.get_ref().clone();
            let now = Stamp::of(&path);
            if !config.watch || seen.get(&name) == Some(&now) || !now.exists() {
                seen.insert(name, now);
                continue;
            }
            // A writer may still be writing: read once it has settled.
            // (Write a new file and rename it over the old one, or swap a
            // link, to change it atomically.)
            tokio::time::sleep(SETTLE).await;
            seen.insert(name.clone(), Stamp::of(&path));
            let Some(bytes) = read(&path).await else {
                continue;
            };
            if crate::policy::sha256_hex(&bytes) == state.policy_named(name.as_deref()).hash() {
                continue;
            }
            info!(module = %path.display(), "policy module changed on disk; swapping it in");
            let _ = shared.swap_policy(bytes, Some(path), name).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swapped_link_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (v, text) in [("a", "one"), ("b", "two")] {
            std::fs::create_dir(d.join(v)).unwrap();
            std::fs::write(d.join(v).join("f"), text).unwrap();
        }
        std::os::unix::fs::symlink("a", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/f", d.join("f")).unwrap();
        let before = Stamp::of(&d.join("f"));
        assert!(before.exists());
        assert_eq!(before, Stamp::of(&d.join("f")));
        // As Kubernetes does it: a new link renamed over `..data`.
        std::os::unix::fs::symlink("b", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let after = Stamp::of(&d.join("f"));
        assert_ne!(before, after);
        assert!(!Stamp::of(&d.join("missing")).exists());
    }
}
