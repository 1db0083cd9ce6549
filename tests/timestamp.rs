//! RFC 3161 time-stamps against a real TSA on loopback (`support::tsa`: `openssl ts -reply` behind
//! a small axum server, RSA and ECDSA P-256). Without `openssl` the tests skip, or fail under `CI`.

mod support;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::timestamp::{self, Stamped, TimestampError, Token};
use sha2::{Digest, Sha256};
use support::tsa::{certificate, have_openssl, signer, start, Behaviour, KeyKind, Tsa, NAME};

/// Every test's bound: key generation, a few `openssl` runs and loopback HTTP take seconds.
const BOUND: Duration = Duration::from_secs(60);

/// Runs a test body within [`BOUND`], skipping it without openssl.
macro_rules! bounded {
    ($body:expr) => {
        if have_openssl() {
            tokio::time::timeout(BOUND, $body).await.expect("the test finished within its bound");
        }
    };
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Stamps `head` at `tsa` and checks the token verifies with a time within a minute of now.
async fn granted(tsa: &Tsa, head: &[u8; 32]) -> (Token, Stamped) {
    let before = now_ms();
    let token = timestamp::stamp(&client(), &tsa.url, head).await.expect("the TSA grants the stamp");
    let stamped = timestamp::verify(&token.0, head, &tsa.signer.cert_der).expect("the token verifies");
    let after = now_ms();
    assert!(
        stamped.unix_ms > before - 60_000 && stamped.unix_ms < after + 60_000,
        "the TSA's time {} is within a minute of now",
        stamped.time
    );
    assert_eq!(stamped.policy, "1.2.3.4.1");
    assert_eq!(stamped.accuracy_ms, Some(1500));
    (token, stamped)
}

#[tokio::test]
async fn rsa_stamp_is_granted_and_verifies() {
    bounded!(async {
        let tsa = start(KeyKind::Rsa, "sha256", 0, Behaviour::Tsa).await;
        let (_, first) = granted(&tsa, &digest("head 1")).await;
        let (_, second) = granted(&tsa, &digest("head 2")).await;
        assert!(first.time.ends_with('Z') && !first.time.contains('.'), "{}", first.time);
        assert_ne!(first.serial, second.serial, "each token has its own serial");
    });
}

#[tokio::test]
async fn ecdsa_p256_stamp_is_granted_and_verifies_with_fractional_seconds() {
    bounded!(async {
        let tsa = start(KeyKind::EcdsaP256, "sha256", 3, Behaviour::Tsa).await;
        let (_, stamped) = granted(&tsa, &digest("head")).await;
        // 20261206193000.123Z: openssl drops trailing zeros, and a whole second has no fraction
        let fraction = stamped.time.split_once('.').map_or("", |(_, f)| f.trim_end_matches('Z'));
        assert!(fraction.len() <= 3, "{}", stamped.time);
        assert_eq!(stamped.unix_ms % 1000, format!("{fraction:0<3}").parse::<i64>().unwrap_or(0));
    });
}

#[tokio::test]
async fn a_token_does_not_cover_another_digest() {
    bounded!(async {
        for kind in [KeyKind::Rsa, KeyKind::EcdsaP256] {
            let tsa = start(kind, "sha256", 0, Behaviour::Tsa).await;
            let (token, _) = granted(&tsa, &digest("head")).await;
            let err = timestamp::verify(&token.0, &digest("another head"), &tsa.signer.cert_der).unwrap_err();
            assert!(matches!(err, TimestampError::WrongDigest), "{kind:?}: {err}");
            assert!(err.to_string().contains("does not cover this chain head"), "{err}");
        }
    });
}

#[tokio::test]
async fn a_token_is_refused_with_another_certificate() {
    bounded!(async {
        for kind in [KeyKind::Rsa, KeyKind::EcdsaP256] {
            let tsa = start(kind, "sha256", 0, Behaviour::Tsa).await;
            let head = digest("head");
            let (token, _) = granted(&tsa, &head).await;
            let dir = tempfile::tempdir().unwrap();

            // same name and serial, another key: only the signature tells them apart
            let impostor = signer(kind, dir.path(), NAME, true);
            let err = timestamp::verify(&token.0, &head, &impostor.cert_der).unwrap_err();
            assert!(matches!(err, TimestampError::BadSignature(_)), "{kind:?}: {err}");
            assert!(err.to_string().contains("not signed by the configured TSA certificate"), "{err}");

            // the TSA's key, name and serial in another certificate: the signature verifies, but the
            // token's signing-certificate attribute names the TSA's own certificate
            let reissued = certificate(&tsa.signer.key_pem, NAME, true, Some("reissued.test"));
            let err = timestamp::verify(&token.0, &head, &reissued.cert_der).unwrap_err();
            assert!(matches!(err, TimestampError::OtherSigner), "{kind:?}: {err}");

            // a certificate of another name: the token names another signer
            let other = signer(kind, dir.path(), "another TSA", true);
            let err = timestamp::verify(&token.0, &head, &other.cert_der).unwrap_err();
            assert!(matches!(err, TimestampError::OtherSigner), "{kind:?}: {err}");

            // the TSA's own key in a certificate not meant for time-stamping
            let not_tsa = signer(kind, dir.path(), NAME, false);
            let err = timestamp::verify(&token.0, &head, &not_tsa.cert_der).unwrap_err();
            assert!(matches!(err, TimestampError::BadCertificate(_)), "{kind:?}: {err}");
            assert!(err.to_string().contains("timeStamping"), "{err}");
        }
    });
}

/// The offset of the first GeneralizedTime's text in `der` (the TSTInfo's genTime comes before the
/// certificates and signed attributes, which use UTCTime).
fn gen_time_offset(der: &[u8]) -> usize {
    der.windows(4).position(|w| w[0] == 0x18 && w[1] >= 15 && w[2] == b'2' && w[3] == b'0').expect("a genTime") + 2
}

#[tokio::test]
async fn a_token_with_a_byte_changed_is_refused() {
    bounded!(async {
        for kind in [KeyKind::Rsa, KeyKind::EcdsaP256] {
            let tsa = start(kind, "sha256", 0, Behaviour::Tsa).await;
            let head = digest("head");
            let (token, stamped) = granted(&tsa, &head).await;
            let cert = &tsa.signer.cert_der;

            // the signature is the token's last field (there are no unsigned attributes)
            let mut forged = token.0.clone();
            *forged.last_mut().unwrap() ^= 0x01;
            let err = timestamp::verify(&forged, &head, cert).unwrap_err();
            assert!(matches!(err, TimestampError::BadSignature(_)), "{kind:?}: {err}");

            // the time in the TSTInfo: one minute digit moved
            let mut backdated = token.0.clone();
            let minute_tens = gen_time_offset(&backdated) + 10;
            backdated[minute_tens] = if backdated[minute_tens] == b'0' { b'1' } else { b'0' };
            let err = timestamp::verify(&backdated, &head, cert).unwrap_err();
            assert!(matches!(err, TimestampError::AttributesDoNotMatch("message digest")), "{kind:?}: {err}");

            // the imprint in the TSTInfo, changed to another head's digest
            let other = digest("another head");
            let at = token.0.windows(32).position(|w| w == head).expect("the imprint");
            let mut moved = token.0.clone();
            moved[at..at + 32].copy_from_slice(&other);
            let err = timestamp::verify(&moved, &other, cert).unwrap_err();
            assert!(matches!(err, TimestampError::AttributesDoNotMatch("message digest")), "{kind:?}: {err}");

            // not a token at all
            let err = timestamp::verify(&token.0[..token.0.len() / 2], &head, cert).unwrap_err();
            assert!(matches!(err, TimestampError::MalformedToken(_)), "{kind:?}: {err}");

            // any one byte changed: refused without a panic, or (in the unsigned part, such as the
            // certificates the TSA attached) still saying exactly the same
            for at in 0..token.0.len() {
                let mut changed = token.0.clone();
                changed[at] ^= 0x20;
                if let Ok(said) = timestamp::verify(&changed, &head, cert) {
                    assert_eq!(said, stamped, "{kind:?}: byte {at} changed what the token says");
                }
            }
        }
    });
}

#[tokio::test]
async fn openssl_verifies_the_token_as_docs_evidence_md_says() {
    bounded!(async {
        for kind in [KeyKind::Rsa, KeyKind::EcdsaP256] {
            let tsa = start(kind, "sha256", 3, Behaviour::Tsa).await;
            let head = digest("head");
            let (token, _) = granted(&tsa, &head).await;
            let dir = tempfile::tempdir().unwrap();
            let (token_path, cert_path) = (dir.path().join("token.der"), dir.path().join("tsa.pem"));
            std::fs::write(&token_path, &token.0).unwrap();
            std::fs::write(&cert_path, &tsa.signer.cert_pem).unwrap();
            let verify = |hex_digest: &str| {
                Command::new("openssl")
                    .args(["ts", "-verify", "-token_in", "-in"])
                    .arg(&token_path)
                    .args(["-digest", hex_digest, "-CAfile"])
                    .arg(&cert_path)
                    .output()
                    .unwrap()
            };
            let out = verify(&hex::encode(head));
            assert!(out.status.success(), "{kind:?}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains("Verification: OK"));
            assert!(!verify(&hex::encode(digest("another head"))).status.success());
        }
    });
}

#[tokio::test]
async fn a_tsa_that_refuses_gives_its_reason() {
    bounded!(async {
        // this TSA takes only SHA-1 imprints, so it rejects ferry's SHA-256 ones (badAlg)
        let tsa = start(KeyKind::EcdsaP256, "sha1", 0, Behaviour::Tsa).await;
        let err = timestamp::stamp(&client(), &tsa.url, &digest("head")).await.unwrap_err();
        assert!(matches!(err, TimestampError::Rejected { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("refused") && text.contains("rejection") && text.contains("badAlg"), "{text}");
    });
}

#[tokio::test]
async fn a_tsa_that_answers_nonsense_or_nothing_gives_an_error() {
    bounded!(async {
        let head = digest("head");
        let garbage = start(KeyKind::EcdsaP256, "sha256", 0, Behaviour::Garbage).await;
        let err = timestamp::stamp(&client(), &garbage.url, &head).await.unwrap_err();
        assert!(matches!(err, TimestampError::NotAResponse { .. }), "{err}");

        let huge = start(KeyKind::EcdsaP256, "sha256", 0, Behaviour::Huge).await;
        let err = timestamp::stamp(&client(), &huge.url, &head).await.unwrap_err();
        assert!(matches!(err, TimestampError::TooLarge { .. }), "{err}");

        let failing = start(KeyKind::EcdsaP256, "sha256", 0, Behaviour::Fails).await;
        let err = timestamp::stamp(&client(), &failing.url, &head).await.unwrap_err();
        assert!(matches!(err, TimestampError::HttpStatus { status: 500, .. }), "{err}");

        // a free port: nothing listens, so the connection is refused
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let nobody = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let err = timestamp::stamp(&client(), &nobody, &head).await.unwrap_err();
        assert!(matches!(err, TimestampError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("did not answer") && err.to_string().contains("retries"), "{err}");
    });
}

#[tokio::test]
async fn a_replayed_token_is_not_taken_for_a_new_one() {
    bounded!(async {
        let tsa = start(KeyKind::EcdsaP256, "sha256", 0, Behaviour::Replay).await;
        let head = digest("head");
        granted(&tsa, &head).await;
        // the same head again: the old token carries the old nonce
        let err = timestamp::stamp(&client(), &tsa.url, &head).await.unwrap_err();
        assert!(matches!(err, TimestampError::Mismatch { what: "nonce", .. }), "{err}");
        // another head: the old token stamps the old one
        let err = timestamp::stamp(&client(), &tsa.url, &digest("next head")).await.unwrap_err();
        assert!(matches!(err, TimestampError::Mismatch { what: "imprint", .. }), "{err}");
    });
}
