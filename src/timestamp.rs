//! Trusted time (RFC 3161): asking a time-stamping authority (TSA) to sign a digest with its time,
//! and checking such a token offline against the TSA's certificate.
//!
//! [`stamp`] sends a `TimeStampReq` (SHA-256 imprint, a random nonce, `certReq`) over HTTP and
//! returns the token once the answer is granted and covers what was asked. [`verify`] checks a
//! stored token: the TSTInfo's imprint, the signed attributes (content type, message digest), the
//! signer's identity and its signature with the given certificate's key (RSA PKCS#1 v1.5 or ECDSA
//! P-256, over SHA-256), that the ESS signing-certificate attribute names that very certificate,
//! and that the certificate is meant for time-stamping.
//!
//! Not checked here: the TSA certificate's chain to a root, its validity period and revocation
//! (the certificate is configured, i.e. pinned, like a peer's).

use std::time::Duration;

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{Int, ObjectIdentifier, OctetString};
use der::{Any, AnyRef, Decode, DecodeValue, Encode, EncodeValue, FixedTag, Header, Length};
use der::{Reader, Sequence, SliceReader, Tag, Tagged, Writer};
use sha2::{Digest, Sha256};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectKeyIdentifier};
use x509_cert::ext::Extensions;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_tsp::{Accuracy, MessageImprint, TimeStampReq, TimeStampResp, TspVersion};

/// The largest answer [`stamp`] reads from a TSA; a token with its certificates is a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long [`stamp`] waits for a TSA's whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const ID_SHA_256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_AA_SIGNING_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.12");
const ID_AA_SIGNING_CERTIFICATE_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");
const ID_KP_TIME_STAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_CE_SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA_256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ECDSA_WITH_SHA_256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const SECP_256_R_1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A time-stamp token as the TSA sent it: the DER `ContentInfo` (CMS SignedData over a TSTInfo),
/// the bytes to store and to hand to [`verify`] or `openssl ts -verify -in TOKEN -token_in`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token(pub Vec<u8>);

/// What a verified token says: when the TSA saw the digest, under which serial and policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped {
    /// The TSA's time (TSTInfo `genTime`) in UTC, RFC 3339, with the fraction of a second the TSA
    /// gave (for example `2026-12-06T19:30:00.123Z`).
    pub time: String,
    /// The same time in milliseconds since the Unix epoch (a finer fraction is cut off).
    pub unix_ms: i64,
    /// The TSA's stated accuracy of `time` in milliseconds, if it stated one.
    pub accuracy_ms: Option<u64>,
    /// The token's serial number at this TSA, in lowercase hex (unique per TSA).
    pub serial: String,
    /// The TSA policy the token was issued under, as a dotted OID.
    pub policy: String,
}

/// Why a time-stamp could not be obtained or a token does not hold; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum TimestampError {
    /// No HTTP answer: refused, timed out, or cut off.
    #[error("the TSA at {url} did not answer: {reason}; the node retries")]
    Unreachable {
        /// The TSA's URL.
        url: String,
        /// What the HTTP client reported.
        reason: String,
    },
    /// The TSA answered with an HTTP status other than 200.
    #[error("the TSA at {url} answered HTTP {status}; the node retries (check `tsa_url` if it persists)")]
    HttpStatus {
        /// The TSA's URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The answer was longer than [`MAX_RESPONSE_BYTES`].
    #[error("the TSA at {url} sent more than {MAX_RESPONSE_BYTES} bytes; check that `tsa_url` is an RFC 3161 time-stamping service")]
    TooLarge {
        /// The TSA's URL.
        url: String,
    },
    /// The answer is not a DER `TimeStampResp`.
    #[error("the TSA at {url} sent something that is not a time-stamp response ({reason}); check that `tsa_url` is an RFC 3161 time-stamping service")]
    NotAResponse {
        /// The TSA's URL.
        url: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The TSA answered with a status other than granted or granted with modifications.
    #[error("the TSA at {url} refused the time-stamp (PKIStatus {status}{detail}); check that it takes SHA-256 imprints from this node (its terms, an account) — the node retries")]
    Rejected {
        /// The TSA's URL.
        url: String,
        /// The PKIStatus, by its RFC 3161 name (`rejection`, `waiting`, …).
        status: String,
        /// The failure bits and the TSA's status text, if it gave them.
        detail: String,
    },
    /// The granted token is not for what was asked (another imprint or nonce).
    #[error("the TSA at {url} answered with a token for another request ({what} differs); the node retries")]
    Mismatch {
        /// The TSA's URL.
        url: String,
        /// Which field differs: `imprint` or `nonce`.
        what: &'static str,
    },
    /// The token cannot be read as an RFC 3161 token.
    #[error("the time-stamp token is not a well-formed RFC 3161 token ({0}): it was altered or is not a token")]
    MalformedToken(String),
    /// The token's imprint is of other data, or not a SHA-256 imprint.
    #[error("the time-stamp token does not cover this chain head: it stamps another digest")]
    WrongDigest,
    /// The signed attributes do not bind the TSTInfo (content type or message digest differs).
    #[error("the time-stamp token's signed attributes do not match its TSTInfo ({0}): it was altered after the TSA signed it")]
    AttributesDoNotMatch(&'static str),
    /// The signer identifier or the signing-certificate attribute names another certificate.
    #[error("the time-stamp token is not signed by the configured TSA certificate (it names another one); configure the certificate of the TSA that issued it")]
    OtherSigner,
    /// The signature does not verify with the configured certificate's key.
    #[error("the time-stamp token is not signed by the configured TSA certificate: its signature does not verify ({0}); the token was altered or comes from another TSA")]
    BadSignature(String),
    /// The configured TSA certificate cannot be used.
    #[error("the TSA certificate cannot be used: {0}; configure the TSA's signing certificate (DER)")]
    BadCertificate(String),
    /// The token uses an algorithm this module does not verify.
    #[error("the time-stamp token uses {0}, which ferry does not verify (it checks SHA-256 with RSA PKCS#1 v1.5 or ECDSA P-256); use a TSA that signs so, or check the token with `openssl ts -verify`")]
    Unsupported(String),
}

/// Asks the TSA at `tsa_url` to time-stamp `digest` (a SHA-256 value, such as a chain head).
///
/// Sends a version-1 `TimeStampReq` with a random 64-bit nonce and `certReq` set, as
/// `application/timestamp-query`, reads at most [`MAX_RESPONSE_BYTES`] within
/// [`REQUEST_TIMEOUT`], and returns the token if the TSA granted it (status 0 or 1) and its TSTInfo
/// carries the same imprint and nonce. The token's signature is not checked here: that is
/// [`verify`], with the TSA's certificate.
pub async fn stamp(client: &reqwest::Client, tsa_url: &url::Url, digest: &[u8; 32]) -> Result<Token, TimestampError> {
    let url = tsa_url.as_str();
    let nonce = positive_int(rand::random::<u64>());
    let request = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: sha256_imprint(digest),
        req_policy: None,
        nonce: Some(nonce.clone()),
        cert_req: true,
        extensions: None,
    };
    let body = request.to_der().expect("a TimeStampReq of fixed shape encodes");
    let unreachable = |e: reqwest::Error| TimestampError::Unreachable { url: url.to_owned(), reason: error_chain(&e) };
    let mut response = client
        .post(tsa_url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/timestamp-query")
        .timeout(REQUEST_TIMEOUT)
        .body(body)
        .send()
        .await
        .map_err(unreachable)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(TimestampError::HttpStatus { url: url.to_owned(), status: response.status().as_u16() });
    }
    if response.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err(TimestampError::TooLarge { url: url.to_owned() });
    }
    let mut answer = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if answer.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(TimestampError::TooLarge { url: url.to_owned() });
        }
        answer.extend_from_slice(&chunk);
    }
    token_from_response(url, &answer, digest, &nonce)
}

/// Checks a TSA's `TimeStampResp`: granted, and a token for this digest and nonce.
fn token_from_response(url: &str, answer: &[u8], digest: &[u8; 32], nonce: &Int) -> Result<Token, TimestampError> {
    let not_a_response = |reason: String| TimestampError::NotAResponse { url: url.to_owned(), reason };
    let response = TimeStampResp::from_der(answer).map_err(|e| not_a_response(e.to_string()))?;
    let status = &response.status;
    // PKIStatus granted(0) or grantedWithMods(1)
    if status.status as u8 > 1 {
        let mut detail = String::new();
        if let Some(fail) = status.fail_info {
            let bits: Vec<String> = fail.into_iter().map(|bit| rfc_name(&format!("{bit:?}"))).collect();
            detail = format!(", failInfo {}", bits.join(" | "));
        }
        let texts: Vec<&str> = status.status_string.iter().flatten().map(|text| text.as_str()).collect();
        if !texts.is_empty() {
            detail = format!("{detail}: {:?}", texts.join(" "));
        }
        let status = rfc_name(&format!("{:?}", status.status));
        return Err(TimestampError::Rejected { url: url.to_owned(), status, detail });
    }
    let token = response.time_stamp_token.ok_or_else(|| not_a_response("granted, but no token".into()))?;
    let token = Token(token.to_der().map_err(|e| not_a_response(e.to_string()))?);
    let info = parse(&token.0).map_err(|e| not_a_response(e.to_string()))?.info;
    if !covers(&info.message_imprint, digest) {
        return Err(TimestampError::Mismatch { url: url.to_owned(), what: "imprint" });
    }
    if info.nonce.as_ref() != Some(nonce) {
        return Err(TimestampError::Mismatch { url: url.to_owned(), what: "nonce" });
    }
    Ok(token)
}

/// Checks that `token_der` is a time-stamp of `digest` signed with the key of `tsa_cert_der` (the
/// TSA's DER certificate, which must carry the `timeStamping` extended key usage), and returns
/// what it says.
pub fn verify(token_der: &[u8], digest: &[u8; 32], tsa_cert_der: &[u8]) -> Result<Stamped, TimestampError> {
    let cert = Certificate::from_der(tsa_cert_der)
        .map_err(|e| TimestampError::BadCertificate(format!("not a DER X.509 certificate ({e})")))?;
    require_time_stamping(&cert)?;
    let parsed = parse(token_der)?;
    let info = &parsed.info;
    if !covers(&info.message_imprint, digest) {
        return Err(TimestampError::WrongDigest);
    }
    let signer = &parsed.signer;
    if signer.digest_alg.oid != ID_SHA_256 {
        return Err(TimestampError::Unsupported(format!("the digest algorithm {}", signer.digest_alg.oid)));
    }
    check_signed_attributes(signer, &parsed.econtent)?;
    if !names(&signer.sid, &cert) {
        return Err(TimestampError::OtherSigner);
    }
    let algorithm = signature_algorithm(&signer.signature_algorithm, &cert)?;
    let cert_der = rustls::pki_types::CertificateDer::from(tsa_cert_der);
    let end_entity =
        webpki::EndEntityCert::try_from(&cert_der).map_err(|e| TimestampError::BadCertificate(format!("{e:?}")))?;
    end_entity
        .verify_signature(algorithm, &parsed.signed_attrs_der, signer.signature.as_bytes())
        .map_err(|e| TimestampError::BadSignature(format!("{e:?}")))?;
    if !signing_certificate_is(signer, tsa_cert_der)? {
        return Err(TimestampError::OtherSigner);
    }
    Ok(Stamped {
        time: info.gen_time.rfc3339(),
        unix_ms: info.gen_time.unix_ms,
        accuracy_ms: info.accuracy.as_ref().map(accuracy_ms),
        serial: hex::encode(info.serial_number.as_bytes()),
        policy: info.policy.to_string(),
    })
}

/// Checks that `tsa_cert_der` is a certificate a TSA may sign tokens with (RFC 3161 §2.3: its
/// extended key usage is timeStamping), as [`verify`] requires.
pub fn check_certificate(tsa_cert_der: &[u8]) -> Result<(), TimestampError> {
    let cert = Certificate::from_der(tsa_cert_der)
        .map_err(|e| TimestampError::BadCertificate(format!("not a DER X.509 certificate ({e})")))?;
    require_time_stamping(&cert)
}

/// A token taken apart: its TSTInfo, the eContent bytes it was decoded from, its one signer, and
/// the DER of that signer's signed attributes as they were signed.
struct Parsed {
    info: TstInfo,
    econtent: Vec<u8>,
    signer: SignerInfo,
    signed_attrs_der: Vec<u8>,
}

fn parse(token_der: &[u8]) -> Result<Parsed, TimestampError> {
    let malformed = |what: &str, e: der::Error| TimestampError::MalformedToken(format!("{what}: {e}"));
    let content_info = ContentInfo::from_der(token_der).map_err(|e| malformed("ContentInfo", e))?;
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(TimestampError::MalformedToken(format!(
            "content type {} is not SignedData",
            content_info.content_type
        )));
    }
    let signed_data_der = content_info.content.to_der().map_err(|e| malformed("SignedData", e))?;
    let signed: SignedData = SignedData::from_der(&signed_data_der).map_err(|e| malformed("SignedData", e))?;
    let encap = &signed.encap_content_info;
    if encap.econtent_type != ID_CT_TST_INFO {
        return Err(TimestampError::MalformedToken(format!(
            "eContentType {} is not id-ct-TSTInfo",
            encap.econtent_type
        )));
    }
    let econtent = encap
        .econtent
        .as_ref()
        .ok_or_else(|| TimestampError::MalformedToken("no eContent".into()))?
        .decode_as::<OctetString>()
        .map_err(|e| malformed("eContent", e))?
        .into_bytes();
    let info = TstInfo::from_der(&econtent).map_err(|e| malformed("TSTInfo", e))?;
    let mut signers = signed.signer_infos.0.into_vec();
    if signers.len() != 1 {
        return Err(TimestampError::MalformedToken(format!("{} signers, not one", signers.len())));
    }
    let signer = signers.remove(0);
    let signed_attrs_der = signed_attrs_as_signed(&signed_data_der).map_err(|e| malformed("signed attributes", e))?;
    Ok(Parsed { info, econtent, signer, signed_attrs_der })
}

/// The signer's signed attributes re-tagged as a SET, from the token's own bytes: decoding sorts
/// a SET OF, so re-encoding the decoded value could differ from what the TSA signed.
fn signed_attrs_as_signed(signed_data_der: &[u8]) -> der::Result<Vec<u8>> {
    let mut reader = SliceReader::new(signed_data_der)?;
    Header::decode(&mut reader)?.tag.assert_eq(Tag::Sequence)?;
    // version, digestAlgorithms, encapContentInfo, [0] certificates?, [1] crls?, signerInfos
    let mut last = AnyRef::decode(&mut reader)?;
    while !reader.is_finished() {
        last = AnyRef::decode(&mut reader)?;
    }
    last.tag().assert_eq(Tag::Set)?;
    let mut signer_infos = SliceReader::new(last.value())?;
    let signer = AnyRef::decode(&mut signer_infos)?;
    let mut fields = SliceReader::new(signer.value())?;
    for _ in 0..3 {
        AnyRef::decode(&mut fields)?; // version, sid, digestAlgorithm
    }
    let attrs = AnyRef::decode(&mut fields)?;
    attrs.tag().assert_eq(Tag::ContextSpecific { constructed: true, number: der::TagNumber::N0 })?;
    AnyRef::new(Tag::Set, attrs.value())?.to_der()
}

/// The content-type attribute must be id-ct-TSTInfo, the message-digest the SHA-256 of eContent.
fn check_signed_attributes(signer: &SignerInfo, econtent: &[u8]) -> Result<(), TimestampError> {
    let attrs = signer.signed_attrs.as_ref().ok_or(TimestampError::AttributesDoNotMatch("none"))?;
    let single = |oid: ObjectIdentifier, name: &'static str| -> Result<&Any, TimestampError> {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        match (found.next(), found.next()) {
            (Some(attr), None) if attr.values.len() == 1 => Ok(attr.values.get(0).expect("one value")),
            _ => Err(TimestampError::AttributesDoNotMatch(name)),
        }
    };
    let content_type = single(ID_CONTENT_TYPE, "content type")?
        .decode_as::<ObjectIdentifier>()
        .map_err(|_| TimestampError::AttributesDoNotMatch("content type"))?;
    if content_type != ID_CT_TST_INFO {
        return Err(TimestampError::AttributesDoNotMatch("content type"));
    }
    let message_digest = single(ID_MESSAGE_DIGEST, "message digest")?
        .decode_as::<OctetString>()
        .map_err(|_| TimestampError::AttributesDoNotMatch("message digest"))?;
    if message_digest.as_bytes() != Sha256::digest(econtent).as_slice() {
        return Err(TimestampError::AttributesDoNotMatch("message digest"));
    }
    Ok(())
}

/// Whether the ESS signing-certificate attribute (v2 with SHA-256, or v1 with SHA-1), which RFC 3161
/// §2.4.1 requires among the signed attributes, names `cert_der` as the signer's certificate.
fn signing_certificate_is(signer: &SignerInfo, cert_der: &[u8]) -> Result<bool, TimestampError> {
    let attrs = signer.signed_attrs.as_ref().ok_or(TimestampError::AttributesDoNotMatch("none"))?;
    let value = |oid| attrs.iter().find(|a| a.oid == oid).and_then(|a| a.values.get(0));
    let unreadable = |_| TimestampError::AttributesDoNotMatch("signing certificate");
    if let Some(value) = value(ID_AA_SIGNING_CERTIFICATE_V2) {
        let ess = value.decode_as::<SigningCertificateV2>().map_err(unreadable)?;
        let first = ess.certs.first().ok_or(TimestampError::AttributesDoNotMatch("signing certificate"))?;
        match &first.hash_algorithm {
            Some(algorithm) if algorithm.oid != ID_SHA_256 => {
                Err(TimestampError::Unsupported(format!("a signing certificate hashed with {}", algorithm.oid)))
            }
            _ => Ok(first.cert_hash.as_bytes() == Sha256::digest(cert_der).as_slice()),
        }
    } else if let Some(value) = value(ID_AA_SIGNING_CERTIFICATE) {
        let ess = value.decode_as::<SigningCertificate>().map_err(unreadable)?;
        let first = ess.certs.first().ok_or(TimestampError::AttributesDoNotMatch("signing certificate"))?;
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
        Ok(first.cert_hash.as_bytes() == sha1.as_ref())
    } else {
        Err(TimestampError::AttributesDoNotMatch("no signing certificate"))
    }
}

/// RFC 3161 §2.3: a TSA signs with a certificate whose extended key usage is timeStamping.
fn require_time_stamping(cert: &Certificate) -> Result<(), TimestampError> {
    let eku = extension(cert, ID_CE_EXT_KEY_USAGE)
        .map(ExtendedKeyUsage::from_der)
        .transpose()
        .map_err(|e| TimestampError::BadCertificate(format!("its extended key usage cannot be read ({e})")))?;
    match eku {
        Some(eku) if eku.0.contains(&ID_KP_TIME_STAMPING) => Ok(()),
        _ => Err(TimestampError::BadCertificate(
            "it lacks the timeStamping extended key usage (is it the TSA's CA certificate?)".into(),
        )),
    }
}

/// Whether the signer identifier names `cert`, by issuer and serial or by subject key identifier.
fn names(sid: &SignerIdentifier, cert: &Certificate) -> bool {
    let tbs = &cert.tbs_certificate;
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber { issuer, serial_number }) => {
            issuer == &tbs.issuer && serial_number == &tbs.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(key_id) => extension(cert, ID_CE_SUBJECT_KEY_IDENTIFIER)
            .and_then(|value| SubjectKeyIdentifier::from_der(value).ok())
            .is_some_and(|own| &own == key_id),
    }
}

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    let extensions: &Extensions = cert.tbs_certificate.extensions.as_ref()?;
    extensions.iter().find(|e| e.extn_id == oid).map(|e| e.extn_value.as_bytes())
}

/// The verification algorithm for the signer's signature algorithm and the certificate's key.
fn signature_algorithm(
    signature: &AlgorithmIdentifierOwned,
    cert: &Certificate,
) -> Result<&'static dyn rustls::pki_types::SignatureVerificationAlgorithm, TimestampError> {
    let key = &cert.tbs_certificate.subject_public_key_info.algorithm;
    let curve = key.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    match (signature.oid, key.oid) {
        (RSA_ENCRYPTION | SHA_256_WITH_RSA, RSA_ENCRYPTION) => Ok(webpki::ring::RSA_PKCS1_2048_8192_SHA256),
        (ECDSA_WITH_SHA_256, ID_EC_PUBLIC_KEY) if curve == Some(SECP_256_R_1) => Ok(webpki::ring::ECDSA_P256_SHA256),
        (ECDSA_WITH_SHA_256, ID_EC_PUBLIC_KEY) => Err(TimestampError::Unsupported(format!(
            "an EC key on curve {}",
            curve.map_or("(unnamed)".into(), |c| c.to_string())
        ))),
        (sig, key) => {
            Err(TimestampError::Unsupported(format!("the signature algorithm {sig} with a key of type {key}")))
        }
    }
}

fn sha256_imprint(digest: &[u8; 32]) -> MessageImprint {
    MessageImprint {
        hash_algorithm: AlgorithmIdentifierOwned { oid: ID_SHA_256, parameters: Some(Any::null()) },
        hashed_message: OctetString::new(digest.to_vec()).expect("32 bytes fit an OCTET STRING"),
    }
}

/// Whether an imprint is the SHA-256 imprint of `digest` (parameters absent or NULL).
fn covers(imprint: &MessageImprint, digest: &[u8; 32]) -> bool {
    let algorithm = &imprint.hash_algorithm;
    algorithm.oid == ID_SHA_256
        && algorithm.parameters.as_ref().is_none_or(|p| p.is_null())
        && imprint.hashed_message.as_bytes() == digest
}

/// `n` as a positive DER INTEGER (a leading zero byte where the top bit is set, none otherwise).
fn positive_int(n: u64) -> Int {
    let mut bytes = vec![0];
    bytes.extend_from_slice(&n.to_be_bytes());
    let start = bytes.windows(2).position(|w| w[0] != 0 || w[1] & 0x80 != 0).unwrap_or(bytes.len() - 1);
    Int::new(&bytes[start..]).expect("at most 9 bytes")
}

fn accuracy_ms(accuracy: &Accuracy) -> u64 {
    let seconds = accuracy.seconds.unwrap_or(0).saturating_mul(1000);
    let millis = accuracy.millis.map_or(0, |m| m.max(0) as u64);
    let micros = accuracy.micros.map_or(0, |m| m.max(0) as u64);
    seconds.saturating_add(millis).saturating_add(micros.div_ceil(1000))
}

/// `BadAlg` → `badAlg`: the name RFC 3161 gives a status or failure bit.
fn rfc_name(debug: &str) -> String {
    let mut chars = debug.chars();
    chars.next().map(|first| first.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// RFC 3161's TSTInfo, as `x509_tsp::TstInfo` but with a `genTime` that may carry a fraction of
/// a second (RFC 3161 §2.4.2 allows it; `der`'s GeneralizedTime refuses it).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TstInfo {
    version: TspVersion,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    gen_time: GenTime,
    #[asn1(optional = "true")]
    accuracy: Option<Accuracy>,
    #[asn1(default = "Default::default")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    tsa: Option<GeneralName>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<Extensions>,
}

/// ESS `SigningCertificate` (RFC 2634): the hashes of the signer's certificate and its chain.
#[derive(Sequence)]
struct SigningCertificate {
    certs: Vec<EssCertId>,
    #[asn1(optional = "true")]
    policies: Option<Any>,
}

/// ESS `ESSCertID`: a certificate's SHA-1 hash, with its issuer and serial.
#[derive(Sequence)]
struct EssCertId {
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<Any>,
}

/// ESS `SigningCertificateV2` (RFC 5035).
#[derive(Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    policies: Option<Any>,
}

/// ESS `ESSCertIDv2`: a certificate's hash (SHA-256 when the algorithm is absent).
#[derive(Sequence)]
struct EssCertIdV2 {
    #[asn1(optional = "true")]
    hash_algorithm: Option<AlgorithmIdentifierOwned>,
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<Any>,
}

/// A GeneralizedTime `YYYYMMDDHHMMSS[.f*]Z`: its text as sent, and milliseconds since the epoch.
#[derive(Clone, Debug, Eq, PartialEq)]
struct GenTime {
    text: String,
    unix_ms: i64,
}

impl GenTime {
    fn parse(text: &str) -> Option<Self> {
        let body = text.strip_suffix('Z')?;
        let (whole, fraction) = match body.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (body, None),
        };
        if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let field = |range: std::ops::Range<usize>| whole[range].parse::<u8>().ok();
        let year = whole[0..4].parse::<u16>().ok()?;
        let time =
            der::DateTime::new(year, field(4..6)?, field(6..8)?, field(8..10)?, field(10..12)?, field(12..14)?).ok()?;
        let mut millis = 0;
        if let Some(fraction) = fraction {
            // DER: at least one digit, no trailing zero
            if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.ends_with('0') {
                return None;
            }
            millis = format!("{:0<3}", &fraction[..fraction.len().min(3)]).parse::<i64>().ok()?;
        }
        let seconds = i64::try_from(time.unix_duration().as_secs()).ok()?;
        Some(GenTime { text: text.to_owned(), unix_ms: seconds * 1000 + millis })
    }

    /// `2026-12-06T19:30:00.123Z` from `20261206193000.123Z`.
    fn rfc3339(&self) -> String {
        let t = &self.text;
        format!("{}-{}-{}T{}:{}:{}", &t[0..4], &t[4..6], &t[6..8], &t[8..10], &t[10..12], &t[12..])
    }
}

impl FixedTag for GenTime {
    const TAG: Tag = Tag::GeneralizedTime;
}

impl<'a> DecodeValue<'a> for GenTime {
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        let bytes = reader.read_vec(header.length)?;
        std::str::from_utf8(&bytes).ok().and_then(GenTime::parse).ok_or_else(|| Self::TAG.value_error())
    }
}

impl EncodeValue for GenTime {
    fn value_len(&self) -> der::Result<Length> {
        Length::try_from(self.text.len())
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        writer.write(self.text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_time_with_and_without_fraction() {
        let whole = GenTime::parse("20261206193000Z").unwrap();
        assert_eq!(whole.rfc3339(), "2026-12-06T19:30:00Z");
        assert_eq!(whole.unix_ms, 1_796_585_400_000);
        let fraction = GenTime::parse("20261206193000.12Z").unwrap();
        assert_eq!(fraction.rfc3339(), "2026-12-06T19:30:00.12Z");
        assert_eq!(fraction.unix_ms, 1_796_585_400_120);
        assert_eq!(GenTime::parse("20261206193000.123456Z").unwrap().unix_ms, 1_796_585_400_123);
        for bad in ["20261206193000", "20261206193000.Z", "20261206193000.10Z", "2026120619300Z", "20261306193000Z"] {
            assert_eq!(GenTime::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn nonces_are_minimal_positive_integers() {
        assert_eq!(positive_int(0).as_bytes(), [0]);
        assert_eq!(positive_int(0x7f).as_bytes(), [0x7f]);
        assert_eq!(positive_int(0x80).as_bytes(), [0, 0x80]);
        assert_eq!(positive_int(u64::MAX).as_bytes(), [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let encoded = positive_int(0x0100).to_der().unwrap();
        assert_eq!(encoded, [2, 2, 1, 0]);
    }

    #[test]
    fn accuracy_adds_up() {
        let accuracy = Accuracy { seconds: Some(1), millis: Some(500), micros: Some(100) };
        assert_eq!(accuracy_ms(&accuracy), 1501);
    }
}
