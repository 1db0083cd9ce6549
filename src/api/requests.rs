//! `POST /v1/requests`: a host app sends a request to a peer's service.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::envelope::{cut, json_body, ok, ApiError, Kind};
use super::openapi::Envelope;
use super::{ApiState, Shared};
use crate::exchange::Failure;
use crate::store::{now_ms, Callback, NewAsync, OutgoingFile};
use crate::wire::{self, Encoding, FormValue, RefusalKind};

/// The body of `POST /v1/requests`, as the host sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRequest {
    peer: String,
    /// A service id; a host may write it as a number.
    #[serde(deserialize_with = "text_or_number")]
    #[schema(value_type = String)]
    service: String,
    path: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    form: Map<String, Value>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    file_field: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    reply: Option<bool>,
    #[serde(default)]
    callback: Option<CallbackSpec>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    conversation: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// Where an async request's results go.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, expecting = r#"an object like {"url": "http://127.0.0.1:8080/done", "method": "POST"}"#)]
struct CallbackSpec {
    url: String,
    #[serde(default)]
    method: Option<String>,
}

/// The async part of a validated request.
struct AsyncPart {
    reply: bool,
    callback: Option<Callback>,
    ttl_s: u64,
}

const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_TTL_S: u64 = 86_400;
/// The longest `ttl_s`: ten years.
const MAX_TTL_S: u64 = 10 * 365 * 86_400;
/// The longest `peer`, `service` and `conversation`, in characters.
const MAX_NAME: usize = 256;

/// Validates the request, hands it to the store and, in sync mode, answers with the service's
/// response or the reason there is none.
#[utoipa::path(post, path = "/v1/requests", tag = "requests",
    summary = "Send a request to a peer's service",
    description = "Sync (default): waits for the service's answer, `data: {id, status, headers, body}`. \
                   Async: answers 202 at once, `data: {id, state}`, once the request is on disk.",
    request_body = NewRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same as `idempotency_key`")),
    responses(
        (status = 200, description = "The service's answer (sync)", body = Envelope),
        (status = 202, description = "Stored (async)", body = Envelope),
        (status = 400, description = "A malformed body or a wrong field (`data.field` names it)", body = Envelope),
        (status = 401, description = "Tokens are configured and none or a wrong one was given", body = Envelope),
        (status = 403, description = "Not allowed", body = Envelope),
        (status = 404, description = "Unknown peer or service", body = Envelope),
        (status = 409, description = "`duplicate` or `in_progress`; `data.id` names the earlier request", body = Envelope),
        (status = 413, description = "Body or file over the limits", body = Envelope),
        (status = 502, description = "`peer_unreachable` or `backend_unreachable`", body = Envelope),
        (status = 503, description = "The remote service is disabled", body = Envelope),
        (status = 504, description = "No answer within `timeout_ms`", body = Envelope),
        (status = 507, description = "`insufficient_storage`: this node's store, or the receiving node's disk for the file, is full", body = Envelope),
    ))]
pub(super) async fn create(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let new: NewRequest = json_body(body)?;
    let idempotency_key = new
        .idempotency_key
        .clone()
        .or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned));
    let (peer, request, async_part, file) = validate(&state, new, idempotency_key)?;
    if let Some(a) = async_part {
        let id = request.id.clone();
        let new = NewAsync {
            peer,
            request,
            reply: a.reply,
            callback: a.callback,
            expires_at: now_ms() + (a.ttl_s as i64).saturating_mul(1000),
            file,
        };
        let (id, stored) = state
            .store
            .insert_outgoing(new)
            .await
            .map_err(|e| super::envelope::store_failed("the request", &e).with("id", id.clone()))?;
        return Ok(ok(StatusCode::ACCEPTED, "Accepted", json!({"id": id, "state": stored})));
    }
    let timeout = Duration::from_millis(request.timeout_ms);
    let id = request.id.clone();
    let outcome = tokio::time::timeout(timeout, state.exchange.request(&peer, request, file)).await.map_err(|_| {
        ApiError::new(Kind::Timeout, format!("no answer from {peer} within timeout_ms={}", timeout.as_millis()))
            .with("id", id.clone())
    })?;
    match outcome {
        Ok(response) => Ok(answer(&id, response)),
        Err(Failure::Refused(wire::Refusal { earlier: Some(earlier), kind, message })) => {
            Err(failure_error(&peer, Failure::Refused(wire::Refusal::new(kind, message))).with("id", earlier))
        }
        Err(failure) => Err(failure_error(&peer, failure).with("id", id)),
    }
}

/// Checks every field and builds the wire request.
fn validate(
    state: &ApiState,
    new: NewRequest,
    idempotency_key: Option<String>,
) -> Result<(String, wire::Request, Option<AsyncPart>, Option<OutgoingFile>), ApiError> {
    check_limits(&new)?;
    let bad = ApiError::bad_request;
    let sync_only =
        |field: &str| bad(format!("field `{field}`: applies to `mode: \"async\"` only")).with("field", field);
    if new.peer.is_empty() || new.service.is_empty() {
        return Err(bad("fields `peer` and `service` must not be empty".to_owned()));
    }
    if state.peers.get(&new.peer).is_none() {
        return Err(ApiError::new(
            Kind::NotFound,
            format!("unknown peer `{}`; configured peers are listed by GET /v1/peers", cut(&new.peer)),
        ));
    }
    let method = new.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
        return Err(bad(format!("field `method`: `{}` is not one of GET, POST, PUT, PATCH, DELETE", cut(&method)))
            .with("field", "method"));
    }
    let encoding = match new.encoding.as_deref() {
        None | Some("form") => Encoding::Form,
        Some("json") => Encoding::Json,
        Some(other) => {
            return Err(
                bad(format!("field `encoding`: `{}` is not `form` or `json`", cut(other))).with("field", "encoding")
            )
        }
    };
    let form = new
        .form
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => FormValue::Text(s),
                Value::Bool(b) => FormValue::Bool(b),
                Value::Number(n) => form_number(n),
                nested @ (Value::Object(_) | Value::Array(_)) if encoding == Encoding::Json => {
                    FormValue::Json(nested.to_string())
                }
                Value::Object(_) | Value::Array(_) => {
                    return Err(bad(format!(
                    "field `form.{k}`: an object or an array is sent only in a JSON body; add \"encoding\": \"json\""
                ))
                    .with("field", format!("form.{k}")))
                }
                Value::Null => {
                    return Err(bad(format!("field `form.{k}`: null cannot be sent; leave the field out"))
                        .with("field", format!("form.{k}")))
                }
            };
            Ok((k, value))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let async_part = match new.mode.as_deref() {
        None | Some("sync") => {
            for (set, field) in
                [(new.reply.is_some(), "reply"), (new.callback.is_some(), "callback"), (new.ttl_s.is_some(), "ttl_s")]
            {
                if set {
                    return Err(sync_only(field));
                }
            }
            None
        }
        Some("async") => {
            let callback = match new.callback {
                None => None,
                Some(spec) => Some(callback_target(state, spec)?),
            };
            let ttl_s = new.ttl_s.unwrap_or(DEFAULT_TTL_S);
            Some(AsyncPart { reply: new.reply.unwrap_or(false), callback, ttl_s })
        }
        Some(other) => {
            return Err(bad(format!("field `mode`: `{}` is not `sync` or `async`", cut(other))).with("field", "mode"))
        }
    };
    let file = match new.file {
        Some(path) => Some(super::files::outgoing(&state.send_roots, state.max_size, &path, new.file_field)?),
        None if new.file_field.is_some() => {
            return Err(bad("`file_field` without `file`".to_owned()).with("field", "file_field"))
        }
        None => None,
    };
    if idempotency_key
        .as_ref()
        .is_some_and(|key| key.is_empty() || key.chars().count() > 64 || key.chars().any(char::is_control))
    {
        return Err(bad("field `idempotency_key`: must be 1 to 64 characters, none a control character".to_owned())
            .with("field", "idempotency_key"));
    }
    let timeout_ms = new.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    let request = wire::Request {
        version: wire::PROTOCOL_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        service: new.service,
        method,
        path: new.path,
        form,
        encoding,
        headers: new.headers.into_iter().collect(),
        conversation: new.conversation,
        timeout_ms,
        file: None,
        idempotency_key,
    };
    // What the receiving node checks again at the boundary to its service, so the host learns early.
    if let Some((field, why)) = wire::boundary_problem(&request, file.as_ref().map(|f| f.field.as_str())) {
        return Err(bad(format!("field `{field}`: {why}")).with("field", field));
    }
    Ok((new.peer, request, async_part, file))
}

/// The absolute callback URL and method: a path is joined to `node.callback_base`. The URL must
/// be http(s), carry no credentials, and go to a host callbacks may reach ([`callback_host_allowed`]).
fn callback_target(state: &ApiState, spec: CallbackSpec) -> Result<Callback, ApiError> {
    let refuse =
        |field: &str, msg: String| ApiError::bad_request(format!("field `{field}`: {msg}")).with("field", field);
    let method = spec.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
    if method != "GET" && method != "POST" {
        return Err(refuse("callback.method", format!("`{}` is not GET or POST", cut(&method))));
    }
    let url = match (spec.url.starts_with('/'), &state.callback_base) {
        (true, Some(base)) => format!("{}{}", base.as_str().trim_end_matches('/'), spec.url),
        (true, None) => {
            return Err(refuse(
                "callback.url",
                "a path needs `node.callback_base` in this node's config; give an absolute URL".to_owned(),
            ))
        }
        (false, _) => spec.url,
    };
    let bad = |msg: String| refuse("callback.url", msg);
    // The URL itself is never quoted: it may hold credentials.
    let url = url::Url::parse(&url).map_err(|e| bad(format!("not a URL or a path ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!("scheme `{}` refused; give an http(s) URL or a path", cut(url.scheme()))));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials (`user:pass@`) are refused in callback URLs, which are stored and shown; \
                        give the URL without them"
            .to_owned()));
    }
    let host = url.host().ok_or_else(|| bad("the URL has no host".to_owned()))?;
    if !callback_host_allowed(state, &host.to_owned()) {
        return Err(bad(format!(
            "host `{}` is not loopback, the host of `node.callback_base` or in `api.callback_hosts`; \
             its admin may add it to `api.callback_hosts`",
            cut(&host.to_string())
        )));
    }
    Ok(Callback { url: url.to_string(), method })
}

/// Whether callbacks may go to `host`: a loopback address or `localhost`, the host of
/// `node.callback_base`, or one of `api.callback_hosts`.
fn callback_host_allowed(state: &ApiState, host: &url::Host) -> bool {
    let loopback = match host {
        url::Host::Domain(name) => name == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.to_canonical().is_loopback(),
    };
    loopback
        || state.callback_base.as_ref().and_then(|b| b.host()).is_some_and(|b| b.to_owned() == *host)
        || state.callback_hosts.contains(host)
}

/// Refuses values over their bounds, before anything quotes them: `path` over [`wire::MAX_PATH`] bytes,
/// names over [`MAX_NAME`] characters, `ttl_s` and `timeout_ms` out of range.
fn check_limits(new: &NewRequest) -> Result<(), ApiError> {
    let refuse =
        |field: &str, rule: String| Err(ApiError::bad_request(format!("field `{field}`: {rule}")).with("field", field));
    if new.path.len() > wire::MAX_PATH {
        return refuse(
            "path",
            format!("{} bytes, over the {}-byte limit; send long data in `form`", new.path.len(), wire::MAX_PATH),
        );
    }
    let names =
        [("peer", Some(&new.peer)), ("service", Some(&new.service)), ("conversation", new.conversation.as_ref())];
    for (field, value) in names {
        if value.is_some_and(|v| v.chars().count() > MAX_NAME) {
            return refuse(field, format!("over {MAX_NAME} characters"));
        }
        if value.is_some_and(|v| v.chars().any(char::is_control)) {
            return refuse(field, "holds a control character (NUL, a line break…)".into());
        }
    }
    if new.ttl_s.is_some_and(|ttl| !(1..=MAX_TTL_S).contains(&ttl)) {
        return refuse("ttl_s", format!("must be 1 to {MAX_TTL_S} seconds (10 years)"));
    }
    if new.timeout_ms.is_some_and(|ms| !(1..=wire::MAX_TIMEOUT_MS).contains(&ms)) {
        return refuse("timeout_ms", format!("must be 1 to {} (one hour)", wire::MAX_TIMEOUT_MS));
    }
    Ok(())
}

/// A form number as the host wrote it. An `i64`, or a float that both renderings (text field and
/// JSON) give back as written, travels as older nodes read it; any other number (a big integer,
/// `1.10`) as its literal text, so that its digits reach the service unchanged.
/// Reads a JSON string, or a non-negative integer as its digits.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or a non-negative integer")]
    enum TextOrNumber {
        Text(String),
        Number(u64),
    }
    Ok(match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => s,
        TextOrNumber::Number(n) => n.to_string(),
    })
}

fn form_number(n: serde_json::Number) -> FormValue {
    let text = n.to_string();
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => FormValue::Int(i),
        (None, Some(f))
            if f.to_string() == text && serde_json::Number::from_f64(f).is_some_and(|j| j.to_string() == text) =>
        {
            FormValue::Float(f)
        }
        _ => FormValue::Number(text),
    }
}

/// The 200 answer: the service's status, headers and body (JSON, text or base64). A stored answer
/// to an idempotency key names the earlier request's id and says `"replayed": true`.
fn answer(id: &str, response: wire::Response) -> Response {
    /// The answer's `data`, written straight out: the service's JSON body is copied, not rebuilt.
    #[derive(serde::Serialize)]
    struct Answered<'a> {
        id: &'a str,
        status: u16,
        headers: Map<String, Value>,
        body: std::borrow::Cow<'a, serde_json::value::RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body_encoding: Option<&'static str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    }
    let (body, body_encoding) = response.body_json();
    let data = Answered {
        id: response.replay_of.as_deref().unwrap_or(id),
        status: response.status,
        headers: response.headers_json(),
        body,
        body_encoding,
        replayed: response.replay_of.is_some(),
    };
    let mut reply = ok(StatusCode::OK, "ActionOK", data);
    let deprecation = response.headers.iter().find(|(k, _)| k == "deprecation");
    if let Some(value) = deprecation.and_then(|(_, v)| HeaderValue::from_str(v).ok()) {
        reply.headers_mut().insert("deprecation", value);
    }
    reply
}

/// The API error for a failed exchange.
fn failure_error(peer: &str, failure: Failure) -> ApiError {
    match failure {
        Failure::PeerUnreachable(why) => {
            ApiError::new(Kind::PeerUnreachable, format!("{why}; check that {peer} runs and is reachable"))
        }
        Failure::Broken(why) => ApiError::new(Kind::PeerUnreachable, why),
        Failure::Refused(refusal) => {
            let kind = match refusal.kind {
                RefusalKind::BadRequest => Kind::BadRequest,
                RefusalKind::Forbidden => Kind::Forbidden,
                RefusalKind::NotFound => Kind::NotFound,
                RefusalKind::Unavailable => Kind::Unavailable,
                RefusalKind::TooLarge => Kind::TooLarge,
                RefusalKind::BackendUnreachable => Kind::BackendUnreachable,
                RefusalKind::Timeout => Kind::Timeout,
                RefusalKind::Internal => Kind::Internal,
                RefusalKind::InProgress => Kind::InProgress,
                RefusalKind::Duplicate => Kind::Duplicate,
                RefusalKind::InsufficientStorage => Kind::InsufficientStorage,
            };
            ApiError::new(kind, format!("{peer}: {}", refusal.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers older nodes read the same stay `Int` and `Float`; only those that would lose or
    /// change digits use the newer `Number`.
    #[test]
    fn form_numbers_keep_their_text_and_old_variants_where_they_can() {
        let number = |text: &str| form_number(text.parse().unwrap());
        assert_eq!(number("7"), FormValue::Int(7));
        assert_eq!(number("-2.5"), FormValue::Float(-2.5));
        for text in ["1.10", "18446744073709551615", "123456789012345678901234567890", "0.0000001"] {
            assert_eq!(number(text), FormValue::Number(text.into()), "{text}");
        }
    }

    /// The sync answer as a host reads it (API.md): the envelope, then `data` with the service's
    /// JSON body as the service sent it, its spacing and numbers kept; a replayed answer names
    /// the earlier request and says so; a deprecated service's header is passed on.
    #[tokio::test]
    async fn a_sync_answer_carries_the_services_json_as_sent() {
        let response = |replay_of: Option<&str>| wire::Response {
            status: 201,
            headers: vec![("content-type".into(), "application/json".into()), ("deprecation".into(), "true".into())],
            body: br#"{"n": 1.50, "big": 123456789012345678901234567890}"#.to_vec(),
            replay_of: replay_of.map(str::to_owned),
        };
        let text = |reply: Response| async move {
            assert_eq!(reply.headers()["deprecation"], "true");
            let bytes = axum::body::to_bytes(reply.into_body(), usize::MAX).await.unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        assert_eq!(
            text(answer("r1", response(None))).await,
            r#"{"code":0,"msg":"ActionOK","data":{"id":"r1","status":201,"headers":{"content-type":"application/json","deprecation":"true"},"body":{"n": 1.50, "big": 123456789012345678901234567890}}}"#
        );
        let replayed = text(answer("r2", response(Some("r1")))).await;
        assert!(
            replayed.contains(r#"{"id":"r1","status":201"#) && replayed.ends_with(r#","replayed":true}}"#),
            "{replayed}"
        );
    }
}
