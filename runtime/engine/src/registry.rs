//! The connector registry: which source and sink `type`s a build knows, and how a
//! pipeline file's section becomes a connector. A new connector is one entry in a table
//! (the binary's `registry.rs`), never edits across the command line.
//!
//! A sink entry is usually `sink::<TheConfig>("name")`: the config is read from the
//! section with serde (`#[serde(deny_unknown_fields)]`, so a typo is a located error) and
//! [`SinkConfig::build`] checks what serde cannot and builds the sink, without I/O.

use serde::de::DeserializeOwned;

use crate::config::{ConfigError, SinkSection, SourceSection};
use crate::sink::Sink;
use crate::source::SourceConnector;

/// A sink `type`.
#[derive(Clone, Copy)]
pub struct SinkType {
    pub name: &'static str,
    /// Read the section and build the sink. No I/O: `check` connects.
    pub build: fn(&SinkSection) -> Result<Box<dyn Sink>, ConfigError>,
}

/// A source `type`.
#[derive(Clone, Copy)]
pub struct SourceType {
    pub name: &'static str,
    /// Read the section and build the connector. No I/O.
    pub build: fn(&SourceSection) -> Result<Box<dyn SourceConnector>, ConfigError>,
}

/// Every connector a build knows.
#[derive(Clone, Copy)]
pub struct Registry {
    pub sources: &'static [SourceType],
    pub sinks: &'static [SinkType],
}

impl Registry {
    pub fn sink(&self, name: &str) -> Option<&SinkType> {
        self.sinks.iter().find(|t| t.name == name)
    }

    pub fn source(&self, name: &str) -> Option<&SourceType> {
        self.sources.iter().find(|t| t.name == name)
    }

    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|t| t.name).collect()
    }

    pub fn source_names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|t| t.name).collect()
    }

    /// Build the sink a section describes; an unknown type names the known ones.
    pub fn build_sink(&self, section: &SinkSection) -> Result<Box<dyn Sink>, ConfigError> {
        match self.sink(&section.kind) {
            Some(t) => (t.build)(section),
            None => Err(section.error(
                "type",
                format!(
                    "unknown sink type `{}` (known: {})",
                    section.kind,
                    self.sink_names().join(", ")
                ),
            )),
        }
    }

    /// Build the source connector a section describes.
    pub fn build_source(
        &self,
        section: &SourceSection,
    ) -> Result<Box<dyn SourceConnector>, ConfigError> {
        match self.source(&section.kind) {
            Some(t) => (t.build)(section),
            None => Err(section.error("type", format!("unknown source type `{}`", section.kind))),
        }
    }
}

/// The key of a section at fault and what is wrong with it; a builder's error, located in
/// the file by the registry.
#[derive(Debug)]
pub struct FieldError {
    /// A path under the section (`url`, `headers.x-tenant`; `""` for the section itself).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        FieldError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// A sink's configuration, as its section's keys, and how it becomes a sink.
pub trait SinkConfig: DeserializeOwned + 'static {
    /// Check what serde cannot and build the sink. No I/O.
    fn build(self) -> Result<Box<dyn Sink>, FieldError>;
}

/// The registry entry of a sink whose config implements [`SinkConfig`].
pub const fn sink<C: SinkConfig>(name: &'static str) -> SinkType {
    SinkType {
        name,
        build: build_sink::<C>,
    }
}

fn build_sink<C: SinkConfig>(section: &SinkSection) -> Result<Box<dyn Sink>, ConfigError> {
    let config: C = section.parse()?;
    config
        .build()
        .map_err(|e| section.error(&e.field, e.message))
}
