//! `ferry peer add|list|set|remove`: the configured peers and their pinned certificates, edited
//! in place in the config file (comments and layout kept, the whole config validated before it is
//! written). The running node's live view of its peers is `ferry peers`, which asks its API.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::table::Table as TextTable;
use super::CliError;
use crate::config::{Config, PeerConfig};
use crate::config_file::{self, peer::check_addresses, peer::pin_path};
use crate::identity::{load_cert, Fingerprint};

/// [`add`] with the certificates as PEM text (from an invite).
pub fn add_pem(
    config_path: &Path,
    name: &str,
    addresses: &[String],
    pems: &[String],
) -> Result<Vec<Fingerprint>, CliError> {
    Ok(config_file::peer::add_pem(config_path, name, addresses, pems)?)
}

/// Pins the certificates in `cert_files` (one per member) for peer `name` and adds its
/// `[[peer]]` table ([`config_file::peer::add`]).
pub fn add(
    config_path: &Path,
    name: &str,
    addresses: &[String],
    cert_files: &[PathBuf],
) -> Result<Vec<Fingerprint>, CliError> {
    Ok(config_file::peer::add(config_path, name, addresses, cert_files)?)
}

/// A configured peer as `ferry peer list` shows it.
#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    /// The first of `addresses`, dialed first.
    address: String,
    /// Every address the peer is dialed at (its members').
    addresses: Vec<String>,
    /// The first pinned certificate, as `certs[0]`.
    #[serde(flatten)]
    first: ListedCert,
    /// Every pinned certificate: one, or one per member with a key of its own.
    certs: Vec<ListedCert>,
}

/// A pinned certificate file of a peer, as `ferry peer list` shows it.
#[derive(Debug, Clone, Serialize)]
struct ListedCert {
    /// The file.
    cert: PathBuf,
    /// Its fingerprint, when it can be read.
    fingerprint: Option<String>,
    /// Why it cannot be read.
    error: Option<String>,
    /// The newest certificate pinned in its place since a rollover (kept in the node's store),
    /// when it is not the file's.
    rolled_over_to: Option<String>,
}

/// Prints the configured peers, as a table or (`json`) a JSON array.
pub fn list(config_path: &Path, json: bool) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    // The rollovers the node pinned, checked again here as the node checks them at a start.
    let peers = crate::peer::Peers::load(&config.peers).ok();
    if let Some(peers) = &peers {
        peers.restore(&crate::store::rollovers_in(&config.store_location()).unwrap_or_default());
    }
    let listed: Vec<Listed> =
        config.peers.iter().map(|p| listed(p, peers.as_ref().and_then(|peers| peers.get(&p.name)))).collect();
    if json {
        out!("{}", serde_json::to_string_pretty(&listed).unwrap_or_default());
        return Ok(());
    }
    let mut table = TextTable::new(["NAME", "ADDRESS", "CERT", "FINGERPRINT"]);
    let mut rolled = Vec::new();
    for p in listed {
        for newest in p.certs.iter().filter_map(|c| c.rolled_over_to.as_ref()) {
            rolled.push(format!("{}: rolled over to {newest}, pinned by the node (`ferry peers`)", p.name));
        }
        let files = p.certs.iter().map(|c| c.cert.display().to_string()).collect::<Vec<_>>().join(", ");
        let fingerprints = p.certs.iter().map(|c| {
            c.fingerprint.clone().or(c.error.as_ref().map(|e| format!("unreadable: {e}"))).unwrap_or_default()
        });
        table.row([p.name, p.addresses.join(", "), files, fingerprints.collect::<Vec<_>>().join(", ")]);
    }
    out_raw!("{}", table.render());
    for line in rolled {
        out!("{line}");
    }
    Ok(())
}

/// A peer's row, with each certificate's fingerprint or why it cannot be read, and the newest
/// pinned in its place by `node`, the peer as the node loads it with its rollovers.
fn listed(peer: &PeerConfig, node: Option<std::sync::Arc<crate::peer::Peer>>) -> Listed {
    let certs: Vec<ListedCert> = peer
        .certs
        .iter()
        .map(|file| {
            let (fingerprint, error) = match load_cert(file) {
                Ok(cert) => (Some(Fingerprint::of(&cert)), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let newest = fingerprint.zip(node.as_ref()).map(|(f, node)| node.newest_of(f));
            let rolled_over_to = newest.filter(|newest| Some(*newest) != fingerprint).map(|f| f.to_string());
            ListedCert { cert: file.clone(), fingerprint: fingerprint.map(|f| f.to_string()), error, rolled_over_to }
        })
        .collect();
    Listed {
        name: peer.name.clone(),
        address: peer.addresses.first().cloned().unwrap_or_default(),
        addresses: peer.addresses.clone(),
        first: certs[0].clone(),
        certs,
    }
}

/// Moves peer `name` to `addresses` (one, or each of its members'); says what changed.
pub fn set_addresses(config_path: &Path, name: &str, addresses: &[String]) -> Result<String, CliError> {
    let config = Config::load(config_path)?;
    let peer = configured(&config, name)?;
    check_addresses(addresses)?;
    let new = addresses.join(", ");
    if peer.addresses == addresses {
        return Ok(format!("peer `{name}` is at {new} already; nothing changed"));
    }
    let mut doc = config_file::open(config_path)?;
    let table = config_file::table_mut(&mut doc, "peer", "name", name)?;
    config_file::set(table, "address", config_file::peer::one_or_list(addresses));
    config_file::save(config_path, &doc)?;
    Ok(format!("peer `{name}` now at {new} (was {})", peer.addresses.join(", ")))
}

/// Removes peer `name`: its `[[peer]]` table, its name from every service's `allow` list (so
/// that a peer pinned again under that name is not allowed anything until an admin says so), and
/// each of its pinned certificates that `ferry peer add` wrote (`certs/peers/NAME.pem`,
/// `NAME+2.pem`…) and no other peer names. Says what changed.
pub fn remove(config_path: &Path, name: &str) -> Result<String, CliError> {
    let config = Config::load(config_path)?;
    let peer = configured(&config, name)?.clone();
    let mut doc = config_file::open(config_path)?;
    config_file::remove(&mut doc, "peer", "name", name)?;
    let mut disallowed = Vec::new();
    for service in config.services.iter().filter(|s| s.allow.iter().any(|a| a == name)) {
        let table = config_file::table_mut(&mut doc, "service", "id", &service.id)?;
        if config_file::remove_from_list(table, "allow", name) {
            disallowed.push(format!("`{}`", service.id));
        }
    }
    config_file::save(config_path, &doc)?;

    let mut change = format!("removed peer `{name}` (at {})", peer.addresses.join(", "));
    if !disallowed.is_empty() {
        change.push_str(&format!(" and took it off the allow list of service {}", disallowed.join(", ")));
    }
    for (member, cert) in peer.certs.iter().enumerate() {
        let pinned = pin_path(&config, name, member);
        let shared = config.peers.iter().any(|p| p.name != name && p.certs.contains(cert));
        if *cert != pinned || shared {
            let why = if shared { "another peer names it too".to_owned() } else { format!("not {}", pinned.display()) };
            change.push_str(&format!("; kept its certificate {} ({why})", cert.display()));
            continue;
        }
        match std::fs::remove_file(&pinned) {
            Ok(()) => change.push_str(&format!("; deleted {}", pinned.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::failed(format!(
                    "{change}, but cannot delete {}: {e}; delete it by hand before pinning `{name}` again",
                    pinned.display()
                )))
            }
        }
    }
    Ok(change)
}

/// The configured peer `name`, or an error naming the configured ones.
fn configured<'c>(config: &'c Config, name: &str) -> Result<&'c PeerConfig, CliError> {
    config
        .peer(name)
        .ok_or_else(|| config_file::not_configured("peer", name, config.peers.iter().map(|p| p.name.as_str())).into())
}
