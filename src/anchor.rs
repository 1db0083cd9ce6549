//! Cross-checks this node's evidence log against a peer's export (`ferry audit verify
//! --peer-export`, API.md §5).
//!
//! A peer's log holds what this node's log cannot vouch for alone: heads of this node's chain it
//! signed (`checkpoint` records, and the head on each countersignature), the messages it recorded
//! receiving from this node, and what this node signed it received. Each must be in this log as
//! it was: a head beyond the last record is a cut tail, a head with another hash a rewritten
//! chain, a message missing a deleted record, a message that differs a changed one. Records of
//! this log with no counterpart in the peer's (after its newest head of ours) are not covered.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use rustls::pki_types::CertificateDer;

use crate::evidence::{field_sha256, Broken, Entry, Record, Signed, GENESIS};

/// What the cross-check covered, when it found nothing wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Covered {
    /// The name the peer's log gives this node.
    pub name: String,
    /// Records of this log the peer holds a counterpart of (a message, or a head it signed).
    pub records: u64,
    /// The newest head of this log the peer holds: its seq, and when it was signed (ms).
    pub newest_head: Option<(i64, i64)>,
}

/// Reads a peer's `ferry audit export` (JSON lines) and checks that it is one whole chain; why
/// not, naming the line or the peer's seq.
pub fn read_export(export: impl BufRead) -> Result<Vec<Record>, String> {
    let mut records: Vec<Record> = Vec::new();
    let mut prev = GENESIS.to_owned();
    for (line, text) in (1..).zip(export.lines()) {
        let text = text.map_err(|e| format!("cannot read line {line} of the export: {e}"))?;
        if text.trim().is_empty() {
            continue;
        }
        let record: Record =
            serde_json::from_str(&text).map_err(|e| format!("line {line} of the export is not a record: {e}"))?;
        let expected = records.len() as i64 + 1;
        if record.seq != expected {
            return Err(format!(
                "line {line} of the export holds seq {}, expected {expected}: the peer must export its whole log \
                 (`ferry audit export` without --since)",
                record.seq
            ));
        }
        record.chained(&prev).map_err(|why| format!("the export is broken at the peer's seq {}: {why}", record.seq))?;
        prev.clone_from(&record.hash);
        records.push(record);
    }
    Ok(records)
}

/// The name the peer's log gives the node whose certificates are `certs`: the peer of its first
/// receipt or checkpoint that one of their keys signed, else `fallback` (this node's own name).
pub fn name_in(theirs: &[Record], certs: &[CertificateDer<'static>], fallback: &str) -> String {
    theirs
        .iter()
        .find(|r| r.entry.direction == "in" && signed(&r.entry, certs).is_some_and(|s| s.is_ok()))
        .map_or_else(|| fallback.to_owned(), |r| r.entry.peer.clone())
}

/// Whether the key of one of `certs` signed the receipt or checkpoint `entry` holds; `None`: it
/// holds neither.
fn signed(entry: &Entry, certs: &[CertificateDer<'static>]) -> Option<Result<(), String>> {
    let verify = |cert| match (&entry.receipt, &entry.checkpoint) {
        (Some(receipt), _) if entry.event == "receipt" => Some(receipt.verify(cert)),
        (_, Some(checkpoint)) if entry.event == "checkpoint" => Some(checkpoint.verify(cert)),
        _ => None,
    };
    let mut first = None;
    for cert in certs {
        match verify(cert)? {
            Ok(()) => return Some(Ok(())),
            Err(why) => _ = first.get_or_insert(why),
        }
    }
    Some(Err(first.unwrap_or_else(|| "no certificate to check it with".into())))
}

/// What kind of message a record is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    Request,
    Answer,
    File,
}

/// A message as both logs know it: which way it went from this node (`out`), its kind, request
/// id and reply seq.
type Key = (bool, Class, String, Option<u32>);

fn class(event: &str) -> Option<Class> {
    match event {
        "request" => Some(Class::Request),
        "reply" | "response" => Some(Class::Answer),
        "file" => Some(Class::File),
        _ => None,
    }
}

/// A head of this log the peer holds.
struct Head {
    hash: String,
    /// The peer's record holding it.
    their_seq: i64,
    /// When this node signed it (ms).
    at_ms: i64,
    /// `checkpoint` or `receipt`.
    what: &'static str,
}

/// What the peer's record says of one message of this log.
enum Says<'a> {
    /// The peer received it from this node: this log must hold it as sent.
    Received(&'a Entry),
    /// This node signed that it received it: this log must hold it as received.
    Signed(&'a Signed),
    /// The peer sent it to this node: when this log holds it alike, it places the peer's record.
    Sent(&'a Entry),
}

/// One statement of the peer's log about a message of this one.
struct Want<'a> {
    their_seq: i64,
    says: Says<'a>,
    /// This log's seq of the record that bears it out.
    found: Option<i64>,
}

/// Something wrong with this log, and where: the first bad seq, and the kind (lower first at one
/// seq): 0 a changed record, 1 a missing one, 2 a head that does not match (`after`: the last
/// head the peer holds that matches; the first bad seq is after it and at or before `seq`).
struct Finding {
    seq: i64,
    rank: u8,
    why: String,
    after: i64,
}

/// Cross-checks this log (`ours`: (stored seq, record JSON) in order) against the peer's
/// `theirs` ([`read_export`]), in which this node is `name` ([`name_in`]) and whose records of
/// this node's receipts and checkpoints must verify against one of `certs` (its current and
/// retired certificates, [`crate::rollover::own_certs`]); `peer` is the name this node
/// gives the peer. When this node is one of several members with a key each, the peer's records
/// of the other members (their `member` another certificate than one of `certs`) are theirs, not
/// this node's, and are passed over. `Err`: the peer's export does not hold (its seq named); `Ok(Err)`: this log's
/// first bad seq and why.
pub fn cross_check(
    ours: impl IntoIterator<Item = (i64, String)>,
    theirs: &[Record],
    certs: &[CertificateDer<'static>],
    name: &str,
    peer: &str,
) -> Result<Result<Covered, Broken>, String> {
    let mut heads: HashMap<i64, Vec<Head>> = HashMap::new();
    let mut wants: HashMap<Key, Vec<Want>> = HashMap::new();
    let ours_fingerprints: Vec<String> =
        certs.iter().map(|c| crate::identity::Fingerprint::of(c).to_string()).collect();
    let of_this_node =
        |r: &&Record| r.entry.peer == name && r.entry.member.as_ref().is_none_or(|m| ours_fingerprints.contains(m));
    for record in theirs.iter().filter(of_this_node) {
        let entry = &record.entry;
        if entry.direction == "in" {
            if let Some(verified) = signed(entry, certs) {
                verified.map_err(|why| {
                    format!(
                        "the peer's seq {} holds a {} under this node's name that its key did not sign: {why}",
                        record.seq, entry.event
                    )
                })?;
            }
        }
        let want = |says| Want { their_seq: record.seq, says, found: None };
        match (&entry.receipt, &entry.checkpoint) {
            (Some(receipt), _) if entry.direction == "in" => {
                if let Some(head) = &receipt.head {
                    let at_ms = receipt.leaves.iter().map(|l| l.at_ms).max().unwrap_or(0);
                    let head = Head { hash: head.hash.clone(), their_seq: record.seq, at_ms, what: "receipt" };
                    heads.entry(record_seq(receipt.head.as_ref().map(|h| h.seq))).or_default().push(head);
                }
                for leaf in &receipt.leaves {
                    let class = if leaf.reply_seq.is_some() { Class::Answer } else { Class::Request };
                    let key = (false, class, leaf.id.clone(), leaf.reply_seq);
                    wants.entry(key).or_default().push(want(Says::Signed(leaf)));
                }
            }
            (_, Some(checkpoint)) if entry.direction == "in" => {
                let at_ms = checkpoint.at_ms;
                let head =
                    Head { hash: checkpoint.head.hash.clone(), their_seq: record.seq, at_ms, what: "checkpoint" };
                heads.entry(record_seq(Some(checkpoint.head.seq))).or_default().push(head);
            }
            _ => {
                let Some(class) = class(&entry.event) else { continue };
                let received = entry.direction == "in";
                let key = (received, class, entry.id.clone(), entry.reply_seq);
                let says = if received { Says::Received(entry) } else { Says::Sent(entry) };
                wants.entry(key).or_default().push(want(says));
            }
        }
    }

    let mut findings: Vec<Finding> = Vec::new();
    // This log's seqs the peer's records place: (their seq, our seq), and the heads that match.
    let mut placed: Vec<(i64, i64)> = Vec::new();
    let mut matching_heads: Vec<i64> = Vec::new();
    // Messages this log holds a receipt of from the peer: (id, reply seq).
    let mut receipted: HashSet<(String, Option<u32>)> = HashSet::new();
    // Requests this log holds as received from the peer: the record of a synchronous exchange
    // may carry its answer.
    let mut requested: HashSet<String> = HashSet::new();
    let mut last = 0;
    let mut held = Covered { name: name.to_owned(), ..Covered::default() };
    for (seq, text) in ours {
        last = seq;
        // An unreadable record is `audit verify`'s to name.
        let Ok(record) = serde_json::from_str::<Record>(&text) else { continue };
        let entry = &record.entry;
        let mut holds = false;
        for head in heads.get(&seq).into_iter().flatten() {
            if head.hash == record.hash {
                matching_heads.push(seq);
                held.newest_head = held.newest_head.max(Some((seq, head.at_ms)));
                holds = true;
            } else {
                let why = format!(
                    "{peer} holds a {} of this log's seq {seq} signed at {} (its seq {}) with another hash: the chain \
                     was rewritten at or before seq {seq}",
                    head.what,
                    crate::store::rfc3339(head.at_ms),
                    head.their_seq
                );
                findings.push(Finding { seq, rank: 2, why, after: 0 });
            }
        }
        if entry.peer != peer {
            continue;
        }
        if let (Some(receipt), "receipt") = (&entry.receipt, &*entry.event) {
            receipted.extend(receipt.leaves.iter().map(|l| (l.id.clone(), l.reply_seq)));
        }
        if entry.event == "request" && entry.direction == "in" {
            requested.insert(entry.id.clone());
        }
        let Some(class) = class(&entry.event) else { continue };
        let key = (entry.direction == "out", class, entry.id.clone(), entry.reply_seq);
        for want in wants.get_mut(&key).into_iter().flatten().filter(|w| w.found.is_none()) {
            let differs = match want.says {
                Says::Received(theirs) => differs(theirs, entry),
                Says::Signed(leaf) => bound(leaf, entry),
                // What the peer sent, recorded alike here, only places its record.
                Says::Sent(theirs) if differs(theirs, entry).is_some() => continue,
                Says::Sent(_) => None,
            };
            match differs {
                None => {
                    want.found = Some(seq);
                    placed.push((want.their_seq, seq));
                    holds |= !matches!(want.says, Says::Sent(_));
                }
                Some(field) => {
                    let what = match want.says {
                        Says::Signed(_) => "this node signed receiving",
                        _ => "it received",
                    };
                    let why = format!(
                        "its {} {} differs in {field} from what {peer} holds {what} (its seq {}): the record was changed",
                        entry.event, entry.id, want.their_seq
                    );
                    findings.push(Finding { seq, rank: 0, why, after: 0 });
                    want.found = Some(seq);
                }
            }
        }
        held.records += u64::from(holds);
    }

    if let Some((seq, heads)) = heads.iter().filter(|(seq, _)| **seq > last).max_by_key(|(seq, _)| **seq) {
        let head = &heads[0];
        let why = format!(
            "the log ends at seq {last} but {peer} holds a {} of seq {seq} signed at {} (its seq {}): records after \
             {last} were removed",
            head.what,
            crate::store::rfc3339(head.at_ms),
            head.their_seq
        );
        findings.push(Finding { seq: last + 1, rank: 1, why, after: 0 });
    }
    placed.sort_unstable();
    matching_heads.sort_unstable();
    for finding in findings.iter_mut().filter(|f| f.rank == 2) {
        finding.after = matching_heads.iter().rev().find(|s| **s < finding.seq).copied().unwrap_or(0);
        finding.why.push_str(&format!(" (after seq {}, the last head {peer} holds that matches)", finding.after));
    }
    let mut missing = Vec::new();
    for ((_, class, id, reply_seq), wants) in &wants {
        for want in wants.iter().filter(|w| w.found.is_none()) {
            let what = match (&want.says, class) {
                (Says::Sent(_), _) => continue,
                (Says::Received(_), Class::File) => "the file this node sent it",
                (Says::Received(_), Class::Request) => "the request this node sent it",
                (Says::Received(_), Class::Answer) => "the answer this node sent it",
                (Says::Signed(_), _) => "what this node signed receiving from it",
            };
            // The deleted record was after the last record of this log that the peer's earlier
            // records place, and before the first that its later ones place.
            let after = placed.iter().rev().find(|(theirs, _)| *theirs < want.their_seq).map_or(0, |p| p.1);
            let before = placed.iter().find(|(theirs, _)| *theirs > want.their_seq).map_or(last + 1, |p| p.1);
            let seq = after + 1;
            let reply = reply_seq.map(|s| format!(" reply {s}")).unwrap_or_default();
            let why = format!(
                "{peer} holds {what}, {id}{reply} (its seq {}), and this log has no record of it: a record after seq \
                 {after} (at or before seq {before}) was deleted",
                want.their_seq
            );
            // A synchronous request whose caller gave up has the peer's receipt as its only
            // record, and a synchronous answer may be recorded with its request: that alone is no
            // deletion, but it places where a rewritten chain went wrong.
            let excused = matches!(want.says, Says::Received(_)) && receipted.contains(&(id.clone(), *reply_seq))
                || matches!((&want.says, class, reply_seq), (Says::Received(_), Class::Answer, None))
                    && requested.contains(id);
            missing.push((excused, Finding { seq, rank: 1, why, after: 0 }));
        }
    }
    missing.sort_by_key(|(_, f)| f.seq);
    for (excused, found) in missing {
        for rewritten in findings.iter_mut().filter(|f| f.rank == 2 && f.after < found.seq && found.seq <= f.seq) {
            rewritten.why = format!("{}; {}", found.why, rewritten.why);
            rewritten.seq = found.seq;
        }
        if !excused {
            findings.push(found);
        }
    }
    Ok(match findings.into_iter().min_by_key(|f| (f.seq, f.rank)) {
        Some(first) => Err(Broken { seq: first.seq, why: first.why }),
        None => Ok(held),
    })
}

/// A head's seq as this log's seq (heads beyond `i64` are beyond any log).
fn record_seq(seq: Option<u64>) -> i64 {
    seq.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX))
}

/// The first field in which this log's record of a message (`ours`) differs from the peer's
/// record of it (`theirs`); a form field the peer masked matches when its hash is of our value.
fn differs(theirs: &Entry, ours: &Entry) -> Option<&'static str> {
    if theirs.method != ours.method {
        return Some("its method");
    }
    if theirs.path != ours.path {
        return Some("its path");
    }
    if theirs.body_sha256 != ours.body_sha256 {
        return Some("its payload");
    }
    let file = |e: &Entry| e.file.as_ref().map(|f| (f.name.clone(), f.size, f.sha256.clone()));
    if file(theirs) != file(ours) {
        return Some("its file");
    }
    // A synchronous exchange's answer, where both records carry it (a checked service's node
    // records the answer apart).
    if let (Some(theirs), Some(ours)) = (&theirs.answer, &ours.answer) {
        if theirs != ours {
            return Some("its answer");
        }
    }
    match (&theirs.form, &ours.form) {
        (Some(serde_json::Value::Object(theirs)), Some(serde_json::Value::Object(ours))) => {
            let same = theirs.len() == ours.len()
                && theirs.iter().all(|(name, value)| ours.get(name).is_some_and(|v| v == value || masks(value, v)));
            (!same).then_some("its form")
        }
        (theirs, ours) => (theirs != ours).then_some("its form"),
    }
}

/// Whether `masked` is `sha256:<hex>` of `value`'s text.
fn masks(masked: &serde_json::Value, value: &serde_json::Value) -> bool {
    masked.as_str().and_then(|t| t.strip_prefix("sha256:")).is_some_and(|hex| hex == hex::encode(field_sha256(value)))
}

/// Whether this log's record of a message received (`ours`) is what this node signed receiving
/// (`leaf`); the field that differs otherwise.
fn bound(leaf: &Signed, ours: &Entry) -> Option<&'static str> {
    match &leaf.record_sha256 {
        Some(record) => {
            let record = Some(record.as_str());
            let read = |masked| ours.binding(masked).map(hex::encode);
            let same = [false, true].into_iter().any(|masked| read(masked).as_deref() == record);
            (!same).then_some("the record this node signed")
        }
        None if ours.body_sha256.as_deref() != Some(leaf.body_sha256.as_str()) => Some("its payload"),
        None if ours.file.as_ref().map(|f| f.sha256.as_str()) != leaf.file_sha256.as_deref() => Some("its file"),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `n` requests out, as exported.
    fn export(n: i64) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let mut text = String::new();
                let entry = Entry::new("request", "out", "org-a", &format!("r{seq}"));
                prev = entry.render().seal(&mut text, seq, "2026-12-06T00:00:00.000Z", &prev);
                text
            })
            .collect()
    }

    /// A crafted or partial export is refused with its line or seq named, never read in part.
    #[test]
    fn an_export_must_be_one_whole_chain() {
        let lines = export(3);
        assert_eq!(read_export(lines.join("\n").as_bytes()).unwrap().len(), 3);
        let refused = |text: String, why: &str| {
            let e = read_export(text.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        refused(format!("{}\nnot json\n", lines[0]), "line 2 of the export is not a record");
        refused(lines[1..].join("\n"), "holds seq 2, expected 1");
        refused(format!("{}\n{}", lines[0], lines[2]), "holds seq 3, expected 2");
        refused(lines.join("\n").replace("\"r2\"", "\"r9\""), "broken at the peer's seq 2");
    }

    /// A field the peer masks matches our value when it is the SHA-256 of its text.
    #[test]
    fn a_masked_field_matches_the_value_it_hides() {
        let mut ours = Entry::new("request", "out", "org-b", "r1");
        ours.form = Some(serde_json::json!({"to": "bob", "n": 12}));
        let mut theirs = ours.clone();
        theirs.form =
            Some(serde_json::json!({"to": format!("sha256:{}", crate::evidence::sha256_hex(b"bob")), "n": 12}));
        assert_eq!(differs(&theirs, &ours), None);
        theirs.form.as_mut().unwrap()["n"] = format!("sha256:{}", crate::evidence::sha256_hex(b"12")).into();
        assert_eq!(differs(&theirs, &ours), None);
        theirs.form.as_mut().unwrap()["to"] = format!("sha256:{}", crate::evidence::sha256_hex(b"eve")).into();
        assert_eq!(differs(&theirs, &ours), Some("its form"));
        ours.path = Some("/transfer".into());
        assert_eq!(differs(&theirs, &ours), Some("its path"));
    }

    /// A peer's records of another member of this node's organization (their `member` a
    /// certificate not this node's) are passed over; those of this node, or naming no member,
    /// are held against this log, whatever `member` claims.
    #[test]
    fn records_of_another_member_are_passed_over() {
        let ours = crate::identity::Identity::generate("org-b").unwrap();
        let certs = [ours.cert.clone()];
        let check = |member: Option<String>| {
            let mut entry = Entry::new("request", "in", "org-b", "r1");
            entry.member = member;
            let mut text = String::new();
            entry.render().seal(&mut text, 1, "2026-12-06T00:00:00.000Z", GENESIS);
            let theirs = read_export(text.as_bytes()).unwrap();
            cross_check(Vec::<(i64, String)>::new(), &theirs, &certs, "org-b", "org-a").unwrap()
        };
        let other = crate::identity::Identity::generate("org-b").unwrap().fingerprint().to_string();
        assert!(check(Some(other)).is_ok(), "another member's exchange is not this log's");
        for member in [None, Some(ours.fingerprint().to_string())] {
            let broken = check(member.clone()).unwrap_err();
            assert!(broken.why.contains("this log has no record of it"), "{member:?}: {}", broken.why);
        }
    }

    /// Where both records of a synchronous exchange carry its answer, a changed answer differs.
    #[test]
    fn a_changed_answer_differs() {
        let mut ours = Entry::new("request", "out", "org-b", "r1");
        let answer = |body: &[u8]| {
            Some(crate::evidence::Answer { event: "response".into(), body_sha256: crate::evidence::sha256_hex(body) })
        };
        ours.answer = answer(b"ok");
        let mut theirs = ours.clone();
        assert_eq!(differs(&theirs, &ours), None);
        theirs.answer = None;
        assert_eq!(differs(&theirs, &ours), None, "the peer recorded the answer apart");
        theirs.answer = answer(b"paid");
        assert_eq!(differs(&theirs, &ours), Some("its answer"));
    }
}
