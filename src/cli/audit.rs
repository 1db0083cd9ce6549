//! `ferry audit export` and `ferry audit verify`: the evidence log, read straight from the store
//! (the node may be running or not).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::CliError;
use crate::config::Config;
use crate::evidence::Intact;
use crate::identity::load_cert;

/// Writes the evidence records after `since` to stdout as JSON lines.
pub fn export(path: &Path, since: i64) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let log = crate::store::read_log(&config.node.data_dir, since).map_err(|e| CliError::failed(e.to_string()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for read in log {
        let (_, record) = read.map_err(|e| CliError::failed(e.to_string()))?;
        writeln!(out, "{record}").map_err(|e| CliError::failed(format!("cannot write the export: {e}")))?;
    }
    out.flush().map_err(|e| CliError::failed(format!("cannot write the export: {e}")))
}

/// Checks the chain, every receipt against the pinned peer certificates and every time-stamp
/// against `evidence.tsa_cert`; `Err` names the first bad record.
pub fn verify(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let mut certs = HashMap::new();
    for peer in &config.peers {
        certs.insert(peer.name.clone(), load_cert(&peer.cert)?);
    }
    let tsa_cert = config.evidence.tsa.as_ref().map(|tsa| tsa.certificate()).transpose().map_err(CliError::usage)?;
    let verdict = crate::store::verify_log(&config.node.data_dir, &certs, tsa_cert.as_deref())
        .map_err(|e| CliError::failed(e.to_string()))?;
    match verdict {
        Ok(intact) => {
            println!("intact: {} records, {} receipts verified{}", intact.records, intact.receipts, stamps(&intact));
            Ok(())
        }
        Err(broken) => Err(CliError::failed(format!("broken at seq {}: {}", broken.seq, broken.why))),
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
