//! The source contract: what feeds the journal.

use std::sync::Arc;

use async_trait::async_trait;

use crate::journal::Journal;
use crate::progress::Progress;
use crate::shutdown::Shutdown;

pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// What a running source gets from the engine.
pub struct SourceContext {
    /// Where decoded events and transaction ends go, in commit order.
    pub journal: Arc<Journal>,
    /// Every sink's durable position: where to resume, and what the source may confirm.
    pub progress: Arc<Progress>,
    pub shutdown: Shutdown,
}

/// A stream of committed changes.
///
/// Contract for implementors:
/// - **Order**: append events in commit order, each transaction's events followed by its
///   [`crate::journal::Entry::Commit`]; positions strictly increase.
/// - **Resume**: start at [`Progress::resume_lsn`] or earlier; the engine skips, per sink,
///   whatever that sink already committed. After a reconnect, do not append an event whose
///   position is at or before one already appended.
/// - **Acknowledge**: tell the upstream it may forget only up to
///   [`Progress::confirmable_lsn`], and keep doing so even while the journal is full.
/// - **Shutdown**: when [`Shutdown::draining`] resolves, stop reading, close the journal,
///   wait until every sink is durable (or the shutdown aborts), acknowledge once more, return.
#[async_trait]
pub trait Source: Send {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError>;
}
