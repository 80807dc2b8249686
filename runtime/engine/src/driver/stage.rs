//! What the transform chains make of a batch of source events: the pipeline's chain
//! (computed once for every sink and cached on the journal record) and then this sink's
//! own, merged per source event. A source event fails whole when any event it became
//! fails at any stage; its outputs keep its position (offsets count source events).

use std::sync::Arc;

use super::SinkDriver;
use crate::chain::{number, pipeline_outputs, ChainFailure, ChainOutput};
use crate::event::Event;
use crate::journal::Record;

/// One source event on its way to the sink: what the chains made of it (shared with the
/// journal record's cache while only the pipeline's chain ran).
pub(super) struct Staged {
    pub input: Arc<Event>,
    pub outputs: Arc<ChainOutput>,
}

impl SinkDriver {
    /// Run source events through both chains. Transforms are CPU work: they run on this
    /// thread, with the runtime told so.
    pub(super) fn stage(&mut self, inputs: &[Arc<Record>]) -> Vec<Staged> {
        let needs_work = !self.chain.is_empty() || !self.pipeline_chain.lock().unwrap().is_empty();
        let mut run = || {
            let first = pipeline_outputs(&self.pipeline_chain, inputs);
            let mut staged: Vec<Staged> = inputs
                .iter()
                .zip(first)
                .map(|(input, outputs)| Staged {
                    input: input.event.clone(),
                    outputs,
                })
                .collect();
            if !self.chain.is_empty() {
                self.run_own_chain(&mut staged);
            }
            staged
        };
        if needs_work
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    /// This sink's chain over every event the pipeline's chain produced, results merged
    /// back per source event and renumbered.
    fn run_own_chain(&mut self, staged: &mut [Staged]) {
        let mid: Vec<(usize, Arc<Event>)> = staged
            .iter()
            .enumerate()
            .filter_map(|(i, s)| (*s.outputs).as_ref().ok().map(|o| (i, o)))
            .flat_map(|(i, outs)| outs.iter().map(move |e| (i, e.clone())))
            .collect();
        let events: Vec<Arc<Event>> = mid.iter().map(|(_, e)| e.clone()).collect();
        let results = self.chain.run(&events);
        let mut rebuilt: Vec<Option<Result<Vec<Arc<Event>>, ChainFailure>>> = staged
            .iter()
            .map(|s| (*s.outputs).as_ref().err().map(|f| Err(f.clone())))
            .collect();
        for ((i, _), result) in mid.into_iter().zip(results) {
            let slot = rebuilt[i].get_or_insert_with(|| Ok(Vec::new()));
            match (slot.as_mut(), result) {
                (Ok(all), Ok(outs)) => all.extend(outs),
                (Ok(_), Err(f)) => *slot = Err(f),
                (Err(_), _) => {}
            }
        }
        for (s, r) in staged.iter_mut().zip(rebuilt) {
            let mut outputs = r.unwrap_or_else(|| Ok(Vec::new()));
            if let Ok(outs) = &mut outputs {
                number(outs);
            }
            s.outputs = Arc::new(outputs);
        }
    }
}
