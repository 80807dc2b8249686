//! Compiled components on disk, keyed by content, so that a restart does not recompile.
//!
//! A file is named after the SHA-256 of the component's bytes and a hash of the engine's
//! compatibility settings (Wasmtime version, target, compilation flags), so upgrading
//! sluice or changing the engine config misses the cache instead of loading stale code.
//! Files are written to a temporary name and renamed into place: readers never see half a
//! file, and concurrent processes compiling the same component both end up with a whole
//! one.
//!
//! Loading a compiled artifact skips validation (it is native code), which is why only
//! files this module wrote are loaded: the folder must not be writable by anyone else.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::Component;
use wasmtime::Engine;

use crate::error::HostError;

/// Where compiled transforms are kept unless told otherwise: `$SLUICE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`, else a folder in the temporary
/// directory (no home at all).
pub fn default_cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("SLUICE_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("sluice");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("sluice"),
        None => std::env::temp_dir().join("sluice-cache"),
    }
}

pub(crate) struct ComponentCache {
    dir: PathBuf,
    /// The engine's compatibility hash, in every file name.
    engine_key: String,
}

/// How a component was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Read back from the cache.
    Cached,
    /// Compiled now (and written to the cache, unless that failed).
    Compiled,
}

impl ComponentCache {
    pub(crate) fn new(dir: &Path, engine: &Engine) -> Result<Self, HostError> {
        fs::create_dir_all(dir).map_err(|source| HostError::Cache {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ComponentCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    pub(crate) fn path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", self.engine_key))
    }

    /// The compiled form of `wasm` (whose SHA-256 is `wasm_sha256`): from the cache when it
    /// is there and loads, else compiled and stored. A cache that cannot be written only
    /// costs a recompilation next time (logged as a warning).
    pub(crate) fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> wasmtime::Result<(Component, Origin)> {
        let path = self.path(wasm_sha256);
        if path.exists() {
            // SAFETY: the file is one this module wrote (whole, thanks to the rename) for this
            // engine configuration; `deserialize_file` still checks the header and the
            // compatibility settings and fails cleanly on a mismatch.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, Origin::Cached)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    "A compiled transform in the cache does not load ({e}); compiling again"
                ),
            }
        }
        let component = Component::new(engine, wasm)?;
        match component.serialize() {
            Ok(bytes) => {
                if let Err(e) = write_atomically(&path, &bytes) {
                    tracing::warn!(
                        path = %path.display(),
                        "Cannot store a compiled transform in the cache ({e}); \
                         it will be compiled again on the next start"
                    );
                }
            }
            Err(e) => tracing::warn!("Cannot serialize a compiled transform: {e}"),
        }
        Ok((component, Origin::Compiled))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
