//! QUIC transport settings for peer connections, in one place.

use std::sync::Arc;
use std::time::Duration;

/// Flow-control windows, keep-alive and limits for every peer connection.
///
/// The window defaults are quinn's own (about 1.25 MB per stream, sized for 100 Mbit/s at
/// 100 ms): on loopback larger windows measured slower (more UDP buffer overflow), while on a WAN
/// the stream window caps one stream at window / RTT, about 25 MB/s at 50 ms. The file transfer
/// work measures both and sets these from the figures.
#[derive(Debug, Clone)]
pub struct Transport {
    /// Bytes a peer may send on one stream before we read them.
    pub stream_receive_window: u32,
    /// Bytes a peer may send on all streams of a connection before we read them.
    pub receive_window: u32,
    /// Bytes we keep in flight on a connection.
    pub send_window: u64,
    /// How often an idle connection is kept alive.
    pub keep_alive: Duration,
    /// How long a silent connection lives.
    pub idle_timeout: Duration,
    /// Concurrent request streams a peer may open.
    pub max_streams: u32,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            stream_receive_window: 1_250_000,
            receive_window: 16 * 1_250_000,
            send_window: 8 * 1_250_000,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_streams: 1024,
        }
    }
}

impl Transport {
    /// The quinn transport configuration.
    pub fn config(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.receive_window.into())
            .send_window(self.send_window)
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(self.idle_timeout.try_into().expect("idle timeout fits a varint")))
            .max_concurrent_bidi_streams(self.max_streams.into())
            .max_concurrent_uni_streams(0u32.into());
        Arc::new(t)
    }
}
