//! `POST /v1/peers/pending/accept`: pins a node that dialed with a certificate not pinned here,
//! from the console, with the code `ferry peer accept` runs
//! ([`crate::config_file::peer::accept`]), then reloads the node as `POST /v1/reload` does.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::envelope::{json_body, ok, ApiError};
use super::openapi::Envelope;
use super::{edit_then_reload, Shared};

/// The body of `POST /v1/peers/pending/accept`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Acceptance {
    /// The name to pin it under.
    name: String,
    /// Its fingerprint, compared with its admin: whole, or a unique beginning of 8 hex digits or
    /// more.
    fingerprint: String,
    /// Its link address, host:port, when not the one it dialed from.
    #[serde(default)]
    address: Option<String>,
}

/// `POST /v1/peers/pending/accept`.
#[utoipa::path(post, path = "/v1/peers/pending/accept", tag = "admin",
    summary = "Pin a node waiting in /v1/peers/pending under a name, as `ferry peer accept` does, then reload",
    request_body = Acceptance,
    responses(
        (status = 200, description = "`data: {name, address, fingerprint, summary}`", body = Envelope),
        (status = 400, description = "A wrong field (`data.field`): a name, address or fingerprint refused", body = Envelope),
        (status = 404, description = "No node waits with that fingerprint", body = Envelope),
        (status = 500, description = "The config file cannot be read or written; `msg` says what to do", body = Envelope),
        (status = 503, description = "The node is stopping", body = Envelope),
    ))]
pub(super) async fn accept(
    State(state): State<Shared>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Acceptance = json_body(body)?;
    let waiting = state.pending.waiting(&state.peers);
    let (accepted, summary) = edit_then_reload(&state, move |path| {
        crate::config_file::peer::accept(path, &waiting, &body.name, &body.fingerprint, body.address.as_deref())
    })
    .await?;
    let data = json!({"name": accepted.name, "address": accepted.address,
        "fingerprint": accepted.fingerprint.to_string(), "summary": summary});
    Ok(ok(StatusCode::OK, "Accepted", data))
}
