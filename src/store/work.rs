//! The durable queue: asynchronous requests and replies in both directions, and what is due.
//!
//! Due work is claimed with a lease (its due time moves [`LEASE_MS`] ahead), so a worker never
//! takes the same item twice while it is in flight, and an item whose worker died becomes due
//! again by itself. [`Store::recover`] clears leases at start-up.

use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::Value;

use super::evidence::{file_facts, request_record};
use super::trust::{admit, answer_record, settle_key, Admission};
use super::{exec, now_ms, query_row, Event, State, Store, StoreError, Tx};
use crate::config::ServiceConfig;
use crate::evidence::{sha256_hex, Entry};
use crate::host_file::Identity;
use crate::wire;

/// How long a claimed item stays with its worker before it is due again.
pub const LEASE_MS: i64 = 60_000;

/// A new asynchronous request from a host.
#[derive(Debug, Clone)]
pub struct NewAsync {
    /// The peer.
    pub peer: String,
    /// The request as it goes on the wire.
    pub request: wire::Request,
    /// Reply mode.
    pub reply: bool,
    /// The callback URL (absolute), if any.
    pub callback_url: Option<String>,
    /// `GET` or `POST`.
    pub callback_method: String,
    /// When to give up (ms since the epoch).
    pub expires_at: i64,
    /// A file to send ahead of the request.
    pub file: Option<OutgoingFile>,
}

/// A host's file to send with a request or reply, as it was accepted (see [`crate::host_file`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingFile {
    /// The absolute path of the host's file, below a send root or the inbox; ferry only reads it.
    pub path: String,
    /// The name the peer gets.
    pub name: String,
    /// The form field that carries the received file's path on the far side.
    pub field: String,
    /// What the file was when accepted; it is not sent if it changed (`None` in rows stored
    /// before identities were kept).
    pub identity: Option<Identity>,
}

/// Something the link must carry to a peer.
#[derive(Debug, Clone)]
pub enum OutboundWork {
    /// An asynchronous request of this node.
    Request {
        /// The peer.
        peer: String,
        /// The message.
        message: wire::AsyncRequest,
        /// A file to send first.
        file: Option<OutgoingFile>,
    },
    /// A result of a request this node received.
    Reply {
        /// The peer that sent the request.
        peer: String,
        /// The message.
        message: wire::Reply,
        /// A file to send first.
        file: Option<OutgoingFile>,
    },
}

impl OutboundWork {
    /// The peer it goes to.
    pub fn peer(&self) -> &str {
        match self {
            OutboundWork::Request { peer, .. } | OutboundWork::Reply { peer, .. } => peer,
        }
    }
}

/// An incoming request whose service call is due.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// The peer that sent it.
    pub peer: String,
    /// The request.
    pub request: wire::Request,
    /// The callback id given to the service in reply mode.
    pub callback_id: Option<String>,
    /// When the requesting node gives up.
    pub expires_at: i64,
    /// Calls tried so far, this one included.
    pub attempts: u32,
    /// The received file: its form field and local path.
    pub file: Option<(String, String)>,
}

/// What became of a service call for an incoming asynchronous request.
#[derive(Debug, Clone)]
pub enum ServiceOutcome {
    /// The service answered.
    Answered(wire::Response),
    /// The node refused the request or the call failed for good.
    Failed(String),
    /// The service could not be reached, so it was not called: try again at this time.
    RetryAt(i64, String),
}

/// A result to deliver to a host's callback URL.
#[derive(Debug, Clone)]
pub struct CallbackWork {
    /// The request id.
    pub id: String,
    /// The absolute callback URL.
    pub url: String,
    /// `GET` or `POST`.
    pub method: String,
    /// The reply's sequence number.
    pub seq: u32,
    /// Whether it is the last.
    pub end: bool,
    /// JSON text.
    pub data: Option<String>,
    /// The service's status (non-reply mode).
    pub status: Option<u16>,
    /// Why the request failed.
    pub error: Option<String>,
    /// Earlier failed attempts.
    pub attempts: u32,
    /// When to stop trying.
    pub expires_at: i64,
    /// A received file: its form field and local path.
    pub file: Option<(String, String)>,
    request: i64,
}

fn state_event(events: &mut Vec<Event>, id: &str, peer: &str, state: State) {
    events.push(Event::State { id: id.to_owned(), peer: peer.to_owned(), state });
}

fn decode_request(blob: &[u8]) -> Result<wire::Request, StoreError> {
    postcard::from_bytes(blob).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Who a new reply is due to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The requesting peer: the receiving node carries it back.
    Peer,
    /// The host's callback: the requesting node delivers it.
    Callback,
    /// No one.
    Nobody,
}

/// Adds a reply row (the next seq) for request row `request`, due to `due` now; returns its seq.
fn push_reply(
    t: &Transaction,
    request: i64,
    data: Option<&str>,
    error: Option<&str>,
    status: Option<u16>,
    end: bool,
    due: Due,
) -> Result<u32, StoreError> {
    let seq: u32 =
        query_row(t, "SELECT COALESCE(MAX(seq), 0) + 1 FROM replies WHERE request = ?1", [request], |r| r.get(0))?;
    let now = now_ms();
    exec(
        t,
        "INSERT INTO replies (request, seq, data, error, status, end, created_at, next_send_at, callback_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            request,
            seq,
            data,
            error,
            status,
            end,
            now,
            (due == Due::Peer).then_some(now),
            (due == Due::Callback).then_some(now)
        ],
    )?;
    Ok(seq)
}

/// Ends a request as failed with `error`, recording the error as its last reply.
///
/// On the requesting node the reply goes to the callback; on the receiving node it is carried back.
fn fail(t: &Tx, events: &mut Vec<Event>, row: i64, error: &str) -> Result<(), StoreError> {
    let (id, peer, direction, callback): (String, String, String, Option<String>) =
        query_row(t, "SELECT id, peer, direction, callback_url FROM requests WHERE seq = ?1", [row], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    exec(
        t,
        "UPDATE requests SET state = 'failed', error = ?2, updated_at = ?3, next_attempt_at = NULL WHERE seq = ?1",
        params![row, error, now_ms()],
    )?;
    let incoming = direction == "incoming";
    if incoming {
        settle_key(t, &peer, &id, None)?;
    }
    let due = match (incoming, callback) {
        (true, _) => Due::Peer,
        (false, Some(_)) => Due::Callback,
        (false, None) => Due::Nobody,
    };
    push_reply(t, row, None, Some(error), None, true, due)?;
    state_event(events, &id, &peer, State::Failed);
    Ok(())
}

impl Store {
    /// Stores a new asynchronous request as `waiting`; returns once it is on disk.
    ///
    /// With an idempotency key, an earlier request in the same scope (peer, service, path, key)
    /// that is still under way stands for it: its id and state are returned and nothing is stored.
    /// Otherwise the new request's id and `waiting`.
    pub async fn insert_outgoing(&self, new: NewAsync) -> Result<(String, State), StoreError> {
        let stored = self.run(move |t, events| {
            let now = now_ms();
            let r = &new.request;
            if let Some(key) = &r.idempotency_key {
                let running: Option<(String, String)> = query_row(t,
                    "SELECT id, state FROM requests WHERE peer = ?1 AND service = ?2 AND path = ?3
                     AND idempotency_key = ?4 AND direction = 'outgoing' AND state IN ('waiting', 'doing')",
                    params![new.peer, r.service, r.path, key],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                ).optional()?;
                if let Some((id, state)) = running {
                    return Ok((id, State::parse(&state).unwrap_or(State::Waiting)));
                }
            }
            let blob = postcard::to_stdvec(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            exec(t,
                "INSERT INTO requests (id, direction, peer, service, method, path, wire, reply, conversation,
                    callback_url, callback_method, state, created_at, updated_at, expires_at, next_attempt_at,
                    file_path, file_name, file_field, idempotency_key, file_identity)
                 VALUES (?1, 'outgoing', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'waiting', ?11, ?11, ?12, ?11, ?13, ?14, ?15, ?16,
                    ?17)",
                params![
                    r.id,
                    new.peer,
                    r.service,
                    r.method,
                    r.path,
                    blob,
                    new.reply,
                    r.conversation,
                    new.callback_url,
                    new.callback_method,
                    now,
                    new.expires_at,
                    new.file.as_ref().map(|f| &f.path),
                    new.file.as_ref().map(|f| &f.name),
                    new.file.as_ref().map(|f| &f.field),
                    r.idempotency_key,
                    new.file.as_ref().and_then(|f| f.identity).map(|i| i.to_string()),
                ],
            )?;
            state_event(events, &r.id, &new.peer, State::Waiting);
            Ok((r.id.clone(), State::Waiting))
        })
        .await?;
        self.wake.outbound.notify_one();
        Ok(stored)
    }

    /// Expires what is past its time, then claims up to `limit` requests and replies due for the link.
    pub async fn claim_outbound(&self, limit: usize) -> Result<Vec<OutboundWork>, StoreError> {
        let claimed = self
            .run(move |t, events| {
                let now = now_ms();
                let expired: Vec<i64> = t
                    .prepare_cached(
                        "SELECT seq FROM requests WHERE direction = 'outgoing' AND state IN ('waiting', 'doing')
                         AND expires_at < ?1",
                    )?
                    .query_map([now], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for row in expired {
                    fail(t, events, row, "expired: ttl_s passed before the request completed")?;
                }
                let mut work = Vec::new();
                let mut due = t.prepare_cached(
                    "UPDATE requests SET next_attempt_at = ?1 + ?2, attempts = attempts + 1
                     WHERE seq IN (SELECT seq FROM requests WHERE direction = 'outgoing' AND state = 'waiting'
                                   AND next_attempt_at <= ?1 ORDER BY next_attempt_at, seq LIMIT ?3)
                     RETURNING seq, peer, wire, reply, expires_at, file_path, file_name, file_field, file_identity",
                )?;
                let mut rows = due.query(params![now, LEASE_MS, limit as i64])?;
                let mut requests = Vec::new();
                while let Some(r) = rows.next()? {
                    let blob: Vec<u8> = r.get(2)?;
                    requests.push((
                        r.get::<_, i64>(0)?,
                        OutboundWork::Request {
                            peer: r.get(1)?,
                            message: wire::AsyncRequest {
                                request: decode_request(&blob)?,
                                reply: r.get(3)?,
                                expires_at_ms: r.get(4)?,
                            },
                            file: outgoing_file(r, 5)?,
                        },
                    ));
                }
                requests.sort_by_key(|(seq, _)| *seq);
                work.extend(requests.into_iter().map(|(_, w)| w));
                let mut due = t.prepare_cached(
                    "UPDATE replies SET next_send_at = ?1 + ?2, send_attempts = send_attempts + 1
                     WHERE rowid IN (SELECT rowid FROM replies WHERE next_send_at <= ?1
                                     ORDER BY next_send_at, rowid LIMIT ?3)
                     RETURNING (SELECT peer FROM requests q WHERE q.seq = request),
                               (SELECT id FROM requests q WHERE q.seq = request),
                               request, seq, end, data, error, status,
                               (SELECT response_status FROM requests q WHERE q.seq = request),
                               file_path, file_name, file_field, file_identity",
                )?;
                let mut rows = due.query(params![now, LEASE_MS, limit as i64])?;
                let mut replies = Vec::new();
                while let Some(r) = rows.next()? {
                    replies.push((
                        r.get::<_, i64>(2)?,
                        r.get::<_, u32>(3)?,
                        OutboundWork::Reply {
                            peer: r.get(0)?,
                            message: wire::Reply {
                                id: r.get(1)?,
                                seq: r.get(3)?,
                                end: r.get(4)?,
                                data: r.get(5)?,
                                error: r.get(6)?,
                                response: None,
                                file: None,
                            },
                            file: outgoing_file(r, 9)?,
                        },
                    ));
                }
                drop(rows);
                replies.sort_by_key(|(request, seq, _)| (*request, *seq));
                for (request, _, mut w) in replies {
                    if let OutboundWork::Reply { message, .. } = &mut w {
                        message.response = response_of(t, request)?.filter(|_| message.seq == 1);
                    }
                    work.push(w);
                }
                Ok(work)
            })
            .await?;
        Ok(claimed)
    }

    /// The peer persisted request `id` (`seq` 0) or its reply `seq`: `work`, as it was sent,
    /// goes into the evidence log.
    pub async fn acknowledged(&self, peer: &str, ack: wire::Ack, work: &OutboundWork) -> Result<(), StoreError> {
        let peer = peer.to_owned();
        let entry = self.rendered(|| match work {
            OutboundWork::Request { message, .. } => {
                request_record("out", &peer, &message.request, wire::payload_sha256(&message.request), &[])
            }
            OutboundWork::Reply { message, .. } => {
                reply_entry("out", &peer, message, wire::payload_sha256(message)).render()
            }
        });
        self.run(move |t, events| {
            t.record(entry)?;
            if ack.seq == 0 {
                let changed = exec(
                    t,
                    "UPDATE requests SET state = 'doing', next_attempt_at = NULL, updated_at = ?3
                     WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                    params![peer, ack.id, now_ms()],
                )?;
                if changed > 0 {
                    state_event(events, &ack.id, &peer, State::Doing);
                }
            } else {
                exec(
                    t,
                    "UPDATE replies SET next_send_at = NULL
                     WHERE seq = ?3 AND request = (SELECT seq FROM requests
                        WHERE direction = 'incoming' AND peer = ?1 AND id = ?2)",
                    params![peer, ack.id, ack.seq],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Sending `work` failed; try again at `at` (ms since the epoch).
    pub async fn retry_outbound(&self, work: Vec<OutboundWork>, at: i64) -> Result<(), StoreError> {
        self.run(move |t, _| {
            for w in &work {
                match w {
                    OutboundWork::Request { peer, message, .. } => exec(t,
                        "UPDATE requests SET next_attempt_at = ?3
                         WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                        params![peer, message.request.id, at],
                    )?,
                    OutboundWork::Reply { peer, message, .. } => exec(t,
                        "UPDATE replies SET next_send_at = ?4 WHERE seq = ?3 AND next_send_at IS NOT NULL
                         AND request = (SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1 AND id = ?2)",
                        params![peer, message.id, message.seq, at],
                    )?,
                };
            }
            Ok(())
        })
        .await
    }

    /// Puts back `work` the peer did not acknowledge (the stream broke, or its store failed), to
    /// be sent again after a pause that doubles with each attempt, from 1 s up to a minute. A peer
    /// that comes back makes it due at once ([`Store::peer_is_back`]).
    pub async fn resend_later(&self, work: Vec<OutboundWork>) -> Result<(), StoreError> {
        self.run(move |t, _| {
            let now = now_ms();
            for w in &work {
                match w {
                    OutboundWork::Request { peer, message, .. } => exec(t,
                        "UPDATE requests SET next_attempt_at = ?3 + MIN(60000, 1000 << MIN(MAX(attempts - 1, 0), 6))
                         WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                        params![peer, message.request.id, now],
                    )?,
                    OutboundWork::Reply { peer, message, .. } => exec(t,
                        "UPDATE replies SET next_send_at = ?4 + MIN(60000, 1000 << MIN(MAX(send_attempts - 1, 0), 6))
                         WHERE seq = ?3 AND next_send_at IS NOT NULL
                         AND request = (SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1 AND id = ?2)",
                        params![peer, message.id, message.seq, now],
                    )?,
                };
            }
            Ok(())
        })
        .await
    }

    /// Everything waiting for `peer`, requests and replies, is due now (it came back).
    pub async fn peer_is_back(&self, peer: &str) -> Result<(), StoreError> {
        let peer = peer.to_owned();
        self.run(move |t, _| {
            let now = now_ms();
            exec(
                t,
                "UPDATE requests SET next_attempt_at = ?2 WHERE direction = 'outgoing' AND peer = ?1
                 AND state = 'waiting' AND next_attempt_at > ?2",
                params![peer, now],
            )?;
            exec(
                t,
                "UPDATE replies SET next_send_at = ?2 WHERE next_send_at > ?2
                 AND request IN (SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1)",
                params![peer, now],
            )?;
            Ok(())
        })
        .await?;
        self.wake.outbound.notify_one();
        Ok(())
    }

    /// The peer refused asynchronous request `id` outright (unknown service, not allowed, disabled,
    /// a duplicate or a key still in progress).
    pub async fn refused(&self, peer: &str, id: &str, error: String) -> Result<(), StoreError> {
        let refusal = self.rendered(|| answer_record("in", peer, id, Err(&error)));
        let (peer, id) = (peer.to_owned(), id.to_owned());
        self.run(move |t, events| {
            t.record(refusal)?;
            let row: Option<i64> = query_row(
                t,
                "SELECT seq FROM requests WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                params![peer, id],
                |r| r.get(0),
            )
            .optional()?;
            if let Some(row) = row {
                fail(t, events, row, &error)?;
            }
            Ok(())
        })
        .await?;
        self.wake.callbacks.notify_one();
        Ok(())
    }

    /// Takes a peer's asynchronous request in: a retransmission is [`Admission::Known`]; a new one
    /// passes `service`'s idempotency and duplicate checks and is stored as `waiting`, or, when its
    /// key's earlier request succeeded, stored as done with that request's results (to be carried
    /// back like any others), or is refused.
    ///
    /// `file` is the local path of the request's file, already received and verified.
    pub async fn insert_incoming(
        &self,
        peer: &str,
        message: wire::AsyncRequest,
        file: Option<String>,
        service: &ServiceConfig,
        payload_sha256: [u8; 32],
    ) -> Result<Admission, StoreError> {
        let arrived = self.arrived(peer, &message.request, service, payload_sha256);
        let (peer, service) = (peer.to_owned(), service.clone());
        let admission = self
            .run(move |t, events| {
                let now = now_ms();
                let r = &message.request;
                let known: Option<i64> = query_row(
                    t,
                    "SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1 AND id = ?2",
                    params![peer, r.id],
                    |row| row.get(0),
                )
                .optional()?;
                if known.is_some() {
                    return Ok(Admission::Known);
                }
                let admission = admit(t, &peer, r, &service, arrived)?;
                let replay = match &admission {
                    Admission::New => None,
                    Admission::Replay(response) => Some(response.clone()),
                    Admission::Known | Admission::Refused(_) => return Ok(admission),
                };
                let blob = postcard::to_stdvec(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let callback_id = message.reply.then(|| uuid::Uuid::new_v4().simple().to_string());
                let masked = crate::service::masked_form(&r.form, &service.mask_fields).to_string();
                exec(
                    t,
                    "INSERT INTO requests (id, direction, peer, service, method, path, wire, reply,
                        conversation, callback_id, state, created_at, updated_at, expires_at, next_attempt_at,
                        file_path, file_name, file_field, file_size, file_sha256, file_done, idempotency_key,
                        masked_form)
                     VALUES (?1, 'incoming', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'waiting', ?10, ?10, ?11, ?10,
                        ?12, ?13, ?14, ?15, ?16, COALESCE(?15, 0), ?17, ?18)",
                    params![
                        r.id,
                        peer,
                        r.service,
                        r.method,
                        r.path,
                        blob,
                        message.reply,
                        r.conversation,
                        callback_id,
                        now,
                        message.expires_at_ms,
                        file,
                        r.file.as_ref().map(|f| &f.name),
                        r.file.as_ref().map(|f| &f.field),
                        r.file.as_ref().map(|f| f.size as i64),
                        r.file.as_ref().map(|f| hex::encode(f.sha256)),
                        r.idempotency_key,
                        masked,
                    ],
                )?;
                let row = t.last_insert_rowid();
                match replay {
                    None => state_event(events, &r.id, &peer, State::Waiting),
                    Some(response) => replay_results(t, events, row, &peer, &r.id, response)?,
                }
                Ok(admission)
            })
            .await?;
        match admission {
            Admission::New => self.wake.incoming.notify_one(),
            Admission::Replay(_) => self.wake.outbound.notify_one(),
            _ => {}
        }
        Ok(admission)
    }

    /// Claims up to `limit` incoming requests whose service call is due, marking them `doing`
    /// before the call, so that a crash during the call never leads to a second call.
    pub async fn claim_incoming(&self, limit: usize) -> Result<Vec<IncomingCall>, StoreError> {
        self.run(move |t, events| {
            let now = now_ms();
            let expired: Vec<i64> = t
                .prepare_cached(
                    "SELECT seq FROM requests WHERE direction = 'incoming' AND expires_at < ?1
                     AND (state = 'waiting' OR (state = 'doing' AND callback_id IS NOT NULL AND response_status IS NOT NULL))",
                )?
                .query_map([now], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for row in expired {
                fail(t, events, row, "expired: ttl_s passed before the request completed")?;
            }
            let mut claim = t.prepare_cached(
                "UPDATE requests SET state = 'doing', next_attempt_at = NULL, attempts = attempts + 1, updated_at = ?1
                 WHERE seq IN (SELECT seq FROM requests WHERE direction = 'incoming' AND state = 'waiting'
                               AND next_attempt_at <= ?1 ORDER BY next_attempt_at, seq LIMIT ?2)
                 RETURNING seq, peer, wire, callback_id, expires_at, attempts, file_field, file_path",
            )?;
            let mut rows = claim.query(params![now, limit as i64])?;
            let mut calls = Vec::new();
            while let Some(r) = rows.next()? {
                let blob: Vec<u8> = r.get(2)?;
                calls.push((
                    r.get::<_, i64>(0)?,
                    IncomingCall {
                        peer: r.get(1)?,
                        request: decode_request(&blob)?,
                        callback_id: r.get(3)?,
                        expires_at: r.get(4)?,
                        attempts: r.get(5)?,
                        file: r.get::<_, Option<String>>(6)?.zip(r.get::<_, Option<String>>(7)?),
                    },
                ));
            }
            calls.sort_by_key(|(seq, _)| *seq);
            for (_, c) in &calls {
                state_event(events, &c.request.id, &c.peer, State::Doing);
            }
            Ok(calls.into_iter().map(|(_, c)| c).collect())
        })
        .await
    }

    /// Records what the service did with an incoming request, and queues the result for the
    /// requesting node when there is one to carry back. The evidence log records the result as it
    /// goes out, in the reply that carries it ([`Store::acknowledged`]).
    pub async fn service_answered(&self, peer: &str, id: &str, outcome: ServiceOutcome) -> Result<(), StoreError> {
        let (peer, id) = (peer.to_owned(), id.to_owned());
        self.run(move |t, events| {
            let (row, reply): (i64, bool) = query_row(t,
                "SELECT seq, reply FROM requests WHERE direction = 'incoming' AND peer = ?1 AND id = ?2",
                params![peer, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            match outcome {
                ServiceOutcome::RetryAt(at, why) => {
                    exec(t,
                        "UPDATE requests SET state = 'waiting', next_attempt_at = ?2, error = ?3, updated_at = ?4 WHERE seq = ?1",
                        params![row, at, why, now_ms()],
                    )?;
                    state_event(events, &id, &peer, State::Waiting);
                }
                ServiceOutcome::Failed(why) => fail(t, events, row, &why)?,
                ServiceOutcome::Answered(response) => {
                    if response.is_success() && !reply {
                        settle_key(t, &peer, &id, Some(&response))?;
                    }
                    let headers = serde_json::to_string(&response.headers).unwrap_or_default();
                    exec(t,
                        "UPDATE requests SET response_status = ?2, response_headers = ?3, response_body = ?4, updated_at = ?5
                         WHERE seq = ?1",
                        params![row, response.status, headers, response.body, now_ms()],
                    )?;
                    let ok = response.is_success();
                    if !ok {
                        fail(t, events, row, &format!("the service answered HTTP {}", response.status))?;
                    } else if !reply {
                        let data = response.body_value().0.to_string();
                        push_reply(t, row, Some(&data), None, Some(response.status), true, Due::Peer)?;
                        exec(t, "UPDATE requests SET state = 'success' WHERE seq = ?1", [row])?;
                        state_event(events, &id, &peer, State::Success);
                    }
                }
            }
            Ok(())
        })
        .await?;
        self.wake.outbound.notify_one();
        Ok(())
    }

    /// A service's reply to an incoming reply-mode request (`POST /v1/replies`).
    ///
    /// Returns the request id and the reply's seq, or `None` for an unknown or finished callback id.
    pub async fn add_reply(
        &self,
        callback_id: &str,
        data: Option<Value>,
        error: Option<String>,
        end: bool,
        file: Option<OutgoingFile>,
    ) -> Result<Option<(String, u32)>, StoreError> {
        let callback_id = callback_id.to_owned();
        let added = self
            .run(move |t, events| {
                let found: Option<(i64, String, String)> = t
                    .query_row(
                        "SELECT seq, id, peer FROM requests WHERE callback_id = ?1 AND direction = 'incoming'
                         AND state = 'doing'",
                        [&callback_id],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let Some((row, id, peer)) = found else { return Ok(None) };
                if let Some(error) = error {
                    fail(t, events, row, &error)?;
                    let seq = query_row(t, "SELECT MAX(seq) FROM replies WHERE request = ?1", [row], |r| r.get(0))?;
                    return Ok(Some((id, seq)));
                }
                let data = data.unwrap_or(Value::Null);
                let seq = push_reply(t, row, Some(&data.to_string()), None, None, end, Due::Peer)?;
                if let Some(f) = &file {
                    exec(
                        t,
                        "UPDATE replies SET file_path = ?3, file_name = ?4, file_field = ?5, file_identity = ?6
                         WHERE request = ?1 AND seq = ?2",
                        params![row, seq, f.path, f.name, f.field, f.identity.map(|i| i.to_string())],
                    )?;
                }
                let file = file.map(|f| f.path);
                events.push(Event::Reply { id: id.clone(), peer: peer.clone(), seq, data, file, end });
                if end {
                    exec(
                        t,
                        "UPDATE requests SET state = 'success', updated_at = ?2 WHERE seq = ?1",
                        params![row, now_ms()],
                    )?;
                    if let Some(response) = response_of(t, row)? {
                        settle_key(t, &peer, &id, Some(&response))?;
                    }
                    state_event(events, &id, &peer, State::Success);
                }
                Ok(Some((id, seq)))
            })
            .await?;
        if added.is_some() {
            self.wake.outbound.notify_one();
        }
        Ok(added)
    }

    /// Ends reply `seq` of the peer's request `id`, which can never be delivered as it is (its file
    /// cannot be read, or the peer refused it for good), as the request's failure with `error`:
    /// the reply becomes an error reply without file, carried to the requesting node so that it
    /// learns why. Its `file_path` stays, for the inbox to tell the operator (see
    /// [`Store::reply_file_state`]).
    pub async fn reply_refused(&self, peer: &str, id: &str, seq: u32, error: String) -> Result<(), StoreError> {
        let (peer, id) = (peer.to_owned(), id.to_owned());
        self.run(move |t, events| {
            let row: Option<i64> = query_row(
                t,
                "SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1 AND id = ?2",
                params![peer, id],
                |r| r.get(0),
            )
            .optional()?;
            let Some(row) = row else { return Ok(()) };
            exec(
                t,
                "UPDATE replies SET data = NULL, error = ?3, end = 1, next_send_at = ?4, file_name = NULL,
                    file_field = NULL, file_identity = NULL
                 WHERE request = ?1 AND seq = ?2",
                params![row, seq, error, now_ms()],
            )?;
            // Later replies not yet carried would arrive after the end: they stay, unsent.
            exec(
                t,
                "UPDATE replies SET next_send_at = NULL, error = COALESCE(error, ?3)
                 WHERE request = ?1 AND seq > ?2 AND next_send_at IS NOT NULL",
                params![row, seq, format!("not sent: reply {seq} before it failed ({error})")],
            )?;
            exec(
                t,
                "UPDATE requests SET state = 'failed', error = ?2, updated_at = ?3 WHERE seq = ?1",
                params![row, error, now_ms()],
            )?;
            settle_key(t, &peer, &id, None)?;
            state_event(events, &id, &peer, State::Failed);
            Ok(())
        })
        .await?;
        self.wake.outbound.notify_one();
        Ok(())
    }

    /// Stops carrying reply `seq` of the peer's request `id`: the peer refused even the error reply
    /// [`Store::reply_refused`] made of it.
    pub async fn reply_abandoned(&self, peer: &str, id: &str, seq: u32) -> Result<(), StoreError> {
        let (peer, id) = (peer.to_owned(), id.to_owned());
        self.run(move |t, _| {
            exec(
                t,
                "UPDATE replies SET next_send_at = NULL
                 WHERE seq = ?3 AND request = (SELECT seq FROM requests WHERE direction = 'incoming'
                                               AND peer = ?1 AND id = ?2)",
                params![peer, id, seq],
            )?;
            Ok(())
        })
        .await
    }

    /// Persists a result the peer carried back for one of this node's requests.
    ///
    /// Retransmissions are ignored; the request's state follows its final reply.
    ///
    /// `file` is the local path of the reply's file, already received and verified;
    /// `payload_sha256` the reply's [`wire::payload_sha256`]. Returns how long the request took,
    /// from its acceptance to this reply, when this reply ended it.
    pub async fn received_reply(
        &self,
        peer: &str,
        reply: wire::Reply,
        file: Option<String>,
        payload_sha256: [u8; 32],
    ) -> Result<Option<Duration>, StoreError> {
        let arrived = self.rendered(|| reply_entry("in", peer, &reply, payload_sha256).render());
        let peer = peer.to_owned();
        let took = self.run(move |t, events| {
            let found: Option<(i64, i64, Option<String>)> = query_row(t,
                    "SELECT seq, created_at, callback_url FROM requests WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2",
                    params![peer, reply.id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((row, created_at, callback)) = found else {
                tracing::warn!(%peer, id = %reply.id, "a reply for a request this node does not know; ignored");
                return Ok(None);
            };
            let status = reply.response.as_ref().map(|r| r.status);
            let inserted = exec(t,
                "INSERT OR IGNORE INTO replies (request, seq, data, error, status, end, created_at, callback_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![row, reply.seq, reply.data, reply.error, status, reply.end, now_ms(), callback.as_ref().map(|_| now_ms())],
            )?;
            if inserted == 0 {
                return Ok(None);
            }
            t.record(arrived)?;
            if let Some(f) = &reply.file {
                exec(t,
                    "UPDATE replies SET file_path = ?3, file_name = ?4, file_field = ?5, file_size = ?6, file_sha256 = ?7
                     WHERE request = ?1 AND seq = ?2",
                    params![row, reply.seq, file, f.name, f.field, f.size as i64, hex::encode(f.sha256)],
                )?;
            }
            if let Some(response) = &reply.response {
                let headers = serde_json::to_string(&response.headers).unwrap_or_default();
                exec(t,
                    "UPDATE requests SET response_status = ?2, response_headers = ?3, response_body = ?4 WHERE seq = ?1",
                    params![row, response.status, headers, response.body],
                )?;
            }
            let data = reply.data.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(Value::Null);
            events.push(Event::Reply {
                id: reply.id.clone(),
                peer: peer.clone(),
                seq: reply.seq,
                data,
                file: file.clone(),
                end: reply.end,
            });
            let state = match (&reply.error, reply.end) {
                (Some(_), _) => Some(State::Failed),
                (None, true) => Some(State::Success),
                (None, false) => None,
            };
            if let Some(state) = state {
                exec(t,
                    "UPDATE requests SET state = ?2, error = ?3, updated_at = ?4, next_attempt_at = NULL
                     WHERE seq = ?1 AND state IN ('waiting', 'doing')",
                    params![row, state.as_str(), reply.error, now_ms()],
                )?;
                state_event(events, &reply.id, &peer, state);
                return Ok(Some(Duration::from_millis((now_ms() - created_at).max(0) as u64)));
            }
            Ok(None)
        })
        .await?;
        self.wake.callbacks.notify_one();
        Ok(took)
    }

    /// Claims up to `limit` results due for delivery to callbacks: per request only the lowest
    /// undelivered seq, so that results arrive in order.
    pub async fn claim_callbacks(&self, limit: usize) -> Result<Vec<CallbackWork>, StoreError> {
        self.run(move |t, _| {
            let now = now_ms();
            let mut claim = t.prepare_cached(
                "UPDATE replies SET callback_at = ?1 + ?2
                 WHERE rowid IN (
                    SELECT r.rowid FROM replies r WHERE r.callback_at <= ?1 AND r.delivered = 0
                    AND (r.seq = 1 OR EXISTS (SELECT 1 FROM replies e WHERE e.request = r.request
                                              AND e.seq = r.seq - 1 AND e.delivered = 1))
                    ORDER BY r.callback_at LIMIT ?3)
                 RETURNING request, seq, end, data, error, status, callback_attempts, file_field, file_path",
            )?;
            let mut rows = claim.query(params![now, LEASE_MS, limit as i64])?;
            let mut claimed = Vec::new();
            while let Some(r) = rows.next()? {
                claimed.push((
                    r.get::<_, i64>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<u16>>(5)?,
                    r.get::<_, u32>(6)?,
                    r.get::<_, Option<String>>(7)?.zip(r.get::<_, Option<String>>(8)?),
                ));
            }
            drop(rows);
            let mut work = Vec::new();
            for (request, seq, end, data, error, status, attempts, file) in claimed {
                let (id, url, method, expires_at) = query_row(
                    t,
                    "SELECT id, callback_url, callback_method, expires_at FROM requests WHERE seq = ?1",
                    [request],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                work.push(CallbackWork {
                    id,
                    url,
                    method,
                    seq,
                    end,
                    data,
                    error,
                    status,
                    attempts,
                    expires_at,
                    file,
                    request,
                });
            }
            Ok(work)
        })
        .await
    }

    /// Records one delivery attempt: delivered, or failed with `error` and the next try at `retry_at`
    /// (`None`: give up).
    pub async fn callback_attempted(
        &self,
        work: &CallbackWork,
        outcome: Result<(), (String, Option<i64>)>,
    ) -> Result<(), StoreError> {
        let (request, seq) = (work.request, work.seq);
        let mut delivered = Entry::new("callback", "out", "", &work.id);
        delivered.reply_seq = Some(work.seq);
        delivered.body_sha256 =
            Some(sha256_hex(work.data.as_deref().or(work.error.as_deref()).unwrap_or_default().as_bytes()));
        delivered.path = Some(work.url.clone());
        delivered.method = Some(work.method.clone());
        self.run(move |t, _| {
            if outcome.is_ok() {
                delivered.peer = query_row(t, "SELECT peer FROM requests WHERE seq = ?1", [request], |r| r.get(0))?;
                t.record(delivered)?;
            }
            match outcome {
                Ok(()) => exec(t,
                    "UPDATE replies SET delivered = 1, callback_at = NULL, callback_attempts = callback_attempts + 1,
                     callback_error = NULL WHERE request = ?1 AND seq = ?2",
                    params![request, seq],
                )?,
                Err((error, at)) => exec(t,
                    "UPDATE replies SET callback_at = ?3, callback_attempts = callback_attempts + 1, callback_error = ?4
                     WHERE request = ?1 AND seq = ?2",
                    params![request, seq, at, error],
                )?,
            };
            Ok(())
        })
        .await?;
        self.wake.callbacks.notify_one();
        Ok(())
    }

    /// At start-up: clears leases of the previous run, and fails incoming requests whose service
    /// call was under way when the node stopped (the service may have acted; it is not called twice).
    pub async fn recover(&self) -> Result<usize, StoreError> {
        self.run(move |t, events| {
            let now = now_ms();
            exec(
                t,
                "UPDATE requests SET next_attempt_at = ?1 WHERE state = 'waiting' AND next_attempt_at > ?1",
                [now],
            )?;
            exec(t, "UPDATE replies SET next_send_at = ?1 WHERE next_send_at > ?1", [now])?;
            exec(t, "UPDATE replies SET callback_at = ?1 WHERE callback_at > ?1 AND delivered = 0", [now])?;
            let interrupted: Vec<i64> = t
                .prepare(
                    "SELECT seq FROM requests WHERE direction = 'incoming' AND state = 'doing'
                     AND response_status IS NULL",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for row in &interrupted {
                fail(
                    t,
                    events,
                    *row,
                    "the receiving node stopped while its service was being called; the service may have acted, \
                     so it is not called again",
                )?;
            }
            // Keys of synchronous requests cut by the stop, which never finished: a failure does not count.
            exec(
                t,
                "DELETE FROM idempotency WHERE state = 'running' AND id NOT IN
                    (SELECT id FROM requests WHERE direction = 'incoming' AND state IN ('waiting', 'doing'))",
                [],
            )?;
            exec(t, "DELETE FROM idempotency WHERE state = 'success' AND expires_at < ?1", [now])?;
            Ok(interrupted.len())
        })
        .await
    }
}

/// The log's record of a reply (or of a non-reply-mode result, event `response`).
fn reply_entry(direction: &'static str, peer: &str, reply: &wire::Reply, payload_sha256: [u8; 32]) -> Entry {
    let event = if reply.response.is_some() && reply.error.is_none() { "response" } else { "reply" };
    let mut entry = Entry::new(event, direction, peer, &reply.id);
    entry.reply_seq = Some(reply.seq);
    entry.body_sha256 = Some(hex::encode(payload_sha256));
    entry.file = reply.file.as_ref().map(file_facts);
    entry
}

/// Completes incoming request row `row` from the stored result of its key's earlier request:
/// that request's replies when this node still has them, else one reply from its response.
fn replay_results(
    t: &Tx,
    events: &mut Vec<Event>,
    row: i64,
    peer: &str,
    id: &str,
    response: wire::Response,
) -> Result<(), StoreError> {
    let now = now_ms();
    let earlier = response.replay_of.clone().unwrap_or_default();
    exec(
        t,
        "UPDATE requests SET state = 'success', replay_of = ?2, next_attempt_at = NULL, response_status = ?3,
            response_headers = ?4, response_body = ?5 WHERE seq = ?1",
        params![
            row,
            earlier,
            response.status,
            serde_json::to_string(&response.headers).unwrap_or_default(),
            response.body
        ],
    )?;
    let copied = exec(
        t,
        "INSERT INTO replies (request, seq, data, error, status, end, created_at, next_send_at,
            file_path, file_name, file_field, file_identity)
         SELECT ?1, r.seq, r.data, r.error, r.status, r.end, ?2, ?2, r.file_path, r.file_name, r.file_field,
            r.file_identity
         FROM replies r JOIN requests q ON r.request = q.seq
         WHERE q.direction = 'incoming' AND q.peer = ?3 AND q.id = ?4",
        params![row, now, peer, earlier],
    )?;
    if copied == 0 {
        let data = response.body_value().0.to_string();
        push_reply(t, row, Some(&data), None, Some(response.status), true, Due::Peer)?;
    }
    state_event(events, id, peer, State::Success);
    Ok(())
}

/// The outgoing file in columns `at` to `at + 3` (path, name, field, identity), if any.
fn outgoing_file(r: &rusqlite::Row, at: usize) -> rusqlite::Result<Option<OutgoingFile>> {
    Ok(
        match (
            r.get::<_, Option<String>>(at)?,
            r.get::<_, Option<String>>(at + 1)?,
            r.get::<_, Option<String>>(at + 2)?,
        ) {
            (Some(path), Some(name), Some(field)) => {
                let identity = r.get::<_, Option<String>>(at + 3)?.as_deref().and_then(Identity::parse);
                Some(OutgoingFile { path, name, field, identity })
            }
            _ => None,
        },
    )
}

/// The stored service response of request row `request`, if any.
fn response_of(t: &Transaction, request: i64) -> Result<Option<wire::Response>, StoreError> {
    let response = t
        .query_row(
            "SELECT response_status, response_headers, response_body FROM requests WHERE seq = ?1",
            [request],
            |r| {
                let Some(status) = r.get(0)? else { return Ok(None) };
                let headers: Option<String> = r.get(1)?;
                Ok(Some(wire::Response {
                    replay_of: None,
                    status,
                    headers: headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
                    body: r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                }))
            },
        )
        .optional()?;
    Ok(response.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: &str, seq: u32, end: bool) -> wire::Reply {
        let data = Some(format!("{{\"n\":{seq}}}"));
        wire::Reply { id: id.to_owned(), seq, end, data, error: None, response: None, file: None }
    }

    /// An async reply-mode request `id` to org-b with a callback, expiring in a minute.
    fn new_async(id: &str) -> NewAsync {
        let request = wire::Request {
            version: wire::PROTOCOL_VERSION,
            id: id.into(),
            service: "1".into(),
            method: "POST".into(),
            path: "/job".into(),
            form: vec![],
            encoding: wire::Encoding::Form,
            headers: vec![],
            conversation: None,
            timeout_ms: 30_000,
            file: None,
            idempotency_key: None,
        };
        NewAsync {
            peer: "org-b".into(),
            request,
            reply: true,
            callback_url: Some("http://127.0.0.1:9/cb".into()),
            callback_method: "POST".into(),
            expires_at: now_ms() + 60_000,
            file: None,
        }
    }

    /// Replies carried on concurrent streams may arrive out of order; their callbacks may not.
    #[tokio::test]
    async fn a_reply_that_overtakes_an_earlier_one_waits_for_its_callback() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_outgoing(new_async("r1")).await.unwrap();
        let due = |store: Store| async move {
            store.claim_callbacks(10).await.unwrap().into_iter().map(|w| w.seq).collect::<Vec<_>>()
        };

        store.received_reply("org-b", reply("r1", 2, true), None, [0; 32]).await.unwrap();
        assert_eq!(due(store.clone()).await, Vec::<u32>::new(), "seq 2 waits while seq 1 has not arrived");
        store.received_reply("org-b", reply("r1", 1, false), None, [0; 32]).await.unwrap();
        let first = store.claim_callbacks(10).await.unwrap();
        assert_eq!(first.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![1]);
        store.callback_attempted(&first[0], Ok(())).await.unwrap();
        assert_eq!(due(store.clone()).await, vec![2], "seq 2 once seq 1 is delivered");
    }

    /// What the peer did not acknowledge is sent again after a pause that doubles, up to a minute.
    #[tokio::test]
    async fn resends_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut new = new_async("r1");
        new.callback_url = None;
        store.insert_outgoing(new).await.unwrap();
        let claimed = store.claim_outbound(10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let pause = |store: Store, attempts: i64| {
            let claimed = claimed.clone();
            async move {
                store.run(move |t, _| Ok(exec(t, "UPDATE requests SET attempts = ?1", [attempts])?)).await.unwrap();
                store.resend_later(claimed).await.unwrap();
                let at: i64 = store
                    .run(|t, _| Ok(query_row(t, "SELECT next_attempt_at FROM requests", [], |r| r.get(0))?))
                    .await
                    .unwrap();
                at - now_ms()
            }
        };
        for (attempts, want) in [(1, 1_000), (2, 2_000), (4, 8_000), (7, 60_000), (40, 60_000)] {
            let got = pause(store.clone(), attempts).await;
            assert!((want - 500..=want).contains(&got), "after {attempts} attempts: {got} ms, want {want}");
        }
    }
}
