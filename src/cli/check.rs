//! `ferry check`: the config, this node's key and certificate, and every pinned peer certificate
//! (each peer its own); with `--connect`, also a pinned QUIC handshake with each peer and a call to each service.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CliError;
use crate::config::{Config, PeerConfig, ServiceConfig};
use crate::identity::{load_cert, Fingerprint, Identity};
use crate::rollover::{KeyFiles, Keys};

/// How long each peer and service has to answer.
const REACH_WITHIN: Duration = Duration::from_secs(5);

/// What `ferry check` found (`--json` prints it as it is).
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    node: String,
    peers: usize,
    services: usize,
    fingerprint: Option<String>,
    /// What makes the config unusable, one line each.
    problems: Vec<String>,
    warnings: Vec<String>,
    /// With `--connect`: each peer and service, reached or not.
    reached: Vec<Reached>,
}

/// One peer or service `--connect` tried.
#[derive(Debug, serde::Serialize)]
struct Reached {
    /// `peer` or `service`.
    kind: &'static str,
    name: String,
    address: String,
    ok: bool,
    /// What answered (`pinned handshake, rtt 0.41 ms`, `answered HTTP 200`), or why nothing did.
    detail: String,
    rtt_ms: Option<f64>,
    status: Option<u16>,
}

/// Checks the config, the key and every pin, and with `connect` reaches every peer and service;
/// prints what is fine, one line each, and returns every problem and failure, one per line (exit
/// 2). With `json`, prints the whole [`Report`] instead, the exit code the same.
pub fn check(path: &Path, connect: bool, json: bool) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let mut report = Report {
        node: config.node.name.clone(),
        peers: config.peers.len(),
        services: config.services.len(),
        ..Report::default()
    };
    let files = KeyFiles::of(&config);
    let keys = match Keys::load(&files) {
        Ok(keys) => Some(keys),
        Err(e) => {
            report.problems.push(e.to_string());
            None
        }
    };
    let own = keys.as_ref().map(|k| k.current.fingerprint);
    let mut pinned = Vec::new();
    for peer in &config.peers {
        let mut fingerprints = Vec::new();
        for file in &peer.certs {
            match load_cert(file) {
                Ok(cert) if Some(Fingerprint::of(&cert)) == own => report.problems.push(format!(
                    "peer `{}`: {} is this node's own certificate",
                    peer.name,
                    file.display()
                )),
                Ok(cert) => fingerprints.push(Fingerprint::of(&cert)),
                Err(e) => report.problems.push(format!("peer `{}`: {e}", peer.name)),
            }
        }
        pinned.push((peer.clone(), fingerprints));
    }
    let pins = pinned.iter().flat_map(|(peer, fingerprints)| fingerprints.iter().map(|f| (peer.name.as_str(), *f)));
    report.problems.extend(crate::peer::pinned_twice(pins).iter().map(ToString::to_string));
    if let Some(Err(e)) = config.evidence.tsa.as_ref().map(|tsa| tsa.certificate()) {
        report.problems.push(e);
    }
    if let Some(Err(e)) = config.store.ca.as_deref().map(crate::store::store_ca) {
        report.problems.push(e.to_string());
    }
    if let (true, Some(keys)) = (report.problems.is_empty(), &keys) {
        report.fingerprint = Some(keys.current.fingerprint.to_string());
        report.warnings.extend(readable_tokens(&config));
        report.warnings.extend(rollover_state(keys, &files));
        // Peers' rollovers pinned by the node count as pins: the newest is the one reached.
        let peers = crate::peer::Peers::load(&config.peers).map_err(CliError::from)?;
        peers.restore(&crate::store::rollovers_in(&config.store_location()).unwrap_or_default());
        let pinned: Vec<_> = pinned
            .into_iter()
            .map(|(config, fingerprints)| {
                let pins = peers.get(&config.name).map(|p| p.pins().iter().map(|p| p.fingerprint).collect());
                (config, pins.unwrap_or(fingerprints))
            })
            .collect();
        // During this node's own rollover, peers may pin only the old certificate.
        let identity = &keys.for_peer(false).identity;
        if connect {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
            report.reached = runtime.block_on(reach_all(identity, &pinned, &config.services));
        }
    }
    finish(&report, json)
}

/// Prints `report`, and fails (exit 2) with its problems and failures.
fn finish(report: &Report, json: bool) -> Result<(), CliError> {
    let failed = report
        .reached
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} `{}` at {}: {}", r.kind, r.name, r.address, r.detail));
    let failures: Vec<String> = report.problems.iter().cloned().chain(failed).collect();
    if json {
        out!("{}", serde_json::to_string_pretty(report).expect("a report serializes"));
        return if failures.is_empty() { Ok(()) } else { Err(CliError::usage(String::new())) };
    }
    if let Some(fingerprint) = &report.fingerprint {
        out!(
            "ok: node `{}`, {} peer(s), {} service(s), fingerprint {fingerprint}",
            report.node,
            report.peers,
            report.services
        );
        for warning in &report.warnings {
            out!("{warning}");
        }
        for r in report.reached.iter().filter(|r| r.ok) {
            out!("ok: {} `{}` at {}: {}", r.kind, r.name, r.address, r.detail);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::usage(failures.join("\n")))
    }
}

/// A warning when the config holds API tokens and users other than its owner and group may read
/// it (the exit code stays as it is).
fn readable_tokens(config: &Config) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config.path).ok()?.permissions().mode();
        if !config.api.tokens.is_empty() && mode & 0o004 != 0 {
            return Some(format!(
                "warning: {} holds api.tokens and every user of this host may read it (mode {:04o}); \
                 `chmod 600` it, or 640 with the node's group (see README, systemd)",
                config.path.display(),
                mode & 0o7777
            ));
        }
    }
    None
}

/// A warning while this node's key rollover is under way, or when its files outlived it.
fn rollover_state(keys: &Keys, files: &KeyFiles) -> Option<String> {
    if let Some((previous, statement)) = keys.previous() {
        return Some(format!(
            "note: a key rollover is under way until {}: peers not yet pinning {} are presented {} (certs/{})",
            crate::store::rfc3339(statement.until_ms),
            keys.current.fingerprint,
            previous.fingerprint,
            crate::rollover::PREVIOUS_CERT
        ));
    }
    let old_key = files.dir.join(crate::rollover::PREVIOUS_KEY);
    old_key.exists().then(|| {
        format!(
            "warning: {} is a replaced key no longer used (its rollover is over or stopped); delete it, with {} and {}",
            old_key.display(),
            crate::rollover::PREVIOUS_CERT,
            crate::rollover::STATEMENT_FILE
        )
    })
}

/// Reaches every peer (at each of its addresses) and service at once.
async fn reach_all(
    identity: &Identity,
    peers: &[(PeerConfig, Vec<Fingerprint>)],
    services: &[ServiceConfig],
) -> Vec<Reached> {
    let each_address = peers.iter().flat_map(|(p, pins)| p.addresses.iter().map(move |a| (p, pins, a)));
    let peer_checks =
        futures::future::join_all(each_address.clone().map(|(p, pins, a)| reach_peer(identity, p, a, pins)));
    let service_checks = futures::future::join_all(services.iter().map(reach_service));
    let (peer_results, service_results) = tokio::join!(peer_checks, service_checks);
    let peers = each_address.zip(peer_results).map(|((peer, _, address), result)| {
        let rtt = result.as_ref().ok().map(|rtt| rtt_ms(*rtt));
        Reached {
            kind: "peer",
            name: peer.name.clone(),
            address: address.clone(),
            ok: result.is_ok(),
            detail: result.map_or_else(|why| why, |rtt| format!("pinned handshake, rtt {:.2} ms", rtt_ms(rtt))),
            rtt_ms: rtt,
            status: None,
        }
    });
    let services = services.iter().zip(service_results).map(|(service, result)| Reached {
        kind: "service",
        name: service.id.clone(),
        address: service.base_url.to_string(),
        ok: result.is_ok(),
        status: result.as_ref().ok().copied(),
        detail: result.map_or_else(|why| why, |status| format!("answered HTTP {status}")),
        rtt_ms: None,
    });
    peers.chain(services).collect()
}

fn rtt_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A QUIC handshake with `peer` at `address`, one of its addresses, that accepts only a
/// certificate pinned for it (`pins`, the newest first, which it is asked for), and presents ours.
async fn reach_peer(
    identity: &Identity,
    peer: &PeerConfig,
    address: &str,
    pins: &[Fingerprint],
) -> Result<Duration, String> {
    let pinned = pins[0];
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("cannot resolve the address ({e}); check `address` in its [[peer]] table"))?
        .next()
        .ok_or("the address resolves to nothing; check `address` in its [[peer]] table")?;
    let local: std::net::SocketAddr =
        if addr.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("a valid wildcard address");
    let endpoint = quinn::Endpoint::client(local).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let refusals = crate::tls::RefusalLog::quiet();
    let tls = crate::tls::dial_config(identity, pins.to_vec(), addr, &refusals)
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| format!("cannot set up TLS: {e}"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(crate::link::Transport::default().config());
    let started = Instant::now();
    let connecting = endpoint
        .connect_with(client, addr, &crate::tls::server_name(pinned))
        .map_err(|e| format!("cannot dial: {e}"))?;
    let result = match tokio::time::timeout(REACH_WITHIN, connecting).await {
        Err(_) => Err(format!(
            "no answer within {REACH_WITHIN:?}; is its node running, and is UDP port {} open on the way?",
            addr.port()
        )),
        Ok(Err(e)) => Err(match refusals.refused().first() {
            Some(presented) => format!(
                "it presented certificate {presented}, but {} pinned for it here ({}): if its admin made a \
                 new key, compare fingerprints with them and pin the new certificate; otherwise this is not `{}`",
                match pins {
                    [one] => format!("{one} is"),
                    several =>
                        format!("{} are", several.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
                },
                peer.certs.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", "),
                peer.name
            ),
            None => explain_handshake(&e),
        }),
        Ok(Ok(connection)) => {
            let rtt = connection.rtt().min(started.elapsed());
            match tokio::time::timeout(REACH_WITHIN, crate::link::accepted(&connection)).await {
                Ok(Ok(())) => {
                    connection.close(crate::wire::Code::Done.varint(), b"ferry check");
                    Ok(rtt)
                }
                Ok(Err(reason)) => Err(format!(
                    "the peer closed the connection right after the handshake ({reason}); it has probably not \
                     pinned this node's certificate: compare `ferry cert fingerprint` here with its `certs/peers/` file"
                )),
                Err(_) => Err(format!("the peer did not confirm the handshake within {REACH_WITHIN:?}")),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

/// What a failed handshake means for the admin.
fn explain_handshake(e: &quinn::ConnectionError) -> String {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("ApplicationVerificationFailure") {
        format!(
            "handshake refused ({text}): either the peer's certificate is not the one pinned here, or the peer has \
             not pinned this node's certificate; compare `ferry cert fingerprint` on both sides"
        )
    } else if matches!(e, quinn::ConnectionError::TimedOut) {
        "the handshake timed out; is its node running, and is its UDP port open on the way?".to_owned()
    } else {
        format!("handshake failed: {text}")
    }
}

/// An HTTP GET of the service's base URL: any answer means it is reachable.
async fn reach_service(service: &ServiceConfig) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REACH_WITHIN)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    match client.get(service.base_url.clone()).send().await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) if e.is_timeout() => Err(format!("no answer within {REACH_WITHIN:?}; is the service up?")),
        Err(e) => {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = format!("{cause}: {s}");
                source = s.source();
            }
            Err(format!("unreachable ({cause}); is the service running at `base_url`?"))
        }
    }
}
