//! One module per subcommand.

pub mod dlq;
pub mod run;
pub mod status;
pub mod teardown;
pub mod transform;
pub mod validate;

use std::path::Path;
use std::time::Duration;

use sluice_postgres::{PostgresOptions, TableRef};
use sluice_runtime::config::{self, Pipeline, Snapshot};

use crate::registry::SINK_TYPES;
use crate::Failure;

/// Load the pipeline file and refuse what this build cannot run yet, pointing at the key.
pub fn load(path: &Path) -> Result<Pipeline, Failure> {
    let pipeline = config::load(path, SINK_TYPES)?;
    if pipeline.source.snapshot == Snapshot::Initial {
        return Err(pipeline
            .error(
                "source.snapshot",
                "`snapshot: initial` is not available in this build yet; \
                 use `never` (stream changes from now on)",
            )
            .into());
    }
    Ok(pipeline)
}

pub fn postgres_options(p: &Pipeline) -> PostgresOptions {
    let table = |t: &config::TableName| TableRef::new(t.schema.clone(), t.name.clone());
    PostgresOptions {
        pipeline: p.name.clone(),
        url: p.source.url.expose().to_string(),
        slot: p.source.slot.clone(),
        publication: p.source.publication.clone(),
        tables: p.source.tables.iter().map(table).collect(),
        outbox: p.source.outbox.as_ref().map(|o| table(&o.table)),
        messages: p.source.messages.clone(),
        status_interval: Duration::from_secs(1),
    }
}
