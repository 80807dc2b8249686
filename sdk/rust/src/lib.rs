//! The Rust guest SDK for sluice transforms.
//!
//! A sluice transform is a WebAssembly component of the world `sluice:transform/transformer`
//! (`wit/sluice-transform-0.1/world.wit` in the sluice repository). This crate hides the
//! generated bindings behind one trait, [`Transform`], and one macro, [`export!`], so a
//! transform is a dozen lines:
//!
//! ```no_run
//! use sluice_transform::{Config, Event, Outcome, Transform, Value};
//!
//! struct Tag {
//!     value: String,
//! }
//!
//! impl Transform for Tag {
//!     fn init(config: Config) -> Result<Self, String> {
//!         Ok(Tag { value: config.get_or("value", "sluice").to_string() })
//!     }
//!
//!     fn transform(&mut self, mut event: Event) -> Outcome {
//!         event.set("tagged_by", Value::text(&self.value));
//!         Outcome::one(event)
//!     }
//! }
//!
//! sluice_transform::export!(Tag);
//! ```
//!
//! Build it as a `cdylib` with `cargo build --release --target wasm32-wasip2`: the `.wasm`
//! file that comes out is the component a pipeline's `wasm:` names.
//!
//! # The contract, in short
//!
//! - [`Transform::init`] runs once per instance with the transform's `config:` map. An
//!   `Err` stops the pipeline before it starts.
//! - [`Transform::transform`] answers each event with an [`Outcome`]: drop, one event, many
//!   events, or an error (the event goes to the sink's DLQ, the next events go on).
//! - A panic traps the instance. The host then re-runs the batch one event at a time on a
//!   fresh instance (calling `init` again), so only the event that panics fails. Do not
//!   rely on state surviving a trap; prefer [`Outcome::error`] for expected failures.
//! - There is no clock, randomness, filesystem, environment or network: WASI is linked with
//!   an empty, deterministic context, so the same input always gives the same output.
//! - Logging goes to sluice's logs through [`log`].

#![warn(missing_docs)]

mod config;
mod event;
pub mod log;
mod outcome;
mod wire;

/// The bindings generated from the WIT world. Reach for them only when the helpers in this
/// crate are not enough; their types are re-exported at the crate root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/sluice-transform-0.1",
        world: "transformer",
        // The user crate expands `export!`, so the generated macro must be reachable from it.
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "sluice_transform::bindings",
        additional_derives: [PartialEq],
    });
}

pub use config::Config;
pub use event::{Column, Event, Lsn, Message, Name, Op, Row, Source, Value};
pub use outcome::Outcome;

/// The log level of the `log` import, for [`log::log`].
pub use bindings::sluice::transform::log::Level;

/// A transform: built once per instance from its configuration, then called for every event.
///
/// Instances are single-threaded and reused across batches, so `&mut self` state (caches,
/// counters) persists between calls, but the host may discard an instance at any time (after
/// a trap, on restart) and build a new one with the same configuration: state is a cache,
/// never the source of truth.
pub trait Transform: Sized + 'static {
    /// Build the transform from its `config:` map in the pipeline file.
    ///
    /// Called once per instance, before any event. An `Err` is shown to the user as the
    /// reason the pipeline cannot start (`sluice transform test` exits with status 2), so say
    /// what was wrong and how to fix it, e.g. `"config key `fields` is required"`.
    fn init(config: Config) -> Result<Self, String>;

    /// Transform one event.
    ///
    /// Return [`Outcome::one`] to map, [`Outcome::drop`] to filter, [`Outcome::many`] to fan
    /// out, or [`Outcome::error`] to send this event to the sink's DLQ. Events returned keep
    /// the input event's position in the stream whatever `id` they carry.
    fn transform(&mut self, event: Event) -> Outcome;

    /// Transform a batch: must return exactly one outcome per input event, in input order.
    ///
    /// The default calls [`Transform::transform`] for each event. Override it only to share
    /// work across a batch (a lookup table built once per batch, say).
    fn transform_batch(&mut self, events: Vec<Event>) -> Vec<Outcome> {
        events
            .into_iter()
            .map(|event| self.transform(event))
            .collect()
    }
}

/// Export a [`Transform`] as the component's `init` and `transform` functions.
///
/// Invoke it once, at the root of a `cdylib` crate:
///
/// ```ignore
/// sluice_transform::export!(MyTransform);
/// ```
///
/// The macro keeps the instance in a static (the component is single-threaded) and checks
/// that a batch gets exactly one outcome per event.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct SluiceTransformExport;

            impl $crate::__private::Guest for SluiceTransformExport {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    INSTANCE.with(|slot| $crate::__private::init::<$ty>(slot, config))
                }

                fn transform(batch: $crate::__private::Batch) -> $crate::__private::Output {
                    INSTANCE.with(|slot| $crate::__private::transform::<$ty>(slot, batch))
                }
            }

            $crate::__private::export_bindings!(
                SluiceTransformExport with_types_in $crate::bindings
            );
        };
    };
}

/// What [`export!`] expands to; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;

    pub use crate::bindings::export_bindings;
    pub use crate::bindings::sluice::transform::types::{Batch, Output};
    pub use crate::bindings::Guest;

    use crate::{wire, Config, Transform};

    pub fn init<T: Transform>(
        slot: &RefCell<Option<T>>,
        config: Vec<(String, String)>,
    ) -> Result<(), String> {
        // Drop a previous instance first, so a re-`init` never sees two live copies.
        *slot.borrow_mut() = None;
        let transform = T::init(Config::new(config))?;
        *slot.borrow_mut() = Some(transform);
        Ok(())
    }

    pub fn transform<T: Transform>(slot: &RefCell<Option<T>>, batch: Batch) -> Output {
        let mut slot = slot.borrow_mut();
        let Some(transform) = slot.as_mut() else {
            panic!("sluice-transform: `transform` called before a successful `init`");
        };
        let (events, hints, names) = wire::read(batch);
        let expected = events.len();
        let outcomes = transform.transform_batch(events);
        // The host would reject a short or long answer for the whole batch; failing here
        // names the culprit instead.
        assert_eq!(
            outcomes.len(),
            expected,
            "sluice-transform: transform_batch returned {} outcomes for {} events",
            outcomes.len(),
            expected
        );
        wire::write(outcomes, &hints, names)
    }
}
