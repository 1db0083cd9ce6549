//! This node's services as peers see them: the service table, who may call what, lifecycle
//! states, and the boundary a peer's request must keep to before any service is called.
//!
//! The table is checked where a peer's request is accepted ([`crate::link`]) and again before a
//! stored request is called ([`crate::deliver`]); the calls themselves are made by
//! [`crate::deliver`], which [`crate::node`] wires in as the link's [`Caller`].

use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use crate::config::{ServiceConfig, ServiceState};
use crate::wire::{self, Refusal, RefusalKind};

/// The service table, swapped in place on reload. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    table: Arc<RwLock<Arc<Vec<ServiceConfig>>>>,
}

impl Services {
    /// The services of this node.
    pub fn new(services: Vec<ServiceConfig>) -> Self {
        Services { table: Arc::new(RwLock::new(Arc::new(services))) }
    }

    /// The services as configured now.
    pub fn all(&self) -> Arc<Vec<ServiceConfig>> {
        self.table.read().unwrap().clone()
    }

    /// Replaces the service table (on reload).
    pub fn replace(&self, services: Vec<ServiceConfig>) {
        *self.table.write().unwrap() = Arc::new(services);
    }

    /// The service `id` if `peer` may call it now: unknown, not allowed and disabled services
    /// are refused.
    pub fn check(&self, peer: &str, id: &str) -> Result<ServiceConfig, Refusal> {
        let table = self.table.read().unwrap().clone();
        let service = table
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("the peer offers no service `{id}`")))?;
        if !service.allows(peer) {
            return Err(Refusal::new(
                RefusalKind::Forbidden,
                format!("service `{id}` does not allow node `{peer}`; its admin must add it to `allow`"),
            ));
        }
        if service.state == ServiceState::Disabled {
            return Err(Refusal::new(RefusalKind::Unavailable, format!("service `{id}` is disabled by its admin")));
        }
        Ok(service.clone())
    }

    /// The service a peer's request is for, if the peer may call it and the request keeps to the
    /// boundary between peers and services, whatever the sender checked: its path stays below the
    /// service's base URL, its form holds no field the node sets itself, and its headers and
    /// conversation are ones a service may get. Checked where a request is accepted, so that
    /// nothing refused is stored, and again before a stored request is called (the table may have
    /// changed since).
    pub fn check_request(&self, peer: &str, r: &wire::Request) -> Result<Checked, Refusal> {
        let service = self.check(peer, &r.service)?;
        let url = within_boundary(&service, r).map_err(|why| {
            tracing::warn!(%peer, id = %wire::cut(&r.id), %why, "refused a request that crosses the boundary to a service");
            Refusal::new(RefusalKind::BadRequest, why)
        })?;
        Ok(Checked { service, url })
    }
}

/// A request checked against the service table and the boundary, ready to call
/// ([`Services::check_request`]).
#[derive(Debug, Clone)]
pub struct Checked {
    /// The service it is for.
    pub service: ServiceConfig,
    /// The URL it calls.
    pub(crate) url: url::Url,
}

/// Calls this node's local services for peers' requests: [`crate::deliver`].
pub trait Caller: Send + Sync {
    /// Calls the service `request` is for, adding `extra` text fields (`callbackId` in reply
    /// mode; the received file's path). `checked` is the request's [`Services::check_request`] if
    /// it was just made; without it, the check is made now.
    fn call<'a>(
        &'a self,
        peer: &'a str,
        request: &'a wire::Request,
        checked: Option<Checked>,
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<wire::Response, CallError>>;
}

/// A failed service call.
#[derive(Debug, Clone)]
pub struct CallError {
    /// What to tell the requesting node.
    pub refusal: Refusal,
    /// The call certainly never reached the service (refused by policy, or no connection), so
    /// trying again later cannot do the request twice.
    pub not_sent: bool,
}

/// The URL request `r` calls at `service`, or why it may not reach it (see
/// [`Services::check_request`]).
fn within_boundary(service: &ServiceConfig, r: &wire::Request) -> Result<url::Url, String> {
    let names = [
        ("id", Some(&r.id)),
        ("idempotency_key", r.idempotency_key.as_ref()),
        ("conversation", r.conversation.as_ref()),
        ("file.name", r.file.as_ref().map(|f| &f.name)),
    ];
    if let Some((field, _)) = names.iter().find(|(_, v)| v.is_some_and(|v| v.chars().any(char::is_control))) {
        return Err(format!("{field}: holds a control character (NUL, a line break…)"));
    }
    let url = service_url(&service.base_url, &r.path).map_err(|why| format!("path `{}` {why}", wire::cut(&r.path)))?;
    match wire::boundary_problem(r, r.file.as_ref().map(|f| f.field.as_str())) {
        Some((field, why)) => Err(format!("{field}: {why}")),
        None => Ok(url),
    }
}

/// The service URL for `path`: the base URL with the path appended, never another host nor a
/// path outside the base URL's path (compared segment by segment: `/api/v1` does not admit
/// `/api/v10`). `Err` says why not ([`wire::path_problem`]).
pub fn service_url(base: &url::Url, path: &str) -> Result<url::Url, &'static str> {
    if let Some(why) = wire::path_problem(path) {
        return Err(why);
    }
    let url = url::Url::parse(&format!("{}{path}", base.as_str().trim_end_matches('/')))
        .map_err(|_| "does not make a valid URL with the service's base URL")?;
    if below(base, &url) {
        Ok(url)
    } else {
        Err("leaves the service's base URL")
    }
}

/// Whether `url` is on `base`'s origin and its path is `base`'s path or below it, segment-wise.
fn below(base: &url::Url, url: &url::Url) -> bool {
    let rest = url.path().strip_prefix(base.path().trim_end_matches('/'));
    url.origin() == base.origin() && rest.is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The form as a JSON object, each field named in `mask` shown only as `sha256:<hex>` of its text.
pub fn masked_form(form: &[(String, wire::FormValue)], mask: &[String]) -> serde_json::Value {
    crate::evidence::MaskedForm { form, mask }.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_service() {
        let base = url::Url::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(service_url(&base, "/user/list?a=1").unwrap().as_str(), "http://127.0.0.1:8080/api/user/list?a=1");
        for hostile in ["@evil.example/x", "//evil.example/x", "x", "/\\evil", ""] {
            assert!(service_url(&base, hostile).is_err(), "{hostile}");
        }
        let bare = url::Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(service_url(&bare, "/a").unwrap().as_str(), "http://127.0.0.1:8080/a");
        assert!(service_url(&bare, "@evil.example/").is_err());
    }

    #[test]
    fn paths_stay_below_the_base_path_segment_by_segment() {
        let base = url::Url::parse("http://127.0.0.1:8080/api/v1").unwrap();
        assert_eq!(service_url(&base, "/x").unwrap().path(), "/api/v1/x");
        for hostile in ["/../../admin", "/%2e%2E/%2e%2e/admin", "/./x", "/a/..%2f..%2fadmin", "/..;/admin", "/.\t./x"] {
            assert!(service_url(&base, hostile).is_err(), "{hostile}");
        }
        // The final URL is compared with the base path segment-wise, not as a string prefix.
        let url = |p: &str| url::Url::parse(&format!("http://127.0.0.1:8080{p}")).unwrap();
        assert!(below(&base, &url("/api/v1")) && below(&base, &url("/api/v1/x")));
        assert!(!below(&base, &url("/api/v10")) && !below(&base, &url("/api/v10/x")));
        assert!(!below(&base, &url::Url::parse("http://127.0.0.2:8080/api/v1/x").unwrap()));
    }

    /// A peer's id, idempotency key, conversation or file name holding a control character is
    /// refused before anything is stored (PostgreSQL's text cannot even hold a NUL).
    #[test]
    fn names_with_control_characters_are_refused() {
        let service = crate::store::fixtures::service();
        let mut plain = crate::store::fixtures::request("r1");
        plain.file = Some(wire::FileRef { field: "file".into(), name: "a.txt".into(), size: 1, sha256: [0; 32] });
        assert!(within_boundary(&service, &plain).is_ok());
        type Change = fn(&mut wire::Request);
        let hostile: [(&str, Change); 4] = [
            ("id", |r| r.id = "r\0x".into()),
            ("idempotency_key", |r| r.idempotency_key = Some("k\n".into())),
            ("conversation", |r| r.conversation = Some("c\0".into())),
            ("file.name", |r| r.file.as_mut().unwrap().name = "a\0.txt".into()),
        ];
        for (field, make) in hostile {
            let mut r = plain.clone();
            make(&mut r);
            let refused = within_boundary(&service, &r).unwrap_err();
            assert!(refused.starts_with(&format!("{field}: holds a control character")), "{refused}");
        }
    }
}
