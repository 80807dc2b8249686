//! Pipeline files.

pub mod duration;
pub mod secret;

pub use secret::Secret;
