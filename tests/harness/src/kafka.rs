//! A throwaway Kafka-protocol broker (tansu) on a free loopback port, killed when dropped.
//! A test can take it down ([`Tansu::stop`], a `kill -9`) and bring it back on the same
//! port ([`Tansu::start_again`]).
//!
//! The broker keeps everything in memory (`--storage-engine memory://tansu/`): a restart
//! comes back **empty**, without topics, messages or producer ids. Tests that stop the
//! broker create their topics again after [`Tansu::start_again`] and read only what
//! arrived after the restart. tansu auto-creates no topic: create them with
//! [`Tansu::create_topic`] (or an admin client). It speaks the idempotent producer and
//! consumer groups, not transactions.
//!
//! The harness has no Kafka client of its own: readiness is an `ApiVersions` request over
//! a plain socket, and topics are created with tansu's own command line. Tests talk to the
//! broker with whatever client they use, at [`Tansu::brokers`].
//!
//! The binary is `TANSU` if set, else `tansu` on the PATH, else `~/.cargo/bin/tansu`
//! (`cargo install tansu --version 0.6.0 --features dynostore --locked`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting broker may take to answer `ApiVersions`.
const STARTUP: Duration = Duration::from_secs(30);

/// A running (or stopped) tansu broker owned by a test.
pub struct Tansu {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Tansu {
    /// Start a broker with in-memory storage on a free port, and wait until it answers.
    pub fn start() -> Tansu {
        let mut tansu = Tansu {
            port: super::free_port(),
            dir: super::scratch_dir("tansu"),
            child: None,
        };
        tansu.start_again();
        tansu
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the broker process is running.
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Create `topic` with `partitions` partitions (`tansu topic create`); a topic that
    /// exists already is left as it is.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let output = Command::new(binary())
            .args(["topic", "create", topic])
            .args(["--partitions", &partitions.to_string()])
            .args(["--broker", &url])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `tansu topic create` ({e})"));
        let said = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && !said.contains("already exists") {
            panic!(
                "`tansu topic create {topic}` failed ({}):\n{said}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }

    /// Kill the broker (`kill -9`) and wait for it to exit. Connections are cut and the
    /// port refuses new ones until [`Tansu::start_again`]; everything it held is lost.
    /// Does nothing when it is down.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the broker again on the same port, empty, and wait until it answers. Does
    /// nothing when it is up.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("open the broker's log file");
        let child = Command::new(binary())
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({e}); install it with \
                     `cargo install tansu --version 0.6.0 --features dynostore --locked` \
                     (or point TANSU at the binary)"
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Poll `ApiVersions` until the broker answers it.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if api_versions(self.port) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!("tansu exited with {status} while starting:\n{}", self.log());
                }
            }
            if started.elapsed() > STARTUP {
                panic!(
                    "tansu did not answer on port {} within {STARTUP:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's output, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `TANSU`, else `tansu` on the PATH, else `~/.cargo/bin/tansu`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        return path.into();
    }
    let on_path = crate::on_path("tansu");
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cargo/bin/tansu")
    })
}

/// Whether the broker on `port` answers an `ApiVersions` (v0) request without error.
fn api_versions(port: u16) -> bool {
    const CORRELATION: i32 = 0x51ce;
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .is_err()
    {
        return false;
    }
    let client_id = b"sluice-testkit";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // api_key: ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes()); // api_version
    body.extend_from_slice(&CORRELATION.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    if stream.write_all(&request).is_err() {
        return false;
    }
    // Size, correlation id, error code.
    let mut head = [0u8; 10];
    if stream.read_exact(&mut head).is_err() {
        return false;
    }
    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let error = i16::from_be_bytes([head[8], head[9]]);
    correlation == CORRELATION && error == 0
}
