//! ferry: a peer-to-peer file and message relay between organizations.
//!
//! Each organization runs one node. Host applications call their own node over a local REST API;
//! nodes talk to each other over QUIC with mutual TLS, each pinning the other's certificate.
//! Data flows one way:
//!
//! ```text
//! host app ──REST──▶ api ──┐                                          ┌─▶ deliver ──REST──▶ local service
//! inbox watcher ───────────┴─▶ store ─▶ link ══ QUIC, mTLS ══▶ link ─▶ store ─┤
//!                             (SQLite)       (files: transfer)               └─▶ callbacks ──REST──▶ host app
//!
//! synchronous: api ─▶ exchange ─▶ link ══▶ link ─▶ deliver, the answer back the same way (the
//!              caller waits; the store only records the exchange)
//! ```
//!
//! `api` and `link` never import each other: they meet at [`store`] and [`wire`], and a
//! synchronous request reaches the link through [`exchange`]'s [`Carrier`](exchange::Carrier),
//! which [`node`] wires. [`metrics`] are handed to each worker by [`node`], not kept in the store.
//!
//! The outside contract (command line, config, REST API, callbacks, inbox, evidence log) is
//! `docs/API.md`; this page is the inside.
//!
//! # Layout
//!
//! | module | what it is |
//! | --- | --- |
//! | `main.rs` | the thin binary: calls [`cli::main`] |
//! | [`cli`] | the command line: `init`, `peer add` and `service add` (`peer`, `service`: they keep the file's comments and are validated before they are written), `check [--connect]`, `audit`, `demo`, the operator commands over the local API (`operator`, `table`), journald log lines (`journal`) |
//! | [`config`] | the TOML config, parsed completely; every problem is reported at once |
//! | [`config_file`] | the config file edited in place (comments kept, validated before it is written): the service and peer edits the command line and the console share |
//! | [`identity`] | the node's key and self-signed certificate (rcgen), and fingerprints |
//! | [`tls`] | rustls configs that require and pin certificates both ways; the ALPN ids `ferry/2`, `ferry/1+anchored` and `ferry/1` |
//! | [`wire`] | the node-to-node protocol: postcard frames, protocol version, close and reset codes; the checks both nodes apply to paths, fields and headers |
//! | [`peer`] | the peer table (by name and by fingerprint) and each peer's connection state |
//! | [`service`] | this node's service table: who may call what, lifecycle states, the boundary a peer's request keeps to, masked forms |
//! | [`node`] | wiring: bound sockets plus a shutdown future become a running node; reload on SIGHUP |
//! | [`systemd`] | sd_notify: READY, WATCHDOG while the store answers, RELOADING, STOPPING, STATUS |
//! | [`metrics`] | the Prometheus metrics (`prometheus-client`) behind `GET /metrics` |
//! | [`throughput`] | the throughput history the node keeps: its counters sampled every 10 s for 24 h (`GET /v1/stats/history`) |
//! | [`api`] | the local REST API (axum): router and OpenAPI document from the same annotated handlers ([`api::openapi`]), token and loopback guard, requests, replies, monitoring, events, the operator console, the envelope and error kinds ([`api::envelope`]) |
//! | [`exchange`] | synchronous requests: from the API handler's task straight to the link ([`exchange::Carrier`]), counted, logged and handed to the store as evidence |
//! | [`host_file`] | a host's files, opened confined beneath `files.send_roots`, never the node's own |
//! | [`store`] | the one place of durable state (SQLite, or PostgreSQL shared by an organization's members: `sql`, `schema`; one writer thread, group commit): the members alive and their takeover (`members`), the queue of requests and replies by domain (`outgoing`, `incoming`, `replies`, `callbacks`; leases and recovery in `queue`), their stored form (`stored`, versioned), files, read views (`records`) on read-only connections beside the writer (`reader`), idempotency and duplicate checks (`trust`), the evidence log's table (`evidence`) |
//! | [`evidence`], [`receipt`] | the evidence log's records, hash chain and offline check; receipts: Merkle batches, signing and checking |
//! | [`rollover`] | key rotation: the old key's statement for the new certificate, the keys a node presents during the grace ([`rollover::Keys`]) |
//! | [`anchor`] | cross-checks this node's evidence log against a peer's export: the heads, messages and receipts of ours it holds |
//! | [`bundle`] | evidence bundles: one exchange's records, the chain segment to its anchor (a time-stamp or a checkpoint a peer keeps), the peer's receipts with Merkle paths and the certificates, in one file a third party checks offline |
//! | [`timestamp`] | trusted time (RFC 3161): asking a time-stamping authority to stamp a digest, and checking a token offline against the TSA's certificate |
//! | [`stamping`] | the task that has the TSA stamp the evidence log's head every `tsa_every` and at shutdown, and reports how it goes |
//! | [`link`] | the QUIC endpoint: dialing and keeping peer connections, the outbound stream per request, store-and-forward (`forward`), files (`upload`), the inbound handler, receipts both ways, transport settings |
//! | [`transfer`] | files on the wire: a pipeline of 1 MiB chunks with a CRC32C each and one SHA-256 per side, resumption, direct I/O and incremental sync on the receiving side |
//! | [`deliver`] | calls to this node's local services for peers (the link's [`service::Caller`], and the worker for stored requests): the HTTP call, the `X-Ferry-*` headers |
//! | [`callbacks`] | delivery of results to host apps' callback URLs, in `seq` order, retried until `ttl_s` |
//! | [`worker`] | the loop the workers (the link's `forward`, [`deliver`], [`callbacks`]) run: claim what is due up to their free slots, a task per item or per peer's batch, idle until woken or the next tick, drain at stop |
//! | [`backoff`] | how long to wait before trying again: one doubling schedule with optional jitter, and the workers' schedules (callbacks, unreachable services, peers away) |
//! | [`inbox`] | the inbox folder: operators answer reply-mode requests by dropping files |
//!
//! Outside `src/`: `tests/` (end-to-end tests with real nodes on loopback, in process or as
//! `ferry run` processes; the fault suite, property tests, the load test, the browser test of the
//! console, the command line's tests one file per command (`cli_*.rs`), `contract.rs` holding
//! `docs/API.md` to the code), `tests/support/` (the one harness tests and benches share: nodes in
//! process and as processes, the recording service, CPU samplers, network namespaces, the lossy
//! relay), `benches/` (ferry alone; `cargo bench` installs nothing) and `bench/compare.sh` (ferry
//! against nginx, scp and rsync, which it installs) (`BENCHMARKS.md`), `config/` (example
//! configs), `certs/` (certificate exchange), `systemd/` (the unit), `docs/`, and `.ci/run`, what
//! CI runs: `cargo fmt --check`, `cargo clippy --all-targets -- -D warnings`, `cargo doc` with its
//! links checked, then `cargo test` with `CI=true` after `.ci/setup-browser` (Chromium for
//! `tests/console.rs`) and `.ci/setup-openssl` (`openssl ts` as a real time-stamping authority for
//! `tests/timestamp.rs`). Under CI a test that cannot run for want of a tool fails with the reason
//! instead of skipping; the fault suite's lossy phase uses `tc netem` in network namespaces where
//! the kernel has it, else a seeded userspace UDP relay on loopback (`tests/support/lossy.rs`: 5%
//! of datagrams dropped each way, 25 ms delay each way).

pub mod anchor;
pub mod api;
pub mod backoff;
pub mod bundle;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod deliver;
pub mod evidence;
pub mod exchange;
pub mod host_file;
pub mod housekeeping;
pub mod identity;
pub mod inbox;
pub mod link;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod pending;
pub mod receipt;
pub mod rollover;
pub mod service;
pub mod stamping;
pub mod store;
pub mod systemd;
pub mod throughput;
pub mod timestamp;
pub mod tls;
pub mod transfer;
pub mod wire;
pub mod worker;
