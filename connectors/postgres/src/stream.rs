//! Transactions PostgreSQL streams before they commit (pgoutput protocol 2, `streaming
//! 'on'`), staged on disk until they end.
//!
//! Once a transaction outgrows `logical_decoding_work_mem`, the walsender sends its changes
//! in chunks (Stream Start … Stream Stop), interleaved with other transactions, and
//! finally a Stream Commit or a Stream Abort. Nothing of it may reach the journal before
//! the commit, and then it must come in commit order with the commit's position. So each
//! chunk's messages are appended, as the server sent them, to a file of their transaction
//! in the pipeline's work directory, and read back at Stream Commit through the same
//! decoder as any other transaction (the source does that, in bounded batches); a Stream
//! Abort deletes the file, and a subtransaction's Stream Abort marks its changes to be
//! skipped on the way back. Memory stays at one buffer whatever the transaction's size,
//! and the server never spills it to its own disk.
//!
//! This mirrors what PostgreSQL's own subscriber does with streamed transactions: the
//! Relation messages of a chunk are kept with it and take effect when it commits (an
//! interleaved transaction is still described by the relations it was sent with).
//!
//! The files are scratch: after a reconnect (the server streams unfinished transactions
//! again from their start) and at every start they are deleted. Writes go to the page
//! cache through a large buffer and are never synced.
//!
//! Record layout: `len:u32 lsn:u64 message[len]`, little-endian, `lsn` being the XLogData
//! start of the message.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice_runtime::Lsn;

use crate::pgoutput::LogicalMessage;

/// The buffer between a chunk and its file, and between a file and the decoder.
const BUFFER: usize = 256 * 1024;
/// File names of staged transactions: `stream-<xid>.pgo`.
const FILE_PREFIX: &str = "stream-";
const FILE_SUFFIX: &str = ".pgo";
/// No pgoutput message is larger than a 1 GB column value and its framing.
const MAX_RECORD: usize = 1 << 30;

/// A staging file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("staging a streamed transaction in {}: {source}", .path.display())]
pub struct StageError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn failed(path: &Path) -> impl FnOnce(io::Error) -> StageError + '_ {
    move |source| StageError {
        path: path.to_path_buf(),
        source,
    }
}

/// The transactions being streamed in one replication session.
pub struct Staging {
    dir: PathBuf,
    txs: HashMap<u32, StagedTx>,
    /// The chunk being received, between Stream Start and Stream Stop.
    chunk: Option<Chunk>,
}

/// What is known of one streamed, not yet finished, transaction.
struct StagedTx {
    path: PathBuf,
    /// Subtransactions rolled back: their changes are skipped when read back.
    aborted: HashSet<u32>,
    /// Messages staged so far.
    messages: u64,
}

struct Chunk {
    xid: u32,
    file: BufWriter<File>,
}

impl Staging {
    /// Stage in `dir` (which exists), after deleting what an earlier run left there.
    pub fn new(dir: &Path) -> Result<Self, StageError> {
        clear_dir(dir)?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            txs: HashMap::new(),
            chunk: None,
        })
    }

    /// Between Stream Start and Stream Stop: messages go to [`Staging::append`].
    pub fn in_chunk(&self) -> bool {
        self.chunk.is_some()
    }

    /// Streamed transactions neither committed nor aborted yet.
    pub fn open_transactions(&self) -> usize {
        self.txs.len()
    }

    /// Stream Start: the next messages belong to transaction `xid`.
    pub fn start(&mut self, xid: u32, first_segment: bool) -> Result<(), StageError> {
        self.stop()?;
        let path = self.dir.join(format!("{FILE_PREFIX}{xid}{FILE_SUFFIX}"));
        let known = self.txs.contains_key(&xid);
        if !known && !first_segment {
            // PostgreSQL streams a transaction from its first change in every session;
            // a continuation without its start would lose changes: start over instead.
            return Err(StageError {
                path,
                source: io::Error::other(format!(
                    "the server continues streaming transaction {xid}, whose start this session did not see"
                )),
            });
        }
        let file = OpenOptions::new()
            .create(true)
            .append(!first_segment)
            .write(true)
            .truncate(first_segment)
            .open(&path)
            .map_err(failed(&path))?;
        if first_segment {
            self.txs.insert(
                xid,
                StagedTx {
                    path,
                    aborted: HashSet::new(),
                    messages: 0,
                },
            );
        }
        self.chunk = Some(Chunk {
            xid,
            file: BufWriter::with_capacity(BUFFER, file),
        });
        Ok(())
    }

    /// A message of the current chunk, as received (`lsn`: its XLogData start).
    pub fn append(&mut self, lsn: Lsn, message: &[u8]) -> Result<(), StageError> {
        let Some(chunk) = self.chunk.as_mut() else {
            return Err(StageError {
                path: self.dir.clone(),
                source: io::Error::other("a streamed change outside Stream Start/Stop"),
            });
        };
        let tx = self
            .txs
            .get_mut(&chunk.xid)
            .expect("a chunk's transaction is known from its Stream Start");
        let len = u32::try_from(message.len()).map_err(|_| StageError {
            path: tx.path.clone(),
            source: io::Error::other("a message larger than 4 GB"),
        })?;
        let file = &mut chunk.file;
        file.write_all(&len.to_le_bytes())
            .and_then(|()| file.write_all(&lsn.0.to_le_bytes()))
            .and_then(|()| file.write_all(message))
            .map_err(failed(&tx.path))?;
        tx.messages += 1;
        Ok(())
    }

    /// Stream Stop: the chunk is complete; its file is written out (not synced).
    pub fn stop(&mut self) -> Result<(), StageError> {
        if let Some(mut chunk) = self.chunk.take() {
            if let Some(tx) = self.txs.get(&chunk.xid) {
                chunk.file.flush().map_err(failed(&tx.path))?;
            }
        }
        Ok(())
    }

    /// Stream Abort: forget transaction `xid` when `subxid` is the transaction itself,
    /// else skip the changes of subtransaction `subxid` when it is read back.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        if self.chunk.as_ref().is_some_and(|c| c.xid == xid) {
            // Aborts come between chunks; a chunk still open here is cut off.
            self.chunk = None;
        }
        if xid == subxid {
            if let Some(tx) = self.txs.remove(&xid) {
                tracing::debug!(
                    xid,
                    messages = tx.messages,
                    "streamed transaction rolled back"
                );
                remove(&tx.path);
            }
        } else if let Some(tx) = self.txs.get_mut(&xid) {
            tracing::debug!(xid, subxid, "streamed subtransaction rolled back");
            tx.aborted.insert(subxid);
        }
    }

    /// Stream Commit: transaction `xid`'s messages, to read back in order. `None` when
    /// nothing of it was staged (every change of it was in rolled back subtransactions,
    /// or it began before this session).
    pub fn commit(&mut self, xid: u32) -> Result<Option<Staged>, StageError> {
        self.stop()?;
        let Some(tx) = self.txs.remove(&xid) else {
            return Ok(None);
        };
        let file = File::open(&tx.path).map_err(failed(&tx.path))?;
        tracing::debug!(
            xid,
            messages = tx.messages,
            "streamed transaction committed"
        );
        Ok(Some(Staged {
            reader: BufReader::with_capacity(BUFFER, file),
            path: tx.path,
            aborted: tx.aborted,
        }))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.chunk = None;
        for tx in self.txs.values() {
            remove(&tx.path);
        }
    }
}

/// A committed streamed transaction, read back message by message; its file is deleted
/// when this is dropped.
pub struct Staged {
    reader: BufReader<File>,
    path: PathBuf,
    aborted: HashSet<u32>,
}

impl Staged {
    /// The next staged message and its LSN; `None` at the end.
    pub fn next_message(&mut self) -> Result<Option<(Lsn, Bytes)>, StageError> {
        let mut header = [0u8; 12];
        match self.reader.read_exact(&mut header[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(failed(&self.path)(e)),
        }
        self.reader
            .read_exact(&mut header[1..])
            .map_err(failed(&self.path))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let lsn = Lsn(u64::from_le_bytes(
            header[4..].try_into().expect("eight bytes"),
        ));
        if len > MAX_RECORD {
            return Err(failed(&self.path)(io::Error::other(format!(
                "a record claims {len} bytes: the file is damaged"
            ))));
        }
        let mut message = vec![0u8; len];
        self.reader
            .read_exact(&mut message)
            .map_err(failed(&self.path))?;
        Ok(Some((lsn, Bytes::from(message))))
    }

    /// Whether `message` is a change of a rolled back subtransaction, to be left out.
    /// Relation and Type messages are always kept: later changes of the transaction may
    /// rely on them (PostgreSQL sends a relation once per streamed transaction).
    pub fn skips(&self, message: &LogicalMessage) -> bool {
        let xid = match message {
            LogicalMessage::Insert { xid, .. }
            | LogicalMessage::Update { xid, .. }
            | LogicalMessage::Delete { xid, .. }
            | LogicalMessage::Truncate { xid, .. }
            | LogicalMessage::Message { xid, .. } => *xid,
            _ => None,
        };
        xid.is_some_and(|x| self.aborted.contains(&x))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a staging file");
        }
    }
}

/// Delete the staging files in `dir` (left by a run that ended abruptly).
fn clear_dir(dir: &Path) -> Result<(), StageError> {
    let entries = std::fs::read_dir(dir).map_err(failed(dir))?;
    for entry in entries {
        let entry = entry.map_err(failed(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX) {
            remove(&entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-stream-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// An Insert as pgoutput streams it: tag, xid, relation, 'N', one text column.
    fn insert(xid: u32, value: &str) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&1u16.to_be_bytes());
        m.push(b't');
        m.extend_from_slice(&(value.len() as i32).to_be_bytes());
        m.extend_from_slice(value.as_bytes());
        m
    }

    fn read_all(mut staged: Staged) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while let Some((lsn, data)) = staged.next_message().unwrap() {
            let msg = crate::pgoutput::decode(data, true).unwrap();
            if staged.skips(&msg) {
                continue;
            }
            let LogicalMessage::Insert { new, .. } = msg else {
                panic!("{msg:?}")
            };
            let crate::pgoutput::TupleValue::Text(t) = &new[0] else {
                panic!()
            };
            out.push((lsn.0, String::from_utf8(t.to_vec()).unwrap()));
        }
        out
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn interleaved_chunks_come_back_per_transaction_in_order() {
        let dir = scratch("interleaved");
        let mut s = Staging::new(&dir).unwrap();
        s.start(7, true).unwrap();
        s.append(Lsn(1), &insert(7, "a1")).unwrap();
        s.stop().unwrap();
        s.start(9, true).unwrap();
        s.append(Lsn(2), &insert(9, "b1")).unwrap();
        s.stop().unwrap();
        s.start(7, false).unwrap();
        assert!(s.in_chunk());
        s.append(Lsn(3), &insert(7, "a2")).unwrap();
        s.stop().unwrap();
        assert!(!s.in_chunk());
        assert_eq!(s.open_transactions(), 2);
        let b = s.commit(9).unwrap().unwrap();
        assert_eq!(read_all(b), [(2, "b1".to_string())]);
        let a = s.commit(7).unwrap().unwrap();
        assert_eq!(read_all(a), [(1, "a1".into()), (3, "a2".into())]);
        assert_eq!(files(&dir), 0, "read back files are deleted");
        assert!(s.commit(7).unwrap().is_none(), "a commit is read once");
    }

    #[test]
    fn aborts_drop_a_transaction_or_only_a_subtransactions_changes() {
        let dir = scratch("aborts");
        let mut s = Staging::new(&dir).unwrap();
        s.start(7, true).unwrap();
        s.append(Lsn(1), &insert(7, "top")).unwrap();
        s.append(Lsn(2), &insert(8, "sub, rolled back")).unwrap();
        s.append(Lsn(3), &insert(10, "other sub")).unwrap();
        s.stop().unwrap();
        s.start(20, true).unwrap();
        s.append(Lsn(4), &insert(20, "gone")).unwrap();
        s.stop().unwrap();
        s.abort(7, 8);
        s.abort(20, 20);
        assert_eq!(files(&dir), 1, "the aborted transaction's file is deleted");
        assert!(s.commit(20).unwrap().is_none());
        let kept = read_all(s.commit(7).unwrap().unwrap());
        assert_eq!(kept, [(1, "top".into()), (3, "other sub".into())]);
    }

    #[test]
    fn a_first_segment_starts_over_and_leftovers_are_cleared() {
        let dir = scratch("restart");
        std::fs::write(dir.join("stream-5.pgo"), b"left by a killed run").unwrap();
        std::fs::write(dir.join("keep.txt"), b"not ours").unwrap();
        let mut s = Staging::new(&dir).unwrap();
        assert_eq!(files(&dir), 1, "only staging files are deleted");
        s.start(5, true).unwrap();
        s.append(Lsn(1), &insert(5, "old")).unwrap();
        s.stop().unwrap();
        // Streamed again from its start (a new session would do this on a new Staging;
        // a first segment on a known transaction starts it over all the same).
        s.start(5, true).unwrap();
        s.append(Lsn(1), &insert(5, "new")).unwrap();
        s.stop().unwrap();
        assert_eq!(read_all(s.commit(5).unwrap().unwrap()), [(1, "new".into())]);
        s.start(6, true).unwrap();
        s.append(Lsn(2), &insert(6, "x")).unwrap();
        drop(s);
        assert_eq!(files(&dir), 1, "a dropped session leaves nothing staged");
        let mut s = Staging::new(&dir).unwrap();
        let e = s.start(6, false).unwrap_err();
        assert!(e.to_string().contains("did not see"), "{e}");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let dir = scratch("damaged");
        let mut s = Staging::new(&dir).unwrap();
        s.start(3, true).unwrap();
        s.append(Lsn(1), &insert(3, "a")).unwrap();
        s.stop().unwrap();
        let path = dir.join("stream-3.pgo");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, bytes).unwrap();
        let mut staged = s.commit(3).unwrap().unwrap();
        let e = staged.next_message().unwrap_err();
        assert!(e.to_string().contains("stream-3.pgo"), "{e}");
    }
}
