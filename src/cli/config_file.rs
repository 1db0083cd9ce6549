//! The config file edited in place by `ferry peer add` and `ferry service add`: comments and layout
//! kept, each edit validated as a whole config before it is written, and written by rename, so a
//! refused edit leaves the file as it was.

use std::path::Path;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

use super::CliError;
use crate::config::Config;

/// Reads the config file as an editable document.
pub(super) fn open(path: &Path) -> Result<DocumentMut, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    text.parse().map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
}

/// Appends `table` to the `[[key]]` tables.
pub(super) fn push(doc: &mut DocumentMut, key: &str, table: Table) -> Result<(), CliError> {
    let item = doc.entry(key).or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    match item.as_array_of_tables_mut() {
        Some(tables) => {
            tables.push(table);
            Ok(())
        }
        None => Err(CliError::usage(format!("`{key}` in the config is not written as [[{key}]] tables"))),
    }
}

/// Validates the edited document as a config, then replaces the file by rename.
pub(super) fn save(path: &Path, doc: &DocumentMut) -> Result<(), CliError> {
    let text = doc.to_string();
    Config::parse(path, &text)?;
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp); // left by an edit that was interrupted
    super::init::write_private(&tmp, &text)
        .and_then(|_| same_access(path, &tmp))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| CliError::usage(format!("cannot write {}: {e}", path.display())))
}

/// Gives `new` the mode, owner and group of `old` (the owner only when run as root), so that an
/// edit leaves the config exactly as readable as it was.
fn same_access(old: &Path, new: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(old)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if std::os::unix::fs::chown(new, Some(meta.uid()), Some(meta.gid())).is_err() {
            std::os::unix::fs::chown(new, None, Some(meta.gid()))?;
        }
    }
    std::fs::set_permissions(new, meta.permissions())
}
