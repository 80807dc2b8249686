//! The sandbox in one place: the engine configuration, the epoch clock behind every
//! deadline, the linker (what a guest may import) and loading a component into a
//! [`Transform`].

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, OptLevel};

use crate::bindings::TransformerPre;
use crate::cache::{ComponentCache, Origin};
use crate::error::{HostError, LoadError};
use crate::sandbox::{self, Sandbox};
use crate::spec::TransformSpec;
use crate::transform::Transform;

/// One epoch tick: the resolution of every deadline.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// What a transformer must export, for error messages.
const NEEDS: &str =
    "exports `init: func(config: list<tuple<string, string>>) -> result<_, string>` \
                     and `transform: func(events: list<event>) -> list<outcome>` of world \
                     sluice:transform/transformer@0.1.0, and imports nothing but \
                     sluice:transform/log@0.1.0 and WASI 0.2";

/// Loads and runs transforms. One per process: it owns the engine (compiled code is shared
/// by every transform loaded from the same file), a thread that advances the epoch every
/// millisecond, and the cache of compiled components.
pub struct TransformHost {
    engine: Engine,
    linker: Linker<Sandbox>,
    cache: ComponentCache,
    ticker: Arc<Ticker>,
}

impl TransformHost {
    /// A host caching compiled components in `cache_dir` (created if missing).
    pub fn new(cache_dir: &Path) -> Result<Self, HostError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Deadlines: the ticker thread advances the epoch, each call gets a budget of ticks.
            .epoch_interruption(true)
            .consume_fuel(false)
            .cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        sandbox::link(&mut linker).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let cache = ComponentCache::new(cache_dir, &engine)?;
        let ticker = Ticker::start(engine.clone())
            .map_err(|e| HostError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(TransformHost {
            engine,
            linker,
            cache,
            ticker: Arc::new(ticker),
        })
    }

    /// Compile (or read back from the cache) `spec.wasm`, check that it is a
    /// `sluice:transform@0.1.0` transformer, start an instance and run its `init` with
    /// `spec.config`. Blocks for the compilation when the cache misses (tens of ms for a
    /// Rust guest, seconds for an interpreter-based one).
    pub fn load(&self, spec: &TransformSpec) -> Result<Transform, LoadError> {
        let name = spec.name.clone();
        let path = spec.wasm.clone();
        let bytes = std::fs::read(&spec.wasm).map_err(|source| LoadError::Read {
            name: name.clone(),
            path: path.clone(),
            source,
        })?;
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError::CoreModule { name, path })
            }
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm { name, path }),
        }
        let wasm_sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let started = Instant::now();
        let (component, origin) = self
            .cache
            .component(&self.engine, &bytes, &hex(&wasm_sha256))
            .map_err(|e| LoadError::Compile {
                name: name.clone(),
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        tracing::debug!(
            transform = %name,
            cached = origin == Origin::Cached,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "Loaded a transform's compiled code"
        );
        let world = |e: wasmtime::Error| LoadError::World {
            name: name.clone(),
            path: path.clone(),
            problem: format!(
                "{e:#}. It {}; sluice needs a component that {NEEDS}",
                describe(&component, &self.engine)
            ),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(world)?;
        let pre = TransformerPre::new(pre).map_err(world)?;
        Transform::start(
            spec,
            fingerprint(&wasm_sha256, spec),
            self.engine.clone(),
            pre,
            origin,
            self.ticker.clone(),
        )
    }
}

/// Identifies the code and its configuration: SHA-256 over the component's hash and the
/// config's keys and values (in key order), as hex.
fn fingerprint(wasm_sha256: &[u8; 32], spec: &TransformSpec) -> String {
    let mut h = Sha256::new();
    h.update(b"sluice-transform\0");
    h.update(wasm_sha256);
    for (k, v) in &spec.config {
        for part in [k, v] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// "imports …; exports …" for a component that is not a transformer.
fn describe(component: &Component, engine: &Engine) -> String {
    let ty = component.component_type();
    let item = |name: &str, item: &ComponentItem| match item {
        ComponentItem::ComponentFunc(_) | ComponentItem::CoreFunc(_) => format!("func `{name}`"),
        ComponentItem::ComponentInstance(_) => format!("instance `{name}`"),
        ComponentItem::Module(_) => format!("module `{name}`"),
        ComponentItem::Component(_) => format!("component `{name}`"),
        ComponentItem::Type(_) => format!("type `{name}`"),
        ComponentItem::Resource(_) => format!("resource `{name}`"),
    };
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "nothing".to_string()
        } else {
            items.join(", ")
        }
    };
    let imports: Vec<String> = ty.imports(engine).map(|(n, e)| item(n, &e.ty)).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, e)| item(n, &e.ty)).collect();
    format!("imports {} and exports {}", list(imports), list(exports))
}

/// Advances the engine's epoch once per [`TICK`] of wall time, for as long as the host or
/// any transform it loaded is alive.
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-wasm-epoch".into())
            .spawn(move || {
                // Count ticks against the wall clock: sleeps overshoot, deadlines should not.
                let started = Instant::now();
                let mut ticks: u128 = 0;
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    let due = started.elapsed().as_nanos() / TICK.as_nanos();
                    while ticks < due {
                        engine.increment_epoch();
                        ticks += 1;
                    }
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
