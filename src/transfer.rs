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
//! next offer of the same key continues from the last verified chunk. Memory per transfer is two
//! chunk buffers whatever the file size.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::wire::{self, Code, FileChunk, FileDone, FileEnd, FileOffer, FileResume, Message};

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

/// Sends the file at `path` as `name` for `key`, resuming where the receiver stands; calls
/// `progress(bytes_done)` as chunks go. Returns the whole file's size and SHA-256.
pub async fn send(
    connection: &quinn::Connection,
    key: &str,
    path: &Path,
    name: &str,
    progress: impl Fn(u64),
) -> Result<(u64, [u8; 32]), TransferError> {
    let source = |error| TransferError::Source { path: path.to_owned(), error };
    let interrupted = |e: &dyn std::fmt::Display| TransferError::Interrupted(e.to_string());
    let mut file = tokio::fs::File::open(path).await.map_err(source)?;
    let size = file.metadata().await.map_err(source)?.len();
    let (mut tx, mut rx) = connection.open_bi().await.map_err(|e| interrupted(&e))?;
    let offer = FileOffer { version: wire::PROTOCOL_VERSION, key: key.to_owned(), name: name.to_owned(), size };
    wire::write(&mut tx, &Message::FileOffer(offer)).await.map_err(|e| interrupted(&e))?;
    let have = match wire::read(&mut rx).await.map_err(|e| interrupted(&e))? {
        Message::FileResume(FileResume { have }) if have <= size => have,
        Message::FileDone(FileDone { sha256: theirs }) => {
            // The peer holds the whole file from an earlier attempt: check it is this one.
            let ours = hash_file(&mut file, &mut vec![0u8; CHUNK]).await.map_err(source)?;
            progress(size);
            return if ours == theirs {
                Ok((size, ours))
            } else {
                Err(refused("the peer holds another file under this request"))
            };
        }
        Message::Refused(r) => return Err(TransferError::Refused(r)),
        other => return Err(TransferError::Interrupted(format!("unexpected answer to a file offer: {other:?}"))),
    };
    // The whole-file hash covers the prefix the receiver holds: read it back locally.
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < have {
        let n = read_up_to(&mut file, &mut buf[..(have - done).min(CHUNK as u64) as usize]).await.map_err(source)?;
        if n == 0 {
            return Err(source(std::io::ErrorKind::UnexpectedEof.into()));
        }
        whole.update(&buf[..n]);
        done += n as u64;
    }
    file.seek(std::io::SeekFrom::Start(have)).await.map_err(source)?;
    progress(have);
    while done < size {
        let n = read_up_to(&mut file, &mut buf[..(size - done).min(CHUNK as u64) as usize]).await.map_err(source)?;
        if n == 0 {
            return Err(source(std::io::Error::other("the file shrank while it was being sent")));
        }
        let chunk = &buf[..n];
        whole.update(chunk);
        let header = FileChunk { offset: done, len: n as u32, sha256: Sha256::digest(chunk).into() };
        wire::write(&mut tx, &Message::FileChunk(header)).await.map_err(|e| interrupted(&e))?;
        tx.write_all(chunk).await.map_err(|e| interrupted(&e))?;
        done += n as u64;
        progress(done);
    }
    let sha256: [u8; 32] = whole.finalize().into();
    wire::write(&mut tx, &Message::FileEnd(FileEnd { sha256 })).await.map_err(|e| interrupted(&e))?;
    let _ = tx.finish();
    match wire::read(&mut rx).await {
        Ok(Message::FileDone(FileDone { sha256: theirs })) if theirs == sha256 => Ok((size, sha256)),
        Ok(Message::FileDone(_)) => Err(refused("the peer computed another SHA-256")),
        Ok(Message::Refused(r)) => Err(TransferError::Refused(r)),
        Ok(other) => Err(TransferError::Interrupted(format!("unexpected answer after the file: {other:?}"))),
        Err(e) => Err(interrupted(&e)),
    }
}

fn refused(message: &str) -> TransferError {
    TransferError::Refused(wire::Refusal { kind: wire::RefusalKind::BadRequest, message: message.to_owned() })
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
/// records it, then answers [`Message::FileDone`].
pub async fn receive(
    folders: &Folders,
    peer: &str,
    offer: FileOffer,
    tx: &mut quinn::SendStream,
    rx: &mut quinn::RecvStream,
    progress: impl Fn(u64, u64),
) -> Result<Received, ReceiveError> {
    let io = |e: std::io::Error| ReceiveError::Reset(Code::Done, format!("disk error: {e}"));
    let refuse = |kind, message: String| ReceiveError::Refuse(wire::Refusal { kind, message });
    if offer.size > folders.max_size {
        return Err(refuse(
            wire::RefusalKind::TooLarge,
            format!("the file is {} bytes, over this node's files.max_size of {}", offer.size, folders.max_size),
        ));
    }
    let key = safe_name(&offer.key.replace('/', "."));
    let dir = folders.partial.join(safe_name(peer));
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    let partial = dir.join(format!("{key}.part"));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&partial)
        .await
        .map_err(io)?;
    // Keep only whole verified chunks, and never more than the offered size.
    let len = file.metadata().await.map_err(io)?.len();
    let mut have = (len / CHUNK as u64 * CHUNK as u64).min(offer.size / CHUNK as u64 * CHUNK as u64);
    if len != have {
        file.set_len(have).await.map_err(io)?;
    }
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    while read < have {
        let n = read_up_to(&mut file, &mut buf[..(have - read).min(CHUNK as u64) as usize]).await.map_err(io)?;
        whole.update(&buf[..n]);
        read += n as u64;
    }
    file.seek(std::io::SeekFrom::Start(have)).await.map_err(io)?;
    if have > 0 {
        tracing::info!(%peer, key = %offer.key, have, size = offer.size, "resuming a file transfer");
    }
    let broken = |e: &dyn std::fmt::Display| ReceiveError::Reset(Code::ProtocolViolation, e.to_string());
    wire::write(tx, &Message::FileResume(FileResume { have })).await.map_err(|e| broken(&e))?;
    progress(have, offer.size);
    loop {
        match wire::read(rx).await {
            Ok(Message::FileChunk(c)) => {
                let len = c.len as usize;
                if c.offset != have || len == 0 || len > CHUNK || have + len as u64 > offer.size {
                    return Err(ReceiveError::Reset(
                        Code::ProtocolViolation,
                        format!("chunk at {} of {len} bytes is out of place", c.offset),
                    ));
                }
                rx.read_exact(&mut buf[..len]).await.map_err(|e| ReceiveError::Reset(Code::Done, e.to_string()))?;
                if <[u8; 32]>::from(Sha256::digest(&buf[..len])) != c.sha256 {
                    file.flush().await.map_err(io)?;
                    return Err(ReceiveError::Reset(
                        Code::ChunkCorrupt,
                        format!("chunk at {} failed its SHA-256", c.offset),
                    ));
                }
                file.write_all(&buf[..len]).await.map_err(io)?;
                whole.update(&buf[..len]);
                have += len as u64;
                progress(have, offer.size);
            }
            Ok(Message::FileEnd(FileEnd { sha256 })) => {
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
                file.flush().await.map_err(io)?;
                file.sync_all().await.map_err(io)?;
                drop(file);
                let request_id = offer.key.split('/').next().unwrap_or_default();
                let folder = folders.received.join(safe_name(peer)).join(safe_name(request_id));
                tokio::fs::create_dir_all(&folder).await.map_err(io)?;
                let path = place(&partial, &folder, &safe_name(&offer.name)).map_err(io)?;
                if let Ok(d) = std::fs::File::open(&folder) {
                    let _ = d.sync_all();
                }
                return Ok(Received { path, size: have, sha256 });
            }
            Ok(other) => return Err(broken(&format!("unexpected message in a file stream: {other:?}"))),
            Err(e) => {
                file.flush().await.map_err(io)?;
                return Err(ReceiveError::Reset(e.code(), format!("the file stream broke at {have} bytes: {e}")));
            }
        }
    }
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
    use super::safe_name;

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
