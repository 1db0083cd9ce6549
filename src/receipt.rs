//! Signed receipts: a node's proof, made with its own key, of what it accepted from a peer.
//!
//! A receiving node gathers the [`Leaf`]s of what it accepted for a few milliseconds and signs the
//! Merkle root of their hashes once, so a busy link costs one signature per batch rather than one
//! per message. The sender keeps, for each leaf, a [`Proof`]: the path from the leaf to the root
//! and the signature. Anyone holding the signer's certificate can check one leaf on its own,
//! offline ([`Proof::verify`]).
//!
//! Hashes are domain-separated: a leaf hash can never be mistaken for an inner node or a root.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::Identity;
use crate::wire::Leaf;

const LEAF: &[u8] = b"ferry-receipt-leaf/1\0";
const NODE: &[u8] = b"ferry-receipt-node/1\0";
const ROOT: &[u8] = b"ferry-receipt-root/1\0";

/// The hash of one leaf: its id, seq, payload and file hashes and time.
pub fn leaf_hash(leaf: &Leaf) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LEAF);
    h.update((leaf.id.len() as u32).to_be_bytes());
    h.update(leaf.id.as_bytes());
    h.update(leaf.seq.to_be_bytes());
    h.update(leaf.payload_sha256);
    match &leaf.file_sha256 {
        Some(f) => {
            h.update([1]);
            h.update(f);
        }
        None => h.update([0]),
    }
    h.update(leaf.at_ms.to_be_bytes());
    h.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(NODE).chain_update(left).chain_update(right).finalize().into()
}

/// The bytes a receipt's signature covers: the domain and the Merkle root.
pub fn statement(root: &[u8; 32]) -> Vec<u8> {
    [ROOT, root.as_slice()].concat()
}

/// One step from a node towards the root: the sibling's hash and which side it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    sibling_left: bool,
    hash: [u8; 32],
}

/// The root over `leaves` and, for each leaf, its path to the root. Nodes are paired left to
/// right; an odd last node moves up a level unchanged.
fn tree(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<Step>>) {
    let mut paths = vec![Vec::new(); leaves.len()];
    // Which leaves sit under each node of the current level.
    let mut level: Vec<([u8; 32], Vec<usize>)> = leaves.iter().enumerate().map(|(i, h)| (*h, vec![i])).collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut pairs = level.into_iter();
        while let Some((left, mut under_left)) = pairs.next() {
            match pairs.next() {
                Some((right, under_right)) => {
                    for &i in &under_left {
                        paths[i].push(Step { sibling_left: false, hash: right });
                    }
                    for &i in &under_right {
                        paths[i].push(Step { sibling_left: true, hash: left });
                    }
                    under_left.extend(under_right);
                    next.push((node(&left, &right), under_left));
                }
                None => next.push((left, under_left)),
            }
        }
        level = next;
    }
    (level.first().map(|(h, _)| *h).unwrap_or([0; 32]), paths)
}

/// The Merkle root over the leaves' hashes.
pub fn root(leaves: &[Leaf]) -> [u8; 32] {
    tree(&leaves.iter().map(leaf_hash).collect::<Vec<_>>()).0
}

/// What a sender keeps of a receipt for one leaf: enough to check it alone, offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// When the receiver accepted the message (ms since the Unix epoch), as it signed it.
    pub at_ms: i64,
    /// The path to the root: sibling hashes in hex, each prefixed `L:` or `R:` by its side.
    pub path: Vec<String>,
    /// The receiver's signature over the root (base64 of ASN.1 DER).
    pub signature: String,
}

impl Proof {
    /// The proof of each leaf of a batch receipt, in the leaves' order.
    pub fn for_batch(leaves: &[Leaf], signature: &[u8]) -> Vec<Proof> {
        let signature = base64::engine::general_purpose::STANDARD.encode(signature);
        let (_, paths) = tree(&leaves.iter().map(leaf_hash).collect::<Vec<_>>());
        leaves
            .iter()
            .zip(paths)
            .map(|(leaf, path)| Proof {
                at_ms: leaf.at_ms,
                path: path
                    .iter()
                    .map(|s| format!("{}:{}", if s.sibling_left { 'L' } else { 'R' }, hex::encode(s.hash)))
                    .collect(),
                signature: signature.clone(),
            })
            .collect()
    }

    /// Checks that `cert`'s key signed a batch holding `leaf` (whose `at_ms` must be this proof's).
    pub fn verify(&self, cert: &CertificateDer<'_>, leaf: &Leaf) -> Result<(), String> {
        if leaf.at_ms != self.at_ms {
            return Err("the receipt's time differs from the record's".into());
        }
        let mut hash = leaf_hash(leaf);
        for step in &self.path {
            let (side, hex_hash) = step.split_once(':').ok_or_else(|| format!("malformed path step `{step}`"))?;
            let sibling: [u8; 32] = hex::decode(hex_hash)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("malformed path step `{step}`"))?;
            hash = match side {
                "L" => node(&sibling, &hash),
                "R" => node(&hash, &sibling),
                _ => return Err(format!("malformed path step `{step}`")),
            };
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| "the signature is not base64".to_owned())?;
        verify_root(cert, &hash, &signature)
    }
}

/// Checks a signature over `root` with the key of `cert`.
pub fn verify_root(cert: &CertificateDer<'_>, root: &[u8; 32], signature: &[u8]) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e:?}"))?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, &statement(root), signature)
        .map_err(|_| "the signature does not verify against the pinned certificate".to_owned())
}

/// Signs receipts with the node's key.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

impl Signer {
    /// A signer with the node's P-256 key.
    pub fn new(identity: &Identity) -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, identity.key.secret_der(), &rng)
            .map_err(|e| format!("the node key cannot sign receipts: {e}"))?;
        Ok(Signer { key, rng })
    }

    /// The signature over the root of `leaves`.
    pub fn sign(&self, leaves: &[Leaf]) -> Vec<u8> {
        let root = root(leaves);
        self.key.sign(&self.rng, &statement(&root)).map(|s| s.as_ref().to_vec()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u32) -> Leaf {
        Leaf {
            id: format!("r{i}"),
            seq: i % 3,
            payload_sha256: [i as u8; 32],
            file_sha256: None,
            at_ms: 1_000 + i as i64,
        }
    }

    #[test]
    fn every_leaf_of_every_batch_size_proves_alone_and_nothing_else_does() {
        let identity = Identity::generate("org-b").unwrap();
        let other = Identity::generate("org-x").unwrap();
        let signer = Signer::new(&identity).unwrap();
        for n in 1..=9 {
            let leaves: Vec<Leaf> = (0..n).map(leaf).collect();
            let proofs = Proof::for_batch(&leaves, &signer.sign(&leaves));
            for (l, p) in leaves.iter().zip(&proofs) {
                p.verify(&identity.cert, l).unwrap();
                assert!(p.verify(&other.cert, l).is_err(), "another key must not verify");
                let mut changed = l.clone();
                changed.payload_sha256[0] ^= 1;
                assert!(p.verify(&identity.cert, &changed).is_err(), "a changed leaf must not verify");
            }
        }
    }
}
