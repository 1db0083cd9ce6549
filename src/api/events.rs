//! `GET /v1/events`: a WebSocket of state, reply and progress events.
//!
//! The client must send the text `OK` at least every `api.heartbeat`; a silent client is closed,
//! so that a dead consumer never holds events. `?peer=` keeps only one peer's events. A node that
//! stops closes each socket with code 1001 (going away).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::Shared;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only this peer's events.
    peer: Option<String>,
}

/// Upgrades to a WebSocket that streams events.
#[utoipa::path(get, path = "/v1/events", tag = "monitoring",
    summary = "WebSocket of state, reply and progress events; send the text OK every api.heartbeat",
    params(EventsQuery), responses((status = 101, description = "Switching to the WebSocket")))]
pub(super) async fn stream(
    State(state): State<Shared>,
    Query(q): Query<EventsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let (heartbeat, stopping) = (state.heartbeat, state.stopping.clone());
    let events = state.store.subscribe();
    // The console asks for the `ferry` subprotocol (beside the one carrying its token); a
    // browser drops a socket whose server selects none of those it asked for.
    ws.protocols([super::console::SUBPROTOCOL])
        .on_upgrade(move |socket| forward(socket, events, q.peer, heartbeat, stopping))
}

async fn forward(
    mut socket: WebSocket,
    mut events: tokio::sync::broadcast::Receiver<crate::store::Event>,
    peer: Option<String>,
    heartbeat: Duration,
    stopping: tokio_util::sync::CancellationToken,
) {
    let mut deadline = Instant::now() + heartbeat;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(e) if peer.as_deref().is_none_or(|p| p == e.peer()) => {
                    let text = serde_json::to_string(&e).unwrap_or_default();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "an events client fell behind"),
                Err(RecvError::Closed) => return,
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Text(t))) if t.trim() == "OK" => deadline = Instant::now() + heartbeat,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                let reason = format!("no OK heartbeat within {} ms", heartbeat.as_millis());
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 4000, reason: reason.into() }))).await;
                return;
            }
            () = stopping.cancelled() => {
                let reason = "the node is stopping; connect again once it is back";
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: reason.into() }))).await;
                return;
            }
        }
    }
}
