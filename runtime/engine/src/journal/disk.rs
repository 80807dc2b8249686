//! The journal on local disk: append-only segment files of checksummed entries.
//!
//! ```text
//! <dir>/journal.meta            {"id": "...", "start_lsn": "0/16B3748"}: who this journal is, and
//!                               the LSN before which it holds nothing (what it never received or
//!                               trimmed); rewritten atomically when a trim moves it
//! <dir>/<base seq:020>.seg      "SLUICEJ1" base_seq:u64, then records
//! <dir>/<base seq:020>.idx      the summary of a sealed segment (JSON), written when it is sealed
//! record = len:u32 crc32:u32 entry (the lossless codec, `crate::codec`), little-endian
//! ```
//!
//! One writer thread appends ([`Writer`]): it encodes the entries the journal hands it,
//! writes them, and after each group fsyncs once (group commit), then publishes how far the
//! journal is written and durable. A segment is sealed once it passes its size: fsynced, its
//! summary written, the next one begun. At open the last segment is read to its end; a
//! record that is cut short or fails its checksum (a crash mid-write) ends it, and the file
//! is cut there. Sealed segments are trusted through their summaries. Sequence numbers
//! continue across runs: a segment's name is the sequence number of its first entry.
//!
//! Whole sealed segments are deleted once every sink has durably finished them and they are
//! older than the retention, or sooner when the journal is over its byte budget.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::Entry;
use crate::codec::{self, Names};
use crate::lsn::{Lsn, Position};

const MAGIC: &[u8; 8] = b"SLUICEJ1";
const HEADER: u64 = 16;
const FRAME: usize = 8;
/// The largest record the journal accepts back (a corrupt length is not an allocation).
const MAX_RECORD: usize = 256 << 20;

/// Where the journal lives and how much it may keep.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    pub dir: PathBuf,
    /// Past this many bytes of segments the source pauses (after trimming what it may).
    pub max_bytes: u64,
    /// Finished segments are kept this long, for `sluice rewind`.
    pub retention: Duration,
    /// A segment is sealed past this size.
    pub segment_bytes: u64,
}

/// A journal folder that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
#[error("journal {dir}: {what}")]
pub struct DiskError {
    pub dir: String,
    pub what: String,
}

/// What is known of a segment without reading it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub base_seq: u64,
    pub entries: u64,
    /// Bytes of the file, header included.
    pub bytes: u64,
    pub first: Option<Position>,
    pub last: Option<Position>,
    /// The end LSN of its last transaction end (0: none).
    pub last_end: u64,
    /// Commit time (µs) of its first and last event.
    pub first_ts: i64,
    pub last_ts: i64,
    /// When it was sealed (seconds since the epoch); 0 while it is written to.
    pub sealed_at: u64,
    /// The byte offset of entry `base_seq + k * MARK_EVERY` at index `k`, so a reader can
    /// start anywhere without reading the segment from its start.
    #[serde(default)]
    pub marks: Vec<u64>,
}

/// Entries between two [`Summary::marks`].
const MARK_EVERY: u64 = 256;

impl Summary {
    fn new(base_seq: u64) -> Self {
        Summary {
            base_seq,
            bytes: HEADER,
            ..Summary::default()
        }
    }

    pub fn end_seq(&self) -> u64 {
        self.base_seq + self.entries
    }

    fn add(&mut self, entry: &Entry, bytes: usize) {
        if self.entries.is_multiple_of(MARK_EVERY) {
            self.marks.push(self.bytes);
        }
        self.entries += 1;
        self.bytes += (FRAME + bytes) as u64;
        match entry {
            Entry::Event(r) => {
                let e = &r.event;
                if self.first.is_none() {
                    self.first = Some(e.position);
                    self.first_ts = e.source.ts_micros;
                }
                self.last = Some(e.position);
                self.last_ts = e.source.ts_micros;
            }
            Entry::Commit { end_lsn, .. } => self.last_end = end_lsn.0,
        }
    }
}

/// The journal's identity file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub id: String,
    /// Everything the journal ever held is after this LSN; what was trimmed ends here.
    pub start_lsn: String,
}

/// How far the journal is written and made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Every entry before this sequence number is on disk and fsynced.
    pub seq: u64,
    /// The end LSN of the last transaction end among them.
    pub end_lsn: Lsn,
}

/// The segments and the journal's identity, shared by the writer, the readers and trims.
pub(crate) struct DiskLog {
    pub config: DiskConfig,
    pub meta: Mutex<Meta>,
    /// Oldest first; the last one is being written.
    pub segments: Mutex<Vec<Summary>>,
    /// Every entry before this is written (readable from the files).
    pub written: AtomicU64,
    /// Woken when `written` moves.
    pub written_changed: Notify,
    pub synced: watch::Sender<Synced>,
    /// The writer's last error, shown in status while it retries.
    pub failure: Mutex<Option<String>>,
}

/// What opening the folder found.
pub(crate) struct Opened {
    pub log: Arc<DiskLog>,
    /// The sequence number the next entry gets.
    pub head: u64,
    /// The last event's position in the journal.
    pub last: Option<Position>,
    /// Whether the folder held no journal (it was created now).
    pub created: bool,
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn idx_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DiskLog {
    fn fail(&self, what: impl std::fmt::Display) -> DiskError {
        DiskError {
            dir: self.config.dir.display().to_string(),
            what: what.to_string(),
        }
    }

    /// Open the journal in `config.dir`, creating it (with `start_lsn`) when there is none.
    /// A torn last record is cut off.
    pub fn open(config: DiskConfig, start_lsn: Lsn) -> Result<Opened, DiskError> {
        let dir = config.dir.clone();
        let fail = |what: String| DiskError {
            dir: dir.display().to_string(),
            what,
        };
        fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create the folder: {e}")))?;
        let meta_path = dir.join("journal.meta");
        let (meta, created) = match fs::read(&meta_path) {
            Ok(bytes) => (
                serde_json::from_slice::<Meta>(&bytes)
                    .map_err(|e| fail(format!("journal.meta is damaged ({e})")))?,
                false,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let meta = Meta {
                    id: new_id(),
                    start_lsn: start_lsn.to_string(),
                };
                write_atomic(&meta_path, &serde_json::to_vec(&meta).unwrap_or_default())
                    .map_err(|e| fail(format!("cannot write journal.meta: {e}")))?;
                (meta, true)
            }
            Err(e) => return Err(fail(format!("cannot read journal.meta: {e}"))),
        };
        let mut bases: Vec<u64> = fs::read_dir(&dir)
            .map_err(|e| fail(format!("cannot list: {e}")))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        if created && !bases.is_empty() {
            return Err(fail(
                "it holds segments but no journal.meta; move them away or restore journal.meta"
                    .into(),
            ));
        }
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let mut last = None;
        for (i, base) in bases.iter().copied().enumerate() {
            let tail = i + 1 == bases.len();
            let mode = if tail { Tail::Cut } else { Tail::Strict };
            let summary = match (tail, read_summary(&dir, base)) {
                (false, Some(s)) => s,
                _ => scan(&dir, base, mode).map_err(fail)?,
            };
            if let Some(prev) = segments.last().map(Summary::end_seq) {
                if prev != base {
                    return Err(fail(format!(
                        "segment {base:020}.seg does not follow the one before it (entries up to \
                         {prev} expected); the folder was changed by hand"
                    )));
                }
            }
            last = summary.last.or(last);
            segments.push(summary);
        }
        let head = segments.last().map_or(0, Summary::end_seq);
        let synced_end = segments
            .iter()
            .rev()
            .find(|s| s.last_end > 0)
            .map_or(0, |s| s.last_end);
        if segments.is_empty() {
            segments.push(Summary::new(head));
            create_segment(&dir, head)
                .map_err(|e| fail(format!("cannot create a segment: {e}")))?;
        }
        let (synced, _) = watch::channel(Synced {
            seq: head,
            end_lsn: Lsn(synced_end),
        });
        let log = Arc::new(DiskLog {
            config,
            meta: Mutex::new(meta),
            segments: Mutex::new(segments),
            written: AtomicU64::new(head),
            written_changed: Notify::new(),
            synced,
            failure: Mutex::new(None),
        });
        Ok(Opened {
            log,
            head,
            last,
            created,
        })
    }

    pub fn id(&self) -> String {
        self.meta.lock().unwrap().id.clone()
    }

    /// Everything the journal ever held is after this LSN.
    pub fn start_lsn(&self) -> Lsn {
        self.meta
            .lock()
            .unwrap()
            .start_lsn
            .parse()
            .unwrap_or(Lsn::ZERO)
    }

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.lock().unwrap().iter().map(|s| s.bytes).sum()
    }

    /// The sequence number of the oldest entry kept.
    pub fn first_seq(&self) -> u64 {
        self.segments
            .lock()
            .unwrap()
            .first()
            .map_or(0, |s| s.base_seq)
    }

    /// Delete sealed segments every sink has durably finished (all before `finished`) that
    /// are past the retention, or, while the journal is over `over_budget` bytes, the
    /// oldest finished ones regardless. Returns the bytes freed.
    pub fn trim(&self, finished: u64, over_budget: bool) -> Result<u64, DiskError> {
        let cutoff = now_secs().saturating_sub(self.config.retention.as_secs());
        let mut freed = 0;
        loop {
            let victim = {
                let segments = self.segments.lock().unwrap();
                let total: u64 = segments.iter().map(|s| s.bytes).sum();
                match segments.first() {
                    Some(s)
                        if segments.len() > 1
                            && s.sealed_at > 0
                            && s.end_seq() <= finished
                            && (s.sealed_at <= cutoff
                                || (over_budget && total >= self.config.max_bytes)) =>
                    {
                        s.clone()
                    }
                    _ => return Ok(freed),
                }
            };
            // The start moves first: a crash between the two leaves a segment the journal
            // no longer claims to need, never a claim without the segment.
            if victim.last_end > 0 {
                let mut meta = self.meta.lock().unwrap();
                meta.start_lsn = Lsn(victim.last_end).to_string();
                write_atomic(
                    &self.config.dir.join("journal.meta"),
                    &serde_json::to_vec(&*meta).unwrap_or_default(),
                )
                .map_err(|e| self.fail(format!("cannot write journal.meta: {e}")))?;
            }
            let _ = fs::remove_file(idx_path(&self.config.dir, victim.base_seq));
            fs::remove_file(seg_path(&self.config.dir, victim.base_seq))
                .map_err(|e| self.fail(format!("cannot delete a segment: {e}")))?;
            tracing::debug!(
                segment = victim.base_seq,
                bytes = victim.bytes,
                "journal segment trimmed"
            );
            freed += victim.bytes;
            self.segments.lock().unwrap().remove(0);
        }
    }

    /// The first sequence number whose entry a sink at `position` / `flush` still needs (an
    /// event after `position`, or a transaction end past `flush`), searching from `from`;
    /// `None` when every written entry is at or before them.
    pub fn seek(
        &self,
        from: u64,
        position: Position,
        flush: Lsn,
    ) -> Result<Option<u64>, DiskError> {
        let written = self.written.load(Relaxed);
        let candidates: Vec<Summary> = self
            .segments
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.end_seq() > from)
            .filter(|s| {
                s.last.is_some_and(|l| l > position) || s.last_end > flush.0 || s.sealed_at == 0
            })
            .cloned()
            .collect();
        for summary in candidates {
            let mut reader = SegmentReader::open(&self.config.dir, summary.base_seq)
                .map_err(|e| self.fail(e))?;
            let mut names = Names::default();
            let mut seq = summary.base_seq;
            while seq < written.min(summary.end_seq()) {
                let Some(entry) = reader.next(&mut names).map_err(|e| self.fail(e))? else {
                    break;
                };
                if seq >= from && needed(&entry, position, flush) {
                    return Ok(Some(seq));
                }
                seq += 1;
            }
        }
        Ok(None)
    }

    /// Up to `max` entries from `seq` on (never past what is written), through `cursor`.
    pub fn read(
        &self,
        cursor: &mut DiskCursor,
        seq: u64,
        max: usize,
        until: u64,
    ) -> Result<Vec<Entry>, DiskError> {
        let until = until.min(self.written.load(Relaxed));
        let summary = {
            let segments = self.segments.lock().unwrap();
            segments
                .iter()
                .find(|s| s.base_seq <= seq && seq < s.end_seq().max(s.base_seq + 1))
                .cloned()
        };
        let Some(summary) = summary else {
            return Err(self.fail(format!(
                "entry {seq} is no longer in the journal (the oldest kept is {})",
                self.first_seq()
            )));
        };
        let reusable = cursor.segment == Some(summary.base_seq)
            && cursor.reader.is_some()
            && cursor.next <= seq;
        if !reusable {
            // Start at the nearest mark at or before `seq` (the file's start without one).
            let k = (seq - summary.base_seq) / MARK_EVERY;
            let (at, offset) = match summary.marks.get(k as usize) {
                Some(&offset) => (summary.base_seq + k * MARK_EVERY, offset),
                None => (summary.base_seq, HEADER),
            };
            let mut reader = SegmentReader::open(&self.config.dir, summary.base_seq)
                .map_err(|e| self.fail(e))?;
            reader.seek_to(offset).map_err(|e| self.fail(e))?;
            cursor.reader = Some(reader);
            cursor.segment = Some(summary.base_seq);
            cursor.next = at;
        }
        let reader = cursor.reader.as_mut().expect("opened above");
        while cursor.next < seq {
            reader.skip().map_err(|e| self.fail(e))?;
            cursor.next += 1;
        }
        let mut out = Vec::with_capacity(max.min(1024));
        while out.len() < max && cursor.next < until && cursor.next < summary.end_seq() {
            match reader.next(&mut cursor.names).map_err(|e| self.fail(e))? {
                Some(entry) => out.push(entry),
                None => break,
            }
            cursor.next += 1;
        }
        if cursor.next == summary.end_seq() && summary.sealed_at > 0 {
            // The next read starts the next segment.
            cursor.segment = None;
        }
        Ok(out)
    }
}

/// Whether a sink at `position` / `flush` still needs `entry`.
pub(crate) fn needed(entry: &Entry, position: Position, flush: Lsn) -> bool {
    match entry {
        Entry::Event(r) => r.event.position > position,
        Entry::Commit { end_lsn, .. } => *end_lsn > flush,
    }
}

/// A reader's place in the files, kept between reads so sequential reads do not seek.
#[derive(Default)]
pub(crate) struct DiskCursor {
    segment: Option<u64>,
    next: u64,
    reader: Option<SegmentReader>,
    names: Names,
}

/// Reads a segment's records in order.
struct SegmentReader {
    file: io::BufReader<File>,
    buf: Vec<u8>,
}

impl SegmentReader {
    fn open(dir: &Path, base: u64) -> Result<Self, String> {
        let path = seg_path(dir, base);
        let mut file =
            File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut header = [0u8; HEADER as usize];
        file.read_exact(&mut header)
            .map_err(|e| format!("cannot read the header of {}: {e}", path.display()))?;
        if &header[..8] != MAGIC || header[8..] != base.to_le_bytes() {
            return Err(format!(
                "{} is not a sluice journal segment",
                path.display()
            ));
        }
        Ok(SegmentReader {
            file: io::BufReader::with_capacity(256 << 10, file),
            buf: Vec::new(),
        })
    }

    /// Continue at byte `offset` of the file (a record's start).
    fn seek_to(&mut self, offset: u64) -> Result<(), String> {
        use std::io::Seek;
        self.file
            .seek(io::SeekFrom::Start(offset))
            .map(drop)
            .map_err(|e| format!("cannot seek: {e}"))
    }

    /// The next record's bytes; `None` at a clean end, an error for a torn or damaged one.
    fn record(&mut self) -> Result<Option<&[u8]>, String> {
        let mut frame = [0u8; FRAME];
        match read_full(&mut self.file, &mut frame) {
            Ok(0) => return Ok(None),
            Ok(n) if n < FRAME => return Err("a record's frame is cut short".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            return Err(format!("a record claims {len} bytes"));
        }
        self.buf.resize(len, 0);
        match read_full(&mut self.file, &mut self.buf) {
            Ok(n) if n == len => {}
            Ok(_) => return Err("a record is cut short".into()),
            Err(e) => return Err(format!("cannot read: {e}")),
        }
        if crc32fast::hash(&self.buf) != crc {
            return Err("a record fails its checksum".into());
        }
        Ok(Some(&self.buf))
    }

    fn next(&mut self, names: &mut Names) -> Result<Option<Entry>, String> {
        match self.record()? {
            None => Ok(None),
            Some(bytes) => codec::decode_entry(bytes, names)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    fn skip(&mut self) -> Result<(), String> {
        match self.record()? {
            Some(_) => Ok(()),
            None => Err("the segment ends before the entry sought".into()),
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a torn or damaged record means to [`scan`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// The last segment, opened to write: it ends there, and the file is cut there.
    Cut,
    /// The last segment, read beside a running pipeline: it ends there (for now).
    Tolerate,
    /// A sealed segment: an error.
    Strict,
}

/// Read a segment to its end and summarise it.
fn scan(dir: &Path, base: u64, tail: Tail) -> Result<Summary, String> {
    let mut reader = SegmentReader::open(dir, base)?;
    let mut names = Names::default();
    let mut summary = Summary::new(base);
    loop {
        match reader.record() {
            Ok(None) => break,
            Ok(Some(bytes)) => {
                let len = bytes.len();
                let entry = codec::decode_entry(bytes, &mut names)
                    .map_err(|e| format!("segment {base:020}.seg: {e}"))?;
                summary.add(&entry, len);
            }
            Err(_) if tail == Tail::Tolerate => break,
            Err(what) if tail == Tail::Cut => {
                tracing::warn!(
                    segment = base,
                    kept = summary.entries,
                    "journal: {what} at the end of the last segment (a crash mid-write); cutting it there"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(seg_path(dir, base))
                    .map_err(|e| format!("cannot open segment {base:020}.seg to cut it: {e}"))?;
                file.set_len(summary.bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("cannot cut segment {base:020}.seg: {e}"))?;
                break;
            }
            Err(what) => return Err(format!("segment {base:020}.seg: {what}")),
        }
    }
    if tail == Tail::Strict {
        summary.sealed_at = now_secs();
    }
    Ok(summary)
}

/// What a journal folder holds, read without changing anything: for commands that run
/// beside a pipeline (`sluice rewind`, `status`).
#[derive(Clone, Debug)]
pub struct Inspection {
    pub id: String,
    /// Everything the journal holds is after this LSN.
    pub start_lsn: Lsn,
    pub bytes: u64,
    pub segments: usize,
    /// The oldest event kept, and its commit time (µs).
    pub first: Option<(Position, i64)>,
    /// The newest event, and its commit time (µs).
    pub last: Option<(Position, i64)>,
}

fn summaries(dir: &Path) -> Result<Option<(Meta, Vec<Summary>)>, DiskError> {
    let fail = |what: String| DiskError {
        dir: dir.display().to_string(),
        what,
    };
    let meta: Meta = match fs::read(dir.join("journal.meta")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("journal.meta is damaged ({e})")))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("cannot read journal.meta: {e}"))),
    };
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| fail(format!("cannot list: {e}")))?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()
        })
        .collect();
    bases.sort_unstable();
    let mut out = Vec::with_capacity(bases.len());
    for (i, base) in bases.iter().copied().enumerate() {
        let tail = i + 1 == bases.len();
        let summary = match (tail, read_summary(dir, base)) {
            (false, Some(s)) => s,
            // A trim may delete a segment while this reads: what is gone is gone.
            _ => match scan(dir, base, Tail::Tolerate) {
                Ok(s) => s,
                Err(_) if !seg_path(dir, base).exists() => continue,
                Err(e) => return Err(fail(e)),
            },
        };
        out.push(summary);
    }
    Ok(Some((meta, out)))
}

/// Inspect the journal in `dir`; `None` when there is none.
pub fn inspect(dir: &Path) -> Result<Option<Inspection>, DiskError> {
    let Some((meta, segments)) = summaries(dir)? else {
        return Ok(None);
    };
    let first = segments
        .iter()
        .find_map(|s| s.first.map(|p| (p, s.first_ts)));
    let last = segments
        .iter()
        .rev()
        .find_map(|s| s.last.map(|p| (p, s.last_ts)));
    Ok(Some(Inspection {
        id: meta.id,
        start_lsn: meta.start_lsn.parse().unwrap_or(Lsn::ZERO),
        bytes: segments.iter().map(|s| s.bytes).sum(),
        segments: segments.len(),
        first,
        last,
    }))
}

/// The first event in the journal at `dir` committed at or after `ts_micros`.
pub fn first_at_or_after(dir: &Path, ts_micros: i64) -> Result<Option<Position>, DiskError> {
    let fail = |what: String| DiskError {
        dir: dir.display().to_string(),
        what,
    };
    let Some((_, segments)) = summaries(dir)? else {
        return Ok(None);
    };
    for summary in segments
        .iter()
        .filter(|s| s.last.is_some() && s.last_ts >= ts_micros)
    {
        let mut reader = SegmentReader::open(dir, summary.base_seq).map_err(fail)?;
        let mut names = Names::default();
        for _ in 0..summary.entries {
            match reader.next(&mut names) {
                Ok(Some(Entry::Event(r))) if r.event.source.ts_micros >= ts_micros => {
                    return Ok(Some(r.event.position))
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    Ok(None)
}

fn read_summary(dir: &Path, base: u64) -> Option<Summary> {
    let summary: Summary = serde_json::from_slice(&fs::read(idx_path(dir, base)).ok()?).ok()?;
    (summary.base_seq == base).then_some(summary)
}

fn create_segment(dir: &Path, base: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(seg_path(dir, base))?;
    file.write_all(MAGIC)?;
    file.write_all(&base.to_le_bytes())?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Write `bytes` to `path` so that a crash leaves the old or the new content, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn new_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// The writer thread's half: entries in, records and fsyncs out.
pub(crate) struct Writer {
    log: Arc<DiskLog>,
    file: BufWriter<File>,
    active: Summary,
    buf: Vec<u8>,
}

/// What the journal hands the writer: entries and the sequence number of the first.
pub(crate) type Batch = (u64, Vec<Entry>);

impl Writer {
    /// The writer for `log`, appending to its last segment.
    pub fn new(log: Arc<DiskLog>) -> Result<Self, DiskError> {
        let active = log
            .segments
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("one segment at least");
        let mut file = OpenOptions::new()
            .write(true)
            .open(seg_path(&log.config.dir, active.base_seq))
            .map_err(|e| log.fail(format!("cannot open the last segment: {e}")))?;
        file.seek(SeekFrom::Start(active.bytes))
            .map_err(|e| log.fail(format!("cannot open the last segment: {e}")))?;
        Ok(Writer {
            file: BufWriter::with_capacity(1 << 20, file),
            active,
            log,
            buf: Vec::with_capacity(64 << 10),
        })
    }

    /// Run until the journal drops its sender: write each group of batches, fsync once per
    /// group. A failing disk is retried every second (the source pauses meanwhile, as the
    /// journal fills); nothing is skipped.
    pub fn run(mut self, batches: std::sync::mpsc::Receiver<Batch>) {
        while let Ok(first) = batches.recv() {
            let mut group = vec![first];
            group.extend(batches.try_iter());
            loop {
                match self.write_group(&group) {
                    Ok(()) => break,
                    Err(e) => {
                        let what = format!("cannot write: {e}; retrying every second");
                        tracing::error!(dir = %self.log.config.dir.display(), "journal: {what}");
                        *self.log.failure.lock().unwrap() = Some(what);
                        std::thread::sleep(Duration::from_secs(1));
                        if let Err(e) = self.rewind_to_last_good() {
                            tracing::error!("journal: {e}");
                        }
                    }
                }
            }
            *self.log.failure.lock().unwrap() = None;
        }
        let _ = self.file.flush();
        let _ = self.file.get_ref().sync_data();
    }

    fn write_group(&mut self, group: &[Batch]) -> io::Result<()> {
        let mut end_lsn = None;
        let mut next = self.active.end_seq();
        for (seq, entries) in group {
            for (i, entry) in entries.iter().enumerate() {
                if seq + (i as u64) < next {
                    // Written (and sealed) before a failure that was retried.
                    continue;
                }
                self.buf.clear();
                codec::encode_entry(entry, &mut self.buf);
                let crc = crc32fast::hash(&self.buf);
                self.file
                    .write_all(&(self.buf.len() as u32).to_le_bytes())?;
                self.file.write_all(&crc.to_le_bytes())?;
                self.file.write_all(&self.buf)?;
                self.active.add(entry, self.buf.len());
                if let Entry::Commit { end_lsn: end, .. } = entry {
                    end_lsn = Some(*end);
                }
                next += 1;
                if self.active.bytes >= self.log.config.segment_bytes {
                    self.seal()?;
                }
            }
        }
        self.file.flush()?;
        self.publish_written();
        self.file.get_ref().sync_data()?;
        self.log.synced.send_modify(|s| {
            s.seq = next;
            if let Some(end) = end_lsn {
                s.end_lsn = end;
            }
        });
        Ok(())
    }

    fn publish_written(&self) {
        let mut segments = self.log.segments.lock().unwrap();
        if let Some(last) = segments.last_mut() {
            *last = self.active.clone();
        }
        drop(segments);
        self.log.written.store(self.active.end_seq(), Relaxed);
        self.log.written_changed.notify_waiters();
    }

    /// Seal the active segment (fsync, summary) and begin the next.
    fn seal(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        self.active.sealed_at = now_secs();
        let dir = self.log.config.dir.clone();
        write_atomic(
            &idx_path(&dir, self.active.base_seq),
            &serde_json::to_vec(&self.active).unwrap_or_default(),
        )?;
        let next = Summary::new(self.active.end_seq());
        let file = create_segment(&dir, next.base_seq)?;
        {
            let mut segments = self.log.segments.lock().unwrap();
            if let Some(last) = segments.last_mut() {
                *last = self.active.clone();
            }
            segments.push(next.clone());
        }
        tracing::debug!(
            segment = self.active.base_seq,
            entries = self.active.entries,
            "journal segment sealed"
        );
        self.active = next;
        self.file = BufWriter::with_capacity(1 << 20, file);
        Ok(())
    }

    /// After a failed write: cut the active segment back to what was written whole.
    fn rewind_to_last_good(&mut self) -> io::Result<()> {
        let published = self
            .log
            .segments
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("one segment at least");
        self.active = published;
        let file = OpenOptions::new()
            .write(true)
            .open(seg_path(&self.log.config.dir, self.active.base_seq))?;
        file.set_len(self.active.bytes)?;
        let mut file = file;
        file.seek(SeekFrom::Start(self.active.bytes))?;
        self.file = BufWriter::with_capacity(1 << 20, file);
        Ok(())
    }
}
