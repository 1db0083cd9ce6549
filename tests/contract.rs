//! docs/API.md is the contract: these tests hold it to the code, both ways. Every route the API
//! serves is in its route table and every route there is served; every config key `src/config.rs`
//! reads is in its example config, and that example loads; every command and option of the binary
//! is in its §1, and every one named there exists. The README stays small and its links,
//! like those of the other documents, resolve. No nodes are started.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The text of docs/API.md between `<!-- contract: NAME -->` and `<!-- /contract: NAME -->`.
fn marked(doc: &str, name: &str) -> String {
    let start = format!("<!-- contract: {name} -->");
    let end = format!("<!-- /contract: {name} -->");
    let from = doc.find(&start).unwrap_or_else(|| panic!("docs/API.md has no `{start}` marker"));
    let to = doc[from..].find(&end).unwrap_or_else(|| panic!("docs/API.md has no `{end}` marker")) + from;
    doc[from + start.len()..to].to_owned()
}

/// Says what is in one set and not the other, or nothing when they are equal.
fn differences(what: &str, code: &BTreeSet<String>, doc: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for missing in code.difference(doc) {
        problems.push(format!("{what} `{missing}` exists in the code but is not in docs/API.md: document it"));
    }
    for extra in doc.difference(code) {
        problems.push(format!("{what} `{extra}` is in docs/API.md but not in the code: remove it or fix its name"));
    }
    problems
}

/// `METHOD /path` of every route the API serves: the OpenAPI document's paths, which the router is
/// built from, and the routes `router()` in src/api/mod.rs adds beside them (all GET).
fn served_routes() -> BTreeSet<String> {
    let (_, doc) = ferry::api::routes();
    let doc = serde_json::to_value(&doc).expect("the OpenAPI document serializes");
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("the OpenAPI document has paths") {
        for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            if item.get(method).is_some() {
                routes.insert(format!("{} {path}", method.to_ascii_uppercase()));
            }
        }
    }
    let source = read("src/api/mod.rs");
    let mut extra = 0;
    for piece in source.split(".route(\"").skip(1) {
        let path = &piece[..piece.find('"').expect("a route's path literal ends")];
        routes.insert(format!("GET {path}"));
        extra += 1;
    }
    assert!(extra >= 4 && routes.contains("GET /openapi.json"), "the scan of router() found no extra routes");
    routes
}

/// The first code span of each row of the marked route table.
fn documented_routes(doc: &str) -> BTreeSet<String> {
    marked(doc, "routes")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('`').nth(1).expect("a route in backticks").to_owned())
        .collect()
}

#[test]
fn api_md_names_every_route_served_and_no_other() {
    let doc = read("docs/API.md");
    let problems = differences("route", &served_routes(), &documented_routes(&doc));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `section.key` (or `section` for a top-level one) of every config key src/config.rs reads.
///
/// A key is accepted only if the parser reads it (any other is an unknown key), and it reads
/// through the `Section` methods taking `key: &'a str`. The scan finds those methods, then every
/// call of one with a literal key, under the section of the `Section::new` above it.
fn accepted_keys() -> BTreeSet<String> {
    let source = read("src/config.rs");
    let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
    let readers: BTreeSet<&str> = source
        .split("fn ")
        .skip(1)
        .filter(|f| f[..f.find('{').unwrap_or(f.len())].contains("key: &'a str"))
        .map(|f| &f[..f.find(['(', '<']).unwrap()])
        .collect();
    assert!(readers.contains("string") && readers.contains("duration"), "no readers found: {readers:?}");
    let mut keys = BTreeSet::new();
    for section in source.split("Section::new(").skip(1) {
        let name = section.split('"').nth(1).expect("a section name literal");
        let name = &name[..name.find('[').unwrap_or(name.len())];
        for call in section.split('.').skip(1) {
            let Some((method, rest)) = call.split_once("(\"") else { continue };
            if readers.contains(method) {
                let key = &rest[..rest.find('"').unwrap()];
                keys.insert(if name.is_empty() { key.to_owned() } else { format!("{name}.{key}") });
            }
        }
    }
    assert!(keys.contains("node.name") && keys.contains("api.tokens"), "the scan found too little: {keys:?}");
    keys
}

/// The example config of docs/API.md (its marked TOML block).
fn example_config(doc: &str) -> String {
    let text = marked(doc, "config");
    let from = text.find("```toml\n").expect("a ```toml block in the marked config section") + 8;
    let to = text[from..].find("```").expect("the ```toml block ends") + from;
    text[from..to].to_owned()
}

/// `section.key` of every key in `config`, and each section's name.
fn keys_in(config: &str) -> BTreeSet<String> {
    let table: toml::Table = config.parse().expect("the example config is TOML");
    let mut keys = BTreeSet::new();
    for (section, value) in &table {
        keys.insert(section.clone());
        let tables = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(items) => items.iter().filter_map(toml::Value::as_table).collect(),
            _ => vec![],
        };
        for t in tables {
            keys.extend(t.keys().map(|k| format!("{section}.{k}")));
        }
    }
    keys
}

#[test]
fn api_md_example_config_loads_and_names_every_accepted_key() {
    let example = example_config(&read("docs/API.md"));
    if let Err(e) = ferry::config::Config::parse(Path::new("/srv/ferry/config/ferry.toml"), &example) {
        panic!("docs/API.md's example config does not load:\n{e}");
    }
    let problems = differences("config key", &accepted_keys(), &keys_in(&example));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `ferry --help` (or a subcommand's): the names under `Commands:` (without `help`), and the long
/// options under `Options:` (without `--help` and `--version`).
fn help(args: &[&str]) -> (Vec<String>, BTreeSet<String>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "ferry {args:?} --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut commands = Vec::new();
    let mut options = BTreeSet::new();
    let mut section = "";
    // Long help separates options by blank lines: those do not end a section.
    for line in text.lines().filter(|l| !l.is_empty()) {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or_default();
        match section {
            "Commands:" if first != "help" => commands.push(first.to_owned()),
            "Options:" => {
                let long = line.split_whitespace().find(|w| w.starts_with("--")).unwrap_or_default();
                let long = long.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
                if !long.is_empty() && long != "--help" && long != "--version" {
                    options.insert(long.to_owned());
                }
            }
            _ => {}
        }
    }
    (commands, options)
}

/// Every command of the binary (`init`, `cert fingerprint`, …) with its long options.
fn commands() -> Vec<(String, BTreeSet<String>)> {
    let mut all = Vec::new();
    for command in help(&[]).0 {
        let (subcommands, options) = help(&[&command]);
        for sub in &subcommands {
            all.push((format!("{command} {sub}"), help(&[&command, sub]).1));
        }
        if subcommands.is_empty() {
            all.push((command, options));
        }
    }
    assert!(all.iter().any(|(c, _)| c == "cert fingerprint"), "the help scan found too little: {all:?}");
    all
}

#[test]
fn api_md_names_every_command_and_option_and_no_other() {
    let doc = read("docs/API.md");
    let section = marked(&doc, "commands");
    let code = commands();
    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `ferry ")) {
        let usage = row.split('`').nth(1).unwrap();
        let words = usage.split_whitespace().skip(1);
        let command = words
            .take_while(|w| !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            .collect::<Vec<_>>()
            .join(" ");
        let Some((_, options)) = code.iter().find(|(c, _)| *c == command) else {
            problems.push(format!("command `ferry {command}` is in docs/API.md but not in the binary"));
            continue;
        };
        for word in usage.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).filter(|w| w.starts_with("--")) {
            if !options.contains(word) {
                problems.push(format!("`ferry {command}` has no option `{word}`, which docs/API.md names"));
            }
        }
        named.insert(command);
    }
    for (command, options) in &code {
        if !named.contains(command) {
            problems.push(format!("command `ferry {command}` is not in docs/API.md §1: document it"));
        }
        for option in options {
            let mentioned = section.match_indices(option.as_str()).any(|(at, _)| {
                !section[at + option.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            });
            if !mentioned {
                problems.push(format!("option `{option}` of `ferry {command}` is not in docs/API.md §1"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The largest README, in bytes: what ferry is, how to start, and links.
const README_MAX: usize = 10_240;

#[test]
fn readme_is_small_and_links_to_the_documents() {
    let readme = read("README.md");
    assert!(readme.len() <= README_MAX, "README.md is {} bytes, over {README_MAX}: move detail to docs/", readme.len());
    let links = links(&readme);
    for needed in [
        "docs/API.md",
        "docs/operating.md",
        "docs/host-apps.md",
        "BENCHMARKS.md",
        "certs/README.md",
        "systemd/ferry.service",
    ] {
        assert!(links.iter().any(|l| l == needed), "README.md does not link to {needed}");
    }
}

/// The targets of a markdown text's inline links, without their `#fragment`.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .map(|rest| rest[..rest.find(')').unwrap_or(rest.len())].to_owned())
        .map(|target| target.split('#').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn relative_links_of_the_documents_resolve() {
    let mut documents = vec!["README.md".to_owned(), "BENCHMARKS.md".to_owned()];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/ exists") {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            documents.push(format!("docs/{name}"));
        }
    }
    let mut broken = Vec::new();
    for document in &documents {
        let dir = root().join(document).parent().unwrap().to_owned();
        for target in links(&read(document)) {
            let external = ["http://", "https://", "mailto:"].iter().any(|s| target.starts_with(s));
            if !external && !target.is_empty() && !dir.join(&target).exists() {
                broken.push(format!("{document}: link to `{target}`, which does not exist"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
