//! The peer-to-peer protocol spoken between two ferry nodes over QUIC.
//!
//! # Connection
//!
//! A node dials each peer once and keeps the connection (QUIC keep-alive). The TLS handshake is
//! TLS 1.3 with client certificates required both ways; each side accepts only the certificate it
//! pinned for that peer (see [`crate::tls`]). A node offers the ALPN ids [`ALPNS`]: `ferry/2`
//! (file streams of [`FILE_VERSION`] 2), `ferry/1+anchored` (countersigned receipts, checkpoints)
//! and `ferry/1`; a node speaking none of them fails the handshake instead of misreading frames.
//!
//! # Streams and frames
//!
//! Every exchange gets its own bidirectional stream, opened by the side that sends the request.
//! A stream carries frames: a 4-byte big-endian length, then that many bytes of payload: the
//! message's [`Tag`] (one byte) and the message's postcard encoding. A length above [`MAX_FRAME`]
//! is refused before anything is allocated.
//!
//! The opener's first frame is an [`Opening`]; a request and an asynchronous request carry
//! [`PROTOCOL_VERSION`], a file offer its file-stream version (1 or [`FILE_VERSION`]), and the
//! receiver refuses a version it does not speak with [`Code::VersionMismatch`]. After a file
//! offer the opener sends [`FilePart`]s (see [`crate::transfer`]). The receiver sends
//! [`Answer`]s. A message where it does not stand is a [`FrameError::Misplaced`]: a stream opened
//! with anything but an [`Opening`] is reset with [`Code::Unsupported`], any other misplaced
//! message with [`Code::ProtocolViolation`]. The tags are numbered across the three, as when one
//! enum held every message, so that nodes of every release of `ferry/1` read each other's frames.
//!
//! A synchronous request is one round trip:
//!
//! ```text
//! opener                              receiver
//!   ── Request{version, id, ...} ──▶    checks service and allow list, calls the service
//!   ◀── Response{status, headers, body}  or  Refused{kind, message}
//! ```
//!
//! An asynchronous request and each of its results is store-and-forward, one stream each:
//!
//! ```text
//! requesting node                          receiving node
//!   ── AsyncRequest{request, reply, expires} ─▶  persists it (once per id), then
//!   ◀── Ack{id, seq: 0}                          or Refused (unknown service, not allowed, disabled)
//!                                                calls its service later, at most once per id
//!   ◀── Reply{id, seq, end, data|error, response}  (opened by the receiving node)
//!   ── Ack{id, seq} ──▶                          persisted by the requesting node
//! ```
//!
//! Each side resends what the other has not acknowledged (after a lost connection, a restart),
//! and each side ignores what it already has, so nothing is lost and nothing is done twice.
//!
//! A node that receives a message it accepted signs a receipt for it: the leaves of what it
//! accepted (request or reply id, payload SHA-256, file SHA-256, time) are gathered for a few
//! milliseconds and one signature over their Merkle root goes back in an [`Opening::Receipt`] on a
//! stream of its own (see [`crate::receipt`]); on `ferry/1+anchored` and later it is an
//! [`Opening::Countersign`], which also binds each message's whole record and the signer's chain
//! head, and each node sends its peers an [`Opening::Checkpoint`] of its head now and then. A
//! receipt or checkpoint that does not verify against the pinned certificate closes the connection
//! with [`Code::ProtocolViolation`].
//!
//! During its key rollover a node sends each peer an [`Opening::Rollover`]: its new certificate,
//! signed by the old key ([`crate::rollover`]); the peer acknowledges once it pins it.
//!
//! Every stream reset and connection close uses a [`Code`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN protocol id of the first release: the protocol name and its major version.
pub const ALPN: &[u8] = b"ferry/1";

/// The ALPN protocol id of `ferry/1` plus anchored evidence: receipts bind the whole record and
/// carry the signer's chain head ([`Opening::Countersign`]), and nodes send each other
/// [`Opening::Checkpoint`]s. A node offers both ids, this one first, and speaks the newer messages
/// only on connections that chose it, so it still serves peers of the first release.
pub const ALPN_ANCHORED: &[u8] = b"ferry/1+anchored";

/// The ALPN protocol id of the second version: `ferry/1+anchored`, and file streams of
/// [`FILE_VERSION`] 2, whose chunks carry a CRC32C ([`FilePart::FileChunkCrc`]) instead of a
/// SHA-256 of their own. A node offers it first, and sends version-2 file streams only on
/// connections that chose it; it receives file streams of both versions on every connection.
pub const ALPN_2: &[u8] = b"ferry/2";

/// The ALPN ids a node offers and accepts, the preferred first.
pub const ALPNS: [&[u8]; 3] = [ALPN_2, ALPN_ANCHORED, ALPN];

/// The version carried by requests and asynchronous requests (unchanged since the first release).
pub const PROTOCOL_VERSION: u16 = 1;

/// The newest version of file streams, carried by [`FileOffer`]: 1, chunks each carry a SHA-256
/// ([`FilePart::FileChunk`]); 2, a CRC32C ([`FilePart::FileChunkCrc`]). A receiver takes both.
pub const FILE_VERSION: u16 = 2;

/// The protocol a connection chose, from the ALPN id of its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// `ferry/1`: the first release.
    First,
    /// `ferry/1+anchored`: countersigned receipts and checkpoints.
    Anchored,
    /// `ferry/2`: anchored, and file streams of version 2.
    Second,
}

impl Protocol {
    /// The protocol of `connection` (`ferry/1` when the handshake named none).
    pub fn of(connection: &quinn::Connection) -> Protocol {
        let alpn = connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        match alpn.as_deref() {
            Some(ALPN_2) => Protocol::Second,
            Some(ALPN_ANCHORED) => Protocol::Anchored,
            _ => Protocol::First,
        }
    }

    /// The file-stream version a sender uses on a connection of this protocol.
    pub fn file_version(self) -> u16 {
        if self >= Protocol::Second {
            FILE_VERSION
        } else {
            1
        }
    }
}

/// The largest frame either side accepts, checked before allocating.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Every code used to reset a stream or close a connection.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Normal end: the node shuts down or the connection is no longer needed.
    Done = 0,
    /// A frame could not be decoded or broke the message order.
    ProtocolViolation = 1,
    /// The first message carried a protocol version this node does not speak.
    VersionMismatch = 2,
    /// A frame was longer than [`MAX_FRAME`].
    FrameTooLarge = 3,
    /// A reserved message type this node does not handle yet.
    Unsupported = 4,
    /// The certificate is no longer pinned (the peer was removed).
    NotPinned = 5,
    /// The opener gave up on the exchange (its caller left or timed out).
    Cancelled = 6,
    /// The peer sent nothing for too long in the middle of an exchange.
    Stalled = 7,
    /// A file chunk did not match its SHA-256 or CRC32C; the sender resumes from the last good
    /// chunk.
    ChunkCorrupt = 8,
    /// The sender's file changed or shrank while it was being sent: the receiver discards what it
    /// holds of it, and the sender does not resume.
    SourceChanged = 9,
}

impl Code {
    /// The code as a QUIC varint.
    pub fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The code the peer reset a stream with, if that is why `e` ended the read and it is ours.
    pub fn reset_by(e: &quinn::ReadError) -> Option<Self> {
        match e {
            quinn::ReadError::Reset(code) => Code::from_varint(*code),
            _ => None,
        }
    }

    /// The code for a QUIC error code received from the peer, if it is one of ours.
    pub fn from_varint(code: quinn::VarInt) -> Option<Self> {
        use Code::*;
        [
            Done,
            ProtocolViolation,
            VersionMismatch,
            FrameTooLarge,
            Unsupported,
            NotPinned,
            Cancelled,
            Stalled,
            ChunkCorrupt,
            SourceChanged,
        ]
        .into_iter()
        .find(|c| *c as u64 == code.into_inner())
    }
}

/// Every message of `ferry/1` and its number: the first byte of a frame's payload (postcard's
/// varint, one byte for each), before the message's own postcard encoding. The numbers are fixed:
/// a new message takes the next one.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// [`Opening::Request`].
    Request = 0,
    /// [`Answer::Response`].
    Response = 1,
    /// [`Answer::Refused`].
    Refused = 2,
    /// [`Opening::AsyncRequest`].
    AsyncRequest = 3,
    /// [`Answer::Ack`].
    Ack = 4,
    /// [`Opening::Reply`].
    Reply = 5,
    /// [`Opening::Receipt`].
    Receipt = 6,
    /// [`Opening::FileOffer`].
    FileOffer = 7,
    /// [`FilePart::FileChunk`].
    FileChunk = 8,
    /// [`Answer::FileResume`].
    FileResume = 9,
    /// [`FilePart::FileEnd`].
    FileEnd = 10,
    /// [`Answer::FileDone`].
    FileDone = 11,
    /// [`Opening::Countersign`] (`ferry/1+anchored` only).
    Countersign = 12,
    /// [`Opening::Checkpoint`] (`ferry/1+anchored` only).
    Checkpoint = 13,
    /// [`FilePart::FileChunkCrc`] (file streams of version 2).
    FileChunkCrc = 14,
    /// [`Opening::Rollover`]. A node of an earlier release resets the stream: it cannot pin a
    /// new certificate of its peer's, which keeps presenting the old one until the grace ends.
    Rollover = 15,
}

impl Tag {
    /// The message numbered `n`, if there is one.
    fn of(n: u32) -> Option<Tag> {
        use Tag::*;
        [
            Request,
            Response,
            Refused,
            AsyncRequest,
            Ack,
            Reply,
            Receipt,
            FileOffer,
            FileChunk,
            FileResume,
            FileEnd,
            FileDone,
            Countersign,
            Checkpoint,
            FileChunkCrc,
            Rollover,
        ]
        .into_iter()
        .find(|t| *t as u32 == n)
    }
}

/// The first frame of a stream: what its opener sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Opening {
    /// A request for one of the receiver's services, answered [`Answer::Response`] (or
    /// [`Answer::Refused`]).
    Request(Request),
    /// An asynchronous request, persisted by the receiver before it answers [`Answer::Ack`] (or
    /// [`Answer::Refused`] when its service refuses the sender).
    AsyncRequest(AsyncRequest),
    /// A result of an asynchronous request, carried back to the requesting node, which persists
    /// it and answers [`Answer::Ack`].
    Reply(Reply),
    /// The receiver's signature over what it accepted lately; answered with [`Answer::Ack`] once
    /// the sender has recorded it.
    Receipt(Receipt),
    /// The sender offers a file for a request or reply; answered [`Answer::FileResume`] (then
    /// [`FilePart`]s follow), [`Answer::FileDone`] if the receiver holds it already, or
    /// [`Answer::Refused`].
    FileOffer(FileOffer),
    /// A receipt that binds each message's whole record and the signer's chain head; the
    /// `ferry/1+anchored` form of [`Opening::Receipt`], answered the same.
    Countersign(Countersign),
    /// The sender's signed chain head, for the receiver to keep; answered with [`Answer::Ack`]
    /// once recorded.
    Checkpoint(Checkpoint),
    /// The sender's new certificate, vouched for by its current key ([`crate::rollover`]);
    /// answered [`Answer::Ack`] once the receiver pins it, or [`Answer::Refused`] while its admin
    /// has not approved it (or when it does not verify).
    Rollover(Rollover),
}

impl Opening {
    /// The version the opening carries, if it carries one: [`PROTOCOL_VERSION`] for requests, the
    /// file-stream version for a file offer.
    pub fn version(&self) -> Option<u16> {
        match self {
            Opening::Request(r) => Some(r.version),
            Opening::AsyncRequest(a) => Some(a.request.version),
            Opening::FileOffer(o) => Some(o.version),
            Opening::Reply(_)
            | Opening::Receipt(_)
            | Opening::Countersign(_)
            | Opening::Checkpoint(_)
            | Opening::Rollover(_) => None,
        }
    }

    /// Whether this node speaks the version the opening carries (or it carries none): requests of
    /// [`PROTOCOL_VERSION`], file offers of versions 1 to [`FILE_VERSION`].
    pub fn version_spoken(&self) -> bool {
        match self {
            Opening::FileOffer(o) => (1..=FILE_VERSION).contains(&o.version),
            other => other.version().is_none_or(|v| v == PROTOCOL_VERSION),
        }
    }
}

/// What the opener of a file stream sends after its [`Opening::FileOffer`] was answered
/// [`Answer::FileResume`].
#[derive(Debug, Clone, PartialEq)]
pub enum FilePart {
    /// One chunk's header with its SHA-256 (version 1); exactly `len` raw bytes of the file follow
    /// the frame.
    FileChunk(FileChunk),
    /// One chunk's header with its CRC32C (version 2); exactly `len` raw bytes follow the frame.
    FileChunkCrc(FileChunkCrc),
    /// After the last chunk: the whole file's SHA-256.
    FileEnd(FileEnd),
}

/// What the receiver of a stream answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The service's answer to an [`Opening::Request`].
    Response(Response),
    /// The receiving node refused or could not complete the exchange.
    Refused(Refusal),
    /// The receiver has persisted a request or reply (or recorded a receipt); the sender may stop
    /// retransmitting it.
    Ack(Ack),
    /// The answer to a file offer: the receiver holds the first `have` bytes, verified.
    FileResume(FileResume),
    /// The receiver verified the whole file and keeps it.
    FileDone(FileDone),
}

/// Where a frame stands on a stream, which decides the messages it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The first frame of a stream: an [`Opening`].
    Opening,
    /// A frame after a file offer: a [`FilePart`].
    FilePart,
    /// A frame from the receiver: an [`Answer`].
    Answer,
}

/// A message that travels as one frame: an [`Opening`], a [`FilePart`] or an [`Answer`].
pub trait Frame: Sized {
    /// Where frames of this type stand.
    const PLACE: Place;
    /// The message's number.
    fn tag(&self) -> Tag;
    /// Appends the message's own postcard encoding to `frame`.
    fn encode_body(&self, frame: Vec<u8>) -> postcard::Result<Vec<u8>>;
    /// The message numbered `tag`, decoded from `body`: [`FrameError::Misplaced`] if such a
    /// message does not stand here.
    fn decode_body(tag: Tag, body: &[u8]) -> Result<Self, FrameError>;
}

/// Implements [`Frame`] for `$frame`, whose variants are named as their [`Tag`]s.
macro_rules! frame {
    ($frame:ident: $($variant:ident),+) => {
        impl Frame for $frame {
            const PLACE: Place = Place::$frame;

            fn tag(&self) -> Tag {
                match self {
                    $($frame::$variant(_) => Tag::$variant,)+
                }
            }

            fn encode_body(&self, frame: Vec<u8>) -> postcard::Result<Vec<u8>> {
                match self {
                    $($frame::$variant(message) => postcard::to_extend(message, frame),)+
                }
            }

            fn decode_body(tag: Tag, body: &[u8]) -> Result<Self, FrameError> {
                match tag {
                    $(Tag::$variant => Ok($frame::$variant(postcard::from_bytes(body)?)),)+
                    tag => Err(FrameError::Misplaced { tag, place: Place::$frame }),
                }
            }
        }
    };
}

frame!(Opening: Request, AsyncRequest, Reply, Receipt, FileOffer, Countersign, Checkpoint, Rollover);
frame!(FilePart: FileChunk, FileChunkCrc, FileEnd);
frame!(Answer: Response, Refused, Ack, FileResume, FileDone);

/// An asynchronous request: the same fields as a synchronous one, plus its reply mode and expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncRequest {
    /// The request; its `timeout_ms` bounds each call of the service.
    pub request: Request,
    /// Whether the result is the service's later replies rather than its immediate response.
    pub reply: bool,
    /// When the requesting node gives up (ms since the Unix epoch).
    pub expires_at_ms: i64,
}

/// The receiver persisted request `id` (`seq` 0) or its reply `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The request id.
    pub id: String,
    /// 0 for the request itself, else the reply's sequence number.
    pub seq: u32,
}

/// One result of an asynchronous request, in `seq` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request id.
    pub id: String,
    /// 1, 2, …
    pub seq: u32,
    /// Whether this is the last one.
    pub end: bool,
    /// The reply's data, or the service's response body, as JSON text.
    pub data: Option<String>,
    /// Why the request failed, when it did.
    pub error: Option<String>,
    /// The service's immediate response (non-reply mode, or a refusal in reply mode).
    pub response: Option<Response>,
    /// The file sent ahead of this reply, if any (key: `id/seq`).
    pub file: Option<FileRef>,
}

/// A file offered for a request (key: the request id) or a reply (key: `id/seq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileOffer {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// What the file belongs to: a request id, or `id/seq` for a reply.
    pub key: String,
    /// The file's name at the sender (reduced to a safe name by the receiver).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The header of one chunk; `len` bytes follow on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChunk {
    /// Where the chunk starts in the file.
    pub offset: u64,
    /// Its length: [`crate::transfer::CHUNK`] except for the last.
    pub len: u32,
    /// SHA-256 of the chunk's bytes.
    pub sha256: [u8; 32],
}

/// The header of one chunk of a version-2 file stream; `len` bytes follow on the stream. The
/// CRC32C finds a chunk damaged on a disk or in memory, so that it alone is sent again; QUIC's
/// AEAD already authenticates every byte in transit, and the whole file's SHA-256 ends the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChunkCrc {
    /// Where the chunk starts in the file.
    pub offset: u64,
    /// Its length: [`crate::transfer::CHUNK`] except for the last.
    pub len: u32,
    /// CRC32C (Castagnoli) of the chunk's bytes.
    pub crc32c: u32,
}

/// How much of an offered file the receiver already holds, verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileResume {
    /// Bytes held; the sender continues from here.
    pub have: u64,
}

/// The end of a file stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEnd {
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
}

/// The receiver verified and stored the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDone {
    /// SHA-256 of the whole file, as the receiver computed it.
    pub sha256: [u8; 32],
}

/// A file that travelled ahead of its request or reply, as the message refers to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    /// The form field that carries the file's local path to the service or callback.
    pub field: String,
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
}

/// A batch receipt: one signature by the receiving node over the Merkle root of `leaves`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// What the receiver accepted, in the order of the tree's leaves.
    pub leaves: Vec<Leaf>,
    /// ECDSA P-256 SHA-256 signature (ASN.1 DER) over [`crate::receipt::statement`] of the root.
    pub signature: Vec<u8>,
}

/// One message a receiver accepted, as its receipt names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// The request id.
    pub id: String,
    /// 0 for the request itself, else the reply's sequence number.
    pub seq: u32,
    /// SHA-256 of the message's postcard payload ([`payload_sha256`]).
    pub payload_sha256: [u8; 32],
    /// SHA-256 of the file that came with it, if any.
    pub file_sha256: Option<[u8; 32]>,
    /// When the receiver accepted it (ms since the Unix epoch).
    pub at_ms: i64,
}

/// A receipt of `ferry/1+anchored`: one signature by the receiving node over the Merkle root of
/// `leaves` and its own chain head when it signed ([`crate::receipt::countersign_statement`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Countersign {
    /// What the receiver accepted, in the order of the tree's leaves.
    pub leaves: Vec<Countersigned>,
    /// The signer's evidence chain head when it signed.
    pub head: Head,
    /// ECDSA P-256 SHA-256 signature (ASN.1 DER).
    pub signature: Vec<u8>,
}

/// One message a [`Countersign`] covers: the [`Leaf`] of `ferry/1`, and the digest of the whole
/// record of the message ([`crate::receipt::Binding`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Countersigned {
    /// Id, seq, payload and file hashes, time.
    pub leaf: Leaf,
    /// SHA-256 over what makes the message: method, path, form, payload, file, as the receiver
    /// read them ([`crate::receipt::Binding::digest`]).
    pub record_sha256: [u8; 32],
}

/// A node's evidence chain head: its last record's seq and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The record's seq (0: the log is empty).
    pub seq: u64,
    /// The record's hash (zeros when the log is empty).
    pub hash: [u8; 32],
}

/// A node's signed chain head, sent to each connected peer every few minutes for the peer to keep
/// ([`crate::receipt::checkpoint_statement`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The sender's chain head.
    pub head: Head,
    /// When the sender signed it (ms since the Unix epoch).
    pub at_ms: i64,
    /// ECDSA P-256 SHA-256 signature (ASN.1 DER).
    pub signature: Vec<u8>,
}

/// A node's new certificate and the old key's signature over it: its peers may pin the new one
/// beside the old until `until_ms`, when the old one is dropped ([`crate::rollover`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollover {
    /// The node's name.
    pub node: String,
    /// SHA-256 of the certificate being replaced, whose key signed this.
    pub old: [u8; 32],
    /// The new certificate, DER.
    pub new_cert: Vec<u8>,
    /// When the node made it (ms since the Unix epoch).
    pub issued_ms: i64,
    /// When the old certificate stops being presented and pinned (ms since the Unix epoch).
    pub until_ms: i64,
    /// ECDSA P-256 SHA-256 signature by the old key over [`crate::rollover::signed_bytes`]
    /// (ASN.1 DER).
    pub signature: Vec<u8>,
}

/// SHA-256 of a message's postcard encoding: what receipts and evidence records name as its payload.
pub fn payload_sha256<T: Serialize>(message: &T) -> [u8; 32] {
    use sha2::Digest;
    let bytes = postcard::to_stdvec(message).unwrap_or_default();
    sha2::Sha256::digest(bytes).into()
}

/// A request for a service of the receiving node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The request id, unique across nodes (UUID v7 text).
    pub id: String,
    /// The receiving node's service id.
    pub service: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Path under the service's base URL, starting with `/`.
    pub path: String,
    /// Form fields, in the order the host gave them.
    pub form: Vec<(String, FormValue)>,
    /// How the form reaches the service.
    pub encoding: Encoding,
    /// Extra headers for the service.
    pub headers: Vec<(String, String)>,
    /// A label grouping requests, passed on as `X-Ferry-Conversation`.
    pub conversation: Option<String>,
    /// How long the sender waits for the answer, in milliseconds.
    pub timeout_ms: u64,
    /// The file sent ahead of this request, if any (key: the request id).
    pub file: Option<FileRef>,
    /// The host's idempotency key (at most 64 characters), scoped by sender, service and path.
    pub idempotency_key: Option<String>,
}

/// A form value: the JSON scalars a host may put in `form`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FormValue {
    /// A JSON string.
    Text(String),
    /// A JSON integer.
    Int(i64),
    /// A JSON number with a fraction.
    Float(f64),
    /// A JSON boolean.
    Bool(bool),
    /// A JSON number that is not an `i64` (a big integer, a decimal), as the host wrote it, so
    /// that its digits reach the service unchanged. Last, so that stored rows of older versions
    /// decode as they were.
    Number(String),
    /// A JSON object or array, as compact JSON text: sent only with [`Encoding::Json`]. Newer
    /// still: nodes of older versions cannot read it.
    Json(String),
}

impl FormValue {
    /// The value as a text field.
    pub fn to_text(&self) -> String {
        match self {
            FormValue::Text(s) => s.clone(),
            FormValue::Int(i) => i.to_string(),
            FormValue::Float(f) => f.to_string(),
            FormValue::Bool(b) => b.to_string(),
            FormValue::Number(n) | FormValue::Json(n) => n.clone(),
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            FormValue::Text(s) => s.clone().into(),
            FormValue::Int(i) => (*i).into(),
            FormValue::Float(f) => (*f).into(),
            FormValue::Bool(b) => (*b).into(),
            // A peer may send any text: what is not a JSON number goes as a string.
            FormValue::Number(n) => n.parse::<serde_json::Number>().map_or_else(|_| n.clone().into(), Into::into),
            // Likewise, what is not JSON goes as a string.
            FormValue::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| j.clone().into()),
        }
    }
}

/// How a request's form reaches the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// Query string for GET and DELETE, urlencoded body otherwise.
    Form,
    /// The form as a JSON object body.
    Json,
}

/// The service's HTTP answer, relayed as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// End-to-end response headers (hop-by-hop ones removed), lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Set when the answer is a stored one: the id of the earlier request with the same
    /// idempotency key, whose service call produced it.
    pub replay_of: Option<String>,
}

impl Response {
    /// The body for a host: the service's JSON as it was sent, when the Content-Type says so and
    /// it parses; else its text as a JSON string when it is UTF-8; else base64 of its bytes (and
    /// then the returned encoding is `Some("base64")`). JSON is only checked, never rebuilt.
    pub fn body_json(&self) -> (Cow<'_, RawValue>, Option<&'static str>) {
        use base64::Engine;
        let string = |text: &str| Cow::Owned(serde_json::value::to_raw_value(text).expect("a string serializes"));
        let is_json = self.headers.iter().any(|(k, v)| k == "content-type" && v.contains("json"));
        match (is_json, std::str::from_utf8(&self.body)) {
            (true, Ok(text)) => (json_as_sent(text).map_or_else(|| string(text), Cow::Borrowed), None),
            (false, Ok(text)) => (string(text), None),
            (_, Err(_)) => (string(&base64::engine::general_purpose::STANDARD.encode(&self.body)), Some("base64")),
        }
    }

    /// The headers as a JSON object; repeated names are joined with `, `.
    pub fn headers_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.headers {
            match map.get_mut(k) {
                Some(serde_json::Value::String(existing)) => *existing = format!("{existing}, {v}"),
                _ => drop(map.insert(k.clone(), v.clone().into())),
            }
        }
        map
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `text` as one JSON value, if serde_json reads it as one: checked, not built. Checking alone
/// passes what reading refuses (lone surrogates in `\u` escapes, nesting past 128 levels), and
/// a view of the request reads it, so text with either is read in full before it passes.
fn json_as_sent(text: &str) -> Option<&RawValue> {
    let raw: &RawValue = serde_json::from_str(text).ok()?;
    let plain = !text.contains("\\u") && nesting(text) < 100;
    (plain || serde_json::from_str::<serde_json::Value>(text).is_ok()).then_some(raw)
}

/// The deepest nesting of arrays and objects in JSON `text`, brackets in strings aside.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for b in text.bytes() {
        match (in_string, b) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (_, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why the receiving node did not relay a service's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// What kind of failure, as the caller's API reports it.
    pub kind: RefusalKind,
    /// Plain words for the operator.
    pub message: String,
    /// For [`RefusalKind::InProgress`] and [`RefusalKind::Duplicate`]: the earlier request's id.
    pub earlier: Option<String>,
}

impl Refusal {
    /// A refusal of `kind` that names no earlier request.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Refusal { kind, message: message.into(), earlier: None }
    }
}

/// The kinds of refusal a receiving node sends; each maps to one API error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The request was malformed.
    BadRequest,
    /// The service does not allow the sending node.
    Forbidden,
    /// The service id is unknown.
    NotFound,
    /// The service is disabled.
    Unavailable,
    /// The body or file is over the receiver's limits.
    TooLarge,
    /// The receiving node could not reach its service.
    BackendUnreachable,
    /// The service did not answer in time.
    Timeout,
    /// A bug on the receiving node.
    Internal,
    /// A request with the same idempotency key is still running.
    InProgress,
    /// The same request arrived inside the service's duplicate window.
    Duplicate,
    /// The receiving node's disk has no room for the file.
    InsufficientStorage,
}

impl RefusalKind {
    /// The HTTP status of the API error of this kind (API.md §3).
    pub fn http_status(self) -> u16 {
        match self {
            RefusalKind::BadRequest => 400,
            RefusalKind::Forbidden => 403,
            RefusalKind::NotFound => 404,
            RefusalKind::Unavailable => 503,
            RefusalKind::TooLarge => 413,
            RefusalKind::BackendUnreachable => 502,
            RefusalKind::Timeout => 504,
            RefusalKind::Internal => 500,
            RefusalKind::InProgress | RefusalKind::Duplicate => 409,
            RefusalKind::InsufficientStorage => 507,
        }
    }
}

/// Whether a header is hop-by-hop (or framing) and so never crosses the link.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) || name.eq_ignore_ascii_case("host")
}

/// The form field that carries the callback id to a service in reply mode (and, as header
/// `X-Ferry-Callback-Id`, the same id); only the receiving node sets it.
pub const CALLBACK_ID_FIELD: &str = "callbackId";

/// The form field that carries a received file's local path when the sender names none; only the
/// receiving node sets it, with or without a file.
pub const DEFAULT_FILE_FIELD: &str = "file";

/// The fields a callback gets from its node; a reply's file field cannot take one of their names.
pub const CALLBACK_FIELDS: [&str; 6] = ["id", "seq", "end", "data", "status", "error"];

/// The most characters of a value from a host or a peer that a message or a log line quotes.
pub const QUOTED_CHARS: usize = 64;

/// `text` as a message or a log line may quote it: at most [`QUOTED_CHARS`] characters, then `…`.
pub fn cut(text: &str) -> std::borrow::Cow<'_, str> {
    cut_to(text, QUOTED_CHARS)
}

/// `text` cut to at most `max_chars` characters, then `…`.
pub fn cut_to(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &text[..at]).into(),
        None => text.into(),
    }
}

/// The longest request path either node takes, in bytes.
pub const MAX_PATH: usize = 2048;

/// Why `path` cannot be appended to a service's base URL, if it cannot. Each node applies this
/// itself, whatever the other checked: a path of at most [`MAX_PATH`] bytes starts with one `/`
/// and holds no `.` or `..`
/// segment (raw or percent-encoded in any case, also as `..;x` or around `%2f`), no backslash
/// (raw or `%5c`), no NUL (raw or `%00`) or other control character, and no `#`.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.len() > MAX_PATH {
        return Some("is over 2048 bytes; send long data in the form");
    }
    let lower = path.to_ascii_lowercase();
    let route = lower.split('?').next().unwrap_or_default();
    let dot_segment = || {
        let decoded = route.replace("%2f", "/").replace("%2e", ".");
        decoded.split('/').any(|segment| matches!(segment.split(';').next(), Some("." | "..")))
    };
    if !path.starts_with('/') || path.starts_with("//") {
        Some("must start with a single `/`")
    } else if path.chars().any(|c| c.is_ascii_control()) || lower.contains("%00") {
        Some("holds NUL or another control character (raw or percent-encoded)")
    } else if path.contains('\\') || route.contains("%5c") {
        Some("holds a backslash (raw or `%5c`)")
    } else if path.contains('#') {
        Some("holds a `#`")
    } else if dot_segment() {
        Some("holds a `.` or `..` segment (raw or percent-encoded)")
    } else {
        None
    }
}

/// The HTTP methods a request may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The longest `timeout_ms` either node takes: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Why `r` may not cross to a service, if it may not, as the field to blame and why: each node
/// checks this itself, whatever the other did. `file_field` is the field of the request's file,
/// if one comes. The path stays below the service's base URL ([`path_problem`]); neither the form
/// nor the path's query holds a field only the receiving node sets ([`forged_field`]); the method
/// is one of [`METHODS`]; `timeout_ms` is at most [`MAX_TIMEOUT_MS`]; headers and `conversation`
/// are ones a service may get ([`header_problem`], [`value_problem`]).
pub fn boundary_problem(r: &Request, file_field: Option<&str>) -> Option<(String, String)> {
    let blame = |field: &str, why: String| Some((field.to_owned(), why));
    if let Some(why) = path_problem(&r.path) {
        return blame("path", format!("`{}` {why}; give a path below the service's base URL", cut(&r.path)));
    }
    let only_the_node = || {
        format!(
            "set by the receiving node only (`{CALLBACK_ID_FIELD}` in reply mode, `{DEFAULT_FILE_FIELD}` or \
             `file_field` for a file); use another name"
        )
    };
    let query = r.path.split_once('?').map_or("", |(_, query)| query);
    let query_names: Vec<String> = url::form_urlencoded::parse(query.as_bytes()).map(|(k, _)| k.into_owned()).collect();
    if let Some(name) = forged_field(query_names.iter().map(String::as_str), file_field) {
        return blame("path", format!("its query's field `{}` is {}", cut(name), only_the_node()));
    }
    if let Some(name) = forged_field(r.form.iter().map(|(k, _)| k.as_str()), file_field) {
        return blame(&format!("form.{}", cut(name)), only_the_node());
    }
    if let Some(why) = file_field.and_then(|f| file_field_problem(f, &[CALLBACK_ID_FIELD])) {
        return blame("file_field", why);
    }
    if !METHODS.contains(&r.method.as_str()) {
        return blame("method", format!("`{}` is not one of {}", cut(&r.method), METHODS.join(", ")));
    }
    if !(1..=MAX_TIMEOUT_MS).contains(&r.timeout_ms) {
        return blame("timeout_ms", format!("must be 1 to {MAX_TIMEOUT_MS} (one hour)"));
    }
    if let Some(why) = r.headers.iter().find_map(|(name, value)| header_problem(name, value)) {
        return blame("headers", why);
    }
    let why = r.conversation.as_deref().and_then(value_problem)?;
    blame("conversation", why.to_owned())
}

/// The first of `form`'s field names that only the receiving node sets: [`CALLBACK_ID_FIELD`],
/// [`DEFAULT_FILE_FIELD`], or `file_field`, the field of the request's file.
pub fn forged_field<'a>(form: impl IntoIterator<Item = &'a str>, file_field: Option<&str>) -> Option<&'a str> {
    form.into_iter().find(|&name| name == CALLBACK_ID_FIELD || name == DEFAULT_FILE_FIELD || Some(name) == file_field)
}

/// Why `field` cannot carry a file's path, if it cannot: it is empty or one of `node_fields`, the
/// fields its node sets itself (`[CALLBACK_ID_FIELD]` for a request, [`CALLBACK_FIELDS`] for a reply).
pub fn file_field_problem(field: &str, node_fields: &[&str]) -> Option<String> {
    if field.is_empty() {
        Some("must not be empty".to_owned())
    } else if node_fields.contains(&field) {
        Some(format!("`{field}` is a field the node sets itself; name the file's field otherwise"))
    } else {
        None
    }
}

/// Why a header cannot go to a service as a host or a peer gave it, if it cannot: a name that is
/// not an HTTP token; a header only the nodes set (`X-Ferry-*`, hop-by-hop ones, `Host`,
/// `Content-Length`, `Content-Type`, `Content-Encoding`, `Expect`); one that reroutes the request
/// (`X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override` and the like); or a value with CR,
/// LF, NUL or another control character.
pub fn header_problem(name: &str, value: &str) -> Option<String> {
    const NODE_SET: [&str; 3] = ["content-type", "content-encoding", "expect"];
    // Frameworks that honour these would route to another path or run another method than the
    // one the nodes checked.
    const REROUTING: [&str; 5] =
        ["x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override"];
    let lower = name.to_ascii_lowercase();
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        Some(format!("`{}` is not a valid header name", cut(name)))
    } else if is_hop_by_hop(name) || lower.starts_with("x-ferry-") || NODE_SET.contains(&lower.as_str()) {
        Some(format!("`{}` is set by the nodes only; remove it", cut(name)))
    } else if REROUTING.contains(&lower.as_str()) {
        Some(format!("`{}` would make the service route or run the request otherwise; remove it", cut(name)))
    } else {
        value_problem(value).map(|why| format!("the value of `{}` {why}", cut(name)))
    }
}

/// Why `value` cannot be a header value, if it cannot: CR, LF, NUL or another control character.
pub fn value_problem(value: &str) -> Option<&'static str> {
    value.chars().any(|c| c.is_ascii_control() && c != '\t').then_some("holds CR, LF, NUL or another control character")
}

/// Whether a header carries credentials or claims about the client (`Authorization`, `Cookie`,
/// `Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `True-Client-IP`, `X-Client-IP`,
/// `X-Original-Forwarded-For`): such a header reaches a service only when the service's
/// `pass_headers` lists it.
pub fn is_guarded_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["authorization", "cookie", "forwarded", "x-real-ip", "true-client-ip", "x-client-ip", "x-original-forwarded-for"]
        .contains(&lower.as_str())
        || lower.starts_with("x-forwarded-")
}

/// What can go wrong reading or writing a frame.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The stream ended cleanly before a frame started.
    #[error("the stream ended before a message arrived")]
    Finished,
    /// The announced frame length is over the limit.
    #[error("a frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The bytes are not a valid message.
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
    /// The stream failed underneath.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// A message of the protocol where it does not stand (an answer opening a stream, a request
    /// answering one).
    #[error("{tag:?} message where {} belongs", place.what())]
    Misplaced {
        /// The message.
        tag: Tag,
        /// Where it was read.
        place: Place,
    },
}

impl Place {
    /// What stands here, in words.
    fn what(self) -> &'static str {
        match self {
            Place::Opening => "an opening",
            Place::FilePart => "a file chunk or file end",
            Place::Answer => "an answer",
        }
    }
}

impl FrameError {
    /// The quinn error under an I/O error, when a quinn stream read as `AsyncRead` failed.
    pub fn read_error(&self) -> Option<&quinn::ReadError> {
        match self {
            FrameError::Io(e) => e.get_ref()?.downcast_ref::<quinn::ReadError>(),
            _ => None,
        }
    }

    /// The protocol code the peer reset the stream with, if that is why reading failed.
    pub fn peer_reset(&self) -> Option<Code> {
        Code::reset_by(self.read_error()?)
    }

    /// The code to reset the stream with after this error.
    pub fn code(&self) -> Code {
        match self {
            FrameError::TooLarge(_) => Code::FrameTooLarge,
            FrameError::Io(_) => Code::Done, // the stream broke underneath: nobody misbehaved
            // A stream opened with a message no stream opens with: not one this node handles there.
            FrameError::Misplaced { place: Place::Opening, .. } => Code::Unsupported,
            FrameError::Finished | FrameError::Decode(_) | FrameError::Misplaced { .. } => Code::ProtocolViolation,
        }
    }
}

/// Encodes a message as one frame: length prefix, the message's [`Tag`], its postcard bytes.
pub fn encode<M: Frame>(message: &M) -> Result<Vec<u8>, FrameError> {
    framed(message.encode_body(vec![0, 0, 0, 0, message.tag() as u8])?)
}

/// Encodes `request` as an [`Opening::Request`] frame without copying it, and returns the frame
/// and the request's [`payload_sha256`], hashed from the frame's own bytes.
pub fn encode_request(request: &Request) -> Result<(Vec<u8>, [u8; 32]), FrameError> {
    use sha2::Digest;
    // After the length prefix and the tag comes the request's own encoding: its payload.
    let frame = framed(postcard::to_extend(request, vec![0, 0, 0, 0, Tag::Request as u8])?)?;
    let payload = sha2::Sha256::digest(&frame[5..]).into();
    Ok((frame, payload))
}

/// Fills in the length prefix of `frame`, whose first 4 bytes are reserved for it.
fn framed(mut frame: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Decodes one frame's payload (without its length prefix) as a message that stands where `M`
/// does. An unknown tag is [`FrameError::Decode`], a message of another place
/// [`FrameError::Misplaced`].
pub fn decode<M: Frame>(payload: &[u8]) -> Result<M, FrameError> {
    let (n, body) = postcard::take_from_bytes::<u32>(payload)?;
    // The error postcard gives an enum's unknown variant, as when one enum held every message.
    let tag = Tag::of(n).ok_or(postcard::Error::SerdeDeCustom)?;
    M::decode_body(tag, body)
}

/// Writes one message as a frame.
pub async fn write<W: AsyncWrite + Unpin, M: Frame>(out: &mut W, message: &M) -> Result<(), FrameError> {
    out.write_all(&encode(message)?).await?;
    Ok(())
}

/// Reads one frame and decodes it as a message that stands where `M` does. The length is checked
/// before the buffer is allocated.
pub async fn read<R: AsyncRead + Unpin, M: Frame>(input: &mut R) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Finished),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).await?;
    decode(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's body as a host gets it: JSON copied as it was sent (its numbers exactly),
    /// anything else as a JSON string, bytes that are not UTF-8 as base64.
    #[test]
    fn a_body_is_json_as_sent_else_a_string() {
        let body = |content_type: &str, body: &[u8]| {
            let response = Response {
                status: 200,
                headers: vec![("content-type".into(), content_type.into())],
                body: body.to_vec(),
                replay_of: None,
            };
            let (json, encoding) = response.body_json();
            (json.get().to_owned(), encoding)
        };
        let json = "application/json";
        assert_eq!(
            body(json, b" {\"n\": 1.50, \"big\": 123456789012345678901234567890}\n").0,
            "{\"n\": 1.50, \"big\": 123456789012345678901234567890}"
        );
        assert_eq!(body(json, b"{\"n\": 1"), ("\"{\\\"n\\\": 1\"".to_owned(), None), "not JSON: a string");
        assert_eq!(body(json, b"{} {}").0, "\"{} {}\"", "two values are not one");
        assert_eq!(body("text/plain", b"{\"a\":1}"), ("\"{\\\"a\\\":1}\"".to_owned(), None));
        assert_eq!(body("text/plain", &[0xff, 0]), ("\"/wA=\"".to_owned(), Some("base64")));
        // What serde_json checks but would not read stays text, so a view of it reads it.
        assert_eq!(body(json, br#"{"a":"\ud83d\ude00"}"#).0, r#"{"a":"\ud83d\ude00"}"#, "a surrogate pair");
        assert_eq!(body(json, br#"{"a":"\ud800"}"#).0, r#""{\"a\":\"\\ud800\"}""#, "a lone surrogate");
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(body(json, nested(120).as_bytes()).0, nested(120));
        assert_eq!(body(json, nested(200).as_bytes()).0, format!("\"{}\"", nested(200)));
        for text in [r#"{"a":"\ud800"}"#.to_owned(), nested(200), nested(120), r#"{"b":"]]\"[["}"#.into()] {
            let response = Response {
                status: 200,
                headers: vec![("content-type".into(), json.into())],
                body: text.clone().into_bytes(),
                replay_of: None,
            };
            assert!(serde_json::to_value(response.body_json().0).is_ok(), "{text}");
        }
    }

    fn request() -> Opening {
        Opening::Request(Request {
            version: PROTOCOL_VERSION,
            id: "0192".into(),
            service: "1".into(),
            method: "GET".into(),
            path: "/user/list".into(),
            form: vec![("pageSize".into(), FormValue::Int(1)), ("q".into(), FormValue::Text("a b".into()))],
            encoding: Encoding::Form,
            headers: vec![],
            conversation: Some("c-1".into()),
            timeout_ms: 30_000,
            file: None,
            idempotency_key: None,
        })
    }

    #[tokio::test]
    async fn a_frame_round_trips() {
        let mut buf = Vec::new();
        write(&mut buf, &request()).await.unwrap();
        let mut input = &buf[..];
        assert_eq!(read::<_, Opening>(&mut input).await.unwrap(), request());
        assert!(matches!(read::<_, Opening>(&mut input).await, Err(FrameError::Finished)));
    }

    /// A request encoded on its own is the same frame as the message, and its hash is the one
    /// receipts and evidence records name.
    #[test]
    fn a_request_frame_carries_its_payload_hash() {
        let Opening::Request(r) = request() else { unreachable!() };
        let (frame, payload) = encode_request(&r).unwrap();
        assert_eq!(frame, encode(&request()).unwrap());
        assert_eq!(payload, payload_sha256(&r));
    }

    /// A request that sets every optional field.
    fn full_request() -> Request {
        Request {
            version: PROTOCOL_VERSION,
            id: "0192".into(),
            service: "1".into(),
            method: "POST".into(),
            path: "/job?x=1".into(),
            form: vec![("n".into(), FormValue::Int(-2)), ("q".into(), FormValue::Text("a b".into()))],
            encoding: Encoding::Json,
            headers: vec![("x-a".into(), "v".into())],
            conversation: Some("c-1".into()),
            timeout_ms: 30_000,
            file: Some(FileRef { field: "doc".into(), name: "a.txt".into(), size: 3, sha256: [7; 32] }),
            idempotency_key: Some("k".into()),
        }
    }

    /// Checks that `message` encodes to `golden` (hex: the frame as the release where one enum
    /// held every message encoded it) and decodes back from it.
    fn same_bytes<M: Frame + PartialEq + std::fmt::Debug>(message: M, golden: &str) {
        let frame = encode(&message).unwrap();
        assert_eq!(hex::encode(&frame), golden, "{message:?}");
        assert_eq!(decode::<M>(&frame[4..]).unwrap(), message);
    }

    /// The messages of `ferry/1+anchored` keep their bytes too.
    #[test]
    fn anchored_messages_keep_their_bytes_on_the_wire() {
        let leaf = Leaf { id: "0192".into(), seq: 2, payload_sha256: [1; 32], file_sha256: None, at_ms: 5 };
        let head = Head { seq: 300, hash: [3; 32] };
        let leaves = vec![Countersigned { leaf, record_sha256: [2; 32] }];
        same_bytes(
            Opening::Countersign(Countersign { leaves, head, signature: vec![9, 8] }),
            concat!(
                "0000006f0c010430313932020101010101010101010101010101010101010101010101010101010101010101000a02",
                "02020202020202020202020202020202020202020202020202020202020202ac0203030303030303030303030303030303",
                "03030303030303030303030303030303020908",
            ),
        );
        same_bytes(
            Opening::Checkpoint(Checkpoint { head, at_ms: 1_700_000_000_000, signature: vec![7] }),
            "0000002b0dac02030303030303030303030303030303030303030303030303030303030303030380a0abfef9620107",
        );
    }

    /// Every message is the same bytes on the wire as before the split into openings, file parts
    /// and answers: nodes of older releases of `ferry/1` read them, and they read theirs.
    #[test]
    fn every_message_keeps_its_bytes_on_the_wire() {
        let response = Response {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"ok".to_vec(),
            replay_of: Some("0191".into()),
        };
        let file = FileRef { field: "file".into(), name: "b".into(), size: 1 << 20, sha256: [8; 32] };
        let reply = Reply {
            id: "0192".into(),
            seq: 1,
            end: true,
            data: Some("{}".into()),
            error: Some("e".into()),
            response: Some(response.clone()),
            file: Some(file),
        };
        let leaf = Leaf { id: "0192".into(), seq: 0, payload_sha256: [1; 32], file_sha256: Some([2; 32]), at_ms: 5 };
        let offer = FileOffer { version: PROTOCOL_VERSION, key: "0192/1".into(), name: "a.txt".into(), size: 3 };
        let refusal = Refusal { kind: RefusalKind::Duplicate, message: "seen".into(), earlier: Some("0191".into()) };
        let queued = AsyncRequest { request: full_request(), reply: true, expires_at_ms: 1_700_000_000_000 };

        same_bytes(
            Opening::Request(full_request()),
            concat!(
                "0000006200010430313932013104504f5354082f6a6f623f783d3102016e01030171000361206201",
                "0103782d6101760103632d31b0ea010103646f6305612e7478740307070707070707070707070707",
                "0707070707070707070707070707070707070701016b",
            ),
        );
        same_bytes(
            Answer::Response(response),
            concat!("0000002501c801010c636f6e74656e742d747970650a746578742f706c61696e026f6b0104303139", "31",),
        );
        same_bytes(Answer::Refused(refusal), "0000000d0209047365656e010430313931");
        same_bytes(
            Opening::AsyncRequest(queued),
            concat!(
                "0000006903010430313932013104504f5354082f6a6f623f783d3102016e01030171000361206201",
                "0103782d6101760103632d31b0ea010103646f6305612e7478740307070707070707070707070707",
                "0707070707070707070707070707070707070701016b0180a0abfef962",
            ),
        );
        same_bytes(Answer::Ack(Ack { id: "0192".into(), seq: 3 }), "0000000704043031393203");
        same_bytes(
            Opening::Reply(reply),
            concat!(
                "0000005f050430313932010101027b7d01016501c801010c636f6e74656e742d747970650a746578",
                "742f706c61696e026f6b010430313931010466696c65016280804008080808080808080808080808",
                "08080808080808080808080808080808080808",
            ),
        );
        same_bytes(
            Opening::Receipt(Receipt { leaves: vec![leaf], signature: vec![9, 8] }),
            concat!(
                "0000004d060104303139320001010101010101010101010101010101010101010101010101010101",
                "010101010102020202020202020202020202020202020202020202020202020202020202020a0209",
                "08",
            ),
        );
        same_bytes(Opening::FileOffer(offer), "00000010070106303139322f3105612e74787403");
        same_bytes(
            FilePart::FileChunk(FileChunk { offset: 1 << 20, len: 3, sha256: [3; 32] }),
            concat!("00000025088080400303030303030303030303030303030303030303030303030303030303030303", "03",),
        );
        same_bytes(
            FilePart::FileChunkCrc(FileChunkCrc { offset: 1 << 20, len: 3, crc32c: 0x1234_5678 }),
            "0000000a0e80804003f8acd19101",
        );
        same_bytes(Answer::FileResume(FileResume { have: 1 << 20 }), "0000000409808040");
        same_bytes(
            FilePart::FileEnd(FileEnd { sha256: [4; 32] }),
            "000000210a0404040404040404040404040404040404040404040404040404040404040404",
        );
        same_bytes(
            Answer::FileDone(FileDone { sha256: [5; 32] }),
            "000000210b0505050505050505050505050505050505050505050505050505050505050505",
        );
        let (frame, _) = encode_request(&full_request()).unwrap();
        assert_eq!(
            hex::encode(frame),
            concat!(
                "0000006200010430313932013104504f5354082f6a6f623f783d3102016e01030171000361206201",
                "0103782d6101760103632d31b0ea010103646f6305612e7478740307070707070707070707070707",
                "0707070707070707070707070707070707070701016b",
            )
        );
    }

    /// A message where it does not stand is an error that names it, and the code it resets the
    /// stream with; an unknown tag is an undecodable frame.
    #[tokio::test]
    async fn a_misplaced_message_is_a_frame_error() {
        let ack = encode(&Answer::Ack(Ack { id: "x".into(), seq: 0 })).unwrap();
        let err = read::<_, Opening>(&mut &ack[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Misplaced { tag: Tag::Ack, place: Place::Opening }), "{err:?}");
        assert_eq!(err.code(), Code::Unsupported);
        let chunk = encode(&FilePart::FileEnd(FileEnd { sha256: [0; 32] })).unwrap();
        assert_eq!(decode::<Opening>(&chunk[4..]).unwrap_err().code(), Code::Unsupported);
        let err = decode::<Answer>(&encode(&request()).unwrap()[4..]).unwrap_err();
        assert!(matches!(err, FrameError::Misplaced { tag: Tag::Request, place: Place::Answer }), "{err:?}");
        assert_eq!(err.code(), Code::ProtocolViolation);
        assert!(err.to_string().contains("Request"), "{err}");
        let err = decode::<FilePart>(&ack[4..]).unwrap_err();
        assert_eq!(err.code(), Code::ProtocolViolation);
        for unknown in [&[16u8][..], &[0x80, 0x01], &[]] {
            assert!(matches!(decode::<Answer>(unknown), Err(FrameError::Decode(_))), "{unknown:?}");
        }
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_allocating() {
        let mut input = &u32::MAX.to_be_bytes()[..];
        let err = read::<_, Opening>(&mut input).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
        assert_eq!(err.code(), Code::FrameTooLarge);
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_violation() {
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend([0xff, 0xff, 0xff]);
        let err = read::<_, Opening>(&mut &frame[..]).await.unwrap_err();
        assert_eq!(err.code(), Code::ProtocolViolation);
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error() {
        let frame = encode(&request()).unwrap();
        let err = read::<_, Opening>(&mut &frame[..frame.len() - 1]).await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }

    /// Form values stored by older versions decode as they were; a number's text from a peer
    /// reaches a JSON body only as a number or as a string.
    #[test]
    fn form_values_keep_their_encoding_and_a_number_its_digits() {
        assert_eq!(postcard::to_stdvec(&FormValue::Bool(true)).unwrap(), [3, 1]);
        let big = FormValue::Number("123456789012345678901234567890".into());
        assert_eq!(postcard::from_bytes::<FormValue>(&postcard::to_stdvec(&big).unwrap()).unwrap(), big);
        assert_eq!(big.to_text(), "123456789012345678901234567890");
        assert_eq!(big.to_json().to_string(), "123456789012345678901234567890");
        let forged = FormValue::Number("1,\"admin\":true".into());
        assert_eq!(forged.to_json(), serde_json::Value::from("1,\"admin\":true"));
        let nested = FormValue::Json(r#"{"a":[1,{"b":null}]}"#.into());
        assert_eq!(postcard::from_bytes::<FormValue>(&postcard::to_stdvec(&nested).unwrap()).unwrap(), nested);
        assert_eq!(nested.to_json(), serde_json::json!({"a": [1, {"b": null}]}));
        let broken = FormValue::Json("{\"a\":".into());
        assert_eq!(broken.to_json(), serde_json::Value::from("{\"a\":"));
    }

    #[test]
    fn paths_with_dot_segments_backslashes_or_nul_are_refused() {
        for fine in ["/", "/user/list?a=1", "/a.b/..c/.d?x=../y", "/a%2E%2Ex", "/q?path=a%5cb"] {
            assert_eq!(path_problem(fine), None, "{fine}");
        }
        for hostile in [
            "",
            "x",
            "//evil",
            "/../../admin",
            "/%2e%2E/%2e%2e/admin",
            "/./x",
            "/a/.",
            "/a/%2E",
            "/.%2e/x",
            "/..;x/admin",
            "/a/..%2fadmin",
            "/a\\b",
            "/a%5Cb",
            "/a\0b",
            "/a%00b",
            "/q?x=%00",
            "/a\r\nb",
            "/.\t./x",
            "/a#b",
        ] {
            assert!(path_problem(hostile).is_some(), "{hostile:?}");
        }
    }

    #[test]
    fn the_query_of_a_path_cannot_forge_node_fields_either() {
        let request = |path: &str, method: &str| Request {
            version: PROTOCOL_VERSION,
            id: "r1".into(),
            service: "1".into(),
            method: method.into(),
            path: path.into(),
            form: vec![],
            encoding: Encoding::Form,
            headers: vec![],
            conversation: None,
            timeout_ms: 1_000,
            file: None,
            idempotency_key: None,
        };
        assert_eq!(boundary_problem(&request("/job?page=2&files=x", "GET"), None), None);
        for forged in ["/job?file=%2Fetc%2Fpasswd", "/job?a=1&callbackId=x", "/job?callback%49d=x", "/job?doc=x"] {
            let (field, why) = boundary_problem(&request(forged, "GET"), Some("doc")).expect(forged);
            assert_eq!(field, "path", "{forged}: {why}");
        }
        assert_eq!(boundary_problem(&request("/job", "PROPFIND"), None).unwrap().0, "method");
        let mut slow = request("/job", "GET");
        slow.timeout_ms = u64::MAX;
        assert_eq!(boundary_problem(&slow, None).unwrap().0, "timeout_ms");
        for rerouting in ["X-Original-URL", "x-rewrite-url", "X-HTTP-Method-Override"] {
            assert!(header_problem(rerouting, "/admin").is_some(), "{rerouting}");
        }
        assert!(is_guarded_header("True-Client-IP") && is_guarded_header("x-original-forwarded-for"));
    }

    #[test]
    fn node_fields_and_node_headers_cannot_be_forged() {
        assert_eq!(forged_field(["a", "callbackId"], None), Some("callbackId"));
        assert_eq!(forged_field(["file"], Some("doc")), Some("file"));
        assert_eq!(forged_field(["a", "doc"], Some("doc")), Some("doc"));
        assert_eq!(forged_field(["a", "callbackid", "files"], Some("doc")), None);
        assert!(file_field_problem("callbackId", &[CALLBACK_ID_FIELD]).is_some());
        assert!(CALLBACK_FIELDS.iter().all(|f| file_field_problem(f, &CALLBACK_FIELDS).is_some()));
        assert!(file_field_problem("", &[]).is_some() && file_field_problem("doc", &CALLBACK_FIELDS).is_none());
        for name in ["X-Ferry-Peer", "host", "Content-Type", "content-length", "Connection", "Transfer-Encoding", "a b"]
        {
            assert!(header_problem(name, "v").is_some(), "{name}");
        }
        for value in ["a\r\nX-Ferry-Peer: org-a", "a\nb", "a\0b", "a\x7fb"] {
            assert!(header_problem("X-Custom", value).is_some(), "{value:?}");
        }
        assert_eq!(header_problem("X-Custom", "a\tb é"), None);
        assert!(
            is_guarded_header("authorization") && is_guarded_header("X-Forwarded-For") && is_guarded_header("Cookie")
        );
        assert!(!is_guarded_header("X-Custom"));
        assert_eq!(cut(&"é".repeat(100)), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn codes_round_trip_through_varints() {
        for code in [Code::Done, Code::VersionMismatch, Code::Stalled] {
            assert_eq!(Code::from_varint(code.varint()), Some(code));
        }
        assert_eq!(Code::from_varint(quinn::VarInt::from_u32(999)), None);
    }
}
