//! The JSON envelope every API answer uses, and the error kinds of API.md §3.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The most characters of a parser's message (which may quote a value) an error message keeps.
const PARSER_CHARS: usize = 256;

pub use crate::wire::cut;

/// The error for a store that could not take a write: 507 when its disk is full (send again once
/// the admin freed space), else 500.
pub fn store_failed(what: &str, e: &crate::store::StoreError) -> ApiError {
    if e.is_disk_full() {
        ApiError::new(
            Kind::InsufficientStorage,
            format!(
                "{what} could not be stored: this node's disk is full; send it again once its admin has freed space"
            ),
        )
    } else {
        ApiError::new(Kind::Internal, format!("{what} could not be stored: {e}"))
    }
}

/// An answer with `code: 0`: `msg` and `data` as given.
pub fn ok(status: StatusCode, msg: &str, data: impl Serialize) -> Response {
    /// Written straight out, without a JSON tree in between.
    #[derive(Serialize)]
    struct Answer<'a, T> {
        code: u8,
        msg: &'a str,
        data: T,
    }
    (status, Json(Answer { code: 0, msg, data })).into_response()
}

/// Parses a JSON object request body, naming the field that is wrong.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(Kind::TooLarge, format!("the request body is too large ({e})")),
        _ => ApiError::bad_request(format!("cannot read the request body: {e}")),
    })?;
    let send = "send a JSON object with `Content-Type: application/json`";
    let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body)) {
        Err(e) if e.inner().is_syntax() || e.inner().is_eof() => {
            let why = crate::wire::cut_to(&e.inner().to_string(), PARSER_CHARS).into_owned();
            Err(ApiError::bad_request(format!("the body is not JSON ({why}); {send}")))
        }
        // Serde would also read an object's fields from an array, by position.
        _ if !object => Err(ApiError::bad_request(format!("the body is JSON but not an object; {send}"))),
        Ok(parsed) => Ok(parsed),
        Err(e) => Err(field_error("the body is not valid", e)),
    }
}

/// Parses a query string, naming the parameter that is wrong.
pub fn query<T: serde::de::DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    let pairs = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs))
        .map_err(|e| field_error("the query is not valid", e))
}

/// Serde's names for JSON's kinds, and the ones a host app knows them by.
const JSON_WORDS: [(&str, &str); 6] = [
    ("invalid type: sequence", "invalid type: an array"),
    ("invalid type: map", "invalid type: an object"),
    ("expected a sequence", "expected an array"),
    ("expected a map", "expected an object"),
    ("unit value", "null"),
    ("floating point", "number"),
];

/// A 400 for a parser's error: the field it names (cut), and its message (shortened) in a JSON
/// writer's words.
fn field_error<E: std::fmt::Display>(whole: &str, e: serde_path_to_error::Error<E>) -> ApiError {
    let why = JSON_WORDS.iter().fold(e.inner().to_string(), |text, (serde, ours)| text.replace(serde, ours));
    let why = crate::wire::cut_to(&why, PARSER_CHARS).into_owned();
    match e.path().to_string().as_str() {
        "." | "?" => ApiError::bad_request(format!("{whole}: {why}")),
        path => {
            let path = cut(path);
            ApiError::bad_request(format!("field `{path}`: {why}")).with("field", path.into_owned())
        }
    }
}

/// The error kinds host apps see in `data.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: malformed JSON or a missing or wrong field.
    BadRequest,
    /// 401: tokens configured and none or a wrong one given.
    Unauthorized,
    /// 403: not allowed.
    Forbidden,
    /// 404: unknown peer, service, request or callback id.
    NotFound,
    /// 409: the same request inside the service's dedupe window.
    Duplicate,
    /// 409: an earlier request with the same idempotency key is still running.
    InProgress,
    /// 413: body or file over the limits.
    TooLarge,
    /// 503: the remote service is disabled.
    Unavailable,
    /// 502: no connection to the peer.
    PeerUnreachable,
    /// 502: the remote node could not reach its service.
    BackendUnreachable,
    /// 504: past `timeout_ms`.
    Timeout,
    /// 500: a bug.
    Internal,
    /// 507: a disk (this node's store, or the receiving node's) has no room.
    InsufficientStorage,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "not_found",
            Kind::Duplicate => "duplicate",
            Kind::InProgress => "in_progress",
            Kind::TooLarge => "too_large",
            Kind::Unavailable => "unavailable",
            Kind::PeerUnreachable => "peer_unreachable",
            Kind::BackendUnreachable => "backend_unreachable",
            Kind::Timeout => "timeout",
            Kind::Internal => "internal",
            Kind::InsufficientStorage => "insufficient_storage",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Duplicate | Kind::InProgress => StatusCode::CONFLICT,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::PeerUnreachable | Kind::BackendUnreachable => StatusCode::BAD_GATEWAY,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}

/// An API error: its kind, a message saying what to do, and optional details for `data`.
#[derive(Debug)]
pub struct ApiError {
    /// The kind.
    pub kind: Kind,
    /// Plain words: what is wrong and what to do.
    pub msg: String,
    /// Extra fields for `data`, beside `error`.
    pub details: Map<String, Value>,
}

impl ApiError {
    /// An error of `kind` with message `msg`.
    pub fn new(kind: Kind, msg: impl Into<String>) -> Self {
        ApiError { kind, msg: msg.into(), details: Map::new() }
    }

    /// A 400 naming what is wrong.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::new(Kind::BadRequest, msg)
    }

    /// Adds a detail field to `data`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        if self.kind == Kind::Internal {
            tracing::error!(msg = %self.msg, details = ?self.details, "internal error");
        }
        let mut data = self.details;
        data.insert("error".into(), self.kind.name().into());
        (status, Json(json!({"code": status.as_u16(), "msg": self.msg, "data": data}))).into_response()
    }
}
