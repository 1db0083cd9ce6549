//! Files between nodes: chunked, checked, resumable, never held whole in memory, and moved as a
//! pipeline so that the slowest stage (the network, the disk or the hash) sets the pace.
//!
//! A file travels on its own stream ahead of the request or reply it belongs to:
//!
//! ```text
//! sender                                   receiver
//!   ── FileOffer{version, key, name, size} ──▶   opens data_dir/partial/<peer>/<key>.part
//!   ◀── FileResume{have}                     keeps the verified prefix (whole chunks)
//!   ── FileChunkCrc{offset, len, crc32c} + len bytes ──▶   checks the chunk, appends it
//!   ── …                                     (a bad chunk resets the stream: ChunkCorrupt)
//!   ── FileEnd{sha256} ──▶                   checks the whole file, syncs its tail, moves it to
//!   ◀── FileDone{sha256}                     data_dir/received/<peer>/<request-id>/<safe name>
//! ```
//!
//! Each side makes one SHA-256 pass over the whole file, the digest the service, the status and
//! the evidence name. Each chunk carries a CRC32C ([`wire::FilePart::FileChunkCrc`], file streams
//! of version 2) so that a chunk damaged on a disk or in memory is sent again alone; QUIC's AEAD
//! already authenticates every byte in transit. A peer of the first release sends version 1,
//! whose chunks carry a SHA-256 each ([`wire::FilePart::FileChunk`]); a node receives both, and
//! sends version 2 only on a `ferry/2` connection.
//!
//! The stages ([`send`]: read → hash ∥ send; [`receive`]: receive → check and write ∥ hash) run
//! on their own threads with bounded queues between them, so memory per transfer is a few chunk
//! buffers whatever the file size. The receiver reserves the file's blocks at the offer, writes
//! with direct I/O where the file system allows it (unless `[files] direct_io = false`), so a
//! file of tens of GiB is not copied through the page cache, and syncs what it wrote every 32 MiB
//! on a thread of its own, so that only the tail is left to sync when the last chunk is in.
//!
//! Whatever breaks the stream (a lost connection, a restart of either node, a bad chunk), the
//! next offer of the same key continues from the last verified chunk; each side rebuilds its
//! SHA-256 state from the prefix the receiver holds. A sender whose file changes or shrinks under
//! way resets the stream with [`wire::Code::SourceChanged`], and the receiver discards the part.

mod receive;
mod send;
mod sink;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::wire;

pub use receive::{receive, ReceiveError};
pub use send::send;

/// The chunk size: each chunk carries its own CRC32C (or, from a peer of the first release, its
/// own SHA-256).
pub const CHUNK: usize = 1 << 20;
/// The longest file name kept (bytes of UTF-8).
const MAX_NAME: usize = 200;
/// Chunks queued between two stages of a transfer.
const DEPTH: usize = 4;

/// What went wrong with a transfer.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The stream or connection failed; an offer of the same key resumes.
    #[error("the transfer was interrupted: {0}")]
    Interrupted(String),
    /// The peer refused the file (too large, or the whole file did not match its hash).
    #[error("the peer refused the file: {}", .0.message)]
    Refused(wire::Refusal),
    /// The local file could not be read, or it changed while it was being sent.
    #[error("cannot send {path}: {error}")]
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

/// Where a receiver keeps files: partial ones and verified ones.
#[derive(Debug, Clone)]
pub struct Folders {
    /// `data_dir/partial`.
    pub partial: PathBuf,
    /// `data_dir/received`.
    pub received: PathBuf,
    /// The largest file accepted.
    pub max_size: u64,
    /// Whether files are written with direct I/O where the file system allows it.
    pub direct_io: bool,
    /// How long a sender may send nothing in the middle of a file before the stream is reset
    /// ([`wire::Code::Stalled`]) and the space reserved for the file given back.
    pub stall: std::time::Duration,
}

/// How long a sender may send nothing in the middle of a file: a minute (a chunk of 1 MiB a
/// minute is 17 KiB/s).
pub const STALL: std::time::Duration = std::time::Duration::from_secs(60);

impl Folders {
    /// The folders under `data_dir`, files written with direct I/O where it can be.
    pub fn new(data_dir: &Path, max_size: u64) -> Self {
        Folders {
            partial: data_dir.join("partial"),
            received: data_dir.join("received"),
            max_size,
            direct_io: true,
            stall: STALL,
        }
    }
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

/// What a chunk's header claims about its bytes, by the version of the file stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    /// Version 2: a CRC32C.
    Crc32c(u32),
    /// Version 1: a SHA-256.
    Sha256([u8; 32]),
}

impl Check {
    /// The check of `bytes` a sender of file-stream `version` puts in the header.
    fn of(version: u16, bytes: &[u8]) -> Check {
        match version {
            1 => Check::Sha256(Sha256::digest(bytes).into()),
            _ => Check::Crc32c(crc32c::crc32c(bytes)),
        }
    }

    /// Whether `bytes` are what the header claims.
    fn holds(&self, bytes: &[u8]) -> bool {
        match self {
            Check::Crc32c(crc) => crc32c::crc32c(bytes) == *crc,
            Check::Sha256(sha) => <[u8; 32]>::from(Sha256::digest(bytes)) == *sha,
        }
    }

    /// The header frame of the chunk of `len` bytes at `offset`.
    fn header(self, offset: u64, len: u32) -> wire::FilePart {
        match self {
            Check::Crc32c(crc32c) => wire::FilePart::FileChunkCrc(wire::FileChunkCrc { offset, len, crc32c }),
            Check::Sha256(sha256) => wire::FilePart::FileChunk(wire::FileChunk { offset, len, sha256 }),
        }
    }
}

/// The SHA-256 state after the first `len` bytes of `file`, read with positioned reads (the
/// file's offset is left alone, for a stage that reads it in parallel).
fn hash_prefix(file: &std::fs::File, len: u64) -> std::io::Result<Sha256> {
    use std::os::unix::fs::FileExt;
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(CHUNK as u64) as usize;
        let n = file.read_at(&mut buf[..want], done)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        whole.update(&buf[..n]);
        done += n as u64;
    }
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use super::{safe_name, Check};

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

    /// The CRC32C is Castagnoli's (the check value of RFC 3720 is 0xE3069283), each version's
    /// check holds for its bytes, and one flipped bit fails both.
    #[test]
    fn each_versions_check_catches_a_flipped_bit() {
        assert_eq!(Check::of(2, b"123456789"), Check::Crc32c(0xe306_9283));
        let mut bytes: Vec<u8> = (0..super::CHUNK).map(|i| (i * 31 % 251) as u8).collect();
        for version in [1, 2] {
            let check = Check::of(version, &bytes);
            assert!(check.holds(&bytes));
            bytes[12_345] ^= 0x10;
            assert!(!check.holds(&bytes), "version {version}");
            bytes[12_345] ^= 0x10;
        }
    }
}
