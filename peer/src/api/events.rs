//! `GET /api/events`: server-sent events, once a second, for the web page
//! and any other watcher, each as JSON data:
//! - `downloads`: what changed in the download list since the last event
//!   of this stream, `{"full": bool, "downloads": [...], "removed": [id],
//!   "total": n, "counts": {state: n}}`. The first one is `full` (every
//!   download, as `GET /api/downloads?limit=` would list them all); later
//!   ones carry only the downloads whose shown fields changed and the ids
//!   removed, so that a list of 10,000 queued downloads costs its watchers
//!   the few that move, not the whole list every second. Sent every second
//!   even when nothing changed (a heartbeat the page shows as "live").
//!   `?state=&offset=&limit=` watch one page of the list instead, checked
//!   and applied as `GET /api/downloads` does (the web page does so): the
//!   event then holds that page's downloads, `removed` also names those
//!   that left it, `total` counts the downloads of those states and
//!   `counts` covers the whole list.
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

use super::{ApiError, ApiQuery, ApiState, ListQuery, ListWindow};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;

/// How often every event is sent: twice a second, so that progress
/// reaches the page at least once a second even with timer jitter (issue
/// 14; at exactly 1 s the longest gap measured was 1.02 s).
pub const EVENT_PERIOD: Duration = Duration::from_millis(500);

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
fn round(state: &ApiState, window: &ListWindow, sent: &mut Sent) -> Vec<Event> {
    let mut out = Vec::with_capacity(3);
    let mut add = |name: &str, data: Result<Event, axum::Error>| match data {
        Ok(e) => out.push(e.event(name)),
        Err(e) => tracing::warn!(event = name, error = %e, "cannot encode an event"),
    };
    // One page (built without copying the rest of the list) or all of it.
    let page = state
        .downloads
        .as_ref()
        .map(|m| m.page(&window.states, window.offset, window.limit));
    let (downloads, total, counts) = match page {
        Some(p) => (p.downloads, p.total, p.counts),
        None => Default::default(),
    };
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
            "total": total,
            "counts": counts,
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
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // The same rules as `GET /api/downloads`; without a limit, the whole list.
    let window = query.check(usize::MAX, true)?;
    let mut tick = tokio::time::interval(EVENT_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold(
        ((state, window), tick, VecDeque::new(), Sent::default()),
        |((state, window), mut tick, mut pending, mut sent)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), ((state, window), tick, pending, sent)));
                }
                tokio::select! {
                    _ = state.shutdown.cancelled() => return None,
                    _ = tick.tick() => {}
                }
                pending.extend(round(&state, &window, &mut sent));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
