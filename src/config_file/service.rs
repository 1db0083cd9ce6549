//! Changing a configured service in place: its lifecycle state, who may call it, its base URL.
//! `ferry service set` and `PATCH /v1/services/{id}` both call [`set`].

use std::path::Path;

use toml_edit::Array;

use super::{not_configured, EditError};
use crate::config::{shown, Config, ServiceConfig, ServiceState};

/// What to change; `None` leaves a setting as it is.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// The lifecycle state.
    pub state: Option<ServiceState>,
    /// The whole new allow list: configured peers or `*`; empty names are dropped (an empty list
    /// allows nobody).
    pub allow: Option<Vec<String>>,
    /// The base URL.
    pub base_url: Option<String>,
}

/// A state as an admin may name it: the config's `active`, `deprecated`, `disabled`, and
/// `enabled` for `active`.
pub fn parse_state(text: &str) -> Option<ServiceState> {
    match text {
        "active" | "enabled" => Some(ServiceState::Active),
        "deprecated" => Some(ServiceState::Deprecated),
        "disabled" => Some(ServiceState::Disabled),
        _ => None,
    }
}

/// Changes service `id` of the config at `config_path` in place and says what changed (or that
/// nothing did, writing nothing). The whole config is validated before it is written.
pub fn set(config_path: &Path, id: &str, changes: Changes) -> Result<String, EditError> {
    let config = Config::load(config_path)?;
    let service = configured(&config, id)?;
    let mut doc = super::open(config_path)?;
    let table = super::table_mut(&mut doc, "service", "id", id)?;
    let mut changed = Vec::new();
    if let Some(state) = changes.state.filter(|s| *s != service.state) {
        super::set(table, "state", state.as_str());
        changed.push(format!("state {state} (was {})", service.state));
    }
    if let Some(allow) = changes.allow {
        let allow = allow_list(&config, &allow)?;
        if allow != service.allow {
            super::set(table, "allow", allow.iter().map(String::as_str).collect::<Array>());
            changed.push(format!("allowed for {} (was {})", allowed(&allow), allowed(&service.allow)));
        }
    }
    if let Some(base_url) = changes.base_url {
        check_base_url(&base_url)?;
        if base_url != service.base_url.as_str() {
            super::set(table, "base_url", base_url.as_str());
            changed.push(format!("base_url {base_url} (was {})", service.base_url));
        }
    }
    if changed.is_empty() {
        return Ok(format!("service `{id}` has those settings already; nothing changed"));
    }
    super::save(config_path, &doc)?;
    Ok(format!("service `{id}`: {}", changed.join(", ")))
}

/// The configured service `id`, or an error naming the configured ones.
pub fn configured<'c>(config: &'c Config, id: &str) -> Result<&'c ServiceConfig, EditError> {
    config.service(id).ok_or_else(|| not_configured("service", id, config.services.iter().map(|s| s.id.as_str())))
}

/// An allow list as it is written: configured peers or `*`, empty names dropped (an empty list
/// allows nobody); an unknown peer is refused, with the configured ones named.
pub fn allow_list(config: &Config, allow: &[String]) -> Result<Vec<String>, EditError> {
    let allow: Vec<String> = allow.iter().filter(|a| !a.is_empty()).cloned().collect();
    if let Some(unknown) = allow.iter().find(|a| *a != "*" && config.peer(a).is_none()) {
        let names: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
        let configured = if names.is_empty() { "none yet".to_owned() } else { names.join(", ") };
        return Err(EditError::invalid(
            "allow",
            format!(
                "{} is not a configured peer (add it with `ferry peer add`); the configured peers: {configured}",
                shown(unknown)
            ),
        ));
    }
    Ok(allow)
}

/// Refuses a base URL holding control characters, which a URL parser would silently drop; the
/// config's own check (an http(s) URL with a host) follows when the edit is validated.
pub fn check_base_url(base_url: &str) -> Result<(), EditError> {
    if base_url.chars().any(char::is_control) {
        return Err(EditError::invalid(
            "base_url",
            format!("{}: a URL holds no line breaks, tabs or other control characters", shown(base_url)),
        ));
    }
    Ok(())
}

/// An allow list for people: the names, or `nobody`.
pub fn allowed(allow: &[String]) -> String {
    if allow.is_empty() {
        "nobody".to_owned()
    } else {
        allow.join(",")
    }
}
