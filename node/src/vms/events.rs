//! The daemon's event stream: numbered, time-stamped [`NodeEvent`]s, kept in the database
//! (the newest [`crate::state::EVENTS_KEPT`]) and broadcast to API subscribers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::api::types::{now_ms, EventEnvelope, NodeEvent};
use crate::state::StateDb;

/// Events a subscriber may fall behind by before it is told it lagged.
const CHANNEL_CAPACITY: usize = 4096;

pub struct EventBus {
    tx: broadcast::Sender<EventEnvelope>,
    seq: AtomicU64,
    db: Option<Arc<StateDb>>,
}

impl EventBus {
    /// A bus that also appends every event to `db` (when given).
    pub fn new(db: Option<Arc<StateDb>>) -> EventBus {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        EventBus {
            tx,
            seq: AtomicU64::new(0),
            db,
        }
    }

    pub fn publish(&self, event: NodeEvent) -> EventEnvelope {
        let at_ms = now_ms();
        let kind = event.kind();
        // The database numbers events across restarts; without one, this run does.
        let seq = self
            .db
            .as_ref()
            .and_then(|db| {
                let body = serde_json::to_string(&event).ok()?;
                match db.append_event(at_ms, kind, &body) {
                    Ok(seq) => Some(seq),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot keep an event in the database");
                        None
                    }
                }
            })
            .unwrap_or_else(|| self.seq.fetch_add(1, Ordering::Relaxed) + 1);
        let envelope = EventEnvelope { seq, at_ms, event };
        let _ = self.tx.send(envelope.clone());
        envelope
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_kept_and_broadcast_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(StateDb::open(&dir.path().join("s.db")).unwrap());
        let bus = EventBus::new(Some(db.clone()));
        let mut rx = bus.subscribe();
        let a = bus.publish(NodeEvent::Draining { deadline_s: 5 });
        let b = bus.publish(NodeEvent::Member {
            peer_id: "p".into(),
            live: false,
        });
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(rx.try_recv().unwrap(), a);
        assert_eq!(rx.try_recv().unwrap(), b);
        let kept = db.events_after(0, 10).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].2, "member");
    }
}
