//! Peers' certificate rollovers ([`crate::rollover`]): each statement a peer sent, pinned or held
//! for the admin, kept for good. The node checks every one again against the pins when it loads
//! them ([`crate::peer::Peers::restore`]), so a row an operator edits in cannot pin anything;
//! `ferry audit verify` checks the peer's old receipts with the certificates they bring.

use super::sql::{params, Begin, Location, OptionalExtension, Sql};

use super::{exec, now_ms, schema, Store, StoreError};
use crate::evidence::Entry;
use crate::wire;

/// A peer's rollover as the store keeps it.
#[derive(Debug, Clone)]
pub struct StoredRollover {
    /// The peer that sent it.
    pub peer: String,
    /// The statement, as the peer signed it.
    pub statement: wire::Rollover,
    /// Pinned (`true`) or held for the admin's approval.
    pub pinned: bool,
}

impl Store {
    /// Keeps `statement` from `peer`, pinned or held for approval (a pinned one stays pinned),
    /// and records its `rollover` evidence record once pinned; returns once on disk.
    pub async fn rollover(&self, peer: &str, statement: wire::Rollover, pinned: bool) -> Result<(), StoreError> {
        let peer = peer.to_owned();
        self.run(move |t, _| {
            let new = crate::rollover::new_fingerprint(&statement).to_string();
            let bytes = postcard::to_stdvec(&statement).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let was_pinned: Option<bool> = t
                .query_row("SELECT pinned FROM rollovers WHERE peer = ?1 AND new = ?2", params![peer, new], |r| {
                    r.get(0)
                })
                .optional()?;
            if !pinned {
                // One held for the admin per certificate replaced (per member): a later one
                // replaces it.
                let held: Vec<(String, Vec<u8>)> = t.query(
                    "SELECT new, statement FROM rollovers WHERE peer = ?1 AND pinned = 0 AND new != ?2",
                    params![peer, new],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                for (other, bytes) in held {
                    let same_member =
                        postcard::from_bytes::<wire::Rollover>(&bytes).map_or(true, |s| s.old == statement.old);
                    if same_member {
                        exec(t, "DELETE FROM rollovers WHERE peer = ?1 AND new = ?2", params![peer, other])?;
                    }
                }
            }
            exec(
                t,
                "INSERT INTO rollovers (peer, new, statement, pinned, received_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (peer, new) DO UPDATE SET
                    pinned = CASE WHEN excluded.pinned = 1 THEN 1 ELSE rollovers.pinned END",
                params![peer, new, bytes, pinned, now_ms()],
            )?;
            if pinned && was_pinned != Some(true) {
                let mut entry = Entry::new("rollover", "in", &peer, &new);
                entry.body_sha256 = Some(crate::evidence::sha256_hex(&crate::rollover::signed_bytes(&statement)));
                t.record(entry.render())?;
            }
            Ok(())
        })
        .await
    }

    /// Every rollover kept, in the order they arrived.
    pub async fn rollovers(&self) -> Result<Vec<StoredRollover>, StoreError> {
        self.read(all).await
    }
}

/// Every rollover kept in the store at `location`, read-only (for `ferry audit verify`); none
/// where there is no store yet.
pub fn rollovers_in(location: &Location) -> Result<Vec<StoredRollover>, StoreError> {
    match schema::open_existing(location)? {
        Some(mut conn) => all(&conn.begin(Begin::Read)?),
        None => Ok(Vec::new()),
    }
}

fn all(t: &Sql) -> Result<Vec<StoredRollover>, StoreError> {
    let rows = t.query("SELECT peer, statement, pinned FROM rollovers ORDER BY rowid", params![], |r| {
        Ok((r.get::<String>(0)?, r.get::<Vec<u8>>(1)?, r.get(2)?))
    })?;
    let mut kept = Vec::new();
    for (peer, bytes, pinned) in rows {
        match postcard::from_bytes(&bytes) {
            Ok(statement) => kept.push(StoredRollover { peer, statement, pinned }),
            Err(e) => tracing::warn!(%peer, error = %e, "an unreadable rollover in the store is ignored"),
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use crate::identity::Identity;
    use crate::store::Store;

    #[tokio::test]
    async fn one_rollover_per_member_is_held_and_a_pinned_one_stays_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let old = Identity::generate("org-b").unwrap();
        let now = crate::store::now_ms();
        let statement = |name| {
            let new = Identity::generate(name).unwrap();
            crate::rollover::sign("org-b", &old, &new.cert, now, now + 60_000).unwrap()
        };
        let (first, second) = (statement("one"), statement("two"));
        store.rollover("org-b", first, false).await.unwrap();
        store.rollover("org-b", second.clone(), false).await.unwrap();
        let kept = store.rollovers().await.unwrap();
        assert_eq!(kept.len(), 1, "a later held rollover replaces the earlier one");
        assert_eq!((&kept[0].statement, kept[0].pinned), (&second, false));
        // Another member's (another certificate replaced) is held beside it.
        let other_member = Identity::generate("org-b").unwrap();
        let of_other = crate::rollover::sign(
            "org-b",
            &other_member,
            &Identity::generate("three").unwrap().cert,
            now,
            now + 60_000,
        )
        .unwrap();
        store.rollover("org-b", of_other.clone(), false).await.unwrap();
        assert_eq!(store.rollovers().await.unwrap().len(), 2, "one held per member");
        store.rollover("org-b", of_other.clone(), true).await.unwrap();

        store.rollover("org-b", second.clone(), true).await.unwrap();
        store.rollover("org-b", second.clone(), false).await.unwrap();
        let kept: Vec<_> = store.rollovers().await.unwrap().into_iter().filter(|k| k.statement == second).collect();
        assert_eq!((kept.len(), kept[0].pinned), (1, true), "pinned stays pinned");
        let location = store.location().clone();
        let read = move || crate::store::read_log(&location, 0).unwrap().map(|r| r.unwrap().1).collect();
        let log: Vec<String> = std::thread::spawn(read).join().unwrap();
        assert_eq!(log.iter().filter(|r| r.contains("\"event\":\"rollover\"")).count(), 2, "one evidence record each");
    }
}
