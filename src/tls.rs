//! TLS 1.3 configurations for the link: both sides present certificates and accept only pinned ones.
//!
//! There is no certificate authority. The server accepts a client whose certificate's fingerprint
//! is pinned in the peer table; the client accepts a server only if it presents a certificate
//! pinned for the peer it dialed (two during the peer's key rollover), and names the newest in its
//! TLS server name ([`server_name`]) so that a server in the middle of its own rollover presents
//! that one ([`crate::rollover::Keys::for_server_name`]). Both still verify the handshake signature with the certificate's
//! key, so a copy of a pinned certificate without its key is worth nothing. Session resumption is
//! off, so every connection shows its certificate to the verifier again.
//!
//! A refusal is logged with the other side's address and the certificate it presented, once a
//! minute per certificate ([`RefusalLog`]): the server's configuration is made for each incoming
//! connection ([`Acceptor`]), the client's for each dial, so that each verifier knows the address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Fingerprint, Identity};
use crate::peer::Peers;
use crate::pending::Pending;
use crate::rollover::{Keys, SharedKeys};
use crate::wire::ALPNS;

/// The one crypto provider the link uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The address shown for a handshake whose other side is not known (tests, benches).
const UNKNOWN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
/// How long a refused certificate is not logged again.
const QUIET_FOR: Duration = Duration::from_secs(60);
/// The most certificates a [`RefusalLog`] remembers; past it (a flood of new certificates), a
/// refusal is not logged until the oldest are a minute old.
const REMEMBERED: usize = 1024;

/// Remembers which certificates were refused in the last minute, so that a node that keeps
/// knocking is named once a minute and not at every attempt. Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct RefusalLog {
    last: Arc<Mutex<HashMap<Fingerprint, Instant>>>,
    /// Records refusals without ever asking for them to be logged (for a caller that reports
    /// them itself, [`RefusalLog::refused`]).
    quiet: bool,
}

impl RefusalLog {
    /// A log that records refusals but never has them logged.
    pub fn quiet() -> RefusalLog {
        RefusalLog { quiet: true, ..RefusalLog::default() }
    }

    /// Records a refusal of `fingerprint`; whether to log it (none logged in the last minute).
    pub fn first_in_a_minute(&self, fingerprint: Fingerprint) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap();
        if last.get(&fingerprint).is_some_and(|at| now.duration_since(*at) < QUIET_FOR) {
            return false;
        }
        if last.len() >= REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < QUIET_FOR);
            if last.len() >= REMEMBERED {
                return false;
            }
        }
        last.insert(fingerprint, now);
        !self.quiet
    }

    /// The certificates refused in the last minute (or longer, when no more came since).
    pub fn refused(&self) -> Vec<Fingerprint> {
        self.last.lock().unwrap().keys().copied().collect()
    }
}

/// Makes the server side's configuration for each incoming connection, requiring a client
/// certificate pinned in the peer table.
#[derive(Debug, Clone)]
pub struct Acceptor {
    peers: Peers,
    keys: SharedKeys,
    refusals: RefusalLog,
    pending: Pending,
}

impl Acceptor {
    /// An acceptor presenting `keys` (the one each client asks for, [`Keys::for_server_name`]),
    /// pinning `peers`, logging refusals in `refusals` and listing the nodes it refuses in
    /// `pending`.
    pub fn new(keys: SharedKeys, peers: Peers, refusals: RefusalLog, pending: Pending) -> Acceptor {
        Acceptor { peers, keys, refusals, pending }
    }

    /// The configuration for a connection from `remote`.
    pub fn config(&self, remote: SocketAddr) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = provider();
        let verifier = PinnedClients {
            peers: self.peers.clone(),
            algorithms: provider.signature_verification_algorithms,
            remote,
            refusals: self.refusals.clone(),
            pending: self.pending.clone(),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(ByServerName(self.keys.clone())));
        config.alpn_protocols = ALPNS.iter().map(|id| id.to_vec()).collect();
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

/// Presents the certificate of [`Keys`] that the client's server name asks for.
#[derive(Debug)]
struct ByServerName(SharedKeys);

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().for_server_name(client_hello.server_name()).certified.clone())
    }
}

/// The server side for connections from unknown addresses: presents `identity` and requires a
/// client certificate pinned in `peers`.
pub fn server_config(identity: &Identity, peers: Peers) -> Result<rustls::ServerConfig, rustls::Error> {
    let keys = Keys::single(identity.clone()).map_err(rustls::Error::General)?;
    Acceptor::new(keys.shared(), peers, RefusalLog::default(), Pending::default()).config(UNKNOWN)
}

/// The client side for dialing one peer: accepts only the certificate pinned as `expected`.
pub fn client_config(identity: &Identity, expected: Fingerprint) -> Result<rustls::ClientConfig, rustls::Error> {
    dial_config(identity, vec![expected], UNKNOWN, &RefusalLog::default())
}

/// The client side for dialing the peer at `remote`: accepts only a certificate pinned for it,
/// one of `expected`, and logs another in `refusals`.
pub fn dial_config(
    identity: &Identity,
    expected: Vec<Fingerprint>,
    remote: SocketAddr,
    refusals: &RefusalLog,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = PinnedServer {
        expected,
        algorithms: provider.signature_verification_algorithms,
        remote,
        refusals: refusals.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.alpn_protocols = ALPNS.iter().map(|id| id.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The server name sent in the handshake by a client that names no certificate; certificates are
/// pinned, so it is not checked.
pub const SERVER_NAME: &str = "peer.ferry";

/// The server name a node dials a peer by: the newest certificate it pins for it, as two labels
/// of 32 hex digits before [`SERVER_NAME`], so that a peer in the middle of a key rollover
/// presents the certificate this node pins ([`crate::rollover::Keys::for_server_name`]).
pub fn server_name(pinned: Fingerprint) -> String {
    let hex = hex::encode(pinned.0);
    format!("{}.{}.{SERVER_NAME}", &hex[..32], &hex[32..])
}

/// The fingerprint of the certificate the other end of `connection` presented.
pub fn presented(connection: &quinn::Connection) -> Option<Fingerprint> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    Some(Fingerprint::of(certs.first()?))
}

/// The fingerprint a [`server_name`] names, if it names one.
pub fn pinned_in_server_name(name: &str) -> Option<Fingerprint> {
    let labels = name.strip_suffix(SERVER_NAME)?.strip_suffix('.')?;
    let (first, second) = labels.split_once('.')?;
    let mut fingerprint = [0u8; 32];
    hex::decode_to_slice(format!("{first}{second}"), &mut fingerprint).ok()?;
    Some(Fingerprint(fingerprint))
}

fn not_pinned() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

#[derive(Debug)]
struct PinnedClients {
    peers: Peers,
    algorithms: WebPkiSupportedAlgorithms,
    remote: SocketAddr,
    refusals: RefusalLog,
    pending: Pending,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        if self.peers.by_fingerprint(&fingerprint).is_some() {
            return Ok(ClientCertVerified::assertion());
        }
        self.pending.knocked(end_entity, self.remote);
        if self.refusals.first_in_a_minute(fingerprint) {
            tracing::warn!(
                remote = %self.remote,
                %fingerprint,
                "refused a node whose certificate is not pinned here (its further attempts within a minute are not \
                 logged); if it is a peer, compare its fingerprint with its admin and pin it: `ferry peers --pending`, \
                 `ferry peer accept`"
            );
        }
        Err(not_pinned())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken on the link".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct PinnedServer {
    expected: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
    remote: SocketAddr,
    refusals: RefusalLog,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if self.expected.contains(&got) {
            return Ok(ServerCertVerified::assertion());
        }
        if self.refusals.first_in_a_minute(got) {
            let pinned: Vec<String> = self.expected.iter().map(Fingerprint::to_string).collect();
            tracing::warn!(
                remote = %self.remote,
                fingerprint = %got,
                pinned = %pinned.join(", "),
                "refused a peer whose certificate is not the one pinned for it (further attempts within a minute are \
                 not logged); compare `ferry cert fingerprint` there with the file pinned here"
            );
        }
        Err(not_pinned())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken on the link".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_logged_once_a_minute() {
        let log = RefusalLog::default();
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert!(log.first_in_a_minute(a));
        assert!(!log.first_in_a_minute(a), "the same certificate again within the minute");
        assert!(log.first_in_a_minute(b), "another certificate is named");
        log.last.lock().unwrap().insert(a, Instant::now() - QUIET_FOR);
        assert!(log.first_in_a_minute(a), "a minute later, named again");
    }

    #[test]
    fn a_server_name_carries_the_pinned_fingerprint() {
        let pinned = Fingerprint([0xab; 32]);
        let name = server_name(pinned);
        assert!(name.len() < 100 && name.ends_with(".peer.ferry"), "{name}");
        assert!(rustls::pki_types::ServerName::try_from(name.as_str()).is_ok(), "a DNS name: {name}");
        assert_eq!(pinned_in_server_name(&name), Some(pinned));
        for other in [SERVER_NAME, "x.peer.ferry", "ab.cd.peer.ferry", "evil.example", ""] {
            assert_eq!(pinned_in_server_name(other), None, "{other}");
        }
    }
}
