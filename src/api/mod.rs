//! The local REST API that host applications call (API.md §3).
//!
//! [`router`] builds the whole API over a [`Store`] handle and the peer table; it never touches
//! the link. Every answer is the JSON envelope of [`envelope`].

pub mod envelope;
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
    /// Bearer tokens; empty means loopback callers only.
    pub tokens: Arc<Vec<String>>,
}

/// The API's routes, guarded by the token and loopback rules.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/requests", post(requests::create))
        .route("/v1/peers", get(peers))
        .route("/v1/health", get(health))
        .fallback(|| async {
            ApiError::new(
                Kind::NotFound,
                "no such endpoint; see API.md §3 for the routes",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Kind::NotFound,
                "this endpoint does not take that method; see API.md §3",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// With tokens configured, every call needs one; without, only loopback callers are served.
async fn guard(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.tokens.is_empty() {
        let loopback = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|c| c.0.ip().is_loopback());
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
        let valid = state.tokens.iter().fold(0u8, |any, t| {
            any | t.as_bytes().ct_eq(given.as_bytes()).unwrap_u8()
        });
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
