//! `ferry init`: a new node directory with its key, certificate and config.

use std::net::SocketAddr;
use std::path::Path;

use super::CliError;
use crate::config::valid_name;
use crate::identity::{Fingerprint, Identity};

/// Creates `dir/config/ferry.toml`, `dir/certs/node.{pem,key}`, `dir/certs/peers/`, `dir/data/`
/// and `dir/outbox/`, and returns the new certificate's fingerprint. Refuses to overwrite. The
/// config and the key are readable by their owner only.
pub fn init(dir: &Path, name: &str, listen: SocketAddr, api: SocketAddr) -> Result<Fingerprint, CliError> {
    if !valid_name(name) {
        return Err(CliError::usage(format!(
            "--name `{name}`: a node name may hold only letters, digits, `.`, `-` and `_` (at most 64)"
        )));
    }
    let config = dir.join("config/ferry.toml");
    let (cert, key) = (dir.join("certs/node.pem"), dir.join("certs/node.key"));
    for existing in [&config, &key] {
        if existing.exists() {
            return Err(CliError::usage(format!(
                "{} exists already; ferry init never overwrites a node",
                existing.display()
            )));
        }
    }
    let identity = Identity::generate(name).map_err(|e| CliError::failed(e.to_string()))?;
    for sub in ["config", "certs/peers", "data", "outbox"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)
            .map_err(|e| CliError::usage(format!("cannot create {}: {e}", path.display())))?;
    }
    identity.save(&cert, &key)?;
    write_private(&config, &template(name, listen, api))
        .map_err(|e| CliError::usage(format!("cannot write {}: {e}", config.display())))?;
    Ok(identity.fingerprint())
}

/// Writes a new file readable by its owner only (mode 0600): the config will hold `api.tokens`.
pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn template(name: &str, listen: SocketAddr, api: SocketAddr) -> String {
    format!(
        r#"# ferry node configuration (docs/API.md §2). Relative paths are resolved against the node
# directory, the parent of this config/ folder. `ferry check` validates this file.

[node]
name = "{name}"                  # this node's name, as its peers know it
listen = "{listen}"        # QUIC (UDP) for peers
api = "{api}"           # local REST API for host apps
data_dir = "data"                # store, received files, inbox
certs_dir = "certs"              # node.pem, node.key, peers/*.pem
# callback_base = "http://127.0.0.1:8080"   # base for callback urls given as a path

[files]
send_roots = ["outbox"]          # a host may send only files below these folders
max_size = "20GiB"
keep_received = "30d"            # received files, and finished requests past their ttl, go after this

[api]
tokens = []                      # bearer tokens; when empty, only loopback callers, no token
heartbeat = "15s"                # WebSocket clients must send "OK" at least this often
# max_connections = 1024         # open API connections; past it, 503 (keep below LimitNOFILE)
# header_timeout = "10s"         # time for each request head, and for an idle kept-alive connection

# Peers are added with `ferry peer add --name NAME --address HOST:PORT --cert FILE`,
# services with `ferry service add --id ID --base-url URL --allow PEER`.
"#
    )
}
