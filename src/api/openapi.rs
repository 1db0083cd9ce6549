//! `GET /openapi.json`: this API as OpenAPI 3, generated from the handlers' annotations (utoipa),
//! so host apps in any language can generate a client. The router is built from the same
//! annotated handlers ([`super::router`]), so the document cannot miss a route.

use axum::Json;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

/// The document's header; paths are added as the router is built.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry local API",
        description = "The REST API a ferry node serves to its host applications (docs/API.md §3). Every answer is \
                       the JSON envelope `{code, msg, data}`; on an error `code` is the HTTP status and \
                       `data.error` names the kind. With `api.tokens` set, send `Authorization: Bearer <token>`."
    ),
    components(schemas(Envelope))
)]
pub struct ApiDoc;

/// The envelope of every answer.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct Envelope {
    /// 0 on success, else the HTTP status.
    code: u16,
    /// What happened, or what is wrong and what to do.
    msg: String,
    /// The answer's data; on an error `{"error": KIND, ...details}`.
    data: Value,
}

/// Serves the document built with the router.
pub(super) fn handler(doc: utoipa::openapi::OpenApi) -> axum::routing::MethodRouter<super::Shared> {
    let json = std::sync::Arc::new(serde_json::to_value(&doc).expect("the OpenAPI document serializes"));
    axum::routing::get(move || async move { Json(json.as_ref().clone()) })
}
