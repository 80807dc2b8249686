//! A pure decoder of `pgoutput` logical replication messages, protocol versions 1 and 2.
//!
//! The input is the payload of one `XLogData` message. Integers are big-endian, strings
//! NUL-terminated UTF-8. Tuple values are zero-copy slices of the input buffer.
//!
//! Reference: PostgreSQL, "Logical Replication Message Formats".

use std::fmt;

use bytes::Bytes;
use sluice_runtime::Lsn;

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin {
        final_lsn: Lsn,
        /// Microseconds since the Unix epoch.
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Microseconds since the Unix epoch.
        commit_ts: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation {
        xid: Option<u32>,
        rel_id: u32,
        namespace: String,
        name: String,
        /// `b'd'` default, `b'n'` nothing, `b'f'` full, `b'i'` index.
        replica_identity: u8,
        columns: Vec<RelationColumn>,
    },
    Type {
        xid: Option<u32>,
        type_oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        rel_id: u32,
        new: Vec<TupleValue>,
    },
    Update {
        xid: Option<u32>,
        rel_id: u32,
        old: Option<OldTuple>,
        new: Vec<TupleValue>,
    },
    Delete {
        xid: Option<u32>,
        rel_id: u32,
        old: OldTuple,
    },
    Truncate {
        xid: Option<u32>,
        /// Bit 1: `CASCADE`; bit 2: `RESTART IDENTITY`.
        options: u8,
        rel_ids: Vec<u32>,
    },
    Message {
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Microseconds since the Unix epoch.
        commit_ts: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

/// One column of a [`LogicalMessage::Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// The column is part of the replica identity (flags & 1).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row image of an update or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: only the replica identity columns are meaningful, the rest are null.
    Key(Vec<TupleValue>),
    /// `'O'`: the full old row (`REPLICA IDENTITY FULL`).
    Full(Vec<TupleValue>),
}

impl OldTuple {
    pub fn values(&self) -> &[TupleValue] {
        match self {
            OldTuple::Key(v) | OldTuple::Full(v) => v,
        }
    }
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    /// `'n'`
    Null,
    /// `'u'`: a TOASTed value that did not change and was not sent.
    UnchangedToast,
    /// `'t'`: the value in text format.
    Text(Bytes),
    /// `'b'`: the value in binary format.
    Binary(Bytes),
}

/// A byte shown as a quoted character when printable, in hex otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRepr(pub u8);

impl fmt::Display for ByteRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message type byte {0}")]
    UnknownMessageType(ByteRepr),
    #[error(
        "unsupported pgoutput message type {byte} ({what}); two-phase decoding is not enabled"
    )]
    Unsupported { byte: ByteRepr, what: &'static str },
    #[error(
        "{message} message truncated: {field} at offset {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        message: &'static str,
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("{message} message: {field} at offset {offset} has no NUL terminator")]
    UnterminatedString {
        message: &'static str,
        field: &'static str,
        offset: usize,
    },
    #[error("{message} message: {field} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
    },
    #[error("{message} message: unknown tuple value kind {kind} for column {column}")]
    UnknownTupleKind {
        message: &'static str,
        column: usize,
        kind: ByteRepr,
    },
    #[error("{message} message: expected {expected}, found {found}")]
    UnexpectedByte {
        message: &'static str,
        expected: &'static str,
        found: ByteRepr,
    },
    #[error("{message} message: negative length {length} for {field}")]
    NegativeLength {
        message: &'static str,
        field: &'static str,
        length: i32,
    },
    #[error("{message} message: {count} unexpected trailing bytes")]
    TrailingBytes { message: &'static str, count: usize },
}

/// Decode one pgoutput message.
///
/// `in_stream` is true between a `StreamStart` and its `StreamStop`: there, Relation, Type,
/// Insert, Update, Delete, Truncate and Message carry the xid of their (sub)transaction
/// right after the type byte.
pub fn decode(data: Bytes, in_stream: bool) -> Result<LogicalMessage, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => return Err(unsupported(tag, "Begin Prepare")),
        b'P' => return Err(unsupported(tag, "Prepare")),
        b'K' => return Err(unsupported(tag, "Commit Prepared")),
        b'r' => return Err(unsupported(tag, "Rollback Prepared")),
        b'p' => return Err(unsupported(tag, "Stream Prepare")),
        _ => return Err(DecodeError::UnknownMessageType(ByteRepr(tag))),
    };
    let mut r = Reader {
        buf: data,
        pos: 1,
        message,
    };
    let xid = |r: &mut Reader| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            r.u32("xid").map(Some)
        } else {
            Ok(None)
        }
    };
    let msg = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
        },
        b'O' => LogicalMessage::Origin {
            commit_lsn: r.lsn("commit LSN")?,
            name: r.string("origin name")?,
        },
        b'R' => {
            let xid = xid(&mut r)?;
            let rel_id = r.u32("relation id")?;
            let namespace = r.string("namespace")?;
            let name = r.string("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let ncols = r.u16("column count")? as usize;
            // Each column takes at least 10 bytes; never trust the count for allocation.
            let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
            for _ in 0..ncols {
                columns.push(RelationColumn {
                    is_key: r.u8("column flags")? & 1 != 0,
                    name: r.string("column name")?,
                    type_oid: r.u32("column type oid")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            LogicalMessage::Relation {
                xid,
                rel_id,
                namespace,
                name,
                replica_identity,
                columns,
            }
        }
        b'Y' => LogicalMessage::Type {
            xid: xid(&mut r)?,
            type_oid: r.u32("type oid")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let xid = xid(&mut r)?;
            let rel_id = r.u32("relation id")?;
            r.expect(b'N', "'N' (new tuple)")?;
            LogicalMessage::Insert {
                xid,
                rel_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let xid = xid(&mut r)?;
            let rel_id = r.u32("relation id")?;
            let old = match r.u8("tuple kind")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                other => {
                    return Err(DecodeError::UnexpectedByte {
                        message,
                        expected: "'K', 'O' or 'N'",
                        found: ByteRepr(other),
                    })
                }
            };
            if old.is_some() {
                r.expect(b'N', "'N' (new tuple)")?;
            }
            LogicalMessage::Update {
                xid,
                rel_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let xid = xid(&mut r)?;
            let rel_id = r.u32("relation id")?;
            let old = match r.u8("tuple kind")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => {
                    return Err(DecodeError::UnexpectedByte {
                        message,
                        expected: "'K' or 'O'",
                        found: ByteRepr(other),
                    })
                }
            };
            LogicalMessage::Delete { xid, rel_id, old }
        }
        b'T' => {
            let xid = xid(&mut r)?;
            let count = r.u32("relation count")? as usize;
            let options = r.u8("options")?;
            let mut rel_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                rel_ids.push(r.u32("relation id")?);
            }
            LogicalMessage::Truncate {
                xid,
                options,
                rel_ids,
            }
        }
        b'M' => {
            let xid = xid(&mut r)?;
            let flags = r.u8("flags")?;
            let lsn = r.lsn("LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.len("content length")?;
            LogicalMessage::Message {
                xid,
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len, "content")?,
            }
        }
        b'S' => LogicalMessage::StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? == 1,
        },
        b'E' => LogicalMessage::StreamStop,
        b'c' => LogicalMessage::StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
        },
        b'A' => {
            let msg = LogicalMessage::StreamAbort {
                xid: r.u32("xid")?,
                subxid: r.u32("subtransaction xid")?,
            };
            // Protocol 4 (parallel streaming) appends the abort LSN and timestamp.
            return Ok(msg);
        }
        _ => return Err(DecodeError::UnknownMessageType(ByteRepr(tag))),
    };
    r.finish()?;
    Ok(msg)
}

fn unsupported(tag: u8, what: &'static str) -> DecodeError {
    DecodeError::Unsupported {
        byte: ByteRepr(tag),
        what,
    }
}

/// A bounds-checked cursor over one message.
struct Reader {
    buf: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..start + n])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.array(field).map(u64::from_be_bytes).map(Lsn)
    }

    /// A timestamp in microseconds since the PostgreSQL epoch, returned relative to Unix.
    fn timestamp(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field)
            .map(i64::from_be_bytes)
            .map(|t| t.saturating_add(PG_EPOCH_OFFSET_MICROS))
    }

    /// A non-negative Int32 length.
    fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let length = self.i32(field)?;
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            length,
        })
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, field)?;
        Ok(self.buf.slice(start..start + n))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                message: self.message,
                field,
                offset: self.pos,
            });
        };
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
        })?;
        let s = s.to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), DecodeError> {
        let found = self.u8("tuple kind")?;
        if found == byte {
            Ok(())
        } else {
            Err(DecodeError::UnexpectedByte {
                message: self.message,
                expected,
                found: ByteRepr(found),
            })
        }
    }

    /// TupleData: Int16 column count, then per column a kind byte and, for 't' and 'b',
    /// an Int32 length and the value.
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let ncols = self.u16("tuple column count")? as usize;
        let mut values = Vec::with_capacity(ncols.min(self.remaining()));
        for column in 0..ncols {
            let value = match self.u8("tuple value kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.len("tuple value length")?;
                    TupleValue::Text(self.bytes(len, "tuple value")?)
                }
                b'b' => {
                    let len = self.len("tuple value length")?;
                    TupleValue::Binary(self.bytes(len, "tuple value")?)
                }
                kind => {
                    return Err(DecodeError::UnknownTupleKind {
                        message: self.message,
                        column,
                        kind: ByteRepr(kind),
                    })
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message builder: big-endian integers, NUL-terminated strings.
    #[derive(Default, Clone)]
    struct B(Vec<u8>);

    impl B {
        fn new(tag: u8) -> Self {
            B(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn text(self, s: &str) -> Self {
            self.u8(b't').i32(s.len() as i32).raw(s.as_bytes())
        }
        fn bytes(&self) -> Bytes {
            Bytes::from(self.0.clone())
        }
    }

    const TS_PG: i64 = 848_642_400_123_456; // 2026-11-22T06:00:00.123456Z
    const TS_UNIX: i64 = 1_795_327_200_123_456;

    fn ok(b: &B, in_stream: bool) -> LogicalMessage {
        decode(b.bytes(), in_stream).expect("decodes")
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Every strict prefix of a valid message must fail to decode, without panicking.
    fn assert_prefixes_fail(b: &B, in_stream: bool) {
        for len in 0..b.0.len() {
            let cut = Bytes::copy_from_slice(&b.0[..len]);
            assert!(
                decode(cut, in_stream).is_err(),
                "prefix of {len}/{} bytes decoded",
                b.0.len()
            );
        }
    }

    fn begin() -> B {
        B::new(b'B').u64(0x1_2A2B_3C4D).i64(TS_PG).u32(1234)
    }

    fn commit() -> B {
        B::new(b'C').u8(0).u64(0x10).u64(0x20).i64(TS_PG)
    }

    fn origin() -> B {
        B::new(b'O').u64(0x33).str("node_a")
    }

    fn relation(stream: bool) -> B {
        let mut b = B::new(b'R');
        if stream {
            b = b.u32(777);
        }
        b.u32(16384)
            .str("public")
            .str("orders")
            .u8(b'd')
            .u16(3)
            .u8(1)
            .str("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .str("status")
            .u32(1043)
            .i32(36)
            .u8(0)
            .str("blob")
            .u32(17)
            .i32(-1)
    }

    fn type_msg(stream: bool) -> B {
        let mut b = B::new(b'Y');
        if stream {
            b = b.u32(777);
        }
        b.u32(90001).str("public").str("mood")
    }

    fn insert(stream: bool) -> B {
        let mut b = B::new(b'I');
        if stream {
            b = b.u32(777);
        }
        b.u32(16384)
            .u8(b'N')
            .u16(4)
            .text("42")
            .u8(b'n')
            .u8(b'u')
            .u8(b'b')
            .i32(2)
            .raw(&[0xde, 0xad])
    }

    fn update_key(stream: bool) -> B {
        let mut b = B::new(b'U');
        if stream {
            b = b.u32(777);
        }
        b.u32(16384)
            .u8(b'K')
            .u16(2)
            .text("41")
            .u8(b'n')
            .u8(b'N')
            .u16(2)
            .text("42")
            .u8(b'u')
    }

    fn update_full() -> B {
        B::new(b'U')
            .u32(16384)
            .u8(b'O')
            .u16(2)
            .text("42")
            .text("old")
            .u8(b'N')
            .u16(2)
            .text("42")
            .text("new")
    }

    fn update_plain() -> B {
        B::new(b'U').u32(16384).u8(b'N').u16(2).text("42").text("")
    }

    fn delete(stream: bool, kind: u8) -> B {
        let mut b = B::new(b'D');
        if stream {
            b = b.u32(777);
        }
        b.u32(16384).u8(kind).u16(2).text("42").u8(b'n')
    }

    fn truncate(stream: bool) -> B {
        let mut b = B::new(b'T');
        if stream {
            b = b.u32(777);
        }
        b.u32(3).u8(3).u32(16384).u32(16390).u32(16400)
    }

    fn message(stream: bool, transactional: bool) -> B {
        let mut b = B::new(b'M');
        if stream {
            b = b.u32(777);
        }
        b.u8(transactional as u8)
            .u64(0xABC)
            .str("outbox")
            .i32(5)
            .raw(b"hello")
    }

    fn stream_start() -> B {
        B::new(b'S').u32(777).u8(1)
    }

    fn stream_commit() -> B {
        B::new(b'c').u32(777).u8(0).u64(0x100).u64(0x200).i64(TS_PG)
    }

    fn stream_abort() -> B {
        B::new(b'A').u32(777).u32(778)
    }

    #[test]
    fn begin_converts_the_timestamp_to_unix_micros() {
        assert_eq!(
            ok(&begin(), false),
            LogicalMessage::Begin {
                final_lsn: Lsn(0x1_2A2B_3C4D),
                commit_ts: TS_UNIX,
                xid: 1234
            }
        );
        assert_eq!(
            sluice_runtime::event::format_timestamp_micros(TS_UNIX),
            "2026-11-22T06:00:00.123456Z"
        );
    }

    #[test]
    fn commit_and_origin() {
        assert_eq!(
            ok(&commit(), false),
            LogicalMessage::Commit {
                flags: 0,
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x20),
                commit_ts: TS_UNIX
            }
        );
        assert_eq!(
            ok(&origin(), false),
            LogicalMessage::Origin {
                commit_lsn: Lsn(0x33),
                name: "node_a".into()
            }
        );
    }

    #[test]
    fn relation_with_columns() {
        for stream in [false, true] {
            let LogicalMessage::Relation {
                xid,
                rel_id,
                namespace,
                name,
                replica_identity,
                columns,
            } = ok(&relation(stream), stream)
            else {
                panic!("not a relation")
            };
            assert_eq!(xid, stream.then_some(777));
            assert_eq!(
                (rel_id, &*namespace, &*name, replica_identity),
                (16384, "public", "orders", b'd')
            );
            assert_eq!(
                columns,
                vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1
                    },
                    RelationColumn {
                        is_key: false,
                        name: "status".into(),
                        type_oid: 1043,
                        type_modifier: 36
                    },
                    RelationColumn {
                        is_key: false,
                        name: "blob".into(),
                        type_oid: 17,
                        type_modifier: -1
                    },
                ]
            );
        }
    }

    #[test]
    fn type_message() {
        for stream in [false, true] {
            assert_eq!(
                ok(&type_msg(stream), stream),
                LogicalMessage::Type {
                    xid: stream.then_some(777),
                    type_oid: 90001,
                    namespace: "public".into(),
                    name: "mood".into()
                }
            );
        }
    }

    #[test]
    fn insert_with_every_tuple_kind() {
        for stream in [false, true] {
            assert_eq!(
                ok(&insert(stream), stream),
                LogicalMessage::Insert {
                    xid: stream.then_some(777),
                    rel_id: 16384,
                    new: vec![
                        text("42"),
                        TupleValue::Null,
                        TupleValue::UnchangedToast,
                        TupleValue::Binary(Bytes::from_static(&[0xde, 0xad])),
                    ]
                }
            );
        }
    }

    #[test]
    fn tuple_values_share_the_input_buffer() {
        let data = insert(false).bytes();
        let range = data.as_ptr_range();
        let LogicalMessage::Insert { new, .. } = decode(data.clone(), false).unwrap() else {
            panic!()
        };
        let TupleValue::Text(v) = &new[0] else {
            panic!()
        };
        assert!(range.contains(&v.as_ptr()), "value was copied");
    }

    #[test]
    fn updates_with_key_full_and_no_old_tuple() {
        for stream in [false, true] {
            assert_eq!(
                ok(&update_key(stream), stream),
                LogicalMessage::Update {
                    xid: stream.then_some(777),
                    rel_id: 16384,
                    old: Some(OldTuple::Key(vec![text("41"), TupleValue::Null])),
                    new: vec![text("42"), TupleValue::UnchangedToast],
                }
            );
        }
        assert_eq!(
            ok(&update_full(), false),
            LogicalMessage::Update {
                xid: None,
                rel_id: 16384,
                old: Some(OldTuple::Full(vec![text("42"), text("old")])),
                new: vec![text("42"), text("new")],
            }
        );
        assert_eq!(
            ok(&update_plain(), false),
            LogicalMessage::Update {
                xid: None,
                rel_id: 16384,
                old: None,
                new: vec![text("42"), text("")],
            }
        );
    }

    #[test]
    fn deletes_with_key_and_full_old_tuple() {
        for stream in [false, true] {
            let expect = vec![text("42"), TupleValue::Null];
            assert_eq!(
                ok(&delete(stream, b'K'), stream),
                LogicalMessage::Delete {
                    xid: stream.then_some(777),
                    rel_id: 16384,
                    old: OldTuple::Key(expect.clone())
                }
            );
            let LogicalMessage::Delete { old, .. } = ok(&delete(stream, b'O'), stream) else {
                panic!()
            };
            assert_eq!(old, OldTuple::Full(expect.clone()));
            assert_eq!(old.values(), &expect[..]);
        }
        let err = decode(delete(false, b'N').bytes(), false).unwrap_err();
        assert!(matches!(err, DecodeError::UnexpectedByte { .. }), "{err}");
    }

    #[test]
    fn truncate_of_several_relations() {
        for stream in [false, true] {
            assert_eq!(
                ok(&truncate(stream), stream),
                LogicalMessage::Truncate {
                    xid: stream.then_some(777),
                    options: 3,
                    rel_ids: vec![16384, 16390, 16400]
                }
            );
        }
    }

    #[test]
    fn logical_messages() {
        for stream in [false, true] {
            for transactional in [false, true] {
                assert_eq!(
                    ok(&message(stream, transactional), stream),
                    LogicalMessage::Message {
                        xid: stream.then_some(777),
                        transactional,
                        lsn: Lsn(0xABC),
                        prefix: "outbox".into(),
                        content: Bytes::from_static(b"hello")
                    }
                );
            }
        }
    }

    #[test]
    fn stream_control_messages() {
        assert_eq!(
            ok(&stream_start(), false),
            LogicalMessage::StreamStart {
                xid: 777,
                first_segment: true
            }
        );
        assert_eq!(
            ok(&B::new(b'S').u32(777).u8(0), true),
            LogicalMessage::StreamStart {
                xid: 777,
                first_segment: false
            }
        );
        assert_eq!(ok(&B::new(b'E'), true), LogicalMessage::StreamStop);
        assert_eq!(
            ok(&stream_commit(), false),
            LogicalMessage::StreamCommit {
                xid: 777,
                flags: 0,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x200),
                commit_ts: TS_UNIX
            }
        );
        let abort = LogicalMessage::StreamAbort {
            xid: 777,
            subxid: 778,
        };
        assert_eq!(ok(&stream_abort(), true), abort);
        // Protocol 4 appends abort LSN and timestamp; they are ignored.
        assert_eq!(ok(&stream_abort().u64(0x300).i64(TS_PG), false), abort);
    }

    #[test]
    fn truncated_messages_of_every_kind_fail() {
        let cases: Vec<(B, bool)> = vec![
            (begin(), false),
            (commit(), false),
            (origin(), false),
            (relation(false), false),
            (relation(true), true),
            (type_msg(false), false),
            (type_msg(true), true),
            (insert(false), false),
            (insert(true), true),
            (update_key(false), false),
            (update_key(true), true),
            (update_full(), false),
            (update_plain(), false),
            (delete(false, b'K'), false),
            (delete(true, b'O'), true),
            (truncate(false), false),
            (truncate(true), true),
            (message(false, true), false),
            (message(true, true), true),
            (stream_start(), false),
            (stream_commit(), false),
            (stream_abort(), false),
        ];
        for (b, stream) in cases {
            ok(&b, stream);
            assert_prefixes_fail(&b, stream);
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        for (b, stream) in [
            (begin(), false),
            (commit(), false),
            (insert(false), false),
            (truncate(true), true),
            (B::new(b'E'), true),
        ] {
            let err = decode(b.u8(0).bytes(), stream).unwrap_err();
            assert!(
                matches!(err, DecodeError::TrailingBytes { count: 1, .. }),
                "{err}"
            );
        }
        // A streamed message decoded as if outside a stream misreads its xid as the
        // relation id and is left with bytes over.
        assert!(decode(truncate(true).bytes(), false).is_err());
    }

    #[test]
    fn errors_name_the_message_and_the_problem() {
        let err = decode(Bytes::new(), false).unwrap_err();
        assert_eq!(err, DecodeError::Empty);

        let err = decode(Bytes::from_static(b"X"), false).unwrap_err();
        assert_eq!(err.to_string(), "unknown pgoutput message type byte 'X'");
        let err = decode(Bytes::from_static(&[0x01, 2, 3]), false).unwrap_err();
        assert_eq!(err.to_string(), "unknown pgoutput message type byte 0x01");
        let err = decode(Bytes::from_static(b"P"), false).unwrap_err();
        assert!(err.to_string().contains("Prepare"), "{err}");

        let cut = begin().0[..5].to_vec();
        let err = decode(Bytes::from(cut), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Begin message truncated: final LSN at offset 1 needs 8 bytes, 4 left"
        );

        let bad = B::new(b'I').u32(1).u8(b'N').u16(1).u8(b'x');
        let err = decode(bad.bytes(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Insert message: unknown tuple value kind 'x' for column 0"
        );

        let bad = B::new(b'Y').u32(1).raw(&[b'a', 0xff, 0]).str("t");
        let err = decode(bad.bytes(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Type message: namespace is not valid UTF-8"
        );

        let bad = B::new(b'O').u64(1).raw(b"no terminator");
        let err = decode(bad.bytes(), false).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::UnterminatedString {
                    message: "Origin",
                    ..
                }
            ),
            "{err}"
        );

        let bad = B::new(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-5);
        let err = decode(bad.bytes(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Insert message: negative length -5 for tuple value length"
        );

        let bad = B::new(b'I').u32(1).u8(b'K').u16(0);
        let err = decode(bad.bytes(), false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Insert message: expected 'N' (new tuple)"),
            "{err}"
        );

        let bad = B::new(b'U').u32(1).u8(b'Q');
        assert!(decode(bad.bytes(), false).is_err());
    }

    #[test]
    fn huge_counts_do_not_allocate_or_panic() {
        let bad = B::new(b'T').u32(u32::MAX).u8(0).u32(1);
        assert!(matches!(
            decode(bad.bytes(), false),
            Err(DecodeError::Truncated { .. })
        ));
        let bad = B::new(b'I').u32(1).u8(b'N').u16(u16::MAX).u8(b'n');
        assert!(decode(bad.bytes(), false).is_err());
        let bad = B::new(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(i32::MAX);
        assert!(decode(bad.bytes(), false).is_err());
        let bad = B::new(b'M').u8(1).u64(1).str("p").i32(i32::MAX).raw(b"x");
        assert!(decode(bad.bytes(), false).is_err());
        let bad = B::new(b'R').u32(1).str("s").str("t").u8(b'f').u16(u16::MAX);
        assert!(decode(bad.bytes(), false).is_err());
        // Extreme timestamps saturate instead of overflowing.
        let b = B::new(b'B').u64(0).i64(i64::MAX).u32(0);
        assert!(matches!(
            ok(&b, false),
            LogicalMessage::Begin {
                commit_ts: i64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator; every tag byte, random bodies, both modes.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for tag in 0..=255u8 {
            for _ in 0..200 {
                let len = (next() % 48) as usize;
                let mut buf = vec![tag];
                for _ in 0..len {
                    // Bias towards small values so counts and lengths are sometimes plausible.
                    let v = next();
                    buf.push(if v % 3 == 0 {
                        (v >> 8) as u8 % 4
                    } else {
                        (v >> 8) as u8
                    });
                }
                let _ = decode(Bytes::from(buf.clone()), false);
                let _ = decode(Bytes::from(buf), true);
            }
        }
    }

    /// Decodes what a real server's pgoutput produces, streamed transactions included:
    /// `SLUICE_TEST_PG_URL=host=127.0.0.1 port=5432 user=postgres cargo test -- --ignored`
    /// (the server needs `wal_level = logical`).
    #[tokio::test]
    #[ignore = "needs a Postgres server with wal_level=logical: set SLUICE_TEST_PG_URL"]
    async fn decodes_a_real_servers_output() {
        use crate::types::TypeRegistry;
        use crate::values::convert_tuple_value;
        use sluice_runtime::Value;

        let url = std::env::var("SLUICE_TEST_PG_URL").expect("SLUICE_TEST_PG_URL");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let name = format!("sluice_pgoutput_test_{}", std::process::id());
        // One transaction per statement (a multi-statement batch is one transaction).
        let setup = [
            format!("drop table if exists {name}"),
            format!("drop publication if exists {name}"),
            format!(
                "create table {name} (id int8 primary key, note text, tags text[],
                                      at timestamptz, doc jsonb, big text)"
            ),
            format!("create publication {name} for table {name}"),
            format!("select pg_create_logical_replication_slot('{name}', 'pgoutput')"),
            "set logical_decoding_work_mem = '64kB'".into(),
            format!(
                "insert into {name} values (1, 'a', '{{x,\"y z\",NULL}}',
                     '2026-11-22 06:00:00.123456+00', '{{\"k\": [1]}}',
                     (select string_agg(md5(g::text), '') from generate_series(1, 2000) g))"
            ),
            format!("update {name} set note = 'b' where id = 1"),
            format!("update {name} set id = 2 where id = 1"),
            format!("alter table {name} replica identity full"),
            format!("update {name} set note = 'c'"),
            format!("delete from {name}"),
            "select pg_logical_emit_message(false, 'plain', 'hi')".into(),
            format!(
                "begin;
                 select pg_logical_emit_message(true, 'outbox', '{{}}');
                 insert into {name} (id, note)
                     select g, repeat('n', 100) from generate_series(10, 3000) g;
                 commit"
            ),
            format!("truncate {name}"),
        ];
        for sql in &setup {
            client.batch_execute(sql).await.unwrap();
        }
        let rows = client
            .query(
                "select data from pg_logical_slot_get_binary_changes($1::text::name, null, null,
                     'proto_version', '2', 'publication_names', $1::text, 'streaming', 'on',
                     'messages', 'true')",
                &[&name],
            )
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "select pg_drop_replication_slot('{name}');
                 drop publication {name}; drop table {name};"
            ))
            .await
            .unwrap();

        let registry = TypeRegistry::builtin();
        let mut kinds = Vec::new();
        let mut in_stream = false;
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        let mut saw_toast = false;
        let mut first_row = None;
        for row in rows {
            let data: Vec<u8> = row.get(0);
            let msg = decode(Bytes::from(data), in_stream).unwrap();
            let label = match &msg {
                LogicalMessage::Begin { .. } => "begin",
                LogicalMessage::Commit { .. } => "commit",
                LogicalMessage::Relation { columns, .. } => {
                    kinds = columns
                        .iter()
                        .map(|c| registry.kind(c.type_oid).unwrap().clone())
                        .collect();
                    "relation"
                }
                LogicalMessage::Insert { new, xid, .. } => {
                    assert_eq!(xid.is_some(), in_stream);
                    let values: Vec<_> = new
                        .iter()
                        .zip(&kinds)
                        .map(|(v, k)| convert_tuple_value(k, v).unwrap())
                        .collect();
                    first_row.get_or_insert(values);
                    "insert"
                }
                LogicalMessage::Update { new, .. } => {
                    saw_toast |= new.contains(&TupleValue::UnchangedToast);
                    "update"
                }
                LogicalMessage::Delete { .. } => "delete",
                LogicalMessage::Truncate { rel_ids, .. } => {
                    assert_eq!(rel_ids.len(), 1);
                    "truncate"
                }
                LogicalMessage::Message { .. } => "message",
                LogicalMessage::StreamStart { .. } => {
                    in_stream = true;
                    "stream start"
                }
                LogicalMessage::StreamStop => {
                    in_stream = false;
                    "stream stop"
                }
                LogicalMessage::StreamCommit { .. } => "stream commit",
                other => panic!("unexpected {other:?}"),
            };
            *counts.entry(label).or_default() += 1;
        }
        assert!(saw_toast, "no unchanged TOAST value seen");
        assert_eq!(counts["update"], 3, "{counts:?}");
        assert_eq!(counts["delete"], 1, "{counts:?}");
        assert_eq!(counts["truncate"], 1, "{counts:?}");
        assert_eq!(counts["message"], 2, "{counts:?}");
        assert_eq!(counts["insert"], 1 + 2991, "{counts:?}");
        assert!(
            counts.get("stream start").copied().unwrap_or(0) >= 1,
            "{counts:?}"
        );
        assert!(counts["stream commit"] >= 1, "{counts:?}");
        assert_eq!(counts["stream start"], counts["stream stop"], "{counts:?}");
        let first = first_row.unwrap();
        assert_eq!(first[0], Some(Value::Int(1)));
        assert_eq!(first[1], Some(Value::Text("a".into())));
        assert_eq!(
            first[2],
            Some(Value::Array(vec![
                Value::Text("x".into()),
                Value::Text("y z".into()),
                Value::Null
            ]))
        );
        assert_eq!(
            first[3],
            Some(Value::Text("2026-11-22T06:00:00.123456Z".into()))
        );
        assert_eq!(first[4], Value::json(r#"{"k": [1]}"#).map(Some).unwrap());
    }
}
