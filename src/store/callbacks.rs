//! Results for host apps' callbacks: replies to this node's requests, claimed per request in
//! `seq` order (a reply waits until the one before it is delivered), and each attempt recorded.

use super::sql::params;

use super::queue::LEASE_MS;
use super::{exec, now_ms, query_row, FormFile, Store, StoreError};
use crate::evidence::{sha256_hex, Entry};

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
    /// A received file.
    pub file: Option<FormFile>,
    request: i64,
}

impl Store {
    /// Claims up to `limit` results due for delivery to callbacks: per request only the lowest
    /// undelivered seq, so that results arrive in order.
    pub async fn claim_callbacks(&self, limit: usize) -> Result<Vec<CallbackWork>, StoreError> {
        self.run(move |t, _| {
            let now = now_ms();
            let claim = format!(
                "UPDATE replies SET callback_at = CAST(?1 AS BIGINT) + ?2, lease_holder = ?4
                 WHERE rowid IN (
                    SELECT r.rowid FROM replies r WHERE r.callback_at <= ?1 AND r.delivered = 0
                    AND (r.seq = 1 OR EXISTS (SELECT 1 FROM replies e WHERE e.request = r.request
                                              AND e.seq = r.seq - 1 AND e.delivered = 1))
                    ORDER BY r.callback_at LIMIT ?3{})
                 RETURNING request, seq, \"end\", data, error, status, callback_attempts, file_field, file_path",
                t.skip_locked("r")
            );
            let claimed = t.query(&claim, params![now, LEASE_MS, limit as i64, t.member()], |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<u32>(1)?,
                    r.get::<bool>(2)?,
                    r.get::<Option<String>>(3)?,
                    r.get::<Option<String>>(4)?,
                    r.get::<Option<u16>>(5)?,
                    r.get::<u32>(6)?,
                    r.get::<Option<String>>(7)?
                        .zip(r.get::<Option<String>>(8)?)
                        .map(|(field, path)| FormFile { field, path }),
                ))
            })?;
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
    /// (`None`: give up); `status` is what the callback answered, if it did.
    pub async fn callback_attempted(
        &self,
        work: &CallbackWork,
        status: Option<u16>,
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
            let error = outcome.as_ref().err().map(|(e, _)| e.as_str());
            super::attempts::note(t, request, seq, super::now_ms(), status, error)?;
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
}

#[cfg(test)]
mod tests {
    use crate::store::queue::fixtures::{new_async, reply};
    use crate::store::Store;

    /// Replies carried on concurrent streams may arrive out of order; their callbacks may not.
    #[tokio::test]
    async fn a_reply_that_overtakes_an_earlier_one_waits_for_its_callback() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_outgoing(new_async("r1")).await.unwrap();
        let due = |store: Store| async move {
            store.claim_callbacks(10).await.unwrap().into_iter().map(|w| w.seq).collect::<Vec<_>>()
        };

        store.received_reply("org-b", None, reply("r1", 2, true), None, [0; 32]).await.unwrap();
        assert_eq!(due(store.clone()).await, Vec::<u32>::new(), "seq 2 waits while seq 1 has not arrived");
        store.received_reply("org-b", None, reply("r1", 1, false), None, [0; 32]).await.unwrap();
        let first = store.claim_callbacks(10).await.unwrap();
        assert_eq!(first.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![1]);
        store.callback_attempted(&first[0], Some(200), Ok(())).await.unwrap();
        assert_eq!(due(store.clone()).await, vec![2], "seq 2 once seq 1 is delivered");
    }

    /// A failed delivery is due again at the time given, with its attempt counted.
    #[tokio::test]
    async fn a_failed_delivery_is_tried_again_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_outgoing(new_async("r1")).await.unwrap();
        store.received_reply("org-b", None, reply("r1", 1, true), None, [0; 32]).await.unwrap();
        let first = store.claim_callbacks(10).await.unwrap();
        let later = crate::store::now_ms() + 60_000;
        store.callback_attempted(&first[0], Some(500), Err(("HTTP 500".into(), Some(later)))).await.unwrap();
        assert!(store.claim_callbacks(10).await.unwrap().is_empty(), "not due yet");
        store.callback_attempted(&first[0], Some(500), Err(("HTTP 500".into(), Some(0)))).await.unwrap();
        let again = store.claim_callbacks(10).await.unwrap();
        assert_eq!(again.iter().map(|w| (w.seq, w.attempts)).collect::<Vec<_>>(), [(1, 2)]);
    }
}
