//! The cluster as a whole failing: 503 for a while, 429 with Retry-After, refused
//! connections, no answer at all, wrong credentials; and `check()` saying what failed.

mod common;

use std::time::Duration;

use common::*;
use sluice_elasticsearch::config::{AuthConfig, ElasticsearchConfig};
use sluice_elasticsearch::ElasticsearchSink;
use sluice_runtime::{Delivery, Op, Sink};
use sluice_testkit::elasticsearch::Elasticsearch;

fn batch() -> Vec<std::sync::Arc<sluice_runtime::Event>> {
    vec![
        status(Op::Insert, 0x100, 1, "a"),
        status(Op::Insert, 0x110, 2, "b"),
        status(Op::Update, 0x120, 1, "c"),
    ]
}

#[tokio::test]
async fn a_503_for_a_while_is_retried_then_everything_is_applied() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    es.fail_requests(503, None, Some(2));
    for _ in 0..2 {
        let answers = write(&mut sink, &batch()).await;
        // Key 1's update waits behind its insert; nothing is delivered or rejected.
        assert_eq!(names(&answers), ["retry", "retry", "deferred"]);
        let Delivery::Retry { reason, .. } = &answers[0] else {
            unreachable!()
        };
        assert!(reason.contains("HTTP 503"), "{reason}");
    }
    assert!(es.docs("orders").is_empty());
    let answers = write(&mut sink, &batch()).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
    assert_eq!(source(&es, 1).unwrap()["status"], "c");
    assert_eq!(source(&es, 2).unwrap()["status"], "b");
}

#[tokio::test]
async fn a_429_carries_the_clusters_retry_after() {
    let es = Elasticsearch::start().await;
    let mut sink = sink(&es);
    es.fail_requests(429, Some(7), Some(1));
    let answers = write(&mut sink, &batch()[..1]).await;
    let Delivery::Retry { after, reason } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(*after, Some(Duration::from_secs(7)));
    assert!(reason.contains("429"), "{reason}");
}

#[tokio::test]
async fn whole_request_refusals_are_retried_never_parked() {
    // A 401 is no single event's fault: parking the batch would empty the stream into
    // the DLQ. It is retried until the credentials are fixed or retry.max_elapsed stops
    // the sink.
    let es = Elasticsearch::start().await;
    es.require_authorization(Some("Basic ZWxhc3RpYzpyaWdodA=="));
    let mut config = config(&es);
    config.auth = Some(AuthConfig::basic("elastic", "wrong"));
    let mut sink = ElasticsearchSink::new(config.clone()).unwrap();
    let answers = write(&mut sink, &batch()).await;
    let Delivery::Retry { reason, .. } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert!(
        reason.contains("HTTP 401") && reason.contains("security_exception"),
        "{reason}"
    );
    let err = sink.check().await.unwrap_err();
    assert!(err.contains("401"), "{err}");

    config.auth = Some(AuthConfig::basic("elastic", "right"));
    let mut sink = ElasticsearchSink::new(config).unwrap();
    assert!(write(&mut sink, &batch())
        .await
        .iter()
        .all(Delivery::is_delivered));
    sink.check().await.unwrap();
}

#[tokio::test]
async fn api_keys_and_url_credentials_authenticate() {
    let es = Elasticsearch::start().await;
    // base64("id:secret")
    es.require_authorization(Some("ApiKey aWQ6c2VjcmV0"));
    for key in ["aWQ6c2VjcmV0", "id:secret"] {
        let mut config = config(&es);
        config.auth = Some(AuthConfig::api_key(key));
        let mut sink = ElasticsearchSink::new(config).unwrap();
        sink.check().await.unwrap();
    }
    es.require_authorization(Some("Basic ZWxhc3RpYzpwQHNz"));
    let url = es.url().replace("http://", "http://elastic:p%40ss@");
    let mut sink = ElasticsearchSink::new(ElasticsearchConfig::new(url)).unwrap();
    sink.check().await.unwrap();
    let answers = write(&mut sink, &batch()).await;
    assert!(answers.iter().all(Delivery::is_delivered), "{answers:?}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_check_says_so() {
    let port = sluice_testkit::free_port();
    let mut sink = ElasticsearchSink::new(ElasticsearchConfig::new(format!(
        "http://user:hunter2@127.0.0.1:{port}"
    )))
    .unwrap();
    let answers = write(&mut sink, &batch()).await;
    let Delivery::Retry { reason, .. } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert!(reason.contains("cannot connect"), "{reason}");
    assert!(
        !reason.contains("hunter2"),
        "credentials never reach a reason: {reason}"
    );
    let err = sink.check().await.unwrap_err();
    assert!(
        err.contains("cannot connect") && err.contains(&port.to_string()),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_retried() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let mut config = ElasticsearchConfig::new(format!("http://127.0.0.1:{port}"));
    config.timeout = Duration::from_millis(300);
    let mut sink = ElasticsearchSink::new(config).unwrap();
    let answers = write(&mut sink, &batch()).await;
    let Delivery::Retry { reason, .. } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert!(reason.contains("no response within 300ms"), "{reason}");
    held.abort();
}

#[tokio::test]
async fn check_tells_elasticsearch_and_opensearch_from_other_servers() {
    let es = Elasticsearch::start().await;
    sink(&es).check().await.unwrap();

    // A server that answers `GET /` without saying what it is, and one that says OpenSearch.
    for (body, ok) in [
        (r#"{"status": "up"}"#, false),
        (
            r#"{"version": {"distribution": "opensearch", "number": "2.19.0"}}"#,
            true,
        ),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/", axum::routing::get(move || async move { body }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut other =
            ElasticsearchSink::new(ElasticsearchConfig::new(format!("http://127.0.0.1:{port}")))
                .unwrap();
        let result = other.check().await;
        assert_eq!(result.is_ok(), ok, "{body}: {result:?}");
        if let Err(e) = result {
            assert!(
                e.contains("neither Elasticsearch") && e.contains("OpenSearch"),
                "{e}"
            );
        }
        server.abort();
    }
}
