//! What the node's charts and churn figures are drawn from: a ring of samples taken every
//! few seconds (no external service), and the member joins, leaves and failures of the last
//! hour. Pure: the node reads the counters and passes `now`.

use std::collections::VecDeque;

/// How far back the charts and the churn window look.
pub const WINDOW_MS: u64 = 3_600_000;
/// How often the node samples (and the dashboard's `sample` event fires).
pub const SAMPLE_EVERY_MS: u64 = 2_000;
/// Samples kept: one window's worth.
pub const CAPACITY: usize = (WINDOW_MS / SAMPLE_EVERY_MS) as usize;
/// Churn events kept at most (a storm of joins cannot grow the node without bound).
pub const MAX_CHURN_EVENTS: usize = 10_000;

/// Counters and gauges read at one instant. Counters only grow (a drop, e.g. a restarted
/// cell membership, counts as a new start).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    pub at_ms: u64,
    /// Host CPU time busy and in total (any unit, e.g. `/proc/stat` ticks).
    pub cpu_busy: u64,
    pub cpu_total: u64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// Bytes on the mesh's wire, and of cell gossip, since start.
    pub wire_sent: u64,
    pub wire_received: u64,
    pub gossip_sent: u64,
    pub gossip_received: u64,
}

/// One point of the charts: rates over the time since the previous reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub cpu_percent: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub wire_sent_bps: f64,
    pub wire_received_bps: f64,
    pub gossip_sent_bps: f64,
    pub gossip_received_bps: f64,
}

/// A change of the cell's membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Churn {
    Join,
    /// Dead long enough to be collected (left, gracefully or not).
    Leave,
    /// Declared dead by the failure detector.
    Failure,
}

/// Joins, leaves and failures within the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChurnCounts {
    pub joins: u32,
    pub leaves: u32,
    pub failures: u32,
}

/// The ring of samples and the churn window.
#[derive(Debug, Default)]
pub struct History {
    last: Option<Reading>,
    samples: VecDeque<Sample>,
    churn: VecDeque<(u64, Churn)>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Takes a reading; from the second one on, adds a sample of the rates since the last.
    pub fn record(&mut self, r: Reading) {
        if let Some(prev) = self.last {
            if r.at_ms > prev.at_ms {
                let secs = (r.at_ms - prev.at_ms) as f64 / 1000.0;
                let per_s = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
                let busy = r.cpu_busy.saturating_sub(prev.cpu_busy) as f64;
                let total = r.cpu_total.saturating_sub(prev.cpu_total) as f64;
                let cpu_percent = if total > 0.0 {
                    (busy / total * 100.0).clamp(0.0, 100.0)
                } else {
                    0.0
                };
                if self.samples.len() == CAPACITY {
                    self.samples.pop_front();
                }
                self.samples.push_back(Sample {
                    at_ms: r.at_ms,
                    cpu_percent,
                    mem_used_bytes: r.mem_used_bytes,
                    mem_total_bytes: r.mem_total_bytes,
                    wire_sent_bps: per_s(r.wire_sent, prev.wire_sent),
                    wire_received_bps: per_s(r.wire_received, prev.wire_received),
                    gossip_sent_bps: per_s(r.gossip_sent, prev.gossip_sent),
                    gossip_received_bps: per_s(r.gossip_received, prev.gossip_received),
                });
            }
        }
        self.last = Some(r);
    }

    /// Notes a membership change at `at_ms`.
    pub fn churn(&mut self, at_ms: u64, what: Churn) {
        if self.churn.len() == MAX_CHURN_EVENTS {
            self.churn.pop_front();
        }
        self.churn.push_back((at_ms, what));
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().copied().collect()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<Sample> {
        self.samples.back().copied()
    }

    /// Churn within the window ending at `now_ms`; older events are forgotten.
    pub fn churn_counts(&mut self, now_ms: u64) -> ChurnCounts {
        let since = now_ms.saturating_sub(WINDOW_MS);
        while self.churn.front().is_some_and(|(at, _)| *at < since) {
            self.churn.pop_front();
        }
        let mut c = ChurnCounts::default();
        for (_, what) in &self.churn {
            match what {
                Churn::Join => c.joins += 1,
                Churn::Leave => c.leaves += 1,
                Churn::Failure => c.failures += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: u64, busy: u64, total: u64, sent: u64) -> Reading {
        Reading {
            at_ms,
            cpu_busy: busy,
            cpu_total: total,
            wire_sent: sent,
            ..Reading::default()
        }
    }

    #[test]
    fn samples_are_rates_since_the_previous_reading() {
        let mut h = History::new();
        h.record(reading(1_000, 0, 0, 0));
        assert!(h.latest().is_none(), "one reading makes no rate");
        h.record(reading(3_000, 50, 200, 4_000));
        let s = h.latest().unwrap();
        assert_eq!(s.cpu_percent, 25.0);
        assert_eq!(s.wire_sent_bps, 2_000.0);
        // A counter that went back (a restart) is no negative rate.
        h.record(reading(5_000, 60, 300, 100));
        assert_eq!(h.latest().unwrap().wire_sent_bps, 0.0);
        // A reading at the same instant adds nothing.
        h.record(reading(5_000, 70, 400, 200));
        assert_eq!(h.samples().len(), 2);
    }

    #[test]
    fn the_ring_keeps_one_window() {
        let mut h = History::new();
        for i in 0..(CAPACITY as u64 + 10) {
            h.record(reading(i * SAMPLE_EVERY_MS, i, i * 2, 0));
        }
        let s = h.samples();
        assert_eq!(s.len(), CAPACITY);
        assert_eq!(
            s.last().unwrap().at_ms,
            (CAPACITY as u64 + 9) * SAMPLE_EVERY_MS
        );
    }

    #[test]
    fn churn_counts_only_the_last_hour() {
        let mut h = History::new();
        h.churn(1_000, Churn::Join);
        h.churn(WINDOW_MS, Churn::Failure);
        h.churn(WINDOW_MS + 5, Churn::Leave);
        h.churn(WINDOW_MS + 6, Churn::Join);
        let c = h.churn_counts(WINDOW_MS + 2_000);
        assert_eq!(
            c,
            ChurnCounts {
                joins: 1,
                leaves: 1,
                failures: 1
            }
        );
        for i in 0..(MAX_CHURN_EVENTS as u64 + 5) {
            h.churn(WINDOW_MS + 10 + i, Churn::Join);
        }
        assert_eq!(h.churn.len(), MAX_CHURN_EVENTS);
    }
}
