//! The transform host: WebAssembly components of the world `sluice:transform@0.1.0`
//! (`wit/sluice-transform-0.1`), each event in, zero, one or many events (or an error) out.
//!
//! - [`TransformHost`]: one per process; the engine, the epoch clock, the compiled-code
//!   cache, and [`TransformHost::load`];
//! - [`Transform`]: one loaded transform; [`Transform::apply`] runs a batch, one result per
//!   event, a trap failing only its own event;
//! - [`TransformSpec`]: what to load (file, config, `timeout`, `memory`);
//! - the sandbox (module `sandbox`): WASI with no capabilities, deterministic clocks and
//!   randomness, captured output, memory caps.

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/sluice-transform-0.1",
        world: "transformer",
        // Events go in as borrowed views of ours (`EventParam<'a>`, no copies before the
        // guest's memory) and come back owned (`EventResult`).
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}
mod cache;
mod convert;
mod error;
mod host;
mod sandbox;
mod spec;
mod transform;

pub use cache::default_cache_dir;
pub use error::{HostError, LoadError, TransformError, TransformErrorKind};
pub use host::TransformHost;
pub use spec::{parse_size, TransformSpec, DEFAULT_MEMORY, DEFAULT_TIMEOUT};
pub use transform::Transform;

#[cfg(test)]
mod tests;
