//! Per-key order across batches in flight, when an earlier batch fails: a later batch's
//! change of the same row, delivered while the earlier one failed, is answered deferred (so
//! the engine sends it again after the failed one), and a truncate is not sent after a
//! failure before it.
//!
//! The failure is a topic that does not exist: with `topic: "t-{op}"` a row's insert and
//! its update go to different topics, so one can fail while the other goes through.

mod common;

use serde_json::json;
use sluice_runtime::Op;
use sluice_runtime::Sink as _;
use sluice_testkit::kafka::Tansu;

#[tokio::test(flavor = "multi_thread")]
async fn a_later_batchs_change_of_a_failed_key_is_deferred() {
    let tansu = Tansu::start();
    common::create_topic(&tansu, "t-update", 2).await;
    let mut sink = common::sink(&tansu, json!({"topic": "t-{op}", "timeout": "3s"}));
    let first = vec![
        common::change("items", Op::Insert, 0x100, 0, 1, 0),
        common::change("items", Op::Insert, 0x100, 1, 2, 0),
    ];
    let second = vec![
        common::change("items", Op::Update, 0x200, 0, 1, 1),
        common::change("items", Op::Update, 0x200, 1, 3, 1),
    ];
    let first_answers = sink.send(&first).await;
    let second_answers = sink.send(&second).await;
    let first_answers = first_answers.await;
    assert_eq!(
        common::names(&first_answers),
        ["retry", "retry"],
        "t-insert is missing"
    );
    let second_answers = second_answers.await;
    assert_eq!(
        common::names(&second_answers),
        ["deferred", "delivered"],
        "row 1's update went through before its insert is sent again: deferred, to be sent after"
    );
    // It was written all the same: the engine's resend makes a second, later copy.
    assert_eq!(common::read(&tansu, "t-update").await.len(), 2);
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_is_not_sent_after_an_earlier_batch_failed() {
    let tansu = Tansu::start();
    common::create_topic(&tansu, "t-update", 2).await;
    common::create_topic(&tansu, "t-truncate", 1).await;
    let mut sink = common::sink(&tansu, json!({"topic": "t-{op}", "timeout": "3s"}));
    let first = vec![common::change("items", Op::Insert, 0x100, 0, 1, 0)];
    let second = vec![
        common::change("items", Op::Update, 0x200, 0, 3, 1),
        common::truncate("items", 0x200, 1),
        common::change("items", Op::Update, 0x200, 2, 4, 1),
    ];
    let first_answers = sink.send(&first).await;
    // The truncate waits for everything before it, finds the failure, and holds back.
    let second_answers = sink.send(&second).await;
    assert_eq!(common::names(&first_answers.await), ["retry"]);
    assert_eq!(
        common::names(&second_answers.await),
        ["delivered", "deferred", "deferred"]
    );
    assert!(common::read(&tansu, "t-truncate").await.is_empty());
    let updates: Vec<String> = common::read(&tansu, "t-update")
        .await
        .iter()
        .map(common::Record::id)
        .collect();
    assert_eq!(updates, ["0/200:0"], "nothing after the truncate was sent");
    sink.close().await;
}
