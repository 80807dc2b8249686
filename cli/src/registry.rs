//! Every source and sink type this binary knows, as one table each. A new connector is
//! one line here (and a dependency); the commands only ask the table.

use sluice_blackhole::BlackholeConfig;
use sluice_elasticsearch::ElasticsearchConfig;
use sluice_file::FileConfig;
use sluice_kafka::KafkaConfig;
use sluice_rabbitmq::RabbitMqConfig;
use sluice_redis::RedisConfig;
use sluice_runtime::config::{ConfigError, Pipeline, SinkSection};
use sluice_runtime::engine::SinkSpec;
use sluice_runtime::registry::{sink, Registry};
use sluice_wasm::TransformHost;
use sluice_webhook::WebhookConfig;

/// The connectors of this build.
pub const REGISTRY: Registry = Registry {
    sources: &[sluice_postgres::SOURCE, sluice_outbox_poll::SOURCE],
    sinks: &[
        sink::<WebhookConfig>("webhook"),
        sink::<FileConfig>("file"),
        sink::<BlackholeConfig>("blackhole"),
        sink::<RedisConfig>("redis"),
        sink::<ElasticsearchConfig>("elasticsearch"),
        sink::<RabbitMqConfig>("rabbitmq"),
        sink::<KafkaConfig>("kafka"),
    ],
};

/// A short, stable fingerprint of a sink's configuration, stored with each event it parks
/// so an operator can tell events that failed before a fix from those after.
pub fn config_hash(section: &SinkSection) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(section.kind.as_bytes())
        .chain_update(section.config.to_string().as_bytes())
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Every sink of the pipeline, built, with its own transforms loaded into `host`.
pub fn build_sinks(
    pipeline: &Pipeline,
    host: Option<&TransformHost>,
) -> Result<Vec<SinkSpec>, ConfigError> {
    pipeline
        .sinks
        .iter()
        .map(|s| {
            let transforms = match host {
                Some(host) => crate::stages::load_chain(
                    host,
                    pipeline,
                    &format!("sinks.{}.transforms", s.name),
                    &s.transforms,
                )?,
                None => Vec::new(),
            };
            Ok(SinkSpec {
                name: s.name.clone(),
                sink: REGISTRY.build_sink(s)?,
                delivery: s.delivery.clone(),
                config_hash: config_hash(s),
                transforms,
                tables: s.tables.clone(),
            })
        })
        .collect()
}
