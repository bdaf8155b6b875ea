//! `GET /api/events`: server-sent events, once a second, for the web page
//! and any other watcher: event `downloads` (the body of `GET
//! /api/downloads`), `uploads` (of `GET /api/uploads`) and `messages` (of
//! `GET /api/messages`), each as JSON data. The stream ends when the
//! daemon stops. With an API token, EventSource (which cannot set
//! headers) may pass it as `?token=`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;

use super::ApiState;

/// How often every event is sent.
pub const EVENT_PERIOD: Duration = Duration::from_secs(1);

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/events", get(events))
}

/// One round of events: the state of downloads, uploads and messages now.
fn round(state: &ApiState) -> Vec<Event> {
    let mut out = Vec::with_capacity(3);
    let mut add = |name: &str, data: Result<Event, axum::Error>| match data {
        Ok(e) => out.push(e.event(name)),
        Err(e) => tracing::warn!(event = name, error = %e, "cannot encode an event"),
    };
    let downloads = state
        .downloads
        .as_ref()
        .map(|m| m.list())
        .unwrap_or_default();
    add(
        "downloads",
        Event::default().json_data(serde_json::json!({ "downloads": downloads })),
    );
    add(
        "uploads",
        Event::default().json_data(super::uploads::listing(&state.upload_queue, &state.library)),
    );
    add(
        "messages",
        Event::default().json_data(super::messages::snapshot(state)),
    );
    out
}

async fn events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(EVENT_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold(
        (state, tick, VecDeque::new()),
        |(state, mut tick, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (state, tick, pending)));
                }
                tokio::select! {
                    _ = state.shutdown.cancelled() => return None,
                    _ = tick.tick() => {}
                }
                pending.extend(round(&state));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
