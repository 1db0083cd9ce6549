//! `ferry service add|list|set|remove`: the local services peers may call, edited in place in the
//! config file (comments and layout kept, the whole config validated before it is written).

use std::path::Path;

use serde::Serialize;
use toml_edit::{value, Array, Table};

use super::table::Table as TextTable;
use super::CliError;
use crate::config::{shown, Config, ServiceState};
use crate::config_file::service::{allow_list, allowed, check_base_url, configured};
use crate::config_file::{self, service as edit};

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
    Ok(config_file::save(config_path, &doc)?)
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

/// Changes service `id`'s state, allow list or base URL in place; says what changed
/// ([`config_file::service::set`], which the console's `PATCH /v1/services/{id}` calls too).
pub fn set(config_path: &Path, id: &str, changes: Changes) -> Result<String, CliError> {
    let changes = edit::Changes {
        state: changes.state.map(ServiceState::from),
        allow: changes.allow,
        base_url: changes.base_url,
    };
    Ok(edit::set(config_path, id, changes)?)
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
