//! Letting go of what `files.keep_received` no longer keeps: files this node received, and
//! finished requests past their ttl. Evidence is never pruned, nor a file a host gave.

use std::time::Duration;

use super::sql::params;

use super::{exec, now_ms, query_row, Store, StoreError};

/// What one pruning let go of.
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    /// The received files no longer recorded, for the caller to delete.
    pub files: Vec<String>,
    /// The requests forgotten, with their replies.
    pub requests: usize,
}

impl Store {
    /// Forgets the files received more than `keep` ago whose request is finished (or gone), and
    /// the requests finished more than `keep` ago and past their ttl, with their replies. A
    /// request still waiting or under way keeps its file and its row.
    pub async fn prune(&self, keep: Duration) -> Result<Pruned, StoreError> {
        let before = now_ms().saturating_sub(keep.as_millis() as i64);
        self.run_relaxed(move |t, _| {
            let received: Vec<(String, String, String)> = t
                .query("SELECT peer, key, path FROM received_files WHERE received_at < ?1", [before], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let mut pruned = Pruned::default();
            for (peer, key, path) in received {
                // A reply's file is keyed `id/seq`.
                let id = key.split('/').next().unwrap_or(&key);
                let open: bool = query_row(
                    t,
                    "SELECT EXISTS (SELECT 1 FROM requests WHERE peer = ?1 AND id = ?2 AND state IN ('waiting', 'doing'))",
                    params![peer, id],
                    |r| r.get(0),
                )?;
                if !open {
                    exec(t, "DELETE FROM received_files WHERE peer = ?1 AND key = ?2", params![peer, key])?;
                    pruned.files.push(path);
                }
            }
            let finished = "SELECT seq FROM requests WHERE state IN ('success', 'failed') AND expires_at < ?1
                            AND updated_at < ?2";
            let now = now_ms();
            exec(t, &format!("DELETE FROM callback_attempts WHERE request IN ({finished})"), params![now, before])?;
            exec(t, &format!("DELETE FROM replies WHERE request IN ({finished})"), params![now, before])?;
            pruned.requests = exec(t, &format!("DELETE FROM requests WHERE seq IN ({finished})"), params![now, before])?;
            Ok(pruned)
        })
        .await
    }
}
