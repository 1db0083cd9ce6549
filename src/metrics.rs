//! The node's Prometheus metrics (`GET /metrics`), with the `prometheus-client` crate.
//!
//! Counters and histograms are updated where things happen (synchronous exchanges, replies,
//! service calls, callbacks, file streams). Figures the store and the peer table already hold —
//! requests by state, peer connections and RTT — are read when the metrics are scraped, so they
//! can never drift from the truth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels naming a peer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's name.
    pub peer: String,
}

/// Labels of a synchronous exchange.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// The peer.
    pub peer: String,
    /// `outgoing` (this node's host asked) or `incoming` (a peer asked this node's service).
    pub direction: String,
    /// `success` (2xx), `failed` (another status), `refused`, `unreachable`.
    pub outcome: String,
}

/// Labels of stored (asynchronous) requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `outgoing` or `incoming`.
    pub direction: String,
    /// The peer.
    pub peer: String,
    /// `waiting`, `doing`, `success` or `failed`.
    pub state: String,
}

/// Labels of file bytes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// The peer.
    pub peer: String,
    /// `sent` or `received`.
    pub direction: String,
}

/// Labels of a service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service id.
    pub service: String,
}

/// Labels of callback deliveries.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered` or `retry` for callbacks (the attempt failed and another is scheduled, or it
    /// gave up); `stamped` or `failed` for time-stamps.
    pub outcome: String,
}

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Synchronous exchanges by peer, direction and outcome.
    pub sync_requests: Family<SyncLabels, Counter>,
    /// How long a synchronous exchange took, at the requesting node.
    pub sync_duration: Family<PeerLabel, Histogram>,
    /// How long asynchronous requests took from stored to final reply, at the requesting node.
    pub async_duration: Family<PeerLabel, Histogram>,
    /// How long the local services took to answer.
    pub service_duration: Family<ServiceLabel, Histogram>,
    /// File bytes moved over the link.
    pub file_bytes: Family<BytesLabels, Counter>,
    /// Callback delivery attempts.
    pub callbacks: Family<OutcomeLabel, Counter>,
    /// Attempts to time-stamp the evidence log's head: `stamped` or `failed`.
    pub timestamps: Family<OutcomeLabel, Counter>,
    /// Stored requests by direction, peer and state (set at scrape time).
    pub requests: Family<QueueLabels, Gauge>,
    /// Results waiting for delivery to callbacks (set at scrape time).
    pub callbacks_pending: Gauge,
    /// Members of the organization sharing this node's store that are alive, this one included
    /// (set at scrape time; 1 on SQLite).
    pub members_alive: Gauge,
    /// 1 when the node holds a connection to the peer (set at scrape time).
    pub peer_connected: Family<PeerLabel, Gauge>,
    /// The peer connection's round-trip time in seconds (set at scrape time).
    pub peer_rtt: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    /// Sums over every label, for the throughput history.
    pub totals: Totals,
}

/// Counters summed over their labels, read cheaply by the throughput sampler
/// ([`crate::throughput`]).
#[derive(Debug, Default)]
pub struct Totals {
    /// Synchronous exchanges, both directions.
    pub sync_requests: AtomicU64,
    /// File bytes moved over the link, both directions.
    pub file_bytes: AtomicU64,
}

fn latency() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let m = Metrics {
            sync_requests: Family::default(),
            sync_duration: Family::new_with_constructor(latency),
            async_duration: Family::new_with_constructor(latency),
            service_duration: Family::new_with_constructor(latency),
            file_bytes: Family::default(),
            callbacks: Family::default(),
            timestamps: Family::default(),
            requests: Family::default(),
            callbacks_pending: Gauge::default(),
            members_alive: Gauge::default(),
            peer_connected: Family::default(),
            peer_rtt: Family::default(),
            totals: Totals::default(),
            registry: Registry::default(),
        };
        registry.register("sync_requests", "Synchronous exchanges", m.sync_requests.clone());
        registry.register("sync_request_duration_seconds", "Synchronous exchange time", m.sync_duration.clone());
        registry.register(
            "async_request_duration_seconds",
            "Asynchronous request time, stored to final reply",
            m.async_duration.clone(),
        );
        registry.register("service_call_duration_seconds", "Local service answer time", m.service_duration.clone());
        registry.register("file_bytes", "File bytes moved over the link", m.file_bytes.clone());
        registry.register("callback_attempts", "Callback delivery attempts", m.callbacks.clone());
        registry.register("timestamps", "Attempts to time-stamp the evidence log's head", m.timestamps.clone());
        registry.register("requests", "Stored requests by direction, peer and state", m.requests.clone());
        registry.register(
            "callbacks_pending",
            "Results waiting for delivery to callbacks",
            m.callbacks_pending.clone(),
        );
        registry.register(
            "store_members_alive",
            "Members sharing the store that are alive, this one included",
            m.members_alive.clone(),
        );
        registry.register("peer_connected", "1 when connected to the peer", m.peer_connected.clone());
        registry.register("peer_rtt_seconds", "Round-trip time to the peer", m.peer_rtt.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a synchronous exchange.
    pub fn sync_request(&self, peer: &str, direction: &str, outcome: &str) {
        self.totals.sync_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let labels = SyncLabels { peer: peer.to_owned(), direction: direction.to_owned(), outcome: outcome.to_owned() };
        self.sync_requests.get_or_create(&labels).inc();
    }

    /// Counts file bytes moved to or from `peer`.
    pub fn file_bytes(&self, peer: &str, direction: &str, bytes: u64) {
        self.totals.file_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        let labels = BytesLabels { peer: peer.to_owned(), direction: direction.to_owned() };
        self.file_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// The Prometheus text format of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Turns a stream of absolute progress figures into increments: the first figure is the
/// starting point (a resumed transfer starts where the receiver stood), each later one adds
/// what was moved since.
#[derive(Debug)]
pub struct Progress(AtomicU64);

impl Default for Progress {
    fn default() -> Self {
        Progress(AtomicU64::new(u64::MAX))
    }
}

impl Progress {
    /// The bytes moved since the last figure (0 for the first).
    pub fn advance(&self, done: u64) -> u64 {
        let before = self.0.swap(done, std::sync::atomic::Ordering::Relaxed);
        if before == u64::MAX {
            0
        } else {
            done.saturating_sub(before)
        }
    }
}
