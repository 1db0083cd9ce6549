//! The inbox: operators answer reply-mode requests by dropping files into a folder (API.md §4).
//!
//! ```text
//! data_dir/inbox/
//!   .pending/<callback_id>.json   each incoming reply-mode request awaiting its reply
//!   <callback_id>/<name>          a file to send back as the final reply, data {"file_name": name}
//!   <callback_id>.reject          rejects the request; its text is the reason
//!   .sent/<callback_id>/          answered: moved here once the peer holds the file verified
//!   .unmatched/                   files for callback ids nobody awaits
//!   .failed/<name>, <name>.reason entries that can never be acted on, each with why
//! ```
//!
//! The folder is scanned at start-up, whenever it changes (notify), and every half second. A
//! file is taken once its inode, size, modification and change times stayed the same between two
//! scans and either the watcher saw it closed after its last write (or renamed into place), or it
//! stayed so for [`STABLE`]. The second rule takes what never shows a close after writing: a hard
//! link, a file present at start-up, one in a folder made a moment before the watcher watched it,
//! or events the kernel dropped. A writer that keeps writing changes the file, so a file still
//! being written in place is not sent half-written; the one window left is a writer that holds a
//! file open and idle for longer than [`STABLE`], which writing under an ignored name and renaming
//! into place avoids. Names beginning with `.` or ending in `.part` or `.tmp` are ignored until
//! renamed.
//!
//! Every entry is handled on its own, so one bad entry never stops the others: one that can never
//! be acted on (a name that is not UTF-8, a `.reject` or a file in `<callback_id>/` that is not a
//! regular file, a file ferry refuses to open, a folder it cannot read, a file whose reply failed
//! because it changed before it was sent or the peer refused it) is moved to `.failed/` with
//! `<name>.reason` beside it; a file that vanished is skipped; a failure that may pass (the store)
//! is tried again at the next scan. Each is logged once, not at every scan. ferry never deletes a
//! host's file.
//!
//! Hosts and operators of other users write below the inbox, so ferry trusts the inbox folder it
//! made and nothing below it: every entry below it is reached through a folder descriptor,
//! never through a symbolic link, moved without replacing anything, and ferry's own files there
//! (`.pending/*.json`, `.failed/*.reason`) are created anew, never written through a planted name.
//! A dot folder that is not a real folder is not used (said once) until it is made one again.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::Watcher;
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Level;

use crate::host_file::HostFiles;
use crate::store::{OutgoingFile, ReplyFile, Store};
use crate::wire::cut;

/// The longest rejection reason taken from a `.reject` file; the rest is cut.
const MAX_REASON: usize = 4096;

/// How often the inbox is scanned without a change notice.
const TICK: Duration = Duration::from_millis(500);

/// How long a file must stay unchanged to be taken when the watcher saw no close after its last
/// write (a hard link, a file present at start-up): longer than a writer's usual pause.
pub const STABLE: Duration = Duration::from_secs(2);

/// Why an entry whose name is not UTF-8 is set aside.
const NOT_UTF8: &str = "the name is not valid UTF-8, so it can name neither a callback id nor a file sent to a \
                        peer; rename it in UTF-8 and put it back";

/// Creates the inbox `dir` and its folders (`.pending`, `.sent`, `.unmatched`, `.failed`) if
/// missing; an entry already there under one of those names is left as it is.
pub fn create(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        // Operators in the node's group drop files in it; what they make there stays in that group.
        #[cfg(unix)]
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o2770))?;
    }
    for sub in [".pending", ".sent", ".unmatched", ".failed"] {
        match std::fs::create_dir(dir.join(sub)) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            made => made?,
        }
    }
    Ok(())
}

/// A folder of the inbox, held open: what is done in it goes through this descriptor, so an
/// entry swapped for a symbolic link is never followed.
struct Folder(OwnedFd);

impl Folder {
    /// The inbox itself, which ferry made and trusts.
    fn open_inbox(dir: &Path) -> std::io::Result<Folder> {
        Ok(Folder(rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?))
    }

    /// The folder at `path` below this one, each part opened without following a link and, if
    /// `make`, made when missing. A part that is not a real folder is refused.
    fn open_sub(&self, path: &Path, make: bool) -> std::io::Result<Folder> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut folder: Option<Folder> = None;
        for name in path.iter() {
            let parent = folder.as_ref().unwrap_or(self);
            if make {
                match rustix::fs::mkdirat(&parent.0, name, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            folder = Some(Folder(rustix::fs::openat(&parent.0, name, flags, Mode::empty()).map_err(|e| {
                if matches!(e, rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) {
                    let name = cut(&name.to_string_lossy()).into_owned();
                    let why = format!("`{name}` must be a folder (not a symbolic link or a file); make it one");
                    std::io::Error::new(ErrorKind::NotADirectory, why)
                } else {
                    e.into()
                }
            })?));
        }
        folder.ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "no folder named"))
    }

    /// Moves the entry `name` to `to_name` in `to`, never over an existing entry.
    fn move_to(&self, name: &OsStr, to: &Folder, to_name: &OsStr) -> std::io::Result<()> {
        Ok(rustix::fs::renameat_with(&self.0, name, &to.0, to_name, rustix::fs::RenameFlags::NOREPLACE)?)
    }

    /// Creates the file `name` holding `bytes`; fails if anything, a link too, has that name.
    fn create_new(&self, name: &OsStr, bytes: &[u8]) -> std::io::Result<()> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.0, name, flags, Mode::from_raw_mode(0o666))?;
        std::fs::File::from(fd).write_all(bytes)
    }

    /// Whether anything, a link too, is named `name` here.
    fn has(&self, name: &OsStr) -> bool {
        rustix::fs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Removes the entry `name` (a folder only if `folder` and empty); never what a link names.
    fn remove(&self, name: &OsStr, folder: bool) -> std::io::Result<()> {
        let flags = if folder { AtFlags::REMOVEDIR } else { AtFlags::empty() };
        Ok(rustix::fs::unlinkat(&self.0, name, flags)?)
    }

    /// The entries, each with its type (a link is a link) or why that cannot be told.
    fn entries(&self) -> std::io::Result<Vec<(OsString, std::io::Result<FileType>)>> {
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.0)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Unknown => rustix::fs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|stat| FileType::from_raw_mode(stat.st_mode))
                    .map_err(Into::into),
                kind => Ok(kind),
            };
            entries.push((name.to_owned(), kind));
        }
        Ok(entries)
    }
}

/// Watches `dir`, made by [`create`], and turns what operators drop there into replies, until
/// `stop`. Files are opened through `files` (rooted at `dir`): never through a symbolic link,
/// never one of the node's own, and sent only while they are the file that was queued.
pub async fn work(store: Store, dir: PathBuf, files: HostFiles, stop: CancellationToken) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let watched = WatchedFiles::default();
    let (notice, seen_by_watcher, root) = (changed.clone(), watched.clone(), dir.clone());
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            watch(&mut seen_by_watcher.lock().unwrap(), &root, event);
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
    let (seen, said, saying) = (HashMap::new(), HashMap::new(), HashMap::new());
    let mut inbox = Inbox { store, dir, root: None, files, seen, watched, said, saying };
    while !stop.is_cancelled() {
        inbox.scan().await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    drop(watcher);
}

/// What the watcher last saw happen to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// Created or written to, and not closed since.
    Open,
    /// Closed after its last write, or renamed into place.
    Closed,
}

/// The files the watcher saw, by path.
type WatchedFiles = Arc<Mutex<HashMap<PathBuf, Watched>>>;

/// Records in `files` what `event` says of the files in the inbox `dir` (not in its dot folders).
fn watch(files: &mut HashMap<PathBuf, Watched>, dir: &Path, event: notify::Event) {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    if event.need_rescan() {
        files.clear(); // events were lost: every file waits out STABLE
        return;
    }
    let now = match event.kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => Some(Watched::Open),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Watched::Closed),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Watched::Closed),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => return, // its From and To come too
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => None,
        _ => return,
    };
    let in_inbox = |path: &PathBuf| {
        path.strip_prefix(dir).is_ok_and(|rest| rest.iter().all(|part| !part.as_bytes().starts_with(b".")))
    };
    for path in event.paths.into_iter().filter(in_inbox) {
        match now {
            Some(state) => files.insert(path, state),
            None => files.remove(&path),
        };
    }
}

/// What tells that a file changed: its inode, size, modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        let (mtime, ctime) = ((meta.mtime(), meta.mtime_nsec()), (meta.ctime(), meta.ctime_nsec()));
        Stamp { ino: meta.ino(), size: meta.size(), mtime, ctime }
    }
}

struct Inbox {
    store: Store,
    dir: PathBuf,
    /// The inbox, opened afresh at each scan.
    root: Option<Folder>,
    files: HostFiles,
    /// Each candidate file as the previous scan found it, and since when it is so.
    seen: HashMap<PathBuf, (Stamp, Instant)>,
    /// Files as the watcher saw them.
    watched: WatchedFiles,
    /// What the previous scan logged about each path: not logged again while it stays true.
    said: HashMap<PathBuf, String>,
    /// What this scan has to say about each path.
    saying: HashMap<PathBuf, String>,
}

/// Whether a name is one operators use while writing: `.x`, `x.part`, `x.tmp`.
fn ignored(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b".") || name.ends_with(b".part") || name.ends_with(b".tmp")
}

/// A file type in words.
fn kind_name(kind: FileType) -> &'static str {
    match kind {
        k if k.is_dir() => "a folder",
        k if k.is_symlink() => "a symbolic link",
        k if k.is_fifo() => "a FIFO",
        k if k.is_socket() => "a socket",
        k if k.is_file() => "a regular file",
        _ => "a device",
    }
}

impl Inbox {
    async fn scan(&mut self) {
        self.root = match Folder::open_inbox(&self.dir) {
            Ok(root) => Some(root),
            Err(e) => {
                let dir = self.dir.clone();
                self.say(Level::WARN, &dir, format!("cannot open the inbox: {e}"));
                self.said = std::mem::take(&mut self.saying);
                return;
            }
        };
        if let Err(e) = self.write_pending().await {
            let pending = self.dir.join(".pending");
            self.say(Level::WARN, &pending, format!("cannot list the requests awaiting a reply: {e}"));
        }
        let mut seen = HashMap::new();
        for (callback_id, path) in self.list() {
            let meta = match path.symlink_metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // gone since it was listed
                Err(e) => {
                    self.set_aside(&path, &format!("its metadata cannot be read: {e}"));
                    continue;
                }
            };
            let stamp = Stamp::of(&meta);
            let unchanged_since = self.seen.get(&path).filter(|(before, _)| *before == stamp).map(|(_, since)| *since);
            seen.insert(path.clone(), (stamp, unchanged_since.unwrap_or_else(Instant::now)));
            let closed = self.watched.lock().unwrap().get(&path) == Some(&Watched::Closed);
            match unchanged_since {
                Some(since) if closed || since.elapsed() >= STABLE => self.handle(&callback_id, &path).await,
                _ if closed || !self.seen.contains_key(&path) => {} // new, or being closed: the next scans tell
                _ => self.say(
                    Level::INFO,
                    &path,
                    format!(
                        "held back: no close after its last write was seen (a writer may still hold it open; a \
                         hard link or a file present at start-up shows none); taken once closed, or unchanged for \
                         {STABLE:?}"
                    ),
                ),
            }
        }
        self.seen = seen;
        self.said = std::mem::take(&mut self.saying);
    }

    /// The files that may answer a request, as (callback id, path). Other entries are set aside,
    /// left alone (logged once) or skipped, each on its own.
    fn list(&mut self) -> Vec<(String, PathBuf)> {
        let entries = match self.root().and_then(|root| Ok(root.entries()?)) {
            Ok(entries) => entries,
            Err(e) => {
                let dir = self.dir.clone();
                self.say(Level::WARN, &dir, format!("cannot read the inbox: {e}"));
                return Vec::new();
            }
        };
        let mut candidates = Vec::new();
        for (name, kind) in entries {
            let path = self.dir.join(&name);
            if ignored(&name) {
                continue;
            }
            let Some(kind) = self.kind(&path, kind) else { continue };
            let reject = name.as_bytes().ends_with(b".reject");
            if !reject && !kind.is_dir() {
                let what = "neither a `<callback_id>/` folder nor a `<callback_id>.reject` file; left alone";
                self.say(Level::INFO, &path, what.to_owned());
            } else if name.to_str().is_none() {
                self.set_aside(&path, NOT_UTF8);
            } else if !reject {
                self.list_folder(&name, &path, &mut candidates);
            } else if kind.is_file() {
                let name = name.to_string_lossy();
                candidates.push((name.strip_suffix(".reject").unwrap_or(&name).to_owned(), path));
            } else {
                let why = format!("a `.reject` must be a regular file holding the reason; this is {}", kind_name(kind));
                self.set_aside(&path, &why);
            }
        }
        candidates
    }

    /// Adds the files in the folder `callback_id` (at `folder`) to `candidates`; sets aside what
    /// cannot be sent.
    fn list_folder(&mut self, callback_id: &OsStr, folder: &Path, candidates: &mut Vec<(String, PathBuf)>) {
        let entries = match self.root().and_then(|root| Ok(root.open_sub(callback_id.as_ref(), false)?.entries()?)) {
            Ok(entries) => entries,
            Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == ErrorKind::NotFound) => return,
            Err(e) => return self.set_aside(folder, &format!("the folder cannot be read: {e}")),
        };
        for (name, kind) in entries.into_iter().filter(|(name, _)| !ignored(name)) {
            let path = folder.join(&name);
            match self.kind(&path, kind) {
                None => {}
                Some(_) if name.to_str().is_none() => self.set_aside(&path, NOT_UTF8),
                Some(kind) if kind.is_file() => candidates.push((callback_id.to_string_lossy().into_owned(), path)),
                Some(kind) => {
                    let why = format!("only regular files are sent; this is {}", kind_name(kind));
                    self.set_aside(&path, &why)
                }
            }
        }
    }

    /// The type of the listed entry at `path`, as listed; `None`, after setting it aside if it is
    /// not just gone, when it cannot be told.
    fn kind(&mut self, path: &Path, kind: std::io::Result<FileType>) -> Option<FileType> {
        match kind {
            Ok(kind) => Some(kind),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                self.set_aside(path, &format!("its type cannot be read: {e}"));
                None
            }
        }
    }

    /// Acts on one settled file for `callback_id`; a failure that may pass is logged once and
    /// tried again at the next scan.
    async fn handle(&mut self, callback_id: &str, path: &Path) {
        if let Err(e) = self.answer(callback_id, path).await {
            self.say(Level::WARN, path, format!("cannot act on this file now; tried again at each scan: {e}"));
        }
    }

    async fn answer(&mut self, callback_id: &str, path: &Path) -> anyhow::Result<()> {
        let text = path.to_string_lossy().into_owned();
        let shown = self.shown(path);
        let reject = path.extension().is_some_and(|e| e == "reject") && path.parent() == Some(self.dir.as_path());
        if !reject {
            match self.store.reply_file_state(&text).await? {
                Some(ReplyFile::Delivered) => {
                    return self.file_away(path, &Path::new(".sent").join(callback_id)).map(drop)
                }
                Some(ReplyFile::Sending) => return Ok(()), // on its way; moved once the peer holds it
                Some(ReplyFile::Failed(why)) => {
                    self.set_aside(path, &format!("the reply carrying this file failed: {why}"));
                    return Ok(());
                }
                None => {}
            }
        }
        // Opened once, confined to the inbox: a link or one of the node's own files is set aside.
        let opened = match self.files.open(&text) {
            Ok(opened) => opened,
            Err(_) if matches!(path.symlink_metadata(), Err(e) if e.kind() == ErrorKind::NotFound) => return Ok(()),
            Err(e) => {
                self.set_aside(path, &format!("this file cannot be sent: {e}"));
                return Ok(());
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
                tracing::info!(callback_id = %cut(callback_id), %id, seq, "inbox: request rejected");
                self.file_away(path, &Path::new(".sent").join(callback_id)).map(drop)
            }
            Some((id, seq)) => {
                tracing::info!(callback_id = %cut(callback_id), %id, seq, file = %shown, "inbox: file queued as the final reply");
                Ok(())
            }
            None => {
                self.file_away(path, Path::new(".unmatched"))?;
                tracing::warn!(callback_id = %cut(callback_id), file = %shown, "inbox: no request awaits this callback id; moved to .unmatched");
                Ok(())
            }
        }
    }

    /// Moves `path`, which can never be acted on, to `.failed/` with `<name>.reason` (the text
    /// `why`) beside it, and logs it; if it cannot be moved, says so once.
    fn set_aside(&mut self, path: &Path, why: &str) {
        match self.file_away(path, Path::new(".failed")) {
            Ok((failed, mut reason)) => {
                reason.push(".reason");
                let written = failed.create_new(&reason, format!("{why}\n").as_bytes());
                let shown = self.shown(path);
                tracing::warn!(file = %shown, reason = why, "inbox: this entry cannot be acted on; moved to .failed");
                if let Err(e) = written {
                    tracing::warn!(file = %shown, error = %e, "inbox: cannot write the reason beside it in .failed");
                }
            }
            Err(e) => {
                let what = format!("{why}; it cannot be moved to .failed either ({e}): move it away by hand");
                self.say(Level::WARN, path, what)
            }
        }
    }

    /// The inbox as this scan opened it.
    fn root(&self) -> anyhow::Result<&Folder> {
        self.root.as_ref().context("the inbox is not open")
    }

    /// Moves `path`, an entry of the inbox or of a `<callback_id>/` in it, into the folder `to`
    /// below the inbox (made if missing), never over an existing entry (nor beside one named like
    /// its `.reason`), and removes an emptied `<callback_id>/`; the folder and name it went to.
    fn file_away(&self, path: &Path, to: &Path) -> anyhow::Result<(Folder, OsString)> {
        let root = self.root()?;
        let rest = path.strip_prefix(&self.dir)?;
        let name = rest.file_name().context("no name to move")?;
        let callback_folder = rest.parent().filter(|parent| !parent.as_os_str().is_empty());
        let opened = callback_folder.map(|parent| root.open_sub(parent, false)).transpose()?;
        let from = opened.as_ref().unwrap_or(root);
        let to = root.open_sub(to, true)?;
        let (mut target, mut n) = (name.to_owned(), 1);
        loop {
            let mut reason = target.clone();
            reason.push(".reason");
            if !to.has(&reason) {
                match from.move_to(name, &to, &target) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e.into()),
                }
            }
            target = OsString::from(format!("{n}-"));
            target.push(name);
            n += 1;
        }
        if let Some(parent) = callback_folder {
            let _ = root.remove(parent.as_os_str(), true); // only if empty
        }
        Ok((to, target))
    }

    /// Logs `what` about `path` at `level`, unless the previous scan said the same.
    fn say(&mut self, level: Level, path: &Path, what: String) {
        if self.said.get(path) != Some(&what) {
            let file = self.shown(path);
            match level {
                Level::WARN => tracing::warn!(%file, "inbox: {what}"),
                _ => tracing::info!(%file, "inbox: {what}"),
            }
        }
        self.saying.insert(path.to_owned(), what);
    }

    /// `path` as a log line names it: below the inbox, cut.
    fn shown(&self, path: &Path) -> String {
        cut(&path.strip_prefix(&self.dir).unwrap_or(path).to_string_lossy()).into_owned()
    }

    /// Makes `.pending/` list exactly the requests awaiting a reply.
    async fn write_pending(&self) -> anyhow::Result<()> {
        let pending = self.store.pending().await?;
        let folder = self.root()?.open_sub(Path::new(".pending"), true)?;
        let file_name = |callback_id: &str| OsString::from(format!("{}.json", crate::transfer::safe_name(callback_id)));
        let keep: std::collections::HashSet<_> = pending.iter().map(|p| file_name(&p.callback_id)).collect();
        for (name, _) in folder.entries()? {
            if !keep.contains(&name) {
                let _ = folder.remove(&name, false); // through the folder: never what a link names
            }
        }
        for p in &pending {
            let file = file_name(&p.callback_id);
            if !folder.has(&file) {
                let mut tmp = file.clone();
                tmp.push(".tmp");
                let body = json!({"peer": p.peer, "service": p.service, "method": p.method, "path": p.path,
                                  "form": p.form, "created_at": p.created_at});
                folder.create_new(&tmp, &serde_json::to_vec_pretty(&body)?)?;
                folder.move_to(&tmp, &folder, &file)?;
            }
        }
        Ok(())
    }
}
