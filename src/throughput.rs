//! The node's throughput history: every [`EVERY`] it samples its counters (file bytes moved,
//! requests stored and synchronous exchanges) and keeps the rates between samples for
//! [`KEPT`], in memory (`GET /v1/stats/history`, the console's chart).
//!
//! A point is a rate over an interval both of whose ends were measured: the first sample after
//! the start only sets the baseline, so no point claims the time before the node ran.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// How long points are kept.
pub const KEPT: Duration = Duration::from_secs(24 * 3600);

/// The rates over one interval between two samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// The interval's end, RFC 3339.
    pub at: String,
    /// The same, in milliseconds since the epoch (for `?since=`).
    pub at_ms: i64,
    /// The interval's length in seconds, as measured.
    pub seconds: f64,
    /// File bytes moved over the link in the interval, both directions.
    pub bytes: u64,
    /// Requests in the interval: asynchronous ones stored (both directions) and synchronous
    /// exchanges.
    pub requests: u64,
    /// `bytes / seconds`.
    pub bytes_per_s: f64,
    /// `requests / seconds`.
    pub requests_per_s: f64,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    when: Instant,
    bytes: u64,
    requests: u64,
}

/// The kept points, oldest first. Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct History {
    points: Arc<Mutex<VecDeque<Point>>>,
}

impl History {
    /// The points whose interval ends after `since_ms` (all with `None`), oldest first.
    pub fn since(&self, since_ms: Option<i64>) -> Vec<Point> {
        let points = self.points.lock().unwrap();
        let from = since_ms.map_or(0, |since| points.partition_point(|p| p.at_ms <= since));
        points.range(from..).cloned().collect()
    }

    /// Adds the point between `before` and `after`, measured at wall-clock time `at_ms`, and drops
    /// points older than [`KEPT`].
    fn add(&self, before: Sample, after: Sample, at_ms: i64) {
        let seconds = after.when.duration_since(before.when).as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let bytes = after.bytes.saturating_sub(before.bytes);
        let requests = after.requests.saturating_sub(before.requests);
        let point = Point {
            at: crate::store::rfc3339(at_ms),
            at_ms,
            seconds,
            bytes,
            requests,
            bytes_per_s: bytes as f64 / seconds,
            requests_per_s: requests as f64 / seconds,
        };
        let mut points = self.points.lock().unwrap();
        let oldest = at_ms - KEPT.as_millis() as i64;
        while points.front().is_some_and(|p| p.at_ms <= oldest) {
            points.pop_front();
        }
        points.push_back(point);
    }

    /// Samples the counters every `every` until `stop`, adding a point for each interval.
    pub async fn sample(self, metrics: Arc<Metrics>, store: Store, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Sample> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let stored = match store.requests_stored().await {
                Ok(n) => n,
                Err(e) => {
                    // A gap rather than a false figure: the next sample starts a new baseline.
                    tracing::warn!(error = %e, "throughput: cannot count the stored requests");
                    last = None;
                    continue;
                }
            };
            let now = Sample {
                when: Instant::now(),
                bytes: metrics.totals.file_bytes.load(Ordering::Relaxed),
                requests: stored + metrics.totals.sync_requests.load(Ordering::Relaxed),
            };
            if let Some(before) = last {
                self.add(before, now, crate::store::now_ms());
            }
            last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_the_rate_between_two_samples_and_old_points_go() {
        let history = History::default();
        let start = Instant::now();
        let sample = |s: u64, bytes, requests| Sample { when: start + Duration::from_secs(s), bytes, requests };
        history.add(sample(0, 0, 0), sample(10, 1000, 5), 10_000);
        history.add(sample(10, 1000, 5), sample(20, 1000, 5), 20_000);
        let points = history.since(None);
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].bytes, points[0].requests, points[0].bytes_per_s), (1000, 5, 100.0));
        assert_eq!(points[1].requests_per_s, 0.0);
        assert_eq!(history.since(Some(10_000)).len(), 1, "only those after `since`");
        // A day later the first points go.
        let later = KEPT.as_millis() as i64 + 15_000;
        history.add(sample(20, 1000, 5), sample(30, 1000, 6), later);
        let points = history.since(None);
        assert_eq!(points.iter().map(|p| p.at_ms).collect::<Vec<_>>(), [20_000, later]);
    }
}
