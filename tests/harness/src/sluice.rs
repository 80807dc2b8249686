//! The `sluice` binary under test, as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The `sluice` binary: `$SLUICE_BIN`, else the one cargo built beside the running
/// executable (tests run from `target/<profile>/deps/`, binaries from `target/<profile>/`).
pub fn bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SLUICE_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p sluice` (or set SLUICE_BIN)",
        bin.display()
    );
    bin
}

/// Run a `sluice` subcommand to completion.
pub fn command(dir: &Path, args: &[&str]) -> Output {
    command_env(dir, args, &[])
}

/// Run a `sluice` subcommand to completion with `env` added to this process's environment.
pub fn command_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("SLUICE_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("run sluice")
}

pub struct Sluice {
    pub dir: PathBuf,
    pub pipeline: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    runs: u32,
    env: Vec<(String, String)>,
    /// Extra arguments of `sluice run` for the next starts.
    pub run_args: Vec<String>,
}

impl Sluice {
    /// Write `yaml` as the pipeline file in `dir` and start `sluice run` on it.
    pub fn start(dir: &Path, yaml: &str) -> Sluice {
        let pipeline = dir.join("pipeline.yaml");
        std::fs::write(&pipeline, yaml).unwrap();
        Self::start_file(dir, &pipeline, &[])
    }

    /// Start `sluice run` on an existing pipeline file, from `dir`, with extra environment.
    pub fn start_file(dir: &Path, pipeline: &Path, env: &[(&str, &str)]) -> Sluice {
        let mut s = Sluice {
            dir: dir.to_path_buf(),
            pipeline: pipeline.to_path_buf(),
            child: None,
            log: dir.join("sluice.log"),
            runs: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            run_args: Vec::new(),
        };
        s.restart();
        s
    }

    /// Start `sluice run` again (after a kill or an exit).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "sluice is still running");
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .args(["run", self.pipeline.to_str().unwrap()])
            .args(&self.run_args)
            .current_dir(&self.dir)
            .env("SLUICE_LOG", "info,sluice_postgres=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the exit status (panics after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> i32 {
        let c = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(timeout)
    }

    /// Wait for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let started = std::time::Instant::now();
        let c = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            if started.elapsed() > timeout {
                panic!(
                    "sluice did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The committed offset of `sink` in the state store, as (commit_lsn, index).
    pub fn committed(&self, state: &str, sink: &str) -> Option<(u64, u32)> {
        let conn = rusqlite::Connection::open(self.dir.join(state)).ok()?;
        conn.query_row(
            "select commit_lsn, idx from sink_offsets where sink = ?1",
            [sink],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u32)),
        )
        .ok()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill9();
    }
}
