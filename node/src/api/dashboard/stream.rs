//! The live pages' event stream (server-sent events): one event per node event, named by
//! its kind (`vm`, `migration`, `member`, `politeness`, `draining`, `job`), plus `sample`
//! after each history sample and `resync` when the stream fell behind. Events carry only
//! their sequence number: a page fetches what it shows, so nothing is trusted from the
//! stream and a missed event costs nothing but a refresh.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::Dashboard;
use crate::api::service::NodeService;
use crate::api::types::NodeEvent;

/// Comment lines sent when nothing happens (below every idle timeout).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a browser reconnects after the stream drops.
const RETRY: Duration = Duration::from_secs(1);

/// The `event:` name of a node event: its kind.
pub fn kind(e: &NodeEvent) -> &'static str {
    e.kind()
}

pub async fn events<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut node = d.service.subscribe();
    let mut samples = d.memory.subscribe_samples();
    let stream = async_stream(move |tx| async move {
        let hello = Event::default().event("hello").data("0").retry(RETRY);
        if tx.send(hello).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                e = node.recv() => match e {
                    Ok(e) => Event::default().event(kind(&e.event)).data(e.seq.to_string()),
                    Err(RecvError::Lagged(_)) => Event::default().event("resync").data("0"),
                    Err(RecvError::Closed) => return,
                },
                s = samples.recv() => match s {
                    Ok(at) => Event::default().event("sample").data(at.to_string()),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// A stream fed by `f` through a small channel (ends when `f` returns or the client goes).
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}
