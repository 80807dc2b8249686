//! One module per subcommand.

pub mod backfill;
pub mod dlq;
pub mod rewind;
pub mod run;
pub mod status;
pub mod teardown;
pub mod transform;
pub mod validate;
pub mod wait;

use std::path::Path;

use sluice_runtime::config::{self, Pipeline};
use sluice_runtime::source::SourceConnector;

use crate::registry::REGISTRY;
use crate::Failure;

/// Load the pipeline file: every key checked, pointing at its line.
pub fn load(path: &Path) -> Result<Pipeline, Failure> {
    Ok(config::load(path, &REGISTRY)?)
}

/// The pipeline's source connector, its section checked (bad input: exit 2).
pub fn source(pipeline: &Pipeline) -> Result<Box<dyn SourceConnector>, Failure> {
    Ok(REGISTRY.build_source(&pipeline.source)?)
}

/// A runtime failure (exit 1) from anything that displays.
pub fn runtime(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}
