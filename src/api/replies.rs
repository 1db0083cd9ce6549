//! `POST /v1/replies`: a local service answers an asynchronous request it was given a
//! `callbackId` for.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::envelope::{cut, json_body, ok, ApiError, Kind};
use super::openapi::Envelope;
use super::Shared;
use crate::wire;

/// The body of `POST /v1/replies`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewReply {
    /// Also read as `callbackId`, the name the service was given it under.
    #[serde(alias = "callbackId")]
    callback_id: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    end: Option<bool>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    file_field: Option<String>,
}

/// Stores the reply (on disk before the answer) for carrying back to the requesting node.
#[utoipa::path(post, path = "/v1/replies", tag = "replies",
    summary = "A service answers an async request it was given a callbackId for",
    request_body = NewReply,
    responses(
        (status = 202, description = "Stored; `data: {callback_id, seq}`", body = Envelope),
        (status = 400, description = "A malformed body or a wrong field (`data.field` names it)", body = Envelope),
        (status = 401, description = "Tokens are configured and none or a wrong one was given", body = Envelope),
        (status = 403, description = "Not allowed", body = Envelope),
        (status = 404, description = "Unknown or finished callback id", body = Envelope),
        (status = 413, description = "The file is over `files.max_size`", body = Envelope),
        (status = 507, description = "`insufficient_storage`: this node's store is full", body = Envelope),
    ))]
pub(super) async fn create(
    State(state): State<Shared>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let reply: NewReply = json_body(body)?;
    if let Some(why) = reply.file_field.as_deref().and_then(|f| wire::file_field_problem(f, &wire::CALLBACK_FIELDS)) {
        let msg = format!("field `file_field`: {why} (the callback gets {})", wire::CALLBACK_FIELDS.join(", "));
        return Err(ApiError::bad_request(msg).with("field", "file_field"));
    }
    let file = match reply.file {
        Some(path) => Some(super::files::outgoing(&state.send_roots, state.max_size, &path, reply.file_field)?),
        None if reply.file_field.is_some() => {
            return Err(ApiError::bad_request("`file_field` without `file`".to_owned()).with("field", "file_field"))
        }
        None => None,
    };
    if reply.error.is_some() && reply.data.is_some() {
        return Err(ApiError::bad_request("give either `data` or `error`, not both".to_owned()).with("field", "error"));
    }
    let end = reply.end.unwrap_or(true);
    let added = state
        .store
        .add_reply(&reply.callback_id, reply.data, reply.error, end, file)
        .await
        .map_err(|e| super::envelope::store_failed("the reply", &e))?;
    match added {
        Some((_, seq)) => {
            Ok(ok(StatusCode::ACCEPTED, "Accepted", json!({"callback_id": reply.callback_id, "seq": seq})))
        }
        None => Err(ApiError::new(
            Kind::NotFound,
            format!(
                "no request awaits a reply with callback id `{}`: it is unknown or already finished",
                cut(&reply.callback_id)
            ),
        )),
    }
}
