//! Two network namespaces, a and b, joined by a veth pair, for traffic over a link with netem's
//! delay and loss: the tests run nodes inside them (`ip netns exec`, see
//! [`super::process::Node::create_at`]), the benches bind only the nodes' link sockets inside them
//! ([`TestNet::udp`]). Needs root and iproute2; everything made is deleted on drop, also on panic,
//! and what a killed run left is deleted by the next ([`TestNet::create`]).
//!
//! Addresses: 10.{o}.3.1 (a) and 10.{o}.3.2 (b) on the veth pair between them; with host links,
//! 10.{o}.1.2 (a) and 10.{o}.2.2 (b) reach this namespace at 10.{o}.1.1 and 10.{o}.2.1; `o` is
//! drawn from the process id so that two runs at once do not clash.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

/// Two network namespaces joined by a veth pair, optionally each linked to this namespace.
pub struct TestNet {
    /// The names of namespaces a and b.
    pub namespaces: [String; 2],
    /// Ends of the veth pair between a and b, in a and in b.
    devices: [String; 2],
    host_links: Vec<String>,
    octet: u8,
}

impl TestNet {
    /// Creates namespaces `{prefix}{pid}a` and `{prefix}{pid}b` joined by a veth pair, and with
    /// `host_links` a veth from each to this namespace; or says why it cannot. `prefix` is two
    /// letters (interface names have at most 15 bytes).
    pub fn create(prefix: &str, host_links: bool) -> Result<TestNet, String> {
        if Command::new("id").arg("-u").output().map(|o| o.stdout != b"0\n").unwrap_or(true) {
            return Err("not root".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("no `ip` command (iproute2)".into());
        }
        TestNet::remove_stale(prefix);
        let pid = std::process::id();
        let p = format!("{prefix}{pid}");
        let mut net = TestNet {
            namespaces: [format!("{p}a"), format!("{p}b")],
            devices: [format!("{p}la"), format!("{p}lb")],
            host_links: Vec::new(),
            octet: (100 + pid % 100) as u8,
        };
        let o = net.octet;
        let [na, nb] = net.namespaces.clone();
        let [la, lb] = net.devices.clone();
        // From the first step on, dropping `net` deletes what was made.
        let mut steps = vec![
            format!("netns add {na}"),
            format!("netns add {nb}"),
            format!("-n {na} link set lo up"),
            format!("-n {nb} link set lo up"),
        ];
        if host_links {
            net.host_links = vec![format!("{p}ha"), format!("{p}hb")];
            steps.extend([
                format!("link add {p}ha type veth peer name {p}xa netns {na}"),
                format!("link add {p}hb type veth peer name {p}xb netns {nb}"),
                format!("addr add 10.{o}.1.1/24 dev {p}ha"),
                format!("addr add 10.{o}.2.1/24 dev {p}hb"),
                format!("link set {p}ha up"),
                format!("link set {p}hb up"),
                format!("-n {na} addr add 10.{o}.1.2/24 dev {p}xa"),
                format!("-n {nb} addr add 10.{o}.2.2/24 dev {p}xb"),
                format!("-n {na} link set {p}xa up"),
                format!("-n {nb} link set {p}xb up"),
            ]);
        }
        steps.extend([
            format!("-n {na} link add {la} type veth peer name {lb} netns {nb}"),
            format!("-n {na} addr add 10.{o}.3.1/24 dev {la}"),
            format!("-n {nb} addr add 10.{o}.3.2/24 dev {lb}"),
            format!("-n {na} link set {la} up"),
            format!("-n {nb} link set {lb} up"),
        ]);
        for step in steps {
            run("ip", &step.split(' ').collect::<Vec<_>>())?;
        }
        Ok(net)
    }

    /// netem with `spec` (e.g. `loss 5% delay 50ms`) on both ends of the link between a and b,
    /// or why not (a kernel without netem says `qdisc kind is unknown`).
    pub fn netem(&self, spec: &str) -> Result<(), String> {
        for (ns, dev) in self.namespaces.iter().zip(&self.devices) {
            let mut args = vec!["netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem"];
            args.extend(spec.split(' '));
            run("ip", &args)?;
        }
        Ok(())
    }

    /// `10.{o}.{net}.{host}:{port}` (see the module's addresses).
    pub fn addr(&self, net: u8, host: u8, port: u16) -> SocketAddr {
        format!("10.{}.{net}.{host}:{port}", self.octet).parse().unwrap()
    }

    /// A UDP socket on side `side`'s (0: a, 1: b) end of the link between a and b, on a free
    /// port, made inside its namespace from a thread that enters it with setns, so that the rest
    /// of this process stays on its own loopback. A socket keeps the namespace it was made in.
    pub fn udp(&self, side: usize) -> anyhow::Result<std::net::UdpSocket> {
        let ns = self.namespaces[side].clone();
        let addr = self.addr(3, side as u8 + 1, 0);
        let path = Path::new("/run/netns").join(&ns);
        std::thread::spawn(move || -> anyhow::Result<std::net::UdpSocket> {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: setns with a valid namespace file descriptor changes only this thread's
            // network namespace; the thread ends right after binding.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns into a test network namespace");
            }
            Ok(std::net::UdpSocket::bind(addr)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread binding a socket in {ns} panicked"))?
    }

    /// Deletes namespaces `{prefix}{pid}a` and `…b` whose process is gone (a killed run's).
    fn remove_stale(prefix: &str) {
        let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            let Some(pid) = name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(['a', 'b'])) else {
                continue;
            };
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists() {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for link in &self.host_links {
            let _ = Command::new("ip").args(["link", "del", link]).stderr(Stdio::null()).output();
        }
    }
}

/// Runs `program args`; why not, with its stderr, if it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` refused: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
