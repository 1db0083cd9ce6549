//! Checks on a host's file before it is sent: absolute, below a send root, a readable regular
//! file, within the size limit.

use std::path::{Path, PathBuf};

use super::envelope::{ApiError, Kind};
use crate::store::OutgoingFile;

/// The file at `path` as it will be sent, with the form field `field` (default `file`).
pub fn outgoing(roots: &[PathBuf], max_size: u64, path: &str, field: Option<String>) -> Result<OutgoingFile, ApiError> {
    let bad = |msg: String| ApiError::bad_request(msg).with("field", "file");
    let given = Path::new(path);
    if !given.is_absolute() {
        return Err(bad(format!("`{path}` is a relative path; give the file's absolute path")));
    }
    let real = given.canonicalize().map_err(|e| bad(format!("cannot find `{path}`: {e}")))?;
    if !roots.iter().any(|root| real.starts_with(root)) {
        return Err(ApiError::new(
            Kind::Forbidden,
            format!("`{path}` is outside `files.send_roots`; move it below one of them"),
        )
        .with("field", "file"));
    }
    let meta = std::fs::metadata(&real).map_err(|e| bad(format!("cannot read `{path}`: {e}")))?;
    if !meta.is_file() {
        return Err(bad(format!("`{path}` is not a regular file")));
    }
    std::fs::File::open(&real).map_err(|e| bad(format!("cannot read `{path}`: {e}")))?;
    if meta.len() > max_size {
        return Err(ApiError::new(
            Kind::TooLarge,
            format!("`{path}` is {} bytes, over `files.max_size` ({max_size} bytes)", meta.len()),
        )
        .with("field", "file"));
    }
    let field = field.unwrap_or_else(|| "file".to_owned());
    if field.is_empty() {
        return Err(
            ApiError::bad_request("field `file_field` must not be empty".to_owned()).with("field", "file_field")
        );
    }
    let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".to_owned());
    Ok(OutgoingFile { path: real.to_string_lossy().into_owned(), name, field })
}

/// Canonical forms of the configured send roots; roots that do not exist are left out.
pub fn canonical_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .filter_map(|r| match r.canonicalize() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(root = %r.display(), error = %e, "a send root cannot be used");
                None
            }
        })
        .collect()
}
