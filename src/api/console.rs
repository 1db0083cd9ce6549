//! The operator console: a page served at `GET /` that shows the node's throughput history,
//! peers, nodes waiting to be pinned, services and who may call them, queues, transfers, pending
//! approvals, requests filtered by the node with each one's detail, failures and the evidence
//! log, live from `/v1/events`. It changes things only through the API: `PATCH
//! /v1/services/{id}`, `POST /v1/peers/pending/accept`, `POST /v1/replies`.
//!
//! The page is plain HTML, JavaScript and CSS embedded in the binary. It holds no data itself:
//! everything it shows comes from the API with the same token rules as any host app. With tokens
//! configured the page (which is static) is served to anyone, asks for a token, keeps it in the
//! tab's `sessionStorage`, and sends it as `Authorization: Bearer` on its calls and, for the
//! WebSocket (where browsers cannot set headers), as the subprotocol `bearer.<base64url(token)>`
//! beside the subprotocol `ferry`, which the guard accepts on `/v1/events` only.
//!
//! Besides the page this module adds two endpoints the page needs: `GET /v1/outbox` (the files a
//! reply may carry) and `GET /v1/audit/verify` (the evidence log's verification state).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use serde_json::json;

use super::envelope::{ok, ApiError, Kind};
use super::Shared;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// The paths of the page and its assets: static, holding no data, so that with tokens set they
/// are served before the page has a token to send.
pub(super) const STATIC_PATHS: [&str; 3] = ["/", "/console/app.js", "/console/app.css"];

/// The WebSocket subprotocol the page asks for (and the server selects) on `/v1/events`.
pub(super) const SUBPROTOCOL: &str = "ferry";

/// The prefix of the subprotocol that carries the token, base64url-encoded without padding.
const TOKEN_PROTOCOL: &str = "bearer.";

/// How many files `GET /v1/outbox` lists at most, and how deep it looks below a send root.
const OUTBOX_MAX_FILES: usize = 1000;
const OUTBOX_MAX_DEPTH: usize = 6;

/// Headers for the page: no framing (the approve button must not be clickjacked), scripts and
/// connections only to this node, no referrer.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

/// `GET /`: the page, with the node's heartbeat so that the page keeps its WebSocket open.
pub(super) async fn index(State(state): State<Shared>) -> Response {
    let heartbeat_ms = state.heartbeat.as_millis().to_string();
    let page = INDEX.replace("{{HEARTBEAT_MS}}", &heartbeat_ms);
    (page_headers("text/html; charset=utf-8"), page).into_response()
}

/// `GET /console/app.js`.
pub(super) async fn script() -> Response {
    (page_headers("text/javascript; charset=utf-8"), SCRIPT).into_response()
}

/// `GET /console/app.css`.
pub(super) async fn style() -> Response {
    (page_headers("text/css; charset=utf-8"), STYLE).into_response()
}

/// The token a browser's WebSocket handshake carries as a subprotocol, if any.
pub(super) fn websocket_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL))
        .find_map(|b64| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Why a browser's request must be refused, if it must: a page of another origin calling this
/// node (`Origin` not naming the `Host`), or, when the node serves loopback callers without
/// tokens, a `Host` that is not a loopback name (a DNS-rebound page). Callers that send neither
/// header, as host apps do, are not affected.
pub(super) fn browser_refusal(headers: &HeaderMap, loopback_only: bool) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
        if origin_host.is_none() || origin_host != host {
            return Some("a page of another origin may not call this node's API");
        }
    }
    if loopback_only {
        if let Some(host) = host {
            if !loopback_host(host) {
                return Some(
                    "without `api.tokens` this node serves only loopback callers that name it as 127.0.0.1, [::1] \
                     or localhost",
                );
            }
        }
    }
    None
}

/// Whether a `Host` header names this machine's loopback interface.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, port)| if port.parse::<u16>().is_ok() { n } else { host }),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One file a reply may carry.
#[derive(Debug, Serialize, PartialEq)]
pub struct OutboxFile {
    /// Its absolute path, as `POST /v1/replies` takes it.
    pub path: String,
    /// Its path below its send root, for display.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last modified, RFC 3339.
    pub modified: Option<String>,
}

/// `GET /v1/outbox`: the regular files below `files.send_roots` (not following links, leaving
/// out names beginning with `.`), sorted by path, at most [`OUTBOX_MAX_FILES`].
#[utoipa::path(get, path = "/v1/outbox", tag = "files", summary = "Files below files.send_roots a reply may carry",
    responses((status = 200, description = "`data: {roots, files: [{path, name, size, modified}], truncated}`",
               body = super::openapi::Envelope)))]
pub(super) async fn outbox(State(state): State<Shared>) -> Result<Response, ApiError> {
    let roots: Vec<PathBuf> = state.send_roots.roots().map(PathBuf::from).collect();
    let listed = roots.clone();
    let (files, truncated) = tokio::task::spawn_blocking(move || list_outbox(&listed))
        .await
        .map_err(|e| ApiError::new(Kind::Internal, format!("listing the send roots failed: {e}")))?;
    let roots: Vec<_> = roots.iter().map(|r| r.to_string_lossy().into_owned()).collect();
    Ok(ok(StatusCode::OK, "ActionOK", json!({"roots": roots, "files": files, "truncated": truncated})))
}

fn list_outbox(roots: &[PathBuf]) -> (Vec<OutboxFile>, bool) {
    let mut files = Vec::new();
    let mut truncated = false;
    for root in roots {
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(kind) = entry.file_type() else { continue };
                let path = entry.path();
                if kind.is_dir() && depth < OUTBOX_MAX_DEPTH {
                    stack.push((path, depth + 1));
                } else if kind.is_file() {
                    if files.len() == OUTBOX_MAX_FILES {
                        truncated = true;
                        continue;
                    }
                    let meta = entry.metadata().ok();
                    files.push(OutboxFile {
                        name: relative_name(root, &path),
                        path: path.to_string_lossy().into_owned(),
                        size: meta.as_ref().map_or(0, |m| m.len()),
                        modified: meta
                            .and_then(|m| m.modified().ok())
                            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    });
                }
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    (files, truncated)
}

fn relative_name(root: &Path, path: &Path) -> String {
    let root_name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let below = path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned();
    if root_name.is_empty() {
        below
    } else {
        format!("{root_name}/{below}")
    }
}

/// `GET /v1/audit/verify`: the whole evidence log checked as `ferry audit verify` does, against
/// the pinned peer certificates: `{intact: true, records, receipts}` or `{intact: false, seq, why}`.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "evidence",
    summary = "The evidence log's chain and receipts checked, as `ferry audit verify` does",
    responses((status = 200, description = "`data: {intact: true, records, receipts}` or `{intact: false, seq, why}`",
               body = super::openapi::Envelope)))]
pub(super) async fn audit_verify(State(state): State<Shared>) -> Result<Response, ApiError> {
    let certs: HashMap<_, _> = state.peers.all().iter().map(|p| (p.name.clone(), p.every_cert())).collect();
    let verdict = state
        .store
        .verify_log(certs, state.tsa_cert.as_deref().cloned())
        .await
        .map_err(|e| ApiError::new(Kind::Internal, format!("the evidence log cannot be read: {e}")))?;
    let data = match verdict {
        Ok(intact) => json!({"intact": true, "records": intact.records, "receipts": intact.receipts,
            "timestamps": intact.timestamps, "stamped_seq": intact.stamped}),
        Err(broken) => json!({"intact": false, "seq": broken.seq, "why": broken.why}),
    };
    Ok(ok(StatusCode::OK, "ActionOK", data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_token_rides_in_a_subprotocol() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret token/+=");
        let h = headers(&[("sec-websocket-protocol", &format!("ferry, bearer.{b64}"))]);
        assert_eq!(websocket_token(&h).as_deref(), Some("s3cret token/+="));
        assert_eq!(websocket_token(&headers(&[("sec-websocket-protocol", "ferry")])), None);
        assert_eq!(websocket_token(&headers(&[("sec-websocket-protocol", "bearer.!!")])), None);
        assert_eq!(websocket_token(&HeaderMap::new()), None);
    }

    #[test]
    fn browsers_of_other_origins_and_rebound_names_are_refused() {
        let same = headers(&[("host", "127.0.0.1:8888"), ("origin", "http://127.0.0.1:8888")]);
        assert_eq!(browser_refusal(&same, true), None);
        let other = headers(&[("host", "127.0.0.1:8888"), ("origin", "http://evil.example")]);
        assert!(browser_refusal(&other, true).is_some());
        assert!(browser_refusal(&other, false).is_some());
        let null = headers(&[("host", "127.0.0.1:8888"), ("origin", "null")]);
        assert!(browser_refusal(&null, false).is_some());
        let rebound = headers(&[("host", "evil.example:8888"), ("origin", "http://evil.example:8888")]);
        assert!(browser_refusal(&rebound, true).is_some());
        assert_eq!(browser_refusal(&rebound, false), None, "with tokens, the token decides");
        for host in ["localhost:8888", "[::1]:8888", "127.0.0.1", "console.localhost:1", "LOCALHOST"] {
            assert_eq!(browser_refusal(&headers(&[("host", host)]), true), None, "{host}");
        }
        assert_eq!(browser_refusal(&HeaderMap::new(), true), None);
    }

    #[test]
    fn the_outbox_lists_regular_files_below_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("outbox");
        std::fs::create_dir_all(root.join("sub/.hidden")).unwrap();
        std::fs::write(root.join("a.txt"), b"abc").unwrap();
        std::fs::write(root.join("sub/b.bin"), b"12345").unwrap();
        std::fs::write(root.join(".c.part"), b"x").unwrap();
        std::fs::write(root.join("sub/.hidden/d"), b"x").unwrap();
        std::fs::write(dir.path().join("outside"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
        let (files, truncated) = list_outbox(std::slice::from_ref(&root));
        assert!(!truncated);
        let names: Vec<_> = files.iter().map(|f| (f.name.as_str(), f.size)).collect();
        assert_eq!(names, [("outbox/a.txt", 3), ("outbox/sub/b.bin", 5)]);
        assert_eq!(files[0].path, root.join("a.txt").to_string_lossy());
    }
}
