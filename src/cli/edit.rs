//! `ferry peer add` and `ferry service add`: edits that keep the file's comments and layout.
//!
//! Each edit is validated as a whole config before it is written, and written by rename, so a
//! refused edit leaves the file as it was.

use std::path::Path;

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use super::CliError;
use crate::config::{valid_name, Config};
use crate::identity::{load_cert, Fingerprint};

/// Pins the certificate in `cert_file` for peer `name` and adds its `[[peer]]` table.
pub fn add_peer(config_path: &Path, name: &str, address: &str, cert_file: &Path) -> Result<Fingerprint, CliError> {
    let config = Config::load(config_path)?;
    if !valid_name(name) {
        return Err(CliError::usage(format!("--name `{name}`: only letters, digits, `.`, `-` and `_` (at most 64)")));
    }
    if config.peer(name).is_some() {
        return Err(CliError::usage(format!(
            "peer `{name}` is configured already; edit {} to change it",
            config_path.display()
        )));
    }
    let cert = load_cert(cert_file)?;
    let fingerprint = Fingerprint::of(&cert);
    if load_cert(&config.cert_path()).is_ok_and(|own| Fingerprint::of(&own) == fingerprint) {
        return Err(CliError::usage(format!(
            "{} is this node's own certificate; ask {name}'s admin for theirs",
            cert_file.display()
        )));
    }
    let pinned = config.node.certs_dir.join("peers").join(format!("{name}.pem"));
    if pinned.exists() {
        return Err(CliError::usage(format!(
            "{} exists already; remove it first to pin another certificate",
            pinned.display()
        )));
    }

    let mut doc = document(config_path)?;
    let mut peer = Table::new();
    peer["name"] = value(name);
    peer["address"] = value(address);
    peer["cert"] = value(format!("peers/{name}.pem"));
    push(&mut doc, "peer", peer)?;

    std::fs::create_dir_all(pinned.parent().expect("peers/ has a parent"))
        .and_then(|_| std::fs::copy(cert_file, &pinned))
        .map_err(|e| CliError::usage(format!("cannot copy the certificate to {}: {e}", pinned.display())))?;
    if let Err(e) = save(config_path, &doc) {
        let _ = std::fs::remove_file(&pinned);
        return Err(e);
    }
    Ok(fingerprint)
}

/// Adds a `[[service]]` table.
pub fn add_service(config_path: &Path, id: &str, base_url: &str, allow: &[String]) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    if config.service(id).is_some() {
        return Err(CliError::usage(format!(
            "service `{id}` is configured already; edit {} to change it",
            config_path.display()
        )));
    }
    let mut doc = document(config_path)?;
    let mut service = Table::new();
    service["id"] = value(id);
    service["base_url"] = value(base_url);
    service["allow"] = value(allow.iter().map(String::as_str).collect::<Array>());
    push(&mut doc, "service", service)?;
    save(config_path, &doc)
}

fn document(path: &Path) -> Result<DocumentMut, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    text.parse().map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
}

fn push(doc: &mut DocumentMut, key: &str, table: Table) -> Result<(), CliError> {
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
fn save(path: &Path, doc: &DocumentMut) -> Result<(), CliError> {
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
