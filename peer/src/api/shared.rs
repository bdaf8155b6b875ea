//! `GET /api/shared`: the files this daemon shares,
//! `{files: [{id, name, size}]}` sorted by name.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::ApiState;

/// One shared file; `name` is its path in the shared folder, `/`-separated.
#[derive(Debug, Serialize)]
pub struct SharedFile {
    pub id: String,
    pub name: String,
    pub size: u64,
}

/// The body of `GET /api/shared`.
#[derive(Debug, Serialize)]
pub struct Shared {
    pub files: Vec<SharedFile>,
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/shared", get(shared))
}

async fn shared(State(state): State<ApiState>) -> Json<Shared> {
    let mut files: Vec<SharedFile> = state
        .library
        .shared()
        .iter()
        .map(|(id, e)| SharedFile {
            id: id.to_string(),
            name: e.rel.clone(),
            size: e.size,
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Json(Shared { files })
}
