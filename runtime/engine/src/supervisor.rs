//! What happens around a sink's driver: how it ends, how it stops, and how it comes back.
//!
//! - Drained (the journal closed and everything was delivered): the sink's state becomes
//!   `idle`.
//! - Interrupted by the shutdown timeout: its offset stays where it was.
//! - Stopped after retrying for `retry.max_elapsed`, or on an error of its own: it detaches
//!   from the journal (the other sinks go on; the slot keeps its WAL) and stays stopped for
//!   this run. A restart tries again. When every sink has stopped that way the process
//!   drains and exits 1, so an orchestrator sees it.
//! - Stopped by the DLQ breaker ([`TRIPPED`]): a stop, not a skip. The batch that tripped it
//!   is parked and passed; nothing after it is sent, in this run or the next, until an
//!   operator replays or purges the sink's dead letters. A running pipeline notices that
//!   within a second and resumes the sink in place: it reads the journal again from the
//!   sink's offset (the source is asked to send again what the journal no longer holds).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::driver::{SinkDriver, SinkStop};
use crate::journal::Journal;
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use crate::state::{Store, TRIPPED};

/// How often a tripped sink looks whether an operator let it go on.
const OPERATOR_POLL: Duration = Duration::from_secs(1);

/// What a sink's task needs beside its driver.
pub(crate) struct Supervisor {
    pub journal: Arc<Journal>,
    pub store: Store,
    pub progress: Arc<Progress>,
    pub shutdown: Shutdown,
    /// Asks the source loop to read again from the sinks' lowest offset.
    pub rewind: Arc<Notify>,
    /// Sinks waiting for an operator (tripped): while any does, the run goes on even if
    /// every sink is stopped.
    pub waiting: Arc<AtomicUsize>,
}

impl Supervisor {
    /// Run `driver` until the journal ends, the run ends, or it stops for good. `tripped`:
    /// the breaker had stopped it in an earlier run and no operator has acted since.
    pub async fn run(
        self,
        mut driver: SinkDriver,
        tripped: Option<String>,
    ) -> Result<(), SinkStop> {
        let name = driver.progress.name.clone();
        if let Some(reason) = tripped {
            tracing::error!(
                sink = %name,
                %reason,
                "the DLQ breaker stopped this sink in an earlier run: it sends nothing until its \
                 dead letters are replayed or purged (`sluice dlq replay|purge --sink {name}`); \
                 the slot keeps its WAL"
            );
            driver
                .progress
                .stop(format!("the DLQ breaker tripped: {reason}"));
            self.journal.detach(driver.reader);
            if !self.wait_for_operator(&name).await {
                driver.close().await;
                return Err(SinkStop::Breaker(reason));
            }
            self.resume(&mut driver).await;
        }
        let result = loop {
            match driver.run().await {
                Ok(()) => {
                    tracing::info!(sink = %name, "sink drained");
                    self.set_status(&name, "idle", None);
                    break Ok(());
                }
                Err(SinkStop::Rewind) => {
                    if let Err(e) = self.rewind(&mut driver).await {
                        let reason = format!("cannot rewind: {e}");
                        tracing::error!(sink = %name, %reason);
                        driver.progress.stop(reason.clone());
                        self.journal.detach(driver.reader);
                        self.set_status(&name, "stopped", Some(&reason));
                        break Err(SinkStop::Dlq(e));
                    }
                }
                Err(SinkStop::Interrupted) => {
                    tracing::warn!(sink = %name, "sink interrupted by the shutdown timeout; its offset is kept");
                    break Err(SinkStop::Interrupted);
                }
                Err(SinkStop::Breaker(reason)) => {
                    let stop = SinkStop::Breaker(reason.clone());
                    tracing::error!(
                        sink = %name,
                        reason = %stop,
                        "sink stopped by the DLQ breaker; it waits for its dead letters to be \
                         replayed or purged (`sluice dlq list|replay|purge`); the slot keeps its WAL"
                    );
                    driver.progress.stop(stop.to_string());
                    self.journal.detach(driver.reader);
                    self.set_status(&name, TRIPPED, Some(&stop.to_string()));
                    if !self.wait_for_operator(&name).await {
                        break Err(stop);
                    }
                    self.resume(&mut driver).await;
                }
                Err(stop) => {
                    let reason = stop.to_string();
                    tracing::error!(sink = %name, %reason, "sink stopped; the slot keeps its WAL until it is fixed and restarted");
                    driver.progress.stop(reason.clone());
                    self.journal.detach(driver.reader);
                    self.set_status(&name, "stopped", Some(&reason));
                    let all_stopped = self.progress.sinks().iter().all(|s| s.stopped().is_some());
                    if all_stopped && self.waiting.load(Relaxed) == 0 {
                        tracing::error!("every sink has stopped; shutting down");
                        self.shutdown.drain();
                    }
                    break Err(stop);
                }
            }
        };
        driver.close().await;
        result
    }

    /// Wait until an operator replays or purges the sink's dead letters (its stored state is
    /// no longer [`TRIPPED`]): `true`; or until the run ends: `false`.
    async fn wait_for_operator(&self, name: &str) -> bool {
        self.waiting.fetch_add(1, Relaxed);
        let resumed = self.poll_operator(name).await;
        self.waiting.fetch_sub(1, Relaxed);
        resumed
    }

    async fn poll_operator(&self, name: &str) -> bool {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(OPERATOR_POLL) => {}
                _ = self.shutdown.draining() => return false,
            }
            let sink = name.to_string();
            match self.store.run(move |s| s.sinks()).await {
                Ok(sinks) if sinks.get(&sink).is_some_and(|r| r.state != TRIPPED) => return true,
                Ok(_) => {}
                Err(e) => tracing::warn!(sink = %name, error = %e, "cannot read the sink's state"),
            }
        }
    }

    /// Go on from the sink's offset: a disk journal still holds everything after it; a
    /// memory journal reads on from its head while the source sends again what it no
    /// longer holds.
    async fn resume(&self, driver: &mut SinkDriver) {
        let name = driver.progress.name.clone();
        let committed = driver.progress.committed();
        tracing::info!(sink = %name, from = %committed.position, "sink resumed by an operator");
        driver.progress.resume();
        let seq = match self.journal.is_durable() {
            true => match self
                .journal
                .seek(committed.position, committed.flush_lsn)
                .await
            {
                Ok(seq) => seq,
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "cannot find the sink's offset in the journal; it reads on from the head");
                    self.journal.head()
                }
            },
            false => self.journal.head(),
        };
        self.journal.reattach(driver.reader, seq);
        driver.progress.start_at(seq);
        if !self.journal.is_durable() {
            // Attached first, so it reads what the source sends again.
            self.rewind.notify_one();
        }
        self.set_status(&name, "running", None);
    }

    /// An operator asked for the sink to be delivered again from an earlier offset: make
    /// it the committed one and read the journal from there.
    async fn rewind(&self, driver: &mut SinkDriver) -> Result<(), crate::state::StateError> {
        let name = driver.progress.name.clone();
        let sink = name.clone();
        let Some(offset) = self.store.run(move |s| s.apply_rewind(&sink)).await? else {
            return Ok(());
        };
        let seq = match self.journal.seek(offset.position, offset.flush_lsn).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "cannot find the rewind's point in the journal; the sink reads on from the head");
                self.journal.head()
            }
        };
        driver.progress.rewind_to(seq, offset);
        self.journal.reattach(driver.reader, seq);
        tracing::warn!(sink = %name, after = %offset.position, "sink rewound by an operator: delivering again from the journal");
        Ok(())
    }

    fn set_status(&self, sink: &str, state: &str, reason: Option<&str>) {
        if let Err(e) = self.store.lock().set_sink_status(sink, state, reason) {
            tracing::error!(sink, error = %e, "cannot record the sink's state");
        }
    }
}
