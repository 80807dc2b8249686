//! Logging into sluice's logs through the world's `log` import.
//!
//! Functions take a message; the macros of the same names take `format!` arguments:
//!
//! ```ignore
//! use sluice_transform::log;
//! log::info("ready");
//! log::warn!("unknown status {status:?}, passing the event through");
//! ```
//!
//! Each call crosses into the host, so keep per-event logging at `debug`/`trace` level
//! and off the hot path. Outside WebAssembly (unit tests on the host) messages go to stderr.

use crate::bindings::sluice::transform::log::Level;

/// Log `message` at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    crate::bindings::sluice::transform::log::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    eprintln!("[{level:?}] {message}");
}

/// Log at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Log at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Log at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Log at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Log at error level.
pub fn error(message: &str) {
    log(Level::Error, message)
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace {
    ($($arg:tt)+) => { $crate::log::trace(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}

/// `log::debug!("fmt", args…)`: log a formatted message at debug level.
pub use crate::__log_debug as debug;
/// `log::error!("fmt", args…)`: log a formatted message at error level.
pub use crate::__log_error as error;
/// `log::info!("fmt", args…)`: log a formatted message at info level.
pub use crate::__log_info as info;
/// `log::trace!("fmt", args…)`: log a formatted message at trace level.
pub use crate::__log_trace as trace;
/// `log::warn!("fmt", args…)`: log a formatted message at warn level.
pub use crate::__log_warn as warn;
