//! How a sink may parallelise a batch without breaking per-key order.
//!
//! [`plan`] cuts a batch into *segments* at barriers (events whose
//! [`Event::ordering_key`] is `None`, i.e. truncates) and each segment into *lanes*, one
//! per ordering key. A sink runs the lanes of a segment concurrently, each lane
//! sequentially, and a segment only after the previous one was wholly delivered; a
//! failure defers the rest of its lane and every later segment. Every sink that writes
//! concurrently uses this one plan.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::Event;

/// Indices into the batch, in batch order.
pub type Lane = Vec<usize>;

/// Lanes that may run concurrently; lanes in order of their first event.
pub type Segment = Vec<Lane>;

pub fn plan(batch: &[Arc<Event>]) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut current: Segment = Vec::new();
    let mut by_key: HashMap<u64, usize> = HashMap::new();
    for (i, event) in batch.iter().enumerate() {
        match event.ordering_key() {
            Some(key) => {
                let lane = *by_key.entry(key).or_insert_with(|| {
                    current.push(Vec::new());
                    current.len() - 1
                });
                current[lane].push(i);
            }
            None => {
                if !current.is_empty() {
                    segments.push(std::mem::take(&mut current));
                    by_key.clear();
                }
                segments.push(vec![vec![i]]);
            }
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;
    use crate::testing;

    fn event(index: u32, op: Op, key: Option<i64>) -> Arc<Event> {
        let mut e = testing::event("t", op, 1, index);
        e.key = key.map(testing::id_row);
        Arc::new(e)
    }

    #[test]
    fn lanes_group_by_key_and_truncates_split_segments() {
        let batch = vec![
            event(0, Op::Insert, Some(1)),
            event(1, Op::Insert, Some(2)),
            event(2, Op::Update, Some(1)),
            event(3, Op::Truncate, None),
            event(4, Op::Insert, Some(1)),
        ];
        assert_eq!(
            plan(&batch),
            vec![vec![vec![0, 2], vec![1]], vec![vec![3]], vec![vec![4]]]
        );
    }

    #[test]
    fn keyless_rows_of_a_table_share_one_lane() {
        let batch = vec![event(0, Op::Insert, None), event(1, Op::Insert, None)];
        assert_eq!(plan(&batch), vec![vec![vec![0, 1]]]);
    }
}
