//! Signed receipts: a node's proof, made with its own key, of what it accepted from a peer.
//!
//! A receiving node gathers the [`Leaf`]s of what it accepted for a few milliseconds and signs the
//! Merkle root of their hashes once, so a busy link costs one signature per batch rather than one
//! per message. The sender keeps the whole batch, leaves and signature, as one evidence record;
//! anyone holding the signer's certificate can check it offline ([`verify_root`] over [`root`]).
//!
//! On `ferry/1+anchored` connections a receipt is a countersignature ([`countersign_statement`]):
//! each leaf also binds the digest of the message's whole record ([`Binding`]: method, path, form,
//! payload, file), and the signature also covers the signer's own chain head, so the sender's log
//! holds a signed point of the signer's. A [`checkpoint_statement`] is a chain head signed alone.
//!
//! Hashes are domain-separated: a leaf hash can never be mistaken for an inner node or a root, nor
//! one kind of statement for another.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::identity::Identity;
use crate::wire::{Countersigned, FormValue, Head, Leaf};

const LEAF: &[u8] = b"ferry-receipt-leaf/1\0";
const NODE: &[u8] = b"ferry-receipt-node/1\0";
const ROOT: &[u8] = b"ferry-receipt-root/1\0";
const COUNTERSIGNED: &[u8] = b"ferry-receipt-leaf/2\0";
const COUNTERSIGN: &[u8] = b"ferry-receipt-root/2\0";
const CHECKPOINT: &[u8] = b"ferry-checkpoint/1\0";
const RECORD: &[u8] = b"ferry-record/1\0";
const FORM: &[u8] = b"ferry-form/1\0";

/// What makes a request or a reply, as both its sender's and its receiver's evidence records
/// show it; its [`Binding::digest`] is what a countersigned leaf binds.
#[derive(Debug, Clone, Default)]
pub struct Binding<'a> {
    /// The request id.
    pub id: &'a str,
    /// 0 for a request, else the reply's seq.
    pub seq: u32,
    /// A request's method.
    pub method: Option<&'a str>,
    /// A request's path.
    pub path: Option<&'a str>,
    /// A request's [`form_digest`].
    pub form: Option<[u8; 32]>,
    /// SHA-256 of the message's payload ([`crate::wire::payload_sha256`]).
    pub payload_sha256: [u8; 32],
    /// The file that came with it: name, size and SHA-256.
    pub file: Option<(&'a str, u64, [u8; 32])>,
}

impl<'a> Binding<'a> {
    /// What makes `request`, whose payload hashes to `payload_sha256`.
    pub fn of_request(request: &'a crate::wire::Request, payload_sha256: [u8; 32]) -> Binding<'a> {
        Binding {
            id: &request.id,
            seq: 0,
            method: Some(&request.method),
            path: Some(&request.path),
            form: Some(wire_form_digest(&request.form)),
            payload_sha256,
            file: request.file.as_ref().map(|f| (f.name.as_str(), f.size, f.sha256)),
        }
    }

    /// What makes `reply`, whose payload hashes to `payload_sha256`.
    pub fn of_reply(reply: &'a crate::wire::Reply, payload_sha256: [u8; 32]) -> Binding<'a> {
        Binding {
            id: &reply.id,
            seq: reply.seq,
            payload_sha256,
            file: reply.file.as_ref().map(|f| (f.name.as_str(), f.size, f.sha256)),
            ..Binding::default()
        }
    }

    /// The leaf a receipt signs for this message, accepted at `at_ms`.
    pub fn leaf(&self, at_ms: i64) -> Countersigned {
        let leaf = Leaf {
            id: self.id.to_owned(),
            seq: self.seq,
            payload_sha256: self.payload_sha256,
            file_sha256: self.file.map(|(_, _, sha256)| sha256),
            at_ms,
        };
        Countersigned { leaf, record_sha256: self.digest() }
    }

    /// SHA-256 over every field, each length-prefixed or flagged, so no two bindings share one.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(RECORD);
        text(&mut h, self.id);
        h.update(self.seq.to_be_bytes());
        for part in [self.method, self.path] {
            match part {
                Some(part) => {
                    h.update([1]);
                    text(&mut h, part);
                }
                None => h.update([0]),
            }
        }
        match self.form {
            Some(form) => h.update([[1].as_slice(), &form].concat()),
            None => h.update([0]),
        }
        h.update(self.payload_sha256);
        match self.file {
            Some((name, size, sha256)) => {
                h.update([1]);
                text(&mut h, name);
                h.update(size.to_be_bytes());
                h.update(sha256);
            }
            None => h.update([0]),
        }
        h.finalize().into()
    }
}

/// Appends `part` length-prefixed.
fn text(h: &mut Sha256, part: &str) {
    h.update((part.len() as u64).to_be_bytes());
    h.update(part.as_bytes());
}

/// The digest of a form from its fields in the order the evidence log shows them (a repeated name
/// once, with its last value, in its first place), each as its name and the SHA-256 of its value's
/// text: the SHA-256 a masked field shows, so a record that masks a field still names it.
pub fn form_digest<'a>(fields: impl IntoIterator<Item = (&'a str, [u8; 32])>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(FORM);
    for (name, value_sha256) in fields {
        text(&mut h, name);
        h.update(value_sha256);
    }
    h.finalize().into()
}

/// The [`form_digest`] of a form as it travels.
pub fn wire_form_digest(form: &[(String, FormValue)]) -> [u8; 32] {
    let value = |v: &FormValue| -> [u8; 32] { Sha256::digest(v.to_text()).into() };
    let repeats = form.iter().enumerate().any(|(i, (name, _))| form[..i].iter().any(|(n, _)| n == name));
    if !repeats {
        return form_digest(form.iter().map(|(name, v)| (name.as_str(), value(v))));
    }
    let mut shown: Vec<(&str, [u8; 32])> = Vec::new();
    for (name, v) in form {
        match shown.iter_mut().find(|(n, _)| n == name) {
            Some(field) => field.1 = value(v),
            None => shown.push((name, value(v))),
        }
    }
    form_digest(shown)
}

/// The hash of one countersigned leaf: the `ferry/1` leaf's fields and the record digest.
pub fn countersigned_hash(leaf: &Countersigned) -> [u8; 32] {
    Sha256::new()
        .chain_update(COUNTERSIGNED)
        .chain_update(leaf_hash(&leaf.leaf))
        .chain_update(leaf.record_sha256)
        .finalize()
        .into()
}

/// The bytes a countersignature covers: the domain, the Merkle root of the countersigned leaves,
/// and the signer's chain head.
pub fn countersign_statement(leaves: &[Countersigned], head: &Head) -> Vec<u8> {
    countersigned_root_statement(&merkle(leaves.iter().map(countersigned_hash).collect()), head)
}

/// [`countersign_statement`] from the Merkle root of the countersigned leaves (one leaf's
/// [`root_from_path`]).
pub fn countersigned_root_statement(root: &[u8; 32], head: &Head) -> Vec<u8> {
    [COUNTERSIGN, root, &head.seq.to_be_bytes(), &head.hash].concat()
}

/// The bytes a checkpoint's signature covers: the domain, the signer's chain head and the time.
pub fn checkpoint_statement(head: &Head, at_ms: i64) -> Vec<u8> {
    [CHECKPOINT, &head.seq.to_be_bytes(), &head.hash, &at_ms.to_be_bytes()].concat()
}

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
    merkle(leaves.iter().map(leaf_hash).collect())
}

/// The Merkle root over leaf hashes, as [`root`].
fn merkle(mut level: Vec<[u8; 32]>) -> [u8; 32] {
    while level.len() > 1 {
        level = level.chunks(2).map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] }).collect();
    }
    level.first().copied().unwrap_or([0; 32])
}

/// Which side of the path a sibling is on: its hash goes before (`Left`) or after (`Right`) the
/// hash being carried up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The sibling is the left child: `node(sibling, carried)`.
    Left,
    /// The sibling is the right child: `node(carried, sibling)`.
    Right,
}

/// One step up a Merkle path: the sibling's hash and its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The sibling's side.
    pub side: Side,
    /// The sibling's hash (a leaf hash or an inner node).
    pub hash: [u8; 32],
}

/// The sides of the path of leaf `index` in a tree of `count` leaves, bottom up (a level where
/// the node is the odd last one, which moves up unchanged, has no step); `None` when `index` is
/// not below `count`. At most 64 steps, whatever the numbers.
pub fn path_sides(mut index: u64, mut count: u64) -> Option<Vec<Side>> {
    if index >= count {
        return None;
    }
    let mut sides = Vec::new();
    while count > 1 {
        if index % 2 == 1 {
            sides.push(Side::Left);
        } else if index + 1 < count {
            sides.push(Side::Right);
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    Some(sides)
}

/// The Merkle path of leaf `index` among the leaf hashes `hashes` (as [`root`] and
/// [`countersign_statement`] pair them); `None` when there is no such leaf.
pub fn merkle_path(hashes: &[[u8; 32]], mut index: usize) -> Option<Vec<Step>> {
    if index >= hashes.len() {
        return None;
    }
    let mut path = Vec::new();
    let mut level = hashes.to_vec();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if let Some(hash) = level.get(sibling) {
            path.push(Step { side: if sibling < index { Side::Left } else { Side::Right }, hash: *hash });
        }
        level = level.chunks(2).map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] }).collect();
        index /= 2;
    }
    Some(path)
}

/// The root that a leaf's hash and its Merkle path lead to.
pub fn root_from_path(leaf: [u8; 32], path: &[Step]) -> [u8; 32] {
    path.iter().fold(leaf, |carried, step| match step.side {
        Side::Left => node(&step.hash, &carried),
        Side::Right => node(&carried, &step.hash),
    })
}

/// The Merkle root over leaf hashes (a [`leaf_hash`] each, or a [`countersigned_hash`] each).
pub fn merkle_root(hashes: &[[u8; 32]]) -> [u8; 32] {
    merkle(hashes.to_vec())
}

/// Checks a signature over `root` with the key of `cert`.
pub fn verify_root(cert: &CertificateDer<'_>, root: &[u8; 32], signature: &[u8]) -> Result<(), String> {
    verify_statement(cert, &statement(root), signature)
}

/// Checks a signature over `statement` with the key of `cert`.
pub fn verify_statement(cert: &CertificateDer<'_>, statement: &[u8], signature: &[u8]) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e:?}"))?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, statement, signature)
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
        self.sign_statement(&statement(&root(leaves)))
    }

    /// The signature over [`countersign_statement`].
    pub fn countersign(&self, leaves: &[Countersigned], head: &Head) -> Vec<u8> {
        self.sign_statement(&countersign_statement(leaves, head))
    }

    /// The signature over [`checkpoint_statement`].
    pub fn checkpoint(&self, head: &Head, at_ms: i64) -> Vec<u8> {
        self.sign_statement(&checkpoint_statement(head, at_ms))
    }

    /// The signature over any `statement` (a [`crate::rollover`] statement).
    pub fn statement(&self, statement: &[u8]) -> Vec<u8> {
        self.sign_statement(statement)
    }

    fn sign_statement(&self, statement: &[u8]) -> Vec<u8> {
        self.key.sign(&self.rng, statement).map(|s| s.as_ref().to_vec()).unwrap_or_default()
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

    /// Every leaf's path of trees of 1 to 9 leaves leads to the tree's root, has the shape
    /// [`path_sides`] gives, and no longer does with a step dropped, moved or flipped.
    #[test]
    fn each_leafs_merkle_path_leads_to_the_root() {
        for n in 1..=9u32 {
            let leaves: Vec<Leaf> = (0..n).map(leaf).collect();
            let hashes: Vec<[u8; 32]> = leaves.iter().map(leaf_hash).collect();
            let expected = root(&leaves);
            assert_eq!(merkle_root(&hashes), expected);
            for (i, hash) in hashes.iter().enumerate() {
                let path = merkle_path(&hashes, i).unwrap();
                assert_eq!(root_from_path(*hash, &path), expected, "leaf {i} of {n}");
                let sides: Vec<Side> = path.iter().map(|s| s.side).collect();
                assert_eq!(Some(sides), path_sides(i as u64, n as u64), "leaf {i} of {n}");
                for at in 0..path.len() {
                    let mut flipped = path.clone();
                    flipped[at].side = if path[at].side == Side::Left { Side::Right } else { Side::Left };
                    assert_ne!(root_from_path(*hash, &flipped), expected, "leaf {i} of {n}, step {at} flipped");
                    let mut dropped = path.clone();
                    dropped.remove(at);
                    assert_ne!(root_from_path(*hash, &dropped), expected, "leaf {i} of {n}, step {at} dropped");
                }
                if path.len() > 1 {
                    let mut moved = path.clone();
                    moved.swap(0, 1);
                    assert_ne!(root_from_path(*hash, &moved), expected, "leaf {i} of {n}, steps swapped");
                }
            }
            assert_eq!(merkle_path(&hashes, n as usize), None);
            assert_eq!(path_sides(n as u64, n as u64), None);
        }
        assert!(path_sides(u64::MAX - 1, u64::MAX).is_some_and(|s| s.len() <= 64), "bounded for any count");
        assert_eq!(path_sides(0, u64::MAX).map(|s| s.len()), Some(64));
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
