//! Operator commands that talk to the running node's local API over HTTP: `send`, `status`,
//! `requests`, `pending`, `reply`, `peers`, `reload`.
//!
//! The API address is the config's `node.api` (a wildcard address is reached on loopback); the
//! bearer token comes from `--token` or `$FERRY_TOKEN`. Output is a human table unless `--json`
//! asks for the API's `data` as it is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::human;
use super::table::{cell, Table};

use super::CliError;
use crate::config::Config;

/// How to reach the node's API, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Bearer token, one of the node's `api.tokens` (needed when tokens are configured).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON `data` instead of a table, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `ferry send`: a request to a peer's service.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The peer node.
    #[arg(long)]
    pub peer: String,
    /// The peer's service id.
    #[arg(long)]
    pub service: String,
    /// The path under the service's base URL, e.g. /user/list.
    #[arg(long)]
    pub path: String,
    /// GET, POST, PUT, PATCH or DELETE (default POST).
    #[arg(long)]
    pub method: Option<String>,
    /// A form field, KEY=VALUE; repeat for more.
    #[arg(long = "form", value_name = "KEY=VALUE")]
    pub form: Vec<String>,
    /// Send the form as a JSON body instead of a query string or urlencoded body.
    #[arg(long = "json-body")]
    pub json_body: bool,
    /// A local file to send with the request (below one of `files.send_roots`).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The form field that carries the file's path on the receiving side (default `file`).
    #[arg(long)]
    pub file_field: Option<String>,
    /// Answer at once with an id (mode async) instead of waiting for the service.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Async only: the result is the service's later reply (reply mode).
    #[arg(long, requires = "asynchronous")]
    pub reply: bool,
    /// Async only: wait until the request succeeds or fails, showing the file's progress.
    #[arg(long, requires = "asynchronous")]
    pub wait: bool,
    /// A label grouping several requests.
    #[arg(long)]
    pub conversation: Option<String>,
    /// Idempotency key (up to 64 characters).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Sync only: how long to wait for the answer, in milliseconds (default 30000).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// How to reach the node's API.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry status ID`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The request id.
    pub id: String,
    /// How to reach the node's API.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry requests`: recent requests, newest first.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestsArgs {
    /// Only this state: waiting, doing, success or failed.
    #[arg(long)]
    pub state: Option<String>,
    /// Only requests to or from this peer.
    #[arg(long)]
    pub peer: Option<String>,
    /// Only requests this node sent (`out`) or received (`in`), as the table's DIR column says.
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Only this conversation.
    #[arg(long)]
    pub conversation: Option<String>,
    /// How many to show.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Show the page before this cursor (printed as `next` under a full page).
    #[arg(long)]
    pub before: Option<String>,
    /// How to reach the node's API.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry reply CALLBACK_ID`: answer an incoming reply-mode request.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplyArgs {
    /// The callback id (from `ferry pending`).
    pub callback_id: String,
    /// The reply's data, as JSON.
    #[arg(long, conflicts_with = "reject")]
    pub data: Option<String>,
    /// A local file to send with the reply.
    #[arg(long, conflicts_with = "reject")]
    pub file: Option<PathBuf>,
    /// Reject the request with this reason instead of answering it.
    #[arg(long)]
    pub reject: Option<String>,
    /// More replies follow (the reply is not the last).
    #[arg(long, conflicts_with = "reject")]
    pub more: bool,
    /// How to reach the node's API.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// A client of one node's local API.
struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// The API of the node configured in `config` (its `node.api`).
    fn new(config: &Path, args: &ApiArgs) -> Result<Api, CliError> {
        Api::of(&Config::load(config)?, args)
    }

    /// The API at `config`'s `node.api`.
    fn of(config: &Config, args: &ApiArgs) -> Result<Api, CliError> {
        let addr = reachable(config.node.api);
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Api { base: format!("http://{addr}"), token: args.token.clone().filter(|t| !t.is_empty()), http })
    }

    /// Like [`Api::new`], but without `--token` the config's first `api.tokens` is used: whoever
    /// may read the config holds its tokens anyway (systemd's `ExecReload=` runs as the node's user).
    fn as_admin(config: &Path, args: &ApiArgs) -> Result<Api, CliError> {
        let config = Config::load(config)?;
        let mut api = Api::of(&config, args)?;
        if api.token.is_none() {
            api.token = config.api.tokens.first().cloned();
        }
        Ok(api)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `request` and returns the envelope's `data`, or the API's error as a failure.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let response = request.send().await.map_err(|e| {
            CliError::failed(format!(
                "cannot reach the node's API at {} ({}); is `ferry run` running with this config?",
                self.base,
                root_cause(&e)
            ))
        })?;
        let status = response.status();
        let envelope: Value = response.json().await.map_err(|e| {
            CliError::failed(format!("{} answered HTTP {status} without a JSON envelope ({e})", self.base))
        })?;
        if envelope["code"] != 0 {
            let kind = envelope["data"]["error"].as_str().unwrap_or("error");
            let msg = envelope["msg"].as_str().unwrap_or("no message");
            let mut line = format!("{kind} (HTTP {}): {msg}", status.as_u16());
            if let Some(id) = envelope["data"]["id"].as_str() {
                line.push_str(&format!(" [request {id}]"));
            }
            return Err(CliError::failed(line));
        }
        Ok(envelope["data"].clone())
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(self.request(reqwest::Method::GET, path)).await
    }
}

/// The address to call for an API bound to `addr`: a wildcard bind is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
        other => other,
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))
}

fn print_json(value: &Value) {
    out!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn absolute(path: &std::path::Path, what: &str) -> Result<String, CliError> {
    let path = path.canonicalize().map_err(|e| CliError::usage(format!("{what} {}: {e}", path.display())))?;
    path.to_str().map(str::to_owned).ok_or_else(|| CliError::usage(format!("{what} {}: not UTF-8", path.display())))
}

/// The request body of `ferry send`.
fn send_body(args: &SendArgs) -> Result<Value, CliError> {
    let mut form = Map::new();
    for field in &args.form {
        let (k, v) =
            field.split_once('=').ok_or_else(|| CliError::usage(format!("--form {field:?}: write it as KEY=VALUE")))?;
        form.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let mut body = json!({"peer": args.peer, "service": args.service, "path": args.path, "form": form});
    let mut set = |key: &str, value: Value| {
        body[key] = value;
    };
    if let Some(m) = &args.method {
        set("method", m.to_uppercase().into());
    }
    if args.json_body {
        set("encoding", "json".into());
    }
    if let Some(f) = &args.file {
        set("file", absolute(f, "--file")?.into());
    }
    if let Some(f) = &args.file_field {
        set("file_field", f.clone().into());
    }
    if args.asynchronous {
        set("mode", "async".into());
        set("reply", args.reply.into());
    }
    if let Some(c) = &args.conversation {
        set("conversation", c.clone().into());
    }
    if let Some(k) = &args.idempotency_key {
        set("idempotency_key", k.clone().into());
    }
    if let Some(t) = args.timeout_ms {
        set("timeout_ms", t.into());
    }
    Ok(body)
}

/// `ferry send`. A sync answer that is not 2xx exits 1 after printing it.
pub fn send(config: &Path, args: SendArgs) -> Result<(), CliError> {
    let body = send_body(&args)?;
    let api = Api::new(config, &args.api)?;
    let size = match &args.file {
        Some(f) => {
            Some(std::fs::metadata(f).map_err(|e| CliError::usage(format!("--file {}: {e}", f.display())))?.len())
        }
        None => None,
    };
    runtime()?.block_on(async {
        // A bar only where something is awaited: a sync upload, or an async request with --wait.
        let bar = progress_bar(size, args.api.json || (args.asynchronous && !args.wait));
        if args.asynchronous {
            let data = api.call(api.request(reqwest::Method::POST, "/v1/requests").json(&body)).await?;
            let id = data["id"].as_str().unwrap_or_default().to_owned();
            if !args.wait {
                if args.api.json {
                    print_json(&data);
                } else {
                    out!("accepted: {id} ({})", data["state"].as_str().unwrap_or("waiting"));
                    out!("follow it with `ferry status {id}`");
                }
                return Ok(());
            }
            let view = wait_done(&api, &id, bar.as_ref()).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let view = view?;
            if args.api.json {
                print_json(&view);
            } else {
                print_status(&view);
            }
            return match view["state"].as_str() {
                Some("success") => Ok(()),
                _ => Err(CliError::failed(format!(
                    "request {id} failed: {}",
                    view["error"].as_str().unwrap_or("see `ferry status`")
                ))),
            };
        }
        // Sync: the id is known only with the answer, so the bar follows the peer's upload events
        // for a file of this size.
        let watcher = match (&bar, size) {
            (Some(bar), Some(size)) => Some(tokio::spawn(follow_upload(
                api.base.clone(),
                api.token.clone(),
                args.peer.clone(),
                size,
                bar.clone(),
            ))),
            _ => None,
        };
        let answer = api.call(api.request(reqwest::Method::POST, "/v1/requests").json(&body)).await;
        if let Some(w) = watcher {
            w.abort();
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let data = answer?;
        let status = data["status"].as_u64().unwrap_or(0);
        if args.api.json {
            print_json(&data);
        } else {
            out!("{} answered {status} (request {})", args.peer, data["id"].as_str().unwrap_or("?"));
            match &data["body"] {
                Value::String(s) => out!("{s}"),
                other => print_json(other),
            }
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(CliError::failed(format!("the service answered {status}")))
        }
    })
}

fn progress_bar(size: Option<u64>, quiet: bool) -> Option<indicatif::ProgressBar> {
    let size = size.filter(|_| !quiet)?;
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("sending");
    Some(bar)
}

/// Polls the request until it succeeds or fails, moving the bar with its transfer.
async fn wait_done(api: &Api, id: &str, bar: Option<&indicatif::ProgressBar>) -> Result<Value, CliError> {
    loop {
        let view = api.get(&format!("/v1/requests/{id}")).await?;
        if let (Some(bar), Some(done)) = (bar, view["transfer"]["bytes_done"].as_u64()) {
            bar.set_position(done);
        }
        if matches!(view["state"].as_str(), Some("success" | "failed")) {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Follows `GET /v1/events?peer=` and moves the bar with progress events of a file of `size`
/// bytes, sending the `OK` heartbeat. Without events (an older node, a refused socket) the bar
/// simply stays still.
async fn follow_upload(base: String, token: Option<String>, peer: String, size: u64, bar: indicatif::ProgressBar) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let url = format!("{}/v1/events?peer={}", base.replacen("http://", "ws://", 1), urlencode(&peer));
    let Ok(mut request) = url.into_client_request() else { return };
    if let Some(t) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.headers_mut().insert("authorization", t);
    }
    let Ok((socket, _)) = tokio_tungstenite::connect_async(request).await else { return };
    let (mut tx, mut rx) = socket.split();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut following: Option<String> = None;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if tx.send(Message::text("OK")).await.is_err() {
                    return;
                }
            }
            frame = rx.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    if frame.is_none() { return } else { continue }
                };
                let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                if event["type"] != "progress" || event["bytes_total"].as_u64() != Some(size) {
                    continue;
                }
                let id = event["id"].as_str().unwrap_or_default();
                if following.get_or_insert_with(|| id.to_owned()) == id {
                    bar.set_position(event["bytes_done"].as_u64().unwrap_or(0));
                }
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `ferry status ID`.
pub fn status(config: &Path, args: StatusArgs) -> Result<(), CliError> {
    let api = Api::new(config, &args.api)?;
    let view = runtime()?.block_on(api.get(&format!("/v1/requests/{}", urlencode(&args.id))))?;
    if args.api.json {
        print_json(&view);
    } else {
        print_status(&view);
    }
    Ok(())
}

fn print_status(v: &Value) {
    let mode = match (v["mode"].as_str(), v["reply"].as_bool()) {
        (Some(m), Some(true)) => format!("{m}, reply"),
        (Some(m), _) => m.to_owned(),
        _ => "-".to_owned(),
    };
    let mut rows = vec![
        ("id", cell(&v["id"])),
        ("direction", cell(&v["direction"])),
        ("peer", cell(&v["peer"])),
        ("service", cell(&v["service"])),
        ("request", format!("{} {}", cell(&v["method"]), cell(&v["path"]))),
        ("mode", mode),
        ("state", cell(&v["state"])),
    ];
    if !v["error"].is_null() {
        rows.push(("error", cell(&v["error"])));
    }
    if !v["conversation"].is_null() {
        rows.push(("conversation", cell(&v["conversation"])));
    }
    rows.extend([
        ("created", cell(&v["created_at"])),
        ("updated", cell(&v["updated_at"])),
        ("attempts", cell(&v["attempts"])),
    ]);
    if let Some(r) = v["response"].as_object() {
        rows.push(("response", format!("{} {}", cell(&r["status"]), shorten(&cell(&r["body"]), 100))));
    }
    if !v["transfer"].is_null() {
        rows.push(("file", transfer_line(&v["transfer"])));
    }
    if let Some(c) = v["callback"].as_object() {
        let delivered = if c["delivered"] == true { "delivered" } else { "not delivered yet" };
        let mut line =
            format!("{} {} {delivered}, {} attempt(s)", cell(&c["method"]), cell(&c["url"]), cell(&c["attempts"]));
        if !c["last_error"].is_null() {
            line.push_str(&format!(", last error: {}", cell(&c["last_error"])));
        }
        rows.push(("callback", line));
    }
    for (k, val) in rows {
        out!("{k:<13} {val}");
    }
    if let Some(replies) = v["replies"].as_array().filter(|r| !r.is_empty()) {
        out!("replies:");
        let mut t = Table::new(["SEQ", "END", "RECEIVED", "DELIVERED", "FILE", "DATA"]);
        for r in replies {
            t.row([
                cell(&r["seq"]),
                cell(&r["end"]),
                cell(&r["received_at"]),
                cell(&r["delivered"]),
                cell(&r["file"]),
                shorten(
                    &if r["error"].is_null() { cell(&r["data"]) } else { format!("error: {}", cell(&r["error"])) },
                    60,
                ),
            ]);
        }
        out_raw!("{}", t.render_indented(2));
    }
}

/// A request's file for people: its name and size, with, until it is through, how much the
/// peer holds and, while it moves, its rate and the time left; once through, its SHA-256.
fn transfer_line(t: &Value) -> String {
    let name = cell(&t["name"]);
    let (done, size) = (t["bytes_done"].as_u64().unwrap_or(0), t["size"].as_u64());
    let Some(size) = size.filter(|&size| done < size) else {
        let size = size.map_or_else(|| "size unknown".to_owned(), human::size);
        return match t["sha256"].as_str() {
            Some(sha) => format!("{name}  {size}  sha256 {sha}"),
            None => format!("{name}  {size}"),
        };
    };
    let mut line = format!("{name}  {} / {} ({}%)", human::size(done), human::size(size), done * 100 / size);
    match (t["moving"].as_bool(), t["bytes_per_s"].as_u64()) {
        (Some(true), Some(rate)) => {
            line.push_str(&format!("  {}", human::rate(rate)));
            if let Some(left) = human::eta(size - done, rate) {
                line.push_str(&format!("  {left} left"));
            }
        }
        (Some(true), None) => line.push_str("  moving"),
        (Some(false), _) => line.push_str("  not moving now"),
        (None, _) => {}
    }
    line
}

fn shorten(s: &str, max: usize) -> String {
    let s = &s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// A request's direction, as the table of `ferry requests` prints it; the API's names are aliases.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Direction {
    /// Requests this node received.
    #[value(alias = "incoming")]
    In,
    /// Requests this node sent.
    #[value(alias = "outgoing")]
    Out,
}

impl Direction {
    /// The API's name (`GET /v1/requests?direction=`).
    fn api_name(self) -> &'static str {
        match self {
            Direction::In => "incoming",
            Direction::Out => "outgoing",
        }
    }
}

/// `ferry requests`.
pub fn requests(config: &Path, args: RequestsArgs) -> Result<(), CliError> {
    let api = Api::new(config, &args.api)?;
    let query: Vec<(&str, String)> = [
        ("state", args.state.clone()),
        ("peer", args.peer.clone()),
        ("direction", args.direction.map(|d| d.api_name().to_owned())),
        ("conversation", args.conversation.clone()),
        ("limit", args.limit.map(|l| l.to_string())),
        ("before", args.before.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    let page = runtime()?.block_on(api.call(api.request(reqwest::Method::GET, "/v1/requests").query(&query)))?;
    if args.api.json {
        print_json(&page);
        return Ok(());
    }
    let mut t = Table::new(["ID", "DIR", "PEER", "SERVICE", "REQUEST", "MODE", "STATE", "UPDATED"]);
    for r in page["items"].as_array().into_iter().flatten() {
        let dir = if r["direction"] == "outgoing" { "out" } else { "in" };
        t.row([
            cell(&r["id"]),
            dir.to_owned(),
            cell(&r["peer"]),
            cell(&r["service"]),
            format!("{} {}", cell(&r["method"]), cell(&r["path"])),
            cell(&r["mode"]),
            cell(&r["state"]),
            cell(&r["updated_at"]),
        ]);
    }
    out_raw!("{}", t.render());
    if let Some(next) = page["next"].as_str() {
        out!("more: ferry requests --before {next}");
    }
    Ok(())
}

/// `ferry pending`.
pub fn pending(config: &Path, args: ApiArgs) -> Result<(), CliError> {
    let api = Api::new(config, &args)?;
    let list = runtime()?.block_on(api.get("/v1/pending"))?;
    if args.json {
        print_json(&list);
        return Ok(());
    }
    let mut t = Table::new(["CALLBACK_ID", "PEER", "SERVICE", "REQUEST", "FORM", "CREATED"]);
    for p in list.as_array().into_iter().flatten() {
        t.row([
            cell(&p["callback_id"]),
            cell(&p["peer"]),
            cell(&p["service"]),
            format!("{} {}", cell(&p["method"]), cell(&p["path"])),
            shorten(&cell(&p["form"]), 40),
            cell(&p["created_at"]),
        ]);
    }
    out_raw!("{}", t.render());
    Ok(())
}

/// `ferry reply CALLBACK_ID`.
pub fn reply(config: &Path, args: ReplyArgs) -> Result<(), CliError> {
    let mut body = json!({"callback_id": args.callback_id});
    if let Some(reason) = &args.reject {
        body["error"] = reason.clone().into();
    } else {
        if args.data.is_none() && args.file.is_none() {
            return Err(CliError::usage("give the reply with --data JSON and/or --file PATH, or --reject REASON"));
        }
        if let Some(d) = &args.data {
            body["data"] = serde_json::from_str(d).map_err(|e| {
                CliError::usage(format!("--data is not JSON ({e}); quote it, e.g. --data '{{\"ok\":true}}'"))
            })?;
        }
        if let Some(f) = &args.file {
            body["file"] = absolute(f, "--file")?.into();
        }
        body["end"] = (!args.more).into();
    }
    let api = Api::new(config, &args.api)?;
    let data = runtime()?.block_on(api.call(api.request(reqwest::Method::POST, "/v1/replies").json(&body)))?;
    if args.api.json {
        print_json(&data);
    } else if args.reject.is_some() {
        out!("rejected {}", args.callback_id);
    } else {
        out!(
            "reply {} to {} accepted{}",
            cell(&data["seq"]),
            args.callback_id,
            if args.more { " (more to come)" } else { "" }
        );
    }
    Ok(())
}

/// `ferry peers`.
/// `ferry peers`.
#[derive(Debug, Clone, clap::Args)]
pub struct PeersArgs {
    /// List the nodes that dialed with a certificate not pinned here instead, to accept one
    /// (`ferry peer accept`).
    #[arg(long)]
    pub pending: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry peers`: the configured peers and their connections, or with `--pending` the nodes
/// waiting to be pinned.
pub fn peers(config: &Path, args: PeersArgs) -> Result<(), CliError> {
    let api = Api::new(config, &args.api)?;
    let path = if args.pending { "/v1/peers/pending" } else { "/v1/peers" };
    let list = runtime()?.block_on(api.get(path))?;
    if args.api.json {
        print_json(&list);
        return Ok(());
    }
    if args.pending {
        let mut t = Table::new(["FINGERPRINT", "ADDRESS", "FIRST_SEEN", "LAST_SEEN", "ATTEMPTS"]);
        for k in list.as_array().into_iter().flatten() {
            t.row([
                cell(&k["fingerprint"]),
                cell(&k["address"]),
                cell(&k["first_seen"]),
                cell(&k["last_seen"]),
                cell(&k["attempts"]),
            ]);
        }
        out_raw!("{}", t.render());
        return Ok(());
    }
    let mut t = Table::new(["NAME", "ADDRESS", "CONNECTED", "RTT_MS", "LAST_ERROR"]);
    for p in list.as_array().into_iter().flatten() {
        t.row([
            cell(&p["name"]),
            cell(&p["address"]),
            if p["connected"] == true { "yes".into() } else { "no".into() },
            p["rtt_ms"].as_f64().map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
            cell(&p["last_error"]),
        ]);
    }
    out_raw!("{}", t.render());
    for p in list.as_array().into_iter().flatten() {
        let name = cell(&p["name"]);
        let dials = p["dials"].as_array().map(Vec::as_slice).unwrap_or_default();
        for failed in dials.iter().filter(|d| d["answered"] == false && dials.len() > 1) {
            out!(
                "{name}: {} did not answer at {}: {}",
                cell(&failed["address"]),
                cell(&failed["at"]),
                cell(&failed["error"])
            );
        }
        for replaced in p["replaced"].as_array().into_iter().flatten() {
            out!(
                "{name}: rolled over to {}; {} stays pinned until {}",
                cell(&p["fingerprint"]),
                cell(&replaced["fingerprint"]),
                cell(&replaced["until"])
            );
        }
        for held in p["rollovers_offered"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            out!("{name}: sent a new certificate {held}, held for approval: compare it with its admin, then `ferry peer accept {name} --fingerprint {held}`");
        }
    }
    Ok(())
}

/// `ferry events`: what the running node does, as it happens.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only this peer's events.
    #[arg(long)]
    pub peer: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry events`: follows `GET /v1/events`, one line per event (with `--json`, the event as the
/// API sends it), answering the node's heartbeat, until the node closes it or Ctrl-C.
pub fn events(config: &Path, args: EventsArgs) -> Result<(), CliError> {
    let config = Config::load(config)?;
    let api = Api::of(&config, &args.api)?;
    runtime()?.block_on(follow_events(&api, &args, config.api.heartbeat))
}

async fn follow_events(api: &Api, args: &EventsArgs, heartbeat: Duration) -> Result<(), CliError> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let mut url = format!("{}/v1/events", api.base.replacen("http://", "ws://", 1));
    if let Some(peer) = &args.peer {
        url.push_str(&format!("?peer={}", url::form_urlencoded::byte_serialize(peer.as_bytes()).collect::<String>()));
    }
    let mut request = url.into_client_request().map_err(|e| CliError::failed(format!("bad events URL: {e}")))?;
    if let Some(token) = &api.token {
        let value =
            format!("Bearer {token}").parse().map_err(|_| CliError::usage("--token: not a valid header value"))?;
        request.headers_mut().insert("authorization", value);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| {
        CliError::failed(format!(
            "cannot follow the node's events at {} ({e}); is `ferry run` running with this config?",
            api.base
        ))
    })?;
    let (mut answer, mut events) = socket.split();
    let mut beat = tokio::time::interval(heartbeat / 2);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if answer.send(Message::Text("OK".into())).await.is_err() {
                    return Err(CliError::failed("the node closed the events stream"));
                }
            }
            event = events.next() => match event {
                Some(Ok(Message::Text(text))) if args.api.json => out!("{text}"),
                Some(Ok(Message::Text(text))) => out!("{}", event_line(&serde_json::from_str(&text).unwrap_or_default())),
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    eprintln!("ferry: the node closed the events stream: {why}");
                    return Ok(());
                }
                Some(Ok(_)) => {}
                None => return Ok(()),
                Some(Err(e)) => return Err(CliError::failed(format!("the events stream broke: {e}"))),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One event for people: when it was seen, the request, the peer, and what happened.
fn event_line(e: &Value) -> String {
    let what = match e["type"].as_str() {
        Some("state") => format!("state {}", cell(&e["state"])),
        Some("reply") => {
            let end = if e["end"] == true { ", the last" } else { "" };
            let file = e["file"].as_str().map(|f| format!("  file {f}")).unwrap_or_default();
            format!("reply {}{end}  {}{file}", cell(&e["seq"]), e["data"])
        }
        Some("progress") => {
            let (done, total) = (e["bytes_done"].as_u64().unwrap_or(0), e["bytes_total"].as_u64().unwrap_or(0));
            format!("file {} / {}", human::size(done), human::size(total))
        }
        _ => e.to_string(),
    };
    format!("{}  {}  {}  {what}", crate::store::rfc3339(crate::store::now_ms()), cell(&e["id"]), cell(&e["peer"]))
}

/// `ferry peer accept`: pins a node that dialed with a certificate not pinned here.
#[derive(Debug, Clone, clap::Args)]
pub struct AcceptArgs {
    /// The name to pin it under.
    pub name: String,
    /// Its fingerprint as `ferry peers --pending` lists it (a unique beginning of 8 hex digits or
    /// more will do), compared with its admin first.
    #[arg(long)]
    pub fingerprint: String,
    /// Its link address, host:port, when not the one it dialed from.
    #[arg(long)]
    pub address: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ferry peer accept`: takes the waiting node's certificate from the running node, pins it as
/// `ferry peer add` does, and has the node reload.
pub fn accept(config: &Path, args: AcceptArgs) -> Result<(), CliError> {
    let api = Api::as_admin(config, &args.api)?;
    let runtime = runtime()?;
    if Config::load(config)?.peers.iter().any(|p| p.name == args.name) {
        let wanted = crate::config_file::peer::typed_fingerprint(&args.fingerprint)?;
        return runtime.block_on(accept_rollover(&api, &args.name, &wanted));
    }
    let pending = runtime.block_on(api.get("/v1/peers/pending"))?;
    let waiting: Vec<crate::pending::Knock> = serde_json::from_value(pending)
        .map_err(|e| CliError::failed(format!("the node's list of waiting nodes is unreadable: {e}")))?;
    let accepted =
        crate::config_file::peer::accept(config, &waiting, &args.name, &args.fingerprint, args.address.as_deref())
            .map_err(|e| match e.kind {
                // No such node waits: a failure at run time (exit 1), as before.
                crate::config_file::EditKind::NotConfigured => CliError::failed(e.for_command_line()),
                _ => CliError::from(e),
            })?;
    let (address, fingerprint) = (accepted.address, accepted.fingerprint);
    out!("pinned `{}` at {address}, fingerprint {fingerprint}", args.name);
    drop(runtime);
    out!("{}", reload_if_running(config)?);
    Ok(())
}

/// `ferry peer accept` of a configured peer: pins the new certificate it sent, held for the
/// admin (`auto_rollover = false`), whose fingerprint begins with `wanted` (hex).
async fn accept_rollover(api: &Api, name: &str, wanted: &str) -> Result<(), CliError> {
    let peers = api.get("/v1/peers").await?;
    let peer = peers.as_array().into_iter().flatten().find(|p| p["name"] == name);
    let offered: Vec<&str> =
        peer.and_then(|p| p["rollovers_offered"].as_array()).into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(held) = offered.iter().find(|held| held.trim_start_matches("sha256:").starts_with(wanted)) else {
        return Err(CliError::failed(match offered.is_empty() {
            true => format!("`{name}` is pinned already and sent no new certificate to approve"),
            false => format!(
                "`{name}` sent the new certificate {}, not {wanted}…; compare with its admin again",
                offered.join(", ")
            ),
        }));
    };
    let held = held.to_string();
    let path = format!("/v1/peers/{name}/rollover");
    let data = api.call(api.request(reqwest::Method::POST, &path).json(&json!({"fingerprint": held}))).await?;
    out!(
        "pinned `{name}`'s new certificate {held}; its old one stays pinned until {}",
        data["old_pinned_until"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// After an edit of the config file: has the node running with it reload it, when one answers
/// at its `node.api`; says what happened.
pub fn reload_if_running(config: &Path) -> Result<String, CliError> {
    let api = Api::as_admin(config, &ApiArgs { token: None, json: false })?;
    let addr = api.base.trim_start_matches("http://");
    let answers =
        addr.parse().is_ok_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());
    if !answers {
        return Ok(format!("no node answers at {addr}: it reads the file when it starts"));
    }
    let data = runtime()?.block_on(api.call(api.request(reqwest::Method::POST, "/v1/reload")))?;
    Ok(format!("the running node reloaded: {}", data["summary"].as_str().unwrap_or_default()))
}

/// `ferry reload`: the running node reads its config file again; prints what changed, or fails
/// with why the file was refused (the running config stays).
pub fn reload(config: &Path, args: ApiArgs) -> Result<(), CliError> {
    let api = Api::as_admin(config, &args)?;
    let data = runtime()?.block_on(api.call(api.request(reqwest::Method::POST, "/v1/reload")))?;
    if args.json {
        print_json(&data);
    } else {
        out!("reloaded: {}", data["summary"].as_str().unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_api_is_called_on_loopback() {
        assert_eq!(reachable("0.0.0.0:8888".parse().unwrap()).to_string(), "127.0.0.1:8888");
        assert_eq!(reachable("[::]:8888".parse().unwrap()).to_string(), "[::1]:8888");
        assert_eq!(reachable("192.0.2.3:8888".parse().unwrap()).to_string(), "192.0.2.3:8888");
    }

    /// A file under way shows sizes for people, its rate and the time left; one through, its
    /// size and hash; one stopped, that it does not move.
    #[test]
    fn a_file_is_shown_for_people() {
        let gib = 1u64 << 30;
        let moving = json!({"name": "big.bin", "size": 6 * gib, "bytes_done": 1_288_490_189u64, "sha256": null,
                            "path": "/srv/outbox/big.bin", "moving": true, "bytes_per_s": 64 << 20});
        assert_eq!(transfer_line(&moving), "big.bin  1.2 GiB / 6.0 GiB (20%)  64.0 MiB/s  1m 17s left");
        let measuring =
            json!({"name": "big.bin", "size": 6 * gib, "bytes_done": 1, "moving": true, "bytes_per_s": null});
        assert_eq!(transfer_line(&measuring), "big.bin  1 B / 6.0 GiB (0%)  moving");
        let stopped =
            json!({"name": "big.bin", "size": 6 * gib, "bytes_done": 3 * gib, "moving": false, "bytes_per_s": null});
        assert_eq!(transfer_line(&stopped), "big.bin  3.0 GiB / 6.0 GiB (50%)  not moving now");
        let through = json!({"name": "big.bin", "size": 6 * gib, "bytes_done": 6 * gib, "sha256": "ab12",
                             "moving": false, "bytes_per_s": null});
        assert_eq!(transfer_line(&through), "big.bin  6.0 GiB  sha256 ab12");
        let empty = json!({"name": "empty", "size": 0, "bytes_done": 0, "sha256": "e3b0"});
        assert_eq!(transfer_line(&empty), "empty  0 B  sha256 e3b0");
        let unknown = json!({"name": "new.bin", "size": null, "bytes_done": 0, "sha256": null});
        assert_eq!(transfer_line(&unknown), "new.bin  size unknown");
    }

    #[test]
    fn shorten_keeps_short_text_and_marks_cut_text() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdefgh", 5), "abcd…");
    }
}
