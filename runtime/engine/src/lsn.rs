//! Log sequence numbers and stream positions.
//!
//! A [`Position`] orders every event in the stream: the commit LSN of its transaction, then
//! its index inside that transaction. Offsets, deduplication after restarts and the event
//! `id` are all derived from it.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL WAL location, printed the way Postgres prints it (`16/B374D848`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not of the form `HI/LO` in hexadecimal.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an LSN (expected hexadecimal HI/LO, e.g. 0/1A2B3C4)")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

/// Where an event stands in the stream: its transaction's commit LSN, then its index
/// within that transaction (from 0). Totally ordered; unique per event.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub index: u32,
}

impl Position {
    pub const ZERO: Position = Position {
        commit_lsn: Lsn::ZERO,
        index: 0,
    };

    pub fn new(commit_lsn: Lsn, index: u32) -> Self {
        Position { commit_lsn, index }
    }
}

/// The event id: `<commit_lsn>:<index>`, e.g. `0/1A2B3C4:7`.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.index)
    }
}

impl FromStr for Position {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lsn, index) = s
            .rsplit_once(':')
            .ok_or_else(|| ParseLsnError(s.to_string()))?;
        let index = index.parse().map_err(|_| ParseLsnError(s.to_string()))?;
        Ok(Position {
            commit_lsn: lsn.parse()?,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for text in ["0/0", "0/1A2B3C4", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(text.parse::<Lsn>().unwrap().to_string(), text);
        }
        assert!("12".parse::<Lsn>().is_err());
        assert!("0/xyz".parse::<Lsn>().is_err());
    }

    #[test]
    fn positions_order_by_commit_then_index() {
        let a = Position::new(Lsn(10), 5);
        let b = Position::new(Lsn(11), 0);
        assert!(a < b);
        assert!(Position::new(Lsn(10), 4) < a);
        assert_eq!("0/A:5".parse::<Position>().unwrap(), a);
        assert_eq!(a.to_string(), "0/A:5");
    }
}
