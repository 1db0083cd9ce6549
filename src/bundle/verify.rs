//! Verifying a bundle with nothing but what it holds.

use std::fmt;

use base64::Engine;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::*;
use crate::evidence::{Entry, Record};

/// What [`verify`] checked, to be told in plain words ([`fmt::Display`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The request id.
    pub id: String,
    /// This node's name and certificate fingerprint.
    pub node: (String, String),
    /// The peer's name and certificate fingerprint.
    pub peer: (String, String),
    /// The segment's first and last seq.
    pub segment: (i64, i64),
    /// The exchange's records, each in a few words.
    pub records: Vec<String>,
    /// The receipts' leaves, each in a few words.
    pub receipts: Vec<String>,
    /// The messages this node sent that no receipt in the bundle covers.
    pub unreceipted: Vec<String>,
    /// What vouches for the segment.
    pub anchor: Anchored,
}

/// What [`verify`] found vouching for the segment.
#[derive(Debug, Clone, PartialEq)]
pub enum Anchored {
    /// A TSA stamped the segment's last record at this time (RFC 3339).
    Timestamp {
        /// The TSA's time.
        time: String,
        /// The TSA certificate's fingerprint.
        tsa: String,
    },
    /// This node signed its head at the segment's last record, and `holder` keeps it.
    Checkpoint {
        /// The peer that acknowledged keeping it.
        holder: String,
        /// When this node signed it (RFC 3339).
        at: String,
    },
    /// Nothing yet.
    Nothing,
}

impl Verified {
    /// What was verified as one JSON object (`ferry audit verify-bundle --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let anchor = match &self.anchor {
            Anchored::Timestamp { time, tsa } => serde_json::json!({"kind": "timestamp", "time": time, "tsa": tsa}),
            Anchored::Checkpoint { holder, at } => {
                serde_json::json!({"kind": "checkpoint", "holder": holder, "at": at})
            }
            Anchored::Nothing => serde_json::json!({"kind": "none"}),
        };
        serde_json::json!({
            "verified": true,
            "id": self.id,
            "node": {"name": self.node.0, "fingerprint": self.node.1},
            "peer": {"name": self.peer.0, "fingerprint": self.peer.1},
            "segment": {"first": self.segment.0, "last": self.segment.1},
            "records": self.records,
            "receipts": self.receipts,
            "unreceipted": self.unreceipted,
            "anchor": anchor,
        })
    }
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (node, peer) = (&self.node.0, &self.peer.0);
        let (first, last) = self.segment;
        writeln!(f, "verified: the evidence of request {} between {node} and {peer}", self.id)?;
        writeln!(f, "certificates: {node} {}, {peer} {}", self.node.1, self.peer.1)?;
        writeln!(f, "  (compare them with the organizations' own: the bundle cannot prove whose keys they are)")?;
        writeln!(
            f,
            "chain: records {first} to {last} of {node}'s log, each hash recomputed, each linked to the one before"
        )?;
        writeln!(f, "exchange: {} records, all in that chain:", self.records.len())?;
        for record in &self.records {
            writeln!(f, "  {record}")?;
        }
        writeln!(
            f,
            "receipts: {} signed by {peer}, each leaf's Merkle path leading to the signed root:",
            self.receipts.len()
        )?;
        for receipt in &self.receipts {
            writeln!(f, "  {receipt}")?;
        }
        for message in &self.unreceipted {
            writeln!(f, "  no receipt of {peer} covers {message}")?;
        }
        match &self.anchor {
            Anchored::Timestamp { time, tsa } => writeln!(
                f,
                "trusted time: a TSA ({tsa}) stamped record {last} at {time}: every record above existed as it is no \
                 later than that"
            ),
            Anchored::Checkpoint { holder, at } => writeln!(
                f,
                "checkpoint: {node} signed its chain head at record {last} at {at}, and {holder} acknowledged keeping \
                 it: {holder}'s log can confirm it (no trusted time)"
            ),
            Anchored::Nothing => writeln!(
                f,
                "not anchored: nothing outside {node} vouches for these records yet (no time-stamp or checkpoint of a \
                 later head); {node} could still have rewritten them"
            ),
        }
    }
}

/// The segment as checked: its records by seq.
struct Chain {
    first: i64,
    records: Vec<(String, Record)>,
}

impl Chain {
    fn get(&self, seq: i64) -> Option<&(String, Record)> {
        usize::try_from(seq.checked_sub(self.first)?).ok().and_then(|at| self.records.get(at))
    }

    fn last(&self) -> &Record {
        &self.records.last().expect("a chain is not empty").1
    }
}

/// Checks a bundle: the chain of its segment, its exchange records in it, every receipt leaf
/// against the record it covers and, through its Merkle path, against the peer's signature, and
/// its anchor. The first thing that does not hold is named.
pub fn verify(bundle: &Bundle) -> Result<Verified, BundleError> {
    if bundle.format != FORMAT {
        return Err(BundleError::Unreadable(format!(
            "its format is `{}`; this ferry reads `{FORMAT}`",
            clip(&bundle.format)
        )));
    }
    if bundle.id.is_empty() {
        return Err(broken("the bundle", "its request id is empty"));
    }
    let node_cert = certificate(&bundle.node.certificate).map_err(|why| broken("the node's certificate", why))?;
    let peer_cert = certificate(&bundle.peer.certificate).map_err(|why| broken("the peer's certificate", why))?;
    let chain = chain(&bundle.segment)?;
    let records = exchange(bundle, &chain)?;
    let (receipts, unreceipted) = receipts(bundle, &chain, &peer_cert)?;
    let anchor = anchor(&bundle.anchor, &chain, &node_cert)?;
    Ok(Verified {
        id: bundle.id.clone(),
        node: (bundle.node.name.clone(), fingerprint(&node_cert)),
        peer: (bundle.peer.name.clone(), fingerprint(&peer_cert)),
        segment: (chain.first, chain.last().seq),
        records,
        receipts,
        unreceipted,
        anchor,
    })
}

/// The length of `,"hash":"<64 hex>"}`, the end of every stored record.
const HASH_SUFFIX: usize = ",\"hash\":\"".len() + 64 + "\"}".len();

/// A stored record's text and hash: the text without `,"hash":"…"` (the bytes the hash covers:
/// the record's canonical JSON without `hash`) and the hash it ended with.
pub(super) fn split_hash(line: &str) -> Option<(String, &str)> {
    let at = line.len().checked_sub(HASH_SUFFIX)?;
    let (before, suffix) = (line.get(..at)?, line.get(at..)?);
    let hash = suffix.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some((format!("{before}}}"), hash))
}

/// Checks one stored record on its own: it reads as a record, and its hash is the SHA-256 of its
/// text without `hash` (which is also its canonical JSON).
fn checked_record(line: &str) -> Result<Record, String> {
    let record: Record = serde_json::from_str(line).map_err(|e| format!("not a record ({e})"))?;
    let (hashed, hash) = split_hash(line).ok_or("it does not end with its `hash`")?;
    let bytes_hash = hex::encode(Sha256::digest(hashed.as_bytes()));
    if bytes_hash != hash || record.hash != hash {
        return Err("its content does not match its hash: the record was changed".into());
    }
    if record.chain_hash() != hash {
        return Err("its text is not the canonical JSON of what it says (a key repeated or reordered)".into());
    }
    Ok(record)
}

/// Checks the segment: each record's hash, consecutive seqs, each `prev` the hash before it.
fn chain(segment: &[String]) -> Result<Chain, BundleError> {
    let mut records: Vec<(String, Record)> = Vec::with_capacity(segment.len());
    let mut first = 0;
    for line in segment {
        let part = match records.last() {
            Some((_, before)) => format!("segment record {}", before.seq.saturating_add(1)),
            None => "the segment's first record".to_owned(),
        };
        let record = checked_record(line).map_err(|why| broken(&part, why))?;
        match records.last() {
            None if record.seq < 1 => return Err(broken(part, format!("seq {} is no record's", record.seq))),
            None => first = record.seq,
            Some((_, before)) => {
                if Some(record.seq) != before.seq.checked_add(1) {
                    return Err(broken(
                        part,
                        format!(
                            "found record {} after record {}: a record is missing or moved",
                            record.seq, before.seq
                        ),
                    ));
                }
                if record.prev != before.hash {
                    return Err(broken(
                        part,
                        "its `prev` is not the previous record's hash: a record before it was changed, removed or moved",
                    ));
                }
            }
        }
        records.push((line.clone(), record));
    }
    if records.is_empty() {
        return Err(broken("the segment", "it holds no record"));
    }
    Ok(Chain { first, records })
}

/// Checks the exchange's records: each is in the segment as stored, has the bundle's id and
/// names its peer, and the segment holds no other record of it. Each in a few words.
fn exchange(bundle: &Bundle, chain: &Chain) -> Result<Vec<String>, BundleError> {
    if bundle.records.is_empty() {
        return Err(broken("the exchange", "the bundle holds no record of it"));
    }
    let mut seqs = Vec::new();
    let mut told = Vec::new();
    for (i, line) in bundle.records.iter().enumerate() {
        let part = format!("exchange record {}", i + 1);
        let record: Record = serde_json::from_str(line).map_err(|e| broken(&part, format!("not a record ({e})")))?;
        let part = format!("exchange record {} (seq {})", i + 1, record.seq);
        match chain.get(record.seq) {
            Some((stored, _)) if stored == line => {}
            Some(_) => return Err(broken(part, "it differs from the segment's record of that seq: it was changed")),
            None => return Err(broken(part, "it is not in the segment")),
        }
        let entry = &record.entry;
        if entry.id != bundle.id {
            return Err(broken(part, format!("it is of request `{}`, not `{}`", clip(&entry.id), clip(&bundle.id))));
        }
        if !entry.peer.is_empty() && entry.peer != bundle.peer.name {
            return Err(broken(
                part,
                format!("its peer is `{}`, not the bundle's `{}`", clip(&entry.peer), clip(&bundle.peer.name)),
            ));
        }
        if seqs.contains(&record.seq) {
            return Err(broken(part, "it is in the bundle twice"));
        }
        seqs.push(record.seq);
        told.push(describe(&record));
    }
    if let Some((_, missing)) = chain.records.iter().find(|(_, r)| r.entry.id == bundle.id && !seqs.contains(&r.seq)) {
        return Err(broken(
            format!("segment record {}", missing.seq),
            "it is a record of the exchange that the bundle's records leave out",
        ));
    }
    Ok(told)
}

/// A record of the exchange in a few words.
fn describe(record: &Record) -> String {
    let e = &record.entry;
    let mut words = format!("seq {} {} {} {}", record.seq, record.at, e.event, e.direction);
    if let Some(seq) = e.reply_seq {
        words.push_str(&format!(" (reply {seq})"));
    }
    if let (Some(method), Some(path)) = (&e.method, &e.path) {
        words.push_str(&format!(" {} {}", clip(method), clip(path)));
    }
    if let Some(serde_json::Value::Object(form)) = &e.form {
        let names: Vec<&str> = form.keys().map(String::as_str).collect();
        words.push_str(&format!(", form fields {}", clip(&names.join(", "))));
    }
    if let Some(file) = &e.file {
        let name = file.name.as_deref().map(clip).unwrap_or_default();
        let size = file.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
        words.push_str(&format!(", file {name}{size} sha256 {}", clip(&file.sha256)));
    }
    if let Some(body) = &e.body_sha256 {
        words.push_str(&format!(", payload sha256 {}", clip(body)));
    }
    words
}

/// Checks each receipt leaf: its receipt record is in the segment and holds it, it covers what
/// this node recorded sending, and its Merkle path leads to a root the peer signed. Each in a few
/// words, and the sent messages no receipt covers.
fn receipts(
    bundle: &Bundle,
    chain: &Chain,
    peer_cert: &CertificateDer<'static>,
) -> Result<(Vec<String>, Vec<String>), BundleError> {
    let peer = &bundle.peer.name;
    let ours: Vec<(i64, &Entry)> =
        chain.records.iter().filter(|(_, r)| r.entry.id == bundle.id).map(|(_, r)| (r.seq, &r.entry)).collect();
    let mut told = Vec::new();
    let mut covered_seqs = Vec::new();
    for (i, bundled) in bundle.receipts.iter().enumerate() {
        let part = format!("receipt {} (in record {})", i + 1, bundled.seq);
        let checked = in_chain(bundle, chain, &ours, bundled).and_then(|covers| {
            signed(bundled, peer, peer_cert)?;
            Ok(covers)
        });
        let covers = checked.map_err(|why| broken(&part, why))?;
        let what = match covers {
            Some((seq, sent)) => {
                covered_seqs.push(seq);
                format!("the {} at seq {seq}", sent.event)
            }
            None => "a message this node kept no record of sending".to_owned(),
        };
        let kind = match &bundled.head {
            Some(head) => {
                format!("countersigned, binding the whole record; {peer}'s chain head then: seq {}", head.seq)
            }
            None => "ferry/1: payload and file hashes".to_owned(),
        };
        told.push(format!(
            "{what}: leaf {} of {} of the receipt at seq {}, accepted at {} ({kind})",
            bundled.index + 1,
            bundled.leaves,
            bundled.seq,
            ms_text(bundled.leaf.at_ms)
        ));
    }
    // Every receipt of the exchange the segment holds is in the bundle.
    for (_, record) in &chain.records {
        let Some(kept) = record.entry.receipt.as_ref().filter(|_| record.entry.event == "receipt") else { continue };
        for (index, leaf) in kept.leaves.iter().enumerate() {
            let bundled = bundle.receipts.iter().any(|b| b.seq == record.seq && b.index == index as u64);
            if leaf.id == bundle.id && record.entry.peer == *peer && !bundled {
                return Err(broken(
                    format!("segment record {}", record.seq),
                    format!(
                        "it is a receipt of the exchange (leaf {}) that the bundle's receipts leave out",
                        index + 1
                    ),
                ));
            }
        }
    }
    let unreceipted = ours
        .iter()
        .filter(|(seq, e)| {
            e.direction == "out"
                && (e.event == "request" || (e.event == "reply" && e.reply_seq.is_some()))
                && !covered_seqs.contains(seq)
        })
        .map(|(seq, e)| format!("the {} at seq {seq}", e.event))
        .collect();
    Ok((told, unreceipted))
}

/// Checks a receipt leaf against the chain: its receipt record is in the segment and holds it
/// as given, and it covers what this node recorded sending (of the exchange's records, `ours`).
/// Returns the record it covers.
fn in_chain<'a>(
    bundle: &Bundle,
    chain: &Chain,
    ours: &[(i64, &'a Entry)],
    bundled: &BundledReceipt,
) -> Result<Option<(i64, &'a Entry)>, String> {
    let (leaf, peer) = (&bundled.leaf, &bundle.peer.name);
    if leaf.id != bundle.id {
        return Err(format!("its leaf is of request `{}`, not `{}`", clip(&leaf.id), clip(&bundle.id)));
    }
    let (_, record) = chain.get(bundled.seq).ok_or("its receipt record is not in the segment")?;
    let entry = &record.entry;
    let kept = entry.receipt.as_ref().filter(|_| entry.event == "receipt").ok_or("that record is no receipt")?;
    if entry.peer != *peer {
        return Err(format!("that receipt is from `{}`, not `{peer}`", clip(&entry.peer)));
    }
    let index = usize::try_from(bundled.index).ok().filter(|i| *i < kept.leaves.len());
    if bundled.leaves != kept.leaves.len() as u64 || index.and_then(|i| kept.leaves.get(i)) != Some(leaf) {
        return Err(format!(
            "the receipt record does not hold this leaf as leaf {} of {}",
            bundled.index, bundled.leaves
        ));
    }
    if kept.signature != bundled.signature || kept.head != bundled.head {
        return Err("its signature or head differs from the receipt record's".into());
    }
    let covers = match (bundled.covers, covered(ours.iter().copied(), leaf)) {
        (Some(seq), Some((found, entry))) if seq == found => Some((seq, entry)),
        (None, None) => None,
        (_, found) => {
            return Err(format!(
                "it says it covers record {}, but the record of sending that message is {}",
                bundled.covers.map_or("none".into(), |s| s.to_string()),
                found.map_or("none".into(), |(s, _)| s.to_string())
            ))
        }
    };
    if let Some((seq, sent)) = covers {
        let matches = match &leaf.record_sha256 {
            Some(record_sha256) if bundled.head.is_some() => {
                sent.binding(false).is_some_and(|b| hex::encode(b) == *record_sha256)
            }
            _ => {
                leaf.body_sha256 == sent.body_sha256.as_deref().unwrap_or_default()
                    && leaf.file_sha256.as_deref() == sent.file.as_ref().map(|f| f.sha256.as_str())
            }
        };
        if !matches {
            return Err(format!("{peer} signed other content than record {seq} says {} sent", bundle.node.name));
        }
    }
    Ok(covers)
}

/// Checks that the leaf's Merkle path has the shape of its place and leads to a root `peer`
/// signed (with its head, on a countersignature).
fn signed(bundled: &BundledReceipt, peer: &str, peer_cert: &CertificateDer<'static>) -> Result<(), String> {
    let sides = receipt::path_sides(bundled.index, bundled.leaves).ok_or("its leaf index is not below its count")?;
    let given: Vec<PathSide> = bundled.path.iter().map(|s| s.side).collect();
    let expected: Vec<PathSide> = sides.iter().map(|s| PathSide::from(*s)).collect();
    if given != expected {
        return Err(format!(
            "its Merkle path does not fit leaf {} of {}: it has {} steps ({}), that leaf's has {} ({})",
            bundled.index,
            bundled.leaves,
            given.len(),
            sides_text(&given),
            expected.len(),
            sides_text(&expected)
        ));
    }
    let path = bundled
        .path
        .iter()
        .zip(&sides)
        .map(|(step, side)| Ok(Step { side: *side, hash: sha256(&step.hash)? }))
        .collect::<Result<Vec<_>, String>>()?;
    let root = receipt::root_from_path(leaf_hash(&bundled.leaf, bundled.head.is_some())?, &path);
    let statement = match &bundled.head {
        Some(head) => receipt::countersigned_root_statement(
            &root,
            &crate::wire::Head { seq: head.seq, hash: sha256(&head.hash)? },
        ),
        None => receipt::statement(&root),
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&bundled.signature)
        .map_err(|_| "its signature is not base64")?;
    receipt::verify_statement(peer_cert, &statement, &signature).map_err(|_| {
        format!(
            "{peer}'s signature does not verify over the root its Merkle path leads to, with the bundle's peer certificate"
        )
    })
}

fn sides_text(sides: &[PathSide]) -> String {
    let words: Vec<&str> = sides
        .iter()
        .map(|s| match s {
            PathSide::Left => "left",
            PathSide::Right => "right",
        })
        .collect();
    if words.is_empty() {
        "none".into()
    } else {
        words.join(", ")
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC).
pub(super) fn ms_text(ms: i64) -> String {
    // RFC 3339 has four-digit years: up to the end of 9999.
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    match u64::try_from(ms) {
        Ok(unix_ms) if unix_ms < YEAR_10000_MS => {
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
            humantime::format_rfc3339_millis(time).to_string()
        }
        _ => format!("{ms} ms after the Unix epoch"),
    }
}

/// Checks the anchor against the segment's last record.
fn anchor(anchor: &Anchor, chain: &Chain, node_cert: &CertificateDer<'static>) -> Result<Anchored, BundleError> {
    let last = chain.last();
    let part = "anchor";
    match anchor {
        Anchor::Timestamp { record, tsa_certificate } => {
            let record = checked_record(record).map_err(|why| broken("the anchor's time-stamp record", why))?;
            let stamp: &TimeStamp = record
                .entry
                .timestamp
                .as_ref()
                .filter(|_| record.entry.event == "timestamp")
                .ok_or_else(|| broken(part, "its record is no time-stamp"))?;
            if stamp.seq != last.seq || stamp.hash != last.hash {
                return Err(broken(
                    part,
                    format!("the time-stamp is of record {}, not of the segment's last record {}", stamp.seq, last.seq),
                ));
            }
            if record.seq <= stamp.seq {
                return Err(broken(part, "the time-stamp record is not after the record it stamps"));
            }
            let tsa = certificate(tsa_certificate).map_err(|why| broken("the TSA's certificate", why))?;
            let token = base64::engine::general_purpose::STANDARD
                .decode(&stamp.token)
                .map_err(|_| broken(part, "the time-stamp token is not base64: it was altered"))?;
            let hash = sha256(&stamp.hash).map_err(|why| broken(part, why))?;
            let stamped = crate::timestamp::verify(&token, &hash, &tsa)
                .map_err(|e| broken(part, format!("the time-stamp token does not verify: {e}")))?;
            if stamped.time != stamp.tsa_time {
                return Err(broken(
                    part,
                    format!("its `tsa_time` {} is not the token's time {}", clip(&stamp.tsa_time), stamped.time),
                ));
            }
            Ok(Anchored::Timestamp { time: stamped.time, tsa: fingerprint(&tsa) })
        }
        Anchor::Checkpoint { record } => {
            let record = checked_record(record).map_err(|why| broken("the anchor's checkpoint record", why))?;
            let entry = &record.entry;
            let checkpoint = entry
                .checkpoint
                .as_ref()
                .filter(|_| entry.event == "checkpoint" && entry.direction == "out")
                .ok_or_else(|| broken(part, "its record is no checkpoint of this node's head (direction out)"))?;
            if i64::try_from(checkpoint.head.seq).ok() != Some(last.seq) || checkpoint.head.hash != last.hash {
                return Err(broken(
                    part,
                    format!(
                        "the checkpoint is of record {}, not of the segment's last record {}",
                        checkpoint.head.seq, last.seq
                    ),
                ));
            }
            checkpoint.verify(node_cert).map_err(|why| broken(part, format!("the checkpoint: {why}")))?;
            Ok(Anchored::Checkpoint { holder: entry.peer.clone(), at: ms_text(checkpoint.at_ms) })
        }
        Anchor::None { .. } => Ok(Anchored::Nothing),
    }
}

/// The bundle's explanation: what each part proves and how to check it.
pub(super) fn explanation(bundle: &Bundle, verified: &Verified) -> Vec<String> {
    let (node, peer, id) = (&bundle.node.name, &bundle.peer.name, &bundle.id);
    let (first, last) = verified.segment;
    let mut lines = vec![
        format!("This file is the evidence of request {id} between {node} and its peer {peer}, from {node}'s evidence log."),
        "Check it with `ferry audit verify-bundle FILE` (no database or config needed), or by hand with sha256sum and \
         openssl: ferry's docs/evidence.md gives every byte each hash and signature covers."
            .into(),
        String::new(),
        format!(
            "node, peer: the names and PEM certificates of {node} and of {peer} (as {node} pins it). Their SHA-256 \
             fingerprints (`openssl x509 -noout -fingerprint -sha256`) are {} and {}; compare them with the \
             organizations' own: nothing in the file can prove whose keys they are.",
            verified.node.1, verified.peer.1
        ),
        format!(
            "records: the {} records of the exchange (each with \"id\": \"{id}\"), exactly as {node} stored them.",
            bundle.records.len()
        ),
        format!(
            "segment: records {first} to {last} of {node}'s log, in order, exactly as stored. Each record's `hash` is the \
             SHA-256 of its line with `,\"hash\":\"…\"` cut from its end, and each `prev` is the hash of the record \
             before it: no record can be changed, dropped or moved without breaking the chain. The exchange's records \
             are in it, and so are the records of other exchanges made at the time."
        ),
        format!(
            "receipts: {peer}'s signatures over what it received from {node}, one entry per message: the leaf {peer} \
             signed for it, its Merkle path (the sibling hashes up to the root), and {peer}'s ECDSA P-256 signature \
             over the root (and, on a countersignature, {peer}'s own chain head), which {peer}'s certificate checks. \
             A countersigned leaf's `record_sha256` binds the whole record of the message (id, method, path, form, \
             payload, file), so no changed record matches what {peer} signed. The whole receipt is also in the \
             segment, at the seq given."
        ),
    ];
    lines.push(match &verified.anchor {
        Anchored::Timestamp { time, .. } => format!(
            "anchor (timestamp): a time-stamping authority's RFC 3161 token over the hash of record {last}, the segment's \
             last, in the record given; tsa_certificate is the TSA's certificate. Every record of the segment existed \
             as it is no later than {time}: {node} cannot have written or changed it since."
        ),
        Anchored::Checkpoint { holder, .. } => format!(
            "anchor (checkpoint): {node}'s signed chain head at record {last}, the segment's last, which {holder} \
             acknowledged keeping in its own log. {node} cannot change a record up to {last} without {holder}'s copy \
             showing it: ask {holder} for its `checkpoint` record of that head. It gives no trusted time."
        ),
        Anchored::Nothing => format!(
            "anchor (none): nothing outside {node} vouches for the segment yet; it ends at the chain head, record \
             {last}, and {node} could still have rewritten it. A node with a TSA time-stamps its head every \
             evidence.tsa_every; make the bundle again after that."
        ),
    });
    lines.push(format!(
        "Not in this file: {peer}'s own records of the exchange (ask {peer} for its bundle of request {id})."
    ));
    lines
}
