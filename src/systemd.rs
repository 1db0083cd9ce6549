//! The systemd notification protocol (`sd_notify`), spoken only when `NOTIFY_SOCKET` is set.
//!
//! `ferry run` tells systemd `READY=1` once the API and the link serve, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` while the node is healthy (its store answers), `RELOADING=1` then `READY=1`
//! around a reload, `STOPPING=1` when it begins to stop, and a one-line `STATUS=` summary.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::peer::Peers;
use crate::store::Store;

/// How often `STATUS=` is refreshed when systemd asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// A handle on systemd's notification socket. Cheap to clone; every message is best effort.
#[derive(Debug, Clone)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier if the process was started by systemd with `Type=notify` (`NOTIFY_SOCKET` set),
    /// with the watchdog period from `WATCHDOG_USEC` (when `WATCHDOG_PID` is unset or ours).
    pub fn from_env() -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET")?;
        Some(Notifier { watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) })
    }

    /// How often `WATCHDOG=1` is sent: half of `WATCHDOG_USEC`, or `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot write to systemd's NOTIFY_SOCKET");
        }
    }

    /// `READY=1` with a status line: the node serves.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1`: a reload has begun; [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the config")]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status("reloading the config")]),
        }
    }

    /// `STOPPING=1`: the node has begun to stop.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing the work under way")]);
    }

    /// `STATUS=` alone.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1` with a status line.
    pub fn alive(&self, status: &str) {
        self.send(&[NotifyState::Watchdog, NotifyState::Status(status)]);
    }

    /// Until `stop`: every watchdog interval (or every 10 s without a watchdog) asks the store for
    /// its figures; if it answers in time, sends `WATCHDOG=1` and the summary, otherwise only a
    /// `STATUS=` saying what is wrong, so that systemd restarts a node whose store hangs.
    pub async fn watch(self, name: String, store: Store, peers: Peers, stop: CancellationToken) {
        let every = self.watchdog_interval().unwrap_or(STATUS_EVERY).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            match tokio::time::timeout(every, summary(&name, &store, &peers)).await {
                Ok(Ok(line)) if self.watchdog.is_some() => self.alive(&line),
                Ok(Ok(line)) => self.status(&line),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the store failed its health check; not feeding the watchdog");
                    self.status(&format!("unhealthy: the store failed: {e}"));
                }
                Err(_) => {
                    tracing::error!(within = ?every, "the store did not answer its health check in time");
                    self.status("unhealthy: the store does not answer");
                }
            }
        }
    }
}

/// One line for `STATUS=` and `systemctl status`: peers connected and requests by state.
pub async fn summary(name: &str, store: &Store, peers: &Peers) -> Result<String, crate::store::StoreError> {
    // The writer must answer too: read views run beside it.
    store.flush().await?;
    let stats = store.stats().await?;
    let all = peers.all();
    let connected = all.iter().filter(|p| p.connection().is_some()).count();
    let count =
        |m: &serde_json::Map<String, serde_json::Value>, k: &str| m.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(format!(
        "{name}: {connected}/{} peers connected; outgoing {} waiting, {} doing; incoming {} doing; {} callbacks pending",
        all.len(),
        count(&stats.outgoing, "waiting"),
        count(&stats.outgoing, "doing"),
        count(&stats.incoming, "doing"),
        stats.callbacks_pending
    ))
}
