//! The evidence log: every request, response, reply, file and callback delivery, in and out, as a
//! hash chain (API.md §5).
//!
//! Each [`Record`]'s `hash` is the SHA-256 of its canonical JSON without `hash`, which includes
//! `prev`, the previous record's hash; so a record changed, dropped or moved breaks the chain at
//! that point. The store appends records in the same transaction as the change they record.
//! Receipts arrive later than what they cover, so they are records of their own (`event:
//! "receipt"`): one per receipt the peer sent, holding every message it covers (id, payload and
//! file hashes, time) and the peer's one signature over them.
//!
//! [`verify`] checks a log offline: the chain, and every receipt against the pinned certificates.

use std::borrow::Cow;
use std::collections::HashMap;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use base64::Engine;

use crate::receipt;
use crate::wire::{Countersigned, FormValue, Leaf};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the evidence log, as exported: what was recorded, and its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log: 1, 2, … without gaps.
    pub seq: i64,
    /// When it was recorded (RFC 3339).
    pub at: String,
    /// What was recorded.
    #[serde(flatten)]
    pub entry: Entry,
    /// The previous record's hash ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 over this record's canonical JSON without `hash`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// A file as the evidence log names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileFacts {
    /// Its name (absent on receipts, which sign only the hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its size in bytes (absent on receipts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of its content, hex.
    pub sha256: String,
}

/// What is recorded of one exchange step; the log adds `seq`, `at`, `prev` and `hash`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `request`, `response`, `reply`, `file`, `callback`, `refused` or `receipt`.
    pub event: Cow<'static, str>,
    /// `in` (from the peer) or `out` (to the peer, or to a host's callback).
    pub direction: Cow<'static, str>,
    /// The peer of the exchange.
    pub peer: String,
    /// Which member of the peer it was with, by the fingerprint of the certificate it presented:
    /// only for a peer whose members have a key each (several `cert`s), absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The request id.
    pub id: String,
    /// The reply's sequence number, for replies and their receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_seq: Option<u32>,
    /// HTTP method of a request.
    pub method: Option<String>,
    /// Path of a request.
    pub path: Option<String>,
    /// A request's form; fields the service masks appear as `sha256:<hex>`.
    pub form: Option<Value>,
    /// SHA-256 of the payload: the wire message of a request or reply, a response's body, the data
    /// delivered to a callback.
    pub body_sha256: Option<String>,
    /// The file that came with it.
    pub file: Option<FileFacts>,
    /// The answer to a synchronous request, on its `request` record (absent on all others, and
    /// in logs written before one record held both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// The peer's signed receipt (on `receipt` records).
    pub receipt: Option<Receipt>,
    /// A TSA's time-stamp of the chain head (on `timestamp` records; absent on all others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TimeStamp>,
    /// The peer's signed chain head (on `checkpoint` records; absent on all others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

/// The answer to a synchronous request, as its request's record shows it: one record per
/// exchange per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// `response` (the service's answer, whatever its status) or `refused` (a node's refusal).
    pub event: Cow<'static, str>,
    /// SHA-256 of the response's body, or of the refusal's message.
    pub body_sha256: String,
}

/// A node's evidence chain head: its last record's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The record's seq (0: the log was empty).
    pub seq: u64,
    /// The record's hash, hex (64 zeros when the log was empty).
    pub hash: String,
}

impl From<crate::wire::Head> for ChainHead {
    fn from(head: crate::wire::Head) -> ChainHead {
        ChainHead { seq: head.seq, hash: hex::encode(head.hash) }
    }
}

impl ChainHead {
    /// The head as signed.
    fn to_wire(&self) -> Result<crate::wire::Head, String> {
        Ok(crate::wire::Head { seq: self.seq, hash: sha256_bytes(&self.hash)? })
    }
}

/// A peer's signed chain head, as kept: the peer vouches that its log held record `head.seq` with
/// hash `head.hash` at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The peer's chain head.
    pub head: ChainHead,
    /// When the peer signed it (ms since the Unix epoch).
    pub at_ms: i64,
    /// The peer's signature over [`crate::receipt::checkpoint_statement`] (base64 of ASN.1 DER).
    pub signature: String,
}

impl Checkpoint {
    /// The kept form of a checkpoint received on the link.
    pub fn kept(checkpoint: crate::wire::Checkpoint) -> Checkpoint {
        Checkpoint {
            head: checkpoint.head.into(),
            at_ms: checkpoint.at_ms,
            signature: base64::engine::general_purpose::STANDARD.encode(checkpoint.signature),
        }
    }

    /// Checks that `cert`'s key signed this head at this time.
    pub fn verify(&self, cert: &CertificateDer<'_>) -> Result<(), String> {
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| "the signature is not base64".to_owned())?;
        let statement = receipt::checkpoint_statement(&self.head.to_wire()?, self.at_ms);
        receipt::verify_statement(cert, &statement, &signature)
    }
}

/// A TSA's RFC 3161 token over an earlier record's hash (a chain head), as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeStamp {
    /// The seq of the record stamped (the chain head when it was stamped).
    pub seq: i64,
    /// That record's hash, the digest the token covers.
    pub hash: String,
    /// The TSA's time (TSTInfo `genTime`, RFC 3339, UTC).
    pub tsa_time: String,
    /// The token: base64 of its DER (`openssl ts -verify -token_in` reads it decoded).
    pub token: String,
}

/// A peer's receipt as kept: the messages it covers, and its signature over their Merkle root
/// (and, on a countersignature, over its chain head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// What the peer signed, in the order it signed it.
    pub leaves: Vec<Signed>,
    /// The peer's chain head when it signed (countersignatures; absent on `ferry/1` receipts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<ChainHead>,
    /// The peer's signature (base64 of ASN.1 DER).
    pub signature: String,
}

/// One message a receipt covers, as the peer signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed {
    /// The request id.
    pub id: String,
    /// The reply's sequence number; absent for the request itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_seq: Option<u32>,
    /// SHA-256 of the payload the peer received, hex.
    pub body_sha256: String,
    /// SHA-256 of the file the peer received with it, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sha256: Option<String>,
    /// When the peer accepted it (ms since the Unix epoch).
    pub at_ms: i64,
    /// The digest of the message's whole record as the peer read it
    /// ([`crate::receipt::Binding::digest`]; countersignatures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_sha256: Option<String>,
}

impl Signed {
    fn of(leaf: Leaf, record_sha256: Option<[u8; 32]>) -> Signed {
        Signed {
            reply_seq: (leaf.seq > 0).then_some(leaf.seq),
            body_sha256: hex::encode(leaf.payload_sha256),
            file_sha256: leaf.file_sha256.map(hex::encode),
            at_ms: leaf.at_ms,
            id: leaf.id,
            record_sha256: record_sha256.map(hex::encode),
        }
    }

    /// The leaf as signed (on a countersignature, without its record digest).
    pub fn to_leaf(&self) -> Result<Leaf, String> {
        Ok(Leaf {
            id: self.id.clone(),
            seq: self.reply_seq.unwrap_or(0),
            payload_sha256: sha256_bytes(&self.body_sha256)?,
            file_sha256: self.file_sha256.as_deref().map(sha256_bytes).transpose()?,
            at_ms: self.at_ms,
        })
    }
}

/// A hex SHA-256 as bytes, or why it is not one (the text cut short: it may come from a hostile
/// file).
pub fn sha256_bytes(hex_text: &str) -> Result<[u8; 32], String> {
    digest(hex_text).ok_or_else(|| match hex_text.char_indices().nth(80) {
        Some((at, _)) => format!("`{}…` is not a hex SHA-256", &hex_text[..at]),
        None => format!("`{hex_text}` is not a hex SHA-256"),
    })
}

impl From<crate::wire::Receipt> for Receipt {
    fn from(receipt: crate::wire::Receipt) -> Receipt {
        let leaves = receipt.leaves.into_iter().map(|l| Signed::of(l, None)).collect();
        Receipt { leaves, head: None, signature: base64::engine::general_purpose::STANDARD.encode(receipt.signature) }
    }
}

impl From<crate::wire::Countersign> for Receipt {
    fn from(receipt: crate::wire::Countersign) -> Receipt {
        let leaves = receipt.leaves.into_iter().map(|l| Signed::of(l.leaf, Some(l.record_sha256))).collect();
        Receipt {
            leaves,
            head: Some(receipt.head.into()),
            signature: base64::engine::general_purpose::STANDARD.encode(receipt.signature),
        }
    }
}

impl Receipt {
    /// Checks that `cert`'s key signed exactly these leaves (and this head).
    pub fn verify(&self, cert: &CertificateDer<'_>) -> Result<(), String> {
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| "the signature is not base64".to_owned())?;
        let Some(head) = &self.head else {
            let leaves = self.leaves.iter().map(Signed::to_leaf).collect::<Result<Vec<_>, String>>()?;
            return receipt::verify_root(cert, &receipt::root(&leaves), &signature);
        };
        let leaves = self
            .leaves
            .iter()
            .map(|s| {
                let record = s.record_sha256.as_deref().ok_or("a countersigned leaf without `record_sha256`")?;
                Ok(Countersigned { leaf: s.to_leaf()?, record_sha256: sha256_bytes(record)? })
            })
            .collect::<Result<Vec<_>, String>>()?;
        receipt::verify_statement(cert, &receipt::countersign_statement(&leaves, &head.to_wire()?), &signature)
    }
}

impl Entry {
    /// The digest of what this request or reply record shows of the message
    /// ([`crate::receipt::Binding`]). `masked`: a form value `sha256:<hex>` is read as a masked
    /// field, `<hex>` being its text's SHA-256; else every field is read as sent. `None` when the
    /// record lacks what a request or reply record holds.
    pub fn binding(&self, masked: bool) -> Option<[u8; 32]> {
        let form = match &self.form {
            Some(Value::Object(fields)) => {
                let text = |v: &Value| match v.as_str().and_then(|t| t.strip_prefix("sha256:")).and_then(digest) {
                    Some(hash) if masked => hash,
                    _ => field_sha256(v),
                };
                Some(receipt::form_digest(fields.iter().map(|(name, v)| (name.as_str(), text(v)))))
            }
            Some(_) => return None,
            None => None,
        };
        let file = match &self.file {
            Some(FileFacts { name: Some(name), size: Some(size), sha256 }) => {
                Some((name.as_str(), *size, digest(sha256)?))
            }
            Some(_) => return None,
            None => None,
        };
        let binding = receipt::Binding {
            id: &self.id,
            seq: self.reply_seq.unwrap_or(0),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            form,
            payload_sha256: digest(self.body_sha256.as_deref()?)?,
            file,
        };
        Some(binding.digest())
    }

    /// An entry for `event` in `direction` of request `id` with `peer`.
    pub fn new(event: &'static str, direction: &'static str, peer: &str, id: &str) -> Entry {
        Entry { event: event.into(), direction: direction.into(), peer: peer.into(), id: id.into(), ..Entry::default() }
    }

    /// This entry's JSON, rendered ahead of the log's writer (see [`Rendered`]).
    pub fn render(&self) -> Rendered {
        Rendered::json(self)
    }
}

/// The [`Entry`] of a request or of an answer to one, borrowed from what it records: it renders
/// to the same JSON as the owned entry ([`Summary::render`]) without copying the request's fields
/// into one first, since every exchange records one on each node. Its `receipt` is always
/// `null`: receipts are records of their own.
#[derive(Debug, Default)]
pub struct Summary<'a> {
    /// As [`Entry::event`].
    pub event: &'static str,
    /// As [`Entry::direction`].
    pub direction: &'static str,
    /// As [`Entry::peer`].
    pub peer: &'a str,
    /// As [`Entry::member`].
    pub member: Option<&'a str>,
    /// As [`Entry::id`].
    pub id: &'a str,
    /// As [`Entry::method`].
    pub method: Option<&'a str>,
    /// As [`Entry::path`].
    pub path: Option<&'a str>,
    /// As [`Entry::form`].
    pub form: Option<MaskedForm<'a>>,
    /// As [`Entry::body_sha256`].
    pub body_sha256: Option<&'a str>,
    /// As [`Entry::file`].
    pub file: Option<FileFacts>,
    /// As [`Entry::answer`]: its event and body's SHA-256.
    pub answer: Option<(&'static str, &'a str)>,
}

/// A request's form as the log shows it: fields in `mask` as `sha256:<hex>` of their text.
#[derive(Debug, Clone, Copy)]
pub struct MaskedForm<'a> {
    /// The form as it came.
    pub form: &'a [(String, FormValue)],
    /// The names of the fields to mask.
    pub mask: &'a [String],
}

impl MaskedForm<'_> {
    /// The form as a JSON object (a later field of a repeated name wins, in the first one's place).
    pub fn to_json(&self) -> Value {
        let fields = self.form.iter().map(|(name, value)| (name.clone(), self.value(name, value)));
        Value::Object(fields.collect())
    }

    fn value(&self, name: &String, value: &FormValue) -> Value {
        if self.mask.contains(name) {
            format!("sha256:{}", sha256_hex(value.to_text().as_bytes())).into()
        } else {
            value.to_json()
        }
    }

    /// Whether a field name repeats (the JSON object keeps one of them).
    fn repeats(&self) -> bool {
        self.form.iter().enumerate().any(|(i, (name, _))| self.form[..i].iter().any(|(earlier, _)| earlier == name))
    }

    /// Appends the form's JSON object to `out`, as [`MaskedForm::to_json`] would render.
    fn write(&self, out: &mut String) {
        use std::fmt::Write;
        out.push('{');
        for (i, (name, value)) in self.form.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(out, name);
            out.push(':');
            match value {
                _ if self.mask.contains(name) => out.push_str(&self.value(name, value).to_string()),
                FormValue::Text(text) => json_string(out, text),
                FormValue::Int(int) => {
                    let _ = write!(out, "{int}");
                }
                _ => out.push_str(&value.to_json().to_string()),
            }
        }
        out.push('}');
    }
}

/// Appends `text` to `out` as a JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(text).expect("a string serializes"));
    }
}

/// Appends `text` as a JSON string, or `null`.
fn json_option(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => json_string(out, text),
        None => out.push_str("null"),
    }
}

impl Summary<'_> {
    /// This record's JSON, the same as its owned [`Entry`]'s.
    pub fn render(&self) -> Rendered {
        match self.form {
            // A repeated field name: the owned form keeps one of them, and the log must read back
            // as it was hashed.
            Some(form) if form.repeats() => self.to_entry().render(),
            _ => {
                let mut out = spare();
                self.write(&mut out);
                Rendered(out)
            }
        }
    }

    /// Appends the record's JSON object to `out`, field by field as [`Entry`] serializes.
    fn write(&self, out: &mut String) {
        let member = self.member.map(|member| (",\"member\":", Some(member)));
        let texts = [
            ("{\"event\":", Some(self.event)),
            (",\"direction\":", Some(self.direction)),
            (",\"peer\":", Some(self.peer)),
        ]
        .into_iter()
        .chain(member)
        .chain([(",\"id\":", Some(self.id)), (",\"method\":", self.method), (",\"path\":", self.path)]);
        for (key, text) in texts {
            out.push_str(key);
            json_option(out, text);
        }
        out.push_str(",\"form\":");
        match self.form {
            Some(form) => form.write(out),
            None => out.push_str("null"),
        }
        out.push_str(",\"body_sha256\":");
        json_option(out, self.body_sha256);
        out.push_str(",\"file\":");
        match &self.file {
            Some(file) => out.push_str(&serde_json::to_string(file).expect("file facts serialize")),
            None => out.push_str("null"),
        }
        if let Some((event, body_sha256)) = self.answer {
            out.push_str(",\"answer\":{\"event\":");
            json_string(out, event);
            out.push_str(",\"body_sha256\":");
            json_string(out, body_sha256);
            out.push('}');
        }
        out.push_str(",\"receipt\":null}");
    }

    /// The owned entry.
    pub fn to_entry(&self) -> Entry {
        Entry {
            event: self.event.into(),
            direction: self.direction.into(),
            peer: self.peer.into(),
            member: self.member.map(str::to_owned),
            id: self.id.into(),
            reply_seq: None,
            method: self.method.map(str::to_owned),
            path: self.path.map(str::to_owned),
            form: self.form.map(|f| f.to_json()),
            body_sha256: self.body_sha256.map(str::to_owned),
            file: self.file.clone(),
            answer: self
                .answer
                .map(|(event, body_sha256)| Answer { event: event.into(), body_sha256: body_sha256.into() }),
            receipt: None,
            timestamp: None,
            checkpoint: None,
        }
    }
}

/// An [`Entry`] rendered as its JSON object: the costly part of appending it, done by the caller,
/// so that the log's one writer only chains it ([`Rendered::seal`]).
#[derive(Debug, Clone)]
pub struct Rendered(String);

impl Default for Rendered {
    fn default() -> Rendered {
        Rendered("{}".into())
    }
}

impl From<Entry> for Rendered {
    fn from(entry: Entry) -> Rendered {
        entry.render()
    }
}

/// Text buffers the log's writer is done with, for the next records to be rendered into. Records
/// are rendered on the callers' threads and dropped on the writer's, and with glibc's allocator a
/// buffer freed on another thread than the one that took it is costly to both (in a profile of
/// the relay bench, about 4 of the log's 37 µs per exchange); handed back, it is neither freed nor
/// taken again.
static SPARE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// The most buffers [`SPARE`] keeps: more than a commit's records.
const SPARE_MAX: usize = 4096;
/// The largest buffer [`SPARE`] keeps (a receipt's record can be far larger than a request's).
const SPARE_LARGEST: usize = 4096;

/// An empty buffer for a record, from [`SPARE`] if it has one.
fn spare() -> String {
    SPARE.lock().unwrap().pop().unwrap_or_else(|| String::with_capacity(512))
}

impl Rendered {
    /// `entry`'s JSON, in a buffer from [`SPARE`].
    fn json(entry: &impl Serialize) -> Rendered {
        let mut text = spare().into_bytes();
        serde_json::to_writer(&mut text, entry).expect("an entry serializes");
        Rendered(String::from_utf8(text).expect("serde_json writes UTF-8"))
    }

    /// Appends the record's JSON as stored to `out`, at `seq`, recorded `at`, chained to `prev`:
    /// the canonical JSON of the [`Record`] without `hash`, then `hash` (SHA-256 over that text)
    /// appended. Returns the hash.
    pub fn seal(&self, out: &mut String, seq: i64, at: &str, prev: &str) -> String {
        use std::fmt::Write;
        // The entry's fields, without the braces of its object.
        let fields = &self.0[1..self.0.len() - 1];
        let start = out.len();
        let _ = write!(out, "{{\"seq\":{seq},\"at\":\"{at}\",{fields},\"prev\":\"{prev}\"}}");
        let hash = sha256_hex(&out.as_bytes()[start..]);
        out.pop(); // the closing brace
        let _ = write!(out, ",\"hash\":\"{hash}\"}}");
        hash
    }

    /// Whether this is a `checkpoint` record.
    pub fn is_checkpoint(&self) -> bool {
        self.0.starts_with("{\"event\":\"checkpoint\"")
    }

    /// Hands this record's buffer back for another record to be rendered into (or frees it, when
    /// it is large or enough are kept).
    pub fn recycle(self) {
        let mut text = self.0;
        if text.capacity() <= SPARE_LARGEST {
            text.clear();
            let mut spare = SPARE.lock().unwrap();
            if spare.len() < SPARE_MAX {
                spare.push(text);
            }
        }
    }
}

/// SHA-256 of a form field's text, as a masked field shows it and a receipt binds it: a string's
/// text, any other value's JSON.
pub fn field_sha256(value: &Value) -> [u8; 32] {
    match value {
        Value::String(text) => Sha256::digest(text).into(),
        other => Sha256::digest(other.to_string()).into(),
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Record {
    /// SHA-256 over the canonical JSON of every field but `hash`.
    pub fn chain_hash(&self) -> String {
        let unhashed = Record { hash: String::new(), ..self.clone() };
        sha256_hex(&serde_json::to_vec(&unhashed).unwrap_or_default())
    }

    /// Whether this record follows a record hashed `prev` and matches its own hash; why not.
    pub fn chained(&self, prev: &str) -> Result<(), String> {
        if self.prev != prev {
            return Err(
                "its `prev` is not the previous record's hash: a record before it was changed, removed or moved".into(),
            );
        }
        if self.chain_hash() != self.hash {
            return Err("its content does not match its hash: the record was changed".into());
        }
        Ok(())
    }
}

/// What [`verify`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intact {
    /// Records in the chain.
    pub records: u64,
    /// Messages covered by a receipt whose signature verified.
    pub receipts: u64,
    /// Time-stamp records whose token verified against the TSA certificate.
    pub timestamps: u64,
    /// Time-stamp records found with no TSA certificate to check their tokens against (their
    /// stamped hash was still checked against the chain).
    pub unchecked_timestamps: u64,
    /// The newest seq a time-stamp covers: records after it have no trusted time.
    pub stamped: Option<i64>,
    /// The newest head of this log a peer acknowledged keeping (`checkpoint` records out): the
    /// peer and the seq. Records after it can be cut off unseen but against that peer's export.
    pub anchored: Option<(String, i64)>,
}

/// How many of the latest records' hashes [`verify`] keeps to check what a time-stamp record
/// stamped (32 MiB): the stamping task records a token within a TSA round trip of the head it
/// stamped.
const STAMP_WINDOW: usize = 1 << 20;

/// Where the log is broken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first bad record.
    pub seq: i64,
    /// What is wrong with it.
    pub why: String,
}

/// Every certificate each peer has held, by peer name: the one pinned in the config and those
/// its rollovers brought ([`crate::rollover`]).
pub type PeerCerts = HashMap<String, Vec<CertificateDer<'static>>>;

/// Checks a whole log given as (stored seq, record JSON) in stored order: the chain, and every
/// receipt against `certs` (the pinned certificate of each peer, by name). A receipt must also
/// match what this node recorded sending, when it recorded it: a sync request whose caller gave
/// up (or whose node stopped) before the answer has its receipt as its only record, which is no
/// break, since no record can go missing without breaking the chain.
///
/// Each time-stamp record must stamp the hash of the record at its stamped seq, and its token must
/// verify against `tsa_cert` (DER), when one is given; each checkpoint record out (a head of this
/// log a peer keeps) must name an earlier record with its hash.
pub fn verify(
    rows: impl IntoIterator<Item = (i64, String)>,
    certs: &PeerCerts,
    tsa_cert: Option<&[u8]>,
) -> Result<Intact, Broken> {
    let mut prev = GENESIS.to_owned();
    let mut intact = Intact::default();
    // The latest records' hashes, the oldest first, for time-stamps to be checked against.
    let mut hashes: std::collections::VecDeque<[u8; 32]> = std::collections::VecDeque::new();
    // What this node recorded sending, by message ([`message`]): its content ([`content`]) and
    // the digest of its record ([`Entry::binding`]).
    let mut sent: HashMap<[u8; 32], Sent> = HashMap::new();
    // Receipts' messages not recorded as sent (yet) where the receipt is: (receipt seq, message,
    // what was signed).
    let mut unmatched: Vec<(i64, [u8; 32], Signature)> = Vec::new();
    // The first receipt whose content differs from what was recorded sending.
    let mut differs: Option<i64> = None;
    for (expected, (stored_seq, text)) in (1..).zip(rows) {
        let broken = |why: String| Broken { seq: stored_seq, why };
        let record: Record = serde_json::from_str(&text).map_err(|e| broken(format!("unreadable record: {e}")))?;
        if stored_seq != expected || record.seq != stored_seq {
            return Err(Broken {
                seq: expected.min(stored_seq),
                why: format!("expected record {expected} here, found {} (stored as {stored_seq})", record.seq),
            });
        }
        let entry = &record.entry;
        record.chained(&prev).map_err(broken)?;
        let signed_by_peer = match entry.event.as_ref() {
            "request" => true,
            "reply" | "response" => entry.reply_seq.is_some(),
            _ => false,
        };
        if entry.direction == "out" && signed_by_peer {
            let content = content(entry.body_sha256.as_deref(), entry.file.as_ref().map(|f| f.sha256.as_str()));
            sent.insert(message(&entry.peer, &entry.id, entry.reply_seq), (content, entry.binding(false)));
        }
        if entry.event == "receipt" {
            let receipt = entry.receipt.as_ref().ok_or_else(|| broken("a receipt record without a receipt".into()))?;
            let theirs = certs.get(&entry.peer).filter(|c| !c.is_empty()).ok_or_else(|| {
                broken(format!("no pinned certificate for peer `{}` to check its receipt", entry.peer))
            })?;
            // Any certificate the peer has held: a rollover replaces the key, not its past receipts.
            let mut checked = theirs.iter().map(|cert| receipt.verify(cert));
            if !checked.any(|r| r.is_ok()) {
                let why = theirs.iter().map(|cert| receipt.verify(cert)).find_map(Result::err).unwrap_or_default();
                return Err(broken(format!("receipt: {why}")));
            }
            intact.receipts += receipt.leaves.len() as u64;
            for signed in &receipt.leaves {
                let key = message(&entry.peer, &signed.id, signed.reply_seq);
                let theirs = Signature::of(signed);
                match sent.get(&key) {
                    Some(ours) if !theirs.matches(ours) => differs = differs.or(Some(record.seq)),
                    Some(_) => {}
                    None => unmatched.push((record.seq, key, theirs)),
                }
            }
        }
        if entry.event == "timestamp" {
            let stamp =
                entry.timestamp.as_ref().ok_or_else(|| broken("a timestamp record without a time-stamp".into()))?;
            check_stamp(stamp, record.seq, &hashes, tsa_cert).map_err(|why| broken(format!("time-stamp: {why}")))?;
            match tsa_cert {
                Some(_) => intact.timestamps += 1,
                None => intact.unchecked_timestamps += 1,
            }
            intact.stamped = intact.stamped.max(Some(stamp.seq));
        }
        if let (Some(checkpoint), "checkpoint", "out") = (&entry.checkpoint, &*entry.event, &*entry.direction) {
            // A head a peer keeps must be this chain's: changed records before it show here too.
            let seq = i64::try_from(checkpoint.head.seq).unwrap_or(i64::MAX);
            let kept = usize::try_from(record.seq.saturating_sub(seq))
                .ok()
                .filter(|back| *back >= 1)
                .and_then(|back| hashes.len().checked_sub(back))
                .and_then(|at| hashes.get(at));
            if kept.is_some_and(|hash| digest(&checkpoint.head.hash) != Some(*hash)) || seq >= record.seq {
                return Err(broken(format!(
                    "checkpoint: {} keeps a head of seq {seq} that is not this log's record {seq}: the log was changed \
                     at or before seq {seq}",
                    entry.peer
                )));
            }
            if intact.anchored.as_ref().is_none_or(|(_, newest)| seq > *newest) {
                intact.anchored = Some((entry.peer.clone(), seq));
            }
        }
        if hashes.len() == STAMP_WINDOW {
            hashes.pop_front();
        }
        hashes.push_back(digest(&record.hash).unwrap_or_default());
        prev = record.hash;
        intact.records += 1;
    }
    for (seq, key, theirs) in unmatched {
        if sent.get(&key).is_some_and(|ours| !theirs.matches(ours)) {
            differs = Some(differs.map_or(seq, |first| first.min(seq)));
        }
    }
    match differs {
        Some(seq) => Err(Broken { seq, why: "the peer signed other content than this node recorded sending".into() }),
        None => Ok(intact),
    }
}

/// A hex SHA-256 as bytes.
fn digest(hex_text: &str) -> Option<[u8; 32]> {
    let mut bytes = [0; 32];
    hex::decode_to_slice(hex_text, &mut bytes).ok().map(|()| bytes)
}

/// Checks the time-stamp of record `seq`: it stamps the hash of an earlier record (`hashes` holds
/// the latest ones, the last being record `seq - 1`'s), and its token verifies against
/// `tsa_cert` and covers that hash.
fn check_stamp(
    stamp: &TimeStamp,
    seq: i64,
    hashes: &std::collections::VecDeque<[u8; 32]>,
    tsa_cert: Option<&[u8]>,
) -> Result<(), String> {
    if stamp.seq < 1 {
        return Err(format!("it stamps seq {}, which is no record", stamp.seq));
    }
    let back = seq - stamp.seq;
    if back < 1 {
        return Err(format!("it stamps seq {}, which is not before it", stamp.seq));
    }
    let stamped = usize::try_from(back)
        .ok()
        .and_then(|back| hashes.len().checked_sub(back))
        .and_then(|at| hashes.get(at))
        .ok_or_else(|| format!("it stamps seq {}, too far before it to be checked", stamp.seq))?;
    let hash = digest(&stamp.hash).ok_or_else(|| format!("its stamped hash `{}` is not a SHA-256", stamp.hash))?;
    if hash != *stamped {
        return Err(format!(
            "the hash it stamps is not the hash of record {}: the record or the time-stamp was changed",
            stamp.seq
        ));
    }
    let Some(cert) = tsa_cert else { return Ok(()) };
    let token = base64::engine::general_purpose::STANDARD
        .decode(&stamp.token)
        .map_err(|_| "its token is not base64: it was altered".to_owned())?;
    let verified = crate::timestamp::verify(&token, &hash, cert).map_err(|e| e.to_string())?;
    if verified.time != stamp.tsa_time {
        return Err(format!("its `tsa_time` {} is not the token's time {}", stamp.tsa_time, verified.time));
    }
    Ok(())
}

/// What [`verify`] knows a message by: its peer, request id and reply seq, as one SHA-256 so that
/// checking a long log takes little memory.
fn message(peer: &str, id: &str, reply_seq: Option<u32>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [peer, id] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(reply_seq.unwrap_or(0).to_le_bytes());
    h.finalize().into()
}

/// What this node recorded sending: the [`content`] of the message, and its record's
/// [`Entry::binding`] (`None`: the record cannot be read as a request or reply).
type Sent = ([u8; 32], Option<[u8; 32]>);

/// What a peer signed of one message: its [`content`], or on a countersignature the digest of its
/// whole record.
enum Signature {
    Content([u8; 32]),
    Record(Option<[u8; 32]>),
}

impl Signature {
    fn of(signed: &Signed) -> Signature {
        match &signed.record_sha256 {
            Some(record) => Signature::Record(digest(record)),
            None => Signature::Content(content(Some(&signed.body_sha256), signed.file_sha256.as_deref())),
        }
    }

    /// Whether the peer signed what this node recorded sending.
    fn matches(&self, (content, binding): &Sent) -> bool {
        match self {
            Signature::Content(theirs) => theirs == content,
            Signature::Record(theirs) => theirs.is_some() && theirs == binding,
        }
    }
}

/// A message's payload and file hashes as [`verify`] compares them, as one SHA-256.
fn content(body_sha256: Option<&str>, file_sha256: Option<&str>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [body_sha256, file_sha256] {
        match part {
            Some(hex) => {
                h.update([1]);
                h.update((hex.len() as u64).to_le_bytes());
                h.update(hex);
            }
            None => h.update([0]),
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form_value() -> impl proptest::strategy::Strategy<Value = FormValue> {
        use proptest::prelude::*;
        prop_oneof![
            ".{0,8}".prop_map(FormValue::Text),
            any::<i64>().prop_map(FormValue::Int),
            any::<f64>().prop_map(FormValue::Float),
            any::<bool>().prop_map(FormValue::Bool),
        ]
    }

    proptest::proptest! {
        /// The borrowed summary of a request or an answer renders byte for byte as its owned
        /// entry, with masked, repeated, escaped and non-finite fields: the log must read back as
        /// it was hashed.
        #[test]
        fn a_summary_renders_as_its_entry(
            form in proptest::collection::vec(("[ab\"\\\\é]{0,2}", form_value()), 0..6),
            mask in proptest::collection::vec("[ab]{0,2}", 0..3),
            file in proptest::option::of(("[a-z\"]{1,4}", 0u64..u64::MAX)),
            request in proptest::bool::ANY,
            answer in proptest::option::of(proptest::bool::ANY),
            member in proptest::option::of("[a-f0-9:\"]{1,6}"),
        ) {
            let file = file.map(|(name, size)| FileFacts { name: Some(name), size: Some(size), sha256: "ab".into() });
            let summary = Summary {
                event: if request { "request" } else { "response" },
                direction: "in",
                peer: "org-b",
                member: member.as_deref(),
                id: "r\u{1}1",
                method: request.then_some("POST"),
                path: request.then_some("/a?b=\"c\""),
                form: request.then_some(MaskedForm { form: &form, mask: &mask }),
                body_sha256: Some("00"),
                file,
                answer: answer.filter(|_| request).map(|refused| (if refused { "refused" } else { "response" }, "0\"1")),
            };
            let (fast, owned) = (summary.render(), summary.to_entry().render());
            proptest::prop_assert_eq!(&fast.0, &owned.0);
            let (hash, text) = sealed(&fast, 1, "2026-11-30T00:00:00.000Z", GENESIS);
            let back: Record = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(back.chain_hash(), hash);
        }
    }

    /// `rendered` sealed on its own: its hash and text.
    fn sealed(rendered: &Rendered, seq: i64, at: &str, prev: &str) -> (String, String) {
        let mut text = String::new();
        let hash = rendered.seal(&mut text, seq, at, prev);
        (hash, text)
    }

    #[test]
    fn a_sealed_record_reads_back_and_verifies() {
        let mut entry = Entry::new("request", "out", "org-b", "r1");
        entry.form = Some(serde_json::json!({"a": 1.5, "b": "x"}));
        let (hash, text) = sealed(&entry.render(), 1, "2026-11-22T00:00:00.000Z", GENESIS);
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back.entry, entry);
        assert_eq!((back.seq, back.prev.as_str()), (1, GENESIS));
        assert_eq!(back.chain_hash(), hash, "the stored text hashes to its hash");
        assert_eq!(serde_json::to_string(&back).unwrap(), text, "one canonical form");
        assert_eq!(verify([(1, text)], &HashMap::new(), None), Ok(Intact { records: 1, ..Intact::default() }));
    }

    /// A synchronous exchange's record carries its answer; the receipt's binding ignores it, and
    /// logs of the earlier shape (the answer a record of its own) verify as they did.
    #[test]
    fn a_request_record_with_its_answer_binds_as_the_request_and_old_logs_verify() {
        let at = "2026-12-06T00:00:00.000Z";
        let mut request = Entry::new("request", "out", "org-b", "r1");
        (request.method, request.path) = (Some("GET".into()), Some("/a".into()));
        request.body_sha256 = Some(sha256_hex(b"request"));
        let mut answered = request.clone();
        answered.answer = Some(Answer { event: "response".into(), body_sha256: sha256_hex(b"body") });
        assert!(request.binding(false).is_some());
        assert_eq!(answered.binding(false), request.binding(false), "the answer is not part of what was sent");
        let (_, one) = sealed(&answered.render(), 1, at, GENESIS);
        assert!(one.contains(r#""answer":{"event":"response","body_sha256":"#), "{one}");
        assert_eq!(verify([(1, one)], &HashMap::new(), None).map(|i| i.records), Ok(1));

        let (hash, first) = sealed(&request.render(), 1, at, GENESIS);
        let mut response = Entry::new("response", "in", "org-b", "r1");
        response.body_sha256 = Some(sha256_hex(b"body"));
        let (_, second) = sealed(&response.render(), 2, at, &hash);
        assert!(!first.contains("answer"), "no `answer` where there is none: {first}");
        assert_eq!(verify([(1, first), (2, second)], &HashMap::new(), None).map(|i| i.records), Ok(2));
    }

    /// A log of one request and a time-stamp record stamping `seq` with `hash`.
    fn stamped(seq: i64, hash: Option<&str>) -> Vec<(i64, String)> {
        let at = "2026-12-06T00:00:00.000Z";
        let (first_hash, first) = sealed(&Entry::new("request", "out", "org-b", "r1").render(), 1, at, GENESIS);
        let mut entry = Entry::new("timestamp", "out", "", "");
        let hash = hash.unwrap_or(&first_hash).to_owned();
        entry.timestamp = Some(TimeStamp { seq, hash, tsa_time: at.into(), token: "AA==".into() });
        let (_, second) = sealed(&entry.render(), 2, at, &first_hash);
        vec![(1, first), (2, second)]
    }

    /// Without a TSA certificate the stamped hash is still checked against the chain, and the
    /// token is counted as not checked.
    #[test]
    fn a_time_stamp_must_stamp_an_earlier_record_of_the_chain() {
        let unchecked = Intact { records: 2, unchecked_timestamps: 1, stamped: Some(1), ..Intact::default() };
        assert_eq!(verify(stamped(1, None), &HashMap::new(), None), Ok(unchecked));
        for (seq, hash, why) in [
            (1, Some(GENESIS), "not the hash of record 1"),
            (2, None, "not before it"),
            (0, None, "no record"),
            (-5, None, "no record"),
        ] {
            let broken = verify(stamped(seq, hash), &HashMap::new(), None).unwrap_err();
            assert_eq!(broken.seq, 2);
            assert!(broken.why.starts_with("time-stamp: ") && broken.why.contains(why), "{}", broken.why);
        }
        let broken = verify(stamped(1, None), &HashMap::new(), Some(b"not a certificate")).unwrap_err();
        assert!(broken.why.starts_with("time-stamp: "), "{}", broken.why);
    }

    /// A log of one sent request and the peer's receipt for it, the receipt signed over
    /// `signed_payload`.
    fn sent_and_receipted(signer: &crate::receipt::Signer, signed_payload: [u8; 32]) -> Vec<(i64, String)> {
        let mut sent = Entry::new("request", "out", "org-b", "r1");
        sent.body_sha256 = Some(hex::encode([1; 32]));
        let leaves =
            vec![Leaf { id: "r1".into(), seq: 0, payload_sha256: signed_payload, file_sha256: None, at_ms: 7 }];
        let signature = signer.sign(&leaves);
        let mut receipt = Entry::new("receipt", "in", "org-b", "");
        receipt.receipt = Some(crate::wire::Receipt { leaves, signature }.into());
        let at = "2026-11-30T00:00:00.000Z";
        let (hash, first) = sealed(&sent.render(), 1, at, GENESIS);
        let (_, second) = sealed(&receipt.render(), 2, at, &hash);
        vec![(1, first), (2, second)]
    }

    /// A countersignature's head and a checkpoint verify as signed, and not once their head,
    /// time or signature is altered.
    #[test]
    fn a_signed_head_verifies_only_as_signed() {
        let identity = crate::identity::Identity::generate("org-b").unwrap();
        let signer = crate::receipt::Signer::new(&identity).unwrap();
        let head = crate::wire::Head { seq: 41, hash: [6; 32] };
        let leaf = crate::receipt::Binding { id: "r1", payload_sha256: [1; 32], ..Default::default() }.leaf(9);
        let signature = signer.countersign(std::slice::from_ref(&leaf), &head);
        let receipt = Receipt::from(crate::wire::Countersign { leaves: vec![leaf], head, signature });
        receipt.verify(&identity.cert).unwrap();
        let checkpoint =
            Checkpoint::kept(crate::wire::Checkpoint { head, at_ms: 7, signature: signer.checkpoint(&head, 7) });
        checkpoint.verify(&identity.cert).unwrap();
        let mut moved = receipt.clone();
        moved.head.as_mut().unwrap().seq = 40;
        let mut unlinked = receipt.clone();
        unlinked.leaves[0].record_sha256 = None;
        for altered in [moved, unlinked] {
            assert!(altered.verify(&identity.cert).is_err(), "{altered:?}");
        }
        let mut earlier = checkpoint.clone();
        earlier.at_ms = 6;
        let mut rewritten = checkpoint.clone();
        rewritten.head.hash = hex::encode([7; 32]);
        let mut forged = checkpoint;
        forged.signature = receipt.signature;
        for altered in [earlier, rewritten, forged] {
            assert!(altered.verify(&identity.cert).is_err(), "{altered:?}");
        }
    }

    /// A log written by the release before countersignatures (`ferry/1` receipts; a request's
    /// response as a record of its own) still verifies, receipts and all, and a record changed in
    /// it still breaks it: `tests/fixtures/evidence-v1`, both nodes' `ferry audit export` after
    /// `ferry demo` of commit a961ab0, with their certificates.
    #[test]
    fn a_log_of_the_first_release_still_verifies() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/evidence-v1");
        for (node, peer, records) in [("org-a", "org-b", 19), ("org-b", "org-a", 17)] {
            let cert = crate::identity::load_cert(&fixtures.join(format!("{peer}.pem"))).unwrap();
            let certs = HashMap::from([(peer.to_owned(), vec![cert])]);
            let log = std::fs::read_to_string(fixtures.join(format!("{node}.jsonl"))).unwrap();
            let rows: Vec<(i64, String)> = (1..).zip(log.lines().map(str::to_owned)).collect();
            let intact = verify(rows.clone(), &certs, None).unwrap();
            assert_eq!(intact.records, records, "{node}");
            assert!(intact.receipts > 0, "{node}: {intact:?}");
            let mut changed = rows;
            changed[0].1 = changed[0].1.replacen("\"path\":\"/", "\"path\":\"/x", 1);
            assert_eq!(verify(changed, &certs, None).unwrap_err().seq, 1, "{node}");
        }
    }

    /// A log of one sent request (`sent`) and the peer's countersignature for `signed`, as the
    /// peer read it.
    fn countersigned(
        signer: &crate::receipt::Signer,
        sent: &Entry,
        signed: &crate::wire::Request,
    ) -> Vec<(i64, String)> {
        let payload = digest(sent.body_sha256.as_deref().unwrap()).unwrap();
        let leaves = vec![crate::receipt::Binding::of_request(signed, payload).leaf(7)];
        let head = crate::wire::Head { seq: 3, hash: [4; 32] };
        let signature = signer.countersign(&leaves, &head);
        let mut receipt = Entry::new("receipt", "in", "org-b", "");
        receipt.receipt = Some(crate::wire::Countersign { leaves, head, signature }.into());
        let at = "2026-12-06T00:00:00.000Z";
        let (hash, first) = sealed(&sent.render(), 1, at, GENESIS);
        let (_, second) = sealed(&receipt.render(), 2, at, &hash);
        vec![(1, first), (2, second)]
    }

    /// A countersignature binds the whole record: a changed method, path, form field, file name
    /// or size in the record of what was sent breaks it, though the payload hash is the same.
    #[test]
    fn a_countersignature_binds_the_whole_record_of_what_was_sent() {
        let identity = crate::identity::Identity::generate("org-b").unwrap();
        let signer = crate::receipt::Signer::new(&identity).unwrap();
        let certs = HashMap::from([("org-b".to_owned(), vec![identity.cert.clone()])]);
        let request = crate::wire::Request {
            version: crate::wire::PROTOCOL_VERSION,
            id: "r1".into(),
            service: "1".into(),
            method: "POST".into(),
            path: "/pay".into(),
            form: vec![
                ("amount".into(), FormValue::Number("12.50".into())),
                ("to".into(), FormValue::Text("sha256:x".into())),
                ("to".into(), FormValue::Text("bob".into())),
                ("n".into(), FormValue::Int(-3)),
                ("ok".into(), FormValue::Bool(true)),
            ],
            encoding: crate::wire::Encoding::Form,
            headers: vec![],
            conversation: None,
            timeout_ms: 30_000,
            file: Some(crate::wire::FileRef { field: "doc".into(), name: "a.pdf".into(), size: 9, sha256: [5; 32] }),
            idempotency_key: None,
        };
        let payload = crate::wire::payload_sha256(&request);
        let rendered = Summary {
            event: "request",
            direction: "out",
            peer: "org-b",
            member: None,
            id: "r1",
            method: Some("POST"),
            path: Some("/pay"),
            form: Some(MaskedForm { form: &request.form, mask: &[] }),
            body_sha256: Some(&hex::encode(payload)),
            file: Some(FileFacts { name: Some("a.pdf".into()), size: Some(9), sha256: hex::encode([5; 32]) }),
            // A synchronous exchange's one record: the receipt still matches its request.
            answer: Some(("response", &hex::encode([7; 32]))),
        }
        .render();
        let (_, text) = sealed(&rendered, 1, "2026-12-06T00:00:00.000Z", GENESIS);
        let sent = serde_json::from_str::<Record>(&text).unwrap().entry;
        let intact = verify(countersigned(&signer, &sent, &request), &certs, None).unwrap();
        assert_eq!(intact.receipts, 1);
        type Change = (&'static str, fn(&mut Entry));
        let changes: [Change; 6] = [
            ("method", |e| e.method = Some("PUT".into())),
            ("path", |e| e.path = Some("/transfer".into())),
            ("form value", |e| e.form.as_mut().unwrap()["amount"] = serde_json::json!(1000000)),
            ("form field added", |e| e.form.as_mut().unwrap()["admin"] = true.into()),
            ("file size", |e| e.file.as_mut().unwrap().size = Some(10)),
            ("file name", |e| e.file.as_mut().unwrap().name = Some("b.pdf".into())),
        ];
        for (what, change) in changes {
            let mut changed = sent.clone();
            change(&mut changed);
            let broken = verify(countersigned(&signer, &changed, &request), &certs, None).unwrap_err();
            assert_eq!(broken.seq, 2, "{what}");
            assert!(broken.why.contains("signed other content"), "{what}: {}", broken.why);
        }
    }

    /// A masked field (`sha256:<hex>` of its text) binds as the field it hides, when read as
    /// masked; read as sent, it is a text of its own.
    #[test]
    fn a_masked_form_binds_as_the_form_it_hides() {
        let mut sent = Entry::new("request", "in", "org-a", "r1");
        sent.body_sha256 = Some(hex::encode([1; 32]));
        sent.form = Some(serde_json::json!({"to": "bob", "amount": 12, "note": "sha256:not hex"}));
        let mut masked = sent.clone();
        masked.form.as_mut().unwrap()["to"] = format!("sha256:{}", sha256_hex(b"bob")).into();
        masked.form.as_mut().unwrap()["amount"] = format!("sha256:{}", sha256_hex(b"12")).into();
        assert_eq!(masked.binding(true), sent.binding(false));
        assert_eq!(sent.binding(true), sent.binding(false), "a value that is no hash is read as sent");
        assert_ne!(masked.binding(false), sent.binding(false));
        masked.form.as_mut().unwrap()["to"] = format!("sha256:{}", sha256_hex(b"eve")).into();
        assert_ne!(masked.binding(true), sent.binding(false));
    }

    #[test]
    fn a_receipt_verifies_against_the_pinned_certificate_and_what_was_sent() {
        let identity = crate::identity::Identity::generate("org-b").unwrap();
        let signer = crate::receipt::Signer::new(&identity).unwrap();
        let certs = HashMap::from([("org-b".to_owned(), vec![identity.cert.clone()])]);
        assert_eq!(
            verify(sent_and_receipted(&signer, [1; 32]), &certs, None),
            Ok(Intact { records: 2, receipts: 1, ..Intact::default() })
        );
        let broken = verify(sent_and_receipted(&signer, [2; 32]), &certs, None).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.why.contains("signed other content"), "{}", broken.why);
        let other = crate::identity::Identity::generate("org-b").unwrap();
        let certs = HashMap::from([("org-b".to_owned(), vec![other.cert])]);
        assert!(verify(sent_and_receipted(&signer, [1; 32]), &certs, None).unwrap_err().why.contains("receipt"));
    }
}
