//! The recent callback delivery attempts of each request, kept in memory for the console's
//! request detail: when, the status the host answered, the error. Bounded ([`PER_REQUEST`]
//! attempts for each of the last [`REQUESTS`] requests) and gone at a restart; the store keeps
//! each reply's count of attempts and last error durably.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// The most attempts kept per request (the latest).
pub const PER_REQUEST: usize = 20;
/// The most requests whose attempts are kept (those attempted most recently).
pub const REQUESTS: usize = 10_000;

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

/// The attempts by request id.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_id: HashMap<String, VecDeque<CallbackAttempt>>,
    /// Ids in the order they were first attempted, to forget the oldest.
    order: VecDeque<String>,
}

impl Attempts {
    /// Notes an attempt for request `id`.
    pub(super) fn note(&self, id: &str, attempt: CallbackAttempt) {
        let mut kept = self.inner.lock().unwrap();
        if !kept.by_id.contains_key(id) {
            if kept.order.len() >= REQUESTS {
                if let Some(oldest) = kept.order.pop_front() {
                    kept.by_id.remove(&oldest);
                }
            }
            kept.order.push_back(id.to_owned());
        }
        let list = kept.by_id.entry(id.to_owned()).or_default();
        if list.len() >= PER_REQUEST {
            list.pop_front();
        }
        list.push_back(attempt);
    }

    /// The attempts kept for request `id`, oldest first.
    pub(super) fn of(&self, id: &str) -> Vec<CallbackAttempt> {
        self.inner.lock().unwrap().by_id.get(id).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(seq: u32) -> CallbackAttempt {
        CallbackAttempt { seq, at: String::new(), status: Some(500), error: Some("HTTP 500".into()) }
    }

    #[test]
    fn attempts_are_bounded_per_request_and_in_all() {
        let attempts = Attempts::default();
        for seq in 0..(PER_REQUEST as u32 + 5) {
            attempts.note("r1", attempt(seq));
        }
        let kept = attempts.of("r1");
        assert_eq!((kept.len(), kept[0].seq), (PER_REQUEST, 5), "the latest are kept");
        for i in 0..REQUESTS {
            attempts.note(&format!("other-{i}"), attempt(1));
        }
        assert!(attempts.of("r1").is_empty(), "the request attempted first went");
        assert_eq!(attempts.of(&format!("other-{}", REQUESTS - 1)).len(), 1);
        assert!(attempts.of("unknown").is_empty());
    }
}
