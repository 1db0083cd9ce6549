//! Each delivery attempt of a result to a host's callback, kept in the store for a request's
//! status (`callback.history`): the latest [`PER_REQUEST`] of each request, deleted with it.

use super::sql::{params, Sql};
use serde::Serialize;

use super::{exec, rfc3339, StoreError};

/// The most attempts kept per request (the latest).
pub const PER_REQUEST: usize = 20;

/// One delivery attempt of a result to a host's callback.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallbackAttempt {
    /// The result's seq (the reply's).
    pub seq: u32,
    /// When it was made, RFC 3339.
    pub at: String,
    /// The HTTP status the callback answered; `null` when it did not answer.
    pub status: Option<u16>,
    /// Why it did not count as delivered; `null` when it did.
    pub error: Option<String>,
}

/// Records an attempt for the request stored as `request`, keeping its latest [`PER_REQUEST`].
pub(super) fn note(
    t: &Sql,
    request: i64,
    seq: u32,
    at_ms: i64,
    status: Option<u16>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    exec(
        t,
        "INSERT INTO callback_attempts (request, seq, at, status, error) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![request, seq, at_ms, status, error],
    )?;
    exec(
        t,
        "DELETE FROM callback_attempts WHERE request = ?1 AND rowid NOT IN
         (SELECT rowid FROM callback_attempts WHERE request = ?1 ORDER BY rowid DESC LIMIT ?2)",
        params![request, PER_REQUEST as i64],
    )?;
    Ok(())
}

/// The attempts kept for the request stored as `request`, oldest first.
pub(super) fn of(t: &Sql, request: i64) -> Result<Vec<CallbackAttempt>, StoreError> {
    t.query("SELECT seq, at, status, error FROM callback_attempts WHERE request = ?1 ORDER BY rowid", [request], |r| {
        Ok(CallbackAttempt { seq: r.get(0)?, at: rfc3339(r.get(1)?), status: r.get(2)?, error: r.get(3)? })
    })
}

#[cfg(test)]
mod tests {
    use crate::store::queue::fixtures::{new_async, reply};
    use crate::store::Store;

    #[tokio::test]
    async fn the_latest_attempts_of_each_request_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        store.insert_outgoing(new_async("r1")).await.unwrap();
        store.received_reply("org-b", None, reply("r1", 1, true), None, [0; 32]).await.unwrap();
        let work = store.claim_callbacks(10).await.unwrap().remove(0);
        for status in 400..(400 + super::PER_REQUEST as u16 + 5) {
            store.callback_attempted(&work, Some(status), Err((format!("HTTP {status}"), Some(0)))).await.unwrap();
        }
        store.callback_attempted(&work, Some(200), Ok(())).await.unwrap();
        let kept = store
            .read(|t| super::of(t, t.query_row("SELECT seq FROM requests WHERE id = ?1", ["r1"], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(kept.len(), super::PER_REQUEST, "the latest only");
        assert_eq!((kept[0].status, kept[0].error.as_deref()), (Some(406), Some("HTTP 406")), "oldest first");
        assert_eq!((kept.last().unwrap().status, &kept.last().unwrap().error), (Some(200), &None));
        assert!(store.read(|t| super::of(t, -1)).await.unwrap().is_empty());
        // The request's view shows them, as `callback.history`.
        let view = serde_json::to_value(store.get("r1").await.unwrap().unwrap()).unwrap();
        let history = view["callback"]["history"].as_array().unwrap();
        assert_eq!(history.len(), super::PER_REQUEST);
        assert_eq!(
            (&history[0]["status"], &history[0]["error"]),
            (&serde_json::json!(406), &serde_json::json!("HTTP 406"))
        );
    }
}
