//! `ferry audit export` and `ferry audit verify`: the evidence log, read straight from the store
//! (the node may be running or not).

use std::io::Write;
use std::path::Path;

use super::CliError;
use crate::anchor::Covered;
use crate::config::Config;
use crate::evidence::{Broken, Intact};

/// Writes the evidence records after `since` to stdout as JSON lines.
pub fn export(path: &Path, since: i64) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let log = crate::store::read_log(&config.store_location(), since).map_err(|e| CliError::failed(e.to_string()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for read in log {
        let (_, record) = read.map_err(|e| CliError::failed(e.to_string()))?;
        if let Err(e) = writeln!(out, "{record}") {
            return super::stdout_closed(e);
        }
    }
    out.flush().or_else(super::stdout_closed)
}

/// Every certificate each configured peer has held: the one pinned in the config, and those of
/// the rollovers the node pinned since (kept in its store, checked again here).
pub fn peer_certs(config: &Config) -> Result<crate::evidence::PeerCerts, CliError> {
    let peers = crate::peer::Peers::load(&config.peers)?;
    let kept = crate::store::rollovers_in(&config.store_location()).map_err(|e| CliError::failed(e.to_string()))?;
    peers.restore(&kept);
    Ok(peers.all().iter().map(|p| (p.name.clone(), p.every_cert())).collect())
}

/// Checks the chain, every receipt against the pinned peer certificates and every time-stamp
/// against `evidence.tsa_cert`, and with `peer_export` (`peer`'s `ferry audit export`) cross-checks
/// the log against it ([`crate::anchor`]); `Err` names the first bad record. With `json`, prints
/// the verdict as one JSON object instead of lines, the exit code the same.
pub fn verify(path: &Path, peer_export: Option<&Path>, peer: Option<&str>, json: bool) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let certs = peer_certs(&config)?;
    let tsa_cert = config.evidence.tsa.as_ref().map(|tsa| tsa.certificate()).transpose().map_err(CliError::usage)?;
    let cross = peer_export.map(|file| cross_check(&config, file, peer)).transpose()?;
    let location = config.store_location();
    let verdict = crate::store::verify_log(&location, &certs, tsa_cert.as_deref())
        .map_err(|e| CliError::failed(e.to_string()))?;
    // On a shared store, the other members' chains too.
    let others: Vec<(String, crate::store::Verdict)> = crate::store::chains_in(&location)
        .map_err(|e| CliError::failed(e.to_string()))?
        .into_iter()
        .filter(|member| member != location.member())
        .map(|member| {
            let verdict = crate::store::verify_log(&location.of_member(&member), &certs, tsa_cert.as_deref());
            verdict.map(|v| (member, v)).map_err(|e| CliError::failed(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let members_broken = others.iter().any(|(_, v)| v.is_err());
    let (covered, cross_broken) = match cross {
        Some((peer, Ok(covered))) => (Some((peer, covered)), None),
        Some((_, Err(broken))) => (None, Some(broken)),
        None => (None, None),
    };
    let members_json = || -> Vec<serde_json::Value> {
        others
            .iter()
            .map(|(member, verdict)| match verdict {
                Ok(i) => {
                    serde_json::json!({"member": member, "intact": true, "records": i.records, "receipts": i.receipts})
                }
                Err(b) => serde_json::json!({"member": member, "intact": false, "broken_at": b.seq, "why": b.why}),
            })
            .collect()
    };
    let broken = |b: Broken| {
        if json {
            out!(
                "{}",
                serde_json::json!({"intact": false, "broken_at": b.seq, "why": b.why, "members": members_json()})
            );
            return CliError::failed(String::new());
        }
        CliError::failed(format!("broken at seq {}: {}", b.seq, b.why))
    };
    let intact = match (verdict, cross_broken) {
        (Ok(intact), None) => intact,
        (Err(plain), Some(cross)) => return Err(broken(if cross.seq < plain.seq { cross } else { plain })),
        (Err(first), None) | (Ok(_), Some(first)) => return Err(broken(first)),
    };
    if json {
        let cross_checked = covered.as_ref().map(|(peer, c)| {
            serde_json::json!({"peer": peer, "calls_this_node": c.name, "records": c.records,
                "newest_head": c.newest_head.map(|(seq, at)| serde_json::json!({"seq": seq, "signed_at": crate::store::rfc3339(at)}))})
        });
        out!(
            "{}",
            serde_json::json!({
                "intact": true, "records": intact.records, "receipts": intact.receipts,
                "timestamps": intact.timestamps, "unchecked_timestamps": intact.unchecked_timestamps,
                "stamped": intact.stamped,
                "anchored": intact.anchored.as_ref().map(|(peer, seq)| serde_json::json!({"peer": peer, "seq": seq})),
                "cross_checked": cross_checked,
                "not_ruled_out": covered.is_none().then(|| unanchored(&intact)),
                "members": members_json(),
            })
        );
        return if members_broken { Err(CliError::failed(String::new())) } else { Ok(()) };
    }
    out!("intact: {} records, {} receipts verified{}", intact.records, intact.receipts, stamps(&intact));
    match covered {
        Some((peer, covered)) => out!("{}", cross_checked(&peer, &covered)),
        None => out!("{}", unanchored(&intact)),
    }
    for (member, verdict) in &others {
        match verdict {
            Ok(i) => out!("member {member}'s chain: intact, {} records, {} receipts verified", i.records, i.receipts),
            Err(b) => out!("member {member}'s chain: broken at seq {}: {}", b.seq, b.why),
        }
    }
    match members_broken {
        true => Err(CliError::failed("another member's chain is broken (above)")),
        false => Ok(()),
    }
}

/// Cross-checks the log under `config` against `peer`'s export in `file`: the peer's name, and
/// what the check covered or where the log is broken.
fn cross_check(
    config: &Config,
    file: &Path,
    peer: Option<&str>,
) -> Result<(String, Result<Covered, Broken>), CliError> {
    let names = || config.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let peer = match (peer, config.peers.as_slice()) {
        (Some(name), peers) if peers.iter().any(|p| p.name == name) => name.to_owned(),
        (Some(name), _) => {
            return Err(CliError::usage(format!("--peer {name}: no such peer in the config (configured: {})", names())))
        }
        (None, [only]) => only.name.clone(),
        (None, []) => return Err(CliError::usage("no peer is configured: an export is cross-checked against a peer")),
        (None, _) => {
            return Err(CliError::usage(format!(
                "name the peer that exported {} with --peer NAME (configured: {})",
                file.display(),
                names()
            )))
        }
    };
    let opened =
        std::fs::File::open(file).map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    let theirs = crate::anchor::read_export(std::io::BufReader::new(opened))
        .map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?;
    let certs = crate::rollover::own_certs(&crate::rollover::KeyFiles::of(config))?;
    let name = crate::anchor::name_in(&theirs, &certs, &config.node.name);
    let mut failed = None;
    let ours = crate::store::read_log(&config.store_location(), 0)
        .map_err(|e| CliError::failed(e.to_string()))?
        .map_while(|read| read.map_err(|e| failed = Some(e)).ok());
    let checked = crate::anchor::cross_check(ours, &theirs, &certs, &name, &peer)
        .map_err(|e| CliError::usage(format!("{} ({peer}'s export): {e}", file.display())))?;
    if let Some(e) = failed {
        return Err(CliError::failed(e.to_string()));
    }
    Ok((peer, checked))
}

/// What the cross-check with `peer`'s export covered.
fn cross_checked(peer: &str, covered: &Covered) -> String {
    let mut text = format!(
        "cross-checked with {peer}'s export (it calls this node {}): {} records of ours {peer} holds",
        covered.name, covered.records
    );
    match covered.newest_head {
        Some((seq, at_ms)) => text.push_str(&format!(
            ", newest head seq {seq} signed at {}; records after it are not covered",
            crate::store::rfc3339(at_ms)
        )),
        None => text.push_str(", no head of ours: a removed tail is not covered"),
    }
    text
}

/// What the log alone cannot rule out: from its `checkpoint` records out, how many records are
/// after the newest head a peer keeps.
fn unanchored(intact: &Intact) -> String {
    let export = "a removed tail or a recomputed chain shows only against a peer's export (--peer-export)";
    match &intact.anchored {
        Some((peer, seq)) => {
            let after = intact.records as i64 - seq;
            format!(
                "not ruled out: the last {after} records are after the newest checkpoint a peer holds ({peer}, seq \
                 {seq}); {export}"
            )
        }
        None => format!("not ruled out: no peer holds a checkpoint of this log; {export}"),
    }
}

/// What the verdict says of time-stamps: how many verified, and how many records have no trusted
/// time yet.
fn stamps(intact: &Intact) -> String {
    let mut text = format!(", {} time-stamps verified", intact.timestamps);
    if intact.unchecked_timestamps > 0 {
        text.push_str(&format!(
            " ({} not checked: set evidence.tsa_cert to the certificate of the TSA that issued them)",
            intact.unchecked_timestamps
        ));
    }
    match intact.stamped {
        Some(seq) => {
            let after = intact.records as i64 - seq;
            text.push_str(&format!("; the newest stamps seq {seq}, the last {after} records are after it"))
        }
        None if intact.records > 0 => text.push_str("; no record has a trusted time"),
        None => {}
    }
    text
}
