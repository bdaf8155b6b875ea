//! `GET /api/events`: server-sent events, once a second, for the web page
//! and any other watcher, each as JSON data:
//! - `downloads`: what changed in the download list since the last event
//!   of this stream, `{"full": bool, "downloads": [...], "removed": [id]}`.
//!   The first one is `full` (every download, as `GET /api/downloads?limit=`
//!   would list them all); later ones carry only the downloads whose shown
//!   fields changed and the ids removed, so that a list of 10,000 queued
//!   downloads costs its watchers the few that move, not the whole list
//!   every second. Sent every second even when nothing changed (a
//!   heartbeat the page shows as "live").
//! - `uploads` (the body of `GET /api/uploads`) and `messages` (of `GET
//!   /api/messages`), whole: both are bounded (the upload queue's cap, the
//!   inbox's capacity).
//!
//! The stream ends when the daemon stops. With an API token, EventSource
//! (which cannot set headers) may pass it as `?token=`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
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

/// What one stream has sent of the download list: each download's id and
/// a hash of its JSON (16 bytes a download, not its text).
#[derive(Default)]
struct Sent {
    started: bool,
    downloads: HashMap<u64, u64>,
}

/// One round of events: the changes in the downloads since `sent`, and the
/// uploads and messages now.
fn round(state: &ApiState, sent: &mut Sent) -> Vec<Event> {
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
    let full = !sent.started;
    sent.started = true;
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut now = HashMap::with_capacity(downloads.len());
    let mut changed = Vec::new();
    for d in downloads {
        let hash = serde_json::to_vec(&d)
            .map(|json| hasher.hash_one(json))
            .unwrap_or_default();
        now.insert(d.id, hash);
        if full || sent.downloads.get(&d.id) != Some(&hash) {
            changed.push(d);
        }
    }
    let removed: Vec<u64> = sent
        .downloads
        .keys()
        .filter(|id| !now.contains_key(id))
        .copied()
        .collect();
    sent.downloads = now;
    add(
        "downloads",
        Event::default().json_data(serde_json::json!({
            "full": full,
            "downloads": changed,
            "removed": removed,
        })),
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
        (state, tick, VecDeque::new(), Sent::default()),
        |(state, mut tick, mut pending, mut sent)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (state, tick, pending, sent)));
                }
                tokio::select! {
                    _ = state.shutdown.cancelled() => return None,
                    _ = tick.tick() => {}
                }
                pending.extend(round(&state, &mut sent));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
