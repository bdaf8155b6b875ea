//! `GET /api/uploads`: who this peer serves (its upload slots) and who
//! waits for a slot (its upload queue), from
//! [`transfer::upload_queue::UploadQueue::snapshot`].

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use common::id::FileId;
use transfer::library::Holding;
use transfer::upload_queue::UploadsSnapshot;

use super::ApiState;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/uploads", get(uploads))
}

/// `{slots, slots_in_use, active: [{peer, file_id, name, rate_bps, bytes,
/// held_s}], queue: [{peer, position, waiting_since, connected, file_id}]}`;
/// `waiting_since` in seconds since the Unix epoch.
async fn uploads(State(state): State<ApiState>) -> Json<UploadsSnapshot> {
    Json(listing(&state.upload_queue, &state.library))
}

/// The queue's snapshot with the names of the files being sent filled in.
pub fn listing(
    queue: &transfer::upload_queue::UploadQueue,
    library: &transfer::library::Library,
) -> UploadsSnapshot {
    let mut snapshot = queue.snapshot();
    for a in &mut snapshot.active {
        let id = a.file_id.as_deref().and_then(|h| h.parse::<FileId>().ok());
        a.name = id.and_then(|id| match library.get(&id)? {
            Holding::Complete(e) => Some(e.rel.clone()),
            Holding::Partial(p) => Some(p.name.clone()),
        });
    }
    snapshot
}
