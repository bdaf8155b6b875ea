//! `/api/downloads`: the daemon's downloads (create, list, pause, resume,
//! cancel or clear). See [`crate::daemon`] for the states.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState, ListQuery};
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
    /// "client-server": fetch from an index server's store only (never a
    /// peer); the daemon's own mode ("hybrid" or "p2p") is the default,
    /// and the other peer-to-peer mode is refused (the daemon is a node of
    /// one network only).
    #[serde(default)]
    pub mode: Option<String>,
    /// With "client-server": the index server holding the store, `HOST:PORT`
    /// or `HOST` (port 8888); default: the daemon's index.
    #[serde(default)]
    pub server: Option<String>,
}

/// The store a new download comes from: `Some(server)` in client-server
/// mode, `None` in the daemon's own mode; a 400 for a mode it cannot run.
fn store_server(state: &ApiState, body: &NewDownload) -> Result<Option<String>, ApiError> {
    let own = state.info.mode;
    let mode = body.mode.as_deref().map(str::trim).unwrap_or(own);
    match mode {
        "client-server" => {}
        m if m == own => {
            return match body.server {
                None => Ok(None),
                Some(_) => Err(ApiError::bad_request(
                    "\"server\" goes with \"mode\": \"client-server\" only",
                )),
            };
        }
        "hybrid" | "p2p" => {
            return Err(ApiError::bad_request(format!(
                "this daemon runs in {own} mode and cannot download in {mode} mode (run `peer get --mode {mode}` without it, or a daemon in that mode)"
            )))
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown mode {other:?}: use hybrid, p2p or client-server"
            )))
        }
    }
    let server = match body.server.as_deref() {
        Some(s) => s,
        // A p2p daemon's index is not used (and may be empty).
        None if own == "hybrid" => state.info.index.as_str(),
        None => {
            return Err(ApiError::bad_request(
                "a p2p daemon has no index server: give \"server\": \"HOST:PORT\" of the index server with the store",
            ))
        }
    };
    crate::addr::parse_host_port(server, crate::addr::INDEX_PORT)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("server: {e}")))
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
/// Largest `limit` accepted (here and by `/api/events`).
pub const MAX_LIST_LIMIT: usize = 100_000;

async fn list(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    // The rules are shared with `/api/events` (see `ListQuery::check`).
    let w = q.check(DEFAULT_LIST_LIMIT, false)?;
    Ok(Json(manager(&state)?.page(&w.states, w.offset, w.limit)))
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
    let server = store_server(&state, &body)?;
    let manager = manager(&state)?.clone();
    // The store commits (fsync) off the async threads.
    let created = tokio::task::spawn_blocking(move || manager.add(&body.target, body.out, server))
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
