//! TLS 1.3 configurations for the link: both sides present certificates and accept only pinned ones.
//!
//! There is no certificate authority. The server accepts a client whose certificate's fingerprint
//! is in the peer table; the client accepts a server only if it presents the one certificate
//! pinned for the peer it dialed. Both still verify the handshake signature with the certificate's
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
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Fingerprint, Identity};
use crate::peer::Peers;
use crate::pending::Pending;
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
    key: Arc<CertifiedKey>,
    refusals: RefusalLog,
    pending: Pending,
}

impl Acceptor {
    /// An acceptor presenting `identity`, pinning `peers`, logging refusals in `refusals` and
    /// listing the nodes it refuses in `pending`.
    pub fn new(
        identity: &Identity,
        peers: Peers,
        refusals: RefusalLog,
        pending: Pending,
    ) -> Result<Acceptor, rustls::Error> {
        let signer = provider().key_provider.load_private_key(identity.key.clone_key())?;
        let key = Arc::new(CertifiedKey::new(vec![identity.cert.clone()], signer));
        Ok(Acceptor { peers, key, refusals, pending })
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
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.key.clone())));
        config.alpn_protocols = ALPNS.iter().map(|id| id.to_vec()).collect();
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

/// The server side for connections from unknown addresses: requires a client certificate
/// pinned in `peers`.
pub fn server_config(identity: &Identity, peers: Peers) -> Result<rustls::ServerConfig, rustls::Error> {
    Acceptor::new(identity, peers, RefusalLog::default(), Pending::default())?.config(UNKNOWN)
}

/// The client side for dialing one peer: accepts only the certificate pinned as `expected`.
pub fn client_config(identity: &Identity, expected: Fingerprint) -> Result<rustls::ClientConfig, rustls::Error> {
    dial_config(identity, expected, UNKNOWN, &RefusalLog::default())
}

/// The client side for dialing the peer at `remote`: accepts only the certificate pinned as
/// `expected`, and logs another in `refusals`.
pub fn dial_config(
    identity: &Identity,
    expected: Fingerprint,
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

/// The server name sent in the handshake; certificates are pinned, so it is not checked.
pub const SERVER_NAME: &str = "peer.ferry";

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
    expected: Fingerprint,
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
        if got == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        if self.refusals.first_in_a_minute(got) {
            tracing::warn!(
                remote = %self.remote,
                fingerprint = %got,
                pinned = %self.expected,
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
}
