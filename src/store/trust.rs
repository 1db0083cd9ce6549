//! Taking a peer's request in: idempotency keys and duplicate windows of this node's services,
//! and the evidence of synchronous exchanges (asynchronous ones are recorded with their state).
//!
//! Both checks run on the receiving node, where the service and its `idempotency_ttl` and
//! `dedupe_window` are, inside one writer transaction, so two concurrent requests with one key
//! cannot both get through.

use super::sql::{params, OptionalExtension};

use super::evidence::request_record;
use super::{exec, now_ms, query_row, StoreError, Tx};
use crate::config::ServiceConfig;
use crate::evidence::{sha256_hex, Rendered, Summary};
use crate::store::Store;
use crate::wire::{self, Refusal, RefusalKind};

/// What becomes of a request a peer sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// A new request: call the service (asynchronous ones are stored as `waiting`).
    New,
    /// An asynchronous request already stored: a retransmission.
    Known,
    /// The idempotency key's earlier request succeeded inside the service's `idempotency_ttl`:
    /// its stored response answers, and the service is not called.
    Replay(wire::Response),
    /// Refused: the key's earlier request is still running, or the same request arrived inside
    /// the duplicate window.
    Refused(Refusal),
}

/// Checks `request` from `peer` against the key and duplicate tables of `service`, and records
/// what it claims and, once admitted, `arrived` (its evidence record, built by the caller outside
/// the writer). Returns [`Admission::New`] when the request may go on.
pub(super) fn admit(
    t: &Tx,
    peer: &str,
    request: &wire::Request,
    service: &ServiceConfig,
    arrived: Rendered,
) -> Result<Admission, StoreError> {
    let now = now_ms();
    let key = request.idempotency_key.as_deref();
    // Members sharing a store decide on a key, or a duplicate, one at a time.
    if let Some(key) = key {
        t.lock(&format!("key\u{1}{peer}\u{1}{}\u{1}{}\u{1}{key}", request.service, request.path))?;
    }
    let digest = service.dedupe_window.map(|_| dedupe_digest(peer, request));
    if let Some(digest) = &digest {
        t.lock(&format!("dedupe\u{1}{}\u{1}{digest}", service.id))?;
    }
    if let Some(key) = key {
        // The key's earlier request: id, state, its stored response, when that stops counting.
        type Earlier = (String, String, Option<u16>, Option<String>, Option<Vec<u8>>, Option<i64>);
        let earlier: Option<Earlier> = query_row(
            t,
            "SELECT id, state, response_status, response_headers, response_body, expires_at FROM idempotency
             WHERE peer = ?1 AND service = ?2 AND path = ?3 AND key = ?4",
            params![peer, request.service, request.path, key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?;
        match earlier {
            Some((id, ..)) if id == request.id => {} // the same request again
            Some((id, state, ..)) if state == "running" => {
                return Ok(Admission::Refused(Refusal {
                    kind: RefusalKind::InProgress,
                    message: format!("request {id} with the same idempotency key is still running"),
                    earlier: Some(id),
                }))
            }
            Some((id, _, Some(status), headers, body, Some(expires))) if expires > now => {
                return Ok(Admission::Replay(wire::Response {
                    status,
                    headers: headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
                    body: body.unwrap_or_default(),
                    replay_of: Some(id),
                }))
            }
            _ => {}
        }
    }
    if let (Some(window), Some(digest)) = (service.dedupe_window, digest) {
        exec(
            t,
            "DELETE FROM dedupe WHERE service = ?1 AND at <= ?2",
            params![service.id, now - window.as_millis() as i64],
        )?;
        let earlier: Option<String> = query_row(
            t,
            "SELECT id FROM dedupe WHERE service = ?1 AND digest = ?2",
            params![service.id, digest],
            |r| r.get(0),
        )
        .optional()?;
        match earlier {
            Some(id) if id != request.id => {
                return Ok(Admission::Refused(Refusal {
                    kind: RefusalKind::Duplicate,
                    message: format!(
                        "the same request ({id}) arrived less than {} ago; service `{}` refuses duplicates",
                        humantime::format_duration(window),
                        service.id
                    ),
                    earlier: Some(id),
                }))
            }
            Some(_) => {}
            None => {
                exec(
                    t,
                    "INSERT INTO dedupe (service, digest, id, at) VALUES (?1, ?2, ?3, ?4)",
                    params![service.id, digest, request.id, now],
                )?;
            }
        }
    }
    if let Some(key) = key {
        exec(
            t,
            "INSERT INTO idempotency (peer, service, path, key, id, state, ttl_ms, holder)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)
             ON CONFLICT (peer, service, path, key) DO UPDATE SET id = excluded.id, state = 'running',
                ttl_ms = excluded.ttl_ms, response_status = NULL, response_headers = NULL, response_body = NULL,
                expires_at = NULL, holder = excluded.holder",
            params![
                peer,
                request.service,
                request.path,
                key,
                request.id,
                service.idempotency_ttl.as_millis() as i64,
                t.member()
            ],
        )?;
    }
    t.record(arrived)?;
    Ok(Admission::New)
}

/// What the duplicate window compares: sender, method, path, form and the file's SHA-256.
fn dedupe_digest(peer: &str, request: &wire::Request) -> String {
    let form = crate::service::masked_form(&request.form, &[]);
    let file = request.file.as_ref().map(|f| hex::encode(f.sha256)).unwrap_or_default();
    sha256_hex(format!("{peer}\0{}\0{}\0{form}\0{file}", request.method, request.path).as_bytes())
}

/// Settles the idempotency key of request `id` from `peer` (if it has one): a success keeps the
/// response for the key's ttl; anything else frees the key, since a failure does not count.
pub(super) fn settle_key(t: &Tx, peer: &str, id: &str, success: Option<&wire::Response>) -> Result<(), StoreError> {
    match success {
        Some(r) => exec(
            t,
            "UPDATE idempotency SET state = 'success', response_status = ?3, response_headers = ?4,
                response_body = ?5, expires_at = ?6 + ttl_ms
             WHERE id = ?1 AND peer = ?2",
            params![id, peer, r.status, serde_json::to_string(&r.headers).unwrap_or_default(), r.body, now_ms()],
        )?,
        None => exec(t, "DELETE FROM idempotency WHERE id = ?1 AND peer = ?2", params![id, peer])?,
    };
    Ok(())
}

/// What the log shows of a response, or of a refusal (`Err`, its reason): its event and the
/// SHA-256 of its body (the refusal's message).
pub(super) fn answer_facts(answer: Result<&wire::Response, &str>) -> (&'static str, String) {
    match answer {
        Ok(response) => ("response", sha256_hex(&response.body)),
        Err(why) => ("refused", sha256_hex(why.as_bytes())),
    }
}

/// The log's record of a response, or of a refusal (`Err`, its reason), on its own: an
/// asynchronous request's refusal, or the answer to a checked synchronous request, whose request
/// was recorded before the service was called.
pub(super) fn answer_record(
    direction: &'static str,
    peer: &str,
    member: Option<&str>,
    id: &str,
    answer: Result<&wire::Response, &str>,
) -> Rendered {
    let (event, body_sha256) = answer_facts(answer);
    Summary { event, direction, peer, member, id, body_sha256: Some(&body_sha256), ..Summary::default() }.render()
}

/// The one record of a synchronous exchange on this node: the request (as sent, `out`, or as
/// received, `in`) with its `answer`.
fn exchange_record(
    direction: &'static str,
    peer: &str,
    member: Option<&str>,
    request: &wire::Request,
    payload_sha256: [u8; 32],
    mask: &[String],
    answer: Result<&wire::Response, &str>,
) -> Rendered {
    let (event, body_sha256) = answer_facts(answer);
    let answer = Some((event, body_sha256.as_str()));
    super::evidence::exchange_record(direction, peer, member, request, payload_sha256, mask, answer)
}

impl Store {
    /// Takes a synchronous request from `peer` in: checks its key and duplicate window and
    /// records it, before the service is called.
    pub async fn admit_sync(
        &self,
        peer: &str,
        member: Option<&str>,
        request: &wire::Request,
        service: &ServiceConfig,
        payload_sha256: [u8; 32],
    ) -> Result<Admission, StoreError> {
        let arrived = self.arrived(peer, member, request, service, payload_sha256);
        let (peer, request, service) = (peer.to_owned(), request.clone(), service.clone());
        self.run(move |t, _| admit(t, &peer, &request, &service, arrived)).await
    }

    /// The evidence record of `request` as received from `peer`, rendered ([`Store::rendered`]).
    pub(super) fn arrived(
        &self,
        peer: &str,
        member: Option<&str>,
        request: &wire::Request,
        service: &ServiceConfig,
        payload_sha256: [u8; 32],
    ) -> Rendered {
        self.rendered(|| request_record("in", peer, member, request, payload_sha256, &service.mask_fields))
    }

    /// Records the service's answer (or the failure) to an admitted synchronous request from
    /// `peer` and settles its idempotency key, on disk before the answer goes back: a retry after
    /// a power loss must not call the service again. The answer is a record of its own: the
    /// request's ([`Store::admit_sync`]) was committed before the service was called, and a
    /// committed record cannot take the answer in, so a checked exchange keeps two records here.
    pub async fn sync_settled(
        &self,
        peer: &str,
        member: Option<&str>,
        id: &str,
        answer: Result<&wire::Response, &str>,
    ) -> Result<(), StoreError> {
        let answered = self.rendered(|| answer_record("out", peer, member, id, answer));
        let success = answer.ok().filter(|r| r.is_success()).cloned();
        let (peer, id) = (peer.to_owned(), id.to_owned());
        self.run(move |t, _| {
            t.record(answered)?;
            settle_key(t, &peer, &id, success.as_ref())
        })
        .await
    }

    /// Records, on the receiving node, a synchronous exchange that changed no state (its service
    /// checks neither keys nor duplicates): one record, the request as received with its answer,
    /// in the writer's next commit (deferred), like the requesting node's record of it.
    pub fn sync_served(
        &self,
        peer: &str,
        member: Option<&str>,
        request: &wire::Request,
        mask: &[String],
        payload_sha256: [u8; 32],
        answer: Result<&wire::Response, &str>,
    ) {
        if !self.evidence {
            return;
        }
        let served = exchange_record("in", peer, member, request, payload_sha256, mask, answer);
        self.defer("a synchronous exchange", served);
    }

    /// Records, on the requesting node, a synchronous exchange that reached the peer: one
    /// record, the request as sent (`payload`: its [`wire::payload_sha256`], when known) with the
    /// response or the peer node's refusal message, in the writer's next commit (deferred).
    pub fn sync_exchanged(
        &self,
        peer: &str,
        member: Option<&str>,
        request: &wire::Request,
        payload: Option<[u8; 32]>,
        answer: Result<&wire::Response, &str>,
    ) {
        if !self.evidence {
            return;
        }
        let payload = payload.unwrap_or_else(|| wire::payload_sha256(request));
        let exchanged = exchange_record("out", peer, member, request, payload, &[], answer);
        self.defer("a synchronous exchange", exchanged);
    }
}
