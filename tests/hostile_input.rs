//! Hostile input, generated: the wire decoder, the config parser and the API's JSON never panic
//! and answer every input with a value or a clear error.
//!
//! `cargo fuzz` needs a nightly toolchain, which this project's machines do not have, so these are
//! property tests (proptest). A longer run:
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test --release --test hostile_input
//! ```
//!
//! A failing case is shrunk and saved under `proptest-regressions/`; commit that file, and the
//! case runs first from then on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

use ferry::api::{router, ApiState};
use ferry::exchange::{Exchange, NoLink};
use ferry::identity::Identity;
use ferry::peer::{Peer, Peers};
use ferry::store::Store;
use ferry::wire::{self, Answer, Encoding, FilePart, FormValue, Opening};

fn form_value() -> impl Strategy<Value = FormValue> {
    prop_oneof![
        ".{0,40}".prop_map(FormValue::Text),
        any::<i64>().prop_map(FormValue::Int),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(FormValue::Float),
        any::<bool>().prop_map(FormValue::Bool),
        "-?[0-9]{1,40}(\\.[0-9]{1,10})?".prop_map(FormValue::Number),
    ]
}

fn request() -> impl Strategy<Value = wire::Request> {
    (
        ".{0,40}",
        "/[a-z/]{0,30}",
        prop::collection::vec((".{0,12}", form_value()), 0..6),
        prop::option::of(".{0,64}"),
        any::<u64>(),
    )
        .prop_map(|(id, path, form, key, timeout_ms)| wire::Request {
            version: wire::PROTOCOL_VERSION,
            id,
            service: "1".into(),
            method: "POST".into(),
            path,
            form,
            encoding: Encoding::Json,
            headers: vec![],
            conversation: None,
            timeout_ms,
            file: None,
            idempotency_key: key,
        })
}

proptest! {
    #[test]
    fn the_wire_decoder_takes_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode::<Opening>(&bytes);
        let _ = wire::decode::<FilePart>(&bytes);
        let _ = wire::decode::<Answer>(&bytes);
    }

    #[test]
    fn encoded_messages_decode_to_themselves(r in request()) {
        let message = Opening::Request(r);
        let frame = wire::encode(&message).unwrap();
        prop_assert_eq!(wire::decode::<Opening>(&frame[4..]).unwrap(), message);
    }

    #[test]
    fn a_flipped_byte_never_panics_the_decoder(r in request(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut frame = wire::encode(&Opening::Request(r)).unwrap();
        let i = 4 + at.index(frame.len() - 4);
        frame[i] ^= 1 << bit;
        let _ = wire::decode::<Opening>(&frame[4..]);
    }

    #[test]
    fn the_config_parser_reports_problems_instead_of_panicking(text in config_text()) {
        let dir = std::path::Path::new("/nonexistent/node/config/ferry.toml");
        if let Err(e) = ferry::config::Config::parse(dir, &text) {
            prop_assert!(!e.problems.is_empty());
            prop_assert!(e.problems.iter().all(|p| !p.is_empty() && !p.contains('\n')), "one line per problem: {:?}", e.problems);
        }
    }
}

/// TOML-like text built from the config's own keys and values of every type, plus noise.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "name",
        "listen",
        "api",
        "data_dir",
        "certs_dir",
        "callback_base",
        "address",
        "cert",
        "id",
        "base_url",
        "allow",
        "dedupe_window",
        "idempotency_ttl",
        "state",
        "mask_fields",
        "send_roots",
        "max_size",
        "tokens",
        "heartbeat",
        "callback_hosts",
        "log",
        "receipts",
        "bogus",
    ]);
    let value = prop_oneof![
        ".{0,20}".prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(vec![
            "\"30s\"",
            "\"1h\"",
            "\"20GiB\"",
            "\"-1s\"",
            "\"127.0.0.1:7443\"",
            "[\"*\"]",
            "[1, 2]",
            "{}"
        ])
        .prop_map(str::to_owned),
    ];
    let table = prop::sample::select(vec![
        "[node]",
        "[files]",
        "[api]",
        "[evidence]",
        "[[peer]]",
        "[[service]]",
        "[other]",
        "",
    ]);
    prop::collection::vec((table, prop::collection::vec((key, value), 0..6), ".{0,3}"), 0..6).prop_map(|sections| {
        sections
            .into_iter()
            .map(|(table, pairs, noise)| {
                let body: String = pairs.into_iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
                format!("{table}\n{body}{noise}\n")
            })
            .collect()
    })
}

/// A JSON value of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body built from the real fields with values of any shape, some fields left out.
fn request_body() -> impl Strategy<Value = Value> {
    let fields = [
        "peer",
        "service",
        "path",
        "method",
        "form",
        "encoding",
        "file",
        "file_field",
        "mode",
        "reply",
        "callback",
        "headers",
        "conversation",
        "idempotency_key",
        "timeout_ms",
        "ttl_s",
        "extra",
    ];
    let plausible = prop_oneof![
        json_value(),
        Just(json!("org-b")),
        Just(json!("1")),
        Just(json!("/x")),
        Just(json!("async")),
        Just(json!({"url": "/cb"})),
    ];
    prop::collection::vec((prop::sample::select(fields.to_vec()), plausible), 0..10)
        .prop_map(|pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn state() -> ApiState {
    let dir = tempfile::tempdir().unwrap().keep();
    let peers = Peers::default();
    peers.insert(Peer::new("org-b", ["127.0.0.1:9"], [Identity::generate("org-b").unwrap().cert]));
    let store = Store::open(&dir).unwrap();
    ApiState {
        exchange: Exchange::new(Arc::new(NoLink), store.clone(), Arc::default()),
        metrics: Arc::default(),
        store,
        peers,
        name: "org-a".into(),
        keys: ferry::rollover::Keys::single(ferry::identity::Identity::generate("org-a").unwrap()).unwrap().shared(),
        tokens: Arc::new(arc_swap::ArcSwap::from_pointee(vec![])),
        callback_base: None,
        callback_hosts: Arc::new(vec![]),
        heartbeat: std::time::Duration::from_secs(15),
        send_roots: Arc::new(ferry::host_file::HostFiles::new(std::slice::from_ref(&dir), vec![])),
        timestamps: None,
        tsa_cert: None,
        reload: tokio::sync::mpsc::channel(1).0,
        pending: Default::default(),
        stopping: Default::default(),
        max_size: 1 << 20,
        config_file: Arc::new(ferry::api::ConfigFile::new(dir.join("ferry.toml"))),
        services: ferry::service::Services::new(vec![]),
        throughput: Default::default(),
    }
}

#[test]
fn the_api_answers_any_json_with_an_envelope_and_never_a_500() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = state();
    let config = ProptestConfig { cases: 256, ..ProptestConfig::default() };
    proptest!(config, |(body in prop_oneof![request_body(), json_value()], raw in any::<bool>())| {
        let bytes = if raw { body.to_string().into_bytes().into_iter().rev().collect() } else { body.to_string().into_bytes() };
        let (status, answer) = runtime.block_on(async {
            let mut request = Request::post("/v1/requests").body(Body::from(bytes)).unwrap();
            request.extensions_mut().insert(ConnectInfo("127.0.0.1:5000".parse::<SocketAddr>().unwrap()));
            let response = router(state.clone()).oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<Value>(&body))
        });
        prop_assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let answer = answer.expect("every answer is JSON");
        prop_assert!(answer["msg"].is_string(), "{}", answer);
        if !status.is_success() {
            prop_assert_eq!(answer["code"].as_u64(), Some(status.as_u16() as u64));
            prop_assert!(answer["data"]["error"].is_string(), "{}", answer);
        }
    });
}

mod support;

/// `POST path` on `node` with `body` as it is (numbers a `json!` could not hold); the status, the
/// envelope and the envelope's raw text.
async fn post_raw(node: &support::Node, path: &str, body: String) -> (StatusCode, Value, String) {
    let r = support::client()
        .post(node.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap(), text)
}

const BIG: &str = "123456789012345678901234567890";
const WITHIN: std::time::Duration = std::time::Duration::from_secs(15);

#[tokio::test]
async fn big_integers_and_decimals_reach_the_service_with_their_digits() {
    let p = support::pair().await;
    let form = format!(r#"{{"n": {BIG}, "neg": -{BIG}, "d": 1.10, "f": 2.5, "u": 18446744073709551615, "i": 7}}"#);
    for (encoding, method, want) in [
        ("json", "POST", format!(r#"{{"n":{BIG},"neg":-{BIG},"d":1.10,"f":2.5,"u":18446744073709551615,"i":7}}"#)),
        ("form", "POST", format!("n={BIG}&neg=-{BIG}&d=1.10&f=2.5&u=18446744073709551615&i=7")),
        ("form", "GET", format!("n={BIG}&neg=-{BIG}&d=1.10&f=2.5&u=18446744073709551615&i=7")),
    ] {
        let body = format!(
            r#"{{"peer": "org-b", "service": "1", "path": "/n", "method": "{method}", "encoding": "{encoding}", "form": {form}}}"#
        );
        let (status, env, _) = post_raw(&p.a, "/v1/requests", body).await;
        assert_eq!(status, StatusCode::OK, "{env}");
        let seen = p.service.seen().pop().unwrap();
        let got = if method == "GET" { seen.query.unwrap_or_default() } else { seen.body };
        assert_eq!(got, want, "{encoding} {method}");
    }
}

#[tokio::test]
async fn a_big_integer_in_reply_data_reaches_the_callback_with_its_digits() {
    let p = support::pair().await;
    let host = support::Recorder::start().await;
    let (status, env) =
        p.a.request(json!({"peer": "org-b", "service": "1", "path": "/r", "mode": "async", "reply": true,
                        "callback": {"url": format!("{}/cb", host.base_url())}}))
            .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");
    let id = env["data"]["id"].as_str().unwrap().to_owned();
    let called = p.service.wait_for(1, WITHIN).await;
    let form: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&called[0].body).unwrap();
    let data = format!(r#"{{"n":{BIG},"d":1.10,"list":[-{BIG}]}}"#);
    let reply = format!(r#"{{"callback_id": "{}", "data": {data}}}"#, form["callbackId"]);
    let (status, env, _) = post_raw(&p.b, "/v1/replies", reply).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{env}");

    let delivered = host.wait_for(1, WITHIN).await;
    let fields: std::collections::HashMap<String, String> = serde_urlencoded::from_str(&delivered[0].body).unwrap();
    assert_eq!(fields["data"], data);
    // The status view shows the same digits.
    p.a.wait_state(&id, "success", WITHIN).await;
    let text =
        support::client().get(p.a.url(&format!("/v1/requests/{id}"))).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&format!(r#""data":{data}"#)), "{text}");
}

#[tokio::test]
async fn numbers_out_of_bounds_are_refused_naming_the_field() {
    let p = support::pair().await;
    for (field, body) in [
        ("ttl_s", json!({"mode": "async", "ttl_s": 9_300_000_000_000_000u64})),
        ("ttl_s", json!({"mode": "async", "ttl_s": 10 * 366 * 86_400})),
        ("ttl_s", json!({"mode": "async", "ttl_s": 0})),
        ("timeout_ms", json!({"timeout_ms": 3_600_001})),
        ("timeout_ms", json!({"mode": "async", "timeout_ms": u64::MAX})),
    ] {
        let mut request = json!({"peer": "org-b", "service": "1", "path": "/x"});
        request.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        let (status, env) = p.a.request(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {env}");
        assert_eq!(env["data"]["field"], field, "{body}: {env}");
    }
    let (_, env) = p.a.get("/v1/requests?direction=outgoing").await;
    assert_eq!(env["data"]["items"], json!([]), "nothing was stored: {env}");
    // The monitoring queries name theirs too.
    for (query, field) in [
        ("/v1/requests?limit=99999999999999999999999", "limit"),
        ("/v1/requests?limit=0", "limit"),
        ("/v1/audit?since=-1", "since"),
        ("/v1/audit?limit=x", "limit"),
    ] {
        let (status, env) = p.a.get(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {env}");
        assert_eq!(env["data"]["field"], field, "{query}: {env}");
    }
}

#[tokio::test]
async fn long_values_are_refused_or_cut_never_echoed_whole() {
    let p = support::pair().await;
    let long = format!("/{}", "a".repeat(1 << 20));
    let (status, env) = p.a.request(json!({"peer": "org-b", "service": "1", "path": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", &env.to_string()[..200]);
    assert_eq!(env["data"]["error"], "bad_request");
    assert_eq!(env["data"]["field"], "path");
    assert!(env.to_string().len() < 400, "{}", &env.to_string()[..400]);
    assert!(p.service.seen().is_empty());

    let huge = "x".repeat(100_000);
    for body in [
        json!({"peer": huge, "service": "1", "path": "/x"}),
        json!({"peer": "org-b", "service": "1", "path": "/x", "method": huge}),
        json!({"peer": "org-b", "service": "1", "path": "/x", "mode": huge}),
        json!({"peer": "org-b", "service": "1", "path": "/x", "timeout_ms": huge}),
        json!({"peer": "org-b", "service": "1", "path": "/x", huge.clone(): 1}),
        json!({"peer": "org-b", "service": "1", "path": "/x", "mode": "async", "callback": {"url": huge}}),
    ] {
        let (status, env) = p.a.request(body).await;
        assert!(status.is_client_error(), "{status}");
        assert!(env.to_string().len() < 600, "{}", &env.to_string()[..600]);
    }
    let (status, env) = p.b.post("/v1/replies", json!({"callback_id": huge})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(env.to_string().len() < 400, "{}", &env.to_string()[..400]);
}
