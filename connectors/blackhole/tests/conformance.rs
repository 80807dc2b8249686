//! The blackhole sink passes the shared sink conformance suite: it shows nothing and
//! cannot fail, so what remains is the contract of its answers and its offsets.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;
use sluice_blackhole::{BlackholeConfig, BlackholeSink};
use sluice_conformance::{suite, Target, Traits};
use sluice_runtime::Sink;

struct Blackhole;

#[async_trait]
impl Target for Blackhole {
    fn traits(&self) -> Traits {
        Traits::default()
    }

    async fn sink(&mut self) -> Box<dyn Sink> {
        Box::new(BlackholeSink::new(BlackholeConfig::new()))
    }

    async fn reset(&mut self) {}

    async fn state(&mut self) -> BTreeMap<String, Value> {
        BTreeMap::new()
    }

    async fn applied(&mut self) -> Vec<String> {
        Vec::new()
    }

    async fn set_down(&mut self, _down: bool) {
        unreachable!("a blackhole cannot fail")
    }
}

suite!(async { Blackhole });
