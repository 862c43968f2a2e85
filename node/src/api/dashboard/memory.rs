//! What the node remembers for its dashboard, in memory only: the ring of samples behind the
//! charts (host CPU and memory from `/proc`, mesh wire and cell gossip bytes from the node's
//! status), the membership churn of the last hour, the recent events, and whether the node
//! is draining. [`record`] keeps it up to date; pages read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use novacron_dashboard::history::{Churn, ChurnCounts, History, Reading, Sample, SAMPLE_EVERY_MS};
use novacron_mesh::swarm::cell::CellEvent;
use tokio::sync::broadcast;

use crate::api::service::NodeService;
use crate::api::types::{EventEnvelope, NodeEvent};
use crate::clock::now_ms;

/// Recent events kept.
pub const RECENT_EVENTS: usize = 200;

/// The dashboard's memory of the node.
#[derive(Debug)]
pub struct NodeMemory {
    inner: Mutex<Inner>,
    /// Fires after each new sample (the pages' `sample` event).
    samples: broadcast::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    history: History,
    events: VecDeque<EventEnvelope>,
    draining: Option<u64>,
}

impl Default for NodeMemory {
    fn default() -> Self {
        NodeMemory {
            inner: Mutex::default(),
            samples: broadcast::channel(16).0,
        }
    }
}

impl NodeMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, r: Reading) {
        self.lock().history.record(r);
        let _ = self.samples.send(r.at_ms);
    }

    pub fn churn(&self, at_ms: u64, what: Churn) {
        self.lock().history.churn(at_ms, what);
    }

    /// Notes an event the node announced.
    pub fn event(&self, e: &EventEnvelope) {
        let mut inner = self.lock();
        if let NodeEvent::Draining { deadline_s } = e.event {
            inner.draining = Some(deadline_s);
        }
        if inner.events.len() == RECENT_EVENTS {
            inner.events.pop_back();
        }
        inner.events.push_front(e.clone());
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.lock().history.samples()
    }

    pub fn churn_counts(&self, now_ms: u64) -> ChurnCounts {
        self.lock().history.churn_counts(now_ms)
    }

    /// Recent events, newest first.
    pub fn recent_events(&self) -> Vec<EventEnvelope> {
        self.lock().events.iter().cloned().collect()
    }

    pub fn draining(&self) -> Option<u64> {
        self.lock().draining
    }

    /// Sample instants as they are taken.
    pub fn subscribe_samples(&self) -> broadcast::Receiver<u64> {
        self.samples.subscribe()
    }
}

/// Host CPU (busy, total ticks) from `/proc/stat`'s first line.
pub fn host_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Host memory (used, total bytes) from `/proc/meminfo`: total less available.
pub fn host_memory(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total.saturating_sub(available), total))
}

/// Keeps `memory` up to date from `service` until the service's event stream closes:
/// a reading every [`SAMPLE_EVERY_MS`], every event, and the cell's membership changes
/// (`cell`, which tells leaves from failures) as they come.
pub async fn record<S: NodeService>(
    service: Arc<S>,
    memory: Arc<NodeMemory>,
    mut cell: broadcast::Receiver<CellEvent>,
) {
    let mut events = service.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(SAMPLE_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut churn_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut r = Reading { at_ms: now_ms(), ..Reading::default() };
                if let Some((busy, total)) = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(host_cpu) {
                    (r.cpu_busy, r.cpu_total) = (busy, total);
                }
                if let Some((used, total)) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(host_memory) {
                    (r.mem_used_bytes, r.mem_total_bytes) = (used, total);
                }
                if let Ok(s) = service.status().await {
                    (r.wire_sent, r.wire_received) = (s.wire_sent, s.wire_received);
                    if let Some(c) = &s.cell {
                        (r.gossip_sent, r.gossip_received) = (c.gossip_sent, c.gossip_received);
                    }
                }
                memory.record(r);
            }
            e = events.recv() => match e {
                Ok(e) => memory.event(&e),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            c = cell.recv(), if churn_open => match c {
                Ok(CellEvent::MemberJoined { .. }) => memory.churn(now_ms(), Churn::Join),
                Ok(CellEvent::MemberDied { .. }) => memory.churn(now_ms(), Churn::Failure),
                Ok(CellEvent::MemberLeft { .. }) => memory.churn(now_ms(), Churn::Leave),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => churn_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_are_read_from_proc_text() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(host_cpu(stat), Some((150, 1000)));
        assert_eq!(host_cpu("intr 1 2"), None);
        let meminfo = "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    400 kB\n";
        assert_eq!(host_memory(meminfo), Some((600 * 1024, 1000 * 1024)));
        assert_eq!(host_memory("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn events_are_kept_newest_first_and_bounded_and_draining_is_noted() {
        let m = NodeMemory::default();
        for seq in 0..(RECENT_EVENTS as u64 + 5) {
            m.event(&EventEnvelope {
                seq,
                at_ms: seq,
                event: NodeEvent::Member {
                    peer_id: "p".into(),
                    live: true,
                },
            });
        }
        let e = m.recent_events();
        assert_eq!(e.len(), RECENT_EVENTS);
        assert_eq!(e[0].seq, RECENT_EVENTS as u64 + 4);
        assert_eq!(m.draining(), None);
        m.event(&EventEnvelope {
            seq: 999,
            at_ms: 1,
            event: NodeEvent::Draining { deadline_s: 30 },
        });
        assert_eq!(m.draining(), Some(30));
    }
}
