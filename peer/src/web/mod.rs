//! `GET /`: the daemon's web page, embedded in the binary.
//!
//! One static HTML file with its style and script inline: no build step,
//! nothing loaded from elsewhere (works offline). It only talks to the
//! JSON API on the same origin (search, downloads, uploads, peers,
//! messages, and `/api/events` for live updates), sending the API token
//! as a Bearer header when the daemon has one (asked once, kept in the
//! tab's sessionStorage; no cookies). The page itself holds no data, so
//! it is served without the token.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

use crate::api::ApiState;

/// The page.
pub const PAGE: &str = include_str!("index.html");

/// Only this origin, inline style and script (the page's own), no frames.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE),
    )
}
