//! Host files that ferry sends: opened once, confined beneath their root, and checked to be the
//! file that was accepted.
//!
//! A host names a file by path; between the moment its node accepts the request and the moment the
//! file is read (an async request may wait days for its peer) anyone who can write the folder can
//! swap the path for something else. So a file is never opened by its path alone:
//!
//! - it is opened beneath its root (a send root, or the inbox) without following a symbolic link
//!   in any component (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or a walk of
//!   `O_NOFOLLOW` opens where the kernel lacks `openat2`), and never blocks on a FIFO;
//! - it must be a regular file, and never one of the node's own secrets (its key, config or store,
//!   compared by device and inode, so a hard link does not hide them);
//! - at acceptance its [`Identity`] (device, inode, size, modification time) is kept; the
//!   file is opened again when it is sent (at once for a sync request, days later perhaps for an
//!   async one) and refused if its identity changed.
//!
//! Keeping the identity, rather than copying the file into a spool at acceptance, costs one
//! `fstat` per file instead of a second write of every byte (seconds per GiB here, and twice the
//! disk); the price is that a host must leave an accepted file in place until it is sent.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// What makes a file the one that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The file system's device.
    pub dev: u64,
    /// The inode.
    pub ino: u64,
    /// The size in bytes.
    pub size: u64,
    /// The modification time, in nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
        }
    }

    /// Parses the form [`Identity`]'s `Display` writes (`dev:ino:size:mtime_ns`).
    pub fn parse(text: &str) -> Option<Identity> {
        let mut parts = text.split(':');
        let identity = Identity {
            dev: parts.next()?.parse().ok()?,
            ino: parts.next()?.parse().ok()?,
            size: parts.next()?.parse().ok()?,
            mtime_ns: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(identity)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", self.dev, self.ino, self.size, self.mtime_ns)
    }
}

/// Why a host's file cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    /// Not an absolute path.
    #[error("`{0}` is a relative path; give the file's absolute path")]
    NotAbsolute(String),
    /// A `..` or a symbolic link on the way: the path may leave its folder.
    #[error("`{0}` goes through `..` or a symbolic link, which are never followed; give the file's real path")]
    Escapes(String),
    /// Below none of the roots.
    #[error("`{0}` is outside `files.send_roots`; move it below one of them")]
    Outside(String),
    /// Missing or unreadable.
    #[error("cannot open `{path}`: {why}")]
    Unreadable {
        /// The path.
        path: String,
        /// Why, in words.
        why: String,
        /// Whether trying again later may succeed (out of descriptors or memory, a stale NFS
        /// handle), unlike a missing or forbidden file.
        may_pass: bool,
    },
    /// A directory, FIFO, socket or device.
    #[error("`{0}` is not a regular file")]
    NotRegular(String),
    /// The node's key, config or store, under whatever name.
    #[error("`{0}` is one of this node's own files (key, config or store), which are never sent")]
    Secret(String),
    /// Another file than the one accepted, or the same one changed since.
    #[error("`{0}` changed after it was accepted (it was replaced, moved or written to); send it again")]
    Changed(String),
}

impl HostFileError {
    /// Whether trying again later may succeed: only a passing failure to open the file.
    pub fn may_pass(&self) -> bool {
        matches!(self, HostFileError::Unreadable { may_pass: true, .. })
    }
}

/// A host file opened for sending.
#[derive(Debug)]
pub struct Opened {
    /// The open file: read from this, never from the path again.
    pub file: File,
    /// Its identity when opened.
    pub identity: Identity,
}

/// The folders files may be sent from, and the node's own files that are never sent.
#[derive(Debug, Clone, Default)]
pub struct HostFiles {
    roots: Vec<Root>,
    secrets: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
struct Root {
    /// As configured (absolute).
    given: PathBuf,
    /// With its symbolic links resolved (the operator's choice, trusted).
    canonical: PathBuf,
}

impl HostFiles {
    /// Files below `roots` (roots that do not exist are left out, with a warning), never any of
    /// `secrets`.
    pub fn new(roots: &[PathBuf], secrets: Vec<PathBuf>) -> HostFiles {
        let roots = roots
            .iter()
            .filter_map(|given| match given.canonicalize() {
                Ok(canonical) => Some(Root { given: given.clone(), canonical }),
                Err(e) => {
                    tracing::warn!(root = %given.display(), error = %e, "a send root cannot be used");
                    None
                }
            })
            .collect();
        HostFiles { roots, secrets }
    }

    /// The roots with their links resolved.
    pub fn roots(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(|r| r.canonical.as_path())
    }

    /// Opens the file at the absolute `path`, confined beneath its root; a regular file that is
    /// not one of the node's own.
    pub fn open(&self, path: &str) -> Result<Opened, HostFileError> {
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(HostFileError::NotAbsolute(path.to_owned()));
        }
        if given.components().any(|c| c == Component::ParentDir) {
            return Err(HostFileError::Escapes(path.to_owned()));
        }
        let (root, rest) = self
            .roots
            .iter()
            .find_map(|root| {
                let rest = given.strip_prefix(&root.given).or_else(|_| given.strip_prefix(&root.canonical)).ok()?;
                (!rest.as_os_str().is_empty()).then_some((root, rest))
            })
            .ok_or_else(|| HostFileError::Outside(path.to_owned()))?;
        let unreadable = |e: std::io::Error| HostFileError::Unreadable {
            path: path.to_owned(),
            why: e.to_string(),
            may_pass: !matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::EACCES | libc::EPERM | libc::ENOTDIR | libc::ENAMETOOLONG)
            ),
        };
        let file = open_beneath(&root.canonical, rest).map_err(|e| match e.raw_os_error() {
            // ELOOP: a link on the way; EXDEV: the resolution left the root.
            Some(libc::ELOOP | libc::EXDEV) => HostFileError::Escapes(path.to_owned()),
            _ => unreadable(e),
        })?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(HostFileError::NotRegular(path.to_owned()));
        }
        if self.is_secret(&meta) {
            return Err(HostFileError::Secret(path.to_owned()));
        }
        Ok(Opened { file, identity: Identity::of(&meta) })
    }

    /// Opens the file at `path` again for sending, refusing it unless it is still the file
    /// accepted as `accepted` (files queued before identities were kept have none).
    pub fn reopen(&self, path: &str, accepted: Option<Identity>) -> Result<File, HostFileError> {
        let opened = self.open(path)?;
        match accepted {
            Some(identity) if identity != opened.identity => Err(HostFileError::Changed(path.to_owned())),
            _ => Ok(opened.file),
        }
    }

    fn is_secret(&self, meta: &std::fs::Metadata) -> bool {
        self.secrets
            .iter()
            .any(|secret| std::fs::metadata(secret).is_ok_and(|s| s.dev() == meta.dev() && s.ino() == meta.ino()))
    }
}

/// `rest` opened read-only beneath the directory `root`, following no symbolic link.
fn open_beneath(root: &Path, rest: &Path) -> std::io::Result<File> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused as not regular).
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(&dir, rest, flags, Mode::empty(), resolve) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::NOSYS) => walk_beneath(dir, rest, flags),
        Err(e) => Err(e.into()),
    }
}

/// Where `openat2` is missing: one `O_NOFOLLOW` open per component.
fn walk_beneath(mut dir: rustix::fd::OwnedFd, rest: &Path, flags: OFlags) -> std::io::Result<File> {
    let parts: Vec<_> = rest.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(name) = part else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a plain path below its root"));
        };
        let last = i + 1 == parts.len();
        let how = if last { flags } else { OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC };
        dir = rustix::fs::openat(&dir, *name, how | OFlags::NOFOLLOW, Mode::empty())?;
    }
    Ok(File::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, HostFiles, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        std::fs::create_dir_all(outbox.join("sub")).unwrap();
        std::fs::write(dir.path().join("node.key"), "secret").unwrap();
        let files = HostFiles::new(std::slice::from_ref(&outbox), vec![dir.path().join("node.key")]);
        (dir, files, outbox)
    }

    fn text(p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn regular_files_below_a_root_open() {
        let (_dir, files, outbox) = setup();
        std::fs::write(outbox.join("sub/a.txt"), "hello").unwrap();
        let opened = files.open(&text(&outbox.join("sub/a.txt"))).unwrap();
        assert_eq!(opened.identity.size, 5);
        assert_eq!(Identity::parse(&opened.identity.to_string()), Some(opened.identity));
    }

    #[test]
    fn links_parents_fifos_and_secrets_are_refused() {
        let (dir, files, outbox) = setup();
        let key = dir.path().join("node.key");
        std::os::unix::fs::symlink(&key, outbox.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), outbox.join("up")).unwrap();
        std::fs::hard_link(&key, outbox.join("hard")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, outbox.join("fifo"), rustix::fs::FileType::Fifo, Mode::RUSR, 0).unwrap();
        let refused = |p: PathBuf| files.open(&text(&p)).unwrap_err();
        assert!(matches!(refused(outbox.join("link")), HostFileError::Escapes(_)));
        assert!(matches!(refused(outbox.join("up/node.key")), HostFileError::Escapes(_)));
        assert!(matches!(refused(outbox.join("../node.key")), HostFileError::Escapes(_)));
        assert!(matches!(files.open("outbox/sub"), Err(HostFileError::NotAbsolute(_))));
        assert!(matches!(refused(outbox.join("missing")), HostFileError::Unreadable { .. }));
        assert!(matches!(refused(outbox.join("hard")), HostFileError::Secret(_)));
        assert!(matches!(refused(outbox.join("fifo")), HostFileError::NotRegular(_)));
        assert!(matches!(refused(outbox.join("sub")), HostFileError::NotRegular(_)));
        assert!(matches!(refused(key), HostFileError::Outside(_)));
        assert!(matches!(refused(outbox.clone()), HostFileError::Outside(_)));
    }

    #[test]
    fn a_swapped_or_changed_file_is_refused_at_reopen() {
        let (dir, files, outbox) = setup();
        let path = outbox.join("swap.txt");
        std::fs::write(&path, "accepted").unwrap();
        let accepted = files.open(&text(&path)).unwrap().identity;
        assert!(files.reopen(&text(&path), Some(accepted)).is_ok());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "replaced").unwrap();
        assert!(matches!(files.reopen(&text(&path), Some(accepted)), Err(HostFileError::Changed(_))));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("node.key"), &path).unwrap();
        assert!(matches!(files.reopen(&text(&path), Some(accepted)), Err(HostFileError::Escapes(_))));
    }

    #[test]
    fn the_walk_refuses_links_too() {
        let (dir, _files, outbox) = setup();
        std::os::unix::fs::symlink(dir.path(), outbox.join("up")).unwrap();
        std::fs::write(outbox.join("sub/a.txt"), "a").unwrap();
        let root = rustix::fs::open(&outbox, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let flags = OFlags::RDONLY | OFlags::NONBLOCK;
        assert!(walk_beneath(root.try_clone().unwrap(), Path::new("sub/a.txt"), flags).is_ok());
        assert!(walk_beneath(root.try_clone().unwrap(), Path::new("up/node.key"), flags).is_err());
        assert!(walk_beneath(root, Path::new("../node.key"), flags).is_err());
    }
}
