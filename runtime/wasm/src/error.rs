//! What can go wrong: setting the host up, loading a transform, transforming one event.

use std::fmt;
use std::path::PathBuf;

/// The host could not be set up (before any transform is loaded).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error("cannot create the compiled-transform cache `{}`: {source}; set SLUICE_CACHE_DIR to a writable folder", path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// A transform could not be loaded: the pipeline must not start (`sluice transform test`
/// exits with status 2). Every message names the transform and its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("transform `{name}`: cannot read `{}`: {source}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("transform `{name}`: `{}` is not a WebAssembly file (it does not start with `\\0asm`)", path.display())]
    NotWasm { name: String, path: PathBuf },
    #[error("transform `{name}`: `{}` is a core WebAssembly module, not a component: build it for \
             `wasm32-wasip2` (or wrap it with `wasm-tools component new`)", path.display())]
    CoreModule { name: String, path: PathBuf },
    #[error("transform `{name}`: `{}` does not compile: {message}", path.display())]
    Compile {
        name: String,
        path: PathBuf,
        message: String,
    },
    /// The component is not a `sluice:transform@0.1.0` transformer: it imports something
    /// the host does not provide, or lacks (or mistypes) `init` or `transform`.
    #[error("transform `{name}`: `{}` is not a sluice:transform@0.1.0 transformer: {problem}", path.display())]
    World {
        name: String,
        path: PathBuf,
        problem: String,
    },
    /// Creating an instance failed (its memory or tables exceed the limits, its start
    /// function trapped).
    #[error("transform `{name}`: cannot start an instance: {message}")]
    Instantiate { name: String, message: String },
    /// The guest's `init` returned an error or trapped.
    #[error("transform `{name}`: init failed: {message}")]
    Init { name: String, message: String },
}

/// Why one event failed in a transform: it goes to the sink's DLQ with the transform's
/// name as the stage; the other events of the batch go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformError {
    pub kind: TransformErrorKind,
    pub message: String,
}

impl TransformError {
    pub(crate) fn new(kind: TransformErrorKind, message: impl Into<String>) -> Self {
        TransformError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TransformError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransformErrorKind {
    /// The guest returned `error(message)` for the event (or an output that is not a valid
    /// event).
    Error,
    /// The guest trapped: a panic, an `unreachable`, a stack overflow, `exit`.
    Trap,
    /// The guest did not return within its `timeout`.
    Timeout,
    /// The guest tried to grow its memory past its `memory` cap.
    OutOfMemory,
}

impl TransformErrorKind {
    /// `error`, `trap`, `timeout` or `out_of_memory`: the form recorded in DLQ entries.
    pub fn as_str(self) -> &'static str {
        match self {
            TransformErrorKind::Error => "error",
            TransformErrorKind::Trap => "trap",
            TransformErrorKind::Timeout => "timeout",
            TransformErrorKind::OutOfMemory => "out_of_memory",
        }
    }
}

impl fmt::Display for TransformErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
