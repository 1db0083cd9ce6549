//! The node's configuration file (API.md §2): parsed completely, every problem reported at once.
//!
//! The file is read into a TOML table and walked key by key, so that a wrong type, a bad duration
//! and an unknown key three sections apart are all named in one run of `ferry check`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use toml::{Table, Value};
use url::Url;

/// A node's whole configuration, with paths resolved against the node's directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    /// The node's directory: relative paths in the file are resolved against it.
    pub dir: PathBuf,
    /// `[node]`.
    pub node: NodeConfig,
    /// `[[peer]]` tables.
    pub peers: Vec<PeerConfig>,
    /// `[[service]]` tables.
    pub services: Vec<ServiceConfig>,
    /// `[files]`.
    pub files: FilesConfig,
    /// `[api]`.
    pub api: ApiConfig,
    /// `[evidence]`.
    pub evidence: EvidenceConfig,
    /// `[store]`.
    pub store: StoreConfig,
}

/// `[store]`: where the node keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `url = "postgres://…"`: a PostgreSQL database the organization's members share; `None`:
    /// SQLite in `data_dir` (the default).
    pub url: Option<String>,
    /// `member`: this node's name among the members sharing the store (default: the host's name
    /// and the QUIC port, `host:7443`).
    pub member: String,
    /// `readers`: how many connections to PostgreSQL reads may use at once (default 8).
    pub readers: usize,
    /// `ca`: the PEM file of the CAs that sign the PostgreSQL server's certificate (relative to
    /// the node's folder, as `data_dir`). Set, the store is reached over TLS only, the server's certificate
    /// checked against the URL's host; unset, without TLS.
    pub ca: Option<PathBuf>,
}

/// Default `store.readers`.
pub const DEFAULT_STORE_READERS: usize = 8;

impl Config {
    /// Where the store is: PostgreSQL with `[store] url`, else `data_dir`.
    pub fn store_location(&self) -> crate::store::Location {
        match &self.store.url {
            Some(url) => crate::store::Location::Postgres {
                url: url.clone(),
                member: self.store.member.clone(),
                readers: self.store.readers,
                ca: self.store.ca.clone(),
            },
            None => crate::store::Location::Sqlite(self.node.data_dir.clone()),
        }
    }
}

/// `[node]`: who this node is and where it listens.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name, as its peers know it.
    pub name: String,
    /// QUIC (UDP) address for peers.
    pub listen: SocketAddr,
    /// The local REST API's address.
    pub api: SocketAddr,
    /// Store, received files, inbox.
    pub data_dir: PathBuf,
    /// `node.pem`, `node.key`, `peers/*.pem`.
    pub certs_dir: PathBuf,
    /// Base for callback URLs given as a path.
    pub callback_base: Option<Url>,
    /// `threads`: the threads that carry requests, peers' links and the API (the store's writer
    /// and file I/O have threads of their own). One by default: a connection's work then never
    /// crosses threads, which costs 12–35% less CPU per request than a thread per core on a small
    /// host (BENCHMARKS.md, issue 24); a host that needs more than one core of it sets more.
    pub threads: usize,
}

/// `[[peer]]`: a node this one exchanges with.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// The peer's node name.
    pub name: String,
    /// Where the peer answers, `host:port`, one or several (`address = ["a:7443", "b:7443"]`):
    /// the addresses of its members, dialed in turn until one answers ([`crate::link`]). A DNS
    /// name is resolved at connect time.
    pub addresses: Vec<String>,
    /// The pinned certificates (PEM): one, or one per member when the peer's members each have
    /// their own key (`cert = ["peers/org-b.pem", "peers/org-b+2.pem"]`). Any of them may
    /// answer at any of `addresses`.
    pub certs: Vec<PathBuf>,
    /// Whether a new certificate the peer's old key vouches for is pinned at once (`true`, the
    /// default) or held until `ferry peer accept` ([`crate::rollover`]).
    pub auto_rollover: bool,
}

/// `[[service]]`: a local service that peers may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The id peers address it by.
    pub id: String,
    /// The service's base URL; request paths are appended to it.
    pub base_url: Url,
    /// Peers that may call it; `*` means every configured peer.
    pub allow: Vec<String>,
    /// Identical requests inside this window are refused.
    pub dedupe_window: Option<Duration>,
    /// How long a successful result is kept for an idempotency key.
    pub idempotency_ttl: Duration,
    /// Whether the service is served.
    pub state: ServiceState,
    /// Form fields shown only as their SHA-256.
    pub mask_fields: Vec<String>,
    /// Headers carrying credentials or client claims (`Authorization`, `Cookie`, `Forwarded`,
    /// `X-Forwarded-*`, `X-Real-IP`) that peers may pass to the service; others are dropped.
    pub pass_headers: Vec<String>,
}

impl ServiceConfig {
    /// Whether `peer` may call this service.
    pub fn allows(&self, peer: &str) -> bool {
        self.allow.iter().any(|a| a == "*" || a == peer)
    }

    /// Whether `pass_headers` lists header `name` (case-insensitive).
    pub fn passes(&self, name: &str) -> bool {
        self.pass_headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// A service's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Served.
    Active,
    /// Served, with a `Deprecation` header passed back to the caller.
    Deprecated,
    /// Refused with `unavailable`.
    Disabled,
}

impl ServiceState {
    /// The state as the config's `state` key writes it: `active`, `deprecated` or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Active => "active",
            ServiceState::Deprecated => "deprecated",
            ServiceState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[files]`.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// A host may send only files below these folders.
    pub send_roots: Vec<PathBuf>,
    /// The largest file sent or accepted, in bytes.
    pub max_size: u64,
    /// Whether received files are written with direct I/O (past the page cache) where the file
    /// system allows it, rather than through the page cache; synced as they are written either
    /// way.
    pub direct_io: bool,
    /// How long files this node received (`data_dir/received/`) and finished requests past their
    /// ttl are kept; `None` keeps them for ever.
    pub keep_received: Option<Duration>,
    /// Whether this node watches `data_dir/inbox`: members sharing a store and a `data_dir` let
    /// one of them watch it.
    pub inbox: bool,
}

/// `[api]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bearer tokens; when empty, only loopback callers are served.
    pub tokens: Vec<String>,
    /// WebSocket clients must send `OK` at least this often.
    pub heartbeat: Duration,
    /// Hosts callbacks may go to besides loopback and the host of `node.callback_base`.
    pub callback_hosts: Vec<url::Host>,
    /// API connections served at once; past it, new ones are answered 503 and closed.
    pub max_connections: usize,
    /// A client must send each request head (line and headers) within this time, or its
    /// connection is closed; also the longest a kept-alive connection may sit idle.
    pub header_timeout: Duration,
}

/// `[evidence]`: what this node keeps as proof of its exchanges.
#[derive(Debug, Clone, PartialEq)]
pub struct EvidenceConfig {
    /// Keep the evidence log (default true). Turning it off gives up the proof of every exchange;
    /// it exists to measure what the log costs.
    pub log: bool,
    /// Sign receipts for what peers send (default true).
    pub receipts: bool,
    /// Time-stamp the chain head with an RFC 3161 TSA (`tsa_url`, `tsa_cert`, `tsa_every`).
    pub tsa: Option<TsaConfig>,
    /// How often the node sends each connected peer a signed checkpoint of its chain head, when
    /// the head moved (`checkpoint_every`, default 60 s; only with `receipts`).
    pub checkpoint_every: Duration,
}

/// The time-stamping authority the node has its chain head stamped by.
#[derive(Debug, Clone, PartialEq)]
pub struct TsaConfig {
    /// Where to send time-stamp requests (`tsa_url`, http or https).
    pub url: Url,
    /// The TSA's PEM certificate (`tsa_cert`, relative to `node.certs_dir`), read by
    /// [`TsaConfig::certificate`] when the node starts, `ferry check` and `ferry audit verify`.
    pub cert: PathBuf,
    /// How often the head is stamped when it moved (`tsa_every`, default 60 s).
    pub every: Duration,
}

/// The configuration could not be used; every problem found is listed.
#[derive(Debug, Error)]
#[error("{}", .problems.iter().map(|p| format!("{}: {p}", .path.display())).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl TsaConfig {
    /// The TSA's certificate (DER), once it is read and found meant for time-stamping; `Err` says
    /// what is wrong with the file.
    pub fn certificate(&self) -> Result<Vec<u8>, String> {
        let der = crate::identity::load_cert(&self.cert).map_err(|e| format!("evidence.tsa_cert: {e}"))?;
        crate::timestamp::check_certificate(&der)
            .map_err(|e| format!("evidence.tsa_cert: {}: {e}", self.cert.display()))?;
        Ok(der.to_vec())
    }
}

/// `[evidence]`'s TSA from its keys: both `tsa_url` and `tsa_cert` or neither.
fn tsa_config(
    url: Option<Url>,
    cert: &str,
    every: Duration,
    certs_dir: &Path,
    errs: &mut Vec<String>,
) -> Option<TsaConfig> {
    match (url, cert.is_empty()) {
        (None, true) => None,
        (Some(_), true) => {
            errs.push(
                "evidence.tsa_url: needs evidence.tsa_cert, the TSA's PEM certificate, to check its tokens".into(),
            );
            None
        }
        (None, false) => {
            errs.push("evidence.tsa_cert: needs evidence.tsa_url, where the TSA answers (or remove tsa_cert)".into());
            None
        }
        (Some(url), false) => {
            if every.is_zero() {
                errs.push("evidence.tsa_every: must be more than 0, e.g. \"60s\"".into());
            }
            Some(TsaConfig { url, cert: certs_dir.join(cert), every })
        }
    }
}

/// What is wrong with `[store] url`, PostgreSQL's; `tls`: whether `[store] ca` is set.
fn store_url_problems(url: &str, tls: bool, errs: &mut Vec<String>) {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        errs.push("store.url: must be a PostgreSQL URL, postgres://user@host:5432/db (or remove it for SQLite in node.data_dir)".into());
        return;
    }
    match url.parse::<postgres::Config>() {
        Err(e) => {
            errs.push(format!("store.url: {}; see docs/operating.md for its form", crate::store::postgres_error(&e)))
        }
        Ok(c) if c.get_ssl_mode() == postgres::config::SslMode::Require && !tls => errs.push(
            "store.url: sslmode=require needs store.ca, the PEM certificate of the CA that signed the server's \
             (ferry checks it); or remove sslmode"
                .into(),
        ),
        Ok(_) => {}
    }
}

/// The most addresses a peer may have (`[[peer]] address`): its members, dialed in turn.
pub const MAX_ADDRESSES: usize = 16;
/// The most certificates a peer may have pinned in its `[[peer]] cert`: one per member.
pub const MAX_MEMBERS: usize = 16;
/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
/// Default API address.
pub const DEFAULT_API: &str = "127.0.0.1:8888";
/// Default `node.threads`.
pub const DEFAULT_THREADS: usize = 1;
/// The most `node.threads`.
pub const MAX_THREADS: usize = 256;
/// Default `api.max_connections`: far below the unit's `LimitNOFILE`, so that API clients cannot
/// take the descriptors the store, the inbox, files and peers need.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            problems: vec![format!("cannot read the config file: {e} (create one with `ferry init`)")],
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (which decides the node directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError { path: path.to_owned(), problems };
        let table: Table = toml::from_str(text).map_err(|e| fail(vec![one_line(&e.to_string())]))?;
        let dir = node_dir(path);
        let mut errs = Vec::new();
        let mut root = Section::new(&table, "", &mut errs);

        let node = root.table("node", true);
        let peers = root.array("peer");
        let services = root.array("service");
        let files = root.table("files", false);
        let api = root.table("api", false);
        let evidence = root.table("evidence", false);
        let store = root.table("store", false);
        root.finish();

        let node = {
            let mut s = Section::new(&node, "node", &mut errs);
            let name = s.string("name", None).unwrap_or_default();
            let listen = s.addr("listen", DEFAULT_LISTEN);
            let api = s.addr("api", DEFAULT_API);
            let data_dir = dir.join(s.string("data_dir", Some("data")).unwrap_or_default());
            let certs_dir = dir.join(s.string("certs_dir", Some("certs")).unwrap_or_default());
            let callback_base = s.url("callback_base", false);
            let threads = s.count("threads", DEFAULT_THREADS);
            if threads > MAX_THREADS {
                s.problem("threads", format!("must be at most {MAX_THREADS}, e.g. the host's number of cores"));
            }
            s.finish();
            if !name.is_empty() {
                check_name(&name, "node.name", &mut errs);
            }
            NodeConfig { name, listen, api, data_dir, certs_dir, callback_base, threads }
        };

        let peers: Vec<PeerConfig> = peers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut s = Section::new(t, &format!("peer[{i}]"), &mut errs);
                let name = s.string("name", None).unwrap_or_default();
                let addresses = s.one_or_more("address", MAX_ADDRESSES);
                let certs: Vec<PathBuf> =
                    s.one_or_more("cert", MAX_MEMBERS).iter().map(|c| node.certs_dir.join(c)).collect();
                let auto_rollover = s.flag("auto_rollover", true);
                s.finish();
                if !name.is_empty() {
                    check_name(&name, &format!("peer[{i}].name"), &mut errs);
                }
                for address in addresses.iter().filter(|a| !valid_address(a)) {
                    errs.push(format!(
                        "peer[{i}].address: {} is not host:port (e.g. 192.0.2.7:7443 or ferry.org-b.example:7443)",
                        shown(address)
                    ));
                }
                duplicates(addresses.iter().map(String::as_str), &format!("peer[{i}].address"), &mut errs);
                let files = certs.iter().filter_map(|c| c.to_str());
                duplicates(files, &format!("peer[{i}].cert"), &mut errs);
                PeerConfig { name, addresses, certs, auto_rollover }
            })
            .collect();
        duplicates(peers.iter().map(|p| p.name.as_str()), "peer name", &mut errs);
        if peers.iter().any(|p| p.name == node.name && !p.name.is_empty()) {
            errs.push(format!("peer `{}` has this node's own name; give each node its own name", node.name));
        }

        let services: Vec<ServiceConfig> = services
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut s = Section::new(t, &format!("service[{i}]"), &mut errs);
                let id = s.string("id", None).unwrap_or_default();
                let base_url = s.url("base_url", true).unwrap_or_else(|| Url::parse("http://invalid/").unwrap());
                let allow = s.strings("allow");
                let dedupe_window = s.duration("dedupe_window", None);
                let idempotency_ttl = s.duration("idempotency_ttl", Some("1h")).unwrap_or_default();
                let state = match s.string("state", Some("active")).as_deref() {
                    Some("active") | None => ServiceState::Active,
                    Some("deprecated") => ServiceState::Deprecated,
                    Some("disabled") => ServiceState::Disabled,
                    Some(other) => {
                        s.problem("state", format!("`{other}` is not one of active, deprecated, disabled"));
                        ServiceState::Active
                    }
                };
                let mask_fields = s.strings("mask_fields");
                let pass_headers = s.strings("pass_headers");
                s.finish();
                if id.chars().any(char::is_control) {
                    errs.push(format!(
                        "service[{i}].id: {} holds a control character (a line break, a tab…); give it a plain id",
                        shown(&id)
                    ));
                }
                for h in &pass_headers {
                    if let Some(why) = crate::wire::header_problem(h, "") {
                        errs.push(format!("service[{i}].pass_headers: {why}"));
                    }
                }
                for a in &allow {
                    if a != "*" && !peers.iter().any(|p| &p.name == a) {
                        errs.push(format!(
                            "service[{i}].allow: `{a}` is not a configured peer (add it with `ferry peer add`)"
                        ));
                    }
                }
                ServiceConfig { id, base_url, allow, dedupe_window, idempotency_ttl, state, mask_fields, pass_headers }
            })
            .collect();
        duplicates(services.iter().map(|s| s.id.as_str()), "service id", &mut errs);

        let files = {
            let mut s = Section::new(&files, "files", &mut errs);
            let roots = if s.has("send_roots") { s.strings("send_roots") } else { vec!["outbox".to_owned()] };
            let max_size = s.size("max_size", "20GiB");
            let direct_io = s.flag("direct_io", true);
            let keep_received = s.duration("keep_received", None);
            let inbox = s.flag("inbox", true);
            s.finish();
            let send_roots = roots.iter().map(|r| dir.join(r)).collect();
            FilesConfig { send_roots, max_size, direct_io, keep_received, inbox }
        };

        let api = {
            let mut s = Section::new(&api, "api", &mut errs);
            let tokens = s.strings("tokens");
            let heartbeat = s.duration("heartbeat", Some("15s")).unwrap_or_default();
            let callback_hosts =
                s.strings("callback_hosts").iter().filter_map(|h| s.host("callback_hosts", h)).collect();
            let max_connections = s.count("max_connections", DEFAULT_MAX_CONNECTIONS);
            let header_timeout = s.duration("header_timeout", Some("10s")).unwrap_or(Duration::from_secs(10));
            s.finish();
            if tokens.iter().any(|t| t.len() < 16) {
                errs.push("api.tokens: every token must be at least 16 characters".to_owned());
            }
            if header_timeout.is_zero() {
                errs.push("api.header_timeout: must be more than 0, e.g. \"10s\"".to_owned());
            }
            ApiConfig { tokens, heartbeat, callback_hosts, max_connections, header_timeout }
        };

        let evidence = {
            let mut s = Section::new(&evidence, "evidence", &mut errs);
            let log = s.flag("log", true);
            let receipts = s.flag("receipts", true);
            let tsa_url = s.url("tsa_url", false);
            let tsa_cert = s.string("tsa_cert", Some("")).unwrap_or_default();
            let tsa_every = s.duration("tsa_every", Some("60s")).unwrap_or(Duration::from_secs(60));
            let checkpoint_every = s.duration("checkpoint_every", Some("60s")).unwrap_or(Duration::from_secs(60));
            s.finish();
            if checkpoint_every.is_zero() {
                errs.push("evidence.checkpoint_every: must be more than 0, e.g. \"60s\"".into());
            }
            let tsa = tsa_config(tsa_url, &tsa_cert, tsa_every, &node.certs_dir, &mut errs);
            EvidenceConfig { log, receipts, tsa, checkpoint_every }
        };

        let store = {
            let mut s = Section::new(&store, "store", &mut errs);
            let url = s.string("url", Some("")).filter(|u| !u.is_empty());
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let default_member = format!("{}:{}", host.trim(), node.listen.port());
            let member = s.string("member", Some(&default_member)).unwrap_or_default();
            let readers = s.count("readers", DEFAULT_STORE_READERS);
            let ca = s.string("ca", Some("")).filter(|c| !c.is_empty()).map(|c| dir.join(c));
            s.finish();
            if !(1..=64).contains(&readers) {
                errs.push(format!("store.readers: {readers} is not 1 to 64"));
            }
            if let Some(url) = &url {
                store_url_problems(url, ca.is_some(), &mut errs);
            }
            if ca.is_some() && url.is_none() {
                errs.push("store.ca: is for TLS to PostgreSQL; set store.url too, or remove store.ca".into());
            }
            if member.is_empty() || member.chars().any(char::is_control) || member.len() > 128 {
                errs.push(format!(
                    "store.member: {} is not a name; give each member its own, e.g. \"b1\"",
                    shown(&member)
                ));
            }
            StoreConfig { url, member, readers, ca }
        };

        if errs.is_empty() {
            Ok(Config { path: path.to_owned(), dir, node, peers, services, files, api, evidence, store })
        } else {
            Err(fail(errs))
        }
    }

    /// The configured peer named `name`.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The configured service with id `id`.
    pub fn service(&self, id: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.id == id)
    }

    /// This node's certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.node.certs_dir.join("node.pem")
    }

    /// This node's private key file.
    pub fn key_path(&self) -> PathBuf {
        self.node.certs_dir.join("node.key")
    }
}

/// The node directory for a config file: the parent of `config/`, else the file's folder.
pub fn node_dir(config_file: &Path) -> PathBuf {
    let parent = config_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parent = std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned());
    match (parent.file_name(), parent.parent()) {
        (Some(n), Some(up)) if n == "config" => up.to_owned(),
        _ => parent,
    }
}

/// Parses a duration: `500ms`, `30s`, `5m`, `1h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is not a duration like 500ms, 30s, 5m, 1h or 1d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}` is not a duration like 500ms, 30s, 5m, 1h or 1d")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// Parses a size: `512KiB`, `10MiB`, `20GiB` (also `B`, `KB`, `MB`, `GB`, `TiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a size like 512KiB, 10MiB or 20GiB");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Whether `name` may name a node: letters, digits, `.`, `-`, `_`, at most 64.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn check_name(name: &str, key: &str, errs: &mut Vec<String>) {
    if !valid_name(name) {
        errs.push(format!("{key}: `{name}` may hold only letters, digits, `.`, `-` and `_` (at most 64)"));
    }
}

/// Whether `address` is a peer's `host:port`: a DNS name or an IP address (IPv6 in brackets, or
/// bare as the resolver also takes it) and a port from 1 to 65535. Spaces, quotes and control
/// characters are refused: they are never part of a host, only of a mistake or an attack on the
/// file that holds it.
pub fn valid_address(address: &str) -> bool {
    let host_char = |c: char| c.is_ascii_alphanumeric() || ".-_:[]".contains(c);
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && host.chars().all(host_char) && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// `text` in backquotes for a message, with line breaks, tabs and other control characters
/// escaped, so that a hostile name prints as one line that shows what it holds.
pub fn shown(text: &str) -> String {
    if text.chars().any(char::is_control) {
        format!("`{}`", text.escape_debug())
    } else {
        format!("`{text}`")
    }
}

fn duplicates<'a>(names: impl Iterator<Item = &'a str>, what: &str, errs: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    for n in names.filter(|n| !n.is_empty()) {
        if !seen.insert(n) {
            errs.push(format!("{what} `{n}` appears twice; each must be unique"));
        }
    }
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// A walk over one table that records problems and which keys were read.
struct Section<'a> {
    table: &'a Table,
    prefix: String,
    errs: &'a mut Vec<String>,
    seen: BTreeSet<&'a str>,
}

impl<'a> Section<'a> {
    fn new(table: &'a Table, prefix: &str, errs: &'a mut Vec<String>) -> Self {
        Section { table, prefix: prefix.to_owned(), errs, seen: BTreeSet::new() }
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn problem(&mut self, key: &str, what: String) {
        let k = self.key(key);
        self.errs.push(format!("{k}: {what}"));
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn get(&mut self, key: &'a str) -> Option<&'a Value> {
        self.seen.insert(key);
        self.table.get(key)
    }

    fn table(&mut self, key: &'a str, required: bool) -> Table {
        match self.get(key) {
            Some(Value::Table(t)) => t.clone(),
            Some(_) => {
                self.problem(key, "must be a table, e.g. [node]".into());
                Table::new()
            }
            None => {
                if required {
                    self.problem(key, format!("missing section [{key}]"));
                }
                Table::new()
            }
        }
    }

    fn array(&mut self, key: &'a str) -> Vec<Table> {
        match self.get(key) {
            None => vec![],
            Some(Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_table().cloned()).collect::<Vec<_>>().into_iter().collect()
            }
            Some(_) => {
                self.problem(key, format!("must be written as [[{key}]] tables"));
                vec![]
            }
        }
    }

    fn flag(&mut self, key: &'a str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(_) => {
                self.problem(key, "must be true or false".to_owned());
                default
            }
        }
    }

    /// A whole number of at least 1.
    fn count(&mut self, key: &'a str, default: usize) -> usize {
        match self.get(key) {
            None => default,
            Some(Value::Integer(n)) if *n >= 1 => usize::try_from(*n).unwrap_or(usize::MAX),
            Some(_) => {
                self.problem(key, format!("must be a whole number of at least 1, e.g. {default}"));
                default
            }
        }
    }

    fn string(&mut self, key: &'a str, default: Option<&str>) -> Option<String> {
        match (self.get(key), default) {
            (Some(Value::String(s)), _) if !s.is_empty() => Some(s.clone()),
            (Some(Value::String(_)), _) => {
                self.problem(key, "must not be empty".into());
                None
            }
            (Some(_), _) => {
                self.problem(key, "must be a string in quotes".into());
                None
            }
            (None, Some(d)) => Some(d.to_owned()),
            (None, None) => {
                self.problem(key, "is required".into());
                None
            }
        }
    }

    fn strings(&mut self, key: &'a str) -> Vec<String> {
        match self.get(key) {
            None => vec![],
            Some(Value::Array(items)) if items.iter().all(Value::is_str) => {
                items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            }
            Some(_) => {
                self.problem(key, "must be a list of strings, e.g. [\"a\", \"b\"]".into());
                vec![]
            }
        }
    }

    /// A required string, or a list of 1 to `max` strings: a key that usually holds one value.
    fn one_or_more(&mut self, key: &'a str, max: usize) -> Vec<String> {
        match self.get(key) {
            Some(Value::Array(items)) if (1..=max).contains(&items.len()) && items.iter().all(Value::is_str) => {
                items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            }
            Some(Value::Array(_)) => {
                self.problem(key, format!("must be a string or a list of 1 to {max} strings, e.g. [\"a\", \"b\"]"));
                vec![]
            }
            _ => self.string(key, None).into_iter().collect(),
        }
    }

    fn addr(&mut self, key: &'a str, default: &str) -> SocketAddr {
        let text = self.string(key, Some(default)).unwrap_or_else(|| default.to_owned());
        text.parse().unwrap_or_else(|_| {
            self.problem(key, format!("`{text}` is not an IP address and port, e.g. {default}"));
            default.parse().unwrap()
        })
    }

    fn url(&mut self, key: &'a str, required: bool) -> Option<Url> {
        let text = self.string(key, if required { None } else { Some("") })?;
        if text.is_empty() {
            return None;
        }
        if text.chars().any(char::is_control) {
            // The URL parser would drop line breaks and tabs silently: the URL used would not be
            // the one written.
            self.problem(key, format!("{} holds a control character (a line break, a tab…)", shown(&text)));
            return None;
        }
        match Url::parse(&text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Some(u),
            _ => {
                self.problem(key, format!("`{text}` is not an http(s) URL, e.g. http://127.0.0.1:8080"));
                None
            }
        }
    }

    /// A host name or IP address alone (no scheme, port or path), as URLs name it.
    fn host(&mut self, key: &str, text: &str) -> Option<url::Host> {
        // URLs write an IPv6 address in brackets; the config may give it with or without.
        let bracketed =
            if text.contains(':') && !text.starts_with('[') { format!("[{text}]") } else { text.to_owned() };
        match url::Host::parse(&bracketed) {
            Ok(host) if !text.contains(['/', '@', '?', '#']) => Some(host),
            _ => {
                self.problem(key, format!("`{text}` is not a host name or IP address, e.g. app.internal or 10.0.0.5"));
                None
            }
        }
    }

    fn duration(&mut self, key: &'a str, default: Option<&str>) -> Option<Duration> {
        let text = match (self.get(key), default) {
            (Some(Value::String(s)), _) => s.clone(),
            (Some(_), _) => {
                self.problem(key, "must be a duration in quotes, e.g. \"30s\"".into());
                return None;
            }
            (None, Some(d)) => d.to_owned(),
            (None, None) => return None,
        };
        parse_duration(&text).map_err(|e| self.problem(key, e)).ok()
    }

    fn size(&mut self, key: &'a str, default: &str) -> u64 {
        let text = match self.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Integer(n)) if *n >= 0 => return *n as u64,
            Some(_) => {
                self.problem(key, "must be a size in quotes, e.g. \"20GiB\"".into());
                return 0;
            }
            None => default.to_owned(),
        };
        parse_size(&text).map_err(|e| self.problem(key, e)).unwrap_or(0)
    }

    /// Reports every key that was not read as unknown.
    fn finish(self) {
        for key in self.table.keys() {
            if !self.seen.contains(key.as_str()) {
                let k = if self.prefix.is_empty() { key.clone() } else { format!("{}.{key}", self.prefix) };
                self.errs.push(format!("{k}: unknown key (check its spelling against the example in config/)"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/srv/ferry/config/ferry.toml"), text)
    }

    const GOOD: &str = r#"
        [node]
        name = "org-a"
        listen = "127.0.0.1:7443"
        callback_base = "http://127.0.0.1:8080"
        [[peer]]
        name = "org-b"
        address = "localhost:7444"
        cert = "peers/org-b.pem"
        [[service]]
        id = "1"
        base_url = "http://127.0.0.1:8080"
        allow = ["org-b"]
        dedupe_window = "30s"
        state = "deprecated"
        [files]
        max_size = "10MiB"
        direct_io = false
        [api]
        heartbeat = "500ms"
        max_connections = 64
        header_timeout = "2s"
    "#;

    #[test]
    fn tls_to_the_store_is_required_with_a_ca_and_never_asked_for_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("db-ca.pem");
        let with = |store: &str| {
            Config::parse(&dir.path().join("config/ferry.toml"), &format!("[node]\nname = \"org-a\"\n[store]\n{store}"))
        };
        let url = "url = \"postgres://ferry@db.example:5432/ferry\"";
        let c = with(&format!("{url}\nca = \"db-ca.pem\"")).unwrap();
        assert_eq!(c.store.ca.as_deref(), Some(ca.as_path()));
        assert!(matches!(c.store_location(), crate::store::Location::Postgres { ca: Some(_), .. }));
        for (store, says) in [
            ("url = \"postgres://ferry@db.example/ferry?sslmode=require\"", "sslmode=require needs store.ca"),
            ("ca = \"db-ca.pem\"", "store.ca: is for TLS to PostgreSQL; set store.url"),
            (
                "url = \"postgres://ferry@db.example/ferry?sslmode=sometimes\"",
                "store.url: invalid connection string: invalid value for option `sslmode`",
            ),
        ] {
            let err = with(store).unwrap_err().to_string();
            assert!(err.contains(says), "{store}: {err}");
        }
    }

    #[test]
    fn a_full_config_parses_with_paths_resolved_against_the_node_dir() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.dir, Path::new("/srv/ferry"));
        assert_eq!(c.node.data_dir, Path::new("/srv/ferry/data"));
        assert_eq!(c.peers[0].certs, [Path::new("/srv/ferry/certs/peers/org-b.pem")]);
        assert_eq!(c.files.send_roots, vec![PathBuf::from("/srv/ferry/outbox")]);
        assert_eq!((c.files.max_size, c.files.direct_io), (10 << 20, false));
        assert_eq!(c.api.heartbeat, Duration::from_millis(500));
        assert_eq!((c.api.max_connections, c.api.header_timeout), (64, Duration::from_secs(2)));
        assert_eq!(c.node.api, DEFAULT_API.parse().unwrap());
        let s = c.service("1").unwrap();
        assert_eq!(s.dedupe_window, Some(Duration::from_secs(30)));
        assert_eq!(s.idempotency_ttl, Duration::from_secs(3600));
        assert_eq!(s.state, ServiceState::Deprecated);
        assert!(s.allows("org-b") && !s.allows("org-c"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            r#"
            [node]
            name = "org a"
            listen = "nowhere"
            colour = "blue"
            [[peer]]
            name = "org-b"
            address = "no-port"
            [[service]]
            id = "1"
            base_url = "ftp://x"
            allow = ["org-z"]
            dedupe_window = "30 parsecs"
            [files]
            max_size = "lots"
            [extra]
        "#,
        )
        .unwrap_err();
        let all = err.to_string();
        for needle in [
            "node.name",
            "node.listen",
            "node.colour: unknown key",
            "peer[0].cert: is required",
            "peer[0].address",
            "service[0].base_url",
            "service[0].allow: `org-z`",
            "service[0].dedupe_window",
            "files.max_size",
            "extra: unknown key",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 10, "{all}");
    }

    /// A peer's `address` is one string or a list of 1 to 16 (its members'), each host:port, none
    /// twice; anything else is refused with the key named.
    #[test]
    fn a_peer_address_is_one_or_a_list() {
        let with = |value: &str| parse(&GOOD.replace(r#"address = "localhost:7444""#, &format!("address = {value}")));
        assert_eq!(with(r#""10.0.0.1:7443""#).unwrap().peers[0].addresses, ["10.0.0.1:7443"]);
        let two = with(r#"["10.0.0.1:7443", "b.example:7443"]"#).unwrap();
        assert_eq!(two.peers[0].addresses, ["10.0.0.1:7443", "b.example:7443"]);
        let many = format!("[{}]", (1..=17).map(|p| format!("\"h:{p}\"")).collect::<Vec<_>>().join(", "));
        for (value, says) in [
            ("[]", "a list of 1 to 16 strings"),
            (many.as_str(), "a list of 1 to 16 strings"),
            (r#"["a:1", 7]"#, "a list of 1 to 16 strings"),
            (r#"["a:1", "no-port"]"#, "`no-port` is not host:port"),
            (r#"["a:1", "a:1"]"#, "`a:1` appears twice"),
            ("7443", "must be a string"),
            (r#""""#, "must not be empty"),
        ] {
            let err = with(value).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{value}: {err}");
            assert!(err.problems[0].starts_with("peer[0].address") && err.problems[0].contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn pass_headers_default_to_none_and_never_name_a_header_the_nodes_set() {
        assert!(!parse(GOOD).unwrap().service("1").unwrap().passes("Authorization"));
        let with = |list: &str| parse(&GOOD.replace("state = \"deprecated\"", &format!("pass_headers = {list}")));
        assert!(with(r#"["Authorization"]"#).unwrap().service("1").unwrap().passes("authorization"));
        let err = with(r#"["X-Ferry-Peer", "Host", "bad name"]"#).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.problems.iter().all(|p| p.starts_with("service[0].pass_headers: ")), "{err}");
    }

    #[test]
    fn threads_default_to_one_and_are_checked() {
        assert_eq!(parse("[node]\nname = \"org-a\"").unwrap().node.threads, 1);
        assert_eq!(parse("[node]\nname = \"org-a\"\nthreads = 4").unwrap().node.threads, 4);
        for bad in ["0", "257", "\"auto\""] {
            let err = parse(&format!("[node]\nname = \"org-a\"\nthreads = {bad}")).unwrap_err();
            assert!(err.to_string().contains("node.threads: must be"), "threads = {bad}: {err}");
        }
    }

    #[test]
    fn api_connection_limits_default_and_are_checked() {
        let c = parse("[node]\nname = \"org-a\"").unwrap();
        assert_eq!(c.api.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.api.header_timeout, Duration::from_secs(10));
        let err = parse("[node]\nname = \"org-a\"\n[api]\nmax_connections = 0\nheader_timeout = \"0s\"").unwrap_err();
        let all = err.to_string();
        assert!(
            all.contains("api.max_connections: must be a whole number") && all.contains("api.header_timeout"),
            "{all}"
        );
    }

    #[test]
    fn the_tsa_keys_go_together_and_default_to_a_minute() {
        assert_eq!(parse("[node]\nname = \"org-a\"").unwrap().evidence.tsa, None);
        let both = "[node]\nname = \"org-a\"\n[evidence]\ntsa_url = \"http://127.0.0.1:3180/\"\ntsa_cert = \"tsa.pem\"";
        let tsa = parse(both).unwrap().evidence.tsa.unwrap();
        assert_eq!((tsa.cert, tsa.every), (PathBuf::from("/srv/ferry/certs/tsa.pem"), Duration::from_secs(60)));
        for (keys, problem) in [
            ("tsa_url = \"http://127.0.0.1:3180/\"", "evidence.tsa_url: needs evidence.tsa_cert"),
            ("tsa_cert = \"tsa.pem\"", "evidence.tsa_cert: needs evidence.tsa_url"),
            ("tsa_url = \"ftp://tsa/\"\ntsa_cert = \"tsa.pem\"", "is not an http(s) URL"),
            (
                "tsa_url = \"http://tsa/\"\ntsa_cert = \"tsa.pem\"\ntsa_every = \"0s\"",
                "evidence.tsa_every: must be more than 0",
            ),
            ("checkpoint_every = \"0s\"", "evidence.checkpoint_every: must be more than 0"),
        ] {
            let all = parse(&format!("[node]\nname = \"org-a\"\n[evidence]\n{keys}")).unwrap_err().to_string();
            assert!(all.contains(problem), "{keys}: {all}");
        }
    }

    /// The TSA certificate is refused unreadable or without the timeStamping extended key usage.
    #[test]
    fn the_tsa_certificate_must_be_readable_and_for_time_stamping() {
        let dir = tempfile::tempdir().unwrap();
        let tsa = |cert: &str| TsaConfig {
            url: Url::parse("http://127.0.0.1:3180/").unwrap(),
            cert: dir.path().join(cert),
            every: Duration::from_secs(60),
        };
        let err = tsa("missing.pem").certificate().unwrap_err();
        assert!(err.starts_with("evidence.tsa_cert: ") && err.contains("missing.pem"), "{err}");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        std::fs::write(dir.path().join("plain.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
        let err = tsa("plain.pem").certificate().unwrap_err();
        assert!(err.contains("timeStamping"), "{err}");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::TimeStamping];
        std::fs::write(dir.path().join("tsa.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
        assert!(tsa("tsa.pem").certificate().is_ok());
    }

    #[test]
    fn a_syntax_error_is_one_line_with_its_position() {
        let err = parse("[node\nname=").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].contains("line 1"), "{}", err.problems[0]);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("5").is_err() && parse_duration("s").is_err() && parse_duration("-1s").is_err());
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert!(parse_size("1.5GiB").is_err() && parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn a_peer_address_is_a_host_and_a_port_and_nothing_else() {
        for good in ["192.0.2.7:7443", "ferry.org-b.example:7443", "localhost:1", "[::1]:7443", "::1:7443"] {
            assert!(valid_address(good), "{good}");
        }
        for bad in ["no-port", "host:0", ":7443", "host:65536", "a b:1", "a\"b:1", "x\n[node]\ny:1", "a/b:1", "u@h:1"] {
            assert!(!valid_address(bad), "{bad:?}");
        }
        let err = parse(&GOOD.replace("localhost:7444", "x\\n[node]:7444")).unwrap_err().to_string();
        assert!(err.contains("peer[0].address: `x\\n[node]:7444` is not host:port"), "{err}");
    }

    /// A line break in a service id or a URL is refused and shown escaped, on one line.
    #[test]
    fn control_characters_in_ids_and_urls_are_refused() {
        let text =
            GOOD.replace("id = \"1\"", "id = \"1\\n2\"").replace("8080\"\n        [[peer]]", "8080\\t/\"\n[[peer]]");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].starts_with("node.callback_base: `http://127.0.0.1:8080\\t/` holds a control"),
            "{err}"
        );
        assert!(err.problems[1].starts_with("service[0].id: `1\\n2` holds a control character"), "{err}");
        assert_eq!(shown("org-b"), "`org-b`");
    }

    #[test]
    fn node_dir_is_the_parent_of_config() {
        assert_eq!(node_dir(Path::new("/srv/ferry/config/ferry.toml")), Path::new("/srv/ferry"));
        assert_eq!(node_dir(Path::new("/etc/ferry/ferry.toml")), Path::new("/etc/ferry"));
    }
}
