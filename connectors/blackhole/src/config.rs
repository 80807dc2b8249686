//! The `blackhole` sink's keys in a pipeline file: there are none.
//!
//! ```yaml
//! sinks:
//!   void:
//!     type: blackhole
//! ```

use serde::Deserialize;
use sluice_runtime::registry::{FieldError, SinkConfig};
use sluice_runtime::Sink;

use crate::BlackholeSink;

/// Configuration of a blackhole sink. It has no keys of its own; any key is an error, so
/// a typo meant for another sink type is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BlackholeConfig {}

impl SinkConfig for BlackholeConfig {
    fn build(self) -> Result<Box<dyn Sink>, FieldError> {
        Ok(Box::new(BlackholeSink::new(self)))
    }
}

impl BlackholeConfig {
    /// The (only) configuration.
    pub fn new() -> Self {
        BlackholeConfig {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn no_keys_is_the_configuration() {
        let c: BlackholeConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c, BlackholeConfig::new());
    }

    #[test]
    fn any_key_is_an_error() {
        let e = serde_json::from_value::<BlackholeConfig>(json!({"path": "/tmp/x"})).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }
}
