//! `identity`: returns every event unchanged. The benchmark uses it to measure what crossing
//! into a transform costs (copying the batch in and out), with no work of its own.

use sluice_transform::{Config, Event, Outcome, Transform};

struct Identity;

impl Transform for Identity {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Identity)
    }

    fn transform(&mut self, event: Event) -> Outcome {
        Outcome::one(event)
    }
}

sluice_transform::export!(Identity);
