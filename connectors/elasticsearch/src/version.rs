//! The external version of a document write: the change's own WAL position.
//!
//! Every index and delete action carries `version: <the change's LSN>` with
//! `version_type: external`, which Elasticsearch applies only when it is strictly greater
//! than the version it holds for that document (a delete leaves its version behind as a
//! tombstone for `index.gc_deletes`). So a replayed event, or one arriving after a newer
//! one, is refused with a 409 that the sink counts as delivered: the newer document stays.
//!
//! Why the LSN of the change (`source.lsn`), and not the commit LSN nor the event id:
//!
//! - **It grows per document.** PostgreSQL holds a row lock (or a unique-index wait) from a
//!   transaction's change of a row until that transaction commits, so two transactions
//!   never interleave changes to the same key: each change of a key is written to the WAL
//!   after the commit record of the transaction that changed the key before it. Inside one
//!   transaction, changes are WAL records in order, so their LSNs grow too. The commit LSN
//!   alone would tie every change of one transaction; the event id `(commit LSN, index)` is
//!   ordered but does not fit in one integer.
//! - **It is unique per change of a row.** A WAL record holds one row change; the one
//!   exception, a multi-insert record (`COPY`), inserts distinct rows, so distinct
//!   documents.
//! - **It fits.** Elasticsearch versions are signed 64-bit integers. An LSN is a byte
//!   position in the WAL: reaching 2^63 takes 8 EiB of WAL, centuries at any write rate.
//!   An LSN that does not fit is refused ([`VersionError`]), never wrapped.

use sluice_runtime::Event;

/// The event's LSN is past what an Elasticsearch version can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the change's LSN {lsn:#x} does not fit in a signed 64-bit Elasticsearch version; \
     it cannot be written without losing its ordering"
)]
pub struct VersionError {
    /// The LSN at fault.
    pub lsn: u64,
}

/// The external version of the document writes of `event`: its own LSN.
pub fn of(event: &Event) -> Result<i64, VersionError> {
    let lsn = event.source.lsn.0;
    i64::try_from(lsn).map_err(|_| VersionError { lsn })
}

#[cfg(test)]
mod tests {
    use sluice_runtime::{testing, Lsn, Op};

    use super::*;

    fn at(commit: u64, lsn: u64) -> Event {
        let mut e = testing::event("t", Op::Update, commit, 0);
        e.source.lsn = Lsn(lsn);
        e
    }

    #[test]
    fn the_version_is_the_changes_own_lsn_not_the_commit() {
        assert_eq!(of(&at(0x2000, 0x1F40)), Ok(0x1F40));
    }

    #[test]
    fn later_changes_of_a_key_get_greater_versions() {
        // Transaction A changes the row at 0/100 and commits at 0/180; B, which waited on
        // the row lock, changes it at 0/1C0 and commits at 0/200, then again at 0/1E0.
        let a = of(&at(0x180, 0x100)).unwrap();
        let b1 = of(&at(0x200, 0x1C0)).unwrap();
        let b2 = of(&at(0x200, 0x1E0)).unwrap();
        assert!(a < b1 && b1 < b2);
    }

    #[test]
    fn lsns_past_i64_are_refused_not_wrapped() {
        assert_eq!(of(&at(1, i64::MAX as u64)), Ok(i64::MAX));
        let e = of(&at(1, 1 << 63)).unwrap_err();
        assert_eq!(e.lsn, 1 << 63);
        assert!(e.to_string().contains("does not fit"));
        assert!(of(&at(1, u64::MAX)).is_err());
    }
}
