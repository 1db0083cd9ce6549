//! `ferry demo`: two nodes and a sample service in one process on free loopback ports.
//!
//! The nodes are set up exactly as two admins would (init, peer add, service add) in a temporary
//! folder, then a host app's synchronous GET and POST go from org-a to org-b's service.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::Query;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};

use super::{init, peer, service, CliError};
use crate::config::Config;
use crate::node::{self, Sockets};

/// Runs the demo and prints what happened.
pub fn run() -> Result<(), CliError> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(demo()).map_err(|e| CliError::failed(format!("demo failed: {e:#}")))
}

async fn demo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = Sockets { api: loopback_tcp()?, link: loopback_udp()? };
    let b = Sockets { api: loopback_tcp()?, link: loopback_udp()? };
    let (a_api, a_link) = (a.api.local_addr()?, a.link.local_addr()?);
    let (b_api, b_link) = (b.api.local_addr()?, b.link.local_addr()?);
    let service = sample_service(b_api).await?;
    out!("sample service of org-b listening on http://{service}");
    let (callback_url, mut callbacks) = callback_receiver().await?;
    let (a_dir, b_dir) = (dir.path().join("org-a"), dir.path().join("org-b"));
    let fa = init::init(&a_dir, "org-a", a_link, a_api)?;
    let fb = init::init(&b_dir, "org-b", b_link, b_api)?;
    out!("ferry init org-a: {fa}\nferry init org-b: {fb}");
    let (a_conf, b_conf) = (a_dir.join("config/ferry.toml"), b_dir.join("config/ferry.toml"));
    peer::add(&a_conf, "org-b", &[b_link.to_string()], &[b_dir.join("certs/node.pem")])?;
    peer::add(&b_conf, "org-a", &[a_link.to_string()], &[a_dir.join("certs/node.pem")])?;
    service::add(&b_conf, "1", &format!("http://{service}"), &["org-a".to_owned()])?;
    out!("peers pinned both ways; org-b offers service 1 to org-a\n");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut nodes = Vec::new();
    for (conf, sockets) in [(a_conf, a), (b_conf, b)] {
        let config = Config::load(&conf)?;
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        nodes.push(tokio::spawn(node::run(config, sockets, shutdown)));
    }

    let host = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{a_api}/v1/requests");
    for body in [
        json!({"peer": "org-b", "service": "1", "path": "/user/list", "method": "GET", "form": {"pageSize": 1}}),
        json!({"peer": "org-b", "service": "1", "path": "/user/create", "method": "POST",
               "form": {"name": "Ada", "admin": true}, "conversation": "demo-1"}),
    ] {
        out!("host app → org-a: POST /v1/requests {body}");
        let started = std::time::Instant::now();
        let answer: Value = host.post(&url).json(&body).send().await?.json().await?;
        out!("org-a → host app in {:.1} ms: {}\n", started.elapsed().as_secs_f64() * 1000.0, pretty(&answer));
        anyhow::ensure!(answer["code"] == 0 && answer["data"]["status"] == 200, "the request failed: {answer}");
    }

    let body = json!({"peer": "org-b", "service": "1", "path": "/report", "form": {"month": "2026-10"},
                      "mode": "async", "reply": true, "callback": {"url": callback_url}});
    out!("host app → org-a: POST /v1/requests {body}");
    let answer: Value = host.post(&url).json(&body).send().await?.json().await?;
    out!("org-a → host app at once: {answer}");
    let id = answer["data"]["id"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(answer["msg"] == "Accepted", "the async request was not accepted: {answer}");
    loop {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(15), callbacks.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no callback within 15 s"))?
            .ok_or_else(|| anyhow::anyhow!("the callback receiver stopped"))?;
        out!("callback → host app: seq={} end={} data={}", delivery["seq"], delivery["end"], delivery["data"]);
        if delivery["end"] == "true" {
            break;
        }
    }
    let status: Value = host.get(format!("http://{a_api}/v1/requests/{id}")).send().await?.json().await?;
    out!(
        "GET /v1/requests/{id} on org-a: state {}, {} replies\n",
        status["data"]["state"],
        status["data"]["replies"].as_array().map_or(0, |r| r.len())
    );

    // An upload: a file from org-a's outbox goes with an async request.
    let upload = a_dir.join("outbox/invoice-2026-10.pdf");
    std::fs::write(&upload, vec![b'%'; 3 * 1024 * 1024 + 17])?;
    let body = json!({"peer": "org-b", "service": "1", "path": "/upload", "mode": "async", "file": upload});
    out!("host app → org-a: POST /v1/requests {body}");
    let answer: Value = host.post(&url).json(&body).send().await?.json().await?;
    let id = answer["data"]["id"].as_str().unwrap_or_default().to_owned();
    let status = wait_done(&host, a_api, &id).await?;
    out!(
        "org-a: upload {} ({} bytes, sha256 {}); org-b's service answered {}\n",
        status["state"],
        status["transfer"]["bytes_done"],
        status["transfer"]["sha256"],
        status["response"]["body"]
    );

    // A download approved through org-b's inbox: the operator drops the file into the folder.
    let body = json!({"peer": "org-b", "service": "1", "path": "/download", "form": {"doc": "contract-7"},
                      "mode": "async", "reply": true, "callback": {"url": callback_url}});
    out!("host app → org-a: POST /v1/requests {body}");
    let answer: Value = host.post(&url).json(&body).send().await?.json().await?;
    let id = answer["data"]["id"].as_str().unwrap_or_default().to_owned();
    let inbox = b_dir.join("data/inbox");
    let callback_id = loop {
        let listed = std::fs::read_dir(inbox.join(".pending"))?
            .flatten()
            .find_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").map(str::to_owned));
        if let Some(c) = listed {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    out!("org-b's operator sees {}/.pending/{callback_id}.json and approves it:", inbox.display());
    std::fs::create_dir_all(inbox.join(&callback_id))?;
    std::fs::write(inbox.join(&callback_id).join(".contract-7.pdf.tmp"), b"%PDF-1.7 signed contract")?;
    std::fs::rename(
        inbox.join(&callback_id).join(".contract-7.pdf.tmp"),
        inbox.join(&callback_id).join("contract-7.pdf"),
    )?;
    out!("  wrote {}/{callback_id}/contract-7.pdf", inbox.display());
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(15), callbacks.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no callback for the download within 15 s"))?
        .ok_or_else(|| anyhow::anyhow!("the callback receiver stopped"))?;
    let received = delivery.get("file").cloned().unwrap_or_default();
    out!(
        "callback → host app: id={} data={} file={received} ({} bytes)\n",
        delivery["id"],
        delivery["data"],
        std::fs::metadata(&received).map(|m| m.len()).unwrap_or(0)
    );
    anyhow::ensure!(delivery["id"] == id, "the callback was for another request");

    let peers: Value = host.get(format!("http://{a_api}/v1/peers")).send().await?.json().await?;
    out!("GET /v1/peers on org-a: {}", pretty(&peers["data"]));

    let _ = stop.send(true);
    for n in nodes {
        n.await??;
    }
    out!();
    for (name, own, peer, theirs) in [("org-a", &a_dir, "org-b", &b_dir), ("org-b", &b_dir, "org-a", &a_dir)] {
        let certs =
            HashMap::from([(peer.to_owned(), vec![crate::identity::load_cert(&theirs.join("certs/node.pem"))?])]);
        let intact = crate::store::verify_log(&crate::store::Location::Sqlite(own.join("data")), &certs, None)?
            .map_err(|b| anyhow::anyhow!("the evidence log of {name} is broken at seq {}: {}", b.seq, b.why))?;
        out!(
            "ferry audit verify on {name}: intact, {} records, {} receipts from {peer} verified",
            intact.records,
            intact.receipts
        );
    }
    out!("\ndemo complete: both nodes stopped cleanly");
    Ok(())
}

/// Polls a request's status until it is done.
async fn wait_done(host: &reqwest::Client, api: SocketAddr, id: &str) -> anyhow::Result<Value> {
    for _ in 0..300 {
        let status: Value = host.get(format!("http://{api}/v1/requests/{id}")).send().await?.json().await?;
        if status["data"]["state"] == "success" || status["data"]["state"] == "failed" {
            return Ok(status["data"].clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("request {id} did not finish within 15 s")
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn loopback_tcp() -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind("127.0.0.1:0")
}

fn loopback_udp() -> std::io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind("127.0.0.1:0")
}

/// The host app's callback endpoint on org-a's side: each delivery's fields go to the channel.
async fn callback_receiver() -> std::io::Result<(String, tokio::sync::mpsc::UnboundedReceiver<HashMap<String, String>>)>
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/callback",
        post(move |Form(fields): Form<HashMap<String, String>>| async move {
            let _ = tx.send(fields);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/callback", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, rx))
}

/// org-b's sample service: lists users on GET, echoes what it got on POST, and answers
/// `/report` later with two replies through org-b's `POST /v1/replies`.
async fn sample_service(node_api: SocketAddr) -> std::io::Result<SocketAddr> {
    fn seen(headers: &HeaderMap) -> Value {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        json!({"peer": h("x-ferry-peer"), "request_id": h("x-ferry-request-id"), "conversation": h("x-ferry-conversation")})
    }
    let app = Router::new()
        .route(
            "/user/list",
            get(|headers: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                let size: usize = q.get("pageSize").and_then(|s| s.parse().ok()).unwrap_or(10);
                let users: Vec<_> = ["Ada", "Grace", "Edsger"].iter().take(size).collect();
                Json(json!({"users": users, "seen": seen(&headers)}))
            }),
        )
        .route(
            "/upload",
            post(|Form(form): Form<HashMap<String, String>>| async move {
                let path = form.get("file").cloned().unwrap_or_default();
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                out!("org-b's service got a file: {path} ({bytes} bytes)");
                Json(json!({"stored": true, "bytes": bytes}))
            }),
        )
        .route("/download", post(|| async { Json(json!({"queued": "for the operator"})) }))
        .route(
            "/report",
            post(move |Form(form): Form<HashMap<String, String>>| async move {
                let callback_id = form.get("callbackId").cloned().unwrap_or_default();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder().no_proxy().build().expect("a plain HTTP client");
                    let replies = format!("http://{node_api}/v1/replies");
                    for (part, end) in [(1, false), (2, true)] {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        let reply =
                            json!({"callback_id": callback_id, "data": {"part": part, "rows": part * 10}, "end": end});
                        out!("org-b's service → org-b: POST /v1/replies {reply}");
                        let _ = client.post(&replies).json(&reply).send().await;
                    }
                });
                Json(json!({"accepted": true}))
            }),
        )
        .route(
            "/user/create",
            post(|headers: HeaderMap, Form(form): Form<HashMap<String, String>>| async move {
                Json(json!({"created": form, "seen": seen(&headers)}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
