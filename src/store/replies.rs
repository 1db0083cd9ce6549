//! Replies both ways: this node's replies to peers' requests (from its services, carried back to
//! the requesting node until acknowledged), and the replies peers carry back for this node's
//! requests (kept once each, then delivered to callbacks).

use std::time::Duration;

use super::sql::{params, OptionalExtension, Sql};
use serde_json::Value;

use super::evidence::file_facts;
use super::outgoing::{outgoing_file, OutboundWork, OutgoingFile};
use super::queue::{fail, state_event, LEASE_MS, UNPROCESSABLE};
use super::trust::settle_key;
use super::{exec, now_ms, query_row, Event, State, Store, StoreError};
use crate::evidence::Entry;
use crate::wire;

/// Who a new reply is due to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// The requesting peer: the receiving node carries it back.
    Peer,
    /// The host's callback: the requesting node delivers it.
    Callback,
    /// No one.
    Nobody,
}

/// Adds a reply row (the next seq) for request row `request`, due to `due` now; returns its seq.
pub(super) fn push_reply(
    t: &Sql,
    request: i64,
    data: Option<&str>,
    error: Option<&str>,
    status: Option<u16>,
    end: bool,
    due: Due,
) -> Result<u32, StoreError> {
    // Two members may add a reply to one request at once.
    t.lock(&format!("replies\u{1}{request}"))?;
    let seq: u32 =
        query_row(t, "SELECT COALESCE(MAX(seq), 0) + 1 FROM replies WHERE request = ?1", [request], |r| r.get(0))?;
    let now = now_ms();
    exec(
        t,
        "INSERT INTO replies (request, seq, data, error, status, \"end\", created_at, next_send_at, callback_at)
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

/// Claims up to `limit` of this node's replies due to be carried to peers, in order per request.
pub(super) fn claim_due(t: &super::Tx, now: i64, limit: usize) -> Result<Vec<OutboundWork>, StoreError> {
    let due = format!(
        "UPDATE replies SET next_send_at = CAST(?1 AS BIGINT) + ?2, send_attempts = send_attempts + 1,
            lease_holder = ?4
         WHERE rowid IN (SELECT rowid FROM replies WHERE next_send_at <= ?1
                         ORDER BY next_send_at, rowid LIMIT ?3{})
         RETURNING (SELECT peer FROM requests q WHERE q.seq = request),
                   (SELECT id FROM requests q WHERE q.seq = request),
                   request, seq, \"end\", data, error, status,
                   (SELECT response_status FROM requests q WHERE q.seq = request),
                   file_path, file_name, file_field, file_identity,
                   (SELECT member FROM requests q WHERE q.seq = request)",
        t.skip_locked("replies")
    );
    let mut replies = t.query(&due, params![now, LEASE_MS, limit as i64, t.member()], |r| {
        Ok((
            r.get::<i64>(2)?,
            r.get::<u32>(3)?,
            OutboundWork::Reply {
                peer: r.get(0)?,
                member: r.get(13)?,
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
        ))
    })?;
    replies.sort_by_key(|(request, seq, _)| (*request, *seq));
    let mut work = Vec::with_capacity(replies.len());
    for (request, _, mut w) in replies {
        if let OutboundWork::Reply { message, .. } = &mut w {
            message.response = response_of(t, request)?.filter(|_| message.seq == 1);
        }
        work.push(w);
    }
    Ok(work)
}

/// The peer persisted reply `seq` of its request `id`: it is not carried again.
pub(super) fn acknowledged(t: &Sql, peer: &str, id: &str, seq: u32) -> Result<(), StoreError> {
    exec(
        t,
        "UPDATE replies SET next_send_at = NULL
         WHERE seq = ?3 AND request = (SELECT seq FROM requests
            WHERE direction = 'incoming' AND peer = ?1 AND id = ?2)",
        params![peer, id, seq],
    )?;
    Ok(())
}

/// Carrying `reply` to `peer` failed: it is due again at `at`, unless acknowledged meanwhile.
pub(super) fn retry(t: &Sql, peer: &str, reply: &wire::Reply, at: i64) -> Result<usize, StoreError> {
    exec(
        t,
        "UPDATE replies SET next_send_at = ?4 WHERE seq = ?3 AND next_send_at IS NOT NULL
         AND request = (SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1 AND id = ?2)",
        params![peer, reply.id, reply.seq, at],
    )
}

/// `peer` did not acknowledge `reply`: it is due again after a pause that doubles with each
/// attempt, from 1 s up to a minute after `now`.
pub(super) fn resend_later(t: &Sql, peer: &str, reply: &wire::Reply, now: i64) -> Result<usize, StoreError> {
    exec(
        t,
        &format!(
            "UPDATE replies SET next_send_at = CAST(?4 AS BIGINT) + {} WHERE seq = ?3 AND next_send_at IS NOT NULL
             AND request = (SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1 AND id = ?2)",
            super::queue::backoff("send_attempts")
        ),
        params![peer, reply.id, reply.seq, now],
    )
}

/// Every reply waiting for `peer` is due at `now` (it came back).
pub(super) fn due_now(t: &Sql, peer: &str, now: i64) -> Result<(), StoreError> {
    exec(
        t,
        "UPDATE replies SET next_send_at = ?2 WHERE next_send_at > ?2
         AND request IN (SELECT seq FROM requests WHERE direction = 'incoming' AND peer = ?1)",
        params![peer, now],
    )?;
    Ok(())
}

/// The log's record of a reply (or of a non-reply-mode result, event `response`).
pub(super) fn reply_entry(
    direction: &'static str,
    peer: &str,
    member: Option<&str>,
    reply: &wire::Reply,
    payload_sha256: [u8; 32],
) -> Entry {
    let event = if reply.response.is_some() && reply.error.is_none() { "response" } else { "reply" };
    let mut entry = Entry::new(event, direction, peer, &reply.id);
    entry.member = member.map(str::to_owned);
    entry.reply_seq = Some(reply.seq);
    entry.body_sha256 = Some(hex::encode(payload_sha256));
    entry.file = reply.file.as_ref().map(file_facts);
    entry
}

/// The stored service response of request row `request`, if any.
fn response_of(t: &Sql, request: i64) -> Result<Option<wire::Response>, StoreError> {
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
                    body: r.get::<Option<Vec<u8>>>(2)?.unwrap_or_default(),
                }))
            },
        )
        .optional()?;
    Ok(response.flatten())
}

impl Store {
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
                // The host may post a request's replies to two members at once.
                t.lock(&format!("callback\u{1}{callback_id}"))?;
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
                    fail(t, events, row, &error, None)?;
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
        self.transfers.end(peer, id);
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
                "UPDATE replies SET data = NULL, error = ?3, \"end\" = 1, next_send_at = ?4, file_name = NULL,
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
        self.transfers.end(peer, id);
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
        member: Option<&str>,
        reply: wire::Reply,
        file: Option<String>,
        payload_sha256: [u8; 32],
    ) -> Result<Option<Duration>, StoreError> {
        let arrived = self.rendered(|| reply_entry("in", peer, member, &reply, payload_sha256).render());
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
            // A failure never reaches the callback with a 2xx status: the service's own failing
            // status, else 422 (the service rejected it, or its node failed it).
            let status = match (&reply.error, status) {
                (Some(_), Some(s)) if !(200..300).contains(&s) => Some(s),
                (Some(_), _) => Some(UNPROCESSABLE),
                (None, status) => status,
            };
            let inserted = exec(t,
                "INSERT INTO replies (request, seq, data, error, status, \"end\", created_at, callback_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
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
            // The service's response (the first reply of a plain request carries it) is stored
            // by the change that ends the request, or alone if there is none.
            let (status, headers, body) = response_columns(reply.response.as_ref());
            if let Some(state) = state {
                let ended = exec(t,
                    "UPDATE requests SET state = ?2, error = ?3, updated_at = ?4, next_attempt_at = NULL,
                        response_status = COALESCE(?5, response_status), response_headers = COALESCE(?6, response_headers),
                        response_body = COALESCE(?7, response_body)
                     WHERE seq = ?1 AND state IN ('waiting', 'doing')",
                    params![row, state.as_str(), reply.error, now_ms(), status, headers, body],
                )?;
                if ended > 0 {
                    state_event(events, &reply.id, &peer, state);
                    return Ok(Some(Duration::from_millis((now_ms() - created_at).max(0) as u64)));
                }
            }
            if status.is_some() {
                exec(t,
                    "UPDATE requests SET response_status = ?2, response_headers = ?3, response_body = ?4 WHERE seq = ?1",
                    params![row, status, headers, body],
                )?;
            }
            Ok(None)
        })
        .await?;
        self.wake.callbacks.notify_one();
        Ok(took)
    }
}

/// A service's response as the columns `response_status`, `response_headers` (JSON) and
/// `response_body` keep it; all `None` without one.
pub(super) fn response_columns(response: Option<&wire::Response>) -> (Option<u16>, Option<String>, Option<&[u8]>) {
    let headers = response.map(|r| serde_json::to_string(&r.headers).unwrap_or_default());
    (response.map(|r| r.status), headers, response.map(|r| r.body.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::fixtures::{incoming, new_async, reply, service};

    /// A reply the peer carries again (this node's acknowledgement was lost) is kept once.
    #[tokio::test]
    async fn a_retransmitted_reply_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_outgoing(new_async("r1")).await.unwrap();
        let took = store.received_reply("org-b", None, reply("r1", 1, true), None, [0; 32]).await.unwrap();
        assert!(took.is_some(), "the last reply ends the request");
        assert_eq!(store.received_reply("org-b", None, reply("r1", 1, true), None, [0; 32]).await.unwrap(), None);
        let view = store.get("r1").await.unwrap().unwrap();
        assert_eq!(view.state, "success");
        assert_eq!(view.replies.unwrap().len(), 1);
        assert_eq!(store.claim_callbacks(10).await.unwrap().len(), 1, "delivered once");
    }

    /// The reply that ends a plain request stores the service's response with its success. One
    /// that comes after the request ended (here refused, which was its first reply) keeps its
    /// response but ends nothing, and no one is told of a success.
    #[tokio::test]
    async fn the_last_reply_stores_the_response_and_ends_only_a_request_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let mut events = store.subscribe();
        let answered = |id: &str, seq: u32| {
            let mut last = reply(id, seq, true);
            last.response = Some(wire::Response {
                status: 201,
                headers: vec![("content-type".into(), "application/json".into())],
                body: b"{}".to_vec(),
                replay_of: None,
            });
            last
        };
        for id in ["r1", "r2"] {
            let mut request = new_async(id);
            request.reply = false;
            store.insert_outgoing(request).await.unwrap();
        }
        store.refused("org-b", "r2", "not allowed".into(), 403).await.unwrap();
        let took = store.received_reply("org-b", None, answered("r1", 1), None, [0; 32]).await.unwrap();
        assert!(took.is_some(), "the last reply ends the request");
        let late = store.received_reply("org-b", None, answered("r2", 2), None, [0; 32]).await.unwrap();
        assert_eq!(late, None, "it had ended");
        let view = store.get("r1").await.unwrap().unwrap();
        assert_eq!((view.state.as_str(), view.response.unwrap()["status"].clone()), ("success", 201.into()));
        let view = store.get("r2").await.unwrap().unwrap();
        let response = view.response.unwrap()["status"].clone();
        assert_eq!((view.state.as_str(), response, view.replies.unwrap().len()), ("failed", 201.into(), 2));
        let states: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .filter_map(|e| match e {
                Event::State { id, state, .. } => Some((id, state)),
                _ => None,
            })
            .collect();
        let want = [("r1", State::Waiting), ("r2", State::Waiting), ("r2", State::Failed), ("r1", State::Success)];
        assert_eq!(states, want.map(|(id, state)| (id.to_owned(), state)));
    }

    /// A service's reply is carried to the requesting node until it acknowledges it; the first
    /// one carries the service's response.
    #[tokio::test]
    async fn a_reply_is_carried_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_incoming("org-a", None, incoming("r1"), None, &service(), [0; 32]).await.unwrap();
        let callback_id = store.claim_incoming(10).await.unwrap()[0].callback_id.clone().unwrap();
        let accepted = wire::Response { status: 202, headers: vec![], body: b"{}".to_vec(), replay_of: None };
        store.service_answered("org-a", "r1", crate::store::ServiceOutcome::Answered(accepted)).await.unwrap();
        let added = store.add_reply(&callback_id, Some(serde_json::json!({"n": 1})), None, true, None).await.unwrap();
        assert_eq!(added, Some(("r1".to_owned(), 1)));
        assert_eq!(store.add_reply(&callback_id, None, None, true, None).await.unwrap(), None, "the request ended");

        let carried = store.claim_outbound(10).await.unwrap();
        let [work @ OutboundWork::Reply { peer, message, .. }] = carried.as_slice() else { panic!("{carried:?}") };
        assert_eq!(
            (peer.as_str(), message.seq, message.end, message.data.as_deref()),
            ("org-a", 1, true, Some("{\"n\":1}"))
        );
        assert_eq!(message.response.as_ref().map(|r| r.status), Some(202));
        store.resend_later(carried.clone()).await.unwrap();
        store.recover().await.unwrap();
        assert_eq!(store.claim_outbound(10).await.unwrap().len(), 1, "not acknowledged: carried again");
        store.acknowledged("org-a", None, wire::Ack { id: "r1".into(), seq: 1 }, work);
        store.flush().await.unwrap();
        store.recover().await.unwrap();
        assert!(store.claim_outbound(10).await.unwrap().is_empty(), "acknowledged: done with");
    }
}
