//! `ferry audit export` and `ferry audit verify`: the evidence log, read straight from the store
//! (the node may be running or not).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::CliError;
use crate::config::Config;
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

/// Checks the chain and every receipt against the pinned peer certificates; `Err` names the first
/// bad record.
pub fn verify(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let mut certs = HashMap::new();
    for peer in &config.peers {
        certs.insert(peer.name.clone(), load_cert(&peer.cert)?);
    }
    let verdict =
        crate::store::verify_log(&config.node.data_dir, &certs).map_err(|e| CliError::failed(e.to_string()))?;
    match verdict {
        Ok(intact) => {
            println!("intact: {} records, {} receipts verified", intact.records, intact.receipts);
            Ok(())
        }
        Err(broken) => Err(CliError::failed(format!("broken at seq {}: {}", broken.seq, broken.why))),
    }
}
