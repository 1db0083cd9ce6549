//! The local REST API that host applications call (API.md §3).
//!
//! [`router`] builds the whole API over a [`Store`] handle and the peer table; it never touches
//! the link. Every answer is the JSON envelope of [`envelope`].

mod console;
pub mod envelope;
mod events;
pub mod files;
mod monitor;
pub mod openapi;
mod pairing;
mod replies;
mod requests;
pub mod serve;
mod services;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::exchange::Exchange;
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::store::Store;
use envelope::{ok, ApiError, Kind};

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Where requests are stored, and read from.
    pub store: Store,
    /// Where synchronous requests go.
    pub exchange: Exchange,
    /// The node's metrics (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// The peers, for validation and status.
    pub peers: Peers,
    /// This node's name.
    pub name: String,
    /// This node's certificates: its fingerprint, and its rollover while one is under way.
    pub keys: crate::rollover::SharedKeys,
    /// Bearer tokens; empty means loopback callers only. Swapped in place on reload.
    pub tokens: Arc<arc_swap::ArcSwap<Vec<String>>>,
    /// Base for callback URLs given as a path; callbacks may go to its host.
    pub callback_base: Option<url::Url>,
    /// `api.callback_hosts`: hosts callbacks may go to besides loopback and `callback_base`'s.
    pub callback_hosts: Arc<Vec<url::Host>>,
    /// How often WebSocket clients must send `OK`.
    pub heartbeat: std::time::Duration,
    /// `files.send_roots`, and the node's own files that are never sent.
    pub send_roots: Arc<crate::host_file::HostFiles>,
    /// `files.max_size`.
    pub max_size: u64,
    /// How time-stamping goes, when `evidence.tsa_url` is set (`/v1/health`).
    pub timestamps: Option<Arc<crate::stamping::Status>>,
    /// The TSA's certificate (DER), for `/v1/audit/verify` to check time-stamps.
    pub tsa_cert: Option<Arc<Vec<u8>>>,
    /// Nodes that dialed with a certificate not pinned here (`GET /v1/peers/pending`).
    pub pending: crate::pending::Pending,
    /// Asks the node to read its config file again (`POST /v1/reload`).
    pub reload: tokio::sync::mpsc::Sender<crate::node::ReloadAnswer>,
    /// Cancelled when the node stops: WebSocket clients are told so before their socket closes.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The config file the node runs with, which the console's edits change.
    pub config_file: Arc<ConfigFile>,
    /// The services in force (`GET /v1/services`).
    pub services: crate::service::Services,
    /// The throughput history (`GET /v1/stats/history`).
    pub throughput: crate::throughput::History,
}

/// The node's config file, edited by one API call at a time.
#[derive(Debug)]
pub struct ConfigFile {
    /// Where it is.
    pub path: std::path::PathBuf,
    /// Held through each edit and the reload that follows it.
    edits: tokio::sync::Mutex<()>,
}

impl ConfigFile {
    /// The config file at `path`.
    pub fn new(path: std::path::PathBuf) -> Self {
        ConfigFile { path, edits: tokio::sync::Mutex::new(()) }
    }
}

/// The state the handlers get: one allocation shared by all, so that a request clones a pointer,
/// not the state's fields (cloning them was 2–3% of a relay node's CPU).
pub type Shared = Arc<ApiState>;

/// The API's routes and their OpenAPI document, built from the same annotated handlers.
pub fn routes() -> (Router<Shared>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(utoipa_axum::routes!(requests::create, monitor::list))
        .routes(utoipa_axum::routes!(monitor::one))
        .routes(utoipa_axum::routes!(monitor::evidence))
        .routes(utoipa_axum::routes!(replies::create))
        .routes(utoipa_axum::routes!(monitor::pending))
        .routes(utoipa_axum::routes!(monitor::stats))
        .routes(utoipa_axum::routes!(monitor::history))
        .routes(utoipa_axum::routes!(services::list))
        .routes(utoipa_axum::routes!(services::change))
        .routes(utoipa_axum::routes!(pairing::accept))
        .routes(utoipa_axum::routes!(events::stream))
        .routes(utoipa_axum::routes!(peers))
        .routes(utoipa_axum::routes!(pending_peers))
        .routes(utoipa_axum::routes!(accept_rollover))
        .routes(utoipa_axum::routes!(health))
        .routes(utoipa_axum::routes!(reload))
        .routes(utoipa_axum::routes!(monitor::audit))
        .routes(utoipa_axum::routes!(console::audit_verify))
        .routes(utoipa_axum::routes!(console::outbox))
        .routes(utoipa_axum::routes!(monitor::metrics))
        .split_for_parts()
}

/// The API's routes, guarded by the token and loopback rules, and `/openapi.json`.
pub fn router(state: ApiState) -> Router {
    let state = Arc::new(state);
    let (routes, doc) = routes();
    routes
        .route("/openapi.json", openapi::handler(doc))
        .route("/", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .fallback(|| async { ApiError::new(Kind::NotFound, "no such endpoint; see docs/API.md §3 for the routes") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Kind::NotFound, "this endpoint does not take that method; see docs/API.md §3")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// With tokens configured, every call needs one; without, only loopback callers are served.
///
/// The console's static page and assets need no token (they hold no data, and the page asks for
/// the token); the events WebSocket also takes the token as a subprotocol, since browsers cannot
/// set headers on it. Browsers' requests from other origins, and (without tokens) to a
/// non-loopback host name, are refused.
async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Result<Response, ApiError> {
    let tokens = state.tokens.load();
    if let Some(why) = console::browser_refusal(request.headers(), tokens.is_empty()) {
        return Err(ApiError::new(Kind::Forbidden, why));
    }
    if tokens.is_empty() {
        let loopback = request.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|c| c.0.ip().is_loopback());
        if !loopback {
            return Err(ApiError::new(
                Kind::Forbidden,
                "this node serves only loopback callers until `api.tokens` is set in its config",
            ));
        }
    } else if !console::STATIC_PATHS.contains(&request.uri().path()) {
        let header = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let given = match header {
            Some(token) => token,
            None if request.uri().path() == "/v1/events" => {
                console::websocket_token(request.headers()).unwrap_or_default()
            }
            None => String::new(),
        };
        let valid = tokens.iter().fold(0u8, |any, t| any | t.as_bytes().ct_eq(given.as_bytes()).unwrap_u8());
        if valid == 0 {
            return Err(ApiError::new(
                Kind::Unauthorized,
                "send `Authorization: Bearer <token>` with a token from `api.tokens`",
            ));
        }
    }
    Ok(next.run(request).await)
}

/// `GET /v1/peers`.
#[utoipa::path(get, path = "/v1/peers", tag = "monitoring", summary = "The configured peers and their connections",
    responses((status = 200, body = openapi::Envelope)))]
async fn peers(State(state): State<Shared>) -> Response {
    let all: Vec<_> = state.peers.all().iter().map(|p| p.status()).collect();
    ok(StatusCode::OK, "ActionOK", all)
}

/// `GET /v1/peers/pending`.
#[utoipa::path(get, path = "/v1/peers/pending", tag = "monitoring",
    summary = "Nodes that dialed with a certificate not pinned here, most recent first: fingerprint, address, times, certificate",
    responses((status = 200, body = openapi::Envelope)))]
async fn pending_peers(State(state): State<Shared>) -> Response {
    ok(StatusCode::OK, "ActionOK", state.pending.waiting(&state.peers))
}

/// The body of `POST /v1/peers/{name}/rollover`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RolloverApproval {
    /// The new certificate's fingerprint, as compared with the peer's admin.
    fingerprint: String,
}

/// `POST /v1/peers/{name}/rollover`.
#[utoipa::path(post, path = "/v1/peers/{name}/rollover", tag = "peers",
    summary = "Pin a peer's new certificate held for approval (auto_rollover = false), after comparing its fingerprint",
    params(("name" = String, Path, description = "The peer's name")),
    request_body = RolloverApproval,
    responses(
        (status = 200, description = "Pinned beside the old one until the rollover's grace ends", body = openapi::Envelope),
        (status = 400, description = "A malformed body", body = openapi::Envelope),
        (status = 404, description = "No such peer, or no rollover of it with this fingerprint is held", body = openapi::Envelope),
        (status = 403, description = "Another peer pins that certificate", body = openapi::Envelope),
    ))]
async fn accept_rollover(
    State(state): State<Shared>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let approval: RolloverApproval = envelope::json_body(body)?;
    let peer = state.peers.get(&name).ok_or_else(|| {
        ApiError::new(Kind::NotFound, format!("no peer `{name}` is configured; `ferry peer list` shows them"))
    })?;
    let offered = peer.offered();
    let held = offered.iter().find(|o| crate::rollover::new_fingerprint(o).to_string() == approval.fingerprint);
    let Some(statement) = held.cloned() else {
        let what = match offered.as_slice() {
            [] => "none is held".to_owned(),
            held => {
                let held: Vec<String> = held.iter().map(|o| crate::rollover::new_fingerprint(o).to_string()).collect();
                format!("held: {}", held.join(", "))
            }
        };
        return Err(ApiError::new(
            Kind::NotFound,
            format!(
                "`{name}` sent no new certificate {} ({what}); compare fingerprints with its admin again",
                approval.fingerprint
            ),
        ));
    };
    let until = crate::store::rfc3339(statement.until_ms);
    crate::rollover::pin(&state.peers, &state.store, &peer, statement)
        .await
        .map_err(|why| ApiError::new(Kind::Forbidden, why))?;
    Ok(ok(
        StatusCode::OK,
        "Pinned",
        json!({"peer": name, "fingerprint": approval.fingerprint, "old_pinned_until": until}),
    ))
}

/// `GET /v1/health`.
#[utoipa::path(get, path = "/v1/health", tag = "monitoring", summary = "`{name, version, fingerprint}` once the node serves, and `timestamps` with a TSA",
    responses((status = 200, body = openapi::Envelope)))]
async fn health(State(state): State<Shared>) -> Response {
    let keys = state.keys.load();
    let mut data = json!({
        "name": state.name,
        "version": env!("CARGO_PKG_VERSION"),
        "fingerprint": keys.current.fingerprint.to_string(),
    });
    if let Some((previous, statement)) = keys.previous() {
        data["rollover"] = json!({
            "previous": previous.fingerprint.to_string(),
            "until": crate::store::rfc3339(statement.until_ms),
        });
    }
    if let Some(status) = &state.timestamps {
        data["timestamps"] = json!(status.health());
    }
    data["store"] = match state.store.location() {
        crate::store::Location::Sqlite(_) => json!({"backend": "sqlite"}),
        crate::store::Location::Postgres { member, .. } => {
            let members = state.store.members().await.unwrap_or_default();
            json!({
                "backend": "postgres",
                "member": member,
                "members_alive": members.iter().filter(|m| m.alive).count(),
                "members": members,
            })
        }
    };
    ok(StatusCode::OK, "ActionOK", data)
}

/// `POST /v1/reload`.
#[utoipa::path(post, path = "/v1/reload", tag = "admin",
    summary = "Read the config file again, as SIGHUP does: peers, services and tokens",
    responses(
        (status = 200, description = "Reloaded; `data.summary` says what changed", body = openapi::Envelope),
        (status = 400, description = "The file is refused and the running config stays; `msg` says why", body = openapi::Envelope),
        (status = 503, description = "The node is stopping", body = openapi::Envelope),
    ))]
async fn reload(State(state): State<Shared>) -> Result<Response, ApiError> {
    match reload_now(&state).await {
        Ok(summary) => Ok(ok(StatusCode::OK, "Reloaded", json!({"summary": summary}))),
        Err(Reload::Stopping) => Err(ApiError::new(Kind::Unavailable, "the node is stopping; nothing was reloaded")),
        Err(Reload::Refused(why)) => Err(ApiError::bad_request(format!(
            "reload refused, the running config stays in force; fix the file and reload again: {why}"
        ))),
    }
}

/// Why a reload did not happen.
enum Reload {
    /// The node is stopping.
    Stopping,
    /// The node refused the file; the running config stays.
    Refused(String),
}

/// Has the node read its config file again, as SIGHUP does: what changed.
async fn reload_now(state: &Shared) -> Result<String, Reload> {
    let (answer, outcome) = tokio::sync::oneshot::channel();
    state.reload.send(answer).await.map_err(|_| Reload::Stopping)?;
    outcome.await.map_err(|_| Reload::Stopping)?.map_err(Reload::Refused)
}

/// Runs `edit` on the node's config file (one edit at a time, off the async threads), then has
/// the node reload it: what the edit returned, and the reload's summary.
async fn edit_then_reload<T: Send + 'static>(
    state: &Shared,
    edit: impl FnOnce(&std::path::Path) -> Result<T, crate::config_file::EditError> + Send + 'static,
) -> Result<(T, String), ApiError> {
    use crate::config_file::EditKind;
    if state.stopping.is_cancelled() {
        return Err(ApiError::new(Kind::Unavailable, "the node is stopping; nothing was changed"));
    }
    let _one_at_a_time = state.config_file.edits.lock().await;
    let path = state.config_file.path.clone();
    let edited = tokio::task::spawn_blocking(move || edit(&path))
        .await
        .map_err(|e| ApiError::new(Kind::Internal, format!("the edit of the config file failed: {e}")))?;
    let edited = edited.map_err(|e| {
        let kind = match e.kind {
            EditKind::NotConfigured => Kind::NotFound,
            EditKind::Invalid => Kind::BadRequest,
            EditKind::File | EditKind::Failed => Kind::Internal,
        };
        let error = ApiError::new(kind, e.for_api());
        match e.field {
            Some(field) => error.with("field", field),
            None => error,
        }
    })?;
    match reload_now(state).await {
        Ok(summary) => Ok((edited, summary)),
        Err(Reload::Stopping) => Err(ApiError::new(
            Kind::Unavailable,
            "the config file was changed, but the node is stopping: it reads the file at its next start",
        )),
        Err(Reload::Refused(why)) => Err(ApiError::bad_request(format!(
            "the config file was changed, but the node refused to reload it and runs as before; fix the file \
             and reload (POST /v1/reload): {why}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn state(tokens: &[&str]) -> ApiState {
        let store = Store::open(&tempfile::tempdir().unwrap().keep()).unwrap();
        ApiState {
            exchange: Exchange::new(Arc::new(crate::exchange::NoLink), store.clone(), Arc::default()),
            metrics: Arc::default(),
            store,
            peers: Peers::default(),
            name: "org-a".into(),
            keys: crate::rollover::Keys::single(crate::identity::Identity::generate("org-a").unwrap())
                .unwrap()
                .shared(),
            tokens: Arc::new(arc_swap::ArcSwap::from_pointee(tokens.iter().map(|t| t.to_string()).collect())),
            callback_base: None,
            callback_hosts: Arc::new(vec![]),
            heartbeat: std::time::Duration::from_secs(15),
            send_roots: Default::default(),
            timestamps: None,
            tsa_cert: None,
            reload: tokio::sync::mpsc::channel(1).0,
            pending: Default::default(),
            stopping: Default::default(),
            max_size: 1 << 30,
            config_file: Arc::new(ConfigFile::new("/nonexistent/ferry.toml".into())),
            services: crate::service::Services::new(vec![]),
            throughput: Default::default(),
        }
    }

    /// A node that is stopping (its reloader gone) reloads nothing and says so; one that is
    /// running answers with what its reload found.
    #[tokio::test]
    async fn a_reload_is_answered_with_its_outcome_or_refused_while_stopping() {
        async fn reload(state: ApiState) -> (StatusCode, serde_json::Value) {
            let mut request = Request::post("/v1/reload").body(Body::empty()).unwrap();
            request.extensions_mut().insert(ConnectInfo("127.0.0.1:9".parse::<SocketAddr>().unwrap()));
            let response = router(state).oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice(&body).unwrap())
        }
        let (status, env) = reload(state(&[])).await;
        assert_eq!((status, &env["data"]["error"]), (StatusCode::SERVICE_UNAVAILABLE, &"unavailable".into()), "{env}");

        let (asks, mut asked) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let answer: crate::node::ReloadAnswer = asked.recv().await.unwrap();
            answer.send(Err("peer[0].cert: no such file".into())).unwrap();
        });
        let (status, env) = reload(ApiState { reload: asks, ..state(&[]) }).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{env}");
        assert!(env["msg"].as_str().unwrap().contains("the running config stays in force"), "{env}");
    }

    async fn call(state: ApiState, from: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
        call_path(state, "/v1/health", from, token).await
    }

    async fn call_path(
        state: ApiState,
        path: &str,
        from: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::get(path).body(Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
        if let Some(t) = token {
            request.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let response = router(state).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn the_console_page_follows_the_same_rules() {
        let tokens = ["0123456789abcdef-one"];
        for path in ["/", "/console/app.js", "/console/app.css"] {
            // The static page needs no token (it asks for one) ...
            let (status, _) = call_path(state(&tokens), path, "192.0.2.7:5000", None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            // ... but without tokens only loopback callers get even the page.
            let (status, body) = call_path(state(&[]), path, "192.0.2.7:5000", None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            assert_eq!(body["data"]["error"], "forbidden");
            let (status, _) = call_path(state(&[]), path, "127.0.0.1:5000", None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        for path in ["/v1/outbox", "/v1/audit/verify", "/v1/events", "/v1/pending"] {
            let (status, body) = call_path(state(&tokens), path, "127.0.0.1:5000", None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            let (status, body) = call_path(state(&[]), path, "192.0.2.7:5000", None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        }
        let (status, body) = call_path(state(&tokens), "/v1/outbox", "192.0.2.7:5000", Some(tokens[0])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["files"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn the_openapi_document_lists_every_route_and_every_route_it_lists_is_served() {
        let (status, doc) = {
            let mut request = Request::get("/openapi.json").body(Body::empty()).unwrap();
            request.extensions_mut().insert(ConnectInfo("127.0.0.1:5000".parse::<SocketAddr>().unwrap()));
            let response = router(state(&[])).oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        };
        assert_eq!(status, StatusCode::OK);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
        let paths = doc["paths"].as_object().unwrap();
        // API.md §3's routes, all of them.
        for (path, method) in [
            ("/v1/requests", "post"),
            ("/v1/requests", "get"),
            ("/v1/requests/{id}", "get"),
            ("/v1/replies", "post"),
            ("/v1/pending", "get"),
            ("/v1/stats", "get"),
            ("/v1/peers", "get"),
            ("/v1/health", "get"),
            ("/v1/events", "get"),
            ("/v1/audit", "get"),
            ("/metrics", "get"),
            ("/v1/services", "get"),
            ("/v1/services/{id}", "patch"),
            ("/v1/peers/pending/accept", "post"),
            ("/v1/requests/{id}/evidence", "get"),
            ("/v1/stats/history", "get"),
        ] {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is documented");
        }
        assert!(doc["components"]["schemas"]["NewRequest"]["properties"]["idempotency_key"].is_object());
        // Every documented operation reaches a handler, not the fallback.
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                let uri = path.replace("{id}", "some-id");
                let mut request =
                    Request::builder().method(method.to_uppercase().as_str()).uri(&uri).body(Body::empty()).unwrap();
                request.extensions_mut().insert(ConnectInfo("127.0.0.1:5000".parse::<SocketAddr>().unwrap()));
                let response = router(state(&[])).oneshot(request).await.unwrap();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
                let body = String::from_utf8_lossy(&body);
                assert!(
                    !body.contains("no such endpoint") && !body.contains("does not take that method"),
                    "{method} {uri}: {body}"
                );
            }
        }
    }

    #[tokio::test]
    async fn without_tokens_only_loopback_callers_are_served() {
        let (status, body) = call(state(&[]), "127.0.0.1:5000", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"]["name"], "org-a");
        let (status, body) = call(state(&[]), "[::1]:5000", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(state(&[]), "192.0.2.7:5000", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["data"]["error"], "forbidden");
    }

    #[tokio::test]
    async fn with_tokens_every_caller_needs_one() {
        let tokens = ["0123456789abcdef-one", "0123456789abcdef-two"];
        for (from, token, want) in [
            ("192.0.2.7:5000", Some("0123456789abcdef-two"), StatusCode::OK),
            ("127.0.0.1:5000", Some("0123456789abcdef-one"), StatusCode::OK),
            ("127.0.0.1:5000", None, StatusCode::UNAUTHORIZED),
            ("192.0.2.7:5000", Some("0123456789abcdef-on"), StatusCode::UNAUTHORIZED),
            ("192.0.2.7:5000", Some(""), StatusCode::UNAUTHORIZED),
        ] {
            let (status, body) = call(state(&tokens), from, token).await;
            assert_eq!(status, want, "{from} {token:?}: {body}");
            if want != StatusCode::OK {
                assert_eq!(body["data"]["error"], "unauthorized");
            }
        }
    }
}
