//! Files between nodes: chunked, checked, resumable, never held whole in memory.
//!
//! A file travels on its own stream ahead of the request or reply it belongs to:
//!
//! ```text
//! sender                                   receiver
//!   ── FileOffer{key, name, size} ──▶        opens data_dir/partial/<peer>/<key>.part
//!   ◀── FileResume{have}                     keeps the verified prefix (whole chunks)
//!   ── FileChunk{offset, len, sha256} + len bytes ──▶   checks the chunk, appends it
//!   ── …                                     (a bad chunk resets the stream: ChunkCorrupt)
//!   ── FileEnd{sha256} ──▶                   checks the whole file, fsyncs, moves it to
//!   ◀── FileDone{sha256}                     data_dir/received/<peer>/<request-id>/<safe name>
//! ```
//!
//! Whatever breaks the stream (a lost connection, a restart of either node, a bad chunk), the
//! next offer of the same key continues from the last verified chunk. Memory per transfer is a few
//! chunk buffers whatever the file size. The receiver writes with direct I/O where the file system
//! allows it, so a file of tens of GiB is not copied through the page cache.

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::wire::{self, Answer, Code, FileChunk, FileDone, FileEnd, FileOffer, FilePart, FileResume, Opening};

/// The chunk size: each chunk carries its own SHA-256.
pub const CHUNK: usize = 1 << 20;
/// The longest file name kept (bytes of UTF-8).
const MAX_NAME: usize = 200;

/// What went wrong with a transfer.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The stream or connection failed; an offer of the same key resumes.
    #[error("the transfer was interrupted: {0}")]
    Interrupted(String),
    /// The peer refused the file (too large, or the whole file did not match its hash).
    #[error("the peer refused the file: {}", .0.message)]
    Refused(wire::Refusal),
    /// The local file could not be read.
    #[error("cannot read {path}: {error}")]
    Source {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// A received file, verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Where it now lies.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// Reduces a name from a peer to a safe file name: no separators, no `..`, no control or
/// reserved characters, at most 200 bytes, never empty.
pub fn safe_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_control() || "/\\:*?\"<>|".contains(c) { '_' } else { c }).collect();
    let mut cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    while cleaned.len() > MAX_NAME {
        cleaned.pop();
    }
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.' || c == '_') {
        "file".to_owned()
    } else {
        cleaned
    }
}

/// Chunks in flight between a transfer's stream and its disk thread (each way).
const DEPTH: usize = 4;

/// Sends `file` (opened from `path`, which only error messages name) as `name` for `key`,
/// resuming where the receiver stands; calls `progress(bytes_done)` as chunks go. Returns the
/// whole file's size and SHA-256.
///
/// A blocking thread reads the file and hashes it (each chunk, and the whole) a few chunks ahead
/// of the stream, which writes each chunk's header and bytes without copying them.
pub async fn send(
    connection: &quinn::Connection,
    key: &str,
    file: std::fs::File,
    path: &Path,
    name: &str,
    progress: impl Fn(u64),
) -> Result<(u64, [u8; 32]), TransferError> {
    let source = |error| TransferError::Source { path: path.to_owned(), error };
    let interrupted = |e: &dyn std::fmt::Display| TransferError::Interrupted(e.to_string());
    let mut file = tokio::fs::File::from_std(file);
    let size = file.metadata().await.map_err(source)?.len();
    let (mut tx, mut rx) = connection.open_bi().await.map_err(|e| interrupted(&e))?;
    let offer = FileOffer { version: wire::PROTOCOL_VERSION, key: key.to_owned(), name: name.to_owned(), size };
    wire::write(&mut tx, &Opening::FileOffer(offer)).await.map_err(|e| interrupted(&e))?;
    let have = match wire::read(&mut rx).await.map_err(|e| interrupted(&e))? {
        Answer::FileResume(FileResume { have }) if have <= size => have,
        Answer::FileDone(FileDone { sha256: theirs }) => {
            // The peer holds the whole file from an earlier attempt: check it is this one.
            let ours = hash_file(&mut file, &mut vec![0u8; CHUNK]).await.map_err(source)?;
            progress(size);
            return if ours == theirs {
                Ok((size, ours))
            } else {
                Err(refused("the peer holds another file under this request"))
            };
        }
        Answer::Refused(r) => return Err(TransferError::Refused(r)),
        other => return Err(TransferError::Interrupted(format!("unexpected answer to a file offer: {other:?}"))),
    };
    let file = file.into_std().await;
    let (to_net, mut from_disk) = tokio::sync::mpsc::channel::<(u64, Bytes, [u8; 32])>(DEPTH);
    let reader = tokio::task::spawn_blocking(move || read_chunks(file, have, size, to_net));
    progress(have);
    while let Some((offset, bytes, sha256)) = from_disk.recv().await {
        let len = bytes.len();
        let header = FileChunk { offset, len: len as u32, sha256 };
        let header = wire::encode(&FilePart::FileChunk(header)).map_err(|e| interrupted(&e))?;
        tx.write_all_chunks(&mut [Bytes::from(header), bytes]).await.map_err(|e| interrupted(&e))?;
        progress(offset + len as u64);
    }
    // The channel closes when the reader ends: with the whole file's hash, or with an error.
    let sha256 = reader.await.map_err(|e| source(std::io::Error::other(e)))?.map_err(source)?;
    wire::write(&mut tx, &FilePart::FileEnd(FileEnd { sha256 })).await.map_err(|e| interrupted(&e))?;
    let _ = tx.finish();
    match wire::read(&mut rx).await {
        Ok(Answer::FileDone(FileDone { sha256: theirs })) if theirs == sha256 => Ok((size, sha256)),
        Ok(Answer::FileDone(_)) => Err(refused("the peer computed another SHA-256")),
        Ok(Answer::Refused(r)) => Err(TransferError::Refused(r)),
        Ok(other) => Err(TransferError::Interrupted(format!("unexpected answer after the file: {other:?}"))),
        Err(e) => Err(interrupted(&e)),
    }
}

/// The sender's disk thread: hashes the prefix `[0, have)` the receiver holds (the whole-file
/// hash covers it), then reads `[have, size)` in chunks, hashing each, and hands them to the
/// stream. Returns the whole file's SHA-256; stops early (with an error) if the stream is gone.
fn read_chunks(
    mut file: std::fs::File,
    have: u64,
    size: u64,
    to_net: tokio::sync::mpsc::Sender<(u64, Bytes, [u8; 32])>,
) -> std::io::Result<[u8; 32]> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < have {
        let n = read_up_to_std(&mut file, &mut buf[..(have - done).min(CHUNK as u64) as usize])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        whole.update(&buf[..n]);
        done += n as u64;
    }
    drop(buf);
    file.seek(std::io::SeekFrom::Start(have))?;
    while done < size {
        // Read into fresh capacity: no zeroing of what the read overwrites.
        let want = (size - done).min(CHUNK as u64);
        let mut buf = Vec::with_capacity(want as usize);
        let n = std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, want), &mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("the file shrank while it was being sent"));
        }
        whole.update(&buf);
        let sha256: [u8; 32] = Sha256::digest(&buf).into();
        if to_net.blocking_send((done, Bytes::from(buf), sha256)).is_err() {
            return Err(std::io::Error::other("the stream stopped"));
        }
        done += n as u64;
    }
    Ok(whole.finalize().into())
}

/// Fills `buf` as far as the file allows; returns how many bytes were read.
fn read_up_to_std(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn refused(message: &str) -> TransferError {
    TransferError::Refused(wire::Refusal::new(wire::RefusalKind::BadRequest, message))
}

/// SHA-256 of the whole file, read from the start.
async fn hash_file(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<[u8; 32]> {
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut whole = Sha256::new();
    loop {
        let n = read_up_to(file, buf).await?;
        if n == 0 {
            return Ok(whole.finalize().into());
        }
        whole.update(&buf[..n]);
    }
}

/// Fills `buf` as far as the file allows; returns how many bytes were read.
async fn read_up_to(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Where a receiver keeps files: partial ones and verified ones.
#[derive(Debug, Clone)]
pub struct Folders {
    /// `data_dir/partial`.
    pub partial: PathBuf,
    /// `data_dir/received`.
    pub received: PathBuf,
    /// The largest file accepted.
    pub max_size: u64,
}

impl Folders {
    /// The folders under `data_dir`.
    pub fn new(data_dir: &Path, max_size: u64) -> Self {
        Folders { partial: data_dir.join("partial"), received: data_dir.join("received"), max_size }
    }
}

/// Why a receive ended without a file.
#[derive(Debug)]
pub enum ReceiveError {
    /// Reset the stream with this code (the sender will resume).
    Reset(Code, String),
    /// Answer the sender with this refusal (it will not resume).
    Refuse(wire::Refusal),
}

/// Receives the file offered on this stream from `peer`, resuming a partial one, and moves it
/// to `received/<peer>/<request-id>/<safe name>` once it is whole and verified. The caller
/// records it, then answers [`Answer::FileDone`].
///
/// The stream is read on this task; a blocking thread checks each chunk, hashes it into the whole
/// file and writes it, a few chunks behind. It stops at the first bad chunk (nothing from it on is
/// written), and every end of the receive waits for it, so the partial file then holds exactly the
/// verified chunks.
pub async fn receive(
    folders: &Folders,
    peer: &str,
    offer: FileOffer,
    tx: &mut quinn::SendStream,
    rx: &mut quinn::RecvStream,
    progress: impl Fn(u64, u64),
) -> Result<Received, ReceiveError> {
    let io = |e: std::io::Error| match out_of_space(&e) {
        true => ReceiveError::Refuse(wire::Refusal::new(
            wire::RefusalKind::InsufficientStorage,
            format!("the receiving node's disk is full ({e}); send it again once its admin has freed space"),
        )),
        false => ReceiveError::Reset(Code::Done, format!("disk error: {e}")),
    };
    let refuse = |kind, message: String| ReceiveError::Refuse(wire::Refusal::new(kind, message));
    if offer.size > folders.max_size {
        return Err(refuse(
            wire::RefusalKind::TooLarge,
            format!("the file is {} bytes, over this node's files.max_size of {}", offer.size, folders.max_size),
        ));
    }
    let key = safe_name(&offer.key.replace('/', "."));
    let dir = folders.partial.join(safe_name(peer));
    let partial = dir.join(format!("{key}.part"));
    let size = offer.size;
    let held = std::fs::metadata(&partial).map_or(0, |m| m.len().min(size));
    if let Some(refusal) = no_room(&folders.partial, size - held) {
        tracing::warn!(%peer, key = %offer.key, size, "{}", refusal.message);
        // Refused, the sender does not resume: what an earlier attempt left only takes room.
        let _ = std::fs::remove_file(&partial);
        return Err(ReceiveError::Refuse(refusal));
    }
    let (file, whole, have) = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || {
            open_partial(&dir, &partial, size).map(|(file, whole, have)| (Sink::open(&partial, file), whole, have))
        })
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(io)?
    };
    if have > 0 {
        tracing::info!(%peer, key = %offer.key, have, size = offer.size, "resuming a file transfer");
    }
    let broken = |e: &dyn std::fmt::Display| ReceiveError::Reset(Code::ProtocolViolation, e.to_string());
    wire::write(tx, &Answer::FileResume(FileResume { have })).await.map_err(|e| broken(&e))?;
    progress(have, offer.size);

    let (to_disk, from_net) = tokio::sync::mpsc::channel::<(FileChunk, ChunkBuf)>(DEPTH);
    let (written_tx, mut written) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let (recycle_tx, mut recycle) = tokio::sync::mpsc::unbounded_channel::<ChunkBuf>();
    let cancelled = Arc::new(AtomicBool::new(false));
    // If this future is dropped, the disk thread writes nothing more.
    let _cancel = CancelOnDrop(cancelled.clone());
    let writer = tokio::task::spawn_blocking(move || {
        write_chunks(file, whole, have, from_net, written_tx, recycle_tx, &cancelled)
    });
    let mut to_disk = Some(to_disk);
    let mut next = have;
    let mut writer_gone = false;
    // How the stream part ended: with the whole file's hash, or with an error.
    let ended: Result<[u8; 32], Fault> = loop {
        let buf = match recycle.try_recv() {
            Ok(buf) => buf,
            Err(_) => ChunkBuf::new(),
        };
        let frame = next_frame(rx, next, offer.size, buf);
        tokio::pin!(frame);
        let frame = loop {
            tokio::select! {
                biased;
                done = written.recv(), if !writer_gone => match done {
                    Some(done) => progress(done, offer.size),
                    // The disk thread stopped before it was told to: a bad chunk or a disk error.
                    None => writer_gone = true,
                },
                frame = &mut frame => break Some(frame),
            }
            if writer_gone {
                break None;
            }
        };
        match frame {
            None => break Err(Fault::Reset(ReceiveError::Reset(Code::Done, "the disk thread stopped".into()))),
            Some(Ok(Frame::Chunk(c, buf))) => {
                next += c.len as u64;
                let Some(sender) = &to_disk else { unreachable!() };
                if sender.send((c, buf)).await.is_err() {
                    break Err(Fault::Reset(ReceiveError::Reset(Code::Done, "the disk thread stopped".into())));
                }
            }
            Some(Ok(Frame::End(sha256))) => break Ok(sha256),
            Some(Err(e)) => break Err(e),
        }
    };
    // Let the disk thread finish what it holds, and take its verdict (which comes first).
    drop(to_disk.take());
    let outcome = writer.await.map_err(|e| io(std::io::Error::other(e)))?;
    while let Ok(done) = written.try_recv() {
        progress(done, offer.size);
    }
    let (file, whole, have) = match outcome {
        Ok(state) => state,
        Err(WriteFailure::Corrupt(offset)) => {
            return Err(ReceiveError::Reset(Code::ChunkCorrupt, format!("chunk at {offset} failed its SHA-256")))
        }
        // The disk filled up under way: the partial file only takes room, and resuming cannot help.
        Err(WriteFailure::Disk(e)) if out_of_space(&e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            tracing::warn!(%peer, key = %offer.key, error = %e, "a received file did not fit on the disk; discarded");
            return Err(refuse(
                wire::RefusalKind::InsufficientStorage,
                "the receiving node's disk filled up while the file arrived; it was discarded. Send it again once \
                 that node's admin has freed space"
                    .into(),
            ));
        }
        Err(WriteFailure::Disk(e)) => return Err(io(e)),
    };
    let sha256 = match ended {
        Ok(sha256) => sha256,
        Err(Fault::Broken(e)) => {
            return Err(ReceiveError::Reset(e.code(), format!("the file stream broke at {have} bytes: {e}")))
        }
        Err(Fault::Reset(e)) => return Err(e),
    };
    if have != offer.size {
        return Err(ReceiveError::Reset(
            Code::ProtocolViolation,
            format!("the file ended at {have} of {} bytes", offer.size),
        ));
    }
    let ours: [u8; 32] = whole.finalize().into();
    if ours != sha256 {
        drop(file);
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(refuse(
            wire::RefusalKind::BadRequest,
            "the whole file did not match its SHA-256; it was discarded".into(),
        ));
    }
    tokio::task::spawn_blocking(move || file.finish()).await.map_err(|e| io(std::io::Error::other(e)))?.map_err(io)?;
    let request_id = offer.key.split('/').next().unwrap_or_default();
    let folder = folders.received.join(safe_name(peer)).join(safe_name(request_id));
    tokio::fs::create_dir_all(&folder).await.map_err(io)?;
    let path = place(&partial, &folder, &safe_name(&offer.name)).map_err(io)?;
    if let Ok(d) = std::fs::File::open(&folder) {
        let _ = d.sync_all();
    }
    Ok(Received { path, size: have, sha256 })
}

/// Room kept free on the disk of received files beyond what a file needs.
const SPARE: u64 = 16 << 20;

/// Why a file needing `more` bytes cannot be received into `dir` now, if the disk is short of
/// room (with [`SPARE`] to spare); `None` when it fits, or when the free space cannot be read.
fn no_room(dir: &Path, more: u64) -> Option<wire::Refusal> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let stats = rustix::fs::statvfs(existing).ok()?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    (free < more.saturating_add(SPARE)).then(|| {
        wire::Refusal::new(
            wire::RefusalKind::InsufficientStorage,
            format!(
                "the receiving node has {} MiB free for received files, and this file needs {} MiB more; \
                 send it again once that node's admin has freed space",
                free >> 20,
                (more.saturating_add(SPARE) + (1 << 20) - 1) >> 20
            ),
        )
    })
}

/// Whether a write failed for want of room: a full disk, a quota, a file size limit.
fn out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG))
}

/// Opens (or creates) the partial file, keeps only whole verified chunks and never more than the
/// offered size, and hashes what it keeps. Returns the file (positioned at its end), the hash so
/// far and the length kept.
fn open_partial(dir: &Path, partial: &Path, size: u64) -> std::io::Result<(std::fs::File, Sha256, u64)> {
    use std::io::Seek;
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(partial)?;
    let len = file.metadata()?.len();
    let have = (len / CHUNK as u64 * CHUNK as u64).min(size / CHUNK as u64 * CHUNK as u64);
    if len != have {
        file.set_len(have)?;
    }
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    while read < have {
        let n = read_up_to_std(&mut file, &mut buf[..(have - read).min(CHUNK as u64) as usize])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        whole.update(&buf[..n]);
        read += n as u64;
    }
    file.seek(std::io::SeekFrom::Start(have))?;
    Ok((file, whole, have))
}

/// One frame of a file stream, as the receiver takes it.
enum Frame {
    /// A chunk's header and its bytes (the first `len` of the buffer).
    Chunk(FileChunk, ChunkBuf),
    /// The end, with the whole file's claimed SHA-256.
    End([u8; 32]),
}

/// Reads the next frame, and a chunk's bytes into `buf`, checking the chunk is in place (at
/// `next`, not empty, at most [`CHUNK`], within `size`).
async fn next_frame(rx: &mut quinn::RecvStream, next: u64, size: u64, mut buf: ChunkBuf) -> Result<Frame, Fault> {
    match wire::read(rx).await {
        Ok(FilePart::FileChunk(c)) => {
            let len = c.len as usize;
            if c.offset != next || len == 0 || len > CHUNK || next + len as u64 > size {
                return Err(Fault::Reset(ReceiveError::Reset(
                    Code::ProtocolViolation,
                    format!("chunk at {} of {len} bytes is out of place", c.offset),
                )));
            }
            rx.read_exact(&mut buf.space()[..len])
                .await
                .map_err(|e| Fault::Reset(ReceiveError::Reset(Code::Done, e.to_string())))?;
            Ok(Frame::Chunk(c, buf))
        }
        Ok(FilePart::FileEnd(FileEnd { sha256 })) => Ok(Frame::End(sha256)),
        Err(e @ wire::FrameError::Misplaced { .. }) => Err(Fault::Reset(ReceiveError::Reset(
            Code::ProtocolViolation,
            format!("unexpected message in a file stream: {e}"),
        ))),
        Err(e) => Err(Fault::Broken(e)),
    }
}

/// Why the stream side of a receive stopped.
enum Fault {
    /// The stream broke (reset with the error's code, reporting how much was written).
    Broken(wire::FrameError),
    /// The stream was misused, or the disk thread is gone.
    Reset(ReceiveError),
}

/// Why the receiver's disk thread stopped early.
enum WriteFailure {
    /// The chunk at this offset failed its SHA-256 (it and later ones were not written).
    Corrupt(u64),
    /// The disk failed.
    Disk(std::io::Error),
}

/// Sets the flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The receiver's disk thread: checks each chunk, hashes it into the whole file, writes it, and
/// reports the length written; stops at the first bad chunk. Returns the file, the whole hash and
/// the length once the stream side closes the channel.
fn write_chunks(
    mut sink: Sink,
    mut whole: Sha256,
    mut have: u64,
    mut from_net: tokio::sync::mpsc::Receiver<(FileChunk, ChunkBuf)>,
    written: tokio::sync::mpsc::UnboundedSender<u64>,
    recycle: tokio::sync::mpsc::UnboundedSender<ChunkBuf>,
    cancelled: &AtomicBool,
) -> Result<(Sink, Sha256, u64), WriteFailure> {
    while let Some((c, buf)) = from_net.blocking_recv() {
        if cancelled.load(Ordering::SeqCst) {
            break;
        }
        let len = c.len as usize;
        let chunk = &buf.window()[..len];
        if <[u8; 32]>::from(Sha256::digest(chunk)) != c.sha256 {
            return Err(WriteFailure::Corrupt(c.offset));
        }
        sink.write(have, &buf, len).map_err(WriteFailure::Disk)?;
        whole.update(chunk);
        have += len as u64;
        let _ = written.send(have);
        let _ = recycle.send(buf);
    }
    Ok((sink, whole, have))
}

/// Alignment of direct I/O, in memory, offsets and lengths: the largest logical block size in use.
const ALIGN: usize = 4096;

/// A receive buffer whose window of [`CHUNK`] bytes starts at a multiple of [`ALIGN`] in memory,
/// as direct I/O needs.
struct ChunkBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl ChunkBuf {
    fn new() -> ChunkBuf {
        let bytes = vec![0u8; CHUNK + ALIGN];
        let start = (ALIGN - bytes.as_ptr() as usize % ALIGN) % ALIGN;
        ChunkBuf { bytes, start }
    }

    /// The window, to fill.
    fn space(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + CHUNK]
    }

    /// The window.
    fn window(&self) -> &[u8] {
        &self.bytes[self.start..self.start + CHUNK]
    }
}

/// Where the receiver writes a file: with direct I/O where the file system takes it (Linux), so
/// that a file of tens of GiB is not copied through the page cache and does not evict what the
/// machine keeps there; through the page cache otherwise.
struct Sink {
    /// The partial file, opened normally.
    file: std::fs::File,
    /// The same file opened for direct I/O, until the file system refuses a write through it.
    direct: Option<std::fs::File>,
}

impl Sink {
    fn open(path: &Path, file: std::fs::File) -> Sink {
        Sink { file, direct: open_direct(path) }
    }

    /// Writes the first `len` bytes of `buf`'s window at `offset`: the whole blocks directly when
    /// `offset` is block-aligned (as every chunk of a well-behaved sender is), the rest through the
    /// page cache. Nothing past `offset + len` is ever written.
    fn write(&mut self, offset: u64, buf: &ChunkBuf, len: usize) -> std::io::Result<()> {
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
        }
        Ok(())
    }

    /// Fsyncs the file (both handles share it).
    fn finish(self) -> std::io::Result<()> {
        self.file.sync_all()
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

/// Moves `partial` into `folder` as `name`, or `2-name`, `3-name`, … if that is taken: a file
/// already received is never replaced (a service may hold it).
fn place(partial: &Path, folder: &Path, name: &str) -> std::io::Result<PathBuf> {
    let mut path = folder.join(name);
    for n in 2.. {
        match std::fs::hard_link(partial, &path) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => path = folder.join(format!("{n}-{name}")),
            Err(e) => return Err(e),
        }
    }
    std::fs::remove_file(partial)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::{safe_name, ChunkBuf, Sink, CHUNK};

    /// A whole chunk and a short last one (whole blocks and a tail), written as the receiver
    /// writes them, in a temporary folder (direct I/O on most disks) and in /dev/shm (tmpfs:
    /// direct I/O or the fallback); then a chunk at an offset that is not block-aligned.
    #[test]
    fn the_sink_writes_whole_blocks_directly_and_the_rest_through_the_page_cache() {
        let content: Vec<u8> = (0..CHUNK + 5000).map(|i| (i * 7 % 251) as u8).collect();
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
            let mut sink = Sink::open(&path, file);
            let mut offset = 0;
            for piece in content.chunks(CHUNK) {
                let mut buf = ChunkBuf::new();
                buf.space()[..piece.len()].copy_from_slice(piece);
                sink.write(offset, &buf, piece.len()).unwrap();
                offset += piece.len() as u64;
            }
            let mut odd = ChunkBuf::new();
            odd.space()[..3].copy_from_slice(b"end");
            sink.write(offset, &odd, 3).unwrap();
            sink.finish().unwrap();
            let written = std::fs::read(&path).unwrap();
            assert!(
                written[..content.len()] == content[..] && written[content.len()..] == *b"end",
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn hostile_names_become_safe_file_names() {
        assert_eq!(safe_name("report.tar.gz"), "report.tar.gz");
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name("."), "file");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name(".hidden"), "hidden");
        assert_eq!(safe_name("a\\b:c\u{0}d\ne"), "a_b_c_d_e");
        assert_eq!(safe_name("/"), "file");
        let long = "é".repeat(300);
        let cut = safe_name(&long);
        assert!(cut.len() <= 200 && cut.chars().all(|c| c == 'é'));
        for hostile in ["../x", "a/../../b", "/etc/passwd", "..\\..\\x", "x/.."] {
            let s = safe_name(hostile);
            assert!(!s.contains('/') && !s.contains('\\') && s != ".." && s != ".", "{hostile} → {s}");
        }
    }
}
