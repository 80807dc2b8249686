//! Transforms from the pipeline file, loaded into the WebAssembly host and adapted to the
//! engine's [`Stage`] contract.

use sluice_runtime::chain::{Stage, StageError};
use sluice_runtime::config::{ConfigError, Pipeline, TransformConfig};
use sluice_runtime::Event;
use sluice_wasm::{Transform, TransformHost, TransformSpec};
use std::sync::Arc;

/// A loaded WebAssembly transform as a chain stage.
struct WasmStage(Transform);

impl Stage for WasmStage {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn fingerprint(&self) -> &str {
        self.0.fingerprint()
    }

    fn apply(&mut self, events: &[Arc<Event>]) -> Vec<Result<Vec<Arc<Event>>, StageError>> {
        self.0
            .apply(events)
            .into_iter()
            .map(|r| {
                r.map_err(|e| StageError {
                    kind: e.kind.as_str().to_string(),
                    message: e.message,
                })
            })
            .collect()
    }
}

/// Load a chain. `key` is where it sits in the file (`transforms`, `sinks.<name>.transforms`),
/// so a transform that does not load (wrong world, init error) is reported at its line.
pub fn load_chain(
    host: &TransformHost,
    pipeline: &Pipeline,
    key: &str,
    configs: &[TransformConfig],
) -> Result<Vec<Box<dyn Stage>>, ConfigError> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("{key}[{i}]");
            // The message starts with the key at fault (`memory: …`, `timeout: …`).
            let spec = TransformSpec::from_config(c).map_err(|e| {
                let field = e.split_once(':').map_or("wasm", |(k, _)| k);
                pipeline.error(&format!("{at}.{field}"), &e)
            })?;
            let transform = host
                .load(&spec)
                .map_err(|e| pipeline.error(&format!("{at}.wasm"), e))?;
            Ok(Box::new(WasmStage(transform)) as Box<dyn Stage>)
        })
        .collect()
}

/// The host, when the pipeline has any transform (it starts a thread; skip it otherwise).
pub fn host_for(pipeline: &Pipeline) -> Result<Option<TransformHost>, String> {
    let any =
        !pipeline.transforms.is_empty() || pipeline.sinks.iter().any(|s| !s.transforms.is_empty());
    if !any {
        return Ok(None);
    }
    TransformHost::new(&sluice_wasm::default_cache_dir())
        .map(Some)
        .map_err(|e| e.to_string())
}
