//! The outbox, end to end, through a real PostgreSQL, a real Kafka-protocol broker (tansu)
//! and the real binary: outbox rows and logical messages of committed transactions reach
//! the topic once each, keyed by aggregate id, in commit order per key, and rolled-back
//! ones never; `delete_after_capture` keeps the table empty; non-transactional messages
//! are refused with a notice; the polling source delivers what WAL capture delivers (a
//! lower id committed late included), two polling relays publish each event once, and
//! rows stay in the table while the broker is down.

mod common;
use sluice_testkit as harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio_postgres::Client;

use common::{http_get, sample, wait_streaming};
use harness::kafka::Tansu;
use harness::sluice::command;
use harness::{eventually, free_port, scratch_dir, Postgres, Sluice};

const SCHEMA: &str = "
    create table orders (id bigserial primary key, customer text not null, total numeric not null);
    create table outbox (
        id bigserial primary key,
        aggregate_type text not null,
        aggregate_id text not null,
        type text not null,
        payload jsonb not null,
        headers jsonb
    );";

/// One message read back from a topic.
#[derive(Clone, Debug)]
struct Record {
    key: Option<String>,
    value: Value,
    headers: HashMap<String, String>,
}

impl Record {
    fn event(&self) -> &Value {
        &self.value["event"]
    }

    /// The `seq` of the event's payload.
    fn seq(&self) -> i64 {
        self.event()["payload"]["seq"].as_i64().unwrap_or(-1)
    }
}

/// Every message of `topic` (one partition each test creates), in offset order; reads until
/// nothing more arrives for a second.
async fn read(tansu: &Tansu, topic: &str) -> Vec<Record> {
    let (brokers, topic) = (tansu.brokers(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "sluice-outbox-tests")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("a consumer");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Offset(0))
            .unwrap();
        consumer.assign(&assignment).expect("assign");
        let mut records = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(1) {
            let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let Ok(message) = message else { continue };
            last = Instant::now();
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: serde_json::from_slice(message.payload().unwrap_or(b"null"))
                    .expect("a JSON envelope"),
                headers,
            });
        }
        records
    })
    .await
    .unwrap()
}

/// Read `topic` until it holds `n` messages (then a moment more, to see extras).
async fn wait_for(tansu: &Tansu, topic: &str, n: usize, sluice: &[&Sluice]) -> Vec<Record> {
    let started = Instant::now();
    loop {
        let records = read(tansu, topic).await;
        if records.len() >= n {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return read(tansu, topic).await;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = sluice.iter().map(|s| s.log()).collect();
            panic!(
                "{topic}: {} of {n} messages after 60 s; logs:\n{}",
                records.len(),
                logs.join("\n----\n")
            );
        }
    }
}

/// A Kafka sink section on `topic` (one fixed topic, so each test reads one partition).
fn kafka_sink(tansu: &Tansu, topic: &str) -> String {
    format!(
        "sinks:\n  bus:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n\
         delivery:\n  retry: {{ initial: 50ms, max: 1s }}\nstate: state.db\n",
        tansu.brokers()
    )
}

/// A WAL pipeline with the outbox (`outbox_extra` inside its map) and `messages: [orders]`.
fn wal_pipeline(pg: &Postgres, tansu: &Tansu, topic: &str, outbox_extra: &str) -> String {
    format!(
        "pipeline: wal\nsource:\n  type: postgres\n  url: {}\n  \
         outbox: {{ table: public.outbox{outbox_extra} }}\n  messages: [orders]\n{}",
        pg.url(),
        kafka_sink(tansu, topic)
    )
}

/// A polling pipeline on `public.outbox`, with a memory journal: the table is the backlog,
/// rows leave it once every sink has committed them.
fn poll_pipeline(pg: &Postgres, tansu: &Tansu, topic: &str) -> String {
    format!(
        "pipeline: relay\nsource:\n  type: postgres_outbox_poll\n  url: {}\n  \
         poll_interval: 100ms\n  batch_size: 50\njournal: {{ type: memory }}\n{}",
        pg.url(),
        kafka_sink(tansu, topic)
    )
}

async fn setup(name: &str) -> (Postgres, Client, Tansu) {
    let pg = Postgres::start(name);
    let client = pg.client().await;
    client.batch_execute(SCHEMA).await.unwrap();
    (pg, client, Tansu::start())
}

/// One order and its event, committed together.
async fn order(client: &mut Client, aggregate: &str, seq: i64) {
    let tx = client.transaction().await.unwrap();
    write_order(&tx, aggregate, seq).await;
    tx.commit().await.unwrap();
}

async fn write_order(tx: &tokio_postgres::Transaction<'_>, aggregate: &str, seq: i64) -> i64 {
    tx.execute(
        "insert into orders (customer, total) values ($1, $2::text::numeric)",
        &[&aggregate, &seq.to_string()],
    )
    .await
    .unwrap();
    tx.query_one(
        "insert into outbox (aggregate_type, aggregate_id, type, payload, headers)
         values ('order', $1, 'order_placed', jsonb_build_object('seq', $2::bigint),
                 jsonb_build_object('tenant', 'acme'))
         returning id",
        &[&aggregate, &seq],
    )
    .await
    .unwrap()
    .get(0)
}

/// Each key's `seq`s in the order they arrived.
fn per_key(records: &[Record]) -> BTreeMap<String, Vec<i64>> {
    let mut keys: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in records {
        keys.entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r.seq());
    }
    keys
}

/// No event id twice.
#[track_caller]
fn assert_once(records: &[Record]) {
    let mut seen = HashSet::new();
    for r in records {
        let id = r.event()["id"].to_string();
        assert!(seen.insert(id.clone()), "event {id} arrived twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_orders_publish_once_in_commit_order_and_rollbacks_publish_nothing() {
    let (pg, mut client, tansu) = setup("outbox-wal").await;
    tansu.create_topic("orders", 1);
    let dir = scratch_dir("outbox-wal");
    let sluice = Sluice::start(&dir, &wal_pipeline(&pg, &tansu, "orders", ""));
    wait_streaming(&pg, "sluice_wal").await;

    // 3 aggregates, 10 events each, interleaved; a rollback between them.
    for seq in 0..10 {
        for aggregate in ["a", "b", "c"] {
            order(&mut client, aggregate, seq).await;
        }
        if seq == 4 {
            let tx = client.transaction().await.unwrap();
            write_order(&tx, "rolled-back", 99).await;
            tx.execute(
                "select pg_logical_emit_message(true, 'orders', $1)",
                &[&json!({"aggregate_type": "order", "aggregate_id": "rolled-back", "payload": {"seq": 98}}).to_string()],
            )
            .await
            .unwrap();
            tx.rollback().await.unwrap();
        }
    }
    // Logical messages and outbox rows of one transaction, interleaved.
    let tx = client.transaction().await.unwrap();
    for seq in 0..6 {
        if seq % 2 == 0 {
            let content = json!({"id": format!("m{seq}"), "type": "order_noted", "aggregate_type": "order",
                                 "aggregate_id": "mixed", "payload": {"seq": seq}});
            tx.execute(
                "select pg_logical_emit_message(true, 'orders', $1)",
                &[&content.to_string()],
            )
            .await
            .unwrap();
        } else {
            write_order(&tx, "mixed", seq).await;
        }
    }
    tx.commit().await.unwrap();

    let records = wait_for(&tansu, "orders", 36, &[&sluice]).await;
    assert_eq!(records.len(), 36, "{records:#?}");
    assert_once(&records);
    let keys = per_key(&records);
    for aggregate in ["a", "b", "c"] {
        assert_eq!(keys[aggregate], (0..10).collect::<Vec<_>>(), "{aggregate}");
    }
    assert_eq!(
        keys["mixed"],
        (0..6).collect::<Vec<_>>(),
        "messages and rows in commit order"
    );
    assert!(!keys.contains_key("rolled-back"));
    let first = records
        .iter()
        .find(|r| r.key.as_deref() == Some("a"))
        .unwrap();
    assert_eq!(first.value["op"], "event");
    assert_eq!(first.event()["type"], "order_placed");
    assert_eq!(first.event()["aggregate_type"], "order");
    assert_eq!(first.event()["headers"]["tenant"], "acme");
    assert_eq!(first.value["source"]["table"], "outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_capture_keeps_the_outbox_empty_and_delivers_every_event() {
    let (pg, mut client, tansu) = setup("outbox-delete").await;
    tansu.create_topic("orders", 1);
    let dir = scratch_dir("outbox-delete");
    let pipeline = wal_pipeline(&pg, &tansu, "orders", ", delete_after_capture: true");
    let sluice = Sluice::start(&dir, &pipeline);
    wait_streaming(&pg, "sluice_wal").await;

    for seq in 0..20 {
        let tx = client.transaction().await.unwrap();
        let id = write_order(&tx, &format!("o{}", seq % 4), seq).await;
        tx.execute("delete from outbox where id = $1", &[&id])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let records = wait_for(&tansu, "orders", 20, &[&sluice]).await;
    assert_eq!(
        records.len(),
        20,
        "every event, and no delete: {records:#?}"
    );
    assert_once(&records);
    assert!(records.iter().all(|r| r.value["op"] == "event"));
    for (key, seqs) in per_key(&records) {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
    }
    let left: i64 = client
        .query_one("select count(*) from outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the outbox stays empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_transactional_messages_are_refused_with_a_notice_and_never_delivered() {
    let (pg, mut client, tansu) = setup("outbox-nontx").await;
    tansu.create_topic("orders", 1);
    let dir = scratch_dir("outbox-nontx");
    let admin = free_port();
    let pipeline = format!(
        "{}admin: 127.0.0.1:{admin}\n",
        wal_pipeline(&pg, &tansu, "orders", "")
    );
    let sluice = Sluice::start(&dir, &pipeline);
    wait_streaming(&pg, "sluice_wal").await;

    let message = |seq: i64| {
        json!({"aggregate_type": "order", "aggregate_id": "m", "payload": {"seq": seq}}).to_string()
    };
    // Written at once, even though its transaction rolls back: it must not be delivered.
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "select pg_logical_emit_message(false, 'orders', $1)",
        &[&message(1)],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    client
        .execute(
            "select pg_logical_emit_message(false, 'orders', $1)",
            &[&message(2)],
        )
        .await
        .unwrap();
    client
        .execute(
            "select pg_logical_emit_message(true, 'orders', $1)",
            &[&message(3)],
        )
        .await
        .unwrap();

    let records = wait_for(&tansu, "orders", 1, &[&sluice]).await;
    let seqs: Vec<i64> = records.iter().map(Record::seq).collect();
    assert_eq!(seqs, [3], "only the transactional message");
    let series = r#"sluice_source_notices_total{kind="non_transactional_message"}"#;
    let notices = eventually(Duration::from_secs(10), "the notices counted", async || {
        let (_, metrics) = http_get(&sluice, admin, "/metrics").await;
        sample(&metrics, series).filter(|n| *n >= 2.0)
    })
    .await;
    assert_eq!(notices, 2.0);
    let (_, status) = http_get(&sluice, admin, "/status").await;
    assert!(status.contains("non_transactional_message"), "{status}");
    assert!(
        sluice.log().contains("pg_logical_emit_message(true"),
        "the warning says what to do"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_delivers_what_wal_capture_delivers_a_late_lower_id_included() {
    let (pg, mut client, tansu) = setup("outbox-same").await;
    tansu.create_topic("wal", 1);
    tansu.create_topic("poll", 1);
    let (wal_dir, poll_dir) = (
        scratch_dir("outbox-same-wal"),
        scratch_dir("outbox-same-poll"),
    );
    let wal = Sluice::start(&wal_dir, &wal_pipeline(&pg, &tansu, "wal", ""));
    wait_streaming(&pg, "sluice_wal").await;
    let poll = Sluice::start(&poll_dir, &poll_pipeline(&pg, &tansu, "poll"));

    for seq in 0..30 {
        order(&mut client, &format!("k{}", seq % 5), seq).await;
    }
    // A lower id committed after a higher one was read by the relay.
    let mut late_client = pg.client().await;
    let late = late_client.transaction().await.unwrap();
    let late_id = write_order(&late, "late", 100).await;
    order(&mut client, "early", 101).await;
    wait_for(&tansu, "poll", 31, &[&poll]).await;
    late.commit().await.unwrap();
    for seq in 30..40 {
        order(&mut client, &format!("k{}", seq % 5), seq).await;
    }

    let from_wal = wait_for(&tansu, "wal", 42, &[&wal]).await;
    let from_poll = wait_for(&tansu, "poll", 42, &[&poll]).await;
    assert_eq!(from_wal.len(), 42);
    assert_eq!(from_poll.len(), 42, "{from_poll:#?}");
    assert_once(&from_poll);
    assert_eq!(
        per_key(&from_wal),
        per_key(&from_poll),
        "the same events per key, in the same order"
    );
    let by_id = |records: &[Record]| -> BTreeMap<String, (Option<String>, Value)> {
        records
            .iter()
            .map(|r| {
                (
                    r.event()["id"].to_string(),
                    (r.key.clone(), r.event().clone()),
                )
            })
            .collect()
    };
    assert_eq!(
        by_id(&from_wal),
        by_id(&from_poll),
        "the same envelopes' events"
    );
    let polled = &from_poll[31];
    assert_eq!(
        polled.event()["id"],
        json!(late_id),
        "the late row arrives after the higher id"
    );
    assert_eq!(polled.value["op"], "event");
    assert_eq!(polled.value["source"]["table"], "outbox");
    assert!(polled.headers.contains_key("id"), "{:?}", polled.headers);
    eventually(
        Duration::from_secs(10),
        "the published rows deleted",
        async || {
            let n: i64 = client
                .query_one("select count(*) from outbox", &[])
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_event_once_and_the_standby_takes_over() {
    let (pg, mut client, tansu) = setup("outbox-two").await;
    tansu.create_topic("relay", 1);
    let pipeline = poll_pipeline(&pg, &tansu, "relay");
    let (dir_a, dir_b) = (scratch_dir("outbox-two-a"), scratch_dir("outbox-two-b"));
    let mut a = Sluice::start(&dir_a, &pipeline);
    let mut b = Sluice::start(&dir_b, &pipeline);

    // Both run while the application writes.
    for seq in 0..200 {
        order(&mut client, &format!("k{}", seq % 7), seq).await;
    }
    let records = wait_for(&tansu, "relay", 200, &[&a, &b]).await;
    assert_eq!(records.len(), 200);
    assert_once(&records);
    let polling = |s: &Sluice| s.log().contains("this relay polls the outbox");
    assert!(polling(&a) ^ polling(&b), "exactly one relay polls");
    let standby = |s: &Sluice| s.log().contains("standing by");
    assert!(standby(&a) || standby(&b), "the other stands by");

    // Stop the polling one: the standby takes over with what is left.
    let (active, other) = if polling(&a) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(active.terminate(Duration::from_secs(20)), 0);
    for seq in 200..300 {
        order(&mut client, &format!("k{}", seq % 7), seq).await;
    }
    let records = wait_for(&tansu, "relay", 300, &[other]).await;
    assert_eq!(records.len(), 300);
    assert_once(&records);
    for (key, seqs) in per_key(&records) {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
    }
    assert!(other.log().contains("this relay polls the outbox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_rows_stay_until_delivered() {
    let (pg, mut client, mut tansu) = setup("outbox-stay").await;
    tansu.create_topic("relay", 1);
    let dir = scratch_dir("outbox-stay");
    let relay = Sluice::start(&dir, &poll_pipeline(&pg, &tansu, "relay"));
    order(&mut client, "first", 0).await;
    wait_for(&tansu, "relay", 1, &[&relay]).await;

    tansu.stop();
    for seq in 1..=10 {
        order(&mut client, "k", seq).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count = async |client: &Client| -> i64 {
        client
            .query_one("select count(*) from outbox", &[])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&client).await, 10, "read, not delivered: kept");

    // The broker comes back empty (it keeps nothing): every kept row is delivered.
    tansu.start_again();
    tansu.create_topic("relay", 1);
    let records = wait_for(&tansu, "relay", 10, &[&relay]).await;
    assert_eq!(
        per_key(&records)["k"],
        (1..=10).collect::<Vec<_>>(),
        "{records:#?}"
    );
    eventually(
        Duration::from_secs(10),
        "the delivered rows deleted",
        async || (count(&client).await == 0).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_checks_the_polled_table() {
    let (pg, client, tansu) = setup("outbox-validate").await;
    tansu.create_topic("relay", 1);
    client
        .batch_execute(
            "create table by_uuid (id uuid primary key, aggregate_type text, aggregate_id text,
                                   type text, payload jsonb);
             create role relay login;
             grant select, update on outbox to relay;",
        )
        .await
        .unwrap();
    let dir = scratch_dir("outbox-validate");
    let validate = |yaml: String| {
        std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
        let out = command(&dir, &["validate", "pipeline.yaml", "--connect"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };

    let (ok, said) = validate(poll_pipeline(&pg, &tansu, "relay"));
    assert!(ok, "{said}");
    assert!(said.contains("integer id"), "{said}");

    let uuid = poll_pipeline(&pg, &tansu, "relay").replace(
        "type: postgres_outbox_poll\n",
        "type: postgres_outbox_poll\n  table: by_uuid\n",
    );
    let (ok, said) = validate(uuid);
    assert!(!ok, "{said}");
    assert!(
        said.contains("source.columns.id") && said.contains("uuid"),
        "{said}"
    );

    let renamed = poll_pipeline(&pg, &tansu, "relay").replace(
        "type: postgres_outbox_poll\n",
        "type: postgres_outbox_poll\n  columns: { type: kind }\n",
    );
    let (ok, said) = validate(renamed);
    assert!(!ok, "{said}");
    assert!(said.contains("no column `kind`"), "{said}");

    let url = format!("postgres://relay@127.0.0.1:{}/postgres", pg.port);
    let (ok, said) = validate(poll_pipeline(&pg, &tansu, "relay").replace(&pg.url(), &url));
    assert!(!ok, "{said}");
    assert!(said.contains("may not DELETE"), "{said}");
}
