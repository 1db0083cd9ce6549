//! The config file edited in place, by the command line (`ferry peer add|set|remove|accept`,
//! `ferry service add|set|remove`) and by the running node for its console (`PATCH
//! /v1/services/{id}`, `POST /v1/peers/pending/accept`): comments and layout kept, each edit
//! validated as a whole config before it is written, and written by rename, so a refused edit
//! leaves the file as it was.
//!
//! [`service`] and [`peer`] hold the edits both callers share; this module the document's
//! handling.

pub mod peer;
pub mod service;

use std::path::Path;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::config::{Config, ConfigError};

/// What kind of refusal an edit met, so that each caller answers it its own way (an exit code, an
/// HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// The peer or service named is not configured.
    NotConfigured,
    /// A value given is refused (`field` names it).
    Invalid,
    /// The config file cannot be read, is invalid, or cannot be written.
    File,
    /// Something else failed on the way (a temporary file, a certificate that cannot be deleted).
    Failed,
}

/// An edit that was refused or failed; the file is as it was, unless `message` says otherwise.
#[derive(Debug, Clone)]
pub struct EditError {
    /// What kind of refusal.
    pub kind: EditKind,
    /// The value refused, by its name (`allow`, `address`…), when one is.
    pub field: Option<&'static str>,
    /// What is wrong and what to do, in one line.
    pub message: String,
}

impl EditError {
    /// A refused value of `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        EditError { kind: EditKind::Invalid, field: Some(field), message: message.into() }
    }

    /// A problem with the config file itself.
    pub fn file(message: impl Into<String>) -> Self {
        EditError { kind: EditKind::File, field: None, message: message.into() }
    }

    /// Another failure.
    pub fn failed(message: impl Into<String>) -> Self {
        EditError { kind: EditKind::Failed, field: None, message: message.into() }
    }

    /// The message with the field named as the command line names it (`--base-url: …`).
    pub fn for_command_line(&self) -> String {
        match self.field {
            Some(field) => format!("--{}: {}", field.replace('_', "-"), self.message),
            None => self.message.clone(),
        }
    }

    /// The message with the field named as the API names it (`` `base_url`: … ``).
    pub fn for_api(&self) -> String {
        match self.field {
            Some(field) => format!("`{field}`: {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.for_api())
    }
}

impl std::error::Error for EditError {}

impl From<ConfigError> for EditError {
    fn from(e: ConfigError) -> Self {
        EditError::file(e.to_string())
    }
}

/// The error for a `what` (`peer`, `service`) named `name` that is not configured: it names the
/// configured ones, or how to add one.
pub fn not_configured<'a>(what: &str, name: &str, configured: impl Iterator<Item = &'a str>) -> EditError {
    let configured: Vec<&str> = configured.collect();
    let message = if configured.is_empty() {
        format!(
            "no {what} {} here: no {what} is configured (add one with `ferry {what} add`)",
            crate::config::shown(name)
        )
    } else {
        format!("no {what} {} here; the configured {what}s: {}", crate::config::shown(name), configured.join(", "))
    };
    EditError { kind: EditKind::NotConfigured, field: None, message }
}

/// Reads the config file as an editable document.
pub fn open(path: &Path) -> Result<DocumentMut, EditError> {
    let text = std::fs::read_to_string(path).map_err(|e| EditError::file(format!("{}: {e}", path.display())))?;
    text.parse().map_err(|e| EditError::file(format!("{}: {e}", path.display())))
}

/// Appends `table` to the `[[key]]` tables, at the end of the file. Comment lines right below the
/// file's last table (commented-out keys of `[api]`, say) stay with it, above the new table; only
/// those after a blank line stay at the end of the file.
pub fn push(doc: &mut DocumentMut, key: &str, mut table: Table) -> Result<(), EditError> {
    let trailing = doc.trailing().as_str().unwrap_or_default().to_owned();
    let (last_tables, end_of_file) = trailing.split_at(first_blank_line(&trailing));
    if !last_tables.trim().is_empty() {
        table.decor_mut().set_prefix(format!("{last_tables}\n"));
        doc.set_trailing(end_of_file);
    }
    let item = doc.entry(key).or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    match item.as_array_of_tables_mut() {
        Some(tables) => {
            tables.push(table);
            Ok(())
        }
        None => Err(EditError::file(format!("`{key}` in the config is not written as [[{key}]] tables"))),
    }
}

/// Where the first blank line of `text` begins, or its length.
fn first_blank_line(text: &str) -> usize {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            return at;
        }
        at += line.len();
    }
    text.len()
}

/// The `[[key]]` table whose `field` is `name` (`[[peer]]` by `name`, `[[service]]` by `id`).
pub fn table_mut<'d>(doc: &'d mut DocumentMut, key: &str, field: &str, name: &str) -> Result<&'d mut Table, EditError> {
    let tables = tables_mut(doc, key)?;
    let at = position(tables, field, name).ok_or_else(|| not_written_as_table(key, field, name))?;
    Ok(tables.get_mut(at).expect("the position found"))
}

/// Removes the `[[key]]` table whose `field` is `name`, with the comment lines above it; the key
/// goes too when it was the last such table.
pub fn remove(doc: &mut DocumentMut, key: &str, field: &str, name: &str) -> Result<(), EditError> {
    let tables = tables_mut(doc, key)?;
    let at = position(tables, field, name).ok_or_else(|| not_written_as_table(key, field, name))?;
    tables.remove(at);
    if tables.is_empty() {
        doc.remove(key);
    }
    Ok(())
}

/// Sets `key` of `table` to `new`, keeping the spacing and the comment after the old value.
pub fn set(table: &mut Table, key: &str, new: impl Into<Value>) {
    let mut new = new.into();
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *new.decor_mut() = old.decor().clone();
    }
    table[key] = Item::Value(new);
}

/// Removes every `name` from the list `key` of `table` (an `allow` list), keeping the layout of
/// the names left; whether it held one.
pub fn remove_from_list(table: &mut Table, key: &str, name: &str) -> bool {
    let Some(list) = table.get_mut(key).and_then(Item::as_array_mut) else { return false };
    let first_prefix = list.get(0).and_then(|v| v.decor().prefix().cloned());
    let before = list.len();
    list.retain(|v| v.as_str() != Some(name));
    if list.len() == before {
        return false;
    }
    if let (Some(first), Some(prefix)) = (list.get_mut(0), first_prefix) {
        first.decor_mut().set_prefix(prefix);
    }
    true
}

/// Every `[[key]]` table, to edit.
fn tables_mut<'d>(doc: &'d mut DocumentMut, key: &str) -> Result<&'d mut ArrayOfTables, EditError> {
    doc.get_mut(key)
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::file(format!("`{key}` in the config is not written as [[{key}]] tables")))
}

/// Where the table whose `field` is `name` is among `tables`.
fn position(tables: &ArrayOfTables, field: &str, name: &str) -> Option<usize> {
    tables.iter().position(|t| t.get(field).and_then(Item::as_str) == Some(name))
}

/// The config named it, yet not in a `[[key]]` table this edit can find (an inline table, say).
fn not_written_as_table(key: &str, field: &str, name: &str) -> EditError {
    EditError::file(format!(
        "the config has no [[{key}]] table with {field} = {}; write it as one, or edit the file by hand",
        crate::config::shown(name)
    ))
}

/// Validates the edited document as a config, then replaces the file by rename: a new file is
/// written beside it, so the config's folder must be writable by whoever edits it.
pub fn save(path: &Path, doc: &DocumentMut) -> Result<(), EditError> {
    let text = doc.to_string();
    // The file was valid before the edit: what the check refuses now, the edit brought in.
    Config::parse(path, &text).map_err(|e| EditError {
        kind: EditKind::Invalid,
        field: None,
        message: format!("the edit is refused: {e}"),
    })?;
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp); // left by an edit that was interrupted
    let written =
        write_private(&tmp, &text).and_then(|_| same_access(path, &tmp)).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| unwritable(path, &e))
}

/// Why `path` could not be written, and what to do: an edit writes a new file in the config's
/// folder and renames it over the config, so the folder must be writable by the user that edits
/// (the node's, for its console).
fn unwritable(path: &Path, e: &std::io::Error) -> EditError {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => format!(
            "; nothing was changed. An edit writes a new file in {} and renames it over the config, so that folder \
             must be writable by this process's user: make the node's user own it (`chown ferry:ferry {}`), and \
             under systemd allow the node to write it (`ReadWritePaths={}`, as the shipped unit does; \
             docs/operating.md)",
            dir.display(),
            dir.display(),
            dir.display()
        ),
        _ => "; nothing was changed".to_owned(),
    };
    EditError::file(format!("cannot write {}: {e}{hint}", path.display()))
}

/// Creates `path` (which must not exist) readable by its owner only, with `text`, synced.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# org-a's node
[node]
name = "org-a"

# org-b, since 2024
[[peer]]
name = "org-b"
address = "127.0.0.1:7444"   # their VPN address
cert = "peers/org-b.pem"

# org-c, on trial
[[peer]]
name = "org-c"
address = "127.0.0.1:7445"
cert = "peers/org-c.pem"

[[service]]
id = "1"   # the user service
base_url = "http://127.0.0.1:8080"
allow = ["org-b", "org-c"]   # both
"#;

    fn doc() -> DocumentMut {
        FILE.parse().unwrap()
    }

    /// The end of the file `ferry init` writes.
    const INIT_END: &str = r#"[api]
tokens = []
# max_connections = 1024   # open API connections
# header_timeout = "10s"

# Peers are added with `ferry peer add`.
"#;

    #[test]
    fn a_new_table_goes_below_the_comments_of_the_last_one_and_above_the_end_note() {
        let mut doc: DocumentMut = INIT_END.parse().unwrap();
        let peer = |name: &str| {
            let mut t = Table::new();
            t["name"] = toml_edit::value(name);
            t
        };
        push(&mut doc, "peer", peer("org-b")).unwrap();
        let mut doc: DocumentMut = doc.to_string().parse().unwrap(); // as the next command reads it
        push(&mut doc, "peer", peer("org-c")).unwrap();
        assert_eq!(
            doc.to_string(),
            "[api]\ntokens = []\n# max_connections = 1024   # open API connections\n# header_timeout = \"10s\"\n\n\
             [[peer]]\nname = \"org-b\"\n\n[[peer]]\nname = \"org-c\"\n\n# Peers are added with `ferry peer add`.\n"
        );
    }

    #[test]
    fn set_keeps_the_comment_after_the_value() {
        let mut doc = doc();
        set(table_mut(&mut doc, "peer", "name", "org-b").unwrap(), "address", "10.0.0.2:7443");
        let text = doc.to_string();
        assert!(text.contains("address = \"10.0.0.2:7443\"   # their VPN address\n"), "{text}");
        assert_eq!(text.replace("10.0.0.2:7443", "127.0.0.1:7444"), FILE);
    }

    #[test]
    fn set_adds_a_key_that_was_not_there() {
        let mut doc = doc();
        set(table_mut(&mut doc, "service", "id", "1").unwrap(), "state", "disabled");
        let text = doc.to_string();
        assert!(text.ends_with("allow = [\"org-b\", \"org-c\"]   # both\nstate = \"disabled\"\n"), "{text}");
    }

    #[test]
    fn remove_takes_the_table_and_its_comment_and_keeps_the_rest() {
        let mut doc = doc();
        remove(&mut doc, "peer", "name", "org-b").unwrap();
        let text = doc.to_string();
        assert!(!text.contains("org-b, since 2024") && !text.contains("7444"), "{text}");
        assert!(text.starts_with("# org-a's node\n[node]\nname = \"org-a\"\n\n# org-c, on trial\n[[peer]]"), "{text}");
        remove(&mut doc, "peer", "name", "org-c").unwrap();
        assert!(doc.get("peer").is_none());
        assert!(doc.to_string().contains("[[service]]\nid = \"1\"   # the user service"), "{doc}");
    }

    #[test]
    fn a_name_leaves_a_list_in_its_layout() {
        let mut doc = doc();
        let service = table_mut(&mut doc, "service", "id", "1").unwrap();
        assert!(remove_from_list(service, "allow", "org-b"));
        assert!(!remove_from_list(service, "allow", "org-b"), "no longer there");
        assert!(doc.to_string().contains("allow = [\"org-c\"]   # both\n"), "{doc}");
        let mut doc: DocumentMut = "allow = [\n  \"org-b\",\n  \"org-c\",\n]\n".parse().unwrap();
        assert!(remove_from_list(doc.as_table_mut(), "allow", "org-b"));
        assert_eq!(doc.to_string(), "allow = [\n  \"org-c\",\n]\n");
        assert!(remove_from_list(doc.as_table_mut(), "allow", "org-c"));
        assert_eq!(doc.to_string(), "allow = [\n]\n");
    }

    #[test]
    fn a_name_not_in_a_table_is_refused_with_it_shown_on_one_line() {
        let mut doc = doc();
        let err = remove(&mut doc, "peer", "name", "x\ny").unwrap_err();
        assert_eq!((err.kind, err.message.lines().count()), (EditKind::File, 1), "{err}");
        assert!(err.message.contains("`x\\ny`"), "{err}");
        assert_eq!(doc.to_string(), FILE);
        let mut inline: DocumentMut = "peer = [{ name = \"org-b\" }]".parse().unwrap();
        assert!(table_mut(&mut inline, "peer", "name", "org-b").is_err());
    }
}
