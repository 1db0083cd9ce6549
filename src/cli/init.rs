//! `ferry init`: a new node with its key, certificate and config, in one directory or split
//! between a config folder and a data folder (`/etc/ferry`, `/var/lib/ferry`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::CliError;
use crate::config::valid_name;
use crate::identity::{Fingerprint, Identity};

/// Where `ferry init` puts a node's files.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The config file.
    pub config: PathBuf,
    /// The folder the config's relative paths are resolved against; `certs/` goes here.
    pub node_dir: PathBuf,
    /// `node.data_dir`, as written in the config.
    pub data_dir: PathBuf,
    /// `files.send_roots`, as written in the config.
    pub send_roots: Vec<PathBuf>,
}

impl Layout {
    /// Everything in `dir`: `config/ferry.toml`, `certs/`, `data/`, `outbox/`.
    pub fn in_dir(dir: &Path) -> Layout {
        Layout {
            config: dir.join("config/ferry.toml"),
            node_dir: dir.to_path_buf(),
            data_dir: "data".into(),
            send_roots: vec!["outbox".into()],
        }
    }

    /// The config file at `config`, with `certs/` beside it, and the data in `data_dir`; host
    /// apps send from `send_roots` (default: `outbox/` beside the config).
    pub fn split(config: &Path, data_dir: &Path, send_roots: &[PathBuf]) -> Layout {
        let node_dir = config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let send_roots = if send_roots.is_empty() { vec!["outbox".into()] } else { send_roots.to_vec() };
        Layout { config: config.to_path_buf(), node_dir, data_dir: data_dir.to_path_buf(), send_roots }
    }
}

/// Creates `dir/config/ferry.toml`, `dir/certs/node.{pem,key}`, `dir/certs/peers/`, `dir/data/`
/// and `dir/outbox/` ([`Layout::in_dir`]), and returns the new certificate's fingerprint.
pub fn init(dir: &Path, name: &str, listen: SocketAddr, api: SocketAddr) -> Result<Fingerprint, CliError> {
    init_in(&Layout::in_dir(dir), name, listen, api)
}

/// Creates the config, `certs/node.{pem,key}`, `certs/peers/`, the data folder and the send roots
/// of `layout`, and returns the new certificate's fingerprint. Refuses to overwrite. The config
/// and the key are readable by their owner only.
pub fn init_in(layout: &Layout, name: &str, listen: SocketAddr, api: SocketAddr) -> Result<Fingerprint, CliError> {
    if !valid_name(name) {
        return Err(CliError::usage(format!(
            "--name `{name}`: a node name may hold only letters, digits, `.`, `-` and `_` (at most 64)"
        )));
    }
    let (config, dir) = (&layout.config, &layout.node_dir);
    let (cert, key) = (dir.join("certs/node.pem"), dir.join("certs/node.key"));
    for existing in [config, &key] {
        if existing.exists() {
            return Err(CliError::usage(format!(
                "{} exists already; ferry init never overwrites a node",
                existing.display()
            )));
        }
    }
    let identity = Identity::generate(name).map_err(|e| CliError::failed(e.to_string()))?;
    let folders = [config.parent().map(Path::to_path_buf), Some("certs/peers".into()), Some(layout.data_dir.clone())];
    for folder in folders.into_iter().flatten().chain(layout.send_roots.iter().cloned()) {
        let path = dir.join(folder);
        std::fs::create_dir_all(&path)
            .map_err(|e| CliError::usage(format!("cannot create {}: {e}", path.display())))?;
    }
    identity.save(&cert, &key)?;
    // Readable by its owner only (mode 0600): the config will hold `api.tokens`.
    crate::config_file::write_private(config, &template(name, listen, api, layout))
        .map_err(|e| CliError::usage(format!("cannot write {}: {e}", config.display())))?;
    Ok(identity.fingerprint())
}

fn template(name: &str, listen: SocketAddr, api: SocketAddr, layout: &Layout) -> String {
    let quoted = |p: &Path| toml_edit::Value::from(p.display().to_string()).to_string();
    let data = quoted(&layout.data_dir);
    let roots = layout.send_roots.iter().map(|r| quoted(r)).collect::<Vec<_>>().join(", ");
    format!(
        r#"# ferry node configuration (docs/API.md §2). Relative paths are resolved against the node
# directory: the parent of this file's config/ folder, else this file's folder. `ferry check`
# validates this file.

[node]
name = "{name}"                  # this node's name, as its peers know it
listen = "{listen}"        # QUIC (UDP) for peers
api = "{api}"           # local REST API for host apps
data_dir = {data}                # store, received files, inbox
certs_dir = "certs"              # node.pem, node.key, peers/*.pem
# callback_base = "http://127.0.0.1:8080"   # base for callback urls given as a path
# threads = 1                    # threads for requests, links and the API; more only past a core of that work

[files]
send_roots = [{roots}]          # a host may send only files below these folders
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
