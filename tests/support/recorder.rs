//! A local HTTP service that records every call, for both kinds of nodes: as a node's service
//! and as the host's callback receiver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::json;

/// What the recorder saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Seen {
    /// The `X-Ferry-Request-Id` header (service calls).
    pub fn request_id(&self) -> Option<&str> {
        self.headers.get("x-ferry-request-id").map(String::as_str)
    }

    /// The path and the query string, as called.
    pub fn uri(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The text fields: the query string for GET, the urlencoded body otherwise.
    pub fn fields(&self) -> HashMap<String, String> {
        let text = if self.method == "GET" { self.query.clone().unwrap_or_default() } else { self.body.clone() };
        serde_urlencoded::from_str(&text).unwrap_or_default()
    }
}

/// Records every call and answers by path: `/status/{code}` answers that code, `/sleep/{ms}`
/// waits and answers `slept`, `/sleep/{ms}/…` waits and then echoes, `/binary` answers non-UTF-8
/// bytes, `/bytes/{n}` that many bytes, `/text` plain text, `/flaky/{n}/…` fails its first `n` calls; anything else echoes the
/// call as JSON: `{"method", "path", "query", "body", "fields"}`, with `"users": ["Ada"]` added for
/// `/user/list` (the walkthrough's user service).
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    /// Starts a recorder on a free loopback port.
    pub async fn start() -> Recorder {
        Recorder::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the recorder on `addr` (a port reserved earlier, or an address of a test network).
    pub async fn start_on(addr: SocketAddr) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move { answer(&record, method, uri, headers, body).await }
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot bind the recorder on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { addr, seen }
    }

    /// `http://` and its address.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` calls were seen (at most `within`), and returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Service calls carrying `X-Ferry-Request-Id: id`.
    pub fn calls_for(&self, id: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|c| c.request_id() == Some(id)).collect()
    }

    /// Callback deliveries for request `id` (field `id`), as their fields.
    pub fn callbacks_for(&self, id: &str) -> Vec<HashMap<String, String>> {
        self.seen().iter().map(Seen::fields).filter(|f| f.get("id").map(String::as_str) == Some(id)).collect()
    }

    /// Service calls counted by request id.
    pub fn calls_by_id(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for c in self.seen() {
            *counts.entry(c.request_id().unwrap_or("<no request id>").to_owned()).or_insert(0) += 1;
        }
        counts
    }

    /// Callback deliveries counted by (request id, seq).
    pub fn callbacks_by_id_seq(&self) -> HashMap<(String, String), usize> {
        let mut counts = HashMap::new();
        for f in self.seen().iter().map(Seen::fields) {
            let key = (f.get("id").cloned().unwrap_or_default(), f.get("seq").cloned().unwrap_or_default());
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

async fn answer(
    seen: &Mutex<Vec<Seen>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let entry = Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    seen.lock().unwrap().push(entry.clone());
    let echo = || {
        let mut echo = json!({
            "method": entry.method, "path": entry.path, "query": entry.query, "body": entry.body,
            "fields": entry.fields(),
        });
        if entry.path == "/user/list" {
            echo["users"] = json!(["Ada"]);
        }
        axum::Json(echo).into_response()
    };
    let parts: Vec<&str> = entry.path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["status", code] => {
            let code = StatusCode::from_u16(code.parse().unwrap()).unwrap();
            (code, axum::Json(json!({"error": "as asked"}))).into_response()
        }
        ["sleep", ms, rest @ ..] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            if rest.is_empty() {
                "slept".into_response()
            } else {
                echo()
            }
        }
        ["binary"] => ([("content-type", "application/octet-stream")], vec![0xffu8, 0xfe, 0x00, 0x01]).into_response(),
        ["text"] => "plain words".into_response(),
        ["bytes", n] => {
            ([("content-type", "application/octet-stream")], vec![b'x'; n.parse().unwrap()]).into_response()
        }
        ["flaky", n, ..] => {
            // Fails the first `n` calls to this path, then succeeds.
            let calls = seen.lock().unwrap().iter().filter(|s| s.path == entry.path).count();
            if calls <= n.parse::<usize>().unwrap() {
                (StatusCode::SERVICE_UNAVAILABLE, "not yet").into_response()
            } else {
                "ok".into_response()
            }
        }
        _ => echo(),
    }
}
