//! The inbox: operators answer reply-mode requests by dropping files into a folder (API.md §4).
//!
//! ```text
//! data_dir/inbox/
//!   .pending/<callback_id>.json   each incoming reply-mode request awaiting its reply
//!   <callback_id>/<name>          a file to send back as the final reply, data {"file_name": name}
//!   <callback_id>.reject          rejects the request; its text is the reason
//!   .sent/<callback_id>/          answered: moved here once the peer holds the file verified
//!   .unmatched/                   files for callback ids nobody awaits
//! ```
//!
//! The folder is scanned at start-up, whenever it changes (notify), and every half second. A
//! file is taken only when it is closed after its last write (as inotify reports) and its size
//! and modification time stayed the same between two scans, so a file still being written in
//! place is never sent half-written (inotify sees a new `<callback_id>/` folder a moment after
//! it is made: a file created in that instant and then left open and idle for over a second
//! could be taken early, which writing under an ignored name and renaming avoids); names beginning with `.` or
//! ending in `.part` or `.tmp` are ignored until renamed. ferry never deletes a host's file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::Watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::host_file::HostFiles;
use crate::store::{OutgoingFile, Store};

/// The longest rejection reason taken from a `.reject` file; the rest is cut.
const MAX_REASON: usize = 4096;

/// How often the inbox is scanned without a change notice.
const TICK: Duration = Duration::from_millis(500);

/// Creates the inbox `dir` and its folders (`.pending`, `.sent`, `.unmatched`) if missing.
pub fn create(dir: &Path) -> std::io::Result<()> {
    for sub in [".pending", ".sent", ".unmatched"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

/// Watches `dir`, made by [`create`], and turns what operators drop there into replies, until
/// `stop`. Files are opened through `files` (rooted at `dir`): never through a symbolic link,
/// never one of the node's own, and sent only while they are the file that was queued.
pub async fn work(store: Store, dir: PathBuf, files: HostFiles, stop: CancellationToken) {
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let writing = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let (notice, open) = (changed.clone(), writing.clone());
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
            let mut open = open.lock().unwrap();
            for path in event.paths {
                match event.kind {
                    EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => drop(open.insert(path)),
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => drop(open.remove(&path)),
                    EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => drop(open.remove(&path)),
                    _ => {}
                }
            }
        }
        notice.notify_one();
    })
    .and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::Recursive)?;
        Ok(w)
    });
    if let Err(e) = &watcher {
        tracing::warn!(error = %e, "cannot watch the inbox; scanning it every {TICK:?} instead");
    }
    let mut inbox = Inbox { store, dir, files, seen: HashMap::new(), writing };
    while !stop.is_cancelled() {
        if let Err(e) = inbox.scan().await {
            tracing::warn!(error = %e, "inbox scan failed");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    drop(watcher);
}

struct Inbox {
    store: Store,
    dir: PathBuf,
    files: HostFiles,
    /// Size and modification time of each candidate file at the previous scan.
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    /// Files written to and not yet closed, as the watcher saw them.
    writing: std::sync::Arc<std::sync::Mutex<HashSet<PathBuf>>>,
}

/// Whether a name is one operators use while writing: `.x`, `x.part`, `x.tmp`.
fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp")
}

impl Inbox {
    async fn scan(&mut self) -> anyhow::Result<()> {
        self.write_pending().await?;
        let mut candidates = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if ignored(&name) {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                for file in std::fs::read_dir(&path)? {
                    let file = file?;
                    let file_name = file.file_name().to_string_lossy().into_owned();
                    if !ignored(&file_name) && file.file_type()?.is_file() {
                        candidates.push((name.clone(), file.path()));
                    }
                }
            } else if let Some(callback_id) = name.strip_suffix(".reject") {
                candidates.push((callback_id.to_owned(), path));
            }
        }
        let mut still = HashMap::new();
        for (callback_id, path) in candidates {
            let meta = std::fs::metadata(&path)?;
            let now = (meta.len(), meta.modified()?);
            let open = self.writing.lock().unwrap().contains(&path);
            let settled = self.seen.get(&path) == Some(&now) && !open;
            still.insert(path.clone(), now);
            if settled {
                self.handle(&callback_id, &path).await?;
            }
        }
        self.seen = still;
        Ok(())
    }

    /// Acts on one settled file for `callback_id`.
    async fn handle(&self, callback_id: &str, path: &Path) -> anyhow::Result<()> {
        let text = path.to_string_lossy().into_owned();
        let reject = path.extension().is_some_and(|e| e == "reject") && path.parent() == Some(self.dir.as_path());
        if !reject {
            match self.store.reply_file_state(&text).await? {
                Some(true) => return self.file_away(path, &self.dir.join(".sent").join(callback_id)),
                Some(false) => return Ok(()), // on its way; moved once the peer holds it
                None => {}
            }
        }
        // Opened once, confined to the inbox: a link or one of the node's own files is set aside.
        let opened = match self.files.open(&text) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(%callback_id, file = %text, error = %e, "inbox: this file cannot be sent; moved to .unmatched");
                return self.file_away(path, &self.dir.join(".unmatched"));
            }
        };
        let added = if reject {
            let mut reason = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(opened.file, MAX_REASON as u64), &mut reason)?;
            let reason = String::from_utf8_lossy(&reason).trim().to_owned();
            let reason = if reason.is_empty() { "rejected by the operator".to_owned() } else { reason };
            self.store.add_reply(callback_id, None, Some(reason), true, None).await?
        } else {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let identity = Some(opened.identity);
            let file = OutgoingFile { path: text.clone(), name: name.clone(), field: "file".to_owned(), identity };
            self.store.add_reply(callback_id, Some(json!({"file_name": name})), None, true, Some(file)).await?
        };
        match added {
            Some((id, seq)) if reject => {
                tracing::info!(%callback_id, %id, seq, "inbox: request rejected");
                self.file_away(path, &self.dir.join(".sent").join(callback_id))
            }
            Some((id, seq)) => {
                tracing::info!(%callback_id, %id, seq, file = %text, "inbox: file queued as the final reply");
                Ok(())
            }
            None => {
                tracing::warn!(%callback_id, file = %text, "inbox: no request awaits this callback id; moved to .unmatched");
                self.file_away(path, &self.dir.join(".unmatched"))
            }
        }
    }

    /// Moves `path` into `folder` (never over an existing file), and removes an emptied
    /// `<callback_id>/` folder.
    fn file_away(&self, path: &Path, folder: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(folder)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut target = folder.join(&name);
        let mut n = 1;
        while target.exists() {
            target = folder.join(format!("{n}-{name}"));
            n += 1;
        }
        std::fs::rename(path, &target)?;
        if let Some(parent) = path.parent().filter(|p| *p != self.dir) {
            let _ = std::fs::remove_dir(parent); // only if empty
        }
        Ok(())
    }

    /// Makes `.pending/` list exactly the requests awaiting a reply.
    async fn write_pending(&self) -> anyhow::Result<()> {
        let pending = self.store.pending().await?;
        let folder = self.dir.join(".pending");
        let mut keep = std::collections::HashSet::new();
        for p in &pending {
            let file = folder.join(format!("{}.json", crate::transfer::safe_name(&p.callback_id)));
            keep.insert(file.clone());
            if !file.exists() {
                let tmp = file.with_extension("json.tmp");
                let body = json!({"peer": p.peer, "service": p.service, "method": p.method, "path": p.path,
                                  "form": p.form, "created_at": p.created_at});
                std::fs::write(&tmp, serde_json::to_vec_pretty(&body)?)?;
                std::fs::rename(&tmp, &file)?;
            }
        }
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if !keep.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }
}
