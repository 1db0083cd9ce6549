//! Checks on a host's file before it is sent: an absolute path below a send root, opened without
//! following links, a regular file that is not one of the node's own, within the size limit.

use super::envelope::{ApiError, Kind};
use crate::host_file::{HostFileError, HostFiles};
use crate::store::OutgoingFile;

/// The file at `path` as it will be sent, with the form field `field` (default `file`), and its
/// identity now, which the link checks again before it reads the file.
pub fn outgoing(files: &HostFiles, max_size: u64, path: &str, field: Option<String>) -> Result<OutgoingFile, ApiError> {
    let field = field.unwrap_or_else(|| crate::wire::DEFAULT_FILE_FIELD.to_owned());
    let opened = files.open(path).map_err(|e| {
        let kind = match e {
            HostFileError::Outside(_) | HostFileError::Escapes(_) | HostFileError::Secret(_) => Kind::Forbidden,
            _ => Kind::BadRequest,
        };
        ApiError::new(kind, e.to_string()).with("field", "file")
    })?;
    let size = opened.identity.size;
    if size > max_size {
        return Err(ApiError::new(
            Kind::TooLarge,
            format!("`{path}` is {size} bytes, over `files.max_size` ({max_size} bytes)"),
        )
        .with("field", "file"));
    }
    let name = std::path::Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned());
    Ok(OutgoingFile {
        path: path.to_owned(),
        name: name.unwrap_or_else(|| "file".to_owned()),
        field,
        identity: Some(opened.identity),
    })
}
