//! `ferry service add|list|set|remove`: the local services peers may call, edited in place in the
//! config file (comments and layout kept, the whole config validated before it is written).

use std::path::Path;

use serde::Serialize;
use toml_edit::{value, Array, Table};

use super::table::Table as TextTable;
use super::{config_file, CliError};
use crate::config::{shown, Config, ServiceConfig, ServiceState};

/// A lifecycle state as `service set --state` takes it (the values of the config's `state` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    /// Served (also written `enabled`).
    #[value(alias = "enabled")]
    Active,
    /// Served, with a `Deprecation` header passed back to callers.
    Deprecated,
    /// Refused as `unavailable` (503).
    Disabled,
}

impl From<State> for ServiceState {
    fn from(state: State) -> Self {
        match state {
            State::Active => ServiceState::Active,
            State::Deprecated => ServiceState::Deprecated,
            State::Disabled => ServiceState::Disabled,
        }
    }
}

/// What `ferry service set` changes; `None` leaves a setting as it is.
#[derive(Debug, Default)]
pub struct Changes {
    /// `--state`.
    pub state: Option<State>,
    /// `--allow`: the whole new list.
    pub allow: Option<Vec<String>>,
    /// `--base-url`.
    pub base_url: Option<String>,
}

/// Adds a `[[service]]` table.
pub fn add(config_path: &Path, id: &str, base_url: &str, allow: &[String]) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    if config.service(id).is_some() {
        return Err(CliError::usage(format!(
            "service {} is configured already; `ferry service set` changes it",
            shown(id)
        )));
    }
    check_base_url(base_url)?;
    let allow = allow_list(&config, allow)?;
    let mut doc = config_file::open(config_path)?;
    let mut service = Table::new();
    service["id"] = value(id);
    service["base_url"] = value(base_url);
    service["allow"] = value(allow.iter().map(String::as_str).collect::<Array>());
    config_file::push(&mut doc, "service", service)?;
    config_file::save(config_path, &doc)
}

/// A configured service as `ferry service list` shows it.
#[derive(Debug, Serialize)]
struct Listed<'c> {
    id: &'c str,
    base_url: &'c str,
    /// `active`, `deprecated` or `disabled`.
    state: &'static str,
    /// Peers that may call it; `*` for every configured peer.
    allow: &'c [String],
}

/// Prints the configured services, as a table or (`json`) a JSON array.
pub fn list(config_path: &Path, json: bool) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let listed: Vec<Listed> = config
        .services
        .iter()
        .map(|s| Listed { id: &s.id, base_url: s.base_url.as_str(), state: s.state.as_str(), allow: &s.allow })
        .collect();
    if json {
        out!("{}", serde_json::to_string_pretty(&listed).unwrap_or_default());
        return Ok(());
    }
    let mut table = TextTable::new(["ID", "BASE_URL", "STATE", "ALLOW"]);
    for s in listed {
        table.row([s.id.to_owned(), s.base_url.to_owned(), s.state.to_owned(), allowed(s.allow)]);
    }
    out_raw!("{}", table.render());
    Ok(())
}

/// Changes service `id`'s state, allow list or base URL in place; says what changed.
pub fn set(config_path: &Path, id: &str, changes: Changes) -> Result<String, CliError> {
    let config = Config::load(config_path)?;
    let service = configured(&config, id)?;
    let mut doc = config_file::open(config_path)?;
    let table = config_file::table_mut(&mut doc, "service", "id", id)?;
    let mut changed = Vec::new();
    if let Some(state) = changes.state.map(ServiceState::from).filter(|s| *s != service.state) {
        config_file::set(table, "state", state.as_str());
        changed.push(format!("state {state} (was {})", service.state));
    }
    if let Some(allow) = changes.allow {
        let allow = allow_list(&config, &allow)?;
        if allow != service.allow {
            config_file::set(table, "allow", allow.iter().map(String::as_str).collect::<Array>());
            changed.push(format!("allowed for {} (was {})", allowed(&allow), allowed(&service.allow)));
        }
    }
    if let Some(base_url) = changes.base_url {
        check_base_url(&base_url)?;
        if base_url != service.base_url.as_str() {
            config_file::set(table, "base_url", base_url.as_str());
            changed.push(format!("base_url {base_url} (was {})", service.base_url));
        }
    }
    if changed.is_empty() {
        return Ok(format!("service `{id}` has those settings already; nothing changed"));
    }
    config_file::save(config_path, &doc)?;
    Ok(format!("service `{id}`: {}", changed.join(", ")))
}

/// Removes service `id`'s `[[service]]` table; says what changed. Peers' requests for it are
/// refused from the reload on, also those stored and not yet called.
pub fn remove(config_path: &Path, id: &str) -> Result<String, CliError> {
    let config = Config::load(config_path)?;
    let service = configured(&config, id)?;
    let mut doc = config_file::open(config_path)?;
    config_file::remove(&mut doc, "service", "id", id)?;
    config_file::save(config_path, &doc)?;
    Ok(format!("removed service `{id}` (at {})", service.base_url))
}

/// The configured service `id`, or an error naming the configured ones.
fn configured<'c>(config: &'c Config, id: &str) -> Result<&'c ServiceConfig, CliError> {
    config
        .service(id)
        .ok_or_else(|| config_file::not_configured("service", id, config.services.iter().map(|s| s.id.as_str())))
}

/// `--allow` as the list to write: configured peers or `*`, empty names dropped (`--allow ''`
/// allows nobody); an unknown peer is refused, with the configured ones named.
fn allow_list(config: &Config, allow: &[String]) -> Result<Vec<String>, CliError> {
    let allow: Vec<String> = allow.iter().filter(|a| !a.is_empty()).cloned().collect();
    if let Some(unknown) = allow.iter().find(|a| *a != "*" && config.peer(a).is_none()) {
        let names: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
        let configured = if names.is_empty() { "none yet".to_owned() } else { names.join(", ") };
        return Err(CliError::usage(format!(
            "--allow: {} is not a configured peer (add it with `ferry peer add`); the configured peers: {configured}",
            shown(unknown)
        )));
    }
    Ok(allow)
}

/// Refuses a `--base-url` holding control characters, which a URL parser would silently drop;
/// the config's own check (an http(s) URL with a host) follows when the edit is validated.
fn check_base_url(base_url: &str) -> Result<(), CliError> {
    if base_url.chars().any(char::is_control) {
        return Err(CliError::usage(format!(
            "--base-url {}: a URL holds no line breaks, tabs or other control characters",
            shown(base_url)
        )));
    }
    Ok(())
}

/// An allow list for people: the names, or `nobody`.
fn allowed(allow: &[String]) -> String {
    if allow.is_empty() {
        "nobody".to_owned()
    } else {
        allow.join(",")
    }
}
