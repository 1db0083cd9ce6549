//! Building a bundle from this node's log: one scan for the exchange, its receipts and anchors,
//! then the chain segment.

use rustls::pki_types::CertificateDer;

use super::verify::explanation;
use super::*;
use crate::evidence::{Entry, Record};

/// What [`build`] needs besides the log.
pub struct Sources<'a> {
    /// This node's name.
    pub node: &'a str,
    /// This node's certificates, the current first (two during a key rollover).
    pub node_certs: &'a [CertificateDer<'static>],
    /// Every certificate each peer has held, by name ([`crate::evidence::PeerCerts`]).
    pub peers: &'a crate::evidence::PeerCerts,
    /// The configured TSA's certificate (DER), if any.
    pub tsa_cert: Option<&'a [u8]>,
}

/// A record read from the log: its seq, its stored text, and what it says.
struct Read {
    seq: i64,
    text: String,
    record: Record,
}

/// What a first reading of the log found of one request.
#[derive(Default)]
struct Found {
    /// The exchange's records.
    ours: Vec<Read>,
    /// The receipt records with a leaf of the request.
    receipts: Vec<Read>,
    /// After the exchange's first record: (seq, the seq it stamps) of each time-stamp.
    stamps: Vec<(i64, i64)>,
    /// After the exchange's first record: (seq, the head's seq) of each checkpoint of this node's
    /// head a peer keeps.
    checkpoints: Vec<(i64, i64)>,
    /// The seq of the log's last record.
    head: i64,
}

/// Reads the whole log once for request `id`, parsing only the records that name it and those
/// that may anchor it.
fn scan(store: &crate::store::Location, id: &str) -> Result<Found, BundleError> {
    // The id as it appears in a record's text: on the exchange's records and on the leaves of
    // the receipts that cover them.
    let needle = format!("\"id\":{}", serde_json::to_string(id).expect("a string serializes"));
    let mut found = Found::default();
    for read in crate::store::read_log(store, 0).map_err(cannot)? {
        let (seq, text) = read.map_err(cannot)?;
        found.head = seq;
        let mentions = text.contains(&needle);
        let anchors = !found.ours.is_empty() && (text.contains("\"timestamp\":{") || text.contains("\"checkpoint\":{"));
        if !mentions && !anchors {
            continue;
        }
        let record: Record = serde_json::from_str(&text).map_err(|e| {
            BundleError::Cannot(format!("record {seq} of the log is unreadable ({e}); run `ferry audit verify`"))
        })?;
        let entry = &record.entry;
        if entry.id == id {
            found.ours.push(Read { seq, text, record });
        } else if entry.event == "receipt"
            && entry.receipt.as_ref().is_some_and(|r| r.leaves.iter().any(|l| l.id == id))
        {
            found.receipts.push(Read { seq, text, record });
        } else if let (Some(stamp), true) = (&entry.timestamp, entry.event == "timestamp") {
            found.stamps.push((seq, stamp.seq));
        } else if let (Some(checkpoint), true) =
            (&entry.checkpoint, entry.event == "checkpoint" && entry.direction == "out")
        {
            found.checkpoints.push((seq, i64::try_from(checkpoint.head.seq).unwrap_or(i64::MAX)));
        }
    }
    Ok(found)
}

/// The records of request `id` in the evidence log of the store at `store` and the receipts that cover
/// them, in log order, as (seq, the record's stored JSON): what a bundle of it would hold besides
/// the chain segment. Reads the whole log once, read-only.
pub fn exchange_records(store: &crate::store::Location, id: &str) -> Result<Vec<(i64, String)>, BundleError> {
    let Found { ours, receipts, .. } = scan(store, id)?;
    let mut records: Vec<(i64, String)> = ours.into_iter().chain(receipts).map(|r| (r.seq, r.text)).collect();
    records.sort_by_key(|(seq, _)| *seq);
    Ok(records)
}

/// A failure to read the log, for [`build`].
fn cannot(e: crate::store::StoreError) -> BundleError {
    BundleError::Cannot(e.to_string())
}

/// The records `first` to `end` of the log as stored, and the record at `anchor` (after `end`).
fn read_segment(
    store: &crate::store::Location,
    first: i64,
    end: i64,
    anchor: Option<i64>,
) -> Result<(Vec<String>, Option<String>), BundleError> {
    let mut segment = Vec::new();
    let mut anchor_text = None;
    for read in crate::store::read_log(store, first - 1).map_err(cannot)? {
        let (seq, text) = read.map_err(cannot)?;
        if seq <= end {
            segment.push(text);
        } else if Some(seq) == anchor {
            anchor_text = Some(text);
        }
        if seq >= end.max(anchor.unwrap_or(0)) {
            break;
        }
    }
    Ok((segment, anchor_text))
}

/// Makes the bundle of request `id` from the evidence log of the store at `store` (read-only: the node
/// may be running), and checks it ([`verify`]).
pub fn build(
    store: &crate::store::Location,
    id: &str,
    sources: &Sources<'_>,
) -> Result<(Bundle, Verified), BundleError> {
    if id.is_empty() {
        return Err(BundleError::Cannot("the request id is empty: give the id of a request (`ferry requests`)".into()));
    }
    let Found { ours, mut receipts, stamps, checkpoints, head } = scan(store, id)?;
    let Some(first) = ours.first().map(|r| r.seq) else {
        return Err(BundleError::Cannot(format!(
            "no record of request `{id}` in the evidence log; check the id (`ferry requests` lists them)"
        )));
    };
    let peer = exchange_peer(ours.iter().map(|r| &r.record.entry)).map_err(BundleError::Cannot)?;
    receipts.retain(|r| r.record.entry.peer == peer);
    // The anchor: the nearest later time-stamp of a record at or after the exchange's last, else
    // the nearest later checkpoint of such a head.
    let last = ours.iter().chain(&receipts).map(|r| r.seq).max().unwrap_or(first);
    let stamp = stamps.iter().find(|(_, stamped)| *stamped >= last);
    let checkpoint = checkpoints.iter().find(|(_, held)| *held >= last);
    let (end, anchor_seq) = match (stamp, checkpoint) {
        (Some(&(seq, stamped)), _) => (stamped, Some(seq)),
        (None, Some(&(seq, held))) => (held, Some(seq)),
        (None, None) => (head, None),
    };
    if stamp.is_some() && sources.tsa_cert.is_none() {
        return Err(BundleError::Cannot(
            "the log holds a time-stamp of this exchange but evidence.tsa_cert is not set: set it to the certificate of \
             the TSA that issued the tokens, so that the bundle carries it"
                .into(),
        ));
    }
    let (segment, anchor_text) = read_segment(store, first, end, anchor_seq)?;
    let anchor = match (stamp, anchor_text) {
        (Some(_), Some(record)) => {
            Anchor::Timestamp { record, tsa_certificate: pem_of(sources.tsa_cert.unwrap_or_default()) }
        }
        (None, Some(record)) => Anchor::Checkpoint { record },
        _ => Anchor::None {
            note: format!(
                "nothing anchors this exchange yet: no time-stamp or checkpoint of a head at or after record {last} is in \
                 the log (the node time-stamps its head every evidence.tsa_every with a TSA configured, and sends its \
                 peers checkpoints every evidence.checkpoint_every); make the bundle again after that"
            ),
        },
    };
    let peer_certs = sources.peers.get(&peer).filter(|certs| !certs.is_empty()).ok_or_else(|| {
        BundleError::Cannot(format!(
            "peer `{peer}` is not in the config: the bundle needs the certificate pinned for it (`ferry peer add`)"
        ))
    })?;
    let mut bundled = Vec::new();
    for read in &receipts {
        bundled.extend(bundled_receipts(read, id, &ours).map_err(BundleError::Cannot)?);
    }
    let mut bundle = Bundle {
        format: FORMAT.into(),
        explanation: Vec::new(),
        id: id.to_owned(),
        node: Party { name: sources.node.to_owned(), certificate: String::new() },
        peer: Party { name: peer, certificate: String::new() },
        records: ours.into_iter().map(|r| r.text).collect(),
        segment,
        receipts: bundled,
        anchor,
    };
    // The certificates that signed this exchange's evidence: after a rollover, maybe older ones.
    let mut verdict = None;
    'pairs: for node_cert in sources.node_certs {
        for peer_cert in peer_certs.iter().rev() {
            bundle.node.certificate = pem_of(node_cert);
            bundle.peer.certificate = pem_of(peer_cert);
            match verify(&bundle) {
                Ok(verified) => {
                    verdict = Some(Ok(verified));
                    break 'pairs;
                }
                Err(e) => _ = verdict.get_or_insert(Err(e)),
            }
        }
    }
    let verified = verdict.expect("a node and a peer certificate were tried").map_err(|e| {
        BundleError::Cannot(format!(
            "the evidence of request `{id}` does not verify, so no bundle was written: {e} (`ferry audit verify` checks \
             the whole log; if a peer's or the TSA's certificate changed since, the one configured now cannot check \
             what the old one signed)"
        ))
    })?;
    bundle.explanation = explanation(&bundle, &verified);
    Ok((bundle, verified))
}

/// The one peer the exchange's records name (callbacks to the host name none).
fn exchange_peer<'a>(entries: impl Iterator<Item = &'a Entry>) -> Result<String, String> {
    let mut peers: Vec<&str> = entries.map(|e| e.peer.as_str()).filter(|p| !p.is_empty()).collect();
    peers.sort_unstable();
    peers.dedup();
    match peers.as_slice() {
        [peer] => Ok((*peer).to_owned()),
        [] => Err("the records of this request name no peer".into()),
        many => Err(format!("the records of this request name more than one peer: {}", many.join(", "))),
    }
}

/// The leaves of the receipt record `read` for request `id`, each with its Merkle path.
fn bundled_receipts(read: &Read, id: &str, ours: &[Read]) -> Result<Vec<BundledReceipt>, String> {
    let receipt = read.record.entry.receipt.as_ref().ok_or("a receipt record without a receipt")?;
    let hashes = receipt
        .leaves
        .iter()
        .map(|leaf| leaf_hash(leaf, receipt.head.is_some()))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("the receipt at seq {}: {e}", read.seq))?;
    let mut bundled = Vec::new();
    for (index, leaf) in receipt.leaves.iter().enumerate().filter(|(_, leaf)| leaf.id == id) {
        let path = receipt::merkle_path(&hashes, index).unwrap_or_default();
        let records = ours.iter().map(|r| (r.seq, &r.record.entry));
        bundled.push(BundledReceipt {
            seq: read.seq,
            covers: covered(records, leaf).map(|(seq, _)| seq),
            leaf: leaf.clone(),
            index: index as u64,
            leaves: receipt.leaves.len() as u64,
            path: path.iter().map(|step| PathStep { side: step.side.into(), hash: hex::encode(step.hash) }).collect(),
            head: receipt.head.clone(),
            signature: receipt.signature.clone(),
        });
    }
    Ok(bundled)
}
