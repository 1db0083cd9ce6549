//! Links on loopback for machines whose kernel has no netem: [`LossyLink`], a UDP relay between
//! two nodes that drops a share of the datagrams and delays the others, each way (or, as
//! [`LossyLink::slow`], passes them at a limited rate), and [`DelayRelay`], the same built for a
//! bench's throughput (GRO in, GSO out). Which datagrams are dropped is drawn from a seeded RNG
//! (one stream per direction), so a seed gives the same drop pattern for the same sequence of
//! datagrams.
//!
//! a pins b at [`LossyLink::to_b`] and b pins a at [`LossyLink::to_a`]: each node sees the other's
//! datagrams come from the address it pinned, as over a real link.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What one direction of the link did.
#[derive(Default)]
struct Counts {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// A running relay between nodes a (link address `a`) and b; it stops when dropped.
pub struct LossyLink {
    /// Where a sends to reach b: b's peer address in a's config.
    pub to_b: SocketAddr,
    /// Where b sends to reach a: a's peer address in b's config.
    pub to_a: SocketAddr,
    /// a to b, then b to a.
    counts: [Arc<Counts>; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl LossyLink {
    /// Relays between `a` and `b`, dropping each datagram with probability `loss` and sending the
    /// others on `delay` after they arrived, in the order they arrived.
    pub fn start(a: SocketAddr, b: SocketAddr, loss: f64, delay: Duration, seed: u64) -> LossyLink {
        LossyLink::relay(a, b, loss, delay, seed, None)
    }

    /// Relays between `a` and `b` at most `bytes_per_s` each way, dropping nothing: a slow link,
    /// on which a file takes long enough to be watched mid-way. Each datagram leaves `delay` after
    /// it arrived, or once the ones before it have left at that rate; the queue is unbounded (the
    /// peers' flow control bounds it).
    pub fn slow(a: SocketAddr, b: SocketAddr, bytes_per_s: u64, delay: Duration) -> LossyLink {
        LossyLink::relay(a, b, 0.0, delay, 0, Some(bytes_per_s))
    }

    fn relay(a: SocketAddr, b: SocketAddr, loss: f64, delay: Duration, seed: u64, rate: Option<u64>) -> LossyLink {
        let near_a = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let near_b = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let counts: [Arc<Counts>; 2] = Default::default();
        let mut threads = Vec::new();
        // a sends to `near_a`, which b sees coming from `near_b`; and the other way round.
        let ways = [(&near_a, &near_b, b), (&near_b, &near_a, a)];
        for (way, (input, output, destination)) in ways.into_iter().enumerate() {
            let (input, output) = (input.clone(), output.clone());
            let (seen, sent) = (counts[way].clone(), counts[way].clone());
            let (stop, mut rng) = (stop.clone(), StdRng::seed_from_u64(seed.wrapping_add(way as u64)));
            input.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    // A timeout, or an ICMP error of an earlier send: look again.
                    let Ok(n) = input.recv(&mut buf) else { continue };
                    if rng.random_bool(loss) {
                        seen.dropped.fetch_add(1, Ordering::Relaxed);
                    } else if queue.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }));
            // Ends when the receiving thread does (the queue's sender goes with it).
            threads.push(std::thread::spawn(move || {
                // When the link is free again, at `rate`.
                let mut free_at = Instant::now();
                for (at, datagram) in due {
                    let at = match rate {
                        Some(rate) => {
                            let at = at.max(free_at);
                            free_at = at + Duration::from_secs_f64(datagram.len() as f64 / rate as f64);
                            at
                        }
                        None => at,
                    };
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    // A send that fails is a datagram lost, as on a wire.
                    if output.send_to(&datagram, destination).is_ok() {
                        sent.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let (to_b, to_a) = (near_a.local_addr().unwrap(), near_b.local_addr().unwrap());
        LossyLink { to_b, to_a, counts, stop, threads }
    }

    /// Datagrams sent on so far, a to b and b to a.
    pub fn forwarded(&self) -> [u64; 2] {
        self.counts.each_ref().map(|c| c.forwarded.load(Ordering::Relaxed))
    }

    /// Datagrams dropped so far, a to b and b to a.
    pub fn dropped(&self) -> [u64; 2] {
        self.counts.each_ref().map(|c| c.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Datagrams between `a` and `b` on loopback, each dropped with a seeded probability and the
/// others held `delay` before they are passed on, built for throughput (for a bench across a long
/// path where there is no netem): `a` sends to `to_b`, `b` to `to_a`. Per direction one thread
/// receives (with GRO, so a call takes up to 64 datagrams) and draws each datagram's fate, and one
/// sends when due (with GSO); the queue between them is unbounded, as a long wire is. Which
/// datagrams are dropped comes from one RNG per direction seeded from `seed`, as in [`LossyLink`].
/// Stopped when dropped.
pub struct DelayRelay {
    /// Where a sends to reach b.
    pub to_b: SocketAddr,
    /// Where b sends to reach a.
    pub to_a: SocketAddr,
    /// a to b, then b to a.
    counts: [Arc<Counts>; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DelayRelay {
    /// Relays between `a` and `b`, dropping each datagram with probability `loss` (0 to 1, each
    /// way) and holding the others `delay`.
    pub fn start(a: SocketAddr, b: SocketAddr, delay: Duration, loss: f64, seed: u64) -> anyhow::Result<DelayRelay> {
        anyhow::ensure!((0.0..1.0).contains(&loss), "a loss rate is a probability below 1, not {loss}");
        let from_a = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0")?);
        let from_b = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0")?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut relay = DelayRelay {
            to_b: from_a.local_addr()?,
            to_a: from_b.local_addr()?,
            counts: Default::default(),
            stop: stop.clone(),
            threads: vec![],
        };
        // One state per socket: each receives one way and sends the other.
        let mut states = Vec::new();
        for socket in [&from_a, &from_b] {
            let state = quinn::udp::UdpSocketState::new((&**socket).into())?;
            let _ = state.set_recv_buffer_size((&**socket).into(), 16 << 20);
            let _ = state.set_send_buffer_size((&**socket).into(), 16 << 20);
            // quinn-udp has made the socket non-blocking, which would make the receiving thread
            // spin: it blocks instead, up to a timeout to look at `stop`, and a send waits for
            // room in the buffer rather than dropping more than the loss asked for.
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            states.push(Arc::new(state));
        }
        let ways = [(&from_a, &from_b, &states[0], &states[1], b), (&from_b, &from_a, &states[1], &states[0], a)];
        for (way, (input, output, state, out_state, destination)) in ways.into_iter().enumerate() {
            let (state, out_state) = (state.clone(), out_state.clone());
            let (queue, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>, usize)>();
            let (input, stop_in, counts) = (input.clone(), stop.clone(), relay.counts[way].clone());
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(way as u64));
            relay.threads.push(std::thread::Builder::new().name("relay-in".into()).spawn(move || {
                // Room for as many datagrams as GRO may coalesce, however large.
                let mut buf = vec![0u8; state.gro_segments().max(1) * 65_536];
                let mut meta = [quinn::udp::RecvMeta::default()];
                while !stop_in.load(Ordering::Relaxed) {
                    let got = state.recv((&*input).into(), &mut [std::io::IoSliceMut::new(&mut buf)], &mut meta);
                    match got {
                        Ok(n) if n > 0 => {
                            let m = meta[0];
                            let stride = if m.stride == 0 { m.len } else { m.stride };
                            // Each datagram of the batch on its own: the ones kept stay in order, all
                            // of `stride` bytes but the last, as GSO sends them on.
                            let mut kept = Vec::with_capacity(m.len);
                            for datagram in buf[..m.len].chunks(stride.max(1)) {
                                if loss > 0.0 && rng.random_bool(loss) {
                                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    counts.forwarded.fetch_add(1, Ordering::Relaxed);
                                    kept.extend_from_slice(datagram);
                                }
                            }
                            if !kept.is_empty() && queue.send((Instant::now() + delay, kept, stride)).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(_) => return,
                    }
                }
            })?);
            let output = output.clone();
            relay.threads.push(std::thread::Builder::new().name("relay-out".into()).spawn(move || {
                // Ends when the receiving thread does (the queue's sender is dropped).
                while let Ok((at, bytes, stride)) = due.recv() {
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let stride = stride.max(1);
                    let batch = stride * out_state.max_gso_segments().max(1);
                    for part in bytes.chunks(batch) {
                        let transmit = quinn::udp::Transmit {
                            destination,
                            ecn: None,
                            contents: part,
                            segment_size: (part.len() > stride).then_some(stride),
                            src_ip: None,
                        };
                        // A datagram lost here is lost as on a wire; QUIC resends it.
                        let _ = out_state.send((&*output).into(), &transmit);
                    }
                }
            })?);
        }
        Ok(relay)
    }

    /// Datagrams passed on (or due to be) so far, a to b and b to a.
    pub fn forwarded(&self) -> [u64; 2] {
        self.counts.each_ref().map(|c| c.forwarded.load(Ordering::Relaxed))
    }

    /// Datagrams dropped so far, a to b and b to a.
    pub fn dropped(&self) -> [u64; 2] {
        self.counts.each_ref().map(|c| c.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
