//! The loop every worker runs: claim what the store says is due, as many as there are free slots,
//! and handle each in a task of its own; idle until woken or the next tick when nothing is due.
//!
//! [`crate::callbacks`], [`crate::deliver`] and the link's forwarding loop ([`crate::link`]) each run
//! one. A task holds its item's slot until it ends, or until it gives the slot back ([`Slot::free`])
//! once what the slots limit (a call to a service or a host) is over. At stop, a worker claims
//! nothing more and waits for every task under way.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A worker's settings.
#[derive(Debug, Clone, Copy)]
pub struct Worker<'a> {
    /// What it claims, as its log lines name it ("callbacks").
    pub what: &'static str,
    /// How many claimed items are handled at once.
    pub slots: usize,
    /// How often the store is asked when nothing wakes the worker.
    pub tick: Duration,
    /// Notified by the store when new work may be due.
    pub wake: &'a Notify,
}

impl Worker<'_> {
    /// Claims up to the free slots with `claim` and runs `handle` on each item, with its slot, in a
    /// task of its own, until `stop`; then waits for the tasks under way.
    pub async fn each<T, E, C, CF, H, HF>(self, stop: &CancellationToken, claim: C, handle: H)
    where
        C: FnMut(usize) -> CF,
        CF: Future<Output = Result<Vec<T>, E>>,
        E: Display,
        H: FnMut(T, Slot) -> HF,
        HF: Future<Output = ()> + Send + 'static,
    {
        self.run(stop, claim, |items| items.into_iter().map(|item| (1, item)).collect(), handle).await
    }

    /// Claims up to the free slots with `claim`, groups the items by `key`, and runs `handle` on
    /// each group, in key order, in a task of its own that holds one slot per item until it ends;
    /// until `stop`, then waits for the tasks under way.
    pub async fn by<T, K, E, C, CF, H, HF>(
        self,
        stop: &CancellationToken,
        claim: C,
        key: impl Fn(&T) -> K,
        mut handle: H,
    ) where
        K: Ord,
        C: FnMut(usize) -> CF,
        CF: Future<Output = Result<Vec<T>, E>>,
        E: Display,
        H: FnMut(K, Vec<T>) -> HF,
        HF: Future<Output = ()> + Send + 'static,
    {
        let group = |items: Vec<T>| {
            let mut groups: BTreeMap<K, Vec<T>> = BTreeMap::new();
            for item in items {
                groups.entry(key(&item)).or_default().push(item);
            }
            groups.into_iter().map(|(k, items)| (items.len() as u32, (k, items))).collect()
        };
        self.run(stop, claim, group, |(k, items), _slot| handle(k, items)).await
    }

    /// The loop: `split` turns what was claimed into tasks, each with the slots it takes.
    async fn run<T, G, E, C, CF, S, H, HF>(self, stop: &CancellationToken, mut claim: C, mut split: S, mut handle: H)
    where
        C: FnMut(usize) -> CF,
        CF: Future<Output = Result<Vec<T>, E>>,
        E: Display,
        S: FnMut(Vec<T>) -> Vec<(u32, G)>,
        H: FnMut(G, Slot) -> HF,
        HF: Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(self.slots));
        let tasks = TaskTracker::new();
        while !stop.is_cancelled() {
            if !slot_free(&slots, stop).await {
                break;
            }
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                claim(free).await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot read due {}", self.what);
                    Vec::new()
                })
            };
            if claimed.is_empty() {
                if !idle(self.wake, self.tick, stop).await {
                    break;
                }
                continue;
            }
            for (taken, task) in split(claimed) {
                let permits = slots.clone().acquire_many_owned(taken).await.expect("the semaphore is never closed");
                let slot = Slot(Arc::new(std::sync::Mutex::new(Some(permits))));
                let task = handle(task, slot.clone());
                tasks.spawn(async move {
                    task.await;
                    drop(slot);
                });
            }
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// The slots a task's items take, held until the task ends or gives them back. Cheap to clone;
/// clones share.
#[derive(Clone)]
pub struct Slot(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl Slot {
    /// Gives the slots back before the task ends: what is left of it (recording the outcome) no
    /// longer keeps the worker from claiming more. The worker still waits for the task at stop.
    pub fn free(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Waits until `wake` is notified or `tick` passes; `false` once `stop` is cancelled.
///
/// Workers call this when the store has nothing due for them.
async fn idle(wake: &Notify, tick: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        // Let a burst of work gather, so that one claim takes many items.
        _ = wake.notified() => {
            tokio::time::sleep(Duration::from_millis(2)).await;
            true
        }
        _ = tokio::time::sleep(tick) => true,
    }
}

/// Waits until `slots` has a free permit; `false` once `stop` is cancelled.
///
/// Workers call this before claiming work, so that a full worker resumes the moment one of its
/// calls ends rather than at its next tick.
async fn slot_free(slots: &Arc<Semaphore>, stop: &CancellationToken) -> bool {
    if slots.available_permits() > 0 {
        return true;
    }
    tokio::select! {
        _ = stop.cancelled() => false,
        permit = slots.clone().acquire_owned() => permit.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// No more items are claimed or handled at once than there are slots, and every item claimed
    /// is handled before the worker returns.
    #[tokio::test]
    async fn a_worker_keeps_to_its_slots_and_finishes_what_it_claimed() {
        let (wake, stop) = (Notify::new(), CancellationToken::new());
        let worker = Worker { what: "test items", slots: 2, tick: Duration::from_millis(5), wake: &wake };
        let (running, most, done) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut left = 7usize;
        let mut asked = Vec::new();
        let claim = |free: usize| {
            asked.push(free);
            let n = free.min(left);
            left -= n;
            if left == 0 {
                stop.cancel();
            }
            std::future::ready(Ok::<_, String>(vec![(); n]))
        };
        worker
            .each(&stop, claim, |(), _slot| {
                let (running, most, done) = (running.clone(), most.clone(), done.clone());
                async move {
                    most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
            .await;
        assert_eq!(done.load(Ordering::SeqCst), 7, "returned before all it claimed was handled");
        assert!(most.load(Ordering::SeqCst) <= 2, "{} at once", most.load(Ordering::SeqCst));
        assert!(asked.iter().all(|&free| (1..=2).contains(&free)), "claimed {asked:?}");
    }

    /// A task that gives its slot back after its call lets the worker claim the next item while
    /// it records the outcome: every call here is made while the first tasks still wait to record
    /// (without the slots given back, the worker could never claim the third item). The calls at
    /// once still keep to the slots, and the worker waits for every task before it returns.
    #[tokio::test]
    async fn a_slot_given_back_is_claimed_again_while_its_task_ends() {
        const ITEMS: usize = 6;
        let (wake, stop) = (Notify::new(), CancellationToken::new());
        let worker = Worker { what: "test items", slots: 2, tick: Duration::from_millis(5), wake: &wake };
        let (calling, most, done) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (called, _) = tokio::sync::watch::channel(0usize);
        let called = Arc::new(called);
        let mut left = ITEMS;
        let claim = |free: usize| {
            let n = free.min(left);
            left -= n;
            if left == 0 {
                stop.cancel();
            }
            std::future::ready(Ok::<_, String>(vec![(); n]))
        };
        let working = worker.each(&stop, claim, |(), slot| {
            let (calling, most, done, called) = (calling.clone(), most.clone(), done.clone(), called.clone());
            async move {
                most.fetch_max(calling.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                calling.fetch_sub(1, Ordering::SeqCst);
                slot.free();
                called.send_modify(|n| *n += 1);
                let _ = called.subscribe().wait_for(|n| *n == ITEMS).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::timeout(Duration::from_secs(10), working)
            .await
            .expect("a slot given back was never claimed again");
        assert_eq!(done.load(Ordering::SeqCst), ITEMS, "returned before all it claimed was handled");
        assert!(most.load(Ordering::SeqCst) <= 2, "{} calls at once", most.load(Ordering::SeqCst));
    }

    /// Items claimed together are handled one task per key, each with its items in the order
    /// claimed, and all before the worker returns.
    #[tokio::test]
    async fn a_worker_by_key_hands_each_key_its_items_together() {
        let (wake, stop) = (Notify::new(), CancellationToken::new());
        let worker = Worker { what: "test items", slots: 8, tick: Duration::from_millis(5), wake: &wake };
        let handled = Arc::new(Mutex::new(Vec::new()));
        let claim = |_| {
            stop.cancel();
            std::future::ready(Ok::<_, String>(vec![("b", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5)]))
        };
        worker
            .by(
                &stop,
                claim,
                |item| item.0,
                |key, items| {
                    let handled = handled.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let seqs: Vec<i32> = items.iter().map(|item| item.1).collect();
                        handled.lock().unwrap().push((key, seqs));
                    }
                },
            )
            .await;
        let mut handled = handled.lock().unwrap().clone();
        handled.sort();
        assert_eq!(handled, [("a", vec![2, 4]), ("b", vec![1, 3]), ("c", vec![5])]);
    }
}
