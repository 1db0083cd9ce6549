//! Repeatable file contents and their SHA-256.

use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// `size` repeatable pseudo-random bytes, different for each `seed`.
pub fn bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `size` bytes of a repeatable pattern to `path`; its SHA-256 in hex.
pub fn make_file(path: &Path, size: u64) -> String {
    make_file_seeded(path, size, 99)
}

/// Writes `size` bytes of a pattern given by `seed` to `path` (no two MiB alike); its SHA-256 in
/// hex.
pub fn make_file_seeded(path: &Path, size: u64, seed: u64) -> String {
    let file = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut file = std::io::BufWriter::new(file);
    let mut hasher = Sha256::new();
    let mut block = bytes(1 << 20, seed);
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        block[..8].copy_from_slice(&n.to_le_bytes()); // no two blocks alike
        n += 1;
        file.write_all(&block[..take]).unwrap();
        hasher.update(&block[..take]);
        left -= take as u64;
    }
    file.flush().unwrap();
    hex::encode(hasher.finalize())
}

/// The SHA-256 in hex of the file at `path`.
pub fn sha_of(path: &Path) -> String {
    try_sha_of(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The SHA-256 in hex of the file at `path`, or why it cannot be read.
pub fn try_sha_of(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
