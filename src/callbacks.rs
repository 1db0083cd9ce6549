//! Delivery of results to host apps' callback URLs, retried from the store until `ttl_s`.
//!
//! Each result goes as `METHOD url` with the text fields `id`, `seq`, `end`, `data`, `status`,
//! `error` (API.md §3): in the query string for GET, urlencoded for POST. Any 2xx counts as
//! delivered; otherwise the next attempt is 1 s later, doubling up to 5 minutes. Results of one
//! request are delivered in `seq` order: the store hands out the next only once the previous is in.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::store::{CallbackWork, Store};
use crate::worker::Worker;

/// How many deliveries run at once.
const CONCURRENT: usize = 64;
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Delivers results as the store says they are due, until `stop`; then waits for deliveries
/// under way.
pub async fn work(store: Store, metrics: Arc<Metrics>, stop: CancellationToken) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client without TLS always builds");
    let worker =
        Worker { what: "callbacks", slots: CONCURRENT, tick: Duration::from_millis(250), wake: &store.wake.callbacks };
    let claim = |free| store.claim_callbacks(free);
    worker
        .each(&stop, claim, |work, slot| {
            let (store, client, metrics) = (store.clone(), client.clone(), metrics.clone());
            async move {
                let (status, outcome) = deliver(&client, &work).await;
                // The slot bounds calls to hosts; recording the delivery does not call one.
                slot.free();
                let counted = if outcome.is_ok() { "delivered" } else { "retry" };
                metrics.callbacks.get_or_create(&OutcomeLabel { outcome: counted.into() }).inc();
                let outcome = outcome.map_err(|error| {
                    let next = backoff::CALLBACK.next_at(work.attempts);
                    tracing::info!(id = %work.id, seq = work.seq, %error, "callback not delivered; retrying");
                    (error, (next <= work.expires_at).then_some(next))
                });
                if let Err(e) = store.callback_attempted(&work, status, outcome).await {
                    tracing::error!(id = %work.id, error = %e, "cannot record a callback delivery");
                }
            }
        })
        .await;
}

/// One delivery attempt: the status the callback answered, if it did, and whether it counts as
/// delivered.
async fn deliver(client: &reqwest::Client, work: &CallbackWork) -> (Option<u16>, Result<(), String>) {
    let mut fields = vec![("id", work.id.clone()), ("seq", work.seq.to_string()), ("end", work.end.to_string())];
    if let Some(data) = &work.data {
        fields.push(("data", data.clone()));
    }
    if let Some(status) = work.status {
        fields.push(("status", status.to_string()));
    }
    if let Some(error) = &work.error {
        fields.push(("error", error.clone()));
    }
    let file_field;
    match &work.file {
        // Refused where replies are accepted; one stored before that never shadows the node's own.
        Some(file) if crate::wire::CALLBACK_FIELDS.contains(&file.field.as_str()) => {
            tracing::warn!(id = %work.id, seq = work.seq, field = %file.field, "a reply's file field names a callback field; its path is left out");
        }
        Some(file) => {
            file_field = file.field.clone();
            fields.push((file_field.as_str(), file.path.clone()));
        }
        None => {}
    }
    let request = match work.method.as_str() {
        "GET" => client.get(&work.url).query(&fields),
        _ => client.post(&work.url).form(&fields),
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return (None, Err(format!("cannot reach {}: {e}", work.url))),
    };
    let status = response.status().as_u16();
    if response.status().is_success() {
        (Some(status), Ok(()))
    } else {
        (Some(status), Err(format!("{} answered HTTP {status}", work.url)))
    }
}
