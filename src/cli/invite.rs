//! `ferry invite` and `ferry peer add --invite`: one file carries what a peer's admin needs to pin
//! this node (its name, the addresses it is reached at, its certificate and fingerprint), so that
//! nothing is typed by hand but the fingerprint compared by phone.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::CliError;
use crate::config::{valid_name, Config};
use crate::identity::{load_cert, Fingerprint};

/// The invite file (JSON). Public: it holds no secret.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// The format's version: 1.
    pub ferry_invite: u32,
    /// The node's name.
    pub name: String,
    /// Its link addresses, host:port, the first one dialed.
    pub addresses: Vec<String>,
    /// Its certificate's fingerprint, to compare by phone.
    pub fingerprint: String,
    /// Its certificate, PEM.
    pub certificate: String,
}

/// Writes this node's invite to `out`: its name, `addresses` (default: `node.listen`, unless
/// that is a wildcard address its peers cannot dial), certificate and fingerprint.
pub fn write(config_path: &Path, out: &Path, addresses: &[String]) -> Result<Invite, CliError> {
    let config = Config::load(config_path)?;
    let addresses = match addresses {
        [] if config.node.listen.ip().is_unspecified() => {
            return Err(CliError::usage(format!(
                "node.listen is {}, which peers cannot dial: give the address they reach this node at, \
                 --address HOST:PORT",
                config.node.listen
            )))
        }
        [] => vec![config.node.listen.to_string()],
        given => given.to_vec(),
    };
    let cert = load_cert(&config.cert_path())?;
    let invite = Invite {
        ferry_invite: 1,
        name: config.node.name.clone(),
        addresses,
        fingerprint: Fingerprint::of(&cert).to_string(),
        certificate: pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec())),
    };
    let text = serde_json::to_string_pretty(&invite).expect("an invite serializes");
    std::fs::write(out, text + "\n").map_err(|e| CliError::usage(format!("cannot write {}: {e}", out.display())))?;
    Ok(invite)
}

/// Reads an invite, checking that its certificate has its fingerprint and its name is one a
/// config may hold.
pub fn read(file: &Path) -> Result<Invite, CliError> {
    let bad = |why: String| CliError::usage(format!("{}: not a ferry invite: {why}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?;
    let invite: Invite = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if invite.ferry_invite != 1 {
        return Err(bad(format!("version {} (this ferry reads 1)", invite.ferry_invite)));
    }
    if !valid_name(&invite.name) {
        return Err(bad("its name is not letters, digits, `.`, `-` and `_` (at most 64)".into()));
    }
    if invite.addresses.is_empty() {
        return Err(bad("it names no address".into()));
    }
    let der = pem::parse(&invite.certificate).map_err(|e| bad(format!("its certificate: {e}")))?;
    if der.tag() != "CERTIFICATE" {
        return Err(bad(format!("it holds a {}, not a CERTIFICATE", der.tag())));
    }
    let fingerprint = Fingerprint::of(der.contents()).to_string();
    if fingerprint != invite.fingerprint {
        return Err(bad(format!(
            "its certificate's fingerprint is {fingerprint}, not the {} it states: it was changed",
            invite.fingerprint
        )));
    }
    Ok(invite)
}
