//! This node's requests to peers: accepted from a host, claimed when due for the link, then
//! acknowledged by the peer or refused, and retried or resent while they are not. The link's
//! queue ([`OutboundWork`]) also carries this node's replies to peers' requests, whose rows
//! [`super::replies`] keeps.

use super::sql::{params, OptionalExtension, Row};

use super::evidence::request_record;
use super::queue::{fail, state_event, EXPIRED, LEASE_MS};
use super::replies::{self, reply_entry};
use super::stored;
use super::trust::answer_record;
use super::{exec, now_ms, query_row, Event, State, Store, StoreError, Tx};
use crate::host_file::Identity;
use crate::wire;

/// Where the results of an asynchronous request go: a host app's URL, called with `method`.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    /// The absolute URL.
    pub url: String,
    /// `GET` or `POST`.
    pub method: String,
}

/// A new asynchronous request from a host.
#[derive(Debug, Clone)]
pub struct NewAsync {
    /// The peer.
    pub peer: String,
    /// The request as it goes on the wire.
    pub request: wire::Request,
    /// Reply mode.
    pub reply: bool,
    /// Where results go, if anywhere.
    pub callback: Option<Callback>,
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
        /// The member of the peer that sent it, for a peer whose members have a key each (the
        /// fingerprint of its certificate then): only it knows the request.
        member: Option<String>,
        /// The message.
        message: wire::Reply,
        /// A file to send first.
        file: Option<OutgoingFile>,
    },
}

impl OutboundWork {
    /// The member of the peer a result goes to, for a peer whose members have a key each.
    pub fn member(&self) -> Option<&str> {
        match self {
            OutboundWork::Request { .. } => None,
            OutboundWork::Reply { member, .. } => member.as_deref(),
        }
    }

    /// The peer it goes to.
    pub fn peer(&self) -> &str {
        match self {
            OutboundWork::Request { peer, .. } | OutboundWork::Reply { peer, .. } => peer,
        }
    }

    /// The id of the request it is or answers.
    pub fn id(&self) -> &str {
        match self {
            OutboundWork::Request { message, .. } => &message.request.id,
            OutboundWork::Reply { message, .. } => &message.id,
        }
    }
}

/// Which outgoing requests the link still holds: stored and not yet acknowledged by the peer,
/// `waiting`, or `doing` while their file moves (their lease set, `next_attempt_at`).
const HELD: &str = "direction = 'outgoing' AND state IN ('waiting', 'doing') AND next_attempt_at IS NOT NULL";

/// Puts this node's request `id` to `peer` back to `waiting` if it was `doing` while its file
/// moved and the peer has not acknowledged it: the file stopped, and the request waits for
/// another attempt.
fn back_to_waiting(t: &Tx, events: &mut Vec<Event>, peer: &str, id: &str) -> Result<(), StoreError> {
    let changed = exec(
        t,
        &format!("UPDATE requests SET state = 'waiting', updated_at = ?3 WHERE {HELD} AND state = 'doing' AND peer = ?1 AND id = ?2"),
        params![peer, id, now_ms()],
    )?;
    if changed > 0 {
        state_event(events, id, peer, State::Waiting);
    }
    Ok(())
}

impl Store {
    /// Stores a new asynchronous request as `waiting`; returns once it is on disk.
    ///
    /// With an idempotency key, an earlier request in the same scope (peer, service, path, key)
    /// that is still under way stands for it: its id and state are returned and nothing is stored.
    /// Otherwise the new request's id and `waiting`.
    pub async fn insert_outgoing(&self, new: NewAsync) -> Result<(String, State), StoreError> {
        let accepted = self.run(move |t, events| {
            let now = now_ms();
            let r = &new.request;
            if let Some(key) = &r.idempotency_key {
                // Two members may be handed the same key at once.
                t.lock(&format!("outgoing-key\u{1}{}\u{1}{}\u{1}{}\u{1}{key}", new.peer, r.service, r.path))?;
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
            let blob = stored::encode(r)?;
            exec(t,
                "INSERT INTO requests (id, direction, peer, service, method, path, wire, reply, conversation,
                    callback_url, callback_method, state, created_at, updated_at, expires_at, next_attempt_at,
                    file_path, file_name, file_field, idempotency_key, file_identity, record_version)
                 VALUES (?1, 'outgoing', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'waiting', ?11, ?11, ?12, ?11, ?13, ?14, ?15, ?16,
                    ?17, ?18)",
                params![
                    r.id,
                    new.peer,
                    r.service,
                    r.method,
                    r.path,
                    blob,
                    new.reply,
                    r.conversation,
                    new.callback.as_ref().map(|c| &c.url),
                    new.callback.as_ref().map_or("", |c| c.method.as_str()),
                    now,
                    new.expires_at,
                    new.file.as_ref().map(|f| &f.path),
                    new.file.as_ref().map(|f| &f.name),
                    new.file.as_ref().map(|f| &f.field),
                    r.idempotency_key,
                    new.file.as_ref().and_then(|f| f.identity).map(|i| i.to_string()),
                    stored::VERSION,
                ],
            )?;
            state_event(events, &r.id, &new.peer, State::Waiting);
            Ok((r.id.clone(), State::Waiting))
        })
        .await?;
        self.wake.outbound.notify_one();
        Ok(accepted)
    }

    /// Expires what is past its time, then claims up to `limit` requests and replies due for the link.
    ///
    /// A request that became `doing` while its file moved, and whose lease ran out without
    /// progress (the file stalled, or its worker is gone), is `waiting` again and claimed anew.
    ///
    /// The claim is committed without waiting for an fsync: lost to a power cut, it
    /// only means the message is sent again, and the peer takes a message it holds once.
    pub async fn claim_outbound(&self, limit: usize) -> Result<Vec<OutboundWork>, StoreError> {
        let transfers = self.transfers.clone();
        self.run_relaxed(move |t, events| {
            let now = now_ms();
            let expired: Vec<i64> = t.query(
                "SELECT seq FROM requests WHERE direction = 'outgoing' AND state IN ('waiting', 'doing')
                     AND expires_at < ?1",
                [now],
                |r| r.get(0),
            )?;
            for row in expired {
                fail(t, events, row, "expired: ttl_s passed before the request completed", Some(EXPIRED))?;
            }
            let stalled: Vec<(String, String)> = t.query(
                "UPDATE requests SET state = 'waiting', updated_at = ?1
                     WHERE direction = 'outgoing' AND state = 'doing' AND next_attempt_at <= ?1
                     RETURNING id, peer",
                [now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for (id, peer) in stalled {
                transfers.end(&peer, &id);
                state_event(events, &id, &peer, State::Waiting);
            }
            let mut work = Vec::new();
            let due = format!(
                "UPDATE requests SET next_attempt_at = CAST(?1 AS BIGINT) + ?2, attempts = attempts + 1, lease_holder = ?4
                 WHERE seq IN (SELECT seq FROM requests WHERE direction = 'outgoing' AND state = 'waiting'
                               AND next_attempt_at <= ?1 ORDER BY next_attempt_at, seq LIMIT ?3{})
                 RETURNING seq, peer, wire, reply, expires_at, file_path, file_name, file_field, file_identity,
                    record_version",
                t.skip_locked("requests")
            );
            let mut requests = t.query(&due, params![now, LEASE_MS, limit as i64, t.member()], |r| {
                let blob: Vec<u8> = r.get(2)?;
                Ok((
                    r.get::<i64>(0)?,
                    OutboundWork::Request {
                        peer: r.get(1)?,
                        message: wire::AsyncRequest {
                            request: stored::decode(r.get(9)?, &blob)?,
                            reply: r.get(3)?,
                            expires_at_ms: r.get(4)?,
                        },
                        file: outgoing_file(r, 5)?,
                    },
                ))
            })?;
            requests.sort_by_key(|(seq, _)| *seq);
            work.extend(requests.into_iter().map(|(_, w)| w));
            work.extend(replies::claim_due(t, now, limit)?);
            Ok(work)
        })
        .await
    }

    /// The peer persisted request `id` (`seq` 0) or its reply `seq`: `work`, as it was sent,
    /// goes into the evidence log. Recorded in the writer's next transaction, deferred and
    /// without an fsync like the evidence of a synchronous exchange: nothing waits for it, and
    /// lost to a power cut or a kill it only means the message is sent and acknowledged again
    /// after the restart, which the peer takes once. Until it commits, the claim's lease keeps the
    /// message from being sent again.
    pub fn acknowledged(&self, peer: &str, member: Option<&str>, ack: wire::Ack, work: &OutboundWork) {
        let entry = self.rendered(|| match work {
            OutboundWork::Request { message, .. } => {
                request_record("out", peer, member, &message.request, wire::payload_sha256(&message.request), &[])
            }
            OutboundWork::Reply { message, .. } => {
                reply_entry("out", peer, member, message, wire::payload_sha256(message)).render()
            }
        });
        let peer = peer.to_owned();
        self.transfers.end(&peer, &ack.id);
        self.defer_change(
            "a peer's acknowledgement",
            std::sync::Arc::new(move |t, events| {
                t.record(entry.clone())?;
                if ack.seq != 0 {
                    return replies::acknowledged(t, &peer, &ack.id, ack.seq);
                }
                let now = now_ms();
                let changed = exec(
                    t,
                    "UPDATE requests SET state = 'doing', next_attempt_at = NULL, updated_at = ?3
                     WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                    params![peer, ack.id, now],
                )?;
                if changed > 0 {
                    state_event(events, &ack.id, &peer, State::Doing);
                } else {
                    // `doing` already if its file went first: the link no longer holds it.
                    exec(
                        t,
                        &format!(
                            "UPDATE requests SET next_attempt_at = NULL, updated_at = ?3
                             WHERE {HELD} AND state = 'doing' AND peer = ?1 AND id = ?2"
                        ),
                        params![peer, ack.id, now],
                    )?;
                }
                Ok(())
            }),
        );
    }

    /// Sending `work` failed; try again at `at` (ms since the epoch).
    pub async fn retry_outbound(&self, work: Vec<OutboundWork>, at: i64) -> Result<(), StoreError> {
        self.stopped_moving(&work);
        self.run(move |t, events| {
            for w in &work {
                match w {
                    OutboundWork::Request { peer, message, .. } => {
                        back_to_waiting(t, events, peer, &message.request.id)?;
                        exec(
                            t,
                            "UPDATE requests SET next_attempt_at = ?3
                             WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                            params![peer, message.request.id, at],
                        )?
                    }
                    OutboundWork::Reply { peer, message, .. } => replies::retry(t, peer, message, at)?,
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
        self.stopped_moving(&work);
        self.run(move |t, events| {
            let now = now_ms();
            for w in &work {
                match w {
                    OutboundWork::Request { peer, message, .. } => {
                        back_to_waiting(t, events, peer, &message.request.id)?;
                        exec(
                            t,
                            &format!(
                                "UPDATE requests SET next_attempt_at = CAST(?3 AS BIGINT) + {} WHERE direction = 'outgoing'
                                 AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                                super::queue::backoff("attempts")
                            ),
                            params![peer, message.request.id, now],
                        )?
                    }
                    OutboundWork::Reply { peer, message, .. } => replies::resend_later(t, peer, message, now)?,
                };
            }
            Ok(())
        })
        .await
    }

    /// The files of `work`, if any moved, no longer do: the link is done with these messages for now.
    fn stopped_moving(&self, work: &[OutboundWork]) {
        for w in work {
            self.transfers.end(w.peer(), w.id());
        }
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
            replies::due_now(t, &peer, now)?;
            Ok(())
        })
        .await?;
        self.wake.outbound.notify_one();
        Ok(())
    }

    /// The peer refused asynchronous request `id` outright (unknown service, not allowed, disabled,
    /// a duplicate or a key still in progress); its callback gets `status`, the HTTP status of
    /// the refusal's kind.
    pub async fn refused(&self, peer: &str, id: &str, error: String, status: u16) -> Result<(), StoreError> {
        let refusal = self.rendered(|| answer_record("in", peer, None, id, Err(&error)));
        self.transfers.end(peer, id);
        let (peer, id) = (peer.to_owned(), id.to_owned());
        self.run(move |t, events| {
            t.record(refusal)?;
            let row: Option<i64> = query_row(
                t,
                &format!("SELECT seq FROM requests WHERE {HELD} AND peer = ?1 AND id = ?2"),
                params![peer, id],
                |r| r.get(0),
            )
            .optional()?;
            if let Some(row) = row {
                fail(t, events, row, &error, Some(status))?;
            }
            Ok(())
        })
        .await?;
        self.wake.callbacks.notify_one();
        Ok(())
    }
}

/// The outgoing file in columns `at` to `at + 3` (path, name, field, identity), if any.
pub(super) fn outgoing_file(r: &Row, at: usize) -> Result<Option<OutgoingFile>, StoreError> {
    Ok(match (r.get::<Option<String>>(at)?, r.get::<Option<String>>(at + 1)?, r.get::<Option<String>>(at + 2)?) {
        (Some(path), Some(name), Some(field)) => {
            let identity = r.get::<Option<String>>(at + 3)?.as_deref().and_then(Identity::parse);
            Some(OutgoingFile { path, name, field, identity })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::fixtures::new_async;
    use crate::store::RequestFilter;

    /// Accepted, a request is due for the link once; acknowledged by the peer it is `doing` and
    /// not sent again.
    #[tokio::test]
    async fn an_accepted_request_is_claimed_once_and_done_with_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let mut events = store.subscribe();
        assert_eq!(store.insert_outgoing(new_async("r1")).await.unwrap(), ("r1".to_owned(), State::Waiting));
        let claimed = store.claim_outbound(10).await.unwrap();
        let [work @ OutboundWork::Request { message, .. }] = claimed.as_slice() else {
            panic!("want the request, got {claimed:?}")
        };
        assert_eq!(message.request, new_async("r1").request);
        assert!(store.claim_outbound(10).await.unwrap().is_empty(), "leased while in flight");
        store.acknowledged("org-b", None, wire::Ack { id: "r1".into(), seq: 0 }, work);
        store.flush().await.unwrap();
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "doing");
        store.recover().await.unwrap();
        assert!(store.claim_outbound(10).await.unwrap().is_empty(), "acknowledged: not sent again");
        let states: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(
            states,
            [State::Waiting, State::Doing].map(|state| crate::store::Event::State {
                id: "r1".into(),
                peer: "org-b".into(),
                state
            })
        );
    }

    /// A request with a file, claimed for the link.
    async fn claimed_with_file(store: &Store, id: &str) -> OutboundWork {
        let mut new = new_async(id);
        new.file = Some(OutgoingFile {
            path: "/srv/outbox/big.bin".into(),
            name: "big.bin".into(),
            field: "file".into(),
            identity: None,
        });
        store.insert_outgoing(new).await.unwrap();
        let mut claimed = store.claim_outbound(10).await.unwrap();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        claimed.remove(0)
    }

    /// The next `n` state events (a job is answered before its events are published: they may
    /// follow a moment later).
    async fn states(events: &mut tokio::sync::broadcast::Receiver<Event>, n: usize) -> Vec<State> {
        let mut states = Vec::new();
        while states.len() < n {
            match tokio::time::timeout(std::time::Duration::from_secs(5), events.recv()).await {
                Ok(Ok(Event::State { state, .. })) => states.push(state),
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        let more: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert!(!more.iter().any(|e| matches!(e, Event::State { .. })), "more states: {states:?} then {more:?}");
        states
    }

    /// A request is `doing` once the first byte of its file is at the peer, and counted as a file
    /// moving; a cut puts it back to `waiting` for the retry and it no longer counts; the peer's
    /// acknowledgement finds it `doing` and tells no one twice.
    #[tokio::test]
    async fn a_request_is_doing_while_its_file_moves_and_waiting_again_when_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let mut events = store.subscribe();
        let work = claimed_with_file(&store, "r1").await;
        // The offer is not answered yet: nothing is at the peer.
        store.file_progress("org-b", "r1", 0, 100, None).await.unwrap();
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "waiting");
        assert!(store.transfers_moving().is_empty());
        store.file_progress("org-b", "r1", 10, 100, None).await.unwrap();
        let view = store.get("r1").await.unwrap().unwrap();
        assert_eq!(view.state, "doing");
        assert_eq!(
            (view.transfer.as_ref().unwrap()["bytes_done"].clone(), view.transfer.as_ref().unwrap()["moving"].clone()),
            (10.into(), true.into())
        );
        assert_eq!(
            store
                .list(RequestFilter { state: Some("doing".into()), limit: 10, ..RequestFilter::default() })
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(store.stats().await.unwrap().outgoing["doing"], 1);
        assert_eq!(
            store.transfers_moving().iter().map(|m| (m.id.as_str(), m.bytes_done)).collect::<Vec<_>>(),
            [("r1", 10)]
        );
        assert!(store.claim_outbound(10).await.unwrap().is_empty(), "held while it moves");

        // The connection drops mid-file: the retry waits, and so does the request.
        store.resend_later(vec![work.clone()]).await.unwrap();
        let view = store.get("r1").await.unwrap().unwrap();
        assert_eq!(view.state, "waiting");
        assert_eq!(view.transfer.as_ref().unwrap()["moving"], false);
        assert_eq!(view.transfer.as_ref().unwrap()["bytes_done"], 10, "what the peer holds is still shown");
        assert!(store.transfers_moving().is_empty());

        // The next attempt resumes, the whole file is through, the peer acknowledges.
        store.peer_is_back("org-b").await.unwrap();
        let [work] = store.claim_outbound(10).await.unwrap().try_into().unwrap();
        store.file_progress("org-b", "r1", 60, 100, None).await.unwrap();
        store.file_progress("org-b", "r1", 100, 100, Some([7; 32])).await.unwrap();
        assert!(store.transfers_moving().is_empty(), "through");
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "doing");
        store.acknowledged("org-b", None, wire::Ack { id: "r1".into(), seq: 0 }, &work);
        store.flush().await.unwrap();
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "doing");
        store.recover().await.unwrap();
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "doing", "acknowledged: a restart keeps it");
        assert!(store.claim_outbound(10).await.unwrap().is_empty(), "acknowledged: not sent again");
        assert_eq!(states(&mut events, 4).await, [State::Waiting, State::Doing, State::Waiting, State::Doing]);
    }

    /// A request `doing` while its file moved is `waiting` again after a restart, and when its
    /// lease ran out without progress; either way it is claimed again. Refused, it fails.
    #[tokio::test]
    async fn a_cut_or_stalled_file_leaves_its_request_waiting_to_be_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        claimed_with_file(&store, "r1").await;
        store.file_progress("org-b", "r1", 10, 100, None).await.unwrap();
        drop(store);
        let store = Store::open_for_test(dir.path());
        let mut events = store.subscribe();
        store.recover().await.unwrap();
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "waiting");
        assert_eq!(store.claim_outbound(10).await.unwrap().len(), 1, "claimed again after the restart");

        store.file_progress("org-b", "r1", 20, 100, None).await.unwrap();
        let lease = |store: Store| async move {
            store
                .run(|t, _| query_row(t, "SELECT next_attempt_at FROM requests", params![], |r| r.get::<i64>(0)))
                .await
                .unwrap()
        };
        assert!(lease(store.clone()).await > now_ms() + LEASE_MS - 5_000, "a report renews the lease");
        store.run(|t, _| exec(t, "UPDATE requests SET next_attempt_at = ?1", [now_ms() - 1])).await.unwrap();
        let again = store.claim_outbound(10).await.unwrap();
        assert_eq!(again.len(), 1, "stalled past its lease: claimed again");
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "waiting");
        assert!(store.transfers_moving().is_empty());

        store.file_progress("org-b", "r1", 30, 100, None).await.unwrap();
        store.refused("org-b", "r1", "org-b: the file is too large".into(), 413).await.unwrap();
        let view = store.get("r1").await.unwrap().unwrap();
        assert_eq!((view.state.as_str(), view.error.as_deref()), ("failed", Some("org-b: the file is too large")));
        assert!(store.transfers_moving().is_empty());
        let want = [State::Waiting, State::Doing, State::Waiting, State::Doing, State::Failed];
        assert_eq!(states(&mut events, 5).await, want);
    }

    /// A request the peer refuses fails, and its failure is due to the callback.
    #[tokio::test]
    async fn a_refused_request_fails_and_tells_its_callback() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_outgoing(new_async("r1")).await.unwrap();
        store.refused("org-b", "r1", "not allowed".into(), 403).await.unwrap();
        let view = store.get("r1").await.unwrap().unwrap();
        assert_eq!((view.state.as_str(), view.error.as_deref()), ("failed", Some("not allowed")));
        let due = store.claim_callbacks(10).await.unwrap();
        assert_eq!(
            due.iter().map(|w| (w.seq, w.end, w.error.as_deref())).collect::<Vec<_>>(),
            [(1, true, Some("not allowed"))]
        );
    }

    /// What the peer did not acknowledge is sent again after a pause that doubles, up to a minute.
    #[tokio::test]
    async fn resends_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let mut new = new_async("r1");
        new.callback = None;
        store.insert_outgoing(new).await.unwrap();
        let claimed = store.claim_outbound(10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let pause = |store: Store, attempts: i64| {
            let claimed = claimed.clone();
            async move {
                store.run(move |t, _| exec(t, "UPDATE requests SET attempts = ?1", [attempts])).await.unwrap();
                store.resend_later(claimed).await.unwrap();
                let at: i64 = store
                    .run(|t, _| query_row(t, "SELECT next_attempt_at FROM requests", params![], |r| r.get(0)))
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

    /// A request stored by the release before versioned records (schema version 7, the `wire`
    /// column a raw postcard `wire::Request`) is still sent as it was accepted.
    #[tokio::test]
    async fn a_request_stored_before_records_were_versioned_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
            for (i, sql) in crate::store::schema::MIGRATIONS[..7].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", i + 1).unwrap();
            }
            let legacy = hex::decode(crate::store::stored::tests::LEGACY).unwrap();
            conn.execute(
                "INSERT INTO requests (id, direction, peer, service, method, path, wire, reply, state, created_at,
                    updated_at, expires_at, next_attempt_at)
                 VALUES ('r1', 'outgoing', 'org-b', '1', 'POST', '/job', ?1, 1, 'waiting', ?2, ?2, ?3, ?2)",
                rusqlite::params![legacy, now_ms(), now_ms() + 60_000],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let claimed = store.claim_outbound(10).await.unwrap();
        let [OutboundWork::Request { message, .. }] = claimed.as_slice() else { panic!("{claimed:?}") };
        assert_eq!(message.request, crate::store::stored::tests::full());
        assert!(message.reply);
    }
}
