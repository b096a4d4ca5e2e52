//! Tests of the controller client against real HTTP servers on 127.0.0.1: following a
//! standby to the leader, skipping an unreachable controller, the deadline of a controller that
//! never answers, and error documents (and bodies that are not one) decoded into API errors.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};

use super::*;

/// Serves `app` on a free port of 127.0.0.1 and answers its base URL.
async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// A URL nothing listens at (a port that was free a moment ago).
async fn dead() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// A leading controller: `/v1/who` answers its name, and the bearer token it was sent.
fn leader(name: &'static str) -> Router {
    Router::new().route(
        "/v1/who",
        get(move |h: HeaderMap| async move {
            let auth = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            Json(serde_json::json!({"name": name, "auth": auth}))
        }),
    )
}

/// A standby controller: every request is answered 503, naming `leader` when given.
fn standby(leader: Option<String>) -> Router {
    Router::new().fallback(move || {
        let leader = leader.clone();
        async move {
            let mut h = HeaderMap::new();
            if let Some(l) = leader {
                h.insert(corral_api::LEADER_HEADER, l.parse().unwrap());
            }
            (StatusCode::SERVICE_UNAVAILABLE, h, Json(ApiError::unavailable("this controller stands by").body()))
        }
    })
}

fn client(urls: &[&str]) -> ControllerClient {
    ControllerClient::new(&urls.join(","), Some("sesame".into()), Settings::default()).unwrap()
}

#[tokio::test]
async fn a_standby_is_followed_to_the_leader_it_names() {
    let lead = serve(leader("lead")).await;
    let stand = serve(standby(Some(format!("{lead}/")))).await;
    // The leader is not in the list: only the standby's header leads there.
    let nowhere = dead().await;
    let c = client(&[&stand, &nowhere]);
    let v: serde_json::Value = c.get("/v1/who").await.unwrap();
    assert_eq!(v["name"], "lead");
    assert_eq!(v["auth"], "Bearer sesame");
    assert_eq!(c.leader(), lead, "the leader is remembered");
    // Clones share it, and the next request goes there first.
    let v: serde_json::Value = c.clone().get("/v1/who").await.unwrap();
    assert_eq!(v["name"], "lead");
}

#[tokio::test]
async fn when_every_controller_stands_by_the_last_ones_error_is_answered() {
    let a = serve(standby(None)).await;
    let b = serve(standby(None)).await;
    let c = client(&[&a, &b]);
    let e = c.get::<serde_json::Value>("/v1/who").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(matches!(&e, ClientError::Api(a) if a.status == 503 && a.message == "this controller stands by"), "{e:?}");
    assert_eq!(c.leader(), a, "a standby is not taken for the leader");
}

#[tokio::test]
async fn an_unreachable_controller_is_skipped() {
    let nowhere = dead().await;
    let live = serve(leader("live")).await;
    let c = client(&[&nowhere, &live]);
    let v: serde_json::Value = c.get("/v1/who").await.unwrap();
    assert_eq!(v["name"], "live");
    assert_eq!(c.leader(), live);

    let c = client(&[&nowhere]);
    let e = c.get::<serde_json::Value>("/v1/who").await.unwrap_err();
    assert!(matches!(&e, ClientError::Unreachable { why, .. } if why == "connection refused or no route"), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn a_controller_that_never_answers_is_given_up_after_the_deadline() {
    let hung = serve(Router::new().fallback(std::future::pending::<()>)).await;
    let live = serve(leader("live")).await;
    let settings = Settings { connect_timeout: Duration::from_secs(1), deadline: |_, _| Duration::from_millis(300) };
    let started = Instant::now();
    let c = ControllerClient::new(&hung, None, settings).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), c.get::<serde_json::Value>("/v1/who"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(&e, ClientError::Unreachable { why, .. } if why == "no answer within 300ms"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // With another controller in the list, that one answers.
    let c = ControllerClient::new(&format!("{hung},{live}"), None, settings).unwrap();
    let v: serde_json::Value = tokio::time::timeout(Duration::from_secs(10), c.get("/v1/who")).await.unwrap().unwrap();
    assert_eq!(v["name"], "live");
}

#[tokio::test]
async fn an_error_document_is_decoded_into_its_kind() {
    let app = Router::new()
        .route(
            "/v1/vms",
            get(|| async { (StatusCode::CONFLICT, Json(ApiError::already_exists("vm a exists").body())) }),
        )
        .route(
            "/v1/gone",
            axum::routing::delete(|| async { (StatusCode::NOT_FOUND, Json(ApiError::not_found("no vm b").body())) }),
        );
    let c = client(&[&serve(app).await]);
    let e = c.post::<_, serde_json::Value>("/v1/vms", &serde_json::json!({"name": "a"})).await.unwrap_err();
    // POST to a GET route: axum's own 405, no error document.
    assert!(matches!(&e, ClientError::Api(a) if a.status == 405 && a.kind == ErrorKind::Internal), "{e:?}");
    let e = c.get::<serde_json::Value>("/v1/vms").await.unwrap_err();
    match e {
        ClientError::Api(a) => {
            assert_eq!(a, ApiError { status: 409, kind: ErrorKind::AlreadyExists, message: "vm a exists".into() })
        }
        other => panic!("not an API error: {other:?}"),
    }
    assert_eq!(c.delete::<serde_json::Value>("/v1/gone").await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn an_error_without_a_document_is_known_by_its_status() {
    let app = Router::new()
        .route("/v1/proxy", get(|| async { (StatusCode::BAD_GATEWAY, "upstream fell over\n") }))
        .route("/v1/odd", get(|| async { (StatusCode::CONFLICT, Json(serde_json::json!({"error": 1}))) }));
    let c = client(&[&serve(app).await]);
    let e = c.get::<serde_json::Value>("/v1/proxy").await.unwrap_err();
    match e {
        ClientError::Api(a) => {
            assert_eq!(a.status, 502);
            assert_eq!(a.kind, ErrorKind::Unavailable);
            assert_eq!(a.message, "the controller answered 502 Bad Gateway: upstream fell over");
        }
        other => panic!("not an API error: {other:?}"),
    }
    assert_eq!(c.get::<serde_json::Value>("/v1/odd").await.unwrap_err().kind(), ErrorKind::Conflict);
}

#[tokio::test]
async fn a_success_that_cannot_be_read_is_not_taken_for_an_answer() {
    let app = Router::new()
        .route("/v1/text", get(|| async { "not json" }))
        .route("/v1/none", get(|| async { StatusCode::NO_CONTENT }));
    let c = client(&[&serve(app).await]);
    let e = c.get::<serde_json::Value>("/v1/text").await.unwrap_err();
    assert!(matches!(e, ClientError::Unreadable { .. }), "{e:?}");
    let none: Option<u32> = c.get("/v1/none").await.unwrap();
    assert_eq!(none, None);
}

#[tokio::test]
async fn each_controller_is_asked_on_its_own() {
    let lead = serve(leader("lead")).await;
    let stand = serve(standby(Some(lead.clone()))).await;
    let nowhere = dead().await;
    let c = client(&[&stand, &nowhere, &lead]);
    let all = c.get_each::<serde_json::Value>("/v1/who").await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].0, stand);
    assert_eq!(all[0].1.as_ref().unwrap()["error"], "this controller stands by");
    assert!(matches!(&all[1].1, Err(ClientError::Unreachable { urls, .. }) if *urls == vec![nowhere.clone()]));
    assert_eq!(all[2].1.as_ref().unwrap()["name"], "lead");
}

#[test]
fn an_empty_list_is_refused() {
    assert!(matches!(ControllerClient::new(" , ", None, Settings::default()), Err(ClientError::NoUrl)));
    assert_eq!(parse_urls("http://a:1/, http://b:2"), vec!["http://a:1", "http://b:2"]);
}
