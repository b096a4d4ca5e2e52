//! Carrying a live stream (a VM's console, its VNC display, or a tunnel to a guest port)
//! between a client's websocket and the websocket the VM's agent serves it on, frame by frame,
//! until either side ends.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Up;

use crate::agents::AgentStream;

/// Relays until the client or the agent closes (the other side is then closed too).
pub async fn relay(client: WebSocket, agent: AgentStream) {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_agent, mut from_agent) = agent.split();
    let up = async {
        while let Some(Ok(msg)) = from_client.next().await {
            let m = match msg {
                Message::Binary(b) => Up::Binary(b),
                Message::Text(t) => Up::Binary(t.as_bytes().to_vec().into()),
                Message::Close(_) => break,
                _ => continue,
            };
            if to_agent.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_agent.send(Up::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(msg)) = from_agent.next().await {
            let m = match msg {
                Up::Binary(b) => Message::Binary(b),
                Up::Text(t) => Message::Binary(t.as_bytes().to_vec().into()),
                Up::Close(frame) => {
                    let frame =
                        frame.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().to_string().into() });
                    let _ = to_client.send(Message::Close(frame)).await;
                    return;
                }
                _ => continue,
            };
            if to_client.send(m).await.is_err() {
                return;
            }
        }
        let _ = to_client.send(Message::Close(None)).await;
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}
