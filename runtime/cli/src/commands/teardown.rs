//! `sluice teardown`: drop the slot and the publication, forget the offsets.

use std::path::Path;

use sluice_postgres::setup;
use sluice_runtime::state::StateStore;

use crate::Failure;

pub async fn run(path: &Path) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let failed = |e: &dyn std::fmt::Display| Failure::Runtime(e.to_string());
    let client = setup::connect(pipeline.source.url.expose())
        .await
        .map_err(|e| failed(&e))?;
    for line in setup::teardown(&client, &pipeline.source.slot, &pipeline.source.publication)
        .await
        .map_err(|e| failed(&e))?
    {
        println!("{line}");
    }
    if let Some(store) = StateStore::open_existing(&pipeline.state).map_err(|e| failed(&e))? {
        store.clear().map_err(|e| failed(&e))?;
        println!("cleared offsets in {}", pipeline.state.display());
    }
    Ok(())
}
