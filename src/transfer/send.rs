//! The sending side: read → hash ∥ send.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sha2::Digest;

use super::{hash_prefix, Check, TransferError, CHUNK, DEPTH};
use crate::wire::{self, Answer, Code, FileDone, FileEnd, FileOffer, FilePart, FileResume, Opening, Protocol};

/// Sends `file` (opened from `path`, which only error messages name) as `name` for `key`,
/// resuming where the receiver stands; calls `progress(bytes_done)` as chunks go. Returns the
/// whole file's size and SHA-256.
///
/// A reader thread reads chunks a few ahead of the stream and checksums each; a hasher thread
/// hashes the whole file from the same buffers; this task writes each chunk's header and bytes
/// to the stream without copying them. A file that shrinks or changes under way resets the stream
/// with [`Code::SourceChanged`] and fails with [`TransferError::Source`].
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
    let version = Protocol::of(connection).file_version();
    let before = file.metadata().map_err(source)?;
    let size = before.len();
    let file = Arc::new(file);
    let (mut tx, mut rx) = connection.open_bi().await.map_err(|e| interrupted(&e))?;
    let offer = FileOffer { version, key: key.to_owned(), name: name.to_owned(), size };
    wire::write(&mut tx, &Opening::FileOffer(offer)).await.map_err(|e| interrupted(&e))?;
    let have = match wire::read(&mut rx).await.map_err(|e| interrupted(&e))? {
        Answer::FileResume(FileResume { have }) if have <= size => have,
        Answer::FileDone(FileDone { sha256: theirs }) => {
            // The peer holds the whole file from an earlier attempt: check it is this one.
            let file = file.clone();
            let ours: [u8; 32] = tokio::task::spawn_blocking(move || hash_prefix(&file, size))
                .await
                .map_err(|e| source(std::io::Error::other(e)))?
                .map_err(source)?
                .finalize()
                .into();
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

    let (to_net, mut from_disk) = tokio::sync::mpsc::channel::<(u64, Bytes, Check)>(DEPTH);
    let (to_hash, from_reader) = std::sync::mpsc::sync_channel::<Bytes>(DEPTH);
    let hasher = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 32]> {
            let mut whole = hash_prefix(&file, have)?;
            for bytes in from_reader {
                whole.update(&bytes);
            }
            Ok(whole.finalize().into())
        })
    };
    let reader = tokio::task::spawn_blocking(move || read_chunks(&file, before, have, version, to_net, to_hash));
    progress(have);
    while let Some((offset, bytes, check)) = from_disk.recv().await {
        let len = bytes.len();
        let header = wire::encode(&check.header(offset, len as u32)).map_err(|e| interrupted(&e))?;
        tx.write_all_chunks(&mut [Bytes::from(header), bytes]).await.map_err(|e| interrupted(&e))?;
        progress(offset + len as u64);
    }
    // The channel closes when the reader ends: having read the whole file, or with an error.
    let read = reader.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let sha256 = match read {
        Ok(()) => hasher.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(e) => Err(e),
    };
    let sha256 = match sha256 {
        Ok(sha256) => sha256,
        Err(e) => {
            // What the receiver holds is not this file's any more: it discards it.
            let _ = tx.reset(Code::SourceChanged.varint());
            return Err(source(e));
        }
    };
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

/// The reader thread: reads `[have, size)` of `file` in chunks, checks each as file-stream
/// `version` does, and hands each to the stream and to the hasher. Fails if the file shrinks, or
/// if its size or modification time differ from `before` once read; stops early (with an error) if
/// the stream is gone.
fn read_chunks(
    file: &std::fs::File,
    before: std::fs::Metadata,
    have: u64,
    version: u16,
    to_net: tokio::sync::mpsc::Sender<(u64, Bytes, Check)>,
    to_hash: std::sync::mpsc::SyncSender<Bytes>,
) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let size = before.len();
    let mut reader = file;
    reader.seek(std::io::SeekFrom::Start(have))?;
    let mut done = have;
    while done < size {
        // Read into fresh capacity: no zeroing of what the read overwrites.
        let want = (size - done).min(CHUNK as u64);
        let mut buf = Vec::with_capacity(want as usize);
        let n = reader.take(want).read_to_end(&mut buf)?;
        if n == 0 {
            return Err(changed(format!("it shrank to {done} bytes of the {size} offered")));
        }
        let bytes = Bytes::from(buf);
        let check = Check::of(version, &bytes);
        if to_hash.send(bytes.clone()).is_err() || to_net.blocking_send((done, bytes, check)).is_err() {
            return Err(std::io::Error::other("the stream stopped"));
        }
        done += n as u64;
    }
    let after = file.metadata()?;
    if after.len() != size || after.modified().ok() != before.modified().ok() {
        return Err(changed("it was modified while it was being sent".into()));
    }
    Ok(())
}

/// A file that changed under way.
fn changed(how: String) -> std::io::Error {
    std::io::Error::other(format!("the file changed while it was being sent ({how}); send it again once it is final"))
}

fn refused(message: &str) -> TransferError {
    TransferError::Refused(wire::Refusal::new(wire::RefusalKind::BadRequest, message))
}
