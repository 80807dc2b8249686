//! The file sink passes the shared sink conformance suite against a real file. The file's
//! directory is "taken down" by putting a plain file where the directory must be: opening
//! the target then fails as a full or missing disk would.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::Value;
use sluice_conformance::{envelope_id, suite, Target, Traits};
use sluice_file::{FileConfig, FileSink};
use sluice_runtime::Sink;

struct File {
    dir: PathBuf,
}

impl File {
    fn blocker(&self) -> PathBuf {
        self.dir.join("out")
    }

    fn path(&self) -> PathBuf {
        self.blocker().join("events.jsonl")
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is an envelope"))
            .collect()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[async_trait]
impl Target for File {
    fn traits(&self) -> Traits {
        Traits {
            can_fail: true,
            fails_one_event: false,
            observes_order: true,
            bulk: false,
        }
    }

    async fn sink(&mut self) -> Box<dyn Sink> {
        Box::new(FileSink::new(FileConfig::new(self.path())).unwrap())
    }

    async fn reset(&mut self) {
        let _ = std::fs::remove_file(self.blocker());
        let _ = std::fs::remove_dir_all(self.blocker());
    }

    /// A reader that deduplicates by `id` sees one line per event.
    async fn state(&mut self) -> BTreeMap<String, Value> {
        self.lines()
            .into_iter()
            .map(|e| (envelope_id(&e), e))
            .collect()
    }

    async fn applied(&mut self) -> Vec<String> {
        self.lines().iter().map(envelope_id).collect()
    }

    async fn set_down(&mut self, down: bool) {
        if down {
            let _ = std::fs::remove_dir_all(self.blocker());
            std::fs::write(self.blocker(), b"not a directory").unwrap();
        } else {
            std::fs::remove_file(self.blocker()).unwrap();
        }
    }
}

async fn file() -> File {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-file-conformance-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    File { dir }
}

suite!(file());
