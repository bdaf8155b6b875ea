//! How local commands talk to a running daemon's API: find it (the share's
//! state file, or `PEER_API`), then plain JSON requests over HTTP/1.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use serde_json::Value;

use crate::api::{state_dir, ApiFile, API_FILE};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon's API at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the daemon's API at {addr} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("the daemon answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0:?} is not an API address: use http://IP:PORT")]
    BadAddress(String),
}

/// A daemon's API: `IP:PORT` and the token, if it needs one.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub addr: String,
    token: Option<String>,
}

impl ApiClient {
    /// `http://IP:PORT` (or `IP:PORT`) and a token.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let addr = url
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') || url.trim().starts_with("https://") {
            return Err(ClientError::BadAddress(url.to_string()));
        }
        Ok(ApiClient {
            addr: addr.to_string(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The daemon this command should use: `PEER_API` (with
    /// `PEER_API_TOKEN`) when set, else the API file of the first shared
    /// folder at or above `dir`. `Ok(None)`: no daemon recorded (or its
    /// API file is stale: nobody answers there).
    pub async fn discover(dir: &Path) -> Result<Option<Self>, ClientError> {
        if let Some(url) = std::env::var("PEER_API")
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            let lowered = url.trim().to_ascii_lowercase();
            if matches!(lowered.as_str(), "off" | "none" | "no" | "0") {
                return Ok(None);
            }
            let token = std::env::var("PEER_API_TOKEN").ok();
            return Ok(Some(Self::new(&url, token)?));
        }
        let Some((share, file)) = find_api_file(dir) else {
            return Ok(None);
        };
        let token = match &file.token_file {
            Some(path) => std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string()),
            None => None,
        }
        .or_else(|| std::env::var("PEER_API_TOKEN").ok());
        let client = Self::new(&file.api, token)?;
        // Stale (a daemon killed with -9) or another share's daemon now on that port.
        match client.request(Method::GET, "/api/status", None).await {
            Ok(status) => {
                let same = status["share"]
                    .as_str()
                    .map(PathBuf::from)
                    .is_some_and(|s| same_dir(&s, &share));
                Ok(same.then_some(client))
            }
            Err(_) => Ok(None),
        }
    }

    /// `GET`s `path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// `POST`s `body` (JSON) to `path`.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `DELETE`s `path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, None).await
    }

    /// One request; a 4xx/5xx answer is an error carrying the API's message.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr.clone(),
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr);
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match &body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("JSON values serialize"))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| connect_error(e.to_string()))?;
        // The connection is driven here, in this task, while the request runs.
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| connect_error(e.to_string()))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if status >= 400 {
                let message = value["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                return Err(ClientError::Api { status, message });
            }
            Ok(value)
        };
        tokio::pin!(conn);
        tokio::select! {
            r = exchange => r,
            e = &mut conn => Err(connect_error(match e {
                Ok(()) => "connection closed".to_string(),
                Err(e) => e.to_string(),
            })),
        }
    }
}

/// The API file of the first folder at or above `dir` that has one.
fn find_api_file(dir: &Path) -> Option<(PathBuf, ApiFile)> {
    let start = std::fs::canonicalize(dir).ok().or_else(|| {
        // The output folder may not exist yet: start from the nearest one that does.
        dir.ancestors().find_map(|a| std::fs::canonicalize(a).ok())
    })?;
    for folder in start.ancestors() {
        let path = state_dir(folder).join(API_FILE);
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(file) = serde_json::from_slice::<ApiFile>(&bytes) {
                return Some((folder.to_path_buf(), file));
            }
        }
    }
    None
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
