//! `ferry service add`: adds a `[[service]]` table, keeping the config file's comments and
//! layout.

use std::path::Path;

use toml_edit::{value, Array, Table};

use super::{config_file, CliError};
use crate::config::Config;

/// Adds a `[[service]]` table.
pub fn add(config_path: &Path, id: &str, base_url: &str, allow: &[String]) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    if config.service(id).is_some() {
        return Err(CliError::usage(format!(
            "service `{id}` is configured already; edit {} to change it",
            config_path.display()
        )));
    }
    let mut doc = config_file::open(config_path)?;
    let mut service = Table::new();
    service["id"] = value(id);
    service["base_url"] = value(base_url);
    service["allow"] = value(allow.iter().map(String::as_str).collect::<Array>());
    config_file::push(&mut doc, "service", service)?;
    config_file::save(config_path, &doc)
}
