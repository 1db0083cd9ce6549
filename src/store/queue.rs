//! What requests in both directions share: leases on due work, a request's failure, and
//! recovery at start-up.
//!
//! Due work is claimed with a lease (its due time moves [`LEASE_MS`] ahead), so a worker never
//! takes the same item twice while it is in flight, and an item whose worker died becomes due
//! again by itself. [`Store::recover`] clears leases at start-up.

use super::sql::{params, OptionalExtension};

use super::replies::{push_reply, Due};
use super::trust::settle_key;
use super::{exec, now_ms, query_row, Event, State, Store, StoreError, Tx};

/// How long a claimed item stays with its worker before it is due again.
pub(super) const LEASE_MS: i64 = 60_000;

/// The SQL of the wait before the next attempt of an item tried `attempts` times: 1 s, doubling
/// to 32 s, then 60 s.
pub(super) fn backoff(attempts: &str) -> String {
    format!(
        "CASE WHEN {attempts} <= 1 THEN 1000 WHEN {attempts} <= 6 THEN 1000 * (CASE {attempts} WHEN 2 THEN 2 \
         WHEN 3 THEN 4 WHEN 4 THEN 8 WHEN 5 THEN 16 ELSE 32 END) ELSE 60000 END"
    )
}

/// Tells watchers that request `id` exchanged with `peer` is now in `state`.
pub(super) fn state_event(events: &mut Vec<Event>, id: &str, peer: &str, state: State) {
    events.push(Event::State { id: id.to_owned(), peer: peer.to_owned(), state });
}

/// The callback status of a request that expired before it completed.
pub(super) const EXPIRED: u16 = 504;
/// The callback status of a request the peer's service rejected, or its node failed, without a
/// failing status of the service's own.
pub(super) const UNPROCESSABLE: u16 = 422;

/// Ends a request as failed with `error`, recording the error as its last reply, with `status`
/// for the callback.
///
/// On the requesting node the reply goes to the callback; on the receiving node it is carried back.
pub(super) fn fail(
    t: &Tx,
    events: &mut Vec<Event>,
    row: i64,
    error: &str,
    status: Option<u16>,
) -> Result<(), StoreError> {
    // Only a request not yet ended: members sharing a store may find the same one due at once,
    // and the second waits for the first's commit, then finds it failed already.
    let ended: Option<(String, String, String, Option<String>)> = query_row(
        t,
        "UPDATE requests SET state = 'failed', error = ?2, updated_at = ?3, next_attempt_at = NULL
         WHERE seq = ?1 AND state IN ('waiting', 'doing') RETURNING id, peer, direction, callback_url",
        params![row, error, now_ms()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()?;
    let Some((id, peer, direction, callback)) = ended else {
        return Ok(());
    };
    let incoming = direction == "incoming";
    if incoming {
        settle_key(t, &peer, &id, None)?;
    }
    let due = match (incoming, callback) {
        (true, _) => Due::Peer,
        (false, Some(_)) => Due::Callback,
        (false, None) => Due::Nobody,
    };
    push_reply(t, row, None, Some(error), status, true, due)?;
    state_event(events, &id, &peer, State::Failed);
    Ok(())
}

/// Gives up the leases `member` holds (all of them on SQLite, whose one member is `""`): its
/// work is due again at once, for any member to claim. A request that was `doing` while its file
/// moved, not yet acknowledged, is `waiting` again. Incoming requests whose service call it had
/// under way are failed: the service may have acted, so it is not called twice. The idempotency
/// keys of its synchronous calls under way are freed. Returns how many service calls were cut.
pub(super) fn release(t: &Tx, events: &mut Vec<Event>, member: &str, now: i64) -> Result<usize, StoreError> {
    const HOLDS: &str = "(CAST(?2 AS TEXT) = '' OR lease_holder = ?2)";
    let cut = t.query(
        &format!(
            "UPDATE requests SET state = 'waiting', updated_at = ?1 WHERE direction = 'outgoing'
             AND state = 'doing' AND next_attempt_at IS NOT NULL AND {HOLDS} RETURNING id, peer"
        ),
        params![now, member],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
    )?;
    for (id, peer) in cut {
        state_event(events, &id, &peer, State::Waiting);
    }
    exec(
        t,
        &format!(
            "UPDATE requests SET next_attempt_at = ?1 WHERE state = 'waiting' AND next_attempt_at > ?1 AND {HOLDS}"
        ),
        params![now, member],
    )?;
    exec(
        t,
        &format!("UPDATE replies SET next_send_at = ?1 WHERE next_send_at > ?1 AND {HOLDS}"),
        params![now, member],
    )?;
    exec(
        t,
        &format!("UPDATE replies SET callback_at = ?1 WHERE callback_at > ?1 AND delivered = 0 AND {HOLDS}"),
        params![now, member],
    )?;
    // Updated, not only read: the rows stay locked until the commit, so a member's answer arriving
    // meanwhile waits, then finds the call no longer its own.
    let interrupted = t.query(
        "UPDATE requests SET lease_holder = NULL WHERE direction = 'incoming' AND state = 'doing'
         AND response_status IS NULL AND (CAST(?1 AS TEXT) = '' OR lease_holder = ?1) RETURNING seq",
        [member],
        |r| r.get::<i64>(0),
    )?;
    // Keys of synchronous requests it had under way, which never finished: a failure does not count.
    exec(
        t,
        "DELETE FROM idempotency WHERE state = 'running' AND (CAST(?1 AS TEXT) = '' OR holder = ?1) AND id NOT IN
            (SELECT id FROM requests WHERE direction = 'incoming' AND state IN ('waiting', 'doing'))",
        [member],
    )?;
    for row in &interrupted {
        fail(
            t,
            events,
            *row,
            "the receiving node stopped while its service was being called; the service may have acted, \
             so it is not called again",
            None,
        )?;
    }
    Ok(interrupted.len())
}

impl Store {
    /// At start-up: gives up the leases of this member's previous run (`release`), and lets go of
    /// idempotency results past their time.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        self.run(move |t, events| {
            let now = now_ms();
            let interrupted = release(t, events, t.member(), now)?;
            exec(t, "DELETE FROM idempotency WHERE state = 'success' AND expires_at < ?1", [now])?;
            Ok(interrupted)
        })
        .await
    }
}

/// Requests, replies and services the store's tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::time::Duration;

    use super::now_ms;
    use crate::config::{ServiceConfig, ServiceState};
    use crate::store::{Callback, NewAsync};
    use crate::wire;

    /// Reply `seq` of request `id`, its data `{"n": seq}`.
    pub(crate) fn reply(id: &str, seq: u32, end: bool) -> wire::Reply {
        let data = Some(format!("{{\"n\":{seq}}}"));
        wire::Reply { id: id.to_owned(), seq, end, data, error: None, response: None, file: None }
    }

    /// `POST /job` to service 1, request `id`.
    pub(crate) fn request(id: &str) -> wire::Request {
        wire::Request {
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
        }
    }

    /// An async reply-mode request `id` to org-b with a callback, expiring in a minute.
    pub(crate) fn new_async(id: &str) -> NewAsync {
        NewAsync {
            peer: "org-b".into(),
            request: request(id),
            reply: true,
            callback: Some(Callback { url: "http://127.0.0.1:9/cb".into(), method: "POST".into() }),
            expires_at: now_ms() + 60_000,
            file: None,
        }
    }

    /// `request(id)` as org-a sends it in reply mode, expiring in a minute.
    pub(crate) fn incoming(id: &str) -> wire::AsyncRequest {
        wire::AsyncRequest { request: request(id), reply: true, expires_at_ms: now_ms() + 60_000 }
    }

    /// Service 1, open to every peer, with no duplicate window.
    pub(crate) fn service() -> ServiceConfig {
        ServiceConfig {
            id: "1".into(),
            base_url: "http://127.0.0.1:9/".parse().unwrap(),
            allow: vec!["*".into()],
            dedupe_window: None,
            idempotency_ttl: Duration::from_secs(60),
            state: ServiceState::Active,
            mask_fields: vec![],
            pass_headers: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{incoming, service};
    use crate::store::{OutboundWork, State, Store};

    /// An incoming request whose service call was under way when the node stopped is failed at
    /// start-up, not called again, and the failure is carried back to the requesting node.
    #[tokio::test]
    async fn a_service_call_cut_by_a_stop_fails_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_incoming("org-a", None, incoming("r1"), None, &service(), [0; 32]).await.unwrap();
        assert_eq!(store.claim_incoming(10).await.unwrap().len(), 1);
        drop(store);

        let store = Store::open_for_test(dir.path());
        assert_eq!(store.recover().await.unwrap(), 1);
        assert!(store.claim_incoming(10).await.unwrap().is_empty(), "the service is not called again");
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, State::Failed.as_str());
        let carried = store.claim_outbound(10).await.unwrap();
        match carried.as_slice() {
            [OutboundWork::Reply { peer, message, .. }] => {
                assert_eq!((peer.as_str(), message.seq, message.end), ("org-a", 1, true));
                assert!(message.error.as_deref().unwrap_or_default().contains("stopped"), "{message:?}");
            }
            other => panic!("want the failure carried back, got {other:?}"),
        }
    }
}
