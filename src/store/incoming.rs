//! Peers' requests to this node: admitted (a retransmission is known, a new one passes its
//! service's idempotency and duplicate checks), claimed when the service call is due, and
//! completed by what the service answered.

use super::sql::{params, OptionalExtension};

use super::queue::{fail, state_event};
use super::replies::{push_reply, response_columns, Due};
use super::stored;
use super::trust::{admit, settle_key, Admission};
use super::{exec, now_ms, query_row, Event, FormFile, State, Store, StoreError, Tx};
use crate::config::ServiceConfig;
use crate::wire;

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
    /// The received file.
    pub file: Option<FormFile>,
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

impl Store {
    /// Takes a peer's asynchronous request in: a retransmission is [`Admission::Known`]; a new one
    /// passes `service`'s idempotency and duplicate checks and is stored as `waiting`, or, when its
    /// key's earlier request succeeded, stored as done with that request's results (to be carried
    /// back like any others), or is refused.
    ///
    /// `file` is the local path of the request's file, already received and verified.
    pub async fn insert_incoming(
        &self,
        peer: &str,
        member: Option<&str>,
        message: wire::AsyncRequest,
        file: Option<String>,
        service: &ServiceConfig,
        payload_sha256: [u8; 32],
    ) -> Result<Admission, StoreError> {
        let arrived = self.arrived(peer, member, &message.request, service, payload_sha256);
        let (peer, member, service) = (peer.to_owned(), member.map(str::to_owned), service.clone());
        let admission = self
            .run(move |t, events| {
                let now = now_ms();
                let r = &message.request;
                // Two members may be handed the same request at once (the peer resent it).
                t.lock(&format!("incoming\u{1}{peer}\u{1}{}", r.id))?;
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
                let blob = stored::encode(r)?;
                let callback_id = message.reply.then(|| uuid::Uuid::new_v4().simple().to_string());
                let masked = crate::service::masked_form(&r.form, &service.mask_fields).to_string();
                let row: i64 = query_row(
                    t,
                    "INSERT INTO requests (id, direction, peer, service, method, path, wire, reply,
                        conversation, callback_id, state, created_at, updated_at, expires_at, next_attempt_at,
                        file_path, file_name, file_field, file_size, file_sha256, file_done, idempotency_key,
                        masked_form, record_version, member)
                     VALUES (?1, 'incoming', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'waiting', ?10, ?10, ?11, ?10,
                        ?12, ?13, ?14, ?15, ?16, COALESCE(?15, CAST(0 AS BIGINT)), ?17, ?18, ?19, ?20)
                     RETURNING seq",
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
                        stored::VERSION,
                        member,
                    ],
                    |r| r.get(0),
                )?;
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
                .query(
                    "SELECT seq FROM requests WHERE direction = 'incoming' AND expires_at < ?1
                     AND (state = 'waiting' OR (state = 'doing' AND callback_id IS NOT NULL AND response_status IS NOT NULL))", [now], |r| r.get(0))?;
            for row in expired {
                fail(t, events, row, "expired: ttl_s passed before the request completed", None)?;
            }
            let claim = format!(
                "UPDATE requests SET state = 'doing', next_attempt_at = NULL, attempts = attempts + 1, updated_at = ?1,
                    lease_holder = ?3
                 WHERE seq IN (SELECT seq FROM requests WHERE direction = 'incoming' AND state = 'waiting'
                               AND next_attempt_at <= ?1 ORDER BY next_attempt_at, seq LIMIT ?2{})
                 RETURNING seq, peer, wire, callback_id, expires_at, attempts, file_field, file_path, record_version",
                t.skip_locked("requests")
            );
            let mut calls = t.query(&claim, params![now, limit as i64, t.member()], |r| {
                let blob: Vec<u8> = r.get(2)?;
                Ok((
                    r.get::<i64>(0)?,
                    IncomingCall {
                        peer: r.get(1)?,
                        request: stored::decode(r.get(8)?, &blob)?,
                        callback_id: r.get(3)?,
                        expires_at: r.get(4)?,
                        attempts: r.get(5)?,
                        file: r
                            .get::<Option<String>>(6)?
                            .zip(r.get::<Option<String>>(7)?)
                            .map(|(field, path)| FormFile { field, path }),
                    },
                ))
            })?;
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
            // Only while this member still holds the call: a member taken over (silent too long)
            // finds the request failed by another, and its answer is not used. The answer, and the
            // success a plain request ends in, are written by the same change of its row. (Should
            // queueing its reply then fail, SQLite keeps that change, as it keeps what any failed
            // job wrote before it failed: the requesting node's ttl then ends the request.)
            let answered = match &outcome {
                ServiceOutcome::Answered(r) => Some(r),
                _ => None,
            };
            let (status, headers, body) = response_columns(answered);
            let held: Option<(i64, bool)> = query_row(t,
                "UPDATE requests SET updated_at = ?4, response_status = COALESCE(?5, response_status),
                    response_headers = COALESCE(?6, response_headers), response_body = COALESCE(?7, response_body),
                    state = CASE WHEN ?8 = 1 AND reply = 0 THEN 'success' ELSE state END
                 WHERE direction = 'incoming' AND peer = ?1 AND id = ?2
                 AND state = 'doing' AND (CAST(?3 AS TEXT) = '' OR lease_holder = ?3) RETURNING seq, reply",
                params![
                    peer,
                    id,
                    t.member(),
                    now_ms(),
                    status,
                    headers,
                    body,
                    answered.is_some_and(|r| r.is_success()) as i64,
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            let Some((row, reply)) = held else {
                tracing::warn!(%peer, %id, "the service answered a request this node no longer holds (ended, or taken \
                    over by another member); its answer is not used");
                return Ok(());
            };
            match outcome {
                ServiceOutcome::RetryAt(at, why) => {
                    exec(t,
                        "UPDATE requests SET state = 'waiting', next_attempt_at = ?2, error = ?3, updated_at = ?4 WHERE seq = ?1",
                        params![row, at, why, now_ms()],
                    )?;
                    state_event(events, &id, &peer, State::Waiting);
                }
                ServiceOutcome::Failed(why) => fail(t, events, row, &why, None)?,
                ServiceOutcome::Answered(response) if !response.is_success() => {
                    fail(t, events, row, &format!("the service answered HTTP {}", response.status), None)?
                }
                // A reply-mode request waits for the service's replies.
                ServiceOutcome::Answered(_) if reply => {}
                ServiceOutcome::Answered(response) => {
                    settle_key(t, &peer, &id, Some(&response))?;
                    let data = response.body_json().0.get().to_owned();
                    push_reply(t, row, Some(&data), None, Some(response.status), true, Due::Peer)?;
                    state_event(events, &id, &peer, State::Success);
                }
            }
            Ok(())
        })
        .await?;
        self.wake.outbound.notify_one();
        Ok(())
    }
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
        "INSERT INTO replies (request, seq, data, error, status, \"end\", created_at, next_send_at,
            file_path, file_name, file_field, file_identity)
         SELECT ?1, r.seq, r.data, r.error, r.status, r.\"end\", ?2, ?2, r.file_path, r.file_name, r.file_field,
            r.file_identity
         FROM replies r JOIN requests q ON r.request = q.seq
         WHERE q.direction = 'incoming' AND q.peer = ?3 AND q.id = ?4",
        params![row, now, peer, earlier],
    )?;
    if copied == 0 {
        let data = response.body_json().0.get().to_owned();
        push_reply(t, row, Some(&data), None, Some(response.status), true, Due::Peer)?;
    }
    state_event(events, id, peer, State::Success);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::fixtures::{incoming, service};
    use crate::store::OutboundWork;

    /// A request the peer sends again (its acknowledgement was lost) is known, and its service
    /// is called once.
    #[tokio::test]
    async fn a_request_admitted_twice_is_known_and_called_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let service = service();
        let admit = || store.insert_incoming("org-a", None, incoming("r1"), None, &service, [0; 32]);
        assert_eq!(admit().await.unwrap(), Admission::New);
        assert_eq!(admit().await.unwrap(), Admission::Known);
        let calls = store.claim_incoming(10).await.unwrap();
        assert_eq!(
            calls.iter().map(|c| (c.peer.as_str(), c.request.id.as_str())).collect::<Vec<_>>(),
            [("org-a", "r1")]
        );
        assert!(calls[0].callback_id.is_some(), "reply mode: the service answers with a callback id");
        assert_eq!(admit().await.unwrap(), Admission::Known);
        assert!(store.claim_incoming(10).await.unwrap().is_empty(), "called once");
    }

    /// The service's answer is kept with the request. A plain request ends in success with one
    /// reply due to the requesting node, its data the service's JSON; an answer that is not 2xx
    /// fails it; a reply-mode request is still under way, waiting for the service's replies.
    #[tokio::test]
    async fn the_services_answer_ends_a_plain_request_and_not_a_reply_mode_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let answer = |status: u16| {
            ServiceOutcome::Answered(wire::Response {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body: br#"{"done": 1.50}"#.to_vec(),
                replay_of: None,
            })
        };
        for (id, reply, status) in [("plain", false, 200), ("refused", false, 503), ("replying", true, 200)] {
            let mut message = incoming(id);
            message.reply = reply;
            store.insert_incoming("org-a", None, message, None, &service(), [0; 32]).await.unwrap();
            assert_eq!(store.claim_incoming(10).await.unwrap().len(), 1);
            store.service_answered("org-a", id, answer(status)).await.unwrap();
            if !reply {
                // Ended, it is no longer held: an answer that comes again changes nothing.
                store.service_answered("org-a", id, answer(500)).await.unwrap();
            }
        }
        let view = |id: &'static str| {
            let store = store.clone();
            async move {
                let v = store.get(id).await.unwrap().unwrap();
                (v.state, v.error, v.response.unwrap()["status"].clone(), v.replies.map_or(0, |r| r.len()))
            }
        };
        assert_eq!(view("plain").await, ("success".into(), None, 200.into(), 1));
        let failed = ("failed".into(), Some("the service answered HTTP 503".into()), 503.into(), 1);
        assert_eq!(view("refused").await, failed, "its failure is carried back");
        assert_eq!(view("replying").await, ("doing".into(), None, 200.into(), 0));
        let carried = store.claim_outbound(10).await.unwrap();
        let data: Vec<_> = carried
            .iter()
            .map(|w| match w {
                OutboundWork::Reply { message, .. } => (message.id.as_str(), message.data.clone(), message.end),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(data[0], ("plain", Some(r#"{"done": 1.50}"#.into()), true), "{data:?}");
        assert_eq!(data.len(), 2, "{data:?}");
    }

    /// A service that cannot be reached leaves the request waiting, due again at the time given.
    #[tokio::test]
    async fn an_unreachable_service_is_called_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_incoming("org-a", None, incoming("r1"), None, &service(), [0; 32]).await.unwrap();
        assert_eq!(store.claim_incoming(10).await.unwrap().len(), 1);
        let due = now_ms() + 1_500;
        store.service_answered("org-a", "r1", ServiceOutcome::RetryAt(due, "connection refused".into())).await.unwrap();
        assert!(store.claim_incoming(10).await.unwrap().is_empty(), "not due yet");
        while now_ms() <= due {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let calls = store.claim_incoming(10).await.unwrap();
        assert_eq!(calls.iter().map(|c| c.attempts).collect::<Vec<_>>(), [2]);
    }
}
