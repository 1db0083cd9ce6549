//! `ferry invite` and `ferry peer add --invite`: one file carries what a peer's admin needs to pin
//! this node (its name, the addresses it is reached at, its certificate and fingerprint), so that
//! nothing is typed by hand but the fingerprint compared by phone. An organization that runs
//! several members, each with a key of its own, merges their invites into one (`--member`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CliError;
use crate::config::{valid_name, Config, MAX_ADDRESSES, MAX_MEMBERS};
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
    /// The organization's other members with a key of their own, from their invites
    /// (`ferry invite --member FILE`); absent for a node alone. Older ferry versions refuse an
    /// invite that has it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
}

/// Another member of the organization an [`Invite`] is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its link addresses, host:port.
    pub addresses: Vec<String>,
    /// Its certificate's fingerprint.
    pub fingerprint: String,
    /// Its certificate, PEM.
    pub certificate: String,
}

impl Invite {
    /// Every address of the organization: this node's first, then each member's, none twice.
    pub fn all_addresses(&self) -> Vec<String> {
        let mut all = self.addresses.clone();
        for address in self.members.iter().flat_map(|m| &m.addresses) {
            if !all.contains(address) {
                all.push(address.clone());
            }
        }
        all
    }

    /// Every certificate to pin (PEM), this node's first, and their fingerprints.
    pub fn certificates(&self) -> (Vec<String>, Vec<String>) {
        let members = self.members.iter().map(|m| (m.certificate.clone(), m.fingerprint.clone()));
        std::iter::once((self.certificate.clone(), self.fingerprint.clone())).chain(members).unzip()
    }
}

/// Writes this node's invite to `out`: its name, `addresses` (default: `node.listen`, unless
/// that is a wildcard address its peers cannot dial), certificate and fingerprint, and the
/// members of `member_invites`, the invites of the organization's other members (same name).
pub fn write(
    config_path: &Path,
    out: &Path,
    addresses: &[String],
    member_invites: &[PathBuf],
) -> Result<Invite, CliError> {
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
    let mut invite = Invite {
        ferry_invite: 1,
        name: config.node.name.clone(),
        addresses,
        fingerprint: Fingerprint::of(&cert).to_string(),
        certificate: pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec())),
        members: Vec::new(),
    };
    for file in member_invites {
        let other = read(file)?;
        if other.name != invite.name {
            return Err(CliError::usage(format!(
                "{} is the invite of `{}`, not of a member of `{}`: every member of an organization has its name",
                file.display(),
                other.name,
                invite.name
            )));
        }
        let first =
            Member { addresses: other.addresses, fingerprint: other.fingerprint, certificate: other.certificate };
        for member in std::iter::once(first).chain(other.members) {
            // A member with a key known already (this node's, shared) adds its addresses only.
            let known = if member.fingerprint == invite.fingerprint {
                Some(&mut invite.addresses)
            } else {
                invite.members.iter_mut().find(|m| m.fingerprint == member.fingerprint).map(|m| &mut m.addresses)
            };
            match known {
                Some(addresses) => {
                    let new: Vec<String> = member.addresses.into_iter().filter(|a| !addresses.contains(a)).collect();
                    addresses.extend(new);
                }
                None => invite.members.push(member),
            }
        }
    }
    let (members, addresses) = (invite.members.len() + 1, invite.all_addresses().len());
    if members > MAX_MEMBERS || addresses > MAX_ADDRESSES {
        return Err(CliError::usage(format!(
            "the invite would name {members} members and {addresses} addresses; a peer pins at most {MAX_MEMBERS} \
             certificates and {MAX_ADDRESSES} addresses"
        )));
    }
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
    if invite.members.iter().any(|m| m.addresses.is_empty()) {
        return Err(bad("a member names no address".into()));
    }
    let (certificates, fingerprints) = invite.certificates();
    for (certificate, stated) in certificates.iter().zip(&fingerprints) {
        let der = pem::parse(certificate).map_err(|e| bad(format!("its certificate: {e}")))?;
        if der.tag() != "CERTIFICATE" {
            return Err(bad(format!("it holds a {}, not a CERTIFICATE", der.tag())));
        }
        let fingerprint = Fingerprint::of(der.contents()).to_string();
        if fingerprint != *stated {
            return Err(bad(format!(
                "its certificate's fingerprint is {fingerprint}, not the {stated} it states: it was changed"
            )));
        }
    }
    Ok(invite)
}
