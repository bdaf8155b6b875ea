//! Direct messages: `GET /api/messages` (the inbox and what this API
//! sent, oldest first) and `POST /api/messages {"to", "text"}` (looked up
//! at the index, delivered straight to that peer; answers
//! `{to, addr}` once delivered).
//!
//! A received message is `{dir: "in", from, source, received_unix_ms,
//! text}`; a sent one `{dir: "out", to, addr, sent_unix_ms, text}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiState};
use crate::im::MessageError;

/// Sent messages kept for the page (the inbox keeps its own).
pub const SENT_KEPT: usize = 100;

/// A message sent through the API.
#[derive(Debug, Clone, Serialize)]
pub struct SentMessage {
    pub to: String,
    pub addr: String,
    pub sent_unix_ms: u64,
    pub text: String,
}

/// The last [`SENT_KEPT`] messages sent through the API (memory only).
#[derive(Debug, Clone, Default)]
pub struct SentLog(Arc<Mutex<VecDeque<SentMessage>>>);

impl SentLog {
    fn push(&self, m: SentMessage) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == SENT_KEPT {
            log.pop_front();
        }
        log.push_back(m);
    }

    fn all(&self) -> Vec<SentMessage> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// One message in `GET /api/messages`.
#[derive(Debug, Serialize)]
#[serde(tag = "dir")]
pub enum Message {
    #[serde(rename = "in")]
    In(transfer::inbox::InboxMessage),
    #[serde(rename = "out")]
    Out(SentMessage),
}

impl Message {
    fn unix_ms(&self) -> u64 {
        match self {
            Message::In(m) => m.received_unix_ms,
            Message::Out(m) => m.sent_unix_ms,
        }
    }
}

/// The body of `GET /api/messages`.
#[derive(Debug, Serialize)]
pub struct Messages {
    pub messages: Vec<Message>,
}

/// The body of `POST /api/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Send {
    to: String,
    text: String,
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/messages", get(list).post(send))
}

/// Received and sent messages, oldest first.
pub(crate) fn snapshot(state: &ApiState) -> Messages {
    let mut messages: Vec<Message> = state
        .inbox
        .recent()
        .into_iter()
        .map(Message::In)
        .chain(state.sent.all().into_iter().map(Message::Out))
        .collect();
    messages.sort_by_key(Message::unix_ms);
    Messages { messages }
}

async fn list(State(state): State<ApiState>) -> Json<Messages> {
    Json(snapshot(&state))
}

async fn send(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<Send>,
) -> Result<Json<crate::im::Delivery>, ApiError> {
    if state.overlay.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "direct messages find the recipient through the index: this daemon runs in p2p mode",
        ));
    }
    let from = state
        .info
        .nick
        .clone()
        .unwrap_or_else(crate::im::default_nick);
    let to = body.to.trim();
    let sent = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        crate::im::send_message(&state.info.index, to, &from, &body.text),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{to} did not take the message within 20 s"),
        )
    })?;
    let delivery = sent.map_err(|e| {
        let status = match &e {
            MessageError::BadText(_)
            | MessageError::BadFrom { .. }
            | MessageError::BadNick { .. } => StatusCode::BAD_REQUEST,
            MessageError::Offline { .. } => StatusCode::NOT_FOUND,
            MessageError::Refused { .. } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    })?;
    state.sent.push(SentMessage {
        to: delivery.to.clone(),
        addr: delivery.addr.clone(),
        sent_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        text: body.text,
    });
    Ok(Json(delivery))
}
