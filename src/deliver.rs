//! Calls to this node's local services on behalf of peers.
//!
//! A request from a peer is checked against the service table (unknown service, allow list,
//! lifecycle state), turned into an HTTP call exactly as API.md describes (query string for GET
//! and DELETE, urlencoded or JSON body otherwise, the `X-Ferry-*` headers), and the service's answer
//! is relayed as it is, whatever its status.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::{ServiceConfig, ServiceState};
use crate::metrics::{Metrics, ServiceLabel};
use crate::store::{idle, now_ms, slot_free, ServiceOutcome, Store};
use crate::wire::{self, Encoding, Refusal, RefusalKind};
use tokio_util::sync::CancellationToken;

/// The largest service response body relayed, leaving room for the frame's other fields.
pub const MAX_BODY: usize = wire::MAX_FRAME - 64 * 1024;

/// The local services and an HTTP client pooled across calls.
#[derive(Debug, Clone)]
pub struct Services {
    table: Arc<RwLock<Arc<Vec<ServiceConfig>>>>,
    client: reqwest::Client,
}

fn refuse(kind: RefusalKind, message: impl Into<String>) -> Refusal {
    Refusal::new(kind, message)
}

impl Services {
    /// The services of this node.
    pub fn new(services: Vec<ServiceConfig>) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client without TLS always builds");
        Services { table: Arc::new(RwLock::new(Arc::new(services))), client }
    }

    /// Replaces the service table (on reload).
    pub fn replace(&self, services: Vec<ServiceConfig>) {
        *self.table.write().unwrap() = Arc::new(services);
    }

    /// The service `id` if `peer` may call it now: unknown, not allowed and disabled services
    /// are refused.
    pub fn check(&self, peer: &str, id: &str) -> Result<ServiceConfig, Refusal> {
        let table = self.table.read().unwrap().clone();
        let service = table
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| refuse(RefusalKind::NotFound, format!("the peer offers no service `{id}`")))?;
        if !service.allows(peer) {
            return Err(refuse(
                RefusalKind::Forbidden,
                format!("service `{id}` does not allow node `{peer}`; its admin must add it to `allow`"),
            ));
        }
        if service.state == ServiceState::Disabled {
            return Err(refuse(RefusalKind::Unavailable, format!("service `{id}` is disabled by its admin")));
        }
        Ok(service.clone())
    }

    /// The service a peer's request is for, if the peer may call it and the request keeps to the
    /// boundary between peers and services, whatever the sender checked: its path stays below the
    /// service's base URL, its form holds no field the node sets itself, and its headers and
    /// conversation are ones a service may get. Checked where a request is accepted, so that
    /// nothing refused is stored, and again before a stored request is called (the table may have
    /// changed since).
    pub fn check_request(&self, peer: &str, r: &wire::Request) -> Result<Checked, Refusal> {
        let service = self.check(peer, &r.service)?;
        let url = within_boundary(&service, r).map_err(|why| {
            tracing::warn!(%peer, id = %wire::cut(&r.id), %why, "refused a request that crosses the boundary to a service");
            refuse(RefusalKind::BadRequest, why)
        })?;
        Ok(Checked { service, url })
    }

    /// Calls the service a peer's request is for, and returns its answer or why there is none.
    pub async fn call(&self, peer: &str, request: &wire::Request) -> Result<wire::Response, Refusal> {
        self.call_with(peer, request, None, &[]).await.map_err(|e| e.refusal)
    }

    /// Like [`Services::call`], adding `extra` text fields (`callbackId` in reply mode, also sent
    /// as header `X-Ferry-Callback-Id`; the received file's path), and telling whether a failed
    /// call certainly never reached the service. `checked` is the request's
    /// [`Services::check_request`] if it was just made; without it, the check is made now.
    pub async fn call_with(
        &self,
        peer: &str,
        request: &wire::Request,
        checked: Option<Checked>,
        extra: &[(String, String)],
    ) -> Result<wire::Response, CallError> {
        let started = std::time::Instant::now();
        let result = match checked.map_or_else(|| self.check_request(peer, request), Ok) {
            Ok(checked) => self.call_service(peer, request, checked, extra).await,
            Err(refusal) => Err(CallError { refusal, not_sent: true }),
        };
        // The one place every request from a peer, sync or async, ends: one line per exchange.
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (id, path, service) = (&request.id, &request.path, &request.service);
        match &result {
            Ok(answer) => {
                tracing::info!(%id, %peer, %service, method = %request.method, %path, status = answer.status, duration_ms = format_args!("{ms:.1}"), "exchange")
            }
            Err(e) => {
                tracing::info!(%id, %peer, %service, method = %request.method, %path, status = ?e.refusal.kind, duration_ms = format_args!("{ms:.1}"), error = %e.refusal.message, "exchange")
            }
        }
        result
    }

    async fn call_service(
        &self,
        peer: &str,
        request: &wire::Request,
        Checked { service, url }: Checked,
        extra: &[(String, String)],
    ) -> Result<wire::Response, CallError> {
        let not_sent = |refusal| CallError { refusal, not_sent: true };
        let http = self.build(&service, url, peer, request, extra).map_err(not_sent)?;
        let response = self.client.execute(http).await.map_err(|e| backend_error(&service, e))?;
        let mut answer = relay(response)
            .await
            .map_err(|e| backend_error(&service, e))?
            .map_err(|refusal| CallError { refusal, not_sent: false })?;
        if service.state == ServiceState::Deprecated && !answer.headers.iter().any(|(k, _)| k == "deprecation") {
            answer.headers.push(("deprecation".into(), "true".into()));
        }
        Ok(answer)
    }

    fn build(
        &self,
        service: &ServiceConfig,
        url: url::Url,
        peer: &str,
        r: &wire::Request,
        extra: &[(String, String)],
    ) -> Result<reqwest::Request, Refusal> {
        let bad = |what: String| refuse(RefusalKind::BadRequest, what);
        let method =
            reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|_| bad(format!("bad method {}", r.method)))?;
        let mut http = self.client.request(method.clone(), url);
        let in_query = matches!(method, reqwest::Method::GET | reqwest::Method::DELETE);
        let added = extra.iter().map(|(k, v)| (k.clone(), wire::FormValue::Text(v.clone())));
        let form: Vec<_> = r.form.iter().cloned().chain(added).collect();
        let fields = || form.iter().map(|(k, v)| (k.clone(), v.to_text())).collect::<Vec<_>>();
        http = match (r.encoding, in_query) {
            (_, _) if form.is_empty() => http,
            (Encoding::Form, true) => http.query(&fields()),
            (Encoding::Form, false) => http.form(&fields()),
            (Encoding::Json, _) => {
                let object: serde_json::Map<_, _> = form.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
                http.json(&object)
            }
        };
        for (name, value) in &r.headers {
            if wire::is_guarded_header(name) && !service.passes(name) {
                let header = wire::cut(name);
                tracing::debug!(id = %r.id, %peer, service = %service.id, %header, "dropped a header the service's `pass_headers` does not list");
                continue;
            }
            http = http.header(name, value);
        }
        http = http.header("X-Ferry-Peer", peer).header("X-Ferry-Request-Id", &r.id);
        if let Some((_, id)) = extra.iter().find(|(name, _)| name == wire::CALLBACK_ID_FIELD) {
            http = http.header("X-Ferry-Callback-Id", id);
        }
        if let Some(c) = &r.conversation {
            http = http.header("X-Ferry-Conversation", c);
        }
        http.timeout(Duration::from_millis(r.timeout_ms.max(1)))
            .build()
            .map_err(|e| bad(format!("cannot build the service call: {e}")))
    }
}

/// How many service calls for asynchronous requests run at once.
const CONCURRENT_CALLS: usize = 64;

/// Calls the local services for incoming asynchronous requests as the store says they are due,
/// and records each outcome, until `stop`; then waits for the calls under way.
pub async fn work(services: Services, store: Store, metrics: Arc<Metrics>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_CALLS));
    while !stop.is_cancelled() {
        if !slot_free(&slots, &stop).await {
            break;
        }
        let free = slots.available_permits();
        let calls = if free == 0 {
            Vec::new()
        } else {
            store.claim_incoming(free).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read due service calls");
                Vec::new()
            })
        };
        if calls.is_empty() {
            if !idle(&store.wake.incoming, Duration::from_millis(500), &stop).await {
                break;
            }
            continue;
        }
        for call in calls {
            let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (services, store, metrics) = (services.clone(), store.clone(), metrics.clone());
            tokio::spawn(async move {
                let extra: Vec<(String, String)> = call
                    .callback_id
                    .iter()
                    .map(|id| (wire::CALLBACK_ID_FIELD.to_owned(), id.clone()))
                    .chain(call.file.clone())
                    .collect();
                let started = std::time::Instant::now();
                let called = services.call_with(&call.peer, &call.request, None, &extra).await;
                let label = ServiceLabel { service: call.request.service.clone() };
                metrics.service_duration.get_or_create(&label).observe(started.elapsed().as_secs_f64());
                let outcome = match called {
                    Ok(response) => ServiceOutcome::Answered(response),
                    Err(e) if e.not_sent && e.refusal.kind == RefusalKind::BackendUnreachable => {
                        let wait = 1_000i64.saturating_mul(1 << call.attempts.min(6));
                        ServiceOutcome::RetryAt(now_ms() + wait, e.refusal.message)
                    }
                    Err(e) => ServiceOutcome::Failed(e.refusal.message),
                };
                if let Err(e) = store.service_answered(&call.peer, &call.request.id, outcome).await {
                    tracing::error!(id = %call.request.id, error = %e, "cannot record the service's answer");
                }
                drop(permit);
            });
        }
    }
    let _ = slots.acquire_many(CONCURRENT_CALLS as u32).await;
}

/// The URL request `r` calls at `service`, or why it may not reach it (see
/// [`Services::check_request`]).
fn within_boundary(service: &ServiceConfig, r: &wire::Request) -> Result<url::Url, String> {
    let url = service_url(&service.base_url, &r.path).map_err(|why| format!("path `{}` {why}", wire::cut(&r.path)))?;
    match wire::boundary_problem(r, r.file.as_ref().map(|f| f.field.as_str())) {
        Some((field, why)) => Err(format!("{field}: {why}")),
        None => Ok(url),
    }
}

/// The service URL for `path`: the base URL with the path appended, never another host nor a
/// path outside the base URL's path (compared segment by segment: `/api/v1` does not admit
/// `/api/v10`). `Err` says why not ([`wire::path_problem`]).
pub fn service_url(base: &url::Url, path: &str) -> Result<url::Url, &'static str> {
    if let Some(why) = wire::path_problem(path) {
        return Err(why);
    }
    let url = url::Url::parse(&format!("{}{path}", base.as_str().trim_end_matches('/')))
        .map_err(|_| "does not make a valid URL with the service's base URL")?;
    if below(base, &url) {
        Ok(url)
    } else {
        Err("leaves the service's base URL")
    }
}

/// Whether `url` is on `base`'s origin and its path is `base`'s path or below it, segment-wise.
fn below(base: &url::Url, url: &url::Url) -> bool {
    let rest = url.path().strip_prefix(base.path().trim_end_matches('/'));
    url.origin() == base.origin() && rest.is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The form as a JSON object, each field named in `mask` shown only as `sha256:<hex>` of its text.
pub fn masked_form(form: &[(String, wire::FormValue)], mask: &[String]) -> serde_json::Value {
    crate::evidence::MaskedForm { form, mask }.to_json()
}

/// A request checked against the service table and the boundary, ready to call.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The service it is for.
    pub service: ServiceConfig,
    /// The URL it calls.
    url: url::Url,
}

/// A failed service call.
#[derive(Debug, Clone)]
pub struct CallError {
    /// What to tell the requesting node.
    pub refusal: Refusal,
    /// The call certainly never reached the service (refused by policy, or no connection), so
    /// trying again later cannot do the request twice.
    pub not_sent: bool,
}

fn backend_error(service: &ServiceConfig, e: reqwest::Error) -> CallError {
    let not_sent = e.is_connect();
    let refusal = if e.is_timeout() {
        refuse(RefusalKind::Timeout, format!("service `{}` did not answer in time", service.id))
    } else {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        refuse(
            RefusalKind::BackendUnreachable,
            format!("the peer could not reach its service `{}` at {} ({cause})", service.id, service.base_url),
        )
    };
    CallError { refusal, not_sent }
}

/// Reads the service's response, refusing bodies over [`MAX_BODY`].
async fn relay(mut response: reqwest::Response) -> Result<Result<wire::Response, Refusal>, reqwest::Error> {
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| !wire::is_hop_by_hop(name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            return Ok(Err(refuse(
                RefusalKind::TooLarge,
                format!("the service's answer is over {MAX_BODY} bytes; send large data as a file"),
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(wire::Response { status, headers, body, replay_of: None }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_service() {
        let base = url::Url::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(service_url(&base, "/user/list?a=1").unwrap().as_str(), "http://127.0.0.1:8080/api/user/list?a=1");
        for hostile in ["@evil.example/x", "//evil.example/x", "x", "/\\evil", ""] {
            assert!(service_url(&base, hostile).is_err(), "{hostile}");
        }
        let bare = url::Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(service_url(&bare, "/a").unwrap().as_str(), "http://127.0.0.1:8080/a");
        assert!(service_url(&bare, "@evil.example/").is_err());
    }

    #[test]
    fn paths_stay_below_the_base_path_segment_by_segment() {
        let base = url::Url::parse("http://127.0.0.1:8080/api/v1").unwrap();
        assert_eq!(service_url(&base, "/x").unwrap().path(), "/api/v1/x");
        for hostile in ["/../../admin", "/%2e%2E/%2e%2e/admin", "/./x", "/a/..%2f..%2fadmin", "/..;/admin", "/.\t./x"] {
            assert!(service_url(&base, hostile).is_err(), "{hostile}");
        }
        // The final URL is compared with the base path segment-wise, not as a string prefix.
        let url = |p: &str| url::Url::parse(&format!("http://127.0.0.1:8080{p}")).unwrap();
        assert!(below(&base, &url("/api/v1")) && below(&base, &url("/api/v1/x")));
        assert!(!below(&base, &url("/api/v10")) && !below(&base, &url("/api/v10/x")));
        assert!(!below(&base, &url::Url::parse("http://127.0.0.2:8080/api/v1/x").unwrap()));
    }
}
