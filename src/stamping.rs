//! Stamping the evidence log's head with the configured TSA (`[evidence] tsa_url`): every
//! `tsa_every` when the head moved, and once at shutdown. Each token is checked against the TSA's
//! certificate at once and kept in the log as a record of its own (`event: "timestamp"`). A TSA
//! that fails is retried at the next tick and reported ([`Status`], `/v1/health`, metrics); the
//! node works on either way.

use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::TsaConfig;
use crate::evidence::{Record, TimeStamp};
use crate::metrics::Metrics;
use crate::store::{now_ms, rfc3339, Store};

/// How the stamping goes, for `/v1/health`.
#[derive(Debug, Default)]
pub struct Status(Mutex<Health>);

/// The `timestamps` object of `/v1/health`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Health {
    /// The last time-stamp recorded.
    pub last_ok: Option<Stamp>,
    /// The last failure, while no time-stamp has succeeded since.
    pub last_error: Option<Failure>,
}

/// A time-stamp recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Stamp {
    /// When it was recorded (RFC 3339).
    pub at: String,
    /// The seq of the head it stamps.
    pub seq: i64,
    /// The TSA's time.
    pub tsa_time: String,
}

/// A failed attempt to stamp.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// When it failed (RFC 3339).
    pub at: String,
    /// Why, and what to do.
    pub why: String,
}

impl Status {
    /// A copy of how the stamping goes.
    pub fn health(&self) -> Health {
        self.0.lock().unwrap().clone()
    }
}

/// Stamps the store's chain head with one TSA.
#[derive(Debug, Clone)]
pub struct Stamper {
    store: Store,
    tsa: TsaConfig,
    /// The TSA's certificate (DER).
    cert: Arc<Vec<u8>>,
    client: reqwest::Client,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    /// The seq of the last record this stamper appended (its own time-stamp record), so that an
    /// unmoved head is not stamped again.
    last: Arc<Mutex<Option<i64>>>,
}

impl Stamper {
    /// A stamper for `tsa` whose certificate is `cert` (DER, [`TsaConfig::certificate`]),
    /// reporting to `metrics` and [`Stamper::status`].
    pub fn new(store: Store, tsa: TsaConfig, cert: Arc<Vec<u8>>, metrics: Arc<Metrics>) -> Stamper {
        Stamper {
            store,
            tsa,
            cert,
            client: reqwest::Client::new(),
            status: Arc::default(),
            metrics,
            last: Arc::default(),
        }
    }

    /// How the stamping goes.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Stamps the head every `tsa_every` until `stop`.
    pub async fn work(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + self.tsa.every, self.tsa.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            tokio::select! {
                () = self.stamp_head() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Stamps the head if it moved since the last stamp, and reports how it went.
    pub async fn stamp_head(&self) {
        let outcome = self.try_stamp().await;
        let label = match &outcome {
            Ok(None) => return,
            Ok(Some(_)) => "stamped",
            Err(_) => "failed",
        };
        let labels = crate::metrics::OutcomeLabel { outcome: label.to_owned() };
        self.metrics.timestamps.get_or_create(&labels).inc();
        let mut health = self.status.0.lock().unwrap();
        match outcome {
            Ok(stamp) => {
                if health.last_error.take().is_some() {
                    tracing::info!(tsa = %self.tsa.url, "the TSA time-stamps again");
                }
                health.last_ok = stamp;
            }
            Err(why) => {
                if health.last_error.is_none() {
                    tracing::warn!(tsa = %self.tsa.url, "cannot time-stamp the evidence log: {why}");
                }
                health.last_error = Some(Failure { at: rfc3339(now_ms()), why });
            }
        }
    }

    /// Whether the record at `seq` is a time-stamp record.
    async fn is_time_stamp(&self, seq: i64) -> bool {
        let records = self.store.audit(seq - 1, 1).await.unwrap_or_default();
        records
            .first()
            .and_then(|text| serde_json::from_str::<Record>(text).ok())
            .is_some_and(|r| r.entry.event == "timestamp")
    }

    /// Stamps the head and records the token: `None` when the head has not moved.
    async fn try_stamp(&self) -> Result<Option<Stamp>, String> {
        let head = self.store.chain_head().await.map_err(|e| format!("the chain head cannot be read: {e}"))?;
        let Some((seq, hash)) = head else { return Ok(None) };
        let last = *self.last.lock().unwrap();
        if last == Some(seq) || (last.is_none() && self.is_time_stamp(seq).await) {
            // Unmoved since this node's last stamp (in this run, or the stop's of the last run).
            *self.last.lock().unwrap() = Some(seq);
            return Ok(None);
        }
        let mut digest = [0; 32];
        hex::decode_to_slice(&hash, &mut digest)
            .map_err(|_| format!("the chain head (seq {seq}) is unreadable; run `ferry audit verify`"))?;
        let token = crate::timestamp::stamp(&self.client, &self.tsa.url, &digest).await.map_err(|e| e.to_string())?;
        let stamped = crate::timestamp::verify(&token.0, &digest, &self.cert)
            .map_err(|e| format!("the TSA's token does not verify against {}: {e}", self.tsa.cert.display()))?;
        let record = TimeStamp {
            seq,
            hash,
            tsa_time: stamped.time.clone(),
            token: base64::engine::general_purpose::STANDARD.encode(&token.0),
        };
        let own = self.store.time_stamped(record).await.map_err(|e| format!("the time-stamp cannot be stored: {e}"))?;
        *self.last.lock().unwrap() = Some(own);
        Ok(Some(Stamp { at: rfc3339(now_ms()), seq, tsa_time: stamped.time }))
    }
}
