//! Pinning a peer: its certificate copied to `certs/peers/NAME.pem` and a `[[peer]]` table added.
//! `ferry peer add` calls [`add`]; `ferry peer accept` and `POST /v1/peers/pending/accept` call
//! [`accept`], which picks the waiting node by its fingerprint and pins it the same way.

use std::path::{Path, PathBuf};

use toml_edit::{value, Table};

use super::EditError;
use crate::config::{shown, valid_address, valid_name, Config, PeerConfig, MAX_ADDRESSES, MAX_MEMBERS};
use crate::identity::{load_cert, Fingerprint};
use crate::pending::Knock;

/// [`add`] with the certificates as PEM text (from an invite, or a node waiting to be pinned).
pub fn add_pem(
    config_path: &Path,
    name: &str,
    addresses: &[String],
    pems: &[String],
) -> Result<Vec<Fingerprint>, EditError> {
    let mut files = Vec::with_capacity(pems.len());
    for pem in pems {
        let file = tempfile::NamedTempFile::new()
            .and_then(|mut f| std::io::Write::write_all(&mut f, pem.as_bytes()).map(|()| f))
            .map_err(|e| EditError::failed(format!("cannot write the certificate down: {e}")))?;
        files.push(file);
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path().to_owned()).collect();
    add(config_path, name, addresses, &paths)
}

/// Pins the certificates in `cert_files` (one, or one per member with a key of its own) for
/// peer `name` at `addresses` (one, or each of its members') and adds its `[[peer]]` table;
/// their fingerprints. A certificate pinned already, for this node or another
/// peer, or given twice, is refused.
pub fn add(
    config_path: &Path,
    name: &str,
    addresses: &[String],
    cert_files: &[PathBuf],
) -> Result<Vec<Fingerprint>, EditError> {
    let config = Config::load(config_path)?;
    check_name(name)?;
    if config.peer(name).is_some() {
        return Err(EditError::invalid(
            "name",
            format!(
                "peer `{name}` is configured already; `ferry peer set {name} --address …` moves it, and \
                 `ferry peer remove {name}` then `ferry peer add` pins another certificate"
            ),
        ));
    }
    check_addresses(addresses)?;
    if cert_files.is_empty() || cert_files.len() > MAX_MEMBERS {
        return Err(EditError::invalid("cert", format!("give 1 to {MAX_MEMBERS} certificates, one per member")));
    }
    let mut fingerprints = Vec::with_capacity(cert_files.len());
    for cert_file in cert_files {
        let fingerprint = checked_cert(&config, name, cert_file)?;
        if fingerprints.contains(&fingerprint) {
            return Err(EditError::invalid("cert", format!("{} is given twice ({fingerprint})", cert_file.display())));
        }
        fingerprints.push(fingerprint);
    }
    let pinned: Vec<PathBuf> = (0..cert_files.len()).map(|member| pin_path(&config, name, member)).collect();
    if let Some(there) = pinned.iter().find(|p| p.exists()) {
        return Err(EditError::file(format!(
            "{} exists already; remove it first to pin another certificate",
            there.display()
        )));
    }

    let mut doc = super::open(config_path)?;
    let mut peer = Table::new();
    peer["name"] = value(name);
    peer["address"] = toml_edit::Item::Value(one_or_list(addresses));
    let relative: Vec<String> =
        (0..cert_files.len()).map(|member| format!("peers/{}", pin_file(name, member))).collect();
    peer["cert"] = toml_edit::Item::Value(one_or_list(&relative));
    super::push(&mut doc, "peer", peer)?;

    let copied = cert_files.iter().zip(&pinned).try_for_each(|(from, to)| {
        std::fs::create_dir_all(to.parent().expect("peers/ has a parent"))
            .and_then(|_| std::fs::copy(from, to))
            .map(drop)
            .map_err(|e| EditError::file(format!("cannot copy the certificate to {}: {e}", to.display())))
    });
    if let Err(e) = copied.and_then(|()| super::save(config_path, &doc)) {
        for file in &pinned {
            let _ = std::fs::remove_file(file);
        }
        return Err(e);
    }
    Ok(fingerprints)
}

/// The fingerprint of the certificate in `cert_file`, to be pinned for peer `name`; refused
/// when it cannot be read, is this node's own, or is pinned for another peer.
fn checked_cert(config: &Config, name: &str, cert_file: &Path) -> Result<Fingerprint, EditError> {
    let cert = load_cert(cert_file).map_err(|e| EditError::invalid("cert", e.to_string()))?;
    let fingerprint = Fingerprint::of(&cert);
    if load_cert(&config.cert_path()).is_ok_and(|own| Fingerprint::of(&own) == fingerprint) {
        return Err(EditError::invalid(
            "cert",
            format!("{} is this node's own certificate; ask {name}'s admin for theirs", cert_file.display()),
        ));
    }
    if let Some(other) = pinned_for(config, fingerprint) {
        return Err(EditError::invalid(
            "cert",
            format!(
                "{} is the certificate pinned already for peer `{}` ({fingerprint}); a certificate identifies one \
                 peer: ask {name}'s admin for theirs, or if `{}` is now called {name}, `ferry peer remove {}` first",
                cert_file.display(),
                other.name,
                other.name,
                other.name
            ),
        ));
    }
    Ok(fingerprint)
}

/// What [`accept`] pinned.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The name it is pinned under.
    pub name: String,
    /// The address it is pinned at.
    pub address: String,
    /// Its whole fingerprint.
    pub fingerprint: Fingerprint,
}

/// The least of a fingerprint an admin must give to accept a waiting node: 8 hex digits.
pub const FINGERPRINT_PREFIX_MIN: usize = 8;

/// Pins the node among `waiting` whose fingerprint begins with `fingerprint` (with or without
/// `sha256:`, in any case, digits in groups separated by spaces or colons allowed; at least
/// [`FINGERPRINT_PREFIX_MIN`] hex digits, matching one node only) under
/// `name`, at `address` or else the address it dialed from, as [`add`] does.
pub fn accept(
    config_path: &Path,
    waiting: &[Knock],
    name: &str,
    fingerprint: &str,
    address: Option<&str>,
) -> Result<Accepted, EditError> {
    let knock = choose(waiting, fingerprint)?;
    let address = address.unwrap_or(&knock.address).to_owned();
    let fingerprint =
        add_pem(config_path, name, std::slice::from_ref(&address), std::slice::from_ref(&knock.certificate))?[0];
    Ok(Accepted { name: name.to_owned(), address, fingerprint })
}

/// The lowercase hex digits of a fingerprint as an admin may type what is read to them: with or
/// without `sha256:`, any case, digits in groups separated by spaces or colons; at least
/// [`FINGERPRINT_PREFIX_MIN`] of them.
pub fn typed_fingerprint(given: &str) -> Result<String, EditError> {
    let lower = given.trim().to_ascii_lowercase();
    let wanted: String =
        lower.trim_start_matches("sha256:").chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    if wanted.len() < FINGERPRINT_PREFIX_MIN || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(EditError::invalid(
            "fingerprint",
            "give at least its first 8 hex digits, as `ferry peers --pending` (or GET /v1/peers/pending) lists it",
        ));
    }
    Ok(wanted)
}

/// The one waiting node whose fingerprint begins with `given`.
fn choose<'k>(waiting: &'k [Knock], given: &str) -> Result<&'k Knock, EditError> {
    let wanted = typed_fingerprint(given)?;
    let matching: Vec<&Knock> =
        waiting.iter().filter(|k| k.fingerprint.trim_start_matches("sha256:").starts_with(&wanted)).collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(EditError {
            kind: super::EditKind::NotConfigured,
            field: Some("fingerprint"),
            message: format!(
                "no node waiting with fingerprint {}; `ferry peers --pending` lists those that dialed",
                shown(given)
            ),
        }),
        _ => Err(EditError::invalid("fingerprint", "it matches more than one waiting node: give more of it")),
    }
}

/// The configured peer one of whose pinned certificates has `fingerprint`; certificates that
/// cannot be read are passed over (`ferry check` names them).
pub fn pinned_for(config: &Config, fingerprint: Fingerprint) -> Option<&PeerConfig> {
    let has = |p: &&PeerConfig| p.certs.iter().any(|c| load_cert(c).is_ok_and(|c| Fingerprint::of(&c) == fingerprint));
    config.peers.iter().find(has)
}

/// Where `ferry peer add` pins the certificate of peer `name`'s `member` (0, 1, …):
/// `certs_dir/peers/NAME.pem`, then `NAME+2.pem`, `NAME+3.pem`… (`+`: no peer name holds one)
pub fn pin_path(config: &Config, name: &str, member: usize) -> PathBuf {
    config.node.certs_dir.join("peers").join(pin_file(name, member))
}

fn pin_file(name: &str, member: usize) -> String {
    match member {
        0 => format!("{name}.pem"),
        n => format!("{name}+{}.pem", n + 1),
    }
}

/// Refuses a peer name that is not letters, digits, `.`, `-` and `_` (at most 64).
pub fn check_name(name: &str) -> Result<(), EditError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(EditError::invalid("name", format!("{}: only letters, digits, `.`, `-` and `_` (at most 64)", shown(name))))
    }
}

/// Refuses a peer's addresses unless there are 1 to [`MAX_ADDRESSES`], each `host:port`, none
/// twice.
pub fn check_addresses(addresses: &[String]) -> Result<(), EditError> {
    if addresses.is_empty() || addresses.len() > MAX_ADDRESSES {
        return Err(EditError::invalid("address", format!("give 1 to {MAX_ADDRESSES} addresses, host:port")));
    }
    if let Some(bad) = addresses.iter().find(|a| !valid_address(a)) {
        return Err(EditError::invalid(
            "address",
            format!(
                "{}: not host:port with a DNS name or IP address and a port from 1 to 65535 \
                 (e.g. 192.0.2.7:7443 or ferry.org-b.example:7443)",
                shown(bad)
            ),
        ));
    }
    if let Some(twice) = addresses.iter().enumerate().find(|(i, a)| addresses[..*i].contains(a)) {
        return Err(EditError::invalid("address", format!("{} is given twice", shown(twice.1))));
    }
    Ok(())
}

/// A key that usually holds one value as the config writes it (a peer's `address` or `cert`): a
/// string for one, a list for several.
pub fn one_or_list(values: &[String]) -> toml_edit::Value {
    match values {
        [one] => one.as_str().into(),
        several => several.iter().map(String::as_str).collect::<toml_edit::Array>().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knock(fingerprint: &str) -> Knock {
        Knock {
            fingerprint: fingerprint.into(),
            address: "192.0.2.7:7443".into(),
            first_seen: String::new(),
            last_seen: String::new(),
            attempts: 1,
            certificate: String::new(),
        }
    }

    /// A waiting node is chosen by a unique beginning of its fingerprint, typed as an admin may
    /// (with or without `sha256:`, any case, spaces or colons between digits).
    #[test]
    fn a_waiting_node_is_chosen_by_a_unique_beginning_of_its_fingerprint() {
        let waiting = [knock("sha256:4f0c1a2b00aa"), knock("sha256:4f0c1a2b11bb"), knock("sha256:9999aaaa0000")];
        assert_eq!(choose(&waiting, "sha256:4f0c1a2b00").unwrap().fingerprint, "sha256:4f0c1a2b00aa");
        assert_eq!(choose(&waiting, " SHA256:9999AAAA ").unwrap().fingerprint, "sha256:9999aaaa0000");
        assert_eq!(choose(&waiting, "4f0c 1a2b:11").unwrap().fingerprint, "sha256:4f0c1a2b11bb");
        let kind = |given: &str| choose(&waiting, given).map(|k| k.fingerprint.clone()).map_err(|e| (e.kind, e.field));
        assert_eq!(kind("4f0c1a2b"), Err((super::super::EditKind::Invalid, Some("fingerprint"))), "two match");
        assert_eq!(kind("4f0c1a"), Err((super::super::EditKind::Invalid, Some("fingerprint"))), "too short");
        assert_eq!(kind("4f0c1a2g"), Err((super::super::EditKind::Invalid, Some("fingerprint"))), "not hex");
        assert_eq!(kind("12345678"), Err((super::super::EditKind::NotConfigured, Some("fingerprint"))), "none");
    }
}
