//! The disk journal: what survives a reopen, a torn tail, trims, the byte budget, readers
//! behind the memory.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::lsn::{Lsn, Position};
use crate::testing;

/// A fresh folder under the system's temp dir, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "sluice-journal-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }

    fn config(&self, segment_bytes: u64, max_bytes: u64, retention: Duration) -> DiskConfig {
        DiskConfig {
            dir: self.0.clone(),
            max_bytes,
            retention,
            segment_bytes,
        }
    }

    fn segments(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Transaction `n` (commit LSN `n * 100`): `events` inserts, then its end.
fn tx(n: u64, events: u32) -> Vec<Entry> {
    let mut entries: Vec<Entry> = (0..events)
        .map(|i| {
            let mut e = testing::event("t", crate::event::Op::Insert, n * 100, i);
            e.after = Some(testing::id_row(i64::from(i)));
            e.source.ts_micros = n as i64;
            Entry::event(e)
        })
        .collect();
    entries.push(Entry::Commit {
        commit_lsn: Lsn(n * 100),
        end_lsn: Lsn(n * 100 + 50),
    });
    entries
}

fn describe(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match e {
            Entry::Event(r) => r.event.position.to_string(),
            Entry::Commit { end_lsn, .. } => format!("end {end_lsn}"),
        })
        .collect()
}

async fn read_all(j: &Journal, r: ReaderId) -> Vec<Entry> {
    j.close();
    let mut out = Vec::new();
    while let Some((_, batch)) = j.read(r, 7, Duration::ZERO).await {
        out.extend(batch);
    }
    out
}

const BIG: u64 = 1 << 30;

#[tokio::test]
async fn entries_survive_a_reopen_and_numbering_continues() {
    let dir = Dir::new("reopen");
    let (j, opened) =
        Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 100, Lsn(7)).unwrap();
    assert!(opened.created);
    assert_eq!(opened.start_lsn, Lsn(7));
    for n in 1..=3 {
        j.append(tx(n, 2)).await;
    }
    let synced = j.shutdown().await.unwrap();
    assert_eq!((synced.seq, synced.end_lsn), (9, Lsn(350)));
    drop(j);

    let (j, opened) =
        Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 100, Lsn(0)).unwrap();
    assert!(!opened.created);
    assert_eq!(
        opened.start_lsn,
        Lsn(7),
        "the start is the journal's own, not the new argument"
    );
    assert_eq!(opened.synced.end_lsn, Lsn(350));
    assert_eq!(opened.last, Some(Position::new(Lsn(300), 1)));
    assert_eq!(j.head(), 9);
    let r = j.register_at(0);
    j.append(tx(4, 1)).await;
    let all = read_all(&j, r).await;
    assert_eq!(all.len(), 11);
    assert_eq!(
        describe(&all[..4]),
        ["0/64:0", "0/64:1", "end 0/96", "0/C8:0"],
        "the reader starts at the beginning, from the files"
    );
    assert_eq!(describe(&all[9..]), ["0/190:0", "end 0/1C2"]);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_what_came_before_is_kept() {
    let dir = Dir::new("torn");
    let (j, _) = Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 100, Lsn(0)).unwrap();
    j.append(tx(1, 3)).await;
    j.shutdown().await;
    drop(j);
    let segment = dir.0.join(&dir.segments()[0]);
    let intact = std::fs::metadata(&segment).unwrap().len();
    // A crash in the middle of a record: a frame that promises more than is there.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(&200u32.to_le_bytes()).unwrap();
    file.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
    drop(file);

    let (j, opened) =
        Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 100, Lsn(0)).unwrap();
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        intact,
        "cut back"
    );
    assert_eq!(j.head(), 4);
    assert_eq!(opened.synced.end_lsn, Lsn(150));
    // Appends go on after the cut and read back whole.
    j.append(tx(2, 1)).await;
    let r = j.register_at(0);
    assert_eq!(read_all(&j, r).await.len(), 6);
}

#[tokio::test]
async fn a_damaged_record_in_the_tail_ends_it() {
    let dir = Dir::new("crc");
    let (j, _) = Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 100, Lsn(0)).unwrap();
    j.append(tx(1, 1)).await;
    j.append(tx(2, 1)).await;
    j.shutdown().await;
    drop(j);
    // Flip a byte in the last record's body: its checksum no longer matches.
    let segment = dir.0.join(&dir.segments()[0]);
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let (j, opened) =
        Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 100, Lsn(0)).unwrap();
    assert_eq!(
        j.head(),
        3,
        "tx 1 (2 entries) and tx 2's event survive; its end is cut"
    );
    assert_eq!(opened.synced.end_lsn, Lsn(150));
    assert_eq!(opened.last, Some(Position::new(Lsn(200), 0)));
}

#[tokio::test]
async fn a_reader_behind_the_memory_reads_the_files_and_holds_no_one_back() {
    let dir = Dir::new("behind");
    // 4 entries in memory; the slow reader falls far behind.
    let (j, _) = Journal::open_disk(dir.config(64 << 10, BIG, Duration::ZERO), 4, Lsn(0)).unwrap();
    let (slow, fast) = (j.register(), j.register());
    for n in 1..=50 {
        tokio::time::timeout(Duration::from_secs(5), j.append(tx(n, 3)))
            .await
            .expect("the slow reader never blocks appends");
        // The fast one keeps up.
        while j.backlog(fast) > 0 {
            j.read(fast, 100, Duration::ZERO).await.unwrap();
        }
    }
    assert!(j.len() <= 8, "memory stays bounded: {}", j.len());
    let all = read_all(&j, slow).await;
    assert_eq!(all.len(), 200);
    let positions: Vec<Position> = all
        .iter()
        .filter_map(|e| match e {
            Entry::Event(r) => Some(r.event.position),
            _ => None,
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order");
}

#[tokio::test]
async fn seek_finds_the_first_entry_a_sink_still_needs() {
    let dir = Dir::new("seek");
    let (j, _) = Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 3, Lsn(0)).unwrap();
    for n in 1..=4 {
        j.append(tx(n, 2)).await;
    }
    j.wait_synced(j.head()).await;
    // Delivered 0/C8:1 but not its transaction's end: the end is still needed.
    let seq = j.seek(Position::new(Lsn(200), 1), Lsn(150)).await.unwrap();
    assert_eq!(seq, 5);
    // Finished transaction 2 whole: the next is transaction 3.
    let seq = j.seek(Position::new(Lsn(200), 1), Lsn(250)).await.unwrap();
    assert_eq!(seq, 6);
    // Nothing yet: from the first entry.
    assert_eq!(j.seek(Position::ZERO, Lsn(0)).await.unwrap(), 0);
    // Past everything: the head.
    assert_eq!(
        j.seek(Position::new(Lsn(999), 0), Lsn(999)).await.unwrap(),
        12
    );
}

#[tokio::test]
async fn finished_segments_are_trimmed_after_the_retention_and_the_start_moves() {
    let dir = Dir::new("trim");
    let (j, _) =
        Journal::open_disk(dir.config(64 << 10, BIG, Duration::ZERO), 1000, Lsn(0)).unwrap();
    let r = j.register();
    // Rows of ~1 KiB: many segments of 64 KiB.
    for n in 1..=40 {
        let mut entries = tx(n, 10);
        for e in &mut entries {
            if let Entry::Event(r) = e {
                let mut ev = (*r.event).clone();
                ev.after = Some({
                    let mut row = testing::id_row(1);
                    row.push("pad".into(), crate::event::Value::Text("x".repeat(1000)));
                    row
                });
                *e = Entry::event(ev);
            }
        }
        j.append(entries).await;
    }
    j.wait_synced(j.head()).await;
    let before = dir.segments().len();
    assert!(before > 4, "{before} segments");
    // The reader finished half: segments wholly before that go (retention 0).
    let half = j.head() / 2;
    j.read(r, half as usize, Duration::ZERO).await.unwrap();
    j.release(half);
    let after = dir.segments().len();
    assert!(after < before && after > 1, "{before} → {after}");
    let status = j.disk_status().unwrap();
    assert!(status.first_seq > 0 && status.first_seq <= half);
    j.shutdown().await;
    drop(j);
    let (_, opened) =
        Journal::open_disk(dir.config(64 << 10, BIG, Duration::ZERO), 10, Lsn(0)).unwrap();
    assert!(
        opened.start_lsn > Lsn(0),
        "the trimmed part is recorded as gone"
    );
}

#[tokio::test]
async fn segments_within_the_retention_are_kept_for_rewinds() {
    let dir = Dir::new("retain");
    let (j, _) = Journal::open_disk(
        dir.config(64 << 10, BIG, Duration::from_secs(3600)),
        1000,
        Lsn(0),
    )
    .unwrap();
    for n in 1..=20 {
        j.append(tx(n, 200)).await;
    }
    j.wait_synced(j.head()).await;
    let before = dir.segments().len();
    j.release(j.head());
    assert_eq!(
        dir.segments().len(),
        before,
        "finished but within the retention"
    );
}

#[tokio::test]
async fn a_full_journal_pauses_appends_until_trims_free_space() {
    let dir = Dir::new("full");
    // Two segments of 64 KiB at most.
    let (j, _) = Journal::open_disk(
        dir.config(64 << 10, 128 << 10, Duration::from_secs(3600)),
        100_000,
        Lsn(0),
    )
    .unwrap();
    let r = j.register();
    let mut n = 1;
    let blocked = loop {
        let append = tokio::time::timeout(Duration::from_millis(500), j.append(tx(n, 100)));
        if append.await.is_err() {
            break n;
        }
        j.wait_synced(j.head()).await;
        n += 1;
        assert!(n < 1000, "the budget never stopped appends");
    };
    assert!(
        j.disk_status().unwrap().full,
        "status says the journal is full"
    );
    // Pending: the sink finishes everything; over budget, the retention gives way.
    let j2 = j.clone();
    let pending = tokio::spawn(async move { j2.append(tx(blocked, 100)).await });
    while j.backlog(r) > 0 {
        j.read(r, 1000, Duration::ZERO).await.unwrap();
    }
    j.release(j.head());
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the append goes on once space is freed")
        .unwrap();
    assert!(!j.disk_status().unwrap().full);
}

#[tokio::test]
async fn segments_that_do_not_follow_each_other_are_refused() {
    let dir = Dir::new("gap");
    let (j, _) =
        Journal::open_disk(dir.config(64 << 10, BIG, Duration::ZERO), 100, Lsn(0)).unwrap();
    for n in 1..=20 {
        j.append(tx(n, 200)).await;
    }
    j.shutdown().await;
    drop(j);
    let segments = dir.segments();
    assert!(segments.len() >= 3);
    std::fs::remove_file(dir.0.join(&segments[1])).unwrap();
    let Err(e) = Journal::open_disk(dir.config(64 << 10, BIG, Duration::ZERO), 100, Lsn(0)) else {
        panic!("a journal with a missing segment opened");
    };
    assert!(e.to_string().contains("does not follow"), "{e}");
}

/// A reader that starts, or falls behind, in the middle of a large segment starts at the
/// nearest mark, before and after a reopen (the marks are in the `.idx` summary).
#[tokio::test]
async fn readers_start_mid_segment_at_the_right_entry() {
    let dir = Dir::new("marks");
    let (j, _) = Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 8, Lsn(0)).unwrap();
    for n in 1..=100 {
        j.append(tx(n, 9)).await;
    }
    j.wait_synced(j.head()).await;
    for start in [0, 1, 255, 256, 257, 700, 999] {
        let r = j.register_at(start);
        let (seq, batch) = j.read(r, 3, Duration::ZERO).await.unwrap();
        assert_eq!(seq, start);
        // Transaction n + 1 holds entries 10n .. 10n + 9; entry 9 of each is its end.
        let n = start / 10 + 1;
        let expected = match start % 10 {
            9 => format!("end {}", Lsn(n * 100 + 50)),
            i => Position::new(Lsn(n * 100), i as u32).to_string(),
        };
        assert_eq!(describe(&batch[..1]), [expected], "reading from {start}");
        j.detach(r);
    }
    j.shutdown().await;
    drop(j);
    let (j, _) = Journal::open_disk(dir.config(BIG, 2 * BIG, Duration::ZERO), 8, Lsn(0)).unwrap();
    let marks = |j: &Journal| {
        j.disk.as_ref().unwrap().log.segments.lock().unwrap()[0]
            .marks
            .len()
    };
    assert_eq!(marks(&j), 4, "a mark every 256 entries of 1000");
    let r = j.register_at(513);
    let (_, batch) = j.read(r, 1, Duration::ZERO).await.unwrap();
    assert_eq!(describe(&batch), [Position::new(Lsn(5200), 3).to_string()]);
}

/// A reopened journal trims nothing a sink has not finished: after a restart nothing counts
/// as finished until the sinks say so, even when the journal is over its budget (a restart
/// used to treat everything up to the head as finished and trim what a sink still needed).
#[tokio::test]
async fn a_reopened_full_journal_keeps_what_no_sink_finished() {
    let dir = Dir::new("reopen-full");
    let config = || dir.config(64 << 10, 128 << 10, Duration::ZERO);
    let (j, _) = Journal::open_disk(config(), 100_000, Lsn(0)).unwrap();
    let mut n = 1;
    loop {
        let append = tokio::time::timeout(Duration::from_millis(300), j.append(tx(n, 100)));
        if append.await.is_err() {
            break;
        }
        j.wait_synced(j.head()).await;
        n += 1;
        assert!(n < 1000, "the budget never stopped appends");
    }
    let first = j.disk_status().unwrap().first_seq;
    j.shutdown().await;
    drop(j);

    // Restarted: a sink that had finished nothing reads from the first entry kept.
    let (j, _) = Journal::open_disk(config(), 100_000, Lsn(0)).unwrap();
    let r = j.register_at(first);
    let j2 = j.clone();
    let append = tokio::spawn(async move { j2.append(tx(5000, 100)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        j.disk_status().unwrap().first_seq,
        first,
        "nothing the sink needs was trimmed"
    );
    assert!(!append.is_finished(), "the full journal waits for the sink");
    let (_, batch) = j.read(r, 1, Duration::ZERO).await.unwrap();
    assert_eq!(batch.len(), 1, "the oldest entry is still there to read");
    // Once the sink has finished everything, the append goes on.
    while j.backlog(r) > 0 {
        j.read(r, 1000, Duration::ZERO).await.unwrap();
    }
    j.release(j.head());
    tokio::time::timeout(Duration::from_secs(5), append)
        .await
        .expect("the append goes on once space is freed")
        .unwrap();
}
