//! Nodes that dialed this node with a certificate not pinned here: listed for an admin, who may
//! pin one after comparing its fingerprint with its admin (`ferry peer accept`). Nothing of such
//! a node crosses the link: its handshake is refused, and only its certificate, address and
//! times are kept, for at most [`REMEMBERED`] nodes.
//!
//! The certificate is recorded when the node presents it, before it has proved it holds the key:
//! the fingerprint, compared out of band, is what the admin trusts; the address is a hint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::identity::Fingerprint;

/// The most nodes listed; past it, the one heard from least recently goes.
pub const REMEMBERED: usize = 256;

/// What is known of a node that dialed with a certificate not pinned here (`GET /v1/peers/pending`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Knock {
    /// Its certificate's fingerprint, to compare with its admin.
    pub fingerprint: String,
    /// The address it dialed from (its link address, when it dials from the socket it listens on).
    pub address: String,
    /// When it first and last dialed (RFC 3339).
    pub first_seen: String,
    /// See `first_seen`.
    pub last_seen: String,
    /// How often it dialed.
    pub attempts: u64,
    /// Its certificate, PEM.
    pub certificate: String,
}

/// The nodes waiting to be pinned, by fingerprint. Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    knocks: Arc<Mutex<HashMap<Fingerprint, (i64, Knock)>>>,
}

impl Pending {
    /// Records that a node presenting `cert` dialed from `remote`.
    pub fn knocked(&self, cert: &CertificateDer<'_>, remote: SocketAddr) {
        let fingerprint = Fingerprint::of(cert);
        let now = crate::store::now_ms();
        let mut knocks = self.knocks.lock().unwrap();
        if !knocks.contains_key(&fingerprint) && knocks.len() >= REMEMBERED {
            let oldest = knocks.iter().min_by_key(|(_, (at, _))| *at).map(|(fp, _)| *fp);
            oldest.map(|fp| knocks.remove(&fp));
        }
        let seen = crate::store::rfc3339(now);
        let (at, knock) = knocks.entry(fingerprint).or_insert_with(|| {
            let certificate = pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec()));
            let knock = Knock {
                fingerprint: fingerprint.to_string(),
                address: remote.to_string(),
                first_seen: seen.clone(),
                last_seen: seen.clone(),
                attempts: 0,
                certificate,
            };
            (now, knock)
        });
        *at = now;
        knock.address = remote.to_string();
        knock.last_seen = seen;
        knock.attempts += 1;
    }

    /// The nodes waiting, the most recently heard from first; one `peers` pins since it dialed is
    /// no longer waiting.
    pub fn waiting(&self, peers: &crate::peer::Peers) -> Vec<Knock> {
        let knocks = self.knocks.lock().unwrap();
        let mut list: Vec<_> =
            knocks.iter().filter(|(fp, _)| peers.by_fingerprint(fp).is_none()).map(|(_, knock)| knock).collect();
        list.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        list.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// Forgets the node with this fingerprint (it was pinned).
    pub fn forget(&self, fingerprint: &Fingerprint) {
        self.knocks.lock().unwrap().remove(fingerprint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knocks_are_counted_and_bounded() {
        let (pending, peers) = (Pending::default(), crate::peer::Peers::default());
        let certs: Vec<_> = (0..REMEMBERED + 1)
            .map(|i| CertificateDer::from(format!("not a real certificate {i}").into_bytes()))
            .collect();
        let from: SocketAddr = "192.0.2.7:7443".parse().unwrap();
        pending.knocked(&certs[0], from);
        pending.knocked(&certs[0], "192.0.2.8:7443".parse().unwrap());
        let list = pending.waiting(&peers);
        assert_eq!((list.len(), list[0].attempts, list[0].address.as_str()), (1, 2, "192.0.2.8:7443"));
        assert!(list[0].certificate.starts_with("-----BEGIN CERTIFICATE-----"));
        for cert in &certs[1..] {
            std::thread::sleep(std::time::Duration::from_millis(1));
            pending.knocked(cert, from);
        }
        let list = pending.waiting(&peers);
        assert_eq!(list.len(), REMEMBERED, "a flood of certificates is bounded");
        assert!(!list.iter().any(|k| k.fingerprint == Fingerprint::of(&certs[0]).to_string()), "the oldest went");
        pending.forget(&Fingerprint::of(&certs[1]));
        assert_eq!(pending.waiting(&peers).len(), REMEMBERED - 1);
    }
}
