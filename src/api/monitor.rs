//! Monitoring: a request's status, pages of requests, pending replies, counts.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::envelope::{cut, ok, query, ApiError, Kind};
use super::openapi::Envelope;
use super::Shared;
use crate::store::{RequestFilter, State as RequestState, StoreError};

fn internal(e: StoreError) -> ApiError {
    ApiError::new(Kind::Internal, format!("the store failed: {e}"))
}

/// `GET /v1/requests/{id}`.
#[utoipa::path(get, path = "/v1/requests/{id}", tag = "monitoring", summary = "A request's status",
    params(("id" = String, Path, description = "The request id")),
    responses((status = 200, body = Envelope), (status = 404, description = "Unknown id", body = Envelope)))]
pub(super) async fn one(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    // No id holds a control character: the store is not asked (PostgreSQL's text holds no NUL).
    let found = match id.chars().any(char::is_control) {
        true => None,
        false => state.store.get(&id).await.map_err(internal)?,
    };
    match found {
        Some(view) => Ok(ok(StatusCode::OK, "ActionOK", view)),
        None => Err(ApiError::new(
            Kind::NotFound,
            format!("no request `{}` on this node (synchronous requests are not kept)", cut(&id)),
        )),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    direction: Option<String>,
    state: Option<String>,
    peer: Option<String>,
    conversation: Option<String>,
    /// A service id.
    service: Option<String>,
    /// Text the request id or its idempotency key holds (1 to 256 characters).
    q: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// `GET /v1/requests`: newest first, filtered, paged with `before`.
#[utoipa::path(get, path = "/v1/requests", tag = "monitoring", summary = "Stored requests, newest first",
    params(ListQuery), responses((status = 200, description = "`data: {items, next}`", body = Envelope)))]
pub(super) async fn list(State(state): State<Shared>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q: ListQuery = query(raw.as_deref())?;
    if let Some(d) = &q.direction {
        if d != "outgoing" && d != "incoming" {
            return Err(ApiError::bad_request(format!("`direction={}` is not outgoing or incoming", cut(d)))
                .with("field", "direction"));
        }
    }
    if let Some(s) = &q.state {
        if RequestState::parse(s).is_none() {
            return Err(ApiError::bad_request(format!("`state={}` is not waiting, doing, success or failed", cut(s)))
                .with("field", "state"));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be 1 to 500".to_owned()).with("field", "limit"));
    }
    // An empty value does not filter: a form's cleared field.
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    if q.q.as_ref().is_some_and(|t| t.chars().count() > 256) {
        return Err(ApiError::bad_request("`q` is at most 256 characters".to_owned()).with("field", "q"));
    }
    let filter = RequestFilter {
        direction: q.direction,
        state: q.state,
        peer: given(q.peer),
        conversation: given(q.conversation),
        service: given(q.service),
        text: given(q.q),
        limit,
        before: given(q.before),
    };
    Ok(ok(StatusCode::OK, "ActionOK", state.store.list(filter).await.map_err(internal)?))
}

/// The most records `GET /v1/requests/{id}/evidence` gives.
const EVIDENCE_MAX: usize = 1000;

/// `GET /v1/requests/{id}/evidence`: the request's records in the evidence log and the receipts
/// that cover them, as `ferry audit bundle` finds them.
#[utoipa::path(get, path = "/v1/requests/{id}/evidence", tag = "evidence",
    summary = "A request's evidence records and the receipts covering them, in log order",
    params(("id" = String, Path, description = "The request id")),
    responses(
        (status = 200, description = "`data: {id, records: [record], truncated}`", body = Envelope),
        (status = 404, description = "No request and no record with that id", body = Envelope),
    ))]
pub(super) async fn evidence(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            Kind::NotFound,
            format!("no request `{}` and no record of it in this node's evidence log", cut(&id)),
        )
    };
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(not_found());
    }
    state.store.flush().await.map_err(internal)?;
    let (store, wanted) = (state.store.location().clone(), id.clone());
    let found = tokio::task::spawn_blocking(move || crate::bundle::exchange_records(&store, &wanted))
        .await
        .map_err(|e| ApiError::new(Kind::Internal, format!("reading the evidence log failed: {e}")))?
        .map_err(|e| ApiError::new(Kind::Internal, format!("the evidence log cannot be read: {e}")))?;
    if found.is_empty() && state.store.get(&id).await.map_err(internal)?.is_none() {
        return Err(not_found());
    }
    let truncated = found.len() > EVIDENCE_MAX;
    let records: Vec<serde_json::Value> = found
        .into_iter()
        .take(EVIDENCE_MAX)
        .map(|(seq, text)| serde_json::from_str(&text).unwrap_or_else(|_| json!({"seq": seq, "unreadable": true})))
        .collect();
    Ok(ok(StatusCode::OK, "ActionOK", json!({"id": id, "records": records, "truncated": truncated})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    /// Only points whose interval ends after this time, in milliseconds since the epoch.
    since: Option<i64>,
}

/// `GET /v1/stats/history`: the throughput the node measured, every 10 s for the last 24 h.
#[utoipa::path(get, path = "/v1/stats/history", tag = "monitoring",
    summary = "Throughput history: file bytes and requests per interval of 10 s, the last 24 h",
    params(HistoryQuery),
    responses((status = 200, description = "`data: {every_s, kept_s, points: [{at, at_ms, seconds, bytes, requests, bytes_per_s, requests_per_s}]}`", body = Envelope)))]
pub(super) async fn history(State(state): State<Shared>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q: HistoryQuery = query(raw.as_deref())?;
    let points = state.throughput.since(q.since);
    Ok(ok(
        StatusCode::OK,
        "ActionOK",
        json!({"every_s": crate::throughput::EVERY.as_secs(), "kept_s": crate::throughput::KEPT.as_secs(), "points": points}),
    ))
}

/// `GET /v1/pending`.
#[utoipa::path(get, path = "/v1/pending", tag = "monitoring",
    summary = "Incoming reply-mode requests still awaiting a reply", responses((status = 200, body = Envelope)))]
pub(super) async fn pending(State(state): State<Shared>) -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, "ActionOK", state.store.pending().await.map_err(internal)?))
}

/// `GET /v1/stats`.
#[utoipa::path(get, path = "/v1/stats", tag = "monitoring", summary = "Counts by state, peers, callbacks",
    responses((status = 200, body = Envelope)))]
pub(super) async fn stats(State(state): State<Shared>) -> Result<Response, ApiError> {
    let stats = state.store.stats().await.map_err(internal)?;
    let peers: Vec<_> = state
        .peers
        .all()
        .iter()
        .map(|p| {
            let s = p.status();
            json!({"name": s.name, "connected": s.connected, "rtt_ms": s.rtt_ms, "last_seen": s.last_seen})
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        "ActionOK",
        json!({
            "peers": peers, "outgoing": stats.outgoing, "incoming": stats.incoming,
            "callbacks_pending": stats.callbacks_pending, "transfers_active": state.store.transfers_moving().len(),
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    since: Option<i64>,
    limit: Option<usize>,
}

/// `GET /v1/audit?since=SEQ&limit=N`: evidence records after `since`, oldest first, as JSON lines.
#[utoipa::path(get, path = "/v1/audit", tag = "evidence", summary = "The evidence log as JSON lines",
    params(AuditQuery),
    responses((status = 200, description = "One evidence record per line", content_type = "application/x-ndjson", body = String)))]
pub(super) async fn audit(State(state): State<Shared>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q: AuditQuery = query(raw.as_deref())?;
    if q.since.is_some_and(|since| since < 0) {
        return Err(ApiError::bad_request("`since` must be 0 or more".to_owned()).with("field", "since"));
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be 1 to 10000".to_owned()).with("field", "limit"));
    }
    let records = state.store.audit(q.since.unwrap_or(0), limit).await.map_err(internal)?;
    let mut body = String::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for r in records {
        body.push_str(&r);
        body.push('\n');
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// `GET /metrics`: Prometheus (OpenMetrics) text. Figures held by the store and the peer table
/// are read now.
#[utoipa::path(get, path = "/metrics", tag = "monitoring", summary = "Prometheus metrics",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub(super) async fn metrics(State(state): State<Shared>) -> Result<Response, ApiError> {
    let queues = state.store.queue_counts().await.map_err(internal)?;
    let metrics = &state.metrics;
    metrics.requests.clear();
    for q in queues.requests {
        let labels = crate::metrics::QueueLabels { direction: q.direction, peer: q.peer, state: q.state };
        metrics.requests.get_or_create(&labels).set(q.count);
    }
    metrics.callbacks_pending.set(queues.callbacks_pending);
    let members = state.store.members().await.map_err(internal)?;
    metrics.members_alive.set(members.iter().filter(|m| m.alive).count() as i64);
    metrics.peer_connected.clear();
    metrics.peer_rtt.clear();
    for peer in state.peers.all() {
        let status = peer.status();
        let label = crate::metrics::PeerLabel { peer: status.name };
        metrics.peer_connected.get_or_create(&label).set(status.connected as i64);
        if let Some(rtt) = status.rtt_ms {
            metrics.peer_rtt.get_or_create(&label).set(rtt / 1000.0);
        }
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], metrics.encode()).into_response())
}
