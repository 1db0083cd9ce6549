//! How long to wait before trying again: one doubling schedule, and the schedules the workers use.
//!
//! Two more pauses double in the same way but are not [`Backoff`]s: a message the peer did not
//! acknowledge is resent from 1 s up to a minute by the store's own SQL
//! ([`Store::resend_later`](crate::store::Store::resend_later)), and a lost peer is redialed by
//! the link's keeper from 200 ms up to 30 s.

use std::time::Duration;

use rand::Rng;

use crate::store::now_ms;

/// A pause that starts at `first` and doubles with each attempt up to `max`, plus up to
/// `jitter_percent` of it more at random, so that many retries do not fall due together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after no failed attempt.
    pub first: Duration,
    /// The longest pause, before jitter.
    pub max: Duration,
    /// The most added at random, in percent of the pause.
    pub jitter_percent: u64,
}

/// A result not delivered to a host app's callback URL: 1 s, doubling up to 5 minutes.
pub const CALLBACK: Backoff =
    Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300), jitter_percent: 0 };

/// A service that could not be reached for a stored request: 1 s, doubling up to 64 s.
pub const SERVICE_UNREACHABLE: Backoff =
    Backoff { first: Duration::from_secs(1), max: Duration::from_secs(64), jitter_percent: 0 };

/// A peer that could not be connected to for stored work: 200 ms, doubling up to 5 s, plus up to
/// a quarter more at random.
pub const PEER_AWAY: Backoff =
    Backoff { first: Duration::from_millis(200), max: Duration::from_secs(5), jitter_percent: 25 };

impl Backoff {
    /// The pause after `attempts` failed attempts.
    pub fn after(&self, attempts: u32) -> Duration {
        let first = self.first.as_millis() as u64;
        let doubled = first.saturating_mul(1u64.checked_shl(attempts.min(63)).unwrap_or(u64::MAX));
        let base = doubled.min(self.max.as_millis() as u64);
        let jitter = match self.jitter_percent {
            0 => 0,
            percent => rand::rng().random_range(0..=base.saturating_mul(percent) / 100),
        };
        Duration::from_millis(base + jitter)
    }

    /// When, in milliseconds since the Unix epoch, to try again after `attempts` failed attempts.
    pub fn next_at(&self, attempts: u32) -> i64 {
        now_ms() + self.after(attempts).as_millis() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pauses, in milliseconds, after each number of attempts in `attempts`.
    fn millis(backoff: Backoff, attempts: &[u32]) -> Vec<u128> {
        attempts.iter().map(|&n| backoff.after(n).as_millis()).collect()
    }

    #[test]
    fn callbacks_wait_1_s_doubling_up_to_5_minutes() {
        let attempts = [0, 1, 2, 5, 8, 9, 20, 21, 40, u32::MAX];
        let want = [1_000, 2_000, 4_000, 32_000, 256_000, 300_000, 300_000, 300_000, 300_000, 300_000];
        assert_eq!(millis(CALLBACK, &attempts), want);
    }

    #[test]
    fn an_unreachable_service_is_called_again_after_1_s_doubling_up_to_64_s() {
        let attempts = [0, 1, 2, 5, 6, 7, 30, u32::MAX];
        let want = [1_000, 2_000, 4_000, 32_000, 64_000, 64_000, 64_000, 64_000];
        assert_eq!(millis(SERVICE_UNREACHABLE, &attempts), want);
    }

    /// 200 ms doubling up to 5 s, plus at most a quarter, and over many draws some of it.
    #[test]
    fn a_peer_away_is_tried_again_after_200_ms_doubling_up_to_5_s_with_jitter() {
        for (failures, base) in [(0, 200), (1, 400), (3, 1_600), (4, 3_200), (5, 5_000), (10, 5_000), (11, 5_000)] {
            let drawn = millis(PEER_AWAY, &vec![failures; 200]);
            assert!(drawn.iter().all(|&ms| (base..=base + base / 4).contains(&ms)), "{failures}: {drawn:?}");
            assert!(drawn.iter().any(|&ms| ms != base), "{failures}: no jitter in {drawn:?}");
        }
    }
}
