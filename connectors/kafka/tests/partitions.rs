//! Keys and partitions: every change of a row lands on one partition (the one the Java
//! producer would pick), in stream order, over several batches in flight; rows of a table
//! without a key all go to partition 0, in order.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use sluice_runtime::Sink as _;
use sluice_runtime::{Event, Op};
use sluice_testkit::kafka::Tansu;

const PARTITIONS: i32 = 4;

/// Kafka's `Utils.murmur2`, as the Java producer's default partitioner uses it.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java producer picks for `key`.
fn java_partition(key: &str) -> i32 {
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % PARTITIONS
}

#[test]
fn murmur2_matches_kafka() {
    // Values from Kafka's UtilsTest.testMurmur2.
    assert_eq!(murmur2(b"21"), -973932308);
    assert_eq!(murmur2(b"foobar"), -790332482);
    assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
    assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
    assert_eq!(
        murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
        -58897971
    );
    assert_eq!(murmur2(b"abc"), 479470107);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_key_lands_on_one_partition_in_stream_order() {
    let tansu = Tansu::start();
    let topic = common::topic("orders");
    common::create_topic(&tansu, &topic, PARTITIONS).await;
    let mut sink = common::sink(&tansu, json!({"topic": topic}));

    // 5 transactions, each changing 24 rows once: 5 batches, all in flight at once.
    let batches: Vec<Vec<Arc<Event>>> = (0..5u64)
        .map(|tx| {
            (0..24)
                .map(|key| {
                    let op = if tx == 0 { Op::Insert } else { Op::Update };
                    common::change("items", op, 0x100 * (tx + 1), key as u32, key, tx as i64)
                })
                .collect()
        })
        .collect();
    let mut pending = Vec::new();
    for batch in &batches {
        pending.push(sink.send(batch).await);
    }
    for answers in pending {
        assert!(answers.await.iter().all(|d| d.is_delivered()));
    }

    let records = common::read(&tansu, &topic).await;
    assert_eq!(records.len(), 5 * 24, "every change, once");
    let mut by_key: BTreeMap<String, Vec<&common::Record>> = BTreeMap::new();
    for r in &records {
        by_key
            .entry(r.key.clone().expect("a key"))
            .or_default()
            .push(r);
    }
    let mut used = std::collections::BTreeSet::new();
    for (key, records) in &by_key {
        let partition = records[0].partition;
        used.insert(partition);
        assert_eq!(partition, java_partition(key), "key {key}");
        assert!(
            records.iter().all(|r| r.partition == partition),
            "key {key} on one partition"
        );
        // `read` returns each partition in offset order: the changes in stream order.
        let ns: Vec<i64> = records
            .iter()
            .map(|r| r.json()["after"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [0, 1, 2, 3, 4], "key {key} in stream order");
    }
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_rows_go_to_partition_zero_in_order() {
    let tansu = Tansu::start();
    let topic = common::topic("log");
    common::create_topic(&tansu, &topic, PARTITIONS).await;
    let mut sink = common::sink(&tansu, json!({"topic": topic}));
    let batch: Vec<Arc<Event>> = (0..30)
        .map(|i| {
            let mut e = (*common::change("log", Op::Insert, 0x100, i, i64::from(i), 0)).clone();
            e.key = None;
            Arc::new(e)
        })
        .collect();
    let answers = common::write(&mut sink, &batch).await;
    assert!(answers.iter().all(|d| d.is_delivered()), "{answers:?}");
    let records = common::read(&tansu, &topic).await;
    assert_eq!(records.len(), 30);
    assert!(records.iter().all(|r| r.partition == 0 && r.key.is_none()));
    let ids: Vec<String> = records.iter().map(common::Record::id).collect();
    let expected: Vec<String> = batch.iter().map(|e| e.id()).collect();
    assert_eq!(ids, expected, "in stream order");
    sink.close().await;
}
