//! `identity`: returns every event it is given (`Outcome::one(event)`), as a map that changes
//! nothing. The benchmark uses it to measure what a map costs with no work of its own: the
//! batch crosses into the guest and every event crosses back. (`passthrough` answers
//! `Outcome::keep()` instead, and nothing crosses back.)

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
