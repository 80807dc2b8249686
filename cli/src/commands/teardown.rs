//! `sluice teardown`: drop what `run` created upstream (slot, publication), forget the
//! offsets.

use std::path::Path;

use sluice_runtime::state::{Offsets, SqliteStore};

use super::runtime;
use crate::Failure;

pub async fn run(path: &Path) -> Result<(), Failure> {
    let pipeline = super::load(path)?;
    let connector = super::source(&pipeline)?;
    for line in connector.teardown().await.map_err(runtime)? {
        println!("{line}");
    }
    if let Some(store) = SqliteStore::open_existing(&pipeline.state).map_err(runtime)? {
        store.clear().map_err(runtime)?;
        println!("cleared offsets in {}", pipeline.state.display());
    }
    Ok(())
}
