//! Calls to this node's local services on behalf of peers.
//!
//! A request from a peer, checked against the service table ([`crate::service`]), is turned into
//! an HTTP call exactly as API.md describes (query string for GET and DELETE, urlencoded or JSON
//! body otherwise, the `X-Ferry-*` headers), and the service's answer is relayed as it is, whatever
//! its status. Synchronous requests are called from the link's stream ([`Caller`]); stored ones by
//! [`work`], as the store says they are due.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

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

/// Calls this node's local services: the service table and an HTTP client pooled across calls.
#[derive(Debug, Clone)]
pub struct Deliverer {
    services: Services,
    client: reqwest::Client,
}

impl Deliverer {
    /// Calls the services in `services`.
    pub fn new(services: Services) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client without TLS always builds");
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
        let bad = |what: String| Refusal::new(RefusalKind::BadRequest, what);
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

/// How many service calls for asynchronous requests run at once.
const CONCURRENT_CALLS: usize = 64;

/// Calls the local services for incoming asynchronous requests as the store says they are due,
/// and records each outcome, until `stop`; then waits for the calls under way.
pub async fn work(deliverer: Deliverer, store: Store, metrics: Arc<Metrics>, stop: CancellationToken) {
    let wake = &store.wake.incoming;
    let worker = Worker { what: "service calls", slots: CONCURRENT_CALLS, tick: Duration::from_millis(500), wake };
    let claim = |free| store.claim_incoming(free);
    worker
        .each(&stop, claim, |call| {
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

fn backend_error(service: &ServiceConfig, e: reqwest::Error) -> CallError {
    let not_sent = e.is_connect();
    let refusal = if e.is_timeout() {
        Refusal::new(RefusalKind::Timeout, format!("service `{}` did not answer in time", service.id))
    } else {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = format!("{cause}: {s}");
            source = s.source();
        }
        Refusal::new(
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
            return Ok(Err(Refusal::new(
                RefusalKind::TooLarge,
                format!("the service's answer is over {MAX_BODY} bytes; send large data as a file"),
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(wire::Response { status, headers, body, replay_of: None }))
}
