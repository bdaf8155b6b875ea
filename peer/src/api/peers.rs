//! `GET /api/peers`: who is online.
//!
//! Hybrid mode: the index's list of live peers, each
//! `{nick, addr, files, bytes}` (as `peer who --json`); p2p mode: this
//! node's overlay neighbours, each `{nick: null, addr}` (a flooding
//! overlay has no global list). Answer: `{source: "index" | "overlay",
//! peers: [...]}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::index_client::IndexClient;

/// One online peer.
#[derive(Debug, Serialize)]
pub struct OnlinePeer {
    pub nick: Option<String>,
    pub addr: String,
    /// Files and bytes it shares (known through the index only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// The body of `GET /api/peers`.
#[derive(Debug, Serialize)]
pub struct Peers {
    pub source: &'static str,
    pub peers: Vec<OnlinePeer>,
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/peers", get(peers))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<Peers>, ApiError> {
    if let Some(overlay) = &state.overlay {
        let peers = overlay
            .neighbours()
            .into_iter()
            .map(|addr| OnlinePeer {
                nick: None,
                addr,
                files: None,
                bytes: None,
            })
            .collect();
        return Ok(Json(Peers {
            source: "overlay",
            peers,
        }));
    }
    let unavailable = |e: crate::index_client::IndexError| {
        ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            format!("cannot list the peers online: {e}"),
        )
    };
    let mut client = IndexClient::connect(&state.info.index)
        .await
        .map_err(unavailable)?;
    let list = tokio::time::timeout(std::time::Duration::from_secs(10), client.peers())
        .await
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "the index did not answer within 10 s",
            )
        })?
        .map_err(unavailable)?;
    let peers = list
        .into_iter()
        .map(|p| OnlinePeer {
            nick: p.nick,
            addr: p.addr,
            files: Some(p.files),
            bytes: Some(p.bytes),
        })
        .collect();
    Ok(Json(Peers {
        source: "index",
        peers,
    }))
}
