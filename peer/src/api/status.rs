//! `GET /api/status`: who this daemon is and what it shares.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::ApiState;

/// The body of `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The nickname asked for (a taken default gets a `-N` suffix at the index).
    pub nick: Option<String>,
    /// The shared folder.
    pub share: String,
    /// The index server (`HOST:PORT`); unused in p2p mode.
    pub index: String,
    /// "hybrid" or "p2p".
    pub mode: &'static str,
    /// Where chunk requests are accepted.
    pub listen: String,
    /// Where this API listens.
    pub api: String,
    pub version: &'static str,
    pub uptime_s: u64,
    /// Complete files shared, and their total size in bytes.
    pub files: usize,
    pub bytes: u64,
    /// Whether the peer is registered at the index now (hybrid mode).
    pub registered: bool,
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/status", get(status))
}

async fn status(State(state): State<ApiState>) -> Json<Status> {
    let shared = state.library.shared();
    let info = &state.info;
    Json(Status {
        nick: info.nick.clone(),
        share: info.share.display().to_string(),
        index: info.index.clone(),
        mode: info.mode,
        listen: info.listen.to_string(),
        api: state.api_addr.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: info.started.elapsed().as_secs(),
        files: shared.len(),
        bytes: shared.values().map(|e| e.size).sum(),
        registered: matches!(
            *state.registration.borrow(),
            crate::registrar::RegistrationState::Registered { .. }
        ),
    })
}
