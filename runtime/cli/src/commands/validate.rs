//! `sluice validate`: the file, and with `--connect` the database and the sinks.

use std::path::Path;

use sluice_postgres::replication::ReplicationConnection;
use sluice_postgres::setup;

use crate::registry::build_sinks;
use crate::Failure;

pub async fn run(path: &Path, connect: bool) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    // Loading each transform checks its file, its world version and its init(config).
    let host = crate::stages::host_for(&pipeline).map_err(Failure::Runtime)?;
    let mut sinks = build_sinks(&pipeline, host.as_ref())?;
    if let Some(host) = &host {
        crate::stages::load_chain(host, &pipeline, "transforms", &pipeline.transforms)?;
    }
    println!(
        "{}: pipeline {} is valid: {} table(s), {} sink(s) ({})",
        path.display(),
        pipeline.name,
        pipeline.source.tables.len(),
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
    let options = super::postgres_options(&pipeline);
    let failed = |e: &dyn std::fmt::Display| Failure::Runtime(e.to_string());
    let client = setup::connect(&options.url).await.map_err(|e| failed(&e))?;
    setup::check_server(&client, &options)
        .await
        .map_err(|e| failed(&e))?;
    let mut conn = ReplicationConnection::connect(&options.url, "sluice_validate")
        .await
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot open a replication connection (does the role have REPLICATION?): {e}"
            ))
        })?;
    let system = conn.identify_system().await.map_err(|e| failed(&e))?;
    println!(
        "postgres: wal_level=logical, tables present, replication allowed (cluster {})",
        system.system_id
    );
    for spec in &mut sinks {
        spec.sink
            .check()
            .await
            .map_err(|e| Failure::Runtime(format!("sink {}: {e}", spec.name)))?;
        println!("sink {}: ok", spec.name);
    }
    Ok(())
}
