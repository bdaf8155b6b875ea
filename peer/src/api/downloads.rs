//! `/api/downloads`: the daemon's downloads (create, list, pause, resume,
//! cancel or clear). See [`crate::daemon`] for the states.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState};
use crate::daemon::{Download, DownloadManager, ManagerError, Page};

/// The body of `POST /api/downloads`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDownload {
    /// A file id, an id prefix of at least 8 hex digits, or an exact name.
    pub target: String,
    /// Absolute folder to put the file in (default: the shared folder).
    #[serde(default)]
    pub out: Option<std::path::PathBuf>,
}

/// Longest target accepted (a name is at most this long anyway).
const MAX_TARGET: usize = 4096;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/downloads", get(list).post(create))
        .route("/api/downloads/{id}", get(one).delete(remove))
        .route("/api/downloads/{id}/pause", post(pause))
        .route("/api/downloads/{id}/resume", post(resume))
}

fn manager(state: &ApiState) -> Result<&DownloadManager, ApiError> {
    state.downloads.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this daemon keeps no download list",
        )
    })
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let status = match &e {
            ManagerError::Unknown(_) => StatusCode::NOT_FOUND,
            ManagerError::WrongState { .. } => StatusCode::CONFLICT,
            ManagerError::BadTarget(_) | ManagerError::RelativeOut(_) => StatusCode::BAD_REQUEST,
            ManagerError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Most downloads one list call returns when no `limit` is given; a page
/// of a long queue stays quick to build and to read.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_LIST_LIMIT: usize = 100_000;

/// `GET /api/downloads?state=active,waiting&offset=0&limit=1000`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Comma-separated shown states to keep (default: all).
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
}

const STATES: [&str; 6] = ["queued", "waiting", "active", "paused", "done", "failed"];

async fn list(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let states: Vec<String> = q
        .state
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if let Some(bad) = states.iter().find(|s| !STATES.contains(&s.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown state {bad:?}: use {}",
            STATES.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit over {MAX_LIST_LIMIT}"
        )));
    }
    Ok(Json(manager(&state)?.page(
        &states,
        q.offset.unwrap_or(0),
        limit,
    )))
}

async fn create(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<NewDownload>,
) -> Result<(StatusCode, Json<Download>), ApiError> {
    if body.target.len() > MAX_TARGET {
        return Err(ApiError::bad_request(format!(
            "target longer than {MAX_TARGET} bytes"
        )));
    }
    let manager = manager(&state)?.clone();
    // The store commits (fsync) off the async threads.
    let created = tokio::task::spawn_blocking(move || manager.add(&body.target, body.out))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn one(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Download>, ApiError> {
    Ok(Json(manager(&state)?.get(id)?))
}

async fn pause(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Download>, ApiError> {
    let m = manager(&state)?.clone();
    blocking(move || m.pause(id)).await
}

async fn resume(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Download>, ApiError> {
    let m = manager(&state)?.clone();
    blocking(move || m.resume(id)).await
}

async fn remove(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Download>, ApiError> {
    let m = manager(&state)?.clone();
    blocking(move || m.remove(id)).await
}

async fn blocking(
    f: impl FnOnce() -> Result<Download, ManagerError> + Send + 'static,
) -> Result<Json<Download>, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
        .map_err(ApiError::from)
}
