//! A replication-mode connection to PostgreSQL, on `postgres-protocol`.
//!
//! tokio-postgres cannot open a connection with `replication=database` nor drive the
//! CopyBoth sub-protocol, so this module speaks the wire protocol itself: startup and
//! authentication (trust, cleartext, MD5, SCRAM-SHA-256), simple queries
//! (`IDENTIFY_SYSTEM`, `START_REPLICATION`) and the CopyBoth stream, split into a reading
//! half (the source loop) and a writing half (standby status updates) so that a slow
//! reader can never stop status updates from reaching the server.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend::Message, frontend};
use sluice_runtime::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_postgres::config::{Host, SslMode};

/// Session settings that make every value's text form predictable for the decoder.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,YMD -c TimeZone=UTC -c extra_float_digits=3 \
     -c bytea_output=hex -c IntervalStyle=iso_8601";

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
}

impl ReplicationError {
    /// Worth reconnecting for: the network or the server went away, or the server is
    /// starting up or shutting down. Configuration and permission problems are not.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Connect { .. } | ReplicationError::Io(_) => true,
            // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
            // 55006 object in use (slot still held by the old walsender), 53300 too many
            // connections, 08xxx connection exceptions.
            ReplicationError::Server { code, .. } => {
                code.starts_with("57P")
                    || code.starts_with("08")
                    || code == "55006"
                    || code == "53300"
            }
            ReplicationError::Protocol(_) | ReplicationError::Config(_) => false,
        }
    }
}

/// What `IDENTIFY_SYSTEM` says.
#[derive(Clone, Debug)]
pub struct SystemId {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
}

/// A message of the CopyBoth stream.
#[derive(Debug)]
pub enum ReplicationMessage {
    /// `w`: WAL data. `start` is the LSN of the change this pgoutput message describes.
    XLogData { start: Lsn, end: Lsn, data: Bytes },
    /// `k`: the server's WAL end, and whether it wants an answer right away.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// A connection in replication mode, before streaming.
pub struct ReplicationConnection {
    stream: TcpStream,
    buf: BytesMut,
}

impl ReplicationConnection {
    /// Open a `replication=database` connection using the libpq-style `url`.
    pub async fn connect(url: &str, application_name: &str) -> Result<Self, ReplicationError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            ReplicationError::Config(format!("source.url is not a PostgreSQL URL: {e}"))
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(ReplicationError::Config(
                "source.url asks for sslmode=require, but this build speaks plain TCP only; \
                 use sslmode=disable or prefer on a trusted network"
                    .into(),
            ));
        }
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => {
                return Err(ReplicationError::Config(format!(
                    "source.url names a Unix socket ({}); use a TCP host",
                    p.display()
                )))
            }
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = format!("{host}:{port}");
        let stream =
            TcpStream::connect(&target)
                .await
                .map_err(|source| ReplicationError::Connect {
                    target: target.clone(),
                    source,
                })?;
        stream.set_nodelay(true)?;
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let mut conn = ReplicationConnection {
            stream,
            buf: BytesMut::with_capacity(256 * 1024),
        };
        let params = [
            ("user", user.as_str()),
            ("database", dbname.as_str()),
            ("replication", "database"),
            ("application_name", application_name),
            ("options", SESSION_OPTIONS),
            ("client_encoding", "UTF8"),
        ];
        let mut out = BytesMut::new();
        frontend::startup_message(params, &mut out)?;
        conn.stream.write_all(&out).await?;
        conn.authenticate(&user, config.get_password()).await?;
        Ok(conn)
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ReplicationError> {
        let need_password = || {
            password.ok_or_else(|| {
                ReplicationError::Config(
                    "the server asks for a password; put one in source.url".into(),
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut out = BytesMut::new();
            match self.next_message().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(need_password()?, &mut out)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        need_password()?,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut supported = false;
                    while let Some(m) = mechanisms.next()? {
                        supported |= m == SCRAM_SHA_256;
                    }
                    if !supported {
                        return Err(ReplicationError::Protocol(
                            "the server offers no SASL mechanism this client supports (SCRAM-SHA-256)".into(),
                        ));
                    }
                    let s = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| unexpected("SASL continue"))?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    scram
                        .as_mut()
                        .ok_or_else(|| unexpected("SASL final"))?
                        .finish(body.data())?;
                }
                Message::ErrorResponse(body) => return Err(server_error(body)),
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => {}
                _ => return Err(unexpected("message during authentication")),
            }
            if !out.is_empty() {
                self.stream.write_all(&out).await?;
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: the cluster's identity, timeline and current WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemId, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| unexpected("empty IDENTIFY_SYSTEM"))?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemId {
            system_id: field(0),
            timeline: field(1).parse().map_err(|_| unexpected("timeline"))?,
            xlog_pos: field(2).parse().map_err(|_| unexpected("xlogpos"))?,
        })
    }

    /// Run a simple query and return its rows as text. Used for replication commands.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::new();
                    while let Some(r) = ranges.next()? {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Message::ErrorResponse(body) => error = Some(server_error(body)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `START_REPLICATION SLOT … LOGICAL …` and split into the stream's two halves.
    /// `options` are pgoutput's plugin options, e.g. `("proto_version", "1")`.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, String)],
    ) -> Result<(ReplicationStream, StatusWriter), ReplicationError> {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("\"{k}\" '{}'", v.replace('\'', "''")))
            .collect();
        let sql = format!(
            "START_REPLICATION SLOT \"{}\" LOGICAL {start} ({})",
            slot.replace('"', "\"\""),
            opts.join(", ")
        );
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out)?;
        self.stream.write_all(&out).await?;
        loop {
            // postgres-protocol does not know CopyBothResponse ('W'); frame it here.
            if self.take_copy_both_response().await? {
                break;
            }
            match self.next_message().await? {
                Message::ErrorResponse(body) => return Err(server_error(body)),
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                _ => return Err(unexpected("answer to START_REPLICATION")),
            }
        }
        let (read, write) = self.stream.into_split();
        Ok((
            ReplicationStream {
                read,
                buf: self.buf,
                paced: false,
            },
            StatusWriter { write },
        ))
    }

    async fn next_message(&mut self) -> Result<Message, ReplicationError> {
        next_message(&mut self.stream, &mut self.buf).await
    }

    /// Consume a CopyBothResponse if it is the next message.
    async fn take_copy_both_response(&mut self) -> Result<bool, ReplicationError> {
        while self.buf.len() < 5 {
            self.buf.reserve(128 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ReplicationError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        if self.buf[0] != b'W' {
            return Ok(false);
        }
        let len =
            1 + u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        while self.buf.len() < len {
            self.buf.reserve(len);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ReplicationError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        self.buf.advance(len);
        Ok(true)
    }
}

async fn next_message<R: AsyncReadExt + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
) -> Result<Message, ReplicationError> {
    loop {
        if let Some(message) = Message::parse(buf)? {
            return Ok(message);
        }
        buf.reserve(128 * 1024);
        if read.read_buf(buf).await? == 0 {
            return Err(ReplicationError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// While the server streams, the socket wakes us only once this much has arrived...
const PACED_LOW_WATER: usize = 32 * 1024;
/// ...or this much time has passed since we last read.
const PACE: Duration = Duration::from_millis(1);

/// Set the socket's `SO_RCVLOWAT`; whether it took (a failure only costs wake-ups).
fn set_low_water(read: &OwnedReadHalf, bytes: usize) -> bool {
    use std::os::fd::AsRawFd;
    let fd = AsRef::<TcpStream>::as_ref(read).as_raw_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket for the duration of the call, and `value` is a
    // c_int as SO_RCVLOWAT expects, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// The reading half of a started replication stream.
///
/// **Paced reads.** The walsender writes one small message per `send`. A reader woken for
/// each one costs the server a wake-up per message, on the walsender's CPU, and the
/// walsender is what limits throughput (BENCHMARKS.md). So while data flows the socket's
/// `SO_RCVLOWAT` is raised: the kernel wakes us when [`PACED_LOW_WATER`] bytes are waiting,
/// and a timer reads whatever is there after [`PACE`] otherwise. A wait that finds nothing
/// drops back to waking on any byte, so an idle stream costs no timer and the first change
/// after a pause is read at once. Latency added while busy: at most [`PACE`].
pub struct ReplicationStream {
    read: OwnedReadHalf,
    buf: BytesMut,
    /// Whether `SO_RCVLOWAT` is raised.
    paced: bool,
}

impl ReplicationStream {
    /// The next XLogData or keepalive. `Ok(None)` when the server ended the stream (it is
    /// shutting down); the caller reconnects.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        loop {
            let message = loop {
                if let Some(message) = Message::parse(&mut self.buf)? {
                    break message;
                }
                self.buf.reserve(256 * 1024);
                if self.fill().await? == 0 {
                    return Err(ReplicationError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            };
            match message {
                Message::CopyData(body) => return parse_copy_data(body.into_bytes()).map(Some),
                Message::ErrorResponse(body) => return Err(server_error(body)),
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                // CopyDone, CommandComplete, ReadyForQuery: the server ended the stream
                // (a shutdown or a restart).
                _ => return Ok(None),
            }
        }
    }

    /// Read what the socket has into the buffer; 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        loop {
            if !self.paced {
                let n = self.read.read_buf(&mut self.buf).await?;
                if n > 0 {
                    self.paced = set_low_water(&self.read, PACED_LOW_WATER);
                }
                return Ok(n);
            }
            let _ = tokio::time::timeout(PACE, self.read.readable()).await;
            match self.read.try_read_buf(&mut self.buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing for a whole pace: idle. Wake on the next byte again.
                    set_low_water(&self.read, 1);
                    self.paced = false;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a whole message is already buffered (so `next` will not wait on the socket).
    pub fn has_buffered_message(&self) -> bool {
        matches!(postgres_protocol::message::backend::Header::parse(&self.buf),
            Ok(Some(h)) if self.buf.len() > h.len() as usize)
    }
}

fn parse_copy_data(mut data: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let short = || unexpected("truncated CopyData");
    if data.is_empty() {
        return Err(short());
    }
    match data.get_u8() {
        b'w' => {
            if data.len() < 24 {
                return Err(short());
            }
            let start = Lsn(data.get_u64());
            let end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(ReplicationMessage::XLogData { start, end, data })
        }
        b'k' => {
            if data.len() < 17 {
                return Err(short());
            }
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                reply_requested: data.get_u8() == 1,
            })
        }
        other => Err(ReplicationError::Protocol(format!(
            "unknown CopyData message type {:?}",
            other as char
        ))),
    }
}

/// The writing half: standby status updates.
pub struct StatusWriter {
    write: OwnedWriteHalf,
}

impl StatusWriter {
    /// Tell the server what we have received (`write`) and what it may forget (`flush`,
    /// reported as applied too). `reply` asks the server to answer with a keepalive now.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply: bool,
    ) -> Result<(), ReplicationError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let pg_now = now.as_micros() as i64 - PG_EPOCH_OFFSET_MICROS;
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write.0);
        body.put_u64(flush.0);
        body.put_u64(flush.0);
        body.put_i64(pg_now);
        body.put_u8(reply as u8);
        let mut out = BytesMut::new();
        frontend::CopyData::new(&body[..])?.write(&mut out);
        self.write.write_all(&out).await?;
        Ok(())
    }

    /// End the stream politely: CopyDone, then Terminate.
    pub async fn finish(mut self) -> Result<(), ReplicationError> {
        let mut out = BytesMut::new();
        frontend::copy_done(&mut out);
        frontend::terminate(&mut out);
        self.write.write_all(&out).await?;
        self.write.shutdown().await.ok();
        Ok(())
    }
}

fn unexpected(what: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("unexpected {what} from the server"))
}

fn server_error(body: postgres_protocol::message::backend::ErrorResponseBody) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    ReplicationError::Server { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x10);
        w.put_u64(0x20);
        w.put_i64(0);
        w.put_slice(b"B...");
        match parse_copy_data(w.freeze()).unwrap() {
            ReplicationMessage::XLogData { start, end, data } => {
                assert_eq!((start, end), (Lsn(0x10), Lsn(0x20)));
                assert_eq!(&data[..], b"B...");
            }
            other => panic!("{other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x30);
        k.put_i64(0);
        k.put_u8(1);
        assert!(matches!(
            parse_copy_data(k.freeze()).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(0x30),
                reply_requested: true
            }
        ));
        assert!(parse_copy_data(Bytes::from_static(b"k\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"z")).is_err());
    }

    /// A keepalive as the server frames it: CopyData('k', wal_end, time, reply).
    fn keepalive(wal_end: u64) -> Vec<u8> {
        let mut m = BytesMut::new();
        m.put_u8(b'd');
        m.put_u32(4 + 1 + 8 + 8 + 1);
        m.put_u8(b'k');
        m.put_u64(wal_end);
        m.put_i64(0);
        m.put_u8(0);
        m.to_vec()
    }

    /// Read the next message within 500 ms and check it is keepalive `expect`.
    async fn next(stream: &mut ReplicationStream, expect: u64) {
        let m = tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .expect("a small message is read without more data behind it")
            .unwrap();
        assert!(
            matches!(m, Some(ReplicationMessage::Keepalive { wal_end, .. }) if wal_end == Lsn(expect)),
            "{m:?}"
        );
    }

    /// Paced reads must never strand a message below the low-water mark: the first one
    /// after a pause, a small one while paced, and one after paced reading went idle all
    /// arrive promptly (the failure mode is waiting until more data comes, i.e. forever).
    #[tokio::test]
    async fn paced_reads_deliver_small_messages_promptly() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (read, _write) = client.into_split();
        let mut stream = ReplicationStream {
            read,
            buf: BytesMut::new(),
            paced: false,
        };
        server.write_all(&keepalive(1)).await.unwrap();
        next(&mut stream, 1).await;
        assert!(stream.paced, "data flowed: paced");
        // Paced, and far below the low-water mark.
        server.write_all(&keepalive(2)).await.unwrap();
        next(&mut stream, 2).await;
        // Nothing for a while: the next wait finds nothing and goes back to any-byte
        // wake-ups; a message after that comes at once.
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.write_all(&keepalive(3)).await.unwrap();
            server
        });
        next(&mut stream, 3).await;
        let mut server = later.await.unwrap();
        // A message split in two writes is put together.
        let whole = keepalive(4);
        server.write_all(&whole[..7]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        server.write_all(&whole[7..]).await.unwrap();
        next(&mut stream, 4).await;
    }

    #[test]
    fn transient_errors_are_the_ones_worth_reconnecting_for() {
        let server = |code: &str| ReplicationError::Server {
            code: code.into(),
            message: String::new(),
        };
        assert!(server("57P01").is_transient());
        assert!(server("55006").is_transient());
        assert!(!server("42704").is_transient());
        assert!(!ReplicationError::Config("x".into()).is_transient());
    }
}
