//! `ferry audit bundle` and `ferry audit verify-bundle`: one exchange's evidence in a file, and
//! its check with no database and no config ([`crate::bundle`]).

use std::io::{Read, Write};
use std::path::Path;

use super::CliError;
use crate::bundle::{self, Anchor, BundleError, MAX_BYTES};
use crate::config::Config;

/// Writes the bundle of request `id` to `out` (whole or not at all) and says what it holds.
pub fn make(path: &Path, id: &str, out: &Path, json: bool) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let node_certs = crate::rollover::own_certs(&crate::rollover::KeyFiles::of(&config))?;
    let peers = super::audit::peer_certs(&config)?;
    let tsa_cert = config.evidence.tsa.as_ref().map(|tsa| tsa.certificate()).transpose().map_err(CliError::usage)?;
    let sources = bundle::Sources {
        node: &config.node.name,
        node_certs: &node_certs,
        peers: &peers,
        tsa_cert: tsa_cert.as_deref(),
    };
    let (bundle, verified) =
        bundle::build(&config.store_location(), id, &sources).map_err(|e| CliError::failed(e.to_string()))?;
    let mut text = serde_json::to_vec_pretty(&bundle).expect("a bundle serializes");
    text.push(b'\n');
    if text.len() > MAX_BYTES {
        return Err(CliError::failed(format!(
            "the bundle of request `{id}` would be {} bytes, more than a bundle may be ({MAX_BYTES}): its segment is too long",
            text.len()
        )));
    }
    write_whole(out, &text).map_err(|e| CliError::failed(format!("cannot write {}: {e}", out.display())))?;
    let (first, last) = verified.segment;
    if json {
        let mut said = verified.to_json();
        said["file"] = out.display().to_string().into();
        out!("{said}");
        return Ok(());
    }
    out!(
        "wrote {}: request {id} with {}, {} records of the exchange, {} receipt leaves, records {first} to {last} of the chain",
        out.display(),
        bundle.peer.name,
        bundle.records.len(),
        bundle.receipts.len()
    );
    match &bundle.anchor {
        Anchor::Timestamp { .. } => out!("anchored by a time-stamp of record {last}"),
        Anchor::Checkpoint { .. } => out!("anchored by a checkpoint of record {last} that a peer keeps"),
        Anchor::None { note } => out!("not anchored: {note}"),
    }
    Ok(())
}

/// Writes `bytes` to a file beside `out` and renames it over `out`, so that `out` is never half
/// written.
fn write_whole(out: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(out).map_err(|e| e.error)?;
    Ok(())
}

/// Checks the bundle in `file` and says what it verified; exit 1 names what failed. With `json`,
/// says either as one JSON object (`verified`, and what was checked or `why` not).
pub fn verify(file: &Path, json: bool) -> Result<(), CliError> {
    let opened =
        std::fs::File::open(file).map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    let mut bytes = Vec::new();
    opened
        .take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    let checked = bundle::read(&bytes).and_then(|bundle| bundle::verify(&bundle));
    let why = match checked {
        Ok(verified) => {
            match json {
                true => out!("{}", verified.to_json()),
                false => out_raw!("{verified}"),
            }
            return Ok(());
        }
        Err(e @ BundleError::Broken { .. }) => format!("the bundle does not verify: {e}"),
        Err(e) => e.to_string(),
    };
    if json {
        out!("{}", serde_json::json!({"verified": false, "why": why}));
        return Err(CliError::failed(String::new()));
    }
    Err(CliError::failed(why))
}
