//! One loaded transform: an instance reused across batches, replaced after any trap, and
//! the rule that a failure fails only its own event.

use std::sync::Arc;
use std::time::Duration;

use sluice_runtime::Event;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::I32Exit;

use crate::bindings::sluice::transform::types::{Batch, Outcome, Output};
use crate::bindings::{Transformer, TransformerPre};
use crate::cache::Origin;
use crate::convert;
use crate::convert::Names;
use crate::error::{LoadError, TransformError, TransformErrorKind};
use crate::host::{Ticker, TICK};
use crate::sandbox::Sandbox;
use crate::spec::TransformSpec;

/// A loaded transform, ready for batches. `Send`, not `Sync`: one batch at a time.
///
/// Owns one instance (a store of its own, under the memory cap). The instance is reused
/// from batch to batch, so a guest may keep state, but after a trap, a timeout or an
/// out-of-memory it is thrown away and a fresh one is started (and `init` run again) for the
/// next call.
pub struct Transform {
    recipe: Recipe,
    fingerprint: String,
    live: Option<Live>,
    /// Buffers for the views of a batch, reused from batch to batch.
    scratch: convert::Scratch,
    /// Whether the compiled code came from the disk cache (the tests check it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) origin: Origin,
    /// Keeps deadlines ticking while this transform lives, even if the host is dropped.
    _ticker: Arc<Ticker>,
}

/// What starting an instance takes (shared with the thread that may run it).
struct Recipe {
    name: Arc<str>,
    config: Vec<(String, String)>,
    timeout: Duration,
    memory: u64,
    engine: Engine,
    pre: TransformerPre<Sandbox>,
}

/// An instance and the store it lives in.
struct Live {
    store: Store<Sandbox>,
    guest: Transformer,
}

impl Transform {
    pub(crate) fn start(
        spec: &TransformSpec,
        fingerprint: String,
        engine: Engine,
        pre: TransformerPre<Sandbox>,
        origin: Origin,
        ticker: Arc<Ticker>,
    ) -> Result<Self, LoadError> {
        let mut t = Transform {
            recipe: Recipe {
                name: spec.name.as_str().into(),
                config: spec
                    .config
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                timeout: spec.timeout,
                memory: spec.memory,
                engine,
                pre,
            },
            fingerprint,
            live: None,
            scratch: convert::Scratch::default(),
            origin,
            _ticker: ticker,
        };
        match t.recipe.instantiate_anywhere() {
            Ok(live) => t.live = Some(live),
            Err(Start::Instantiate(e)) => {
                return Err(LoadError::Instantiate {
                    name: spec.name.clone(),
                    message: e.message,
                })
            }
            Err(Start::Init(message)) => {
                return Err(LoadError::Init {
                    name: spec.name.clone(),
                    message,
                })
            }
            Err(Start::InitTrap(e)) => {
                return Err(LoadError::Init {
                    name: spec.name.clone(),
                    message: e.to_string(),
                })
            }
        }
        Ok(t)
    }

    pub fn name(&self) -> &str {
        &self.recipe.name
    }

    /// A hex SHA-256 of the component's bytes and the config (in key order): identifies the
    /// code and settings that produced an outcome (recorded in DLQ entries).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Transform a batch. Exactly one result per input, in order: `Ok(events)` with 0 events
    /// (drop), 1 (map) or several (fan-out), or the event's error. Output events keep their
    /// input's `position`.
    ///
    /// The batch runs in one guest call under the `timeout`. When that call traps (panic,
    /// timeout, out of memory), the batch's events are run again one at a time, on a fresh
    /// instance after each trap, so that only the events that trap on their own fail, with
    /// that trap's kind; the others get their real outcomes. A batch can therefore take up to
    /// `timeout × (events + 1)` in the worst case (every event loops).
    ///
    /// Blocks the calling thread. Prefer a blocking context (`spawn_blocking`); called from
    /// a multi-threaded Tokio runtime it moves to `block_in_place` itself (WASI's host
    /// calls block on a runtime of their own).
    pub fn apply(&mut self, events: &[Arc<Event>]) -> Vec<Result<Vec<Arc<Event>>, TransformError>> {
        if events.is_empty() {
            return Vec::new();
        }
        outside_async(|| self.apply_blocking(events))
    }

    fn apply_blocking(
        &mut self,
        events: &[Arc<Event>],
    ) -> Vec<Result<Vec<Arc<Event>>, TransformError>> {
        if let Err(e) = self.ensure_live() {
            return vec![Err(e); events.len()];
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let answered = convert::with_batch(events, &mut scratch, |batch, names| {
            self.call(batch).map(|output| read(output, events, names))
        });
        self.scratch = scratch;
        match answered {
            Ok(results) => results,
            Err(e) if events.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(
                    transform = &*self.recipe.name,
                    kind = e.kind.as_str(),
                    "A batch of {} events failed ({}); running them one by one to isolate the failure",
                    events.len(),
                    e.message
                );
                events.iter().map(|input| self.apply_one(input)).collect()
            }
        }
    }

    fn apply_one(&mut self, input: &Arc<Event>) -> Result<Vec<Arc<Event>>, TransformError> {
        self.ensure_live()?;
        let one = std::slice::from_ref(input);
        let mut results =
            convert::with_batch(one, &mut convert::Scratch::default(), |batch, names| {
                self.call(batch).map(|output| read(output, one, names))
            })?;
        results.pop().expect("one result for one event")
    }

    /// Start an instance if the last one died.
    fn ensure_live(&mut self) -> Result<(), TransformError> {
        if self.live.is_none() {
            match self.recipe.instantiate_anywhere() {
                Ok(live) => self.live = Some(live),
                Err(Start::Instantiate(e) | Start::InitTrap(e)) => return Err(e),
                Err(Start::Init(message)) => {
                    return Err(TransformError::new(
                        TransformErrorKind::Error,
                        format!("init failed on restart: {message}"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// One guest call on the live instance, under the deadline. A failure kills the instance.
    fn call(&mut self, batch: Batch<'_>) -> Result<Output, TransformError> {
        let live = self.live.as_mut().expect("a live instance");
        live.store.data_mut().limits.memory_refused = false;
        live.store.set_epoch_deadline(ticks(self.recipe.timeout));
        let result = live.guest.call_transform(&mut live.store, batch);
        let stderr = live.store.data_mut().forward_output();
        match result {
            Ok(output) => Ok(output),
            Err(e) => {
                let refused = live.store.data().limits.memory_refused;
                self.live = None;
                Err(self.recipe.classify(e, refused, &stderr))
            }
        }
    }
}

impl Recipe {
    /// [`Recipe::instantiate`] from any thread. Guest code (its `init`, its panic
    /// handler writing to stderr) reaches WASI's blocking calls, which start a Tokio runtime
    /// of their own and so must not run on a thread inside one: there, it runs on a plain
    /// thread of its own, so a guest can never crash the process, whoever loads it.
    fn instantiate_anywhere(&self) -> Result<Live, Start> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.instantiate();
        }
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(format!("sluice-init-{}", self.name))
                .spawn_scoped(s, || self.instantiate())
                .map_err(|e| {
                    Start::Instantiate(TransformError::new(
                        TransformErrorKind::Trap,
                        format!("cannot start a thread to run the transform: {e}"),
                    ))
                })?
                .join()
                .unwrap_or_else(|_| {
                    Err(Start::Instantiate(TransformError::new(
                        TransformErrorKind::Trap,
                        "the host panicked while the transform started".to_string(),
                    )))
                })
        })
    }

    /// A fresh store and instance, with `init` run.
    fn instantiate(&self) -> Result<Live, Start> {
        let mut store = Store::new(&self.engine, Sandbox::new(self.name.clone(), self.memory));
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(self.timeout));
        let guest = match self.pre.instantiate(&mut store) {
            Ok(guest) => guest,
            Err(e) => {
                let stderr = store.data_mut().forward_output();
                let refused = store.data().limits.memory_refused;
                return Err(Start::Instantiate(self.classify(e, refused, &stderr)));
            }
        };
        store.set_epoch_deadline(ticks(self.timeout));
        let config: Vec<(&str, &str)> = self
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let result = guest.call_init(&mut store, &config);
        let stderr = store.data_mut().forward_output();
        match result {
            Ok(Ok(())) => Ok(Live { store, guest }),
            Ok(Err(message)) => Err(Start::Init(message)),
            Err(e) => {
                let refused = store.data().limits.memory_refused;
                Err(Start::InitTrap(self.classify(e, refused, &stderr)))
            }
        }
    }

    /// What a failed guest call means for its event.
    fn classify(&self, e: wasmtime::Error, memory_refused: bool, stderr: &str) -> TransformError {
        let guest_said = summarize(stderr);
        let with_guest = |what: String| match &guest_said {
            Some(said) => format!("{said} ({what})"),
            None => what,
        };
        if memory_refused {
            return TransformError::new(
                TransformErrorKind::OutOfMemory,
                with_guest(format!(
                    "the transform needed more memory than its cap of {}",
                    size(self.memory)
                )),
            );
        }
        if let Some(trap) = e.downcast_ref::<Trap>() {
            if *trap == Trap::Interrupt {
                return TransformError::new(
                    TransformErrorKind::Timeout,
                    format!("the transform did not return within {:?}", self.timeout),
                );
            }
            return TransformError::new(TransformErrorKind::Trap, with_guest(trap.to_string()));
        }
        if let Some(exit) = e.downcast_ref::<I32Exit>() {
            return TransformError::new(
                TransformErrorKind::Trap,
                with_guest(format!("the transform called exit({})", exit.0)),
            );
        }
        TransformError::new(TransformErrorKind::Trap, with_guest(format!("{e:#}")))
    }
}

/// Why an instance could not be started.
enum Start {
    /// Creating the instance failed (limits, start function).
    Instantiate(TransformError),
    /// `init` returned an error.
    Init(String),
    /// `init` trapped.
    InitTrap(TransformError),
}

/// One result per input event from the guest's `output`, or the same error for every event
/// when the guest answered a different number of outcomes.
fn read(
    output: Output,
    events: &[Arc<Event>],
    names: &mut Names,
) -> Vec<Result<Vec<Arc<Event>>, TransformError>> {
    if output.outcomes.len() != events.len() {
        let e = TransformError::new(
            TransformErrorKind::Error,
            format!(
                "the transform returned {} outcomes for a batch of {} events \
                 (it must return exactly one per event)",
                output.outcomes.len(),
                events.len()
            ),
        );
        return vec![Err(e); events.len()];
    }
    names.extend(output.tables, output.columns);
    output
        .outcomes
        .into_iter()
        .zip(events)
        .map(|(outcome, input)| match outcome {
            Outcome::Keep => Ok(vec![input.clone()]),
            Outcome::Events(out) => convert::outcome_events(out, input, names).map_err(|problem| {
                TransformError::new(
                    TransformErrorKind::Error,
                    format!("the transform returned an invalid event: {problem}"),
                )
            }),
            Outcome::Error(message) => Err(TransformError::new(TransformErrorKind::Error, message)),
        })
        .collect()
}

/// The epoch deadline for a call of at most `timeout`: rounded up, plus the tick in
/// progress.
fn ticks(timeout: Duration) -> u64 {
    let n = timeout.as_nanos().div_ceil(TICK.as_nanos());
    u64::try_from(n).unwrap_or(u64::MAX - 1).saturating_add(1)
}

/// The guest's stderr in one line (a Rust panic: `panicked at src/lib.rs:9:5: boom`),
/// without the backtrace hint; at most 1000 characters.
fn summarize(stderr: &str) -> Option<String> {
    let text = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        // `thread '<unnamed>' (1) panicked at …`: the thread says nothing in a guest.
        .map(
            |l| match (l.starts_with("thread '"), l.find("panicked at ")) {
                (true, Some(at)) => &l[at..],
                _ => l,
            },
        )
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        return None;
    }
    let mut end = text.len().min(1000);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_string())
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Run `f` where blocking is allowed. WASI's synchronous host calls (a guest writing to
/// stderr, polling) block on a Tokio runtime, which panics inside an async task.
fn outside_async<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        // A current-thread runtime cannot lend its thread: use another one.
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn deadlines_round_up_and_sizes_read_well() {
        assert_eq!(ticks(Duration::from_millis(1)), 2);
        assert_eq!(ticks(Duration::from_micros(1500)), 3);
        assert_eq!(ticks(Duration::from_secs(1)), 1001);
        assert_eq!(size(64 << 20), "64MiB");
        assert_eq!(size(1 << 30), "1GiB");
        assert_eq!(size(128_000_000), "125000KiB");
    }

    #[test]
    fn panics_read_as_one_line() {
        let stderr = "\nthread '<unnamed>' (1) panicked at src/lib.rs:9:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            summarize(stderr).unwrap(),
            "panicked at src/lib.rs:9:5: boom"
        );
        let older = "thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom";
        assert_eq!(
            summarize(older).unwrap(),
            "panicked at src/lib.rs:9:5: boom"
        );
        assert_eq!(summarize(" \n"), None);
    }

    #[test]
    fn transforms_are_send() {
        fn send<T: Send>() {}
        send::<Transform>();
    }
}
