//! `sluice validate`: the file, and with `--connect` the source and the sinks.

use std::path::Path;

use super::runtime;
use crate::registry::build_sinks;
use crate::Failure;

pub async fn run(path: &Path, connect: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let connector = super::source(&pipeline)?;
    // Loading each transform checks its file, its world version and its init(config).
    let host = crate::stages::host_for(&pipeline).map_err(Failure::Runtime)?;
    let mut sinks = build_sinks(&pipeline, host.as_ref())?;
    if let Some(host) = &host {
        crate::stages::load_chain(host, &pipeline, "transforms", &pipeline.transforms)?;
    }
    println!(
        "{}: pipeline {} is valid: {}, {} sink(s) ({})",
        path.display(),
        pipeline.name,
        connector.summary(),
        sinks.len(),
        pipeline
            .sinks
            .iter()
            .map(|s| format!("{}: {}", s.name, s.kind))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !connect {
        return Ok(());
    }
    for line in connector.check().await.map_err(runtime)? {
        println!("{line}");
    }
    for spec in &mut sinks {
        spec.sink
            .check()
            .await
            .map_err(|e| Failure::Runtime(format!("sink {}: {e}", spec.name)))?;
        println!("sink {}: ok", spec.name);
    }
    Ok(())
}
