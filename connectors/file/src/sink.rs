//! [`FileSink`]: the engine's [`Sink`] as JSON Lines appended to a file or stdout.
//!
//! A batch becomes one buffer (each event's cached envelope bytes, [`Event::json`], and a
//! newline), written with one `write` call on a blocking thread, then fsynced if asked.
//! Any I/O error (disk full, a removed directory, a closed pipe) answers the whole batch
//! [`Delivery::Retry`]: the engine retries with backoff, and past `retry.max_elapsed` the
//! sink stops. Nothing is ever dropped.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_runtime::{Delivery, Event, Sink};

use crate::config::FileConfig;
use crate::writer::{Target, Writer};
use crate::FileError;

/// Appends envelopes to a file, one per line.
///
/// - **Ordering**: lines are written in batch order, so the file is in stream order.
/// - **Concurrency**: one batch at a time, one write per batch.
/// - **Idempotence**: at-least-once. A failed batch is cut back out of the file before
///   it is retried; after a crash, events after the committed offset are appended again,
///   so a reader deduplicates by `id` (unique and increasing along the stream).
/// - **Durability**: with `fsync: true` a batch is delivered only once it is on disk.
pub struct FileSink {
    target: Target,
    fsync: bool,
    /// The open target, or `None` before the first batch and after a failure (the next
    /// batch opens it again: the directory may have come back, the disk may have room).
    writer: Option<Writer>,
    /// Reused from batch to batch so a steady stream allocates nothing here.
    buf: Vec<u8>,
}

impl FileSink {
    /// Validate `config`. Opens nothing: the file is created with the first batch.
    pub fn new(config: FileConfig) -> Result<Self, FileError> {
        if config.path.as_os_str().is_empty() {
            return Err(FileError::EmptyPath);
        }
        let target = Target::new(&config.path);
        if target == Target::Stdout && config.fsync {
            return Err(FileError::FsyncStdout);
        }
        let text = config.path.to_string_lossy();
        if text.ends_with('/') || config.path.is_dir() {
            return Err(FileError::Directory {
                path: text.trim_end_matches('/').to_string(),
            });
        }
        Ok(FileSink {
            target,
            fsync: config.fsync,
            writer: None,
            buf: Vec::new(),
        })
    }

    /// Write `self.buf` to the target on a blocking thread.
    async fn flush_buffer(&mut self) -> Result<(), String> {
        let target = self.target.clone();
        let writer = self.writer.take();
        let buf = std::mem::take(&mut self.buf);
        let fsync = self.fsync;
        let joined = tokio::task::spawn_blocking(move || {
            let result = match writer {
                Some(w) => Ok(w),
                None => Writer::open(&target).map_err(|e| format!("opening {target}: {e}")),
            }
            .and_then(|mut w| match w.append(&buf, fsync) {
                Ok(()) => Ok(w),
                Err(e) => Err(format!("writing to {target}: {e}")),
            });
            (result, buf)
        })
        .await;
        match joined {
            Ok((result, buf)) => {
                self.buf = buf;
                self.writer = Some(result?);
                Ok(())
            }
            Err(e) => Err(format!("the write to {} did not finish: {e}", self.target)),
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &[Arc<Event>]) -> Vec<Delivery> {
        if batch.is_empty() {
            return Vec::new();
        }
        self.buf.clear();
        for event in batch {
            self.buf.extend_from_slice(event.json());
            self.buf.push(b'\n');
        }
        match self.flush_buffer().await {
            Ok(()) => vec![Delivery::Delivered; batch.len()],
            Err(reason) => {
                tracing::debug!(target_file = %self.target, %reason, "file write failed");
                vec![Delivery::retry(reason); batch.len()]
            }
        }
    }

    /// Checks, without creating anything, that the file could be opened for appending:
    /// an existing file is opened; otherwise its nearest existing ancestor must be a
    /// directory.
    async fn check(&mut self) -> Result<(), String> {
        let Target::File(path) = &self.target else {
            return Ok(());
        };
        if path.exists() {
            return std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| format!("cannot open {} for appending: {e}", path.display()));
        }
        for dir in path.ancestors().skip(1) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if dir.is_dir() {
                return Ok(());
            }
            if dir.exists() {
                return Err(format!(
                    "cannot create {}: {} is not a directory",
                    path.display(),
                    dir.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn event(index: u32) -> Arc<Event> {
        sluice_runtime::testing::insert("t", 32, index)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-file-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn batches_are_appended_as_json_lines_in_order() {
        let dir = scratch("lines");
        let path = dir.join("nested/out.jsonl");
        let mut sink = FileSink::new(FileConfig::new(&path)).unwrap();
        let first: Vec<_> = (0..3).map(event).collect();
        let second: Vec<_> = (3..5).map(event).collect();
        assert_eq!(sink.write(&first).await, vec![Delivery::Delivered; 3]);
        assert_eq!(sink.write(&second).await, vec![Delivery::Delivered; 2]);
        assert!(sink.write(&[]).await.is_empty());

        let got = lines(&path);
        assert_eq!(got.len(), 5);
        for (i, line) in got.iter().enumerate() {
            assert_eq!(line["id"], format!("0/20:{i}"));
            assert_eq!(line["key"]["id"], i);
            assert_eq!(line["op"], "insert");
        }
        // Byte for byte what the envelope encodes to.
        let text = std::fs::read(&path).unwrap();
        assert!(text.starts_with(first[0].json()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_new_sink_appends_to_an_existing_file() {
        let dir = scratch("reopen");
        let path = dir.join("out.jsonl");
        let mut config = FileConfig::new(&path);
        config.fsync = true;
        for i in 0..2 {
            let mut sink = FileSink::new(config.clone()).unwrap();
            assert!(sink.write(&[event(i)]).await[0].is_delivered());
            sink.close().await;
        }
        assert_eq!(lines(&path).len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_full_disk_is_a_retry_for_every_event() {
        // Writing to /dev/full fails with ENOSPC, like a full disk.
        let mut sink = FileSink::new(FileConfig::new("/dev/full")).unwrap();
        let got = sink.write(&[event(0), event(1)]).await;
        assert_eq!(got.len(), 2);
        for d in got {
            match d {
                Delivery::Retry { reason, .. } => {
                    assert!(reason.contains("/dev/full"), "{reason}")
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_missing_directory_is_retried_until_it_can_be_created() {
        let dir = scratch("blocked");
        std::fs::create_dir_all(&dir).unwrap();
        // A plain file stands where the parent directory should be.
        let blocker = dir.join("sub");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("out.jsonl");
        let mut sink = FileSink::new(FileConfig::new(&path)).unwrap();
        assert!(sink.check().await.is_err());
        assert!(matches!(
            sink.write(&[event(0)]).await[0],
            Delivery::Retry { .. }
        ));
        std::fs::remove_file(&blocker).unwrap();
        assert!(sink.check().await.is_ok());
        assert!(sink.write(&[event(0)]).await[0].is_delivered());
        assert_eq!(lines(&path).len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_configurations_name_their_key() {
        let e = FileSink::new(FileConfig::new("")).err().unwrap();
        assert_eq!(e.field(), "path");
        let mut c = FileConfig::new("-");
        c.fsync = true;
        let e = FileSink::new(c).err().unwrap();
        assert_eq!(e.field(), "fsync");
        assert!(e.to_string().contains("standard output"), "{e}");
        let e = FileSink::new(FileConfig::new("out/")).err().unwrap();
        assert_eq!(e.field(), "path");
        let e = FileSink::new(FileConfig::new(std::env::temp_dir()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("directory"), "{e}");
        assert!(FileSink::new(FileConfig::new("-")).is_ok());
    }

    #[tokio::test]
    async fn check_creates_nothing() {
        let dir = scratch("check");
        let mut sink = FileSink::new(FileConfig::new(dir.join("a/b/out.jsonl"))).unwrap();
        assert!(sink.check().await.is_ok());
        assert!(!dir.exists());
    }
}
