//! `/api/downloads`: the daemon's downloads (create, list, pause, resume,
//! cancel or clear). See [`crate::daemon`] for the states.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiJson, ApiPath, ApiState};
use crate::daemon::{Download, DownloadManager, ManagerError};

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

async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "downloads": manager(&state)?.list() })))
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
