//! An RFC 3161 time-stamping authority on loopback for the tests: `openssl ts -reply` behind a
//! small axum server, with a key and a critical-timeStamping certificate made at run time (RSA or
//! ECDSA P-256), and ways for it to misbehave ([`Behaviour`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;

/// Whether `openssl` can run; under `CI` its absence fails the test with the reason.
pub fn have_openssl() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => true,
        other => {
            let why = format!("`openssl version` did not run ({other:?}); the local TSA needs openssl 3");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipping: {why}");
            false
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    Rsa,
    EcdsaP256,
}

/// A TSA signing key and its self-signed certificate with extendedKeyUsage critical timeStamping.
pub struct Signer {
    pub key_pem: String,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
}

/// EKU timeStamping, DER: SEQUENCE { OID 1.3.6.1.5.5.7.3.8 }.
const EKU_TIME_STAMPING: [u8; 12] = [0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

/// The test TSA's common name.
pub const NAME: &str = "ferry test TSA";

/// A key and a certificate named `CN=name` with serial 0x0a11ce; `eku`: whether the certificate
/// carries the critical timeStamping extended key usage.
pub fn signer(kind: KeyKind, dir: &Path, name: &str, eku: bool) -> Signer {
    let key = match kind {
        KeyKind::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        KeyKind::Rsa => {
            // ring (rcgen's backend) signs with RSA keys but cannot make them
            let path = dir.join(format!("rsa-{}.pem", unique()));
            run_openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"], &path);
            let pem = std::fs::read_to_string(&path).unwrap();
            rcgen::KeyPair::from_pem(&pem).unwrap()
        }
    };
    certificate(&key.serialize_pem(), name, eku, None)
}

/// A certificate for the key `key_pem` named `CN=name` with serial 0x0a11ce, and `alt_name` as its
/// DNS name if given; `eku`: whether it carries the critical timeStamping extended key usage.
pub fn certificate(key_pem: &str, name: &str, eku: bool, alt_name: Option<&str>) -> Signer {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(alt_name.into_iter().map(String::from).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.serial_number = Some(rcgen::SerialNumber::from(vec![0x0a, 0x11, 0xce]));
    if eku {
        let mut extension = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], EKU_TIME_STAMPING.to_vec());
        extension.set_criticality(true);
        params.custom_extensions.push(extension);
    }
    let cert = params.self_signed(&key).unwrap();
    Signer { key_pem: key_pem.to_owned(), cert_pem: cert.pem(), cert_der: cert.der().to_vec() }
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn run_openssl(args: &[&str], last: &Path) {
    let out = Command::new("openssl").args(args).arg(last).output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// How the test server answers `POST /`.
#[derive(Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Runs `openssl ts -reply` on the query.
    Tsa,
    /// Like `Tsa` for the first query, then sends that first reply again to every query.
    Replay,
    /// Answers 200 with bytes that are not DER.
    Garbage,
    /// Answers 200 with 100 KiB.
    Huge,
    /// Answers 500.
    Fails,
}

struct Server {
    dir: PathBuf,
    config: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    behaviour: Behaviour,
    first_reply: Mutex<Option<Vec<u8>>>,
}

/// A TSA on loopback; its tempdir and server live as long as this.
pub struct Tsa {
    pub url: url::Url,
    pub signer: Signer,
    pub _dir: tempfile::TempDir,
    pub server: tokio::task::JoinHandle<()>,
}

impl Drop for Tsa {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Points `node`'s config at the TSA at `url` whose PEM certificate is `cert_pem` (kept as
/// `certs/tsa.pem`), stamping `every`.
pub fn use_tsa(node: &super::Node, url: &str, cert_pem: &str, every: &str) {
    std::fs::write(node.dir.join("certs/tsa.pem"), cert_pem).unwrap();
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    if doc.get("evidence").is_none() {
        doc["evidence"] = toml_edit::table();
    }
    doc["evidence"]["tsa_url"] = toml_edit::value(url);
    doc["evidence"]["tsa_cert"] = toml_edit::value("tsa.pem");
    doc["evidence"]["tsa_every"] = toml_edit::value(every);
    std::fs::write(&node.config_path, doc.to_string()).unwrap();
}

/// Starts a TSA signing with a `kind` key that accepts the hash algorithms `digests` (an
/// `openssl ts` config value) and gives `genTime` with `precision` digits of a second. The RSA TSA
/// names its certificate in an ESS signingCertificate attribute (SHA-1), the ECDSA one in a
/// signingCertificateV2 (SHA-256), so both kinds are verified.
pub async fn start(kind: KeyKind, digests: &str, precision: u8, behaviour: Behaviour) -> Tsa {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(kind, dir.path(), NAME, true);
    let (cert, key, config) = (dir.path().join("tsa.crt"), dir.path().join("tsa.key"), dir.path().join("tsa.cnf"));
    std::fs::write(&cert, &signer.cert_pem).unwrap();
    std::fs::write(&key, &signer.key_pem).unwrap();
    std::fs::write(dir.path().join("serial"), "01\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "[ tsa ]\ndefault_tsa = test_tsa\n\n[ test_tsa ]\ndir = {dir}\nserial = $dir/serial\n\
             crypto_device = builtin\nsigner_digest = sha256\ndefault_policy = 1.2.3.4.1\n\
             digests = {digests}\naccuracy = secs:1, millisecs:500\nclock_precision_digits = {precision}\n\
             ordering = no\ntsa_name = yes\ness_cert_id_chain = no\ness_cert_id_alg = {ess}\n",
            dir = dir.path().display(),
            ess = match kind {
                KeyKind::Rsa => "sha1",
                KeyKind::EcdsaP256 => "sha256",
            }
        ),
    )
    .unwrap();
    let state =
        Arc::new(Server { dir: dir.path().to_owned(), config, cert, key, behaviour, first_reply: Mutex::new(None) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let app = Router::new().route("/", post(answer)).with_state(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Tsa { url, signer, _dir: dir, server }
}

async fn answer(State(server): State<Arc<Server>>, query: Bytes) -> axum::response::Response {
    match server.behaviour {
        Behaviour::Garbage => return (StatusCode::OK, "this is not a TimeStampResp").into_response(),
        Behaviour::Huge => return (StatusCode::OK, vec![0x30; 100 * 1024]).into_response(),
        Behaviour::Fails => return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        Behaviour::Tsa | Behaviour::Replay => {}
    }
    if let Some(first) = server.first_reply.lock().unwrap().clone() {
        return reply(first);
    }
    let n = unique();
    let (query_path, reply_path) = (server.dir.join(format!("{n}.tsq")), server.dir.join(format!("{n}.tsr")));
    tokio::fs::write(&query_path, &query).await.unwrap();
    let out = tokio::process::Command::new("openssl")
        .args(["ts", "-reply", "-config"])
        .arg(&server.config)
        .arg("-queryfile")
        .arg(&query_path)
        .arg("-signer")
        .arg(&server.cert)
        .arg("-inkey")
        .arg(&server.key)
        .arg("-out")
        .arg(&reply_path)
        .output()
        .await
        .unwrap();
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        return (StatusCode::INTERNAL_SERVER_ERROR, why).into_response();
    }
    let body = tokio::fs::read(&reply_path).await.unwrap();
    if server.behaviour == Behaviour::Replay {
        *server.first_reply.lock().unwrap() = Some(body.clone());
    }
    reply(body)
}

fn reply(body: Vec<u8>) -> axum::response::Response {
    ([(header::CONTENT_TYPE, "application/timestamp-reply")], body).into_response()
}
