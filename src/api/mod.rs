//! The local REST API that host applications call (API.md §3).
//!
//! [`router`] builds the whole API over a [`Store`] handle and the peer table; it never touches
//! the link. Every answer is the JSON envelope of [`envelope`].

pub mod envelope;
mod events;
pub mod files;
mod monitor;
mod replies;
mod requests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::peer::Peers;
use crate::store::Store;
use envelope::{ok, ApiError, Kind};

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Where requests go.
    pub store: Store,
    /// The peers, for validation and status.
    pub peers: Peers,
    /// This node's name.
    pub name: String,
    /// This node's certificate fingerprint.
    pub fingerprint: String,
    /// Bearer tokens; empty means loopback callers only. Swapped in place on reload.
    pub tokens: Arc<arc_swap::ArcSwap<Vec<String>>>,
    /// Base for callback URLs given as a path.
    pub callback_base: Option<url::Url>,
    /// How often WebSocket clients must send `OK`.
    pub heartbeat: std::time::Duration,
    /// Canonical `files.send_roots`.
    pub send_roots: Arc<Vec<std::path::PathBuf>>,
    /// `files.max_size`.
    pub max_size: u64,
}

/// The API's routes, guarded by the token and loopback rules.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/requests", post(requests::create).get(monitor::list))
        .route("/v1/requests/{id}", get(monitor::one))
        .route("/v1/replies", post(replies::create))
        .route("/v1/pending", get(monitor::pending))
        .route("/v1/stats", get(monitor::stats))
        .route("/v1/events", get(events::stream))
        .route("/v1/peers", get(peers))
        .route("/v1/health", get(health))
        .fallback(|| async { ApiError::new(Kind::NotFound, "no such endpoint; see API.md §3 for the routes") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Kind::NotFound, "this endpoint does not take that method; see API.md §3")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// With tokens configured, every call needs one; without, only loopback callers are served.
async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let tokens = state.tokens.load();
    if tokens.is_empty() {
        let loopback = request.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|c| c.0.ip().is_loopback());
        if !loopback {
            return Err(ApiError::new(
                Kind::Forbidden,
                "this node serves only loopback callers until `api.tokens` is set in its config",
            ));
        }
    } else {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
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

async fn peers(State(state): State<ApiState>) -> Response {
    let all: Vec<_> = state.peers.all().iter().map(|p| p.status()).collect();
    ok(StatusCode::OK, "ActionOK", all)
}

async fn health(State(state): State<ApiState>) -> Response {
    ok(
        StatusCode::OK,
        "ActionOK",
        json!({"name": state.name, "version": env!("CARGO_PKG_VERSION"), "fingerprint": state.fingerprint}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn state(tokens: &[&str]) -> ApiState {
        ApiState {
            store: Store::open(&tempfile::tempdir().unwrap().keep()).unwrap(),
            peers: Peers::default(),
            name: "org-a".into(),
            fingerprint: "sha256:00".into(),
            tokens: Arc::new(arc_swap::ArcSwap::from_pointee(tokens.iter().map(|t| t.to_string()).collect())),
            callback_base: None,
            heartbeat: std::time::Duration::from_secs(15),
            send_roots: Arc::new(vec![]),
            max_size: 1 << 30,
        }
    }

    async fn call(state: ApiState, from: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut request = Request::get("/v1/health").body(Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
        if let Some(t) = token {
            request.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let response = router(state).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
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
