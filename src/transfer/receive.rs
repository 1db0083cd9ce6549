//! The receiving side: receive → check and write ∥ hash.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::sink::{reserve, ChunkBuf, Sink};
use super::{hash_prefix, safe_name, Check, Folders, Received, CHUNK, DEPTH};
use crate::wire::{self, Answer, Code, FileEnd, FileOffer, FilePart, FileResume};

/// Why a receive ended without a file.
#[derive(Debug)]
pub enum ReceiveError {
    /// Reset the stream with this code (the sender will resume).
    Reset(Code, String),
    /// Answer the sender with this refusal (it will not resume).
    Refuse(wire::Refusal),
}

/// A chunk on its way from the stream to the disk and the hasher, which share its buffer.
type Piece = (u64, usize, Check, Arc<ChunkBuf>);

/// Receives the file offered on this stream from `peer`, resuming a partial one, and moves it
/// to `received/<peer>/<request-id>/<safe name>` once it is whole and verified. The caller
/// records it, then answers [`Answer::FileDone`].
///
/// The stream is read on this task into recycled buffers; a writer thread checks each chunk and
/// writes it, and a hasher thread hashes the whole file (first the prefix already held, while the
/// rest arrives). The writer stops at the first bad chunk (nothing from it on is written), and
/// every end of the receive waits for it, so the partial file then holds exactly the verified
/// chunks. A sender that resets the stream with [`Code::SourceChanged`] has the partial file
/// removed.
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
    let size = offer.size;
    if size > folders.max_size {
        return Err(refuse(
            wire::RefusalKind::TooLarge,
            format!("the file is {size} bytes, over this node's files.max_size of {}", folders.max_size),
        ));
    }
    let key = safe_name(&offer.key.replace('/', "."));
    let dir = folders.partial.join(safe_name(peer));
    let partial = dir.join(format!("{key}.part"));
    // What an earlier attempt holds, or reserved beyond it, is already off the free space.
    let held = std::fs::metadata(&partial).map_or(0, |m| m.len().max(m.blocks() * 512).min(size));
    if let Some(refusal) = no_room(&folders.partial, size - held) {
        tracing::warn!(%peer, key = %offer.key, size, "{}", refusal.message);
        // Refused, the sender does not resume: what an earlier attempt left only takes room.
        let _ = std::fs::remove_file(&partial);
        return Err(ReceiveError::Refuse(refusal));
    }
    let opened = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || open_partial(&dir, &partial, size))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
    };
    let (file, have) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if out_of_space(&e) {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(io(e));
        }
    };
    if have > 0 {
        tracing::info!(%peer, key = %offer.key, have, size, "resuming a file transfer");
    }
    let hashed = file.try_clone().map_err(io)?;
    let sink = Sink::open(&partial, file, have, size, folders.direct_io).map_err(io)?;
    if let Err(e) = wire::write(tx, &Answer::FileResume(FileResume { have })).await {
        sink.release(have);
        return Err(ReceiveError::Reset(Code::ProtocolViolation, e.to_string()));
    }
    progress(have, size);

    let (to_disk, from_net) = mpsc::channel::<Piece>(DEPTH);
    let (to_hash, from_net_too) = mpsc::channel::<Piece>(DEPTH);
    let (written_tx, mut written) = mpsc::unbounded_channel::<u64>();
    let (recycle_tx, mut recycle) = mpsc::unbounded_channel::<ChunkBuf>();
    let cancelled = Arc::new(AtomicBool::new(false));
    // If this future is dropped, the writer writes nothing more.
    let _cancel = CancelOnDrop(cancelled.clone());
    let hasher = {
        let recycle = recycle_tx.clone();
        tokio::task::spawn_blocking(move || hash_chunks(&hashed, have, from_net_too, recycle))
    };
    let writer =
        tokio::task::spawn_blocking(move || write_chunks(sink, have, from_net, written_tx, recycle_tx, &cancelled));
    let mut next = have;
    let mut writer_gone = false;
    // How the stream part ended: with the whole file's claimed hash, or with an error.
    let ended: Result<[u8; 32], Fault> = loop {
        let buf = recycle.try_recv().unwrap_or_else(|_| ChunkBuf::new());
        // A sender that sends nothing for `stall` holds the stream (and the space reserved) no more.
        let frame = tokio::time::timeout(folders.stall, next_frame(rx, next, size, buf));
        tokio::pin!(frame);
        let frame = loop {
            tokio::select! {
                biased;
                done = written.recv(), if !writer_gone => match done {
                    Some(done) => progress(done, size),
                    // The writer stopped before it was told to: a bad chunk or a disk error.
                    None => writer_gone = true,
                },
                frame = &mut frame => break Some(frame.unwrap_or_else(|_| Err(Fault::Reset(ReceiveError::Reset(
                    Code::Stalled,
                    format!("the sender sent nothing for {} s", folders.stall.as_secs()),
                ))))),
            }
            if writer_gone {
                break None;
            }
        };
        let stopped = || Err(Fault::Reset(ReceiveError::Reset(Code::Done, "the writer stopped".into())));
        match frame {
            None => break stopped(),
            Some(Ok(Frame::Chunk(offset, len, check, buf))) => {
                next += len as u64;
                let buf = Arc::new(buf);
                if to_hash.send((offset, len, check, buf.clone())).await.is_err()
                    || to_disk.send((offset, len, check, buf)).await.is_err()
                {
                    break stopped();
                }
            }
            Some(Ok(Frame::End(sha256))) => break Ok(sha256),
            Some(Err(e)) => break Err(e),
        }
    };
    // Let the writer and the hasher finish what they hold, and take the writer's verdict first.
    drop((to_disk, to_hash));
    let outcome = writer.await.map_err(|e| io(std::io::Error::other(e)))?;
    let whole = hasher.await.map_err(|e| io(std::io::Error::other(e)))?;
    while let Ok(done) = written.try_recv() {
        progress(done, size);
    }
    let (sink, have) = match outcome {
        Ok(state) => state,
        Err(WriteFailure::Corrupt(offset)) => {
            return Err(ReceiveError::Reset(Code::ChunkCorrupt, format!("chunk at {offset} failed its check")))
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
        Err(Fault::SourceChanged) => {
            drop(sink);
            let _ = tokio::fs::remove_file(&partial).await;
            tracing::warn!(%peer, key = %offer.key, "the sender's file changed under way; its part was discarded");
            return Err(ReceiveError::Reset(Code::SourceChanged, "the sender's file changed under way".into()));
        }
        Err(Fault::Broken(e)) => {
            return Err(ReceiveError::Reset(e.code(), format!("the file stream broke at {have} bytes: {e}")))
        }
        Err(Fault::Reset(e)) => return Err(e),
    };
    if have != size {
        return Err(ReceiveError::Reset(Code::ProtocolViolation, format!("the file ended at {have} of {size} bytes")));
    }
    let ours: [u8; 32] = whole.map_err(io)?.finalize().into();
    if ours != sha256 {
        drop(sink);
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(refuse(
            wire::RefusalKind::BadRequest,
            "the whole file did not match its SHA-256; it was discarded".into(),
        ));
    }
    tokio::task::spawn_blocking(move || sink.finish()).await.map_err(|e| io(std::io::Error::other(e)))?.map_err(io)?;
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
/// offered size, and reserves the disk space of the rest. Returns the file and the length kept.
fn open_partial(dir: &Path, partial: &Path, size: u64) -> std::io::Result<(std::fs::File, u64)> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(partial)?;
    let len = file.metadata()?.len();
    let have = (len / CHUNK as u64 * CHUNK as u64).min(size / CHUNK as u64 * CHUNK as u64);
    if len != have {
        file.set_len(have)?;
    }
    reserve(&file, have, size)?;
    Ok((file, have))
}

/// One frame of a file stream, as the receiver takes it.
enum Frame {
    /// A chunk: its offset, length, claimed check and bytes (the first `len` of the buffer).
    Chunk(u64, usize, Check, ChunkBuf),
    /// The end, with the whole file's claimed SHA-256.
    End([u8; 32]),
}

/// Reads the next frame, and a chunk's bytes into `buf`, checking the chunk is in place (at
/// `next`, not empty, at most [`CHUNK`], within `size`).
async fn next_frame(rx: &mut quinn::RecvStream, next: u64, size: u64, mut buf: ChunkBuf) -> Result<Frame, Fault> {
    let (offset, len, check) = match wire::read(rx).await {
        Ok(FilePart::FileChunkCrc(c)) => (c.offset, c.len as usize, Check::Crc32c(c.crc32c)),
        Ok(FilePart::FileChunk(c)) => (c.offset, c.len as usize, Check::Sha256(c.sha256)),
        Ok(FilePart::FileEnd(FileEnd { sha256 })) => return Ok(Frame::End(sha256)),
        Err(e @ wire::FrameError::Misplaced { .. }) => {
            return Err(Fault::Reset(ReceiveError::Reset(
                Code::ProtocolViolation,
                format!("unexpected message in a file stream: {e}"),
            )))
        }
        Err(e) if e.peer_reset() == Some(Code::SourceChanged) => return Err(Fault::SourceChanged),
        Err(e) => return Err(Fault::Broken(e)),
    };
    if offset != next || len == 0 || len > CHUNK || next + len as u64 > size {
        return Err(Fault::Reset(ReceiveError::Reset(
            Code::ProtocolViolation,
            format!("chunk at {offset} of {len} bytes is out of place"),
        )));
    }
    match rx.read_exact(&mut buf.space()[..len]).await {
        Ok(()) => Ok(Frame::Chunk(offset, len, check, buf)),
        Err(quinn::ReadExactError::ReadError(e)) if Code::reset_by(&e) == Some(Code::SourceChanged) => {
            Err(Fault::SourceChanged)
        }
        Err(e) => Err(Fault::Reset(ReceiveError::Reset(Code::Done, e.to_string()))),
    }
}

/// Why the stream side of a receive stopped.
enum Fault {
    /// The stream broke (reset with the error's code, reporting how much was written).
    Broken(wire::FrameError),
    /// The sender's file changed under way: what was received of it is discarded.
    SourceChanged,
    /// The stream was misused, or the writer is gone.
    Reset(ReceiveError),
}

/// Why the receiver's writer stopped early.
enum WriteFailure {
    /// The chunk at this offset failed its check (it and later ones were not written).
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

/// Hands `buf` back to the stream for the next chunk if this was its last holder.
fn give_back(buf: Arc<ChunkBuf>, recycle: &mpsc::UnboundedSender<ChunkBuf>) {
    if let Some(buf) = Arc::into_inner(buf) {
        let _ = recycle.send(buf);
    }
}

/// The writer thread: checks each chunk, writes it, and reports the length written; stops at the
/// first bad chunk. Returns the sink and the length once the stream side closes the channel.
/// However it ends, the space reserved past what it wrote is given back (none is left once the
/// file is whole): a peer that offers a large file and stops holds no more than it sent.
fn write_chunks(
    mut sink: Sink,
    mut have: u64,
    mut from_net: mpsc::Receiver<Piece>,
    written: mpsc::UnboundedSender<u64>,
    recycle: mpsc::UnboundedSender<ChunkBuf>,
    cancelled: &AtomicBool,
) -> Result<(Sink, u64), WriteFailure> {
    let outcome = loop {
        let Some((offset, len, check, buf)) = from_net.blocking_recv() else { break Ok(()) };
        if cancelled.load(Ordering::SeqCst) {
            break Ok(());
        }
        if !check.holds(&buf.window()[..len]) {
            break Err(WriteFailure::Corrupt(offset));
        }
        if let Err(e) = sink.write(have, &buf, len) {
            break Err(WriteFailure::Disk(e));
        }
        have += len as u64;
        let _ = written.send(have);
        give_back(buf, &recycle);
    };
    sink.release(have);
    outcome.map(|()| (sink, have))
}

/// The hasher thread: the SHA-256 of the prefix `[0, have)` already on disk, then of each chunk
/// as it comes (a bad one included: the writer's verdict decides whether the hash is used).
fn hash_chunks(
    file: &std::fs::File,
    have: u64,
    mut from_net: mpsc::Receiver<Piece>,
    recycle: mpsc::UnboundedSender<ChunkBuf>,
) -> std::io::Result<Sha256> {
    let mut whole = hash_prefix(file, have)?;
    while let Some((_, len, _, buf)) = from_net.blocking_recv() {
        whole.update(&buf.window()[..len]);
        give_back(buf, &recycle);
    }
    Ok(whole)
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
    use std::os::unix::fs::MetadataExt;

    use super::{open_partial, CHUNK};

    /// The rest of an offered file is reserved on the disk, beyond the file's length, which stays
    /// the verified prefix: whole chunks only, however much an earlier attempt wrote or reserved.
    #[test]
    fn a_partial_file_keeps_whole_chunks_and_reserves_the_rest_beyond_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("peer/key.part");
        let size = 8 * CHUNK as u64 + 5;
        let (file, have) = open_partial(partial.parent().unwrap(), &partial, size).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!((have, meta.len()), (0, 0));
        assert!(meta.blocks() * 512 >= size, "reserved {} bytes of {size}", meta.blocks() * 512);
        drop(file);

        std::fs::write(&partial, vec![7u8; 2 * CHUNK + CHUNK / 2]).unwrap();
        let (file, have) = open_partial(partial.parent().unwrap(), &partial, size).unwrap();
        assert_eq!((have, file.metadata().unwrap().len()), (2 * CHUNK as u64, 2 * CHUNK as u64));
        assert!(file.metadata().unwrap().blocks() * 512 >= size);
    }
}
