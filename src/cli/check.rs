//! `ferry check`: the config, this node's key and certificate, and every pinned peer certificate.

use std::path::Path;

use super::CliError;
use crate::config::Config;
use crate::identity::{load_cert, Fingerprint, Identity};

/// Prints a summary and returns `Ok`, or every problem found, one per line.
pub fn check(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let mut problems = Vec::new();
    let own = match Identity::load(&config.cert_path(), &config.key_path()) {
        Ok(identity) => Some(identity.fingerprint()),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    for peer in &config.peers {
        match load_cert(&peer.cert) {
            Ok(cert) if Some(Fingerprint::of(&cert)) == own => {
                problems.push(format!("peer `{}`: {} is this node's own certificate", peer.name, peer.cert.display()))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("peer `{}`: {e}", peer.name)),
        }
    }
    if !problems.is_empty() {
        return Err(CliError::usage(problems.join("\n")));
    }
    println!(
        "ok: node `{}`, {} peer(s), {} service(s), fingerprint {}",
        config.node.name,
        config.peers.len(),
        config.services.len(),
        own.expect("no problems means the identity loaded")
    );
    Ok(())
}
