//! Shutdown in two steps: *drain* (stop reading the source, deliver what is in the
//! journal, commit offsets) and *abort* (give up retries now; offsets stay where they are).

use std::sync::Arc;

use tokio::sync::watch;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<u8>>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(Arc::new(watch::channel(RUNNING).0))
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start draining (first SIGINT/SIGTERM). Returns false if already shutting down.
    pub fn drain(&self) -> bool {
        self.0.send_if_modified(|l| {
            let first = *l == RUNNING;
            if first {
                *l = DRAINING;
            }
            first
        })
    }

    /// Stop retrying and leave now (second signal, or the drain timeout).
    pub fn abort(&self) {
        self.0.send_if_modified(|l| {
            let changed = *l < ABORTING;
            *l = ABORTING;
            changed
        });
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow() >= DRAINING
    }

    pub fn is_aborting(&self) -> bool {
        *self.0.borrow() >= ABORTING
    }

    /// Resolves once draining (or aborting) has begun.
    pub async fn draining(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|l| *l >= DRAINING).await;
    }

    /// Resolves once aborting has begun.
    pub async fn aborting(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|l| *l >= ABORTING).await;
    }
}
