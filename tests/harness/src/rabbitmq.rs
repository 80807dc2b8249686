//! A throwaway RabbitMQ node on free loopback ports, in its own scratch directory, killed
//! when dropped. A test can stop it ([`RabbitMq::stop`], a clean shutdown, or
//! [`RabbitMq::kill`], a `kill -9`) and bring it back on the same ports with the same data
//! directory ([`RabbitMq::start_again`]), so durable exchanges and queues, and the
//! persistent messages in them, survive.
//!
//! Each node is a `rabbitmq-server` of its own: a free AMQP port (`RABBITMQ_NODE_PORT`), a
//! free Erlang distribution port (`RABBITMQ_DIST_PORT`), the node name
//! `sluice-<port>@localhost`, its own database, logs, configuration file and enabled-plugins
//! file (none: no management plugin) in the scratch directory, and its own `epmd` (the
//! Erlang port mapper) on a free port, started and stopped with the node, so nothing is left
//! running after the test and nodes of parallel tests never meet. `HOME` points into the
//! scratch directory too, so the Erlang cookie is written there. The node runs as the user
//! running the test; RabbitMQ does not refuse root.
//!
//! The harness has no AMQP client of its own: a node is ready when its listener answers the
//! AMQP 0-9-1 protocol header with a `connection.start` frame. Tests talk to it with
//! whatever client they use, at [`RabbitMq::url`] (the default `guest` user, which RabbitMQ
//! lets in from loopback only).
//!
//! Debian's package (`apt-get install -y rabbitmq-server`) is found at its place; set
//! `RABBITMQ_SERVER` to another `rabbitmq-server` script to use that one.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting node may take to accept AMQP connections (a cold start takes about
/// five seconds here; a loaded CI machine more).
const STARTUP: Duration = Duration::from_secs(90);

/// How long a clean shutdown may take before the node is killed.
const SHUTDOWN: Duration = Duration::from_secs(30);

/// A running (or stopped) RabbitMQ node owned by a test.
pub struct RabbitMq {
    /// The AMQP port, on 127.0.0.1.
    pub port: u16,
    /// The Erlang distribution port.
    pub dist_port: u16,
    /// The port of this node's own `epmd`.
    pub epmd_port: u16,
    /// The scratch directory: database, logs, configuration.
    pub dir: PathBuf,
    node: Option<Child>,
    epmd: Option<Child>,
}

impl RabbitMq {
    /// Start a node on free ports and wait until it accepts AMQP connections.
    pub fn start() -> RabbitMq {
        Self::start_with("")
    }

    /// [`RabbitMq::start`] with more lines for its `rabbitmq.conf` (RabbitMQ's `key = value`
    /// format), e.g. a TLS listener: `listeners.ssl.1 = 127.0.0.1:<port>` and its
    /// `ssl_options.*`.
    pub fn start_with(config: &str) -> RabbitMq {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = super::free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let dir = super::scratch_dir("rabbitmq");
        for sub in ["mnesia", "log", "home"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut node = RabbitMq {
            port: ports[0],
            dist_port: ports[1],
            epmd_port: ports[2],
            dir,
            node: None,
            epmd: None,
        };
        node.write_config(config);
        node.start_again();
        node
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`: the default user on the default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The Erlang node name, `sluice-<port>@localhost`.
    pub fn node_name(&self) -> String {
        format!("sluice-{}@localhost", self.port)
    }

    /// Whether the node is running.
    pub fn is_up(&self) -> bool {
        self.node.is_some()
    }

    /// The node's process id (the Erlang VM), while it runs: for measuring its CPU.
    pub fn pid(&self) -> Option<u32> {
        self.node.as_ref().map(Child::id)
    }

    /// Shut the node down cleanly (SIGTERM: clients are told the connection is closed,
    /// queues are written out) and wait for it to exit; a node that takes longer than 30 s
    /// is killed. The port refuses connections until [`RabbitMq::start_again`]. Does
    /// nothing when it is down.
    pub fn stop(&mut self) {
        let Some(mut child) = self.node.take() else {
            return;
        };
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let started = Instant::now();
        while signalled && started.elapsed() < SHUTDOWN {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kill the node (`kill -9`) and wait for it to exit: connections end without an AMQP
    /// close (the kernel closes the sockets), as in a crash. What it confirmed is on disk and comes back with
    /// [`RabbitMq::start_again`]. Does nothing when it is down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.node.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the node again on the same ports and directory, and wait until it accepts
    /// AMQP connections. Does nothing when it is already up.
    pub fn start_again(&mut self) {
        if self.node.is_some() {
            return;
        }
        self.start_epmd();
        let stdout = File::create(self.dir.join("stdout.log")).unwrap();
        let stderr = stdout.try_clone().unwrap();
        let dir = &self.dir;
        let mut command = Command::new(server_script());
        command
            .current_dir(dir)
            .env("HOME", dir.join("home"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_NODENAME", self.node_name())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            // An environment file that does not exist: the system's is not read.
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            // Distribution on loopback only; never start a shared epmd daemon.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false",
            )
            // The script then execs the VM instead of staying as a shell that forwards
            // signals: the child is the node itself, so a kill reaches it. `-noinput` keeps
            // the Erlang shell off.
            .env("RABBITMQ_ALLOW_INPUT", "1")
            .arg("-noinput")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start rabbitmq-server ({e}); install it with \
                 `apt-get install -y rabbitmq-server`"
            )
        });
        self.node = Some(child);
        self.wait_ready();
    }

    /// This node's `epmd`, if it is not running already.
    fn start_epmd(&mut self) {
        if let Some(epmd) = self.epmd.as_mut() {
            if let Ok(None) = epmd.try_wait() {
                return;
            }
        }
        let child = Command::new("epmd")
            .args([
                "-port",
                &self.epmd_port.to_string(),
                "-address",
                "127.0.0.1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start epmd ({e}); it comes with rabbitmq-server's Erlang")
            });
        self.epmd = Some(child);
    }

    /// Poll the AMQP handshake until the node answers it.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if amqp_answers(self.port) {
                return;
            }
            if let Some(child) = self.node.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.node = None;
                    panic!(
                        "rabbitmq-server exited with {status} while starting:\n{}",
                        self.log()
                    );
                }
            }
            if started.elapsed() > STARTUP {
                panic!(
                    "rabbitmq-server did not accept AMQP connections on port {} within \
                     {STARTUP:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run `rabbitmqctl` against this node (e.g. `["set_disk_free_limit", "1000000GB"]`
    /// raises a disk alarm, which blocks publishers; `["set_disk_free_limit", "1MB"]`
    /// clears it again) and
    /// return its output; panics when it fails. Takes a second or two: the tool starts an
    /// Erlang node of its own to talk to this one.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = Command::new(ctl_script())
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .args(["-n", &self.node_name()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {text}"
        );
        text
    }

    /// Declare topology without an AMQP client: import RabbitMQ definitions (the JSON of
    /// `rabbitmqctl export_definitions`: `exchanges`, `queues`, `bindings`, ...) and wait
    /// until every exchange and queue they name exists. For the demo and the benchmark; a
    /// test with an AMQP client can declare with it.
    pub fn import_definitions(&self, definitions: &serde_json::Value) {
        let path = self.dir.join("definitions.json");
        std::fs::write(&path, definitions.to_string()).unwrap();
        self.ctl(&["import_definitions", &path.display().to_string()]);
        // The import runs in the background on the node.
        let names = |kind: &str| -> Vec<String> {
            definitions[kind]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let started = Instant::now();
        for (kind, list) in [("exchanges", "list_exchanges"), ("queues", "list_queues")] {
            let wanted = names(kind);
            loop {
                let listed = self.ctl(&[list, "--quiet", "--no-table-headers", "name"]);
                let have: Vec<&str> = listed.lines().map(str::trim).collect();
                if wanted.iter().all(|name| have.contains(&name.as_str())) {
                    break;
                }
                assert!(
                    started.elapsed() < STARTUP,
                    "the node did not declare {wanted:?}; it has {have:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The node's output and log, for failure messages.
    pub fn log(&self) -> String {
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        format!(
            "{}\n{}",
            read(self.dir.join("stdout.log")),
            read(
                self.dir
                    .join("log")
                    .join(format!("{}.log", self.node_name()))
            )
        )
    }

    fn write_config(&self, extra: &str) {
        // The listener comes from RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT. A low
        // disk limit: a test machine's disk being half full must not block publishers.
        let config = format!(
            "disk_free_limit.absolute = 1MB\n\
             log.console = false\n\
             log.file.level = info\n\
             {extra}\n"
        );
        std::fs::write(self.dir.join("rabbitmq.conf"), config).unwrap();
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n").unwrap();
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `rabbitmq-server` script: `RABBITMQ_SERVER`, else Debian's (the one in /usr/sbin
/// is a wrapper that switches to the `rabbitmq` user and its own directories), else the
/// one on the PATH.
fn server_script() -> PathBuf {
    if let Some(path) = std::env::var_os("RABBITMQ_SERVER") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.is_file() {
        return debian;
    }
    let on_path = crate::on_path("rabbitmq-server");
    on_path.unwrap_or(debian)
}

/// `rabbitmqctl` beside the server script.
fn ctl_script() -> PathBuf {
    let server = server_script();
    match server.parent() {
        Some(dir) => dir.join("rabbitmqctl"),
        None => PathBuf::from("rabbitmqctl"),
    }
}

/// Whether a node on `port` answers the AMQP 0-9-1 protocol header with a method frame on
/// channel 0 (its `connection.start`).
fn amqp_answers(port: u16) -> bool {
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
        || stream.write_all(b"AMQP\x00\x00\x09\x01").is_err()
    {
        return false;
    }
    let mut frame = [0u8; 3];
    // Frame type 1 (method), channel 0.
    stream.read_exact(&mut frame).is_ok() && frame == [1, 0, 0]
}
