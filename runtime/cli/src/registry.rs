//! The sink types this binary knows, and how a pipeline file's sections become sinks.

use sluice_blackhole::{BlackholeConfig, BlackholeSink};
use sluice_file::{FileConfig, FileSink};
use sluice_runtime::config::{ConfigError, DeliveryConfig, OnKey, Pipeline, SinkSection};
use sluice_runtime::dlq::DlqPolicy;
use sluice_runtime::driver::DeliverySettings;
use sluice_runtime::engine::SinkSpec;
use sluice_runtime::Sink;
use sluice_wasm::TransformHost;
use sluice_webhook::{WebhookConfig, WebhookSink};

/// Every `type:` a sink may have.
pub const SINK_TYPES: &[&str] = &["webhook", "file", "blackhole"];

/// Parse and check a sink's section without connecting anywhere.
pub fn build_sink(section: &SinkSection) -> Result<Box<dyn Sink>, ConfigError> {
    match section.kind.as_str() {
        "webhook" => {
            let config: WebhookConfig = section.parse()?;
            let sink = WebhookSink::new(config).map_err(|e| section.error(&e.field(), &e))?;
            Ok(Box::new(sink))
        }
        "file" => {
            let config: FileConfig = section.parse()?;
            let sink = FileSink::new(config).map_err(|e| section.error(&e.field(), &e))?;
            Ok(Box::new(sink))
        }
        "blackhole" => {
            let config: BlackholeConfig = section.parse()?;
            Ok(Box::new(BlackholeSink::new(config)))
        }
        other => Err(section.error("type", format!("unknown sink type `{other}`"))),
    }
}

pub fn settings(d: &DeliveryConfig) -> DeliverySettings {
    DeliverySettings {
        max_events: d.batch.max_events,
        max_wait: d.batch.max_wait,
        retry_initial: d.retry.initial,
        retry_max: d.retry.max,
        retry_max_elapsed: d.retry.max_elapsed,
        dlq: DlqPolicy {
            max_ratio: d.dlq.max_ratio,
            window: d.dlq.window,
            hold_keys: d.dlq.on_key == OnKey::Hold,
        },
    }
}

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
                sink: build_sink(s)?,
                settings: settings(&s.delivery),
                config_hash: config_hash(s),
                transforms,
            })
        })
        .collect()
}
