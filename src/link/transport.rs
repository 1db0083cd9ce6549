//! QUIC transport settings for peer connections, in one place.

use std::sync::Arc;
use std::time::Duration;

const MIB: u32 = 1 << 20;

/// Flow-control windows, socket buffers, keep-alive and limits for every peer connection.
///
/// Window sizing. One stream moves at most one stream window per round trip: quinn's default
/// (about 1.25 MB) caps a transfer near 25 MB/s at 50 ms of RTT, and `cargo bench --bench files`
/// measured far worse across 50 ms (3–5 MiB/s, with losses and a collapsed congestion window,
/// because bursts overflowed the system's default 208 KiB UDP receive buffer). Here the stream
/// window is 8 MiB (a cap of about 168 MB/s at 50 ms: a 1 Gbit/s link up to 67 ms of RTT), the
/// connection may take two such streams at once and keep as much in flight, and the link socket
/// asks for 4 MiB of buffers ([`Transport::tune_socket`]; the kernel caps that at
/// `net.core.rmem_max`/`wmem_max`, 4 MiB on the build machine, 208 KiB on stock kernels, where
/// raising those sysctls helps). With these, 50 ms measured 45 MiB/s for raw quinn with no
/// window limit reached (the loaded 2-core machine was the limit: 8, 16, 32 and 64 MiB windows
/// all measured the same there).
///
/// The cost is on loopback: larger windows let a sender run further ahead of a busy receiver,
/// and on the loaded build machine raw quinn measured 15–40% slower with an 8 MiB window than
/// with quinn's default, and slower still with 16 MiB, in interleaved runs. 8 MiB is the
/// compromise; the windows are limits, not allocations (memory follows what is in flight).
#[derive(Debug, Clone)]
pub struct Transport {
    /// Bytes a peer may send on one stream before we read them.
    pub stream_receive_window: u32,
    /// Bytes a peer may send on all streams of a connection before we read them.
    pub receive_window: u32,
    /// Bytes we keep in flight (sent, not yet acknowledged) on a connection.
    pub send_window: u64,
    /// SO_RCVBUF and SO_SNDBUF asked for on the link socket; 0 leaves the system's default.
    pub socket_buffer: usize,
    /// How often an idle connection is kept alive.
    pub keep_alive: Duration,
    /// How long a silent connection lives.
    pub idle_timeout: Duration,
    /// Concurrent request streams a peer may open.
    pub max_streams: u32,
}

impl Default for Transport {
    fn default() -> Self {
        Transport::windows(8 * MIB, 4 << 20)
    }
}

impl Transport {
    /// The settings with a stream window of `stream_window` bytes: the connection may receive two
    /// such streams at full speed at once and keep as much in flight; `socket_buffer` bytes of
    /// socket buffers (0: the system's default).
    pub fn windows(stream_window: u32, socket_buffer: usize) -> Transport {
        Transport {
            stream_receive_window: stream_window,
            receive_window: stream_window.saturating_mul(2),
            send_window: 2 * u64::from(stream_window),
            socket_buffer,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_streams: 1024,
        }
    }

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

    /// Asks for [`Transport::socket_buffer`] bytes of receive and send buffer on `socket` (the
    /// kernel may grant less); the sizes granted, as the kernel reports them.
    pub fn tune_socket(&self, socket: &std::net::UdpSocket) -> std::io::Result<(usize, usize)> {
        let state = quinn::udp::UdpSocketState::new(socket.into())?;
        if self.socket_buffer > 0 {
            // Not fatal: a smaller buffer is slower, not wrong.
            if let Err(e) = state.set_recv_buffer_size(socket.into(), self.socket_buffer) {
                tracing::warn!("cannot set the link socket's receive buffer: {e}");
            }
            if let Err(e) = state.set_send_buffer_size(socket.into(), self.socket_buffer) {
                tracing::warn!("cannot set the link socket's send buffer: {e}");
            }
        }
        Ok((state.recv_buffer_size(socket.into())?, state.send_buffer_size(socket.into())?))
    }
}
