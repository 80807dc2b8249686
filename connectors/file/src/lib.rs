//! The file sink: every event's JSON envelope appended as one line (JSON Lines) to a file,
//! or written to standard output.
//!
//! - [`config`]: the sink's keys in a pipeline file;
//! - [`sink`]: [`FileSink`], one write (and optionally one fsync) per batch;
//! - `writer`: the blocking part: opening, appending, rolling a failed batch back.

pub mod config;
pub mod sink;
mod writer;

pub use config::FileConfig;
pub use sink::FileSink;

/// A file sink configuration that cannot work. Raised by [`FileSink::new`], before
/// anything is opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("file `path` is empty; write a file path like out/events.jsonl, or `-` for stdout")]
    EmptyPath,

    #[error(
        "file `path` `{path}` names a directory; name the file inside it, like {path}/events.jsonl"
    )]
    Directory { path: String },

    #[error("file `fsync: true` needs a file: standard output (`path: -`) cannot be synced")]
    FsyncStdout,
}

impl FileError {
    /// The configuration key at fault, as a path under the sink, so the error can point at
    /// its line in the pipeline file.
    pub fn field(&self) -> String {
        match self {
            FileError::EmptyPath | FileError::Directory { .. } => "path".into(),
            FileError::FsyncStdout => "fsync".into(),
        }
    }
}
