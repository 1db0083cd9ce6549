//! Signed receipts: a node's proof, made with its own key, of what it accepted from a peer.
//!
//! A receiving node gathers the [`Leaf`]s of what it accepted for a few milliseconds and signs the
//! Merkle root of their hashes once, so a busy link costs one signature per batch rather than one
//! per message. The sender keeps the whole batch, leaves and signature, as one evidence record;
//! anyone holding the signer's certificate can check it offline ([`verify_root`] over [`root`]).
//!
//! Hashes are domain-separated: a leaf hash can never be mistaken for an inner node or a root.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::CertificateDer;
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

/// The Merkle root over the leaves' hashes. Nodes are paired left to right; an odd last node
/// moves up a level unchanged.
pub fn root(leaves: &[Leaf]) -> [u8; 32] {
    let mut level: Vec<[u8; 32]> = leaves.iter().map(leaf_hash).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] }).collect();
    }
    level.first().copied().unwrap_or([0; 32])
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
    fn a_batch_verifies_whole_and_no_changed_dropped_or_moved_leaf_does() {
        let identity = Identity::generate("org-b").unwrap();
        let other = Identity::generate("org-x").unwrap();
        let signer = Signer::new(&identity).unwrap();
        for n in 1..=9 {
            let leaves: Vec<Leaf> = (0..n).map(leaf).collect();
            let signature = signer.sign(&leaves);
            verify_root(&identity.cert, &root(&leaves), &signature).unwrap();
            assert!(verify_root(&other.cert, &root(&leaves), &signature).is_err(), "another key must not verify");
            for i in 0..leaves.len() {
                let mut changed = leaves.clone();
                changed[i].payload_sha256[0] ^= 1;
                assert!(verify_root(&identity.cert, &root(&changed), &signature).is_err(), "a changed leaf");
                let mut dropped = leaves.clone();
                dropped.remove(i);
                assert!(verify_root(&identity.cert, &root(&dropped), &signature).is_err(), "a dropped leaf");
                if i > 0 {
                    let mut moved = leaves.clone();
                    moved.swap(0, i);
                    assert!(verify_root(&identity.cert, &root(&moved), &signature).is_err(), "a moved leaf");
                }
            }
        }
    }
}
