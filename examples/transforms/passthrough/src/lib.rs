//! `passthrough`: keeps every event as it is (`Outcome::keep()`), the cheapest answer a
//! transform can give: the batch crosses into the guest, nothing crosses back. The benchmark
//! uses it, next to `identity`, to measure what a filter that lets everything through costs.

use sluice_transform::{Config, Event, Outcome, Transform};

struct Passthrough;

impl Transform for Passthrough {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn transform(&mut self, _event: Event) -> Outcome {
        Outcome::keep()
    }
}

sluice_transform::export!(Passthrough);
