//! The host-app contract as a developer meets it first: a service id written as a number, nested
//! JSON in a JSON body, and errors that name the field and the shape it needs in words.

mod support;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::pair;

/// What the recorder service answered: the call it saw, echoed.
fn echoed(env: &Value) -> &Value {
    &env["data"]["body"]
}

#[tokio::test]
async fn a_service_id_may_be_a_number_and_nested_json_goes_in_a_json_body() {
    let p = pair().await;
    let form = json!({"user": {"name": "Ada", "roles": ["admin", "ops"]}, "ids": [1, 2], "n": 12345678901234567890u64});
    let (status, env) =
        p.a.request(json!({"peer": "org-b", "service": 1, "path": "/x", "encoding": "json", "form": form})).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    let body: Value = serde_json::from_str(echoed(&env)["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, form, "the service gets the nested values as the host wrote them");
    let seen = p.service.seen();
    assert_eq!(seen[0].headers["content-type"], "application/json");

    // Without a JSON body, a nested value has no text form: refused, saying what to add.
    let (status, env) =
        p.a.request(json!({"peer": "org-b", "service": "1", "path": "/x", "form": {"user": {"name": "Ada"}}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{env}");
    assert_eq!(env["data"]["field"], "form.user");
    assert!(env["msg"].as_str().unwrap().contains(r#""encoding": "json""#), "{env}");
    let (status, env) =
        p.a.request(json!({"peer": "org-b", "service": "1", "path": "/x", "form": {"user": null}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{env}");
    assert_eq!(env["data"]["field"], "form.user");

    // Ids that are not non-negative integers are not guessed at.
    for service in [json!(-1), json!(1.5), json!(true), json!(["1"])] {
        let (status, env) = p.a.request(json!({"peer": "org-b", "service": service, "path": "/x"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{service}: {env}");
        assert_eq!(env["data"]["field"], "service", "{env}");
        assert!(env["msg"].as_str().unwrap().contains("a string or a non-negative integer"), "{env}");
    }
    assert_eq!(p.service.seen().len(), 1, "no refused request reached the service");
}

#[tokio::test]
async fn errors_say_what_is_expected_in_words_never_a_rust_type() {
    let p = pair().await;
    let client = reqwest::Client::new();
    let cases: [(&str, Option<&str>, &str, &str); 5] = [
        (
            "/v1/requests",
            Some("callback"),
            r#"{"peer":"org-b","service":"1","path":"/x","mode":"async","callback":"http://127.0.0.1:9/cb"}"#,
            r#"an object like {"url""#,
        ),
        ("/v1/requests", None, "peer=org-b&service=1&path=/x", "the body is not JSON"),
        ("/v1/requests", None, r#"["org-b", "1", "/x"]"#, "the body is JSON but not an object"),
        ("/v1/requests", None, "", "the body is not JSON"),
        ("/v1/replies", None, r#""cb-1""#, "the body is JSON but not an object"),
    ];
    for (path, field, body, expected) in cases {
        let response = client.post(p.a.url(path)).body(body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let env: Value = response.json().await.unwrap();
        let msg = env["msg"].as_str().unwrap();
        assert!(msg.contains(expected), "{body}: {msg}");
        for rust in ["struct", "CallbackSpec", "NewRequest", "NewReply", "map", "sequence"] {
            assert!(!msg.contains(rust), "{body}: a Rust word `{rust}` in {msg}");
        }
        assert_eq!(env["data"]["field"].as_str(), field, "{body}: {env}");
    }
}
