//! A throwaway `redis-server` on a free loopback port, in its own scratch directory, killed
//! when dropped. A test can take it down ([`Redis::stop`], a `kill -9`) and bring it back on
//! the same port ([`Redis::start_again`]).
//!
//! [`Redis::start`] runs without persistence (`--save "" --appendonly no`): what a kill
//! loses is gone, as with a cache that restarts empty. [`Redis::start_persistent`] keeps an
//! append-only file fsynced on every write, so a kill loses nothing and a restart finds
//! every acknowledged write again.
//!
//! The harness has no Redis client of its own: readiness is a `PING` over a plain socket.
//! Tests talk to the server with whatever client they use, at [`Redis::url`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING`.
const STARTUP: Duration = Duration::from_secs(20);

/// A running (or stopped) `redis-server` owned by a test.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl Redis {
    /// Start a server without persistence on a free port.
    pub fn start() -> Redis {
        Self::launch(false)
    }

    /// Start a server whose every write is in an fsynced append-only file, so that
    /// [`Redis::stop`] followed by [`Redis::start_again`] loses nothing.
    pub fn start_persistent() -> Redis {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> Redis {
        let mut redis = Redis {
            port: super::free_port(),
            dir: super::scratch_dir("redis"),
            persistent,
            child: None,
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the server process is running.
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Kill the server (`kill -9`) and wait for it to exit. Connections are cut; the port
    /// refuses connections until [`Redis::start_again`]. Does nothing when it is down.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port and directory, and wait until it answers
    /// `PING`. Does nothing when it is already up.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let port = self.port.to_string();
        let log = self.dir.join("redis.log");
        let mut command = Command::new(server_binary());
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it with `apt-get install -y redis-server`"
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Poll `PING` until the server answers `+PONG` (it answers `-LOADING` while it reads
    /// its append-only file back).
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if ping(self.port).is_some_and(|answer| answer.starts_with("+PONG")) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "redis-server exited with {status} while starting:\n{}",
                        self.log()
                    );
                }
            }
            if started.elapsed() > STARTUP {
                panic!(
                    "redis-server did not answer PING on port {} within {STARTUP:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Empty every database (`FLUSHALL`, synchronously); `false` when the server did not
    /// answer `+OK`.
    pub fn flush_all(&self) -> bool {
        inline(self.port, "FLUSHALL SYNC", Duration::from_secs(60))
            .is_some_and(|answer| answer.starts_with("+OK"))
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` from `REDIS_SERVER`, else from the PATH, else Debian's location.
fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return path.into();
    }
    let on_path = crate::on_path("redis-server");
    on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}

/// One inline `PING`; the first line of the answer, or `None` when nothing answers.
fn ping(port: u16) -> Option<String> {
    inline(port, "PING", Duration::from_millis(500))
}

/// One inline command (no arguments that need quoting); the first line of the answer, or
/// `None` when nothing answers within `patience`.
fn inline(port: u16, command: &str, patience: Duration) -> Option<String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(patience)).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&answer).into_owned())
}
