//! Evidence bundles: one exchange's evidence in one file that a third party can check with no
//! database and no config (`ferry audit bundle`, `ferry audit verify-bundle`; the format and every
//! byte each hash and signature covers: docs/evidence.md).
//!
//! A [`Bundle`] holds the exchange's records as this node stored them, the stretch of its hash
//! chain from the first of them to a record something outside the node vouches for (a TSA's
//! time-stamp, else a checkpoint a peer keeps), the peer's receipts for what this node sent (each
//! leaf with its Merkle path), and both nodes' certificates. [`build`] reads it from the log and
//! checks it with [`verify`] before it is written, so a node never hands out a bundle that does
//! not verify; [`read`] takes a file apart, whatever it holds, without panicking.

mod build;
mod verify;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::evidence::{sha256_bytes as sha256, ChainHead, Entry, Signed, TimeStamp};
use crate::receipt::{self, Side, Step};
use crate::wire::Countersigned;

pub use build::{build, exchange_records, Sources};
pub use verify::{verify, Anchored, Verified};

/// The bundle format this version writes and reads.
pub const FORMAT: &str = "ferry-evidence-bundle/1";

/// The largest bundle [`read`] takes (and [`build`] writes): far more than an exchange's
/// evidence, and little enough to check in memory.
pub const MAX_BYTES: usize = 1 << 30;

/// One exchange's evidence, as written to the file (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// What each part proves and how to check it, in plain words, a line each.
    pub explanation: Vec<String>,
    /// The request id.
    pub id: String,
    /// The node whose log this is.
    pub node: Party,
    /// The peer of the exchange, with the certificate this node pins for it.
    pub peer: Party,
    /// Every record of the exchange (`id` equal to [`Bundle::id`]), exactly as stored.
    pub records: Vec<String>,
    /// Consecutive records of the log, exactly as stored: from the exchange's first record to
    /// the record the [`Anchor`] vouches for.
    pub segment: Vec<String>,
    /// The peer's receipts for the exchange's messages this node sent.
    pub receipts: Vec<BundledReceipt>,
    /// What vouches for the segment's last record.
    pub anchor: Anchor,
}

/// A node of the exchange: its name and PEM certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// The node's name.
    pub name: String,
    /// Its certificate, PEM.
    pub certificate: String,
}

/// One leaf of a peer's receipt, with what it takes to check it alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundledReceipt {
    /// The seq of the `receipt` record (in the segment) that holds the whole receipt.
    pub seq: i64,
    /// The seq of the record of the message the leaf covers (this node's `out` record); `None`
    /// when this node kept no record of sending it.
    pub covers: Option<i64>,
    /// The leaf, as signed.
    pub leaf: Signed,
    /// Its place among the receipt's leaves, from 0.
    pub index: u64,
    /// How many leaves the receipt signed.
    pub leaves: u64,
    /// The siblings from the leaf's hash up to the signed root.
    pub path: Vec<PathStep>,
    /// The signer's chain head (countersignatures; absent on `ferry/1` receipts).
    pub head: Option<ChainHead>,
    /// The peer's signature (base64 of ASN.1 DER).
    pub signature: String,
}

/// One step of a Merkle path, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathStep {
    /// `left` or `right`: where the sibling goes.
    pub side: PathSide,
    /// The sibling's hash, hex.
    pub hash: String,
}

/// [`Side`] as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathSide {
    /// [`Side::Left`].
    Left,
    /// [`Side::Right`].
    Right,
}

impl From<Side> for PathSide {
    fn from(side: Side) -> PathSide {
        match side {
            Side::Left => PathSide::Left,
            Side::Right => PathSide::Right,
        }
    }
}

/// What vouches for the segment's last record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Anchor {
    /// A TSA's time-stamp of the segment's last record.
    Timestamp {
        /// The `timestamp` record, as stored.
        record: String,
        /// The TSA's certificate, PEM.
        tsa_certificate: String,
    },
    /// This node's signed chain head at the segment's last record, which a peer acknowledged
    /// keeping.
    Checkpoint {
        /// The `checkpoint` record (`direction: "out"`), as stored.
        record: String,
    },
    /// Nothing yet: the segment ends at the chain head.
    None {
        /// Why, and when there will be an anchor.
        note: String,
    },
}

/// Why a bundle cannot be made or does not verify; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle cannot be made.
    #[error("{0}")]
    Cannot(String),
    /// The file is not a bundle this version reads.
    #[error("not a ferry evidence bundle: {0}")]
    Unreadable(String),
    /// A part of the bundle does not verify.
    #[error("{part}: {why}")]
    Broken {
        /// The part: `segment record 12`, `receipt 1`, `anchor`, …
        part: String,
        /// What is wrong.
        why: String,
    },
}

/// A [`BundleError::Broken`] of `part`.
fn broken(part: impl Into<String>, why: impl Into<String>) -> BundleError {
    BundleError::Broken { part: part.into(), why: why.into() }
}

/// The hash of a receipt's leaf: countersigned (with its record digest) or `ferry/1`.
pub(crate) fn leaf_hash(leaf: &Signed, countersigned: bool) -> Result<[u8; 32], String> {
    let plain = leaf.to_leaf()?;
    if !countersigned {
        return Ok(receipt::leaf_hash(&plain));
    }
    let record = leaf.record_sha256.as_deref().ok_or("a countersigned leaf without `record_sha256`")?;
    Ok(receipt::countersigned_hash(&Countersigned { leaf: plain, record_sha256: sha256(record)? }))
}

/// `text`, cut short for a message.
pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A DER certificate as PEM (LF line ends).
pub(crate) fn pem_of(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// The DER certificate in `text` (PEM), checked to be one.
pub(crate) fn certificate(text: &str) -> Result<CertificateDer<'static>, String> {
    let parsed = pem::parse(text).map_err(|e| format!("not a PEM certificate ({e})"))?;
    if parsed.tag() != "CERTIFICATE" {
        return Err(format!("a PEM `{}`, not a CERTIFICATE", clip(parsed.tag())));
    }
    let der = CertificateDer::from(parsed.into_contents());
    webpki::EndEntityCert::try_from(&der).map_err(|e| format!("not an X.509 certificate ({e:?})"))?;
    Ok(der)
}

/// `sha256:` and the hex SHA-256 of a DER certificate.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    crate::identity::Fingerprint::of(der).to_string()
}

/// Takes a bundle file apart (no more than [`MAX_BYTES`]); a file that is not one gets a
/// [`BundleError::Unreadable`] naming where it is not.
pub fn read(bytes: &[u8]) -> Result<Bundle, BundleError> {
    if bytes.len() > MAX_BYTES {
        return Err(BundleError::Unreadable(format!(
            "it is {} bytes, more than a bundle may be ({MAX_BYTES})",
            bytes.len()
        )));
    }
    // The format first, so that a bundle of another version is named as such.
    #[derive(Deserialize)]
    struct Format {
        format: Option<serde_json::Value>,
    }
    if let Ok(Format { format: Some(format) }) = serde_json::from_slice::<Format>(bytes) {
        if format != FORMAT {
            return Err(BundleError::Unreadable(format!(
                "its format is {}; this ferry reads `{FORMAT}`",
                clip(&format.to_string())
            )));
        }
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let bundle: Bundle = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." { String::new() } else { format!("at `{at}`: ") };
        BundleError::Unreadable(format!("{at}{}", e.inner()))
    })?;
    json.end().map_err(|e| BundleError::Unreadable(format!("after the bundle: {e}")))?;
    Ok(bundle)
}

/// The record of the message `leaf` covers among the exchange's `records`: this node's `out`
/// record of the request or reply with its id and reply seq (the last, if there are more).
pub(crate) fn covered<'a>(records: impl Iterator<Item = (i64, &'a Entry)>, leaf: &Signed) -> Option<(i64, &'a Entry)> {
    records
        .filter(|(_, e)| {
            e.direction == "out"
                && matches!(e.event.as_ref(), "request" | "reply" | "response")
                && e.id == leaf.id
                && e.reply_seq == leaf.reply_seq
        })
        .last()
}

#[cfg(test)]
mod tests {
    use super::verify::{ms_text, split_hash};
    use super::*;

    #[test]
    fn a_stored_records_hash_is_split_from_its_text() {
        let hash = "ab".repeat(32);
        let line = format!("{{\"seq\":1,\"prev\":\"00\",\"hash\":\"{hash}\"}}");
        assert_eq!(split_hash(&line), Some(("{\"seq\":1,\"prev\":\"00\"}".to_owned(), hash.as_str())));
        for bad in ["", "{}", "{\"hash\":\"ab\"}", &line[..line.len() - 1], "é".repeat(40).as_str()] {
            assert_eq!(split_hash(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_of_any_size_are_told_without_panicking() {
        assert_eq!(ms_text(1_796_592_933_671), "2026-12-06T21:35:33.671Z");
        for ms in [i64::MIN, -1, i64::MAX, 253_402_300_800_000] {
            assert!(ms_text(ms).ends_with("ms after the Unix epoch"), "{ms}");
        }
        assert!(ms_text(253_402_300_799_999).starts_with("9999-12-31T23:59:59"));
    }

    #[test]
    fn what_is_not_a_bundle_is_named_and_nothing_panics() {
        for (text, why) in [
            ("", "EOF"),
            ("[]", "expected struct Bundle"),
            ("{\"format\": 1}", "its format is 1;"),
            ("{\"format\": \"ferry-evidence-bundle/1\", \"explanation\": 5}", "at `explanation`"),
            ("{\"format\": \"ferry-evidence-bundle/9\"}", "this ferry reads `ferry-evidence-bundle/1`"),
            ("{\"format\": \"ferry-evidence-bundle/1\"}", "missing field"),
            ("{} {}", "missing field `format`"),
        ] {
            let err = read(text.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with("not a ferry evidence bundle: ") && err.contains(why), "{text}: {err}");
        }
    }
}
