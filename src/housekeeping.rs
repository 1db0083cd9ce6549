//! Housekeeping: what `files.keep_received` no longer keeps is let go of ([`Store::prune`]) every
//! hour, or every `keep_received` when that is shorter, and the received files it names are
//! deleted: only regular files below `data_dir/received`, never through a link, so that a path
//! an operator's edit put in the store cannot make the node delete anything else.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the node prunes, at most.
const EVERY: Duration = Duration::from_secs(3600);

/// Prunes every hour (or every `keep`, when shorter) until `stop`; `received` is
/// `data_dir/received`.
pub async fn work(store: Store, keep: Duration, received: PathBuf, stop: CancellationToken) {
    let every = EVERY.min(keep).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        match store.prune(keep).await {
            Ok(pruned) => {
                let files = delete_received(&received, &pruned.files);
                if files > 0 || pruned.requests > 0 {
                    tracing::info!(
                        files,
                        requests = pruned.requests,
                        "let go of what files.keep_received no longer keeps"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune the store; trying again later"),
        }
    }
}

/// Deletes each of `files` that is a regular file below `received` (no `..`, no link), then the
/// folders that leaves empty; returns how many files it deleted.
pub fn delete_received(received: &Path, files: &[String]) -> usize {
    let mut deleted = 0;
    for file in files.iter().map(Path::new) {
        let inside = file.starts_with(received) && file.components().all(|c| !matches!(c, Component::ParentDir));
        let regular = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_file());
        if !inside || !regular {
            tracing::warn!(file = %file.display(), "a received file's recorded path is not a file below data_dir/received; left alone");
            continue;
        }
        match std::fs::remove_file(file) {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot delete a received file"),
        }
        let mut folder = file.parent();
        while let Some(f) = folder.filter(|f| *f != received && f.starts_with(received)) {
            if std::fs::remove_dir(f).is_err() {
                break;
            }
            folder = f.parent();
        }
    }
    deleted
}
