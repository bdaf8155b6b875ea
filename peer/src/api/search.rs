//! `GET /api/search?q=&limit=&min_size=&max_size=&ext=&type=`: files by
//! keywords, through the index (hybrid mode) or a flood of the overlay
//! from this node (p2p mode).
//!
//! Hybrid mode: the words and every filter go to the index
//! (`IndexClient::search_filtered`), which filters before it cuts to
//! `limit`; `type` is one of audio, video, image, document, archive,
//! program (the table in `common::search::FileKind`), sent as its
//! extensions. p2p mode: the overlay's answers are filtered here.
//!
//! Answer: `{total, truncated, total_exact, results: [{id, name, size,
//! sources}]}`; `total` is how many files matched (null when an older index
//! did not count), `truncated` whether `results` was cut to `limit`,
//! `total_exact` false when the index estimated `total`. `sources` is a
//! count.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use common::index_proto::SearchFilter;
use common::limits::{DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT, MAX_SEARCH_WORDS, MAX_WORD_LEN};
use common::names::MAX_EXTENSION_LEN;
use common::search::{FileKind, MAX_FILTER_EXTENSIONS};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiQuery, ApiState};
use crate::index_client::IndexClient;

/// How long a p2p search waits for the overlay's answers.
const P2P_WAIT: Duration = crate::overlay::DEFAULT_WAIT;

/// Longest a search may take before the API answers 504.
const SEARCH_DEADLINE: Duration = Duration::from_secs(15);

/// The query string, every value as text so that a bad one gets a clear
/// message rather than the extractor's.
#[derive(Debug, Deserialize)]
pub(crate) struct SearchParams {
    q: Option<String>,
    limit: Option<String>,
    min_size: Option<String>,
    max_size: Option<String>,
    ext: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// One result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub id: String,
    pub name: String,
    pub size: u64,
    /// Live sources that offer it.
    pub sources: u64,
}

/// The body of `GET /api/search`.
#[derive(Debug, Serialize)]
pub struct SearchAnswer {
    pub total: Option<u64>,
    pub truncated: bool,
    /// Whether `total` is an exact count (false: the index estimated it).
    pub total_exact: bool,
    pub results: Vec<SearchResult>,
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/search", get(search))
}

/// A checked query.
struct Query {
    words: Vec<String>,
    limit: u32,
    filter: Filter,
}

/// The filters of a query, as the index takes them (`SearchFilter`: sizes
/// and extensions, a `type` sent as its extension list), so that they run
/// at the index, before the limit.
struct Filter(SearchFilter);

impl Filter {
    /// Whether a file of `size` bytes named `name` passes (for the p2p
    /// mode, whose nodes do not filter).
    fn accepts(&self, size: u64, name: &str) -> bool {
        self.0.accepts(size, name)
    }
}

fn parse(p: SearchParams) -> Result<Query, ApiError> {
    let q = p.q.unwrap_or_default();
    let words: Vec<String> = q.split_whitespace().map(str::to_string).collect();
    if words.is_empty() {
        return Err(ApiError::bad_request(
            "give the words to search for in q (e.g. /api/search?q=blue+monday)",
        ));
    }
    if words.len() > MAX_SEARCH_WORDS || words.iter().any(|w| w.len() > MAX_WORD_LEN) {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_SEARCH_WORDS} words of at most {MAX_WORD_LEN} bytes"
        )));
    }
    let limit = match p.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_SEARCH_LIMIT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_SEARCH_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit is a number from 1 to {MAX_SEARCH_LIMIT}, not {s:?}"
                )))
            }
        },
    };
    let size = |name: &str, v: Option<String>| -> Result<Option<u64>, ApiError> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) => common::units::parse_size(s)
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("{name}: {e}"))),
        }
    };
    let min_size = size("min_size", p.min_size)?;
    let max_size = size("max_size", p.max_size)?;
    if let (Some(min), Some(max)) = (min_size, max_size) {
        if min > max {
            return Err(ApiError::bad_request(format!(
                "min_size ({min} bytes) is larger than max_size ({max} bytes)"
            )));
        }
    }
    let mut exts = Vec::new();
    for e in p.ext.as_deref().unwrap_or("").split(',') {
        let e = e.trim().trim_start_matches('.').to_lowercase();
        if e.is_empty() {
            continue;
        }
        if e.len() > MAX_EXTENSION_LEN || e.contains(['/', ' ']) {
            return Err(ApiError::bad_request(format!(
                "an extension is 1 to {MAX_EXTENSION_LEN} bytes without spaces (mp3, tar.gz)"
            )));
        }
        exts.push(e);
    }
    for k in p.kind.as_deref().unwrap_or("").split(',') {
        let k = k.trim();
        if k.is_empty() {
            continue;
        }
        let Some(kind) = FileKind::parse(k) else {
            let names: Vec<&str> = FileKind::ALL.iter().map(|k| k.name()).collect();
            return Err(ApiError::bad_request(format!(
                "unknown type {k:?}: one of {}",
                names.join(", ")
            )));
        };
        exts.extend(kind.extensions().iter().map(|e| e.to_string()));
    }
    exts.sort();
    exts.dedup();
    if exts.len() > MAX_FILTER_EXTENSIONS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_FILTER_EXTENSIONS} extensions in all (ext and type together)"
        )));
    }
    Ok(Query {
        words,
        limit,
        filter: Filter(SearchFilter {
            min_size,
            max_size,
            exts,
        }),
    })
}

async fn search(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchAnswer>, ApiError> {
    let query = parse(params)?;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(SEARCH_DEADLINE, run(&state, query))
        .await
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "the search took too long",
            )
        })??;
    state
        .metrics
        .search_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(answer))
}

async fn run(state: &ApiState, query: Query) -> Result<SearchAnswer, ApiError> {
    let unavailable = |what: String| ApiError::new(axum::http::StatusCode::BAD_GATEWAY, what);
    if state.overlay.is_some() {
        // Our own node floods the query (one port for chunks and overlay).
        let listen = state.info.listen;
        let via = if listen.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
        } else {
            listen
        };
        let report = crate::overlay::search(
            &via.to_string(),
            query.words,
            crate::overlay::DEFAULT_TTL,
            P2P_WAIT,
        )
        .await
        .map_err(|e| unavailable(format!("the overlay search failed: {e}")))?;
        let mut results: Vec<SearchResult> = report
            .hits
            .into_iter()
            .filter(|h| query.filter.accepts(h.size, &h.name))
            .map(|h| SearchResult {
                id: h.id,
                name: h.name,
                size: h.size,
                sources: h.sources.len() as u64,
            })
            .collect();
        let total = results.len() as u64;
        results.truncate(query.limit as usize);
        return Ok(SearchAnswer {
            total: Some(total),
            truncated: total > results.len() as u64,
            total_exact: true,
            results,
        });
    }
    let mut client = IndexClient::connect(&state.info.index)
        .await
        .map_err(|e| unavailable(format!("cannot reach the index {}: {e}", state.info.index)))?;
    // Filters run at the index, so the limit applies after them.
    let answer = client
        .search_filtered(query.words, query.limit, query.filter.0)
        .await
        .map_err(|e| match e.code() {
            Some(common::index_proto::ErrorCode::BadRequest) => {
                ApiError::bad_request(e.to_string())
            }
            _ => unavailable(format!("the index could not search: {e}")),
        })?;
    let results = answer
        .hits
        .into_iter()
        .map(|h| SearchResult {
            id: h.id.to_string(),
            name: h.name,
            size: h.size,
            sources: u64::from(h.sources),
        })
        .collect();
    Ok(SearchAnswer {
        total: answer.total,
        truncated: answer.truncated,
        total_exact: answer.total_exact,
        results,
    })
}
