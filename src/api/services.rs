//! `GET /v1/services` and `PATCH /v1/services/{id}`: this node's services and who may call them,
//! and changes to them from the console. A change edits the config file with the code `ferry
//! service set` runs ([`crate::config_file::service::set`]) and then reloads the node as `POST
//! /v1/reload` does.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::envelope::{json_body, ok, ApiError};
use super::openapi::Envelope;
use super::{edit_then_reload, Shared};
use crate::config_file::service::{self as edit, Changes};

/// A service as `GET /v1/services` shows it.
#[derive(Debug, Serialize)]
struct Listed {
    id: String,
    base_url: String,
    /// `active`, `deprecated` or `disabled`.
    state: &'static str,
    /// As configured: peer names, or `*`.
    allow: Vec<String>,
    /// The configured peers that may call it now (`*` spelled out).
    callers: Vec<String>,
}

/// `GET /v1/services`.
#[utoipa::path(get, path = "/v1/services", tag = "admin",
    summary = "This node's services in force: id, base URL, state, allow list and the peers that may call each",
    responses((status = 200, description = "`data: [{id, base_url, state, allow, callers}]`", body = Envelope)))]
pub(super) async fn list(State(state): State<Shared>) -> Response {
    let peers: Vec<String> = state.peers.all().iter().map(|p| p.name.clone()).collect();
    let listed: Vec<Listed> = state
        .services
        .all()
        .iter()
        .map(|s| Listed {
            id: s.id.clone(),
            base_url: s.base_url.to_string(),
            state: s.state.as_str(),
            allow: s.allow.clone(),
            callers: peers.iter().filter(|p| s.allows(p)).cloned().collect(),
        })
        .collect();
    ok(StatusCode::OK, "ActionOK", listed)
}

/// The body of `PATCH /v1/services/{id}`: what to change, at least one of them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ServiceChange {
    /// `active` (or `enabled`), `deprecated` or `disabled`.
    #[serde(default)]
    state: Option<String>,
    /// The whole new allow list: configured peers or `"*"`; `[]` allows nobody.
    #[serde(default)]
    allow: Option<Vec<String>>,
    /// The new base URL.
    #[serde(default)]
    base_url: Option<String>,
}

/// `PATCH /v1/services/{id}`.
#[utoipa::path(patch, path = "/v1/services/{id}", tag = "admin",
    summary = "Change a service's state, allow list or base URL in the config file, as `ferry service set` does, then reload",
    params(("id" = String, Path, description = "The service id")),
    request_body = ServiceChange,
    responses(
        (status = 200, description = "`data: {change, summary}`: what changed, and the reload's summary (`null` when nothing changed)", body = Envelope),
        (status = 400, description = "A wrong field (`data.field`), or the node refused the edited file and runs as before", body = Envelope),
        (status = 404, description = "No such service", body = Envelope),
        (status = 500, description = "The config file cannot be read or written; `msg` says what to do", body = Envelope),
        (status = 503, description = "The node is stopping", body = Envelope),
    ))]
pub(super) async fn change(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body: ServiceChange = json_body(body)?;
    let state_given = match body.state.as_deref() {
        None => None,
        Some(text) => Some(edit::parse_state(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`state` {} is not one of active (or enabled), deprecated, disabled",
                crate::config::shown(text)
            ))
            .with("field", "state")
        })?),
    };
    if state_given.is_none() && body.allow.is_none() && body.base_url.is_none() {
        return Err(ApiError::bad_request("give at least one of `state`, `allow` and `base_url`"));
    }
    let changes = Changes { state: state_given, allow: body.allow, base_url: body.base_url };
    let (change, summary) = edit_then_reload(&state, move |path| edit::set(path, &id, changes)).await?;
    Ok(ok(StatusCode::OK, "ActionOK", json!({"change": change, "summary": summary})))
}
