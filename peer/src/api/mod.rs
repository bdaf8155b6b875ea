//! The daemon's HTTP/JSON API (`peer serve --api ADDR`), on axum.
//!
//! One [`Router`] built from sub-routers: each module of this folder has
//! `pub(crate) fn routes() -> Router<ApiState>`. Every handler gets an
//! [`ApiState`], a cheap clone of the daemon's shared handles.
//!
//! Rules every route gets from here, not from its own code:
//! - **Auth**: with a token, every `/api` and `/metrics` request needs
//!   `Authorization: Bearer TOKEN` (`/api/events` may take `?token=`, since
//!   a browser's EventSource cannot set headers). A non-loopback address
//!   without a token is refused at start ([`ApiError`] never reaches that).
//! - **Host check** (DNS rebinding): the `Host` header must be a loopback
//!   name or address, or the address the API is bound to; a page on
//!   another site that rebinds its name to 127.0.0.1 is refused.
//! - **Origin**: a request with an `Origin` header is served only when it
//!   is this API's own (`http://` + the `Host`): another origin, even a
//!   loopback one on another port, gets a 403. Requests without one (curl,
//!   the CLI) pass. No cookies are read or set (CSRF).
//! - **Body cap** [`MAX_BODY`]; malformed JSON, a wrong content type, an
//!   oversized body, an unknown route or method get a 4xx with
//!   `{"error": "..."}` ([`ApiError`], [`ApiJson`]).

pub(crate) mod downloads;
pub(crate) mod events;
pub(crate) mod messages;
pub(crate) mod metrics;
pub(crate) mod peers;
pub(crate) mod search;
pub(crate) mod shared;
pub(crate) mod status;
pub mod uploads;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::chunk_server::UploadStats;
use crate::inbox::Inbox;
use crate::library::Library;
use crate::registrar::RegistrationState;

/// The API's address when `--api` is not given: loopback only.
pub const DEFAULT_API: &str = "127.0.0.1:6700";

/// Largest request body accepted, bytes (requests are small JSON objects).
pub const MAX_BODY: usize = 64 * 1024;

/// Longest wait for a request's head on an HTTP/1 connection (also an
/// idle keep-alive one): a client that connects and never finishes its
/// headers is closed after this instead of holding a descriptor forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most API connections served at once. Past it new connections wait in
/// the kernel's listen backlog (costing this process no descriptor) until
/// one closes; [`HEADER_READ_TIMEOUT`] frees those held by stalled clients.
pub const MAX_API_CONNECTIONS: usize = 512;

/// The file in the share's state folder that says where the API listens.
pub const API_FILE: &str = "api.json";
/// The file in the share's state folder holding the API token (mode 0600).
pub const TOKEN_FILE: &str = "api-token";

/// Where and how the API listens.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address to bind (`127.0.0.1:0` picks a free port).
    pub addr: SocketAddr,
    /// Bearer token every request must carry; required off loopback.
    pub token: Option<String>,
    /// The address was not chosen by the user (the default): when it is
    /// taken (another daemon on this machine), a free loopback port is used
    /// instead (the state file says which) rather than failing.
    pub fallback_to_any_port: bool,
}

impl ApiConfig {
    /// The default: [`DEFAULT_API`], no token, another port if that one is taken.
    pub fn default_loopback() -> Self {
        ApiConfig {
            addr: DEFAULT_API.parse().expect("valid default address"),
            token: None,
            fallback_to_any_port: true,
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("the API address {0} is not loopback: anyone who can reach it could steer this peer; give a token with --api-token (or PEER_API_TOKEN), or bind 127.0.0.1")]
    NeedsToken(SocketAddr),
    #[error("the API token is empty or has characters other than visible ASCII")]
    BadToken,
    #[error("cannot listen for the API on {addr}: {source} (pick another address with --api, or --api off)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What `GET /api/status` tells that does not change while the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub nick: Option<String>,
    pub share: PathBuf,
    pub index: String,
    /// "hybrid" or "p2p".
    pub mode: &'static str,
    pub listen: SocketAddr,
    pub started: Instant,
}

/// The daemon's handles that API handlers use; cheap to clone (handles
/// and `Arc`s only). Each API module reads the fields it needs.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) info: Arc<DaemonInfo>,
    /// Where the API listens (after binding).
    pub(crate) api_addr: SocketAddr,
    pub(crate) library: Library,
    #[allow(dead_code)] // for the uploads endpoint
    pub(crate) uploads: Arc<UploadStats>,
    pub(crate) inbox: Inbox,
    #[allow(dead_code)] // for the peers and status endpoints
    pub(crate) registration: watch::Receiver<RegistrationState>,
    pub(crate) overlay: Option<crate::overlay::Overlay>,
    /// Upload slots and queue (`GET /api/uploads`).
    pub(crate) upload_queue: transfer::upload_queue::UploadQueue,
    /// The daemon's downloads (none when it keeps no list).
    pub(crate) downloads: Option<crate::daemon::DownloadManager>,
    /// Cancelled when the daemon stops: long responses (events) end then.
    pub(crate) shutdown: CancellationToken,
    /// The daemon's metrics (`GET /metrics`, counted API requests).
    pub(crate) metrics: Arc<crate::metrics::PeerMetrics>,
    /// Messages sent through the API, for `GET /api/messages`.
    pub(crate) sent: messages::SentLog,
}

/// An API error: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response()
    }
}

/// A JSON request body whose rejections (malformed JSON, wrong content
/// type, body over [`MAX_BODY`]) are [`ApiError`]s with their 4xx status.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body over {MAX_BODY} bytes"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "send the body as JSON with Content-Type: application/json".to_string()
        }
        _ => rejection.body_text(),
    };
    ApiError::new(status, message)
}

/// A path parameter whose rejection is an [`ApiError`] (400).
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// A query string whose rejection is an [`ApiError`] (400).
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// The query of the download list, the same for `GET /api/downloads` and
/// `GET /api/events` (which watches a page of that list): one parser and
/// one set of rules ([`ListQuery::check`]) so the two cannot drift apart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Comma-separated shown states to keep (default: all).
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// `/api/events` only: the token for the access layer (a browser's
    /// EventSource cannot set headers); refused elsewhere.
    #[serde(default)]
    pub token: Option<String>,
}

/// A checked [`ListQuery`]: what to pass to `DownloadManager::page`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListWindow {
    /// Lower-case shown states, empty for all.
    pub states: Vec<String>,
    pub offset: usize,
    pub limit: usize,
}

impl ListQuery {
    /// The rules: known state names only, a given `limit` 1 to
    /// [`downloads::MAX_LIST_LIMIT`] (`default_limit` when absent), `token`
    /// only where `token_allowed`.
    pub fn check(self, default_limit: usize, token_allowed: bool) -> Result<ListWindow, ApiError> {
        if self.token.is_some() && !token_allowed {
            return Err(ApiError::bad_request(
                "unknown parameter `token`: send the token as Authorization: Bearer TOKEN",
            ));
        }
        let states: Vec<String> = self
            .state
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let known = crate::daemon::SHOWN_STATES;
        if let Some(bad) = states.iter().find(|s| !known.contains(&s.as_str())) {
            return Err(ApiError::bad_request(format!(
                "unknown state {bad:?}: use {}",
                known.join(", ")
            )));
        }
        if self
            .limit
            .is_some_and(|l| !(1..=downloads::MAX_LIST_LIMIT).contains(&l))
        {
            return Err(ApiError::bad_request(format!(
                "limit must be 1 to {}",
                downloads::MAX_LIST_LIMIT
            )));
        }
        Ok(ListWindow {
            states,
            offset: self.offset.unwrap_or(0),
            limit: self.limit.unwrap_or(default_limit),
        })
    }
}

/// What the access checks need.
struct Guard {
    token: Option<String>,
    bound: SocketAddr,
}

/// The whole API: every module's routes, the checks, JSON fallbacks.
pub(crate) fn router(state: ApiState, token: Option<String>) -> Router {
    let guard = Arc::new(Guard {
        token,
        bound: state.api_addr,
    });
    Router::new()
        .merge(status::routes())
        .merge(uploads::routes())
        .merge(downloads::routes())
        .merge(search::routes())
        .merge(shared::routes())
        .merge(peers::routes())
        .merge(messages::routes())
        .merge(events::routes())
        .merge(metrics::routes())
        .merge(crate::web::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(guard, check_access))
        .with_state(state)
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", req.uri().path()))
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Host, Origin and token checks, before any handler runs.
async fn check_access(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let host_ok = host
        .as_deref()
        .is_some_and(|h| host_allowed(h, guard.bound));
    if !host_ok {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {:?} is not allowed (DNS rebinding protection): use http://127.0.0.1:{port}/ or http://localhost:{port}/",
                host.unwrap_or_default(),
                port = guard.bound.port()
            ),
        )
        .into_response();
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        // Any other origin, even another loopback port (another local web
        // app), could steer this peer from a browser: only our own page may.
        let ok = origin
            .to_str()
            .is_ok_and(|o| same_origin(o, host.as_deref().unwrap_or_default()));
        if !ok {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-origin requests are not allowed: only this API's own page may send an Origin",
            )
            .into_response();
        }
    }
    // A body announced over the cap is refused before any of it is read.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > MAX_BODY as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes"),
        )
        .into_response();
    }
    let path = req.uri().path();
    let protected = path == "/api" || path.starts_with("/api/") || path == "/metrics";
    if let (Some(token), true) = (&guard.token, protected) {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(bearer_token);
        let query = (path == "/api/events")
            .then(|| query_token(req.uri().query().unwrap_or("")))
            .flatten();
        let given = bearer.or(query.as_deref());
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            return (
                [(header::WWW_AUTHENTICATE, "Bearer")],
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API token: send Authorization: Bearer TOKEN (the daemon's --api-token)",
                ),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The token of `Authorization: Bearer TOKEN`; the scheme's case does not
/// matter (RFC 7235).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `origin` is this API's own, as the browser names it: `http://`
/// and the same host and port as the request's (already checked) `Host`.
fn same_origin(origin: &str, host: &str) -> bool {
    let origin = origin.trim();
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    scheme.eq_ignore_ascii_case("http")
        && !host.is_empty()
        && rest.eq_ignore_ascii_case(host.trim())
}

/// `token=...` from a query string (percent-decoded is not needed: tokens
/// are visible ASCII without `&`).
fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string)
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `Host` (or Origin's host) names this API: `localhost`, a
/// loopback address, or the address bound (any address when bound to an
/// unspecified one, which needs a token). Names other than `localhost`
/// are refused: that is what a rebinding attack uses.
fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let name = strip_port(host.trim());
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = bare.parse::<IpAddr>() else {
        return false;
    };
    ip.to_canonical().is_loopback() || ip == bound.ip() || bound.ip().is_unspecified()
}

/// `host:port`, `[v6]:port`, `host` or `[v6]` without the port.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons; only strip a port from host:port.
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// What `API_FILE` holds: how local commands find this daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiFile {
    /// `http://IP:PORT`.
    pub api: String,
    /// The file holding the token, when the API needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The daemon's process id (informational).
    #[serde(default)]
    pub pid: u32,
}

/// The state folder of a shared folder: `SHARE/.p2pshare` (hash cache,
/// inbox, API address, download list).
pub fn state_dir(share: &Path) -> PathBuf {
    share.join(crate::scan::CACHE_DIR)
}

/// A bound API listener, not yet serving.
pub struct BoundApi {
    listener: TcpListener,
    pub addr: SocketAddr,
    token: Option<String>,
}

/// Checks the config and binds (before anything else starts, so a refused
/// config stops `peer serve` at once).
pub async fn bind(config: &ApiConfig) -> Result<BoundApi, ApiStartError> {
    if let Some(token) = &config.token {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiStartError::BadToken);
        }
    }
    if !config.addr.ip().to_canonical().is_loopback() && config.token.is_none() {
        return Err(ApiStartError::NeedsToken(config.addr));
    }
    let listener = match TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) if config.fallback_to_any_port && e.kind() == std::io::ErrorKind::AddrInUse => {
            let any = SocketAddr::new(config.addr.ip(), 0);
            warn!(addr = %config.addr, "API address taken (another peer daemon?); using a free port instead (see the share's .p2pshare/api.json)");
            TcpListener::bind(any)
                .await
                .map_err(|source| ApiStartError::Bind { addr: any, source })?
        }
        Err(source) => {
            return Err(ApiStartError::Bind {
                addr: config.addr,
                source,
            })
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|source| ApiStartError::Bind {
            addr: config.addr,
            source,
        })?;
    Ok(BoundApi {
        listener,
        addr,
        token: config.token.clone(),
    })
}

/// Serves the API on `bound` until `shutdown`; records its address in the
/// state folder so that `peer get` and the other commands find it.
pub fn spawn(
    bound: BoundApi,
    state: ApiState,
    state_folder: &Path,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    if let Err(e) = write_api_file(state_folder, bound.addr, bound.token.as_deref()) {
        warn!(error = %e, folder = %state_folder.display(), "cannot record the API address; local commands will not find this daemon (set PEER_API)");
    }
    let router = router(state, bound.token);
    info!(addr = %bound.addr, "API listening on http://{}/", bound.addr);
    let folder = state_folder.to_path_buf();
    let addr = bound.addr;
    tracker.spawn(async move {
        serve(bound.listener, router, ConnLimits::DAEMON, shutdown).await;
        remove_api_file(&folder, addr);
    });
}

/// The per-connection limits of [`serve`] (tests use small ones).
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_read_timeout: Duration,
    max_connections: usize,
}

impl ConnLimits {
    const DAEMON: ConnLimits = ConnLimits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_connections: MAX_API_CONNECTIONS,
    };
}

/// Serves `router` on `listener` until `shutdown`, then lets the requests
/// under way finish. Not `axum::serve`: that sets no header read timeout
/// and no connection cap, so half-sent requests piled up without bound.
async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // A slot before accepting: at the cap, clients wait in the backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(router.clone()),
        );
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = shutdown.cancelled() => {}
            }
            // Finish the request under way; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// After a failed accept: a connection reset before it was taken is
/// nothing; out of descriptors (or another error), wait a moment rather
/// than spin, as axum::serve does.
async fn accept_failed(e: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    warn!(error = %e, "API cannot accept a connection; retrying in 1 s");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

fn write_api_file(folder: &Path, addr: SocketAddr, token: Option<&str>) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let token_file = match token {
        Some(token) => {
            let path = folder.join(TOKEN_FILE);
            write_private(&path, token.as_bytes())?;
            Some(path)
        }
        None => {
            let _ = std::fs::remove_file(folder.join(TOKEN_FILE));
            None
        }
    };
    let file = ApiFile {
        api: format!("http://{addr}"),
        token_file,
        pid: std::process::id(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    let tmp = folder.join(format!("{API_FILE}.tmp"));
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, folder.join(API_FILE))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Removes the API file on a clean stop, unless another daemon wrote its own since.
fn remove_api_file(folder: &Path, addr: SocketAddr) {
    let path = folder.join(API_FILE);
    let ours = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ApiFile>(&b).ok())
        .is_some_and(|f| f.api == format!("http://{addr}"));
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_this_api_are_allowed_and_others_refused() {
        let lo: SocketAddr = "127.0.0.1:6700".parse().unwrap();
        for ok in [
            "127.0.0.1:6700",
            "localhost:6700",
            "LOCALHOST",
            "[::1]:6700",
            "127.0.0.2",
            "app.localhost:1",
        ] {
            assert!(host_allowed(ok, lo), "{ok}");
        }
        for bad in [
            "evil.example:6700",
            "",
            "10.0.0.1:6700",
            "127.0.0.1.evil.example",
        ] {
            assert!(!host_allowed(bad, lo), "{bad}");
        }
        let lan: SocketAddr = "10.0.0.1:6700".parse().unwrap();
        assert!(host_allowed("10.0.0.1:6700", lan));
        assert!(!host_allowed("10.0.0.2:6700", lan));
        let any: SocketAddr = "0.0.0.0:6700".parse().unwrap();
        assert!(host_allowed("192.168.1.9:6700", any));
        assert!(!host_allowed("rebind.example:6700", any));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert_eq!(query_token("a=1&token=xyz"), Some("xyz".into()));
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server of one route with `limits`, on 127.0.0.1 port 0.
    async fn small_server(limits: ConnLimits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, router, limits, shutdown.clone()));
        (addr, shutdown)
    }

    /// A connection that sent part of a request head and stopped.
    async fn half_sent(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        s
    }

    /// Sends a whole request and reads the answer until the server closes.
    async fn whole_request(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Whether the server closed `s` (end of stream or reset).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn connections_that_never_finish_their_headers_are_closed() {
        let (addr, shutdown) = small_server(ConnLimits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 512,
        })
        .await;
        let mut stalled = Vec::new();
        for _ in 0..50 {
            stalled.push(half_sent(addr).await);
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), whole_request(addr))
            .await
            .expect("a whole request is answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        for s in &mut stalled {
            // Without the timeout they would stay open and this would fail.
            tokio::time::timeout(Duration::from_secs(10), closed(s))
                .await
                .expect("a half-sent request is closed after the header timeout");
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        // A header timeout far longer than the test: only the cap acts.
        let (addr, shutdown) = small_server(ConnLimits {
            header_read_timeout: Duration::from_secs(600),
            max_connections: 4,
        })
        .await;
        let mut stalled = Vec::new();
        for _ in 0..4 {
            stalled.push(half_sent(addr).await);
        }
        let mut waiting = tokio::spawn(whole_request(addr));
        let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
        assert!(
            early.is_err(),
            "a fifth connection was served past a cap of 4"
        );
        // One stalled client leaves: its slot goes to the waiting request.
        drop(stalled.pop());
        let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("served once a slot is free")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        shutdown.cancel();
    }

    #[test]
    fn both_lists_share_one_set_of_rules() {
        let q = |state: Option<&str>, limit: Option<usize>| ListQuery {
            state: state.map(Into::into),
            limit,
            ..Default::default()
        };
        let w = q(Some(" Active,waiting ,"), Some(5))
            .check(100, false)
            .unwrap();
        assert_eq!(w.states, vec!["active", "waiting"]);
        assert_eq!((w.offset, w.limit), (0, 5));
        assert_eq!(q(None, None).check(100, false).unwrap().limit, 100);
        for bad in [
            q(Some("bogus"), None),
            q(None, Some(0)),
            q(None, Some(100_001)),
        ] {
            assert!(bad.check(100, true).is_err());
        }
        let with_token = || ListQuery {
            token: Some("t".into()),
            ..Default::default()
        };
        assert!(with_token().check(100, true).is_ok());
        assert!(with_token().check(100, false).is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for ok in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR  abc "] {
            assert_eq!(bearer_token(ok), Some("abc"), "{ok}");
        }
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc", ""] {
            assert_eq!(bearer_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_apis_own_origin_is_same_origin() {
        let host = "127.0.0.1:6700";
        assert!(same_origin("http://127.0.0.1:6700", host));
        assert!(same_origin("HTTP://LOCALHOST:6700", "localhost:6700"));
        for bad in [
            "http://localhost:9999",
            "http://127.0.0.1:9999",
            "http://localhost:6700",
            "https://127.0.0.1:6700",
            "http://127.0.0.1:6700/",
            "http://127.0.0.1",
            "null",
            "",
            "http://evil.example",
        ] {
            assert!(!same_origin(bad, host), "{bad}");
        }
        assert!(!same_origin("http://", ""));
    }
}
