//! The end-to-end harness: real PostgreSQL clusters, real HTTP receivers and the real
//! `sluice` binary, all on free loopback ports, all torn down when dropped. Used by the
//! scenarios in `tests/` and by the demo in `examples/demo`.

pub mod elasticsearch;
pub mod kafka;
pub mod postgres;
pub mod rabbitmq;
pub mod receiver;
pub mod redis;
pub mod sluice;

pub use postgres::Postgres;
#[allow(unused_imports)]
pub use receiver::{Receiver, Respond};
pub use sluice::Sluice;

use std::time::{Duration, Instant};

/// A built example transform, `<repo>/target/transforms/<name>.wasm` (or under
/// `SLUICE_TRANSFORMS_DIR`), as an absolute path. Fails, never skips, when it is missing.
pub fn transform_artifact(name: &str) -> std::path::PathBuf {
    let dir = match std::env::var_os("SLUICE_TRANSFORMS_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/transforms"),
    };
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the example transforms with `scripts/build-transforms.sh` \
         (or point SLUICE_TRANSFORMS_DIR at them)",
        path.display()
    );
    path.canonicalize().unwrap()
}

/// `name` in a folder of the `PATH`, when it is there.
pub(crate) fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh scratch directory, world-writable so the `postgres` user can use it too.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "sluice-e2e-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
