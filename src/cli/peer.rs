//! `ferry peer add`: pins a peer's certificate and adds its `[[peer]]` table, keeping the config
//! file's comments and layout.

use std::path::Path;

use toml_edit::{value, Table};

use super::{config_file, CliError};
use crate::config::{valid_name, Config};
use crate::identity::{load_cert, Fingerprint};

/// Pins the certificate in `cert_file` for peer `name` and adds its `[[peer]]` table.
pub fn add(config_path: &Path, name: &str, address: &str, cert_file: &Path) -> Result<Fingerprint, CliError> {
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

    let mut doc = config_file::open(config_path)?;
    let mut peer = Table::new();
    peer["name"] = value(name);
    peer["address"] = value(address);
    peer["cert"] = value(format!("peers/{name}.pem"));
    config_file::push(&mut doc, "peer", peer)?;

    std::fs::create_dir_all(pinned.parent().expect("peers/ has a parent"))
        .and_then(|_| std::fs::copy(cert_file, &pinned))
        .map_err(|e| CliError::usage(format!("cannot copy the certificate to {}: {e}", pinned.display())))?;
    if let Err(e) = config_file::save(config_path, &doc) {
        let _ = std::fs::remove_file(&pinned);
        return Err(e);
    }
    Ok(fingerprint)
}
