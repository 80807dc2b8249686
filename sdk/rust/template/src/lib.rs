//! my_transform: a sluice transform. Replace this with what yours does and its config keys.
//!
//! Config: `tag` (optional, default `sluice`): the value of the `tagged_by` column added to
//! every row's `after`.

use sluice_transform::{log, Config, Event, Outcome, Transform, Value};

struct MyTransform {
    tag: String,
}

impl Transform for MyTransform {
    fn init(config: Config) -> Result<Self, String> {
        let tag = config.get_or("tag", "sluice").to_string();
        log::debug!("my_transform: tagging rows with {tag:?}");
        Ok(MyTransform { tag })
    }

    fn transform(&mut self, mut event: Event) -> Outcome {
        // Keep, drop, map, fan out or refuse: Outcome::keep(), drop(), one(e), many(vec![..]),
        // error(msg). Keep is the cheapest: use it for events you leave as they are.
        event.set("tagged_by", Value::text(&self.tag));
        Outcome::one(event)
    }
}

sluice_transform::export!(MyTransform);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_transform::Op;

    #[test]
    fn tags_after() {
        let mut t = MyTransform::init([("tag", "x")].into_iter().collect()).unwrap();
        let event = Event::new(Op::Insert, "public", "orders").with_after([("id", 1)]);
        let Outcome::Events(out) = t.transform(event) else {
            panic!("error outcome")
        };
        assert_eq!(out[0].get_str("tagged_by"), Some("x"));
    }
}
