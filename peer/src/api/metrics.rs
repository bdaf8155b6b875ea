//! `GET /metrics`: the daemon's Prometheus metrics ([`crate::metrics`]),
//! and the middleware that counts API requests by route.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::ApiState;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, transfer::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// Counts each request under its route template (`/api/downloads/{id}`,
/// never the id itself) and method; anything that matched no route is
/// `other`, so the label set stays bounded.
pub(crate) async fn count_requests(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD") => m,
        _ => "other",
    };
    state
        .metrics
        .api_requests
        .with_label_values(&[route.as_str(), method])
        .inc();
    next.run(req).await
}
