//! Live byte streams into a VM, carried over websockets: its serial console and its VNC
//! display (and the bytes of a tunnel into the guest, see [`crate::tunnel`]). QEMU serves the
//! console and display on Unix sockets in the VM's directory. The console socket takes one
//! client at a time, so the agent holds that one connection and shares it: every viewer
//! gets the same output (after the recent output, replayed from the console log on attach),
//! and what any viewer types goes to the guest. A VNC client gets a connection of its own
//! (QEMU's VNC server takes several).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

/// How much recent console output a new viewer is shown.
const REPLAY: u64 = 16 * 1024;

/// One VM's console connection, shared by its viewers.
struct Hub {
    output: broadcast::Sender<Vec<u8>>,
    input: mpsc::Sender<Vec<u8>>,
}

fn hubs() -> &'static Mutex<HashMap<PathBuf, Arc<Hub>>> {
    static H: OnceLock<Mutex<HashMap<PathBuf, Arc<Hub>>>> = OnceLock::new();
    H.get_or_init(Default::default)
}

/// The hub of a console socket, connecting to QEMU if there is none (or its QEMU went away).
async fn hub(sock: &Path) -> std::io::Result<Arc<Hub>> {
    let existing = hubs().lock().unwrap_or_else(|p| p.into_inner()).get(sock).cloned();
    if let Some(h) = existing.filter(|h| !h.input.is_closed()) {
        return Ok(h);
    }
    let stream = UnixStream::connect(sock).await?;
    let (mut read, mut write) = stream.into_split();
    let (output, _) = broadcast::channel(256);
    let (input, mut typed) = mpsc::channel::<Vec<u8>>(64);
    let h = Arc::new(Hub { output: output.clone(), input });
    hubs().lock().unwrap_or_else(|p| p.into_inner()).insert(sock.to_path_buf(), h.clone());
    let key = sock.to_path_buf();
    let me = Arc::downgrade(&h);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                n = read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    // No viewer at the moment is fine: the console log keeps everything.
                    Ok(n) => { let _ = output.send(buf[..n].to_vec()); }
                },
                Some(bytes) = typed.recv() => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            }
        }
        // QEMU closed the console (it ended): viewers see their stream end.
        let mut map = hubs().lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|cur| me.upgrade().is_some_and(|me| Arc::ptr_eq(cur, &me))) {
            map.remove(&key);
        }
    });
    Ok(h)
}

/// The last [`REPLAY`] bytes of the console log.
fn recent(log: &Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(REPLAY))).is_ok() {
        let _ = f.take(REPLAY).read_to_end(&mut out);
    }
    out
}

/// Serves one console viewer until it leaves or the VM's QEMU ends.
pub async fn console(mut ws: WebSocket, sock: PathBuf, log: PathBuf) {
    let h = match hub(&sock).await {
        Ok(h) => h,
        Err(e) => {
            let _ = ws.send(Message::Close(Some(close(format!("cannot open the console: {e}"))))).await;
            return;
        }
    };
    let mut out = h.output.subscribe();
    let replay = recent(&log);
    if !replay.is_empty() && ws.send(Message::Binary(replay.into())).await.is_err() {
        return;
    }
    let (mut tx, mut rx) = ws.split();
    loop {
        tokio::select! {
            got = out.recv() => match got {
                Ok(bytes) => if tx.send(Message::Binary(bytes.into())).await.is_err() { break },
                // A slow viewer misses some output rather than holding up the others.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Message::Close(Some(close("the VM's console closed (it stopped)".into())))).await;
                    break;
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => if h.input.send(b.to_vec()).await.is_err() { break },
                Some(Ok(Message::Text(t))) => if h.input.send(t.as_bytes().to_vec()).await.is_err() { break },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Carries one VNC client's connection to QEMU's VNC socket.
pub async fn vnc(mut ws: WebSocket, sock: PathBuf) {
    let stream = match UnixStream::connect(&sock).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ws.send(Message::Close(Some(close(format!("cannot open the VNC display: {e}"))))).await;
            return;
        }
    };
    pump(ws, stream).await;
}

/// Copies bytes both ways between a websocket and a stream (QEMU's VNC socket, a TCP
/// connection into a guest) until either side ends.
pub async fn pump<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(ws: WebSocket, stream: S) {
    let (mut read, mut write) = tokio::io::split(stream);
    let (mut tx, mut rx) = ws.split();
    let up = async {
        while let Some(Ok(msg)) = rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}

fn close(reason: String) -> axum::extract::ws::CloseFrame {
    // A close reason is at most 123 bytes.
    let mut reason = reason;
    while reason.len() > 123 {
        reason.pop();
    }
    axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::AWAY, reason: reason.into() }
}
