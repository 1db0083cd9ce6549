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
//! ```
//!
//! `api` and `link` never import each other: they meet at [`store`] and [`wire`].

pub mod api;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod evidence;
pub mod host_file;
pub mod identity;
pub mod inbox;
pub mod link;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod peer;
pub mod receipt;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod wire;
