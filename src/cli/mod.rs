//! The `ferry` command line (API.md §1).
//!
//! Every usage, file or config error ends with one line per problem on stderr and exit code 2.
//! Output goes through `out!`: a reader that goes away (`ferry requests | head`) ends nothing
//! with an error.

/// `println!` that ignores a closed stdout instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod audit;
mod bundle;
mod check;
pub mod demo;
mod human;
pub mod init;
mod invite;
mod journal;
pub mod operator;
pub mod peer;
pub mod service;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::Config;
use crate::node;

/// A command failed: what to print, and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// The exit code: 2 for usage, file and config errors, 1 for failures at run time.
    pub code: u8,
    /// One line per problem.
    pub message: String,
}

impl CliError {
    /// A usage, file or config error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError { code: 2, message: message.into() }
    }

    /// A failure while running (exit code 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError { code: 1, message: message.into() }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// What a failed write to stdout means: a reader that went (`ferry audit export | head`) ends
/// the command quietly; anything else is a failure.
fn stdout_closed(e: std::io::Error) -> Result<(), CliError> {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(CliError::failed(format!("cannot write to stdout: {e}"))),
    }
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        CliError::usage(e.to_string())
    }
}

impl From<crate::config_file::EditError> for CliError {
    fn from(e: crate::config_file::EditError) -> Self {
        let message = e.for_command_line();
        match e.kind {
            crate::config_file::EditKind::Failed => CliError::failed(message),
            _ => CliError::usage(message),
        }
    }
}

impl From<crate::identity::IdentityError> for CliError {
    fn from(e: crate::identity::IdentityError) -> Self {
        CliError::usage(e.to_string())
    }
}

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Peer-to-peer file and message relay between organizations")]
struct Cli {
    /// The node's config file (any command that reads it; before or after the command's name).
    #[arg(long, global = true, env = "FERRY_CONFIG", default_value = "/etc/ferry/ferry.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node directory: config, key and certificate, data and outbox folders.
    Init {
        /// The node directory to create: config/ferry.toml, certs/, data/ and outbox/ in it.
        #[arg(long, required_unless_present = "config_file", conflicts_with = "config_file")]
        dir: Option<PathBuf>,
        /// Instead of --dir: the config file to create, with certs/ beside it (e.g.
        /// /etc/ferry/ferry.toml); needs --data-dir.
        #[arg(long, requires = "data_dir")]
        config_file: Option<PathBuf>,
        /// With --config-file: the data folder (e.g. /var/lib/ferry).
        #[arg(long, requires = "config_file")]
        data_dir: Option<PathBuf>,
        /// With --config-file: a folder host apps may send files from (repeat for more; default:
        /// outbox/ beside the config file).
        #[arg(long, requires = "config_file")]
        send_root: Vec<PathBuf>,
        /// This node's name, as its peers will know it.
        #[arg(long)]
        name: String,
        /// QUIC (UDP) address for peers.
        #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Local REST API address.
        #[arg(long, default_value = crate::config::DEFAULT_API)]
        api: SocketAddr,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Write this node's invite: a file a peer's admin pins it from (`ferry peer add --invite`).
    Invite {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// An address peers reach this node at, host:port (repeat for more; default:
        /// node.listen, unless it is a wildcard address).
        #[arg(long)]
        address: Vec<String>,
        /// The invite of another member of this organization (same name, its own host and
        /// key), merged into this one; repeat for each.
        #[arg(long)]
        member: Vec<PathBuf>,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Certificate commands.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Peer commands.
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Service commands.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Run the node until SIGTERM or SIGINT.
    Run,
    /// Validate the config and certificates; with --connect, also reach every peer and service.
    Check {
        /// Also try a pinned QUIC handshake with each peer and an HTTP call to each service's base URL.
        #[arg(long)]
        connect: bool,
        /// Print everything found as one JSON object (`problems`, `warnings`, `reached`); the
        /// exit code is the same.
        #[arg(long)]
        json: bool,
    },
    /// The evidence log: export it, verify its chain and receipts, bundle one exchange's evidence.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Two nodes and a sample service in one process, on loopback; no set-up needed.
    Demo,
    /// Send a request to a peer's service through the running node (a progress bar for files).
    Send(operator::SendArgs),
    /// Show one request: state, answer, replies, file, callback.
    Status(operator::StatusArgs),
    /// List recent requests, newest first.
    Requests(operator::RequestsArgs),
    /// List incoming reply-mode requests still awaiting a reply.
    Pending(operator::ApiArgs),
    /// Answer (or reject) an incoming reply-mode request by its callback id.
    Reply(operator::ReplyArgs),
    /// List the peers and their connections, or the nodes waiting to be pinned (--pending).
    Peers(operator::PeersArgs),
    /// Follow what the running node does: request states, replies and file progress, as they
    /// happen.
    Events(operator::EventsArgs),
    /// Make the running node read its config file again (peers, services, tokens), and say what
    /// changed or why the file is refused.
    Reload(operator::ApiArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write the evidence log as JSON lines.
    Export {
        /// Only records after this seq.
        #[arg(long, default_value_t = 0)]
        since: i64,
    },
    /// Recompute the hash chain and check every receipt; exit 0 when intact, else name the first bad seq.
    Verify {
        /// A peer's `ferry audit export`: also check that everything of ours it holds is in our log.
        #[arg(long, value_name = "FILE")]
        peer_export: Option<PathBuf>,
        /// The configured peer that exported it (default: the only configured peer).
        #[arg(long, value_name = "NAME", requires = "peer_export")]
        peer: Option<String>,
        /// Print the verdict as one JSON object (`intact`, the counts, `broken_at` and `why`);
        /// the exit code is the same.
        #[arg(long)]
        json: bool,
    },
    /// Write one exchange's evidence to a file a third party can check (`audit verify-bundle`).
    Bundle {
        /// The request id.
        #[arg(long)]
        id: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle of `audit bundle`, with no database and no config; exit 0 when it verifies.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
        /// Print the verdict as one JSON object (`verified`, what was checked or `why` not); the
        /// exit code is the same.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Print this node's certificate fingerprint, to compare with a peer's admin.
    Fingerprint {
        /// Print `{"fingerprint": …}` (and `rollover` while one is under way), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make a new key and certificate without downtime: the old key signs a statement for the new
    /// one, peers that pin the old one pin the new one beside it, and the old one is presented
    /// to the others until the grace ends; the running node reloads.
    Rotate {
        /// How long the old certificate stays presented and pinned (e.g. 7d, 36h; at most 90d).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Pin a node that dialed this one with a certificate not pinned here (`ferry peers
    /// --pending`), after comparing its fingerprint with its admin; the running node reloads.
    Accept(operator::AcceptArgs),
    /// Pin a peer's certificate and add it to the config: from its invite (`ferry invite`), or
    /// from its name, address and certificate.
    Add {
        /// The peer's invite file; --name and --address, if given, override its own.
        #[arg(long, conflicts_with = "cert")]
        invite: Option<PathBuf>,
        /// The peer's node name.
        #[arg(long, required_unless_present = "invite")]
        name: Option<String>,
        /// The peer's QUIC address, host:port; repeat it for each of its members, dialed in turn.
        #[arg(long, required_unless_present = "invite")]
        address: Vec<String>,
        /// The peer's certificate (its certs/node.pem), received from its admin; repeat it for
        /// each of its members that has a key of its own.
        #[arg(long, required_unless_present = "invite")]
        cert: Vec<PathBuf>,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List the configured peers: name, address, pinned certificate and its fingerprint.
    List {
        /// Print a JSON array instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Change a configured peer's address (or addresses).
    Set {
        /// The peer's name.
        name: String,
        /// The peer's new QUIC address, host:port; repeat it for each of its members, dialed in
        /// turn. The list replaces the old one.
        #[arg(long, required = true)]
        address: Vec<String>,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove a peer: its [[peer]] table, its name from every service's allow list, and its
    /// pinned certificate certs/peers/NAME.pem.
    Remove {
        /// The peer's name.
        name: String,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Declare a local service that peers may call.
    Add {
        /// The id peers address the service by.
        #[arg(long)]
        id: String,
        /// The service's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        base_url: String,
        /// Peers that may call it, comma-separated; `*` for every configured peer.
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List the configured services: id, base URL, state and who may call them.
    List {
        /// Print a JSON array instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Change a configured service's state, allow list or base URL.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Set {
        /// The service's id.
        id: String,
        /// The service's lifecycle state.
        #[arg(long, value_enum, group = "change")]
        state: Option<service::State>,
        /// The peers that may call it from now on, comma-separated (replaces the list); `*` for
        /// every configured peer, '' for nobody.
        #[arg(long, value_delimiter = ',', group = "change")]
        allow: Option<Vec<String>>,
        /// The service's new base URL.
        #[arg(long, group = "change")]
        base_url: Option<String>,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove a service's [[service]] table.
    Remove {
        /// The service's id.
        id: String,
        /// Print the result as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line, runs the command, and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // The demo prints its own story; its nodes log only warnings unless RUST_LOG says otherwise.
    init_logging(if matches!(cli.command, Command::Demo) { "warn" } else { "info,quinn=warn,notify=warn" });
    match run(&cli.config, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in e.message.lines() {
                eprintln!("ferry: {line}");
            }
            ExitCode::from(e.code)
        }
    }
}

/// Logs to stderr with the filter of `RUST_LOG`, or `default`. Under systemd (`JOURNAL_STREAM`
/// set) lines carry no timestamps or colours, and begin with the `<N>` syslog priority that
/// journald reads as the entry's level.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.with_ansi(false).event_format(journal::Format).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}

fn run(config: &Path, command: Command) -> Result<(), CliError> {
    match command {
        Command::Init { dir, config_file, data_dir, send_root, name, listen, api, json } => {
            let layout = match (dir, config_file, data_dir) {
                (Some(dir), _, _) => init::Layout::in_dir(&dir),
                (None, Some(config), Some(data)) => init::Layout::split(&config, &data, &send_root),
                _ => unreachable!("clap requires --dir, or --config-file with --data-dir"),
            };
            let fingerprint = init::init_in(&layout, &name, listen, api)?;
            let certificate = layout.node_dir.join("certs/node.pem");
            if json {
                let said = json!({"name": name, "config": layout.config, "certificate": certificate, "fingerprint": fingerprint.to_string()});
                out!("{said}");
                return Ok(());
            }
            out!("created node `{name}`: config {}", layout.config.display());
            out!("fingerprint: {fingerprint}");
            out!("send {} to your peers' admins and compare fingerprints by phone", certificate.display());
            Ok(())
        }
        Command::Invite { out, address, member, json } => {
            let invite = invite::write(config, &out, &address, &member)?;
            let (addresses, (_, fingerprints)) = (invite.all_addresses(), invite.certificates());
            if json {
                let said = json!({"file": out, "name": invite.name, "addresses": addresses,
                    "fingerprint": invite.fingerprint, "fingerprints": fingerprints});
                out!("{said}");
                return Ok(());
            }
            out!("wrote {}: node `{}` at {}", out.display(), invite.name, addresses.join(", "));
            out!("fingerprint: {}", fingerprints.join(", "));
            out!("send the file to the peer's admin (`ferry peer add --invite FILE`) and compare the fingerprint by phone");
            Ok(())
        }
        Command::Cert { command: CertCommand::Fingerprint { json } } => {
            let config = Config::load(config)?;
            let keys = crate::rollover::Keys::load(&crate::rollover::KeyFiles::of(&config))?;
            let fingerprint = keys.current.fingerprint.to_string();
            let rollover = keys.previous().map(|(previous, statement)| {
                serde_json::json!({
                    "previous": previous.fingerprint.to_string(),
                    "until": crate::store::rfc3339(statement.until_ms),
                })
            });
            match (json, rollover) {
                (true, None) => out!("{}", serde_json::json!({"fingerprint": fingerprint})),
                (true, Some(rollover)) => {
                    out!("{}", serde_json::json!({"fingerprint": fingerprint, "rollover": rollover}))
                }
                (false, None) => out!("{fingerprint}"),
                (false, Some(r)) => {
                    out!("{fingerprint}");
                    out!(
                        "replacing {} (presented to peers that have not pinned the new one) until {}",
                        r["previous"],
                        r["until"]
                    );
                }
            }
            Ok(())
        }
        Command::Cert { command: CertCommand::Rotate { grace, json } } => {
            let config = Config::load(config)?;
            let files = crate::rollover::KeyFiles::of(&config);
            let rotated = crate::rollover::rotate(&config.node.name, &files, grace)?;
            let until = crate::store::rfc3339(rotated.until_ms);
            if json {
                let reload = operator::reload_if_running(&config.path)?;
                let said = json!({"fingerprint": rotated.new.to_string(), "previous": rotated.old.to_string(), "until": until, "reload": reload});
                out!("{said}");
                return Ok(());
            }
            out!("new certificate: {}", rotated.new);
            out!(
                "the old one, {}, stays presented to peers that have not pinned the new one until {until}",
                rotated.old
            );
            out!(
                "peers pin it when they next talk to this node; one with auto_rollover = false needs its admin to run \
                 `ferry peer accept {} --fingerprint {}` after comparing it",
                config.node.name,
                rotated.new
            );
            out!("{}", operator::reload_if_running(&config.path)?);
            Ok(())
        }
        Command::Peer { command: PeerCommand::Add { invite, name, address, cert, json } } => {
            let (name, addresses, fingerprints) = match invite {
                Some(file) => {
                    let invite = invite::read(&file)?;
                    let addresses = if address.is_empty() { invite.all_addresses() } else { address };
                    let name = name.unwrap_or(invite.name.clone());
                    (
                        name.clone(),
                        addresses.clone(),
                        peer::add_pem(config, &name, &addresses, &invite.certificates().0)?,
                    )
                }
                None => {
                    let name = name.unwrap_or_default();
                    let fingerprints = peer::add(config, &name, &address, &cert)?;
                    (name, address, fingerprints)
                }
            };
            let fingerprints: Vec<String> = fingerprints.iter().map(ToString::to_string).collect();
            let change = format!(
                "added peer `{name}` at {}\nfingerprint: {}\ncompare it with {name}'s admin (`ferry cert fingerprint` \
                 on their node{})",
                addresses.join(", "),
                fingerprints.join(", "),
                if fingerprints.len() > 1 { "s" } else { "" }
            );
            let pinned = json!({"name": name, "address": addresses[0], "addresses": addresses,
                "fingerprint": fingerprints[0], "fingerprints": fingerprints});
            edited(config, change, json.then_some(pinned))
        }
        Command::Peer { command: PeerCommand::List { json } } => peer::list(config, json),
        Command::Peer { command: PeerCommand::Set { name, address, json } } => {
            edited(config, peer::set_addresses(config, &name, &address)?, json.then(|| json!({})))
        }
        Command::Peer { command: PeerCommand::Remove { name, json } } => {
            edited(config, peer::remove(config, &name)?, json.then(|| json!({})))
        }
        Command::Service { command: ServiceCommand::Add { id, base_url, allow, json } } => {
            service::add(config, &id, &base_url, &allow)?;
            let allow: Vec<&str> = allow.iter().map(String::as_str).filter(|a| !a.is_empty()).collect();
            let allowed = if allow.is_empty() { "nobody yet".into() } else { allow.join(", ") };
            edited(
                config,
                format!("added service `{id}` at {base_url}, allowed for: {allowed}"),
                json.then(|| json!({})),
            )
        }
        Command::Service { command: ServiceCommand::List { json } } => service::list(config, json),
        Command::Service { command: ServiceCommand::Set { id, state, allow, base_url, json } } => {
            let change = service::set(config, &id, service::Changes { state, allow, base_url })?;
            edited(config, change, json.then(|| json!({})))
        }
        Command::Service { command: ServiceCommand::Remove { id, json } } => {
            edited(config, service::remove(config, &id)?, json.then(|| json!({})))
        }
        Command::Run => run_node(config),
        Command::Check { connect, json } => check::check(config, connect, json),
        Command::Audit { command: AuditCommand::Export { since } } => audit::export(config, since),
        Command::Audit { command: AuditCommand::Verify { peer_export, peer, json } } => {
            audit::verify(config, peer_export.as_deref(), peer.as_deref(), json)
        }
        Command::Audit { command: AuditCommand::Bundle { id, out, json } } => bundle::make(config, &id, &out, json),
        Command::Audit { command: AuditCommand::VerifyBundle { file, json } } => bundle::verify(&file, json),
        Command::Demo => demo::run(),
        Command::Send(a) => operator::send(config, a),
        Command::Status(a) => operator::status(config, a),
        Command::Requests(a) => operator::requests(config, a),
        Command::Pending(a) => operator::pending(config, a),
        Command::Reply(a) => operator::reply(config, a),
        Command::Peers(a) => operator::peers(config, a),
        Command::Peer { command: PeerCommand::Accept(a) } => operator::accept(config, a),
        Command::Reload(a) => operator::reload(config, a),
        Command::Events(a) => operator::events(config, a),
    }
}

/// Prints what an edit of the config file `config` changed, then has the running node, if one
/// answers, reload it and says how that went. With `json` (an object of the edit's own fields),
/// prints that object with `change` and `reload` added instead.
fn edited(config: &Path, change: String, json: Option<serde_json::Value>) -> Result<(), CliError> {
    let reload = operator::reload_if_running(config)?;
    match json {
        Some(mut said) => {
            said["change"] = change.into();
            said["reload"] = reload.into();
            out!("{said}");
        }
        None => {
            out!("{change}");
            out!("{reload}");
        }
    }
    Ok(())
}

fn run_node(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let sockets = node::Sockets::bind(&config).map_err(|e| CliError::failed(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.node.threads)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(async {
            let (reload, reloads) = tokio::sync::mpsc::channel(1);
            let stop = signals(reload).map_err(node::NodeError::Io)?;
            let controls = node::Controls { reload: Some(reloads), notifier: crate::systemd::Notifier::from_env() };
            node::run_with(config, sockets, stop, controls).await
        })
        .map_err(|e| CliError {
            code: if matches!(e, node::NodeError::Identity(_)) { 2 } else { 1 },
            message: e.to_string(),
        })
}

/// Takes over SIGTERM, SIGINT and SIGHUP at once (so that none kills the process while the node
/// starts), and returns a future that resolves on SIGTERM or SIGINT and asks for a reload on each
/// SIGHUP.
fn signals(reload: tokio::sync::mpsc::Sender<()>) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => return tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => return tracing::info!("SIGINT: stopping"),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading peers, services and tokens");
                    // A reload already queued will read the file as it is now: one is enough.
                    let _ = reload.try_send(());
                }
            }
        }
    })
}
