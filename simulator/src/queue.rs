//! The pending events of a run, earliest first; events due at the same instant come out in
//! the order they were scheduled, so a run is the same every time.
//!
//! A binary heap of `(time, sequence)` keys: O(log n) per event, with the payloads in the
//! heap itself so a run with millions pending touches no other allocation.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::time::SimTime;

struct Entry<E> {
    at: SimTime,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    /// Reversed: the heap's greatest is the earliest event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events of type `E` waiting for their instant.
pub struct EventQueue<E> {
    heap: BinaryHeap<Entry<E>>,
    next_seq: u64,
    now: SimTime,
    popped: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
            now: SimTime::ZERO,
            popped: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `event` at `at`; an instant already past is taken as now (time never goes
    /// back).
    pub fn schedule(&mut self, at: SimTime, event: E) {
        let at = at.max(self.now);
        self.heap.push(Entry {
            at,
            seq: self.next_seq,
            event,
        });
        self.next_seq += 1;
    }

    /// The earliest event and its instant, which becomes now.
    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        let e = self.heap.pop()?;
        self.now = e.at;
        self.popped += 1;
        Some((e.at, e.event))
    }

    /// The instant of the last event popped.
    pub fn now(&self) -> SimTime {
        self.now
    }

    pub fn pending(&self) -> usize {
        self.heap.len()
    }

    /// Events popped so far.
    pub fn processed(&self) -> u64 {
        self.popped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SimRng;

    #[test]
    fn events_come_out_by_time_then_by_scheduling_order() {
        let mut q = EventQueue::new();
        q.schedule(SimTime(30), "c");
        q.schedule(SimTime(10), "a");
        q.schedule(SimTime(30), "d");
        q.schedule(SimTime(10), "b");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(_, e)| e).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
        assert_eq!(q.processed(), 4);
        assert_eq!(q.now(), SimTime(30));
    }

    #[test]
    fn an_event_in_the_past_runs_now_and_time_never_goes_back() {
        let mut q = EventQueue::new();
        q.schedule(SimTime(50), 1);
        assert_eq!(q.pop(), Some((SimTime(50), 1)));
        q.schedule(SimTime(10), 2);
        assert_eq!(q.pop(), Some((SimTime(50), 2)));
    }

    #[test]
    fn a_million_random_events_come_out_sorted() {
        let mut q = EventQueue::new();
        let mut r = SimRng::new(4);
        for i in 0..1_000_000u64 {
            q.schedule(SimTime(r.below(10_000_000)), i);
        }
        assert_eq!(q.pending(), 1_000_000);
        let mut last = SimTime::ZERO;
        while let Some((at, _)) = q.pop() {
            assert!(at >= last);
            last = at;
        }
    }
}
