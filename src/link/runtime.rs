//! quinn on tokio, with each connection's sends gathered from the tasks that are ready together.
//!
//! quinn drives a connection from one task, woken whenever a request task writes to a stream.
//! tokio runs a task woken by the running one next (its "LIFO slot"), so under load the driver ran
//! after every single write and sent one UDP datagram for every request: 1.2 `sendmsg` calls per
//! relayed request. [`Gathering`] puts a woken driver behind the tasks already ready on its
//! thread, so the messages they write go out together, in one datagram or one GSO batch, and the
//! datagrams that came in together are read in one go (BENCHMARKS.md, issue 24, "UDP sends
//! gathered"). It does so only while several streams are open ([`OpenStream`]): a lone request has
//! nothing to wait for, and the yield would cost it a poll for I/O at each step.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// quinn's tokio runtime, except that the tasks it spawns (the connection and endpoint drivers)
/// yield once each time they are woken while several streams are open, before they run.
#[derive(Debug)]
pub(super) struct Gathering;

impl quinn::Runtime for Gathering {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(YieldFirst { future, yielded: false });
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }
}

/// Message streams open on this process's links (a file's transfer stream is not counted), as
/// [`OpenStream`] counts them.
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Counts a message's stream as open for as long as it lives: while another stream is open, a
/// woken driver yields first, as its messages may be ready to go with this one.
pub(super) struct OpenStream(());

impl OpenStream {
    /// Counts one more open stream.
    pub(super) fn new() -> OpenStream {
        OPEN_STREAMS.fetch_add(1, Ordering::Relaxed);
        OpenStream(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A future that, each time it is woken, first yields to the tasks already ready and then runs.
///
/// The yield is tokio's own ([`tokio::task::yield_now`]): the scheduler wakes the task again once
/// its thread has run out of ready tasks and polled for I/O, without waking another thread to
/// steal it (a plain self-wake would, and measured a lone caller 13% slower).
struct YieldFirst {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    yielded: bool,
}

impl Future for YieldFirst {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.yielded && OPEN_STREAMS.load(Ordering::Relaxed) > 1 {
            self.yielded = true;
            // The scheduler keeps the waker; the yield's own state is not needed after this.
            if std::pin::pin!(tokio::task::yield_now()).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.yielded = false;
        self.future.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::Runtime;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    /// Waits on `notify`, counting itself in `waiting` once it does, then notes `name` in `order`.
    async fn wait_then_note(
        notify: Arc<Notify>,
        waiting: Arc<AtomicUsize>,
        order: Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) {
        let notified = notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        waiting.fetch_add(1, Ordering::SeqCst);
        notified.await;
        order.lock().unwrap().push(name);
    }

    #[test]
    fn a_woken_driver_runs_after_the_tasks_already_ready_while_several_streams_are_open() {
        // One worker: tokio runs the task woken last next (its LIFO slot), so without the yield
        // the driver, woken last, would run first.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        runtime.block_on(async {
            let _open = (OpenStream::new(), OpenStream::new());
            let (driver, other) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            let waiting = Arc::new(AtomicUsize::new(0));
            Gathering.spawn(Box::pin(wait_then_note(driver.clone(), waiting.clone(), order.clone(), "driver")));
            let other_task = tokio::spawn(wait_then_note(other.clone(), waiting.clone(), order.clone(), "other"));
            // The waking happens on the worker, as a stream task's write does.
            tokio::spawn(async move {
                while waiting.load(Ordering::SeqCst) < 2 {
                    tokio::task::yield_now().await;
                }
                other.notify_one();
                driver.notify_one();
            })
            .await
            .unwrap();
            other_task.await.unwrap();
            while order.lock().unwrap().len() < 2 {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(*order.lock().unwrap(), ["other", "driver"]);
    }
}
