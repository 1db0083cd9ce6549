//! The request as a stored row keeps it: a record of the store's own, versioned, so that a change
//! of the wire type is a compile error here instead of rows that silently decode as something else.
//!
//! The `wire` column of `requests` holds the record (postcard), `record_version` its version.
//! Version 1 has the layout the releases before schema version 8 stored as a raw postcard
//! [`wire::Request`], so their rows (`record_version` NULL) are read as version 1.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::wire;

/// The version new rows are written with.
pub(super) const VERSION: i64 = 1;

/// A request as stored, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredRequest {
    /// The protocol version of the node that made the request.
    protocol: u16,
    /// The request id.
    id: String,
    /// The receiving node's service id.
    service: String,
    /// HTTP method.
    method: String,
    /// Path under the service's base URL.
    path: String,
    /// Form fields, in order.
    form: Vec<(String, StoredValue)>,
    /// How the form reaches the service.
    encoding: StoredEncoding,
    /// Extra headers for the service.
    headers: Vec<(String, String)>,
    /// The conversation label.
    conversation: Option<String>,
    /// How long the sender waits for the answer, in milliseconds.
    timeout_ms: u64,
    /// The file sent ahead of the request.
    file: Option<StoredFile>,
    /// The host's idempotency key.
    idempotency_key: Option<String>,
}

/// A form value as stored; new kinds go last, so that older rows decode as they were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum StoredValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Number(String),
    Json(String),
}

/// The form's encoding as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum StoredEncoding {
    Form,
    Json,
}

/// The request's file as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredFile {
    field: String,
    name: String,
    size: u64,
    sha256: [u8; 32],
}

impl From<&wire::Request> for StoredRequest {
    fn from(r: &wire::Request) -> StoredRequest {
        StoredRequest {
            protocol: r.version,
            id: r.id.clone(),
            service: r.service.clone(),
            method: r.method.clone(),
            path: r.path.clone(),
            form: r.form.iter().map(|(k, v)| (k.clone(), StoredValue::from(v))).collect(),
            encoding: match r.encoding {
                wire::Encoding::Form => StoredEncoding::Form,
                wire::Encoding::Json => StoredEncoding::Json,
            },
            headers: r.headers.clone(),
            conversation: r.conversation.clone(),
            timeout_ms: r.timeout_ms,
            file: r.file.as_ref().map(|f| StoredFile {
                field: f.field.clone(),
                name: f.name.clone(),
                size: f.size,
                sha256: f.sha256,
            }),
            idempotency_key: r.idempotency_key.clone(),
        }
    }
}

impl From<&wire::FormValue> for StoredValue {
    fn from(v: &wire::FormValue) -> StoredValue {
        match v {
            wire::FormValue::Text(s) => StoredValue::Text(s.clone()),
            wire::FormValue::Int(i) => StoredValue::Int(*i),
            wire::FormValue::Float(f) => StoredValue::Float(*f),
            wire::FormValue::Bool(b) => StoredValue::Bool(*b),
            wire::FormValue::Number(n) => StoredValue::Number(n.clone()),
            wire::FormValue::Json(j) => StoredValue::Json(j.clone()),
        }
    }
}

impl From<StoredRequest> for wire::Request {
    fn from(r: StoredRequest) -> wire::Request {
        wire::Request {
            version: r.protocol,
            id: r.id,
            service: r.service,
            method: r.method,
            path: r.path,
            form: r
                .form
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        StoredValue::Text(s) => wire::FormValue::Text(s),
                        StoredValue::Int(i) => wire::FormValue::Int(i),
                        StoredValue::Float(f) => wire::FormValue::Float(f),
                        StoredValue::Bool(b) => wire::FormValue::Bool(b),
                        StoredValue::Number(n) => wire::FormValue::Number(n),
                        StoredValue::Json(j) => wire::FormValue::Json(j),
                    };
                    (k, v)
                })
                .collect(),
            encoding: match r.encoding {
                StoredEncoding::Form => wire::Encoding::Form,
                StoredEncoding::Json => wire::Encoding::Json,
            },
            headers: r.headers,
            conversation: r.conversation,
            timeout_ms: r.timeout_ms,
            file: r.file.map(|f| wire::FileRef { field: f.field, name: f.name, size: f.size, sha256: f.sha256 }),
            idempotency_key: r.idempotency_key,
        }
    }
}

/// `request` as a row stores it, in the record of version [`VERSION`].
pub(super) fn encode(request: &wire::Request) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(&StoredRequest::from(request)).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The request a row stores as `record` of `version` (`None`: a row of a release before records
/// were versioned, which has the layout of version 1).
pub(super) fn decode(version: Option<i64>, record: &[u8]) -> Result<wire::Request, StoreError> {
    match version.unwrap_or(1) {
        1 => postcard::from_bytes::<StoredRequest>(record)
            .map(wire::Request::from)
            .map_err(|e| StoreError::Corrupt(format!("a stored request cannot be read: {e}"))),
        newer => Err(StoreError::Corrupt(format!(
            "a request is stored as record version {newer}, newer than this ferry knows ({VERSION}); run the newer ferry"
        ))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A request with every field set, a file and one form value of each kind.
    pub(in crate::store) fn full() -> wire::Request {
        wire::Request {
            version: wire::PROTOCOL_VERSION,
            id: "r1".into(),
            service: "1".into(),
            method: "POST".into(),
            path: "/job".into(),
            form: vec![
                ("a".into(), wire::FormValue::Text("x".into())),
                ("b".into(), wire::FormValue::Int(-3)),
                ("c".into(), wire::FormValue::Float(1.5)),
                ("d".into(), wire::FormValue::Bool(true)),
                ("e".into(), wire::FormValue::Number("1e400".into())),
            ],
            encoding: wire::Encoding::Json,
            headers: vec![("x-h".into(), "v".into())],
            conversation: Some("c1".into()),
            timeout_ms: 30_000,
            file: Some(wire::FileRef { field: "doc".into(), name: "a.pdf".into(), size: 7, sha256: [9; 32] }),
            idempotency_key: Some("k".into()),
        }
    }

    /// What is stored is read back as it was.
    #[test]
    fn a_request_reads_back_as_stored() {
        let request = full();
        assert_eq!(decode(Some(VERSION), &encode(&request).unwrap()).unwrap(), request);
    }

    /// A row of a release before versioned records (`postcard(wire::Request)`, these very bytes)
    /// is still read.
    #[test]
    fn a_row_written_before_records_were_versioned_is_read() {
        assert_eq!(decode(None, &hex::decode(LEGACY).unwrap()).unwrap(), full());
    }

    /// A row of a newer record version is refused, not misread.
    #[test]
    fn a_newer_record_is_refused() {
        let error = decode(Some(VERSION + 1), &encode(&full()).unwrap()).unwrap_err().to_string();
        assert!(error.contains("newer"), "{error}");
    }

    /// `postcard(wire::Request)` of [`full`] as the release before schema version 8 stored it.
    pub(in crate::store) const LEGACY: &str = concat!(
        "01027231013104504f5354042f6a6f6205016100017801620105016302000000000000f83f0164030101650405316534",
        "3030010103782d68017601026331b0ea010103646f6305612e7064660709090909090909090909090909090909090909",
        "0909090909090909090909090901016b",
    );
}
