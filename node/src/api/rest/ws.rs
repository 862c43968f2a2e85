//! The WebSocket routes: the node's event stream and one migration's watch.
//!
//! Both read the service's broadcast channel, which holds a bounded number of events; a
//! client slower than the events falls behind it. The event stream then ends with a close
//! frame that says so (the client reconnects and re-reads state: nothing is buffered for
//! it here), and a watch re-reads its migration and goes on (it only needs the newest
//! state). A send that does not complete within [`SEND_TIMEOUT`] ends the connection.
//! Pings go out every [`PING_EVERY`]; a client not heard from (any frame, pongs included)
//! for [`SILENCE_LIMIT`] is dropped.
//!
//! What this cannot do: replay events a client missed while disconnected (there is no
//! event log behind the channel; `seq` shows the gap).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::{Instant, MissedTickBehavior};

use crate::api::types::{EventEnvelope, MigrationInfo, NodeEvent};

pub const PING_EVERY: Duration = Duration::from_secs(20);
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame or message a client may send (clients only need to answer pings).
pub const MAX_CLIENT_MESSAGE: usize = 4096;

/// Close codes (RFC 6455 7.4.1).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;

type Sink = SplitSink<WebSocket, Message>;

/// What a connection loop does next after one step.
enum Step {
    Continue,
    Stop,
}

async fn send(sink: &mut Sink, msg: Message) -> Step {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Step::Continue,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket client gone");
            Step::Stop
        }
        Err(_) => {
            tracing::debug!("websocket client did not read for {SEND_TIMEOUT:?}: dropped");
            Step::Stop
        }
    }
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    // A close reason is at most 123 bytes; ours are short ASCII.
    let reason: String = reason.chars().take(120).collect();
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ = send(sink, Message::Close(Some(frame))).await;
}

fn to_text<T: serde::Serialize>(value: &T) -> Option<Message> {
    match serde_json::to_string(value) {
        Ok(text) => Some(Message::Text(text.into())),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            None
        }
    }
}

/// Liveness bookkeeping shared by both loops.
struct Keepalive {
    last_heard: Instant,
    ticker: tokio::time::Interval,
}

impl Keepalive {
    fn new() -> Keepalive {
        let mut ticker = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Keepalive {
            last_heard: Instant::now(),
            ticker,
        }
    }

    async fn tick(&mut self, sink: &mut Sink) -> Step {
        if self.last_heard.elapsed() > SILENCE_LIMIT {
            close(sink, GOING_AWAY, "no pong: connection presumed dead").await;
            return Step::Stop;
        }
        send(sink, Message::Ping(Default::default())).await
    }

    /// A frame from the client: it is alive; a close (or an error) ends the loop.
    fn heard(&mut self, msg: Option<Result<Message, axum::Error>>) -> Step {
        match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Step::Stop,
            Some(Ok(_)) => {
                self.last_heard = Instant::now();
                Step::Continue
            }
        }
    }
}

/// `GET /api/v1/events`: every event from the subscription on, in order.
pub async fn event_stream(socket: WebSocket, mut events: Receiver<EventEnvelope>) {
    let (mut sink, mut stream) = socket.split();
    let mut alive = Keepalive::new();
    loop {
        let step = tokio::select! {
            event = events.recv() => match event {
                Ok(envelope) => match to_text(&envelope) {
                    Some(msg) => send(&mut sink, msg).await,
                    None => Step::Continue,
                },
                Err(RecvError::Lagged(n)) => {
                    let reason = format!("too slow: {n} events missed; reconnect and re-read state");
                    close(&mut sink, POLICY, &reason).await;
                    Step::Stop
                }
                Err(RecvError::Closed) => {
                    close(&mut sink, GOING_AWAY, "the node is shutting down").await;
                    Step::Stop
                }
            },
            msg = stream.next() => alive.heard(msg),
            _ = alive.ticker.tick() => alive.tick(&mut sink).await,
        };
        if let Step::Stop = step {
            return;
        }
    }
}

/// `GET /api/v1/migrations/{id}/watch`: `current` now, then each change, closing after a
/// final state. `reread` gives the migration's state after the channel lagged.
pub async fn watch_migration(
    socket: WebSocket,
    current: MigrationInfo,
    mut events: Receiver<EventEnvelope>,
    reread: impl Fn() -> Option<MigrationInfo> + Send,
) {
    let (mut sink, mut stream) = socket.split();
    let mut alive = Keepalive::new();
    let id = current.id.clone();
    let mut last = current;
    if let Step::Stop = send_state(&mut sink, &last).await {
        return;
    }
    loop {
        if last.state.is_final() {
            let reason = format!("migration {}", state_name(&last));
            close(&mut sink, NORMAL, &reason).await;
            return;
        }
        let next = tokio::select! {
            event = events.recv() => match event {
                Ok(EventEnvelope { event: NodeEvent::Migration { migration }, .. })
                    if migration.id == id => Some(Some(*migration)),
                Ok(_) => None,
                Err(RecvError::Lagged(_)) => Some(reread()),
                Err(RecvError::Closed) => {
                    close(&mut sink, GOING_AWAY, "the node is shutting down").await;
                    return;
                }
            },
            msg = stream.next() => match alive.heard(msg) {
                Step::Stop => return,
                Step::Continue => None,
            },
            _ = alive.ticker.tick() => match alive.tick(&mut sink).await {
                Step::Stop => return,
                Step::Continue => None,
            },
        };
        match next {
            None => {}
            Some(None) => {
                close(
                    &mut sink,
                    NORMAL,
                    "the migration is no longer known to the node",
                )
                .await;
                return;
            }
            Some(Some(m)) if m == last => {}
            Some(Some(m)) => {
                last = m;
                if let Step::Stop = send_state(&mut sink, &last).await {
                    return;
                }
            }
        }
    }
}

async fn send_state(sink: &mut Sink, m: &MigrationInfo) -> Step {
    match to_text(m) {
        Some(msg) => send(sink, msg).await,
        None => Step::Continue,
    }
}

fn state_name(m: &MigrationInfo) -> &'static str {
    use crate::api::types::MigrationState::*;
    match m.state {
        Running => "running",
        Done => "done",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}
