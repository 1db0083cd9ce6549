//! Files moving now, in both directions, as the link reports them through the store's progress
//! path ([`Store::file_progress`], [`Store::progress_event`]): kept in memory only, for
//! `/v1/stats` (`transfers_active`) and the status of a request whose file is on its way.
//!
//! A file counts from its first progress report (for the file of this node's own stored request,
//! from its first byte, when the request becomes `doing`) until its last byte, or until the store
//! records how the message it belongs to ended (acknowledged, put back to wait for a retry,
//! refused). A file the link says nothing more of is not moving: its stream was cut, or it
//! stalled. It stops counting after [`QUIET_FOR`] without a report, or three times the longest
//! pause between its reports so far when that is longer (a receiver reports every few MiB, which
//! takes a while on a slow link), at most [`QUIET_AT_MOST`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Store;

/// A file with no progress report for this long is not counted as moving.
pub const QUIET_FOR: Duration = Duration::from_secs(10);
/// However long its reports were apart, a file silent this long is not counted as moving.
pub const QUIET_AT_MOST: Duration = Duration::from_secs(120);
/// Files tracked at most; past it, the one silent longest is forgotten, so that a peer opening
/// many file offers cannot grow the table.
const MAX_TRACKED: usize = 4096;
/// The rate is measured over at least this long.
const RATE_OVER: Duration = Duration::from_secs(1);

/// Whose file a report is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whose {
    /// The file of this node's own stored (asynchronous) request, on its way to the peer.
    OwnRequest,
    /// Any other: a file received, or sent with a reply or a synchronous request.
    Other,
}

/// A file moving now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moving {
    /// The peer it moves to or from.
    pub peer: String,
    /// The request it belongs to.
    pub id: String,
    /// Bytes the receiver holds.
    pub bytes_done: u64,
    /// The file's size.
    pub bytes_total: u64,
    /// Bytes per second over the last second or more; `None` until measured.
    pub bytes_per_s: Option<u64>,
}

/// One tracked file.
#[derive(Debug)]
struct Entry {
    whose: Whose,
    done: u64,
    total: u64,
    /// The last report.
    last: Instant,
    /// The longest pause between two reports so far.
    longest_pause: Duration,
    /// Where the rate is measured from: when, and the bytes done then.
    mark: (Instant, u64),
    rate: Option<f64>,
}

impl Entry {
    fn new(whose: Whose, done: u64, total: u64, now: Instant) -> Entry {
        Entry { whose, done, total, last: now, longest_pause: Duration::ZERO, mark: (now, done), rate: None }
    }

    fn advance(&mut self, whose: Whose, done: u64, total: u64, now: Instant) {
        self.longest_pause = self.longest_pause.max(now.saturating_duration_since(self.last));
        self.last = now;
        self.whose = whose;
        self.total = total;
        let since = now.saturating_duration_since(self.mark.0);
        if done < self.mark.1 {
            // Started again from less (another attempt): measure afresh.
            self.mark = (now, done);
            self.rate = None;
        } else if since >= RATE_OVER {
            self.rate = Some((done - self.mark.1) as f64 / since.as_secs_f64());
            self.mark = (now, done);
        }
        self.done = done;
    }

    /// Whether it was reported recently enough to count as moving at `now`.
    fn fresh(&self, now: Instant) -> bool {
        let quiet = (self.longest_pause * 3).clamp(QUIET_FOR, QUIET_AT_MOST);
        now.saturating_duration_since(self.last) <= quiet
    }
}

/// The files moving now, by peer and request id.
#[derive(Debug, Default)]
pub(super) struct Transfers {
    files: Mutex<HashMap<(String, String), Entry>>,
}

impl Transfers {
    /// Takes a progress report: `done` of `total` bytes of the file of request `id` exchanged
    /// with `peer`. A file whose last byte is through is no longer tracked.
    pub(super) fn report(&self, whose: Whose, peer: &str, id: &str, done: u64, total: u64, now: Instant) {
        let mut files = self.files.lock().unwrap();
        let key = (peer.to_owned(), id.to_owned());
        if done >= total {
            files.remove(&key);
            return;
        }
        if let Some(entry) = files.get_mut(&key) {
            entry.advance(whose, done, total, now);
            return;
        }
        if files.len() >= MAX_TRACKED {
            files.retain(|_, e| e.fresh(now));
        }
        if files.len() >= MAX_TRACKED {
            let quietest = files.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone());
            if let Some(k) = quietest {
                files.remove(&k);
            }
        }
        files.insert(key, Entry::new(whose, done, total, now));
    }

    /// The file of request `id` exchanged with `peer` no longer moves: its message ended one way
    /// or another.
    pub(super) fn end(&self, peer: &str, id: &str) {
        let mut files = self.files.lock().unwrap();
        // Most messages carry no file: no key to build for them.
        if !files.is_empty() {
            files.remove(&(peer.to_owned(), id.to_owned()));
        }
    }

    /// The files moving at `now`, by peer and id.
    pub(super) fn moving(&self, now: Instant) -> Vec<Moving> {
        let files = self.files.lock().unwrap();
        let mut moving: Vec<Moving> = files.iter().filter(|(_, e)| e.fresh(now)).map(|(k, e)| view(k, e)).collect();
        moving.sort_by(|a, b| (&a.peer, &a.id).cmp(&(&b.peer, &b.id)));
        moving
    }

    /// The file of this node's own request `id` to `peer`, if it is moving at `now`.
    pub(super) fn own_request(&self, peer: &str, id: &str, now: Instant) -> Option<Moving> {
        let files = self.files.lock().unwrap();
        let key = (peer.to_owned(), id.to_owned());
        files.get(&key).filter(|e| e.whose == Whose::OwnRequest && e.fresh(now)).map(|e| view(&key, e))
    }
}

fn view((peer, id): &(String, String), e: &Entry) -> Moving {
    Moving {
        peer: peer.clone(),
        id: id.clone(),
        bytes_done: e.done,
        bytes_total: e.total,
        bytes_per_s: e.rate.map(|r| r.round() as u64),
    }
}

impl Store {
    /// The files moving now, sent or received, by peer and request id (`transfers_active`).
    pub fn transfers_moving(&self) -> Vec<Moving> {
        self.transfers.moving(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// A file counts from its first report until its last byte, and its rate is measured over a
    /// second or more.
    #[test]
    fn a_file_counts_until_its_last_byte_with_its_rate() {
        let (t, start) = (Transfers::default(), Instant::now());
        t.report(Whose::OwnRequest, "org-b", "r1", 0, 100 * MIB, start);
        assert_eq!(t.moving(start).len(), 1);
        assert_eq!(t.moving(start)[0].bytes_per_s, None, "not measured yet");
        t.report(Whose::OwnRequest, "org-b", "r1", 5 * MIB, 100 * MIB, at(start, 500));
        assert_eq!(t.moving(at(start, 500))[0].bytes_per_s, None, "half a second is too short to tell");
        t.report(Whose::OwnRequest, "org-b", "r1", 20 * MIB, 100 * MIB, at(start, 2000));
        let now = t.moving(at(start, 2000));
        assert_eq!((now[0].bytes_done, now[0].bytes_total, now[0].bytes_per_s), (20 * MIB, 100 * MIB, Some(10 * MIB)));
        assert_eq!(t.own_request("org-b", "r1", at(start, 2000)).map(|m| m.bytes_done), Some(20 * MIB));
        t.report(Whose::OwnRequest, "org-b", "r1", 100 * MIB, 100 * MIB, at(start, 3000));
        assert!(t.moving(at(start, 3000)).is_empty(), "through: no longer moving");
        assert_eq!(t.own_request("org-b", "r1", at(start, 3000)), None);
    }

    /// Files are told apart by peer and id; another's file is not shown as a request's own.
    #[test]
    fn files_are_told_apart_by_peer_and_id() {
        let (t, now) = (Transfers::default(), Instant::now());
        t.report(Whose::OwnRequest, "org-b", "r1", 1, 10, now);
        t.report(Whose::Other, "org-c", "r1", 1, 10, now);
        t.report(Whose::Other, "org-b", "r2", 1, 10, now);
        let ids: Vec<(String, String)> = t.moving(now).into_iter().map(|m| (m.peer, m.id)).collect();
        assert_eq!(ids, [("org-b", "r1"), ("org-b", "r2"), ("org-c", "r1")].map(|(p, i)| (p.into(), i.into())));
        assert!(t.own_request("org-b", "r2", now).is_none(), "a received file is not a request's own");
        t.end("org-b", "r1");
        assert_eq!(t.moving(now).len(), 2);
    }

    /// A file the link stopped reporting stops counting after QUIET_FOR, or after three times the
    /// longest pause between its reports, up to QUIET_AT_MOST.
    #[test]
    fn a_silent_file_stops_counting() {
        let (t, start) = (Transfers::default(), Instant::now());
        t.report(Whose::Other, "org-a", "fast", 0, 100, start);
        let quiet = QUIET_FOR.as_millis() as u64;
        assert_eq!(t.moving(at(start, quiet)).len(), 1);
        assert!(t.moving(at(start, quiet + 1)).is_empty(), "silent past QUIET_FOR");
        // Reports 20 s apart (a slow link): silent for 59 s it still counts, for 61 s not.
        t.report(Whose::Other, "org-a", "slow", 0, 100, start);
        t.report(Whose::Other, "org-a", "slow", 1, 100, at(start, 20_000));
        assert_eq!(t.moving(at(start, 20_000 + 59_000)).len(), 1);
        assert!(t.moving(at(start, 20_000 + 61_000)).is_empty());
        // However long the pauses, at most QUIET_AT_MOST.
        t.report(Whose::Other, "org-a", "stalled", 0, 100, start);
        t.report(Whose::Other, "org-a", "stalled", 1, 100, at(start, 3_600_000));
        let last = at(start, 3_600_000);
        assert_eq!(t.moving(last + QUIET_AT_MOST).len(), 1);
        assert!(t.moving(last + QUIET_AT_MOST + Duration::from_millis(1)).is_empty());
        // It counts again once reported again.
        t.report(Whose::Other, "org-a", "fast", 10, 100, at(start, 3_700_000));
        assert!(t.moving(at(start, 3_700_000)).iter().any(|m| m.id == "fast"));
    }

    /// Another attempt from fewer bytes measures its rate afresh instead of a negative one.
    #[test]
    fn a_new_attempt_measures_afresh() {
        let (t, start) = (Transfers::default(), Instant::now());
        t.report(Whose::Other, "org-a", "r1", 50, 100, start);
        t.report(Whose::Other, "org-a", "r1", 10, 100, at(start, 1500));
        assert_eq!(t.moving(at(start, 1500))[0].bytes_per_s, None);
        t.report(Whose::Other, "org-a", "r1", 40, 100, at(start, 3000));
        assert_eq!(t.moving(at(start, 3000))[0].bytes_per_s, Some(20));
    }

    /// A peer offering file after file under new ids cannot grow the table past MAX_TRACKED: the
    /// stale go first, then the quietest; a file reported since stays.
    #[test]
    fn the_table_stays_bounded_whatever_a_peer_offers() {
        let (t, start) = (Transfers::default(), Instant::now());
        t.report(Whose::OwnRequest, "org-b", "ours", 1, 100, start);
        for i in 0..3 * MAX_TRACKED as u64 {
            let now = at(start, 1 + i);
            t.report(Whose::Other, "rogue", &format!("offer-{i}"), 0, u64::MAX, now);
            if i % 1000 == 0 {
                t.report(Whose::OwnRequest, "org-b", "ours", 1 + i, 1 << 40, now);
            }
        }
        let now = at(start, 3 * MAX_TRACKED as u64);
        assert_eq!(t.files.lock().unwrap().len(), MAX_TRACKED);
        assert!(t.own_request("org-b", "ours", now).is_some(), "a file reported lately is kept");
        assert!(t.files.lock().unwrap().contains_key(&("rogue".into(), format!("offer-{}", 3 * MAX_TRACKED - 1))));
        // Once they are all silent, the next report clears the stale ones.
        let later = now + QUIET_AT_MOST + Duration::from_secs(1);
        t.report(Whose::Other, "org-a", "next", 0, 10, later);
        assert!(t.files.lock().unwrap().len() <= MAX_TRACKED);
        assert_eq!(t.moving(later).len(), 1);
    }
}
