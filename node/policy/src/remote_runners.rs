//! Replicas an origin placed outside its own cell. The origin's cell gossips and detects
//! failures among its own members only, so nothing tells the origin when the node of such a
//! replica dies. The origin asks the node itself: a `Status` for the job every
//! [`PROBE_EVERY_MS`], and the node is presumed dead once it has not answered for
//! [`DEAD_AFTER_MS`] and at least [`MIN_MISSES`] probes in a row went unanswered (one lost
//! probe is not a death). The replica is then placed again under a new generation, as for a
//! death in the cell; the generation fences the old copy if its node was only cut off.
//!
//! Pure: which replicas are watched, what answered when, and the verdicts (times in ms of
//! any monotonic clock). The origin drives it on its tick; the simulator can drive it in
//! virtual time.

use std::collections::HashMap;

/// How often an unanswered replica's node is asked again.
pub const PROBE_EVERY_MS: u64 = 5_000;
/// How long a node of another cell may stay silent before it is presumed dead (failure
/// detection inside a cell takes ~6 s at 50 members, ~19 s at 50,000 nodes: docs/mesh.md).
pub const DEAD_AFTER_MS: u64 = 30_000;
/// Unanswered probes in a row, at the least, before a verdict.
pub const MIN_MISSES: u32 = 3;

/// One replica where the origin placed it: its job, index, generation and node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Watched {
    pub job_id: String,
    pub replica: u32,
    pub generation: u64,
    pub node: String,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The last answer, or when the watch began.
    heard_at_ms: u64,
    misses: u32,
    next_probe_ms: u64,
    asking: bool,
}

/// What the origin knows of the nodes of its replicas in other cells.
#[derive(Debug, Default)]
pub struct RemoteWatch {
    entries: HashMap<Watched, Entry>,
}

/// What a probe's outcome means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Heard, or silent for too short a time to say.
    Alive,
    /// Silent for [`DEAD_AFTER_MS`] and [`MIN_MISSES`] probes: place the replica again.
    PresumedDead,
}

impl RemoteWatch {
    /// Watches exactly `now_watched` (replicas placed, moved or restored elsewhere are
    /// forgotten; new ones start as just heard) and returns those due a probe at `now_ms`,
    /// marked as being asked.
    pub fn due(&mut self, now_watched: &[Watched], now_ms: u64) -> Vec<Watched> {
        self.entries.retain(|w, _| now_watched.contains(w));
        let mut due = Vec::new();
        for w in now_watched {
            let e = self.entries.entry(w.clone()).or_insert(Entry {
                heard_at_ms: now_ms,
                misses: 0,
                next_probe_ms: now_ms + PROBE_EVERY_MS,
                asking: false,
            });
            if !e.asking && now_ms >= e.next_probe_ms {
                e.asking = true;
                due.push(w.clone());
            }
        }
        due
    }

    /// `w`'s node answered a probe.
    pub fn answered(&mut self, w: &Watched, now_ms: u64) {
        if let Some(e) = self.entries.get_mut(w) {
            *e = Entry {
                heard_at_ms: now_ms,
                misses: 0,
                next_probe_ms: now_ms + PROBE_EVERY_MS,
                asking: false,
            };
        }
    }

    /// Stops watching `w` (its replica is placed again, or ended).
    pub fn forget(&mut self, w: &Watched) {
        self.entries.remove(w);
    }

    /// `w`'s node did not answer a probe (an error or a timeout).
    pub fn missed(&mut self, w: &Watched, now_ms: u64) -> Verdict {
        let Some(e) = self.entries.get_mut(w) else {
            return Verdict::Alive;
        };
        e.misses += 1;
        e.asking = false;
        e.next_probe_ms = now_ms + PROBE_EVERY_MS;
        let silent = now_ms.saturating_sub(e.heard_at_ms);
        if e.misses >= MIN_MISSES && silent >= DEAD_AFTER_MS {
            self.entries.remove(w);
            return Verdict::PresumedDead;
        }
        Verdict::Alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(node: &str, generation: u64) -> Watched {
        Watched {
            job_id: "ab".repeat(32),
            replica: 0,
            generation,
            node: node.into(),
        }
    }

    /// Probes `x` at each due time from `from` until `until`, every probe missed; returns
    /// when it was presumed dead.
    fn silence(watch: &mut RemoteWatch, x: &Watched, from: u64, until: u64) -> Option<u64> {
        let mut t = from;
        while t <= until {
            for d in watch.due(std::slice::from_ref(x), t) {
                if watch.missed(&d, t) == Verdict::PresumedDead {
                    return Some(t);
                }
            }
            t += 500;
        }
        None
    }

    #[test]
    fn a_silent_node_is_presumed_dead_after_the_time_and_the_misses_not_before() {
        let mut watch = RemoteWatch::default();
        let x = w("b1", 1);
        assert!(
            watch.due(std::slice::from_ref(&x), 0).is_empty(),
            "just placed"
        );
        let dead = silence(&mut watch, &x, 0, 60_000).unwrap();
        assert!(dead >= DEAD_AFTER_MS, "presumed dead at {dead} ms");
        assert!(
            dead <= DEAD_AFTER_MS + PROBE_EVERY_MS,
            "presumed dead at {dead} ms"
        );
    }

    #[test]
    fn an_answer_resets_the_silence_and_one_lost_probe_is_no_death() {
        let mut watch = RemoteWatch::default();
        let x = w("b1", 1);
        watch.due(std::slice::from_ref(&x), 0);
        // Misses for 25 s, then an answer: the clock starts again from the answer.
        let mut t = 0;
        while t < 25_000 {
            for d in watch.due(std::slice::from_ref(&x), t) {
                assert_eq!(watch.missed(&d, t), Verdict::Alive);
            }
            t += 500;
        }
        for d in watch.due(std::slice::from_ref(&x), 25_000) {
            watch.answered(&d, 25_000);
        }
        let dead = silence(&mut watch, &x, 25_500, 120_000).unwrap();
        assert!(dead >= 25_000 + DEAD_AFTER_MS, "presumed dead at {dead} ms");
        // Long silences with fewer than MIN_MISSES probes (a stalled origin) are no death.
        let mut watch = RemoteWatch::default();
        watch.due(std::slice::from_ref(&x), 0);
        let d = watch.due(std::slice::from_ref(&x), 100_000);
        assert_eq!(watch.missed(&d[0], 100_000), Verdict::Alive);
    }

    #[test]
    fn a_probe_in_flight_is_not_sent_twice_and_a_replaced_replica_is_forgotten() {
        let mut watch = RemoteWatch::default();
        let old = w("b1", 1);
        watch.due(std::slice::from_ref(&old), 0);
        assert_eq!(
            watch.due(std::slice::from_ref(&old), 5_000),
            vec![old.clone()]
        );
        assert!(
            watch.due(std::slice::from_ref(&old), 9_000).is_empty(),
            "still asking"
        );
        // Placed again (a new generation on another node): the old watch goes.
        let new = w("b2", 2);
        assert!(watch.due(std::slice::from_ref(&new), 9_000).is_empty());
        assert_eq!(watch.missed(&old, 40_000), Verdict::Alive, "forgotten");
    }
}
