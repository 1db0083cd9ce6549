//! Where the receiver writes a file: direct I/O where the file system takes it, ranges synced as
//! they are written, so that a file of tens of GiB neither passes through the page cache nor
//! leaves seconds of writing to the final sync.

use std::path::Path;

use super::CHUNK;

/// Alignment of direct I/O, in memory, offsets and lengths: the largest logical block size in use.
const ALIGN: usize = 4096;

/// Bytes written through the page cache before their write-back is started (and the range before
/// them waited for), so that dirty pages never pile up.
const SYNC_EVERY: u64 = 8 << 20;

/// A receive buffer whose window of [`CHUNK`] bytes starts at a multiple of [`ALIGN`] in memory,
/// as direct I/O needs.
pub(super) struct ChunkBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl ChunkBuf {
    pub(super) fn new() -> ChunkBuf {
        let bytes = vec![0u8; CHUNK + ALIGN];
        let start = (ALIGN - bytes.as_ptr() as usize % ALIGN) % ALIGN;
        ChunkBuf { bytes, start }
    }

    /// The window, to fill.
    pub(super) fn space(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + CHUNK]
    }

    /// The window.
    pub(super) fn window(&self) -> &[u8] {
        &self.bytes[self.start..self.start + CHUNK]
    }
}

/// The partial file being written.
pub(super) struct Sink {
    /// The partial file, opened normally.
    file: std::fs::File,
    /// The same file opened for direct I/O, until the file system refuses a write through it.
    direct: Option<std::fs::File>,
    /// Where the range written through the page cache and not yet handed to write-back starts (it
    /// may hold blocks written directly too: syncing those costs nothing).
    unsynced: u64,
    /// Where the range handed to write-back and not yet waited for starts.
    syncing: u64,
}

impl Sink {
    /// Writes to `file`, opened from `path`, from offset `at`.
    pub(super) fn open(path: &Path, file: std::fs::File, at: u64) -> Sink {
        Sink { file, direct: open_direct(path), unsynced: at, syncing: at }
    }

    /// Writes the first `len` bytes of `buf`'s window at `offset`: the whole blocks directly when
    /// `offset` is block-aligned (as every chunk of a well-behaved sender is), the rest through the
    /// page cache. Nothing past `offset + len` is ever written.
    pub(super) fn write(&mut self, offset: u64, buf: &ChunkBuf, len: usize) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        if let Some(direct) = &self.direct {
            let whole_blocks = if offset.is_multiple_of(ALIGN as u64) { len / ALIGN * ALIGN } else { 0 };
            if whole_blocks > 0 {
                match direct.write_all_at(&buf.window()[..whole_blocks], offset) {
                    Ok(()) => done = whole_blocks,
                    // The file system takes no direct I/O after all (or not with this alignment).
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => self.direct = None,
                    Err(e) => return Err(e),
                }
            }
        }
        if done < len {
            self.file.write_all_at(&buf.window()[done..len], offset + done as u64)?;
            let end = offset + len as u64;
            if end - self.unsynced >= SYNC_EVERY {
                self.write_back(end);
            }
        }
        Ok(())
    }

    /// Starts the write-back of `[unsynced, end)`, waits for the range handed over before it and
    /// drops that range from the page cache.
    #[cfg(target_os = "linux")]
    fn write_back(&mut self, end: u64) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let span = |from: u64, to: u64| (from as libc::off64_t, (to - from) as libc::off64_t);
        // Advice only: a failure here leaves the work to the final sync.
        unsafe {
            let (at, len) = span(self.syncing, self.unsynced);
            if len > 0 {
                let wait =
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                libc::sync_file_range(fd, at, len, wait);
                libc::posix_fadvise(fd, at, len, libc::POSIX_FADV_DONTNEED);
            }
            let (at, len) = span(self.unsynced, end);
            libc::sync_file_range(fd, at, len, libc::SYNC_FILE_RANGE_WRITE);
        }
        (self.syncing, self.unsynced) = (self.unsynced, end);
    }

    /// Nothing to start on this system: the final sync does it all.
    #[cfg(not(target_os = "linux"))]
    fn write_back(&mut self, _end: u64) {}

    /// Makes the file durable: its data (most of it synced already) and its size.
    pub(super) fn finish(self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// The file at `path` opened for direct I/O writes, if the system and file system allow it.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

/// The file at `path` opened for direct I/O writes: not on this system.
#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<std::fs::File> {
    None
}

#[cfg(test)]
mod tests {
    use super::{ChunkBuf, Sink, CHUNK};

    /// Whole chunks and a short last one (whole blocks and a tail), written as the receiver
    /// writes them, in a temporary folder (direct I/O on most disks) and in /dev/shm (tmpfs:
    /// direct I/O or the fallback, whose ranges are synced as they go); then a chunk at an offset
    /// that is not block-aligned.
    #[test]
    fn the_sink_writes_whole_blocks_directly_and_the_rest_through_the_page_cache() {
        let content: Vec<u8> = (0..20 * CHUNK + 5000).map(|i| (i * 7 % 251) as u8).collect();
        let shm = std::path::Path::new("/dev/shm");
        let dirs: Vec<tempfile::TempDir> =
            [Some(tempfile::tempdir().unwrap()), shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap())]
                .into_iter()
                .flatten()
                .collect();
        for dir in &dirs {
            let path = dir.path().join("f.part");
            let file =
                std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).unwrap();
            let mut sink = Sink::open(&path, file, 0);
            let mut offset = 0;
            let mut buf = ChunkBuf::new();
            for piece in content.chunks(CHUNK) {
                buf.space()[..piece.len()].copy_from_slice(piece);
                sink.write(offset, &buf, piece.len()).unwrap();
                offset += piece.len() as u64;
            }
            buf.space()[..3].copy_from_slice(b"end");
            sink.write(offset, &buf, 3).unwrap();
            sink.finish().unwrap();
            let written = std::fs::read(&path).unwrap();
            assert!(
                written[..content.len()] == content[..] && written[content.len()..] == *b"end",
                "{}",
                path.display()
            );
        }
    }
}
