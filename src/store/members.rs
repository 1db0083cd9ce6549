//! The members of one organization that share a store (PostgreSQL): each says it is alive every
//! [`SAY_EVERY`]; one silent for longer than [`SILENT_AFTER_MS`] is taken to be down, and the
//! first member to notice gives up its leases ([`super::queue::release`]), so that its work goes
//! on at once on the others. On SQLite the node is the one member, named `""`.

use std::time::Duration;

use serde::Serialize;

use super::queue::release;
use super::sql::{params, OptionalExtension};
use super::{exec, now_ms, rfc3339, Store, StoreError};

/// How often a member says it is alive.
pub const SAY_EVERY: Duration = Duration::from_secs(1);
/// How long a member may be silent before another takes its work over.
pub const SILENT_AFTER_MS: i64 = 5_000;

/// A member as the store knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Its name (`[store] member`).
    pub name: String,
    /// Where peers reach it (its QUIC address).
    pub address: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it last said it was alive (RFC 3339).
    pub alive_at: String,
    /// Whether it said so within the last [`SILENT_AFTER_MS`].
    pub alive: bool,
}

/// What one [`Store::say_alive`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TakenOver {
    /// The silent members whose work this member took over.
    pub members: Vec<String>,
    /// Their service calls that were under way, failed (never called twice).
    pub interrupted: usize,
}

impl Store {
    /// Says this member is alive and reached at `address` (its start when `starting`), and takes
    /// over the work of every member silent for longer than [`SILENT_AFTER_MS`]. At its start, a
    /// member of the same name alive at another address is refused: two would write one chain.
    pub async fn say_alive(&self, address: &str, starting: bool) -> Result<TakenOver, StoreError> {
        let address = address.to_owned();
        let taken = self
            .run_relaxed(move |t, events| {
                let now = now_ms();
                let running: Option<(String, i64)> = t
                    .query_row("SELECT address, alive_at FROM members WHERE member = ?1", [t.member()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                if let Some((elsewhere, alive_at)) =
                    running.filter(|(at, alive_at)| starting && *at != address && now - alive_at <= SILENT_AFTER_MS)
                {
                    return Err(StoreError::Io(format!(
                        "member `{}` is running already, at {elsewhere} ({} ms ago); give each member its own \
                         `[store] member`",
                        t.member(),
                        now - alive_at
                    )));
                }
                exec(
                    t,
                    "INSERT INTO members (member, address, started_at, alive_at) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (member) DO UPDATE SET address = excluded.address, alive_at = excluded.alive_at,
                        started_at = CASE WHEN ?4 = 1 THEN excluded.started_at ELSE members.started_at END",
                    params![t.member(), address, now, starting],
                )?;
                // Deleted by one member only: another that noticed too finds nothing to delete.
                let silent = t.query(
                    "DELETE FROM members WHERE member != ?1 AND alive_at < ?2 RETURNING member",
                    params![t.member(), now - SILENT_AFTER_MS],
                    |r| r.get::<String>(0),
                )?;
                let mut taken = TakenOver::default();
                for member in silent {
                    taken.interrupted += release(t, events, &member, now)?;
                    taken.members.push(member);
                }
                Ok(taken)
            })
            .await?;
        if !taken.members.is_empty() {
            tracing::warn!(members = ?taken.members, interrupted = taken.interrupted, "took over the work of silent members");
            self.wake.outbound.notify_one();
            self.wake.incoming.notify_one();
            self.wake.callbacks.notify_one();
        }
        Ok(taken)
    }

    /// The members sharing this store, by name.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.read(|t| {
            let now = now_ms();
            t.query("SELECT member, address, started_at, alive_at FROM members ORDER BY member", params![], |r| {
                let alive_at: i64 = r.get(3)?;
                Ok(Member {
                    name: r.get(0)?,
                    address: r.get(1)?,
                    started_at: rfc3339(r.get(2)?),
                    alive_at: rfc3339(alive_at),
                    alive: now - alive_at <= SILENT_AFTER_MS,
                })
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::fixtures::{incoming, service};
    use crate::store::{test_postgres, Admission, Location, State};

    /// Two members of one PostgreSQL store, `m1` and `m2`; `None` where there is no server and
    /// the tests do not run under CI.
    fn two_members(test: &str, dir: &std::path::Path) -> Option<(Store, Store, String)> {
        let url = test_postgres::database_or_skip(test)?;
        let open = |member: &str| {
            let location = Location::Postgres { url: url.clone(), member: member.into(), readers: 8, ca: None };
            Store::open_at(&location, dir, true).unwrap()
        };
        Some((open("m1"), open("m2"), url))
    }

    /// Another store of member `m2` on the database at `url`.
    fn m1_named_m2(url: &str, dir: &std::path::Path) -> Store {
        let location = Location::Postgres { url: url.to_owned(), member: "m2".into(), readers: 8, ca: None };
        Store::open_at(&location, dir, true).unwrap()
    }

    /// Runs `sql` on the database at `url`, off the test's runtime.
    fn edit(url: &str, sql: &str) {
        let (url, sql) = (url.to_owned(), sql.to_owned());
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client.batch_execute(&sql).unwrap();
        })
        .join()
        .unwrap();
    }

    /// The same key, the same duplicate and the same retransmitted request handed to both
    /// members at once: one of them takes it, the other sees it taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_decide_a_key_a_duplicate_and_a_request_once() {
        let dir = tempfile::tempdir().unwrap();
        let Some((m1, m2, _)) = two_members("members_decide_a_key_a_duplicate_and_a_request_once", dir.path()) else {
            return;
        };
        let open = service();
        let mut deduping = service();
        deduping.dedupe_window = Some(std::time::Duration::from_secs(60));
        for round in 0..20 {
            // A key: two requests of their own ids.
            let keyed = |id: String| {
                let mut r = incoming(&id);
                r.request.idempotency_key = Some(format!("key-{round}"));
                r
            };
            let (a, b) = tokio::join!(
                m1.insert_incoming("org-a", None, keyed(format!("k{round}a")), None, &open, [0; 32]),
                m2.insert_incoming("org-a", None, keyed(format!("k{round}b")), None, &open, [0; 32]),
            );
            let mut kinds = [a.unwrap(), b.unwrap()].map(|x| matches!(x, Admission::New));
            kinds.sort();
            assert_eq!(kinds, [false, true], "round {round}: one takes the key");
            // The same request twice (the peer resent it to the other member).
            let (a, b) = tokio::join!(
                m1.insert_incoming("org-a", None, incoming(&format!("r{round}")), None, &open, [0; 32]),
                m2.insert_incoming("org-a", None, incoming(&format!("r{round}")), None, &open, [0; 32]),
            );
            let mut known = [a.unwrap(), b.unwrap()].map(|x| x == Admission::Known);
            known.sort();
            assert_eq!(known, [false, true], "round {round}: one stores it, the other knows it");
            // Two requests alike inside the service's duplicate window.
            let alike = |id: String| {
                let mut r = incoming(&id);
                r.request.path = format!("/alike/{round}");
                r
            };
            let (a, b) = tokio::join!(
                m1.insert_incoming("org-a", None, alike(format!("d{round}a")), None, &deduping, [0; 32]),
                m2.insert_incoming("org-a", None, alike(format!("d{round}b")), None, &deduping, [0; 32]),
            );
            let mut new = [a.unwrap(), b.unwrap()].map(|x| matches!(x, Admission::New));
            new.sort();
            assert_eq!(new, [false, true], "round {round}: one is a duplicate");
        }
    }

    /// A member that stops saying it is alive loses its work to another: its service call under
    /// way is failed (never made twice) and carried back; its leased work is due again at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_members_work_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let Some((m1, m2, url)) = two_members("a_silent_members_work_is_taken_over", dir.path()) else {
            return;
        };
        m1.say_alive("127.0.0.1:1", true).await.unwrap();
        m2.say_alive("127.0.0.1:2", true).await.unwrap();
        for id in ["cut", "waiting"] {
            // Not in reply mode: the service's answer would end the request.
            let mut request = incoming(id);
            request.reply = false;
            m1.insert_incoming("org-a", None, request, None, &service(), [0; 32]).await.unwrap();
        }
        let claimed = m1.claim_incoming(1).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(m2.claim_incoming(10).await.unwrap().len() == 1, "the other is m2's to claim");
        let alive = m2.members().await.unwrap();
        assert_eq!(alive.iter().filter(|m| m.alive).count(), 2, "{alive:?}");

        // m1 falls silent: m2 takes over once it has been for longer than SILENT_AFTER_MS.
        assert_eq!(m2.say_alive("127.0.0.1:2", false).await.unwrap(), TakenOver::default());
        edit(&url, "UPDATE members SET alive_at = 0 WHERE member = 'm1'");
        let taken = m2.say_alive("127.0.0.1:2", false).await.unwrap();
        assert_eq!(taken, TakenOver { members: vec!["m1".into()], interrupted: 1 });
        let cut = &claimed[0].request.id;
        assert_eq!(m2.get(cut).await.unwrap().unwrap().state, State::Failed.as_str());
        // m1's call comes back late: its answer is not used, the request stays failed with one reply.
        let late =
            crate::wire::Response { status: 200, headers: Default::default(), body: b"{}".to_vec(), replay_of: None };
        m1.service_answered("org-a", cut, crate::store::ServiceOutcome::Answered(late)).await.unwrap();
        let view = m2.get(cut).await.unwrap().unwrap();
        assert_eq!(view.state, State::Failed.as_str());
        assert_eq!(view.replies.unwrap().len(), 1, "no second reply");
        assert_eq!(m2.members().await.unwrap().len(), 1, "m1 is gone until it says it is alive");
        // Taken over once: another look finds nothing more.
        assert_eq!(m2.say_alive("127.0.0.1:2", false).await.unwrap(), TakenOver::default());
        // A second member of m2's name, elsewhere, is refused while m2 is alive; m2 itself restarting is not.
        let refused = m1_named_m2(&url, dir.path()).say_alive("127.0.0.1:3", true).await.unwrap_err();
        assert!(refused.to_string().contains("member `m2` is running already, at 127.0.0.1:2"), "{refused}");
        m2.say_alive("127.0.0.1:2", true).await.unwrap();
        drop(m1);
    }
}
