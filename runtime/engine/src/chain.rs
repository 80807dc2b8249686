//! Transform chains: the stages an event goes through before a sink sees it.
//!
//! A [`Stage`] maps each event of a batch to zero, one or many events, or an error (the
//! WebAssembly host implements it; see `runtime/wasm`). A [`Chain`] runs stages in order.
//! The pipeline-level chain runs once per source event, before fan-out to the sinks: the
//! first sink driver that needs a result computes it for its whole batch and caches it on
//! the journal record beside the event, the others reuse it. Each sink's own chain runs in its driver, after it.
//! Outputs keep their source event's position (offsets count source events); the extra
//! events of a fan-out are numbered (`id#k`).

use std::sync::{Arc, Mutex};

use crate::event::Event;
use crate::journal::Record;
use crate::telemetry::StageStats;

/// Why a stage failed one event.
#[derive(Clone, Debug, PartialEq)]
pub struct StageError {
    /// `error` (the transform said so), `trap`, `timeout` or `out_of_memory`.
    pub kind: String,
    pub message: String,
}

/// One step of a chain.
///
/// Contract: `apply` returns exactly one result per input, in input order; `Ok(vec![])`
/// drops the event, one element maps it, several fan it out. Output events keep their
/// input's `position`. A failure of one event never affects the others. Deterministic:
/// the same input gives the same output, so replays and restarts agree.
pub trait Stage: Send {
    fn name(&self) -> &str;
    /// Identifies the code and configuration (recorded with dead-lettered events).
    fn fingerprint(&self) -> &str;
    /// One result per input, in order: the events it became (the input itself, shared,
    /// when the stage kept it unchanged), or its error.
    fn apply(&mut self, events: &[Arc<Event>]) -> Vec<Result<Vec<Arc<Event>>, StageError>>;
}

/// A source event that failed in a chain.
#[derive(Clone, Debug)]
pub struct ChainFailure {
    /// The failing stage's name and fingerprint.
    pub stage: String,
    pub fingerprint: String,
    pub error: StageError,
    /// The event as it reached the failing stage.
    pub failed: Arc<Event>,
}

/// What a chain made of one source event.
pub type ChainOutput = Result<Vec<Arc<Event>>, ChainFailure>;

pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    /// Time and events per stage, for the metrics.
    stats: Vec<Arc<StageStats>>,
}

impl Chain {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        let stats = stages.iter().map(|s| StageStats::new(s.name())).collect();
        Chain { stages, stats }
    }

    /// Each stage's time per batch and events, in chain order.
    pub fn stats(&self) -> Vec<Arc<StageStats>> {
        self.stats.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Run every input through every stage. One output per input, in order; an input
    /// fails whole when any of its events fails at any stage. Outputs are numbered
    /// `fanout = 0, 1, …` per input.
    pub fn run(&mut self, inputs: &[Arc<Event>]) -> Vec<ChainOutput> {
        let mut failed: Vec<Option<ChainFailure>> = vec![None; inputs.len()];
        let mut current: Vec<(usize, Arc<Event>)> = inputs.iter().cloned().enumerate().collect();
        for (stage, stats) in self.stages.iter_mut().zip(&self.stats) {
            if current.is_empty() {
                break;
            }
            let events: Vec<Arc<Event>> = current.iter().map(|(_, e)| e.clone()).collect();
            let started = std::time::Instant::now();
            let results = stage.apply(&events);
            stats.batch_seconds.observe(started.elapsed().as_secs_f64());
            stats
                .events
                .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(
                results.len(),
                events.len(),
                "stage {} broke its contract",
                stage.name()
            );
            let mut next = Vec::with_capacity(current.len());
            for ((i, event), result) in current.into_iter().zip(results) {
                if failed[i].is_some() {
                    continue;
                }
                match result {
                    Ok(outputs) => next.extend(outputs.into_iter().map(|mut o| {
                        if o.position != event.position {
                            Arc::make_mut(&mut o).position = event.position;
                        }
                        (i, o)
                    })),
                    Err(error) => {
                        failed[i] = Some(ChainFailure {
                            stage: stage.name().to_string(),
                            fingerprint: stage.fingerprint().to_string(),
                            error,
                            failed: event,
                        })
                    }
                }
            }
            current = next
                .into_iter()
                .filter(|(i, _)| failed[*i].is_none())
                .collect();
        }
        let mut outputs: Vec<Vec<Arc<Event>>> = vec![Vec::new(); inputs.len()];
        for (i, event) in current {
            outputs[i].push(event);
        }
        outputs
            .into_iter()
            .zip(failed)
            .map(|(mut outs, failure)| match failure {
                Some(f) => Err(f),
                None => {
                    number(&mut outs);
                    Ok(outs)
                }
            })
            .collect()
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new(Vec::new())
    }
}

/// Number the events one source event became: `fanout = 0, 1, …`.
pub fn number(outputs: &mut [Arc<Event>]) {
    for (k, event) in outputs.iter_mut().enumerate() {
        if event.fanout != k as u32 {
            Arc::make_mut(event).fanout = k as u32;
        }
    }
}

/// The pipeline-level chain, shared by every sink driver.
pub type SharedChain = Arc<Mutex<Chain>>;

/// The pipeline chain's outputs for the events of `records`, computing (once, for all
/// sinks) those not yet computed and caching them on the records. An empty chain caches
/// nothing: each event is its own output.
pub fn pipeline_outputs(chain: &SharedChain, records: &[Arc<Record>]) -> Vec<Arc<ChainOutput>> {
    let mut chain = chain.lock().unwrap();
    if chain.is_empty() {
        return records
            .iter()
            .map(|r| Arc::new(Ok(vec![r.event.clone()])))
            .collect();
    }
    let missing: Vec<&Arc<Record>> = records
        .iter()
        .filter(|r| r.staged.get().is_none())
        .collect();
    if !missing.is_empty() {
        let events: Vec<Arc<Event>> = missing.iter().map(|r| r.event.clone()).collect();
        for (record, result) in missing.iter().zip(chain.run(&events)) {
            let kept = matches!(&result, Ok(outs) if outs.len() == 1 && Arc::ptr_eq(&outs[0], &record.event));
            let _ = record.staged.set((!kept).then(|| Arc::new(result)));
        }
    }
    drop(chain);
    records
        .iter()
        .map(|r| match r.staged.get().expect("computed above") {
            Some(output) => output.clone(),
            None => Arc::new(Ok(vec![r.event.clone()])),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{Op, Row, Value};
    use crate::testing;

    /// A stage driven by the `n` column: 0 drops, 1 maps (adds a column), 2 fans out, 3 keeps
    /// the event as it is, -1 fails.
    pub struct ByN(pub &'static str);

    impl ByN {
        fn map(&self, e: &Event) -> Event {
            let mut out = e.clone();
            out.after
                .get_or_insert_with(Row::default)
                .push(self.0.into(), Value::Bool(true));
            out
        }
    }

    impl Stage for ByN {
        fn name(&self) -> &str {
            self.0
        }
        fn fingerprint(&self) -> &str {
            "f"
        }
        fn apply(&mut self, events: &[Arc<Event>]) -> Vec<Result<Vec<Arc<Event>>, StageError>> {
            events
                .iter()
                .map(|e| {
                    let n = match e.after.as_ref().and_then(|a| a.get("n")) {
                        Some(Value::Int(n)) => *n,
                        _ => 1,
                    };
                    if n == 3 {
                        return Ok(vec![e.clone()]);
                    }
                    let out = Arc::new(self.map(e));
                    match n {
                        -1 => Err(StageError {
                            kind: "error".into(),
                            message: "n is -1".into(),
                        }),
                        0 => Ok(vec![]),
                        2 => Ok(vec![out.clone(), out]),
                        _ => Ok(vec![out]),
                    }
                })
                .collect()
        }
    }

    pub fn event(index: u32, n: i64) -> Arc<Event> {
        let mut e = testing::event("t", Op::Insert, 1, index);
        let mut after = testing::id_row(index.into());
        after.push("n".into(), Value::Int(n));
        e.after = Some(after);
        Arc::new(e)
    }

    fn record(e: &Arc<Event>) -> Arc<Record> {
        Arc::new(Record::new(e.clone()))
    }

    #[test]
    fn an_empty_chain_keeps_no_reference_to_the_event() {
        let chain: SharedChain = Arc::new(Mutex::new(Chain::default()));
        let e = event(0, 1);
        let r = record(&e);
        let out = pipeline_outputs(&chain, std::slice::from_ref(&r));
        drop((out, r));
        assert_eq!(
            Arc::strong_count(&e),
            1,
            "a cached self-reference would leak every event"
        );
    }

    #[test]
    fn drop_map_fan_out_and_failure_per_event() {
        let mut chain = Chain::new(vec![Box::new(ByN("a")), Box::new(ByN("b"))]);
        let out = chain.run(&[event(0, 0), event(1, 1), event(2, 2), event(3, -1)]);
        assert!(out[0].as_ref().unwrap().is_empty());
        let one = out[1].as_ref().unwrap();
        assert_eq!(one.len(), 1);
        assert!(
            one[0].after.as_ref().unwrap().get("b").is_some(),
            "both stages ran"
        );
        let two = out[2].as_ref().unwrap();
        assert_eq!(
            two.iter().map(|e| e.id()).collect::<Vec<_>>(),
            ["0/1:2", "0/1:2#1", "0/1:2#2", "0/1:2#3"]
        );
        let failure = out[3].as_ref().unwrap_err();
        assert_eq!(
            (failure.stage.as_str(), failure.error.message.as_str()),
            ("a", "n is -1")
        );
    }

    #[test]
    fn the_pipeline_chain_runs_once_per_event_for_all_sinks() {
        struct Counting(Arc<std::sync::atomic::AtomicUsize>);
        impl Stage for Counting {
            fn name(&self) -> &str {
                "count"
            }
            fn fingerprint(&self) -> &str {
                "c"
            }
            fn apply(&mut self, events: &[Arc<Event>]) -> Vec<Result<Vec<Arc<Event>>, StageError>> {
                self.0
                    .fetch_add(events.len(), std::sync::atomic::Ordering::SeqCst);
                events
                    .iter()
                    .map(|e| Ok(vec![Arc::new((**e).clone())]))
                    .collect()
            }
        }
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let chain: SharedChain = Arc::new(Mutex::new(Chain::new(vec![Box::new(Counting(
            calls.clone(),
        ))])));
        let batch = vec![record(&event(0, 1)), record(&event(1, 1))];
        let a = pipeline_outputs(&chain, &batch);
        let b = pipeline_outputs(&chain, &batch);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(Arc::ptr_eq(&a[0], &b[0]));
    }

    #[test]
    fn a_kept_event_is_shared_computed_once_and_freed() {
        let chain: SharedChain = Arc::new(Mutex::new(Chain::new(vec![Box::new(ByN("a"))])));
        let events = [event(0, 3), event(1, 1)];
        let batch: Vec<_> = events.iter().map(record).collect();
        let a = pipeline_outputs(&chain, &batch);
        let kept = a[0].as_ref().as_ref().unwrap();
        assert!(Arc::ptr_eq(&kept[0], &events[0]), "kept, not copied");
        assert!(!Arc::ptr_eq(
            &a[1].as_ref().as_ref().unwrap()[0],
            &events[1]
        ));
        assert!(batch[0].staged.get().is_some(), "the outcome is cached");
        let b = pipeline_outputs(&chain, &batch);
        assert!(Arc::ptr_eq(&b[0].as_ref().as_ref().unwrap()[0], &events[0]));
        drop((a, b, batch));
        assert_eq!(
            Arc::strong_count(&events[0]),
            1,
            "a kept event must not hold itself"
        );
    }
}
