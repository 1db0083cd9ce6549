//! Calls to this node's local services on behalf of peers.
//!
//! A request from a peer, checked against the service table ([`crate::service`]), is turned into
//! an HTTP call exactly as API.md describes (query string for GET and DELETE, urlencoded or JSON
//! body otherwise, the `X-Ferry-*` headers), and the service's answer is relayed as it is, whatever
//! its status. Synchronous requests are called from the link's stream ([`Caller`]); stored ones by
//! [`work`], as the store says they are due.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, Method, Request};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::backoff;
use crate::config::{ServiceConfig, ServiceState};
use crate::metrics::{Metrics, ServiceLabel};
use crate::service::{CallError, Caller, Checked, Services};
use crate::store::{ServiceOutcome, Store};
use crate::wire::{self, Encoding, Refusal, RefusalKind};
use crate::worker::Worker;
use tokio_util::sync::CancellationToken;

/// The largest service response body relayed, leaving room for the frame's other fields.
pub const MAX_BODY: usize = wire::MAX_FRAME - 64 * 1024;

/// The client of service calls: hyper's pooled HTTP/1 client, plain HTTP, no proxy, redirects
/// relayed as they are. (reqwest's layers over the same client were a third of a service call's
/// CPU: BENCHMARKS.md, issue 24.)
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Calls this node's local services: the service table and an HTTP client pooled across calls.
#[derive(Debug, Clone)]
pub struct Deliverer {
    services: Services,
    client: HttpClient,
}

impl Deliverer {
    /// Calls the services in `services`.
    pub fn new(services: Services) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
        Deliverer { services, client }
    }

    /// Calls the service a peer's request is for, adding `extra` text fields (`callbackId` in reply mode, also sent
    /// as header `X-Ferry-Callback-Id`; the received file's path), and telling whether a failed
    /// call certainly never reached the service. `checked` is the request's
    /// [`Services::check_request`] if it was just made; without it, the check is made now.
    pub async fn call(
        &self,
        peer: &str,
        request: &wire::Request,
        checked: Option<Checked>,
        extra: &[(String, String)],
    ) -> Result<wire::Response, CallError> {
        let started = std::time::Instant::now();
        let result = match checked.map_or_else(|| self.services.check_request(peer, request), Ok) {
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
                tracing::info!(%id, %peer, %service, method = %request.method, %path, status = e.refusal.kind.http_status(), duration_ms = format_args!("{ms:.1}"), error = %e.refusal.message, "exchange")
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
        let http = build(&service, url, peer, request, extra).map_err(not_sent)?;
        let within = Duration::from_millis(request.timeout_ms.max(1));
        let Ok(sent) = tokio::time::timeout(within, self.send(http)).await else {
            let why = format!("service `{}` did not answer in time", service.id);
            return Err(CallError { refusal: Refusal::new(RefusalKind::Timeout, why), not_sent: false });
        };
        let mut answer =
            sent.map_err(|e| backend_error(&service, e))?.map_err(|refusal| CallError { refusal, not_sent: false })?;
        if service.state == ServiceState::Deprecated && !answer.headers.iter().any(|(k, _)| k == "deprecation") {
            answer.headers.push(("deprecation".into(), "true".into()));
        }
        Ok(answer)
    }

    /// Sends the call and reads the service's response, refusing bodies over [`MAX_BODY`].
    async fn send(&self, http: Request<Full<Bytes>>) -> Result<Result<wire::Response, Refusal>, Unreachable> {
        let response = self.client.request(http).await.map_err(|e| Unreachable::of(e.is_connect(), &e))?;
        let (parts, mut body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !wire::is_hop_by_hop(name.as_str()))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame.map_err(|e| Unreachable::of(false, &e))?.into_data() else { continue };
            if data.len() + chunk.len() > MAX_BODY {
                return Ok(Err(Refusal::new(
                    RefusalKind::TooLarge,
                    format!("the service's answer is over {MAX_BODY} bytes; send large data as a file"),
                )));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(Ok(wire::Response { status: parts.status.as_u16(), headers, body: data, replay_of: None }))
    }
}

/// The HTTP call for a peer's request, as API.md describes it: the form in the query string (GET,
/// DELETE) or the body (urlencoded or JSON), the request's headers that the service takes, and
/// the `X-Ferry-*` headers.
fn build(
    service: &ServiceConfig,
    mut url: url::Url,
    peer: &str,
    r: &wire::Request,
    extra: &[(String, String)],
) -> Result<Request<Full<Bytes>>, Refusal> {
    let bad = |what: String| Refusal::new(RefusalKind::BadRequest, what);
    let method = Method::from_bytes(r.method.as_bytes()).map_err(|_| bad(format!("bad method {}", r.method)))?;
    let in_query = matches!(method, Method::GET | Method::DELETE);
    let added = extra.iter().map(|(k, v)| (k.clone(), wire::FormValue::Text(v.clone())));
    let form: Vec<_> = r.form.iter().cloned().chain(added).collect();
    let fields = || form.iter().map(|(k, v)| (k.clone(), v.to_text()));
    let (content_type, body) = match (r.encoding, in_query) {
        (_, _) if form.is_empty() => (None, Bytes::new()),
        (Encoding::Form, true) => {
            url.query_pairs_mut().extend_pairs(fields());
            (None, Bytes::new())
        }
        (Encoding::Form, false) => {
            let encoded = serde_urlencoded::to_string(fields().collect::<Vec<_>>())
                .map_err(|e| bad(format!("cannot encode the form: {e}")))?;
            (Some("application/x-www-form-urlencoded"), Bytes::from(encoded))
        }
        (Encoding::Json, _) => {
            let object: serde_json::Map<_, _> = form.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
            let encoded =
                serde_json::to_vec(&object).map_err(|e| bad(format!("cannot encode the form as JSON: {e}")))?;
            (Some("application/json"), Bytes::from(encoded))
        }
    };
    let mut http = Request::builder().method(method).uri(url.as_str());
    if let Some(content_type) = content_type {
        http = http.header(header::CONTENT_TYPE, content_type);
    }
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
    http.body(Full::new(body)).map_err(|e| bad(format!("cannot build the service call: {e}")))
}

/// A service call that failed on its way: no connection, or one that broke.
#[derive(Debug)]
struct Unreachable {
    /// No connection was made, so the service never saw the call.
    not_sent: bool,
    /// The error and its causes, in words.
    cause: String,
}

impl Unreachable {
    fn of(not_sent: bool, e: &dyn std::error::Error) -> Unreachable {
        let mut cause = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        Unreachable { not_sent, cause }
    }
}

impl Caller for Deliverer {
    fn call<'a>(
        &'a self,
        peer: &'a str,
        request: &'a wire::Request,
        checked: Option<Checked>,
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<wire::Response, CallError>> {
        Box::pin(Deliverer::call(self, peer, request, checked, extra))
    }
}

/// How many service calls for asynchronous requests run at once (their answers are then recorded
/// without holding a call's place).
const CONCURRENT_CALLS: usize = 64;

/// Calls the local services for incoming asynchronous requests as the store says they are due,
/// and records each outcome, until `stop`; then waits for the calls under way.
pub async fn work(deliverer: Deliverer, store: Store, metrics: Arc<Metrics>, stop: CancellationToken) {
    let wake = &store.wake.incoming;
    let worker = Worker { what: "service calls", slots: CONCURRENT_CALLS, tick: Duration::from_millis(500), wake };
    let claim = |free| store.claim_incoming(free);
    worker
        .each(&stop, claim, |call, slot| {
            let (deliverer, store, metrics) = (deliverer.clone(), store.clone(), metrics.clone());
            async move {
                let extra: Vec<(String, String)> = call
                    .callback_id
                    .iter()
                    .map(|id| (wire::CALLBACK_ID_FIELD.to_owned(), id.clone()))
                    .chain(call.file.clone().map(|f| (f.field, f.path)))
                    .collect();
                let started = std::time::Instant::now();
                let called = deliverer.call(&call.peer, &call.request, None, &extra).await;
                // The slot bounds calls to the service; recording the answer does not call it.
                slot.free();
                let label = ServiceLabel { service: call.request.service.clone() };
                metrics.service_duration.get_or_create(&label).observe(started.elapsed().as_secs_f64());
                let outcome = match called {
                    Ok(response) => ServiceOutcome::Answered(response),
                    Err(e) if e.not_sent && e.refusal.kind == RefusalKind::BackendUnreachable => {
                        ServiceOutcome::RetryAt(backoff::SERVICE_UNREACHABLE.next_at(call.attempts), e.refusal.message)
                    }
                    Err(e) => ServiceOutcome::Failed(e.refusal.message),
                };
                if let Err(e) = store.service_answered(&call.peer, &call.request.id, outcome).await {
                    tracing::error!(id = %call.request.id, error = %e, "cannot record the service's answer");
                }
            }
        })
        .await;
}

fn backend_error(service: &ServiceConfig, e: Unreachable) -> CallError {
    let refusal = Refusal::new(
        RefusalKind::BackendUnreachable,
        format!("the peer could not reach its service `{}` at {} ({})", service.id, service.base_url, e.cause),
    );
    CallError { refusal, not_sent: e.not_sent }
}
