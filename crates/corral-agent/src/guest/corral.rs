//! Client of Corral's guest agent (`corral-guest`), which answers JSON lines on a virtio-serial
//! port. QEMU exposes the port as a Unix socket on the host; the agent keeps one connection per
//! guest and matches answers to requests by id, ignoring stale answers and unsolicited events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use corral_api::ExecResult;

use super::line::{id_in, read_line, Line, MAX_LINE};
use super::GuestError;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    // Start from the clock so ids never repeat across agent restarts.
    let _ = NEXT_ID.compare_exchange(0, corral_api::now_ms() * 1000, Ordering::SeqCst, Ordering::SeqCst);
    NEXT_ID.fetch_add(1, Ordering::SeqCst)
}

/// One persistent connection to a guest agent's port, shared by every caller: requests are
/// written as they come and answers are routed back by id. Connecting and disconnecting for
/// each call would make the guest reopen its port each time, and an answer written while no one
/// is connected would be lost.
struct Channel {
    writer: tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>,
    pending: std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    alive: std::sync::atomic::AtomicBool,
}

type Channels = std::sync::Mutex<HashMap<PathBuf, Arc<Channel>>>;

fn channels() -> &'static Channels {
    static C: OnceLock<Channels> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// The live channel for a socket, connecting (again) if there is none.
async fn channel(sock: &Path) -> Result<Arc<Channel>, GuestError> {
    let existing = channels().lock().unwrap_or_else(|p| p.into_inner()).get(sock).cloned();
    if let Some(c) = existing.filter(|c| c.alive.load(Ordering::SeqCst)) {
        return Ok(c);
    }
    let stream = UnixStream::connect(sock).await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
    let (read, write) = stream.into_split();
    let c = Arc::new(Channel {
        writer: tokio::sync::Mutex::new(write),
        pending: Default::default(),
        alive: std::sync::atomic::AtomicBool::new(true),
    });
    let reader = c.clone();
    tokio::spawn(async move {
        let mut read = BufReader::new(read);
        while let Ok(Some(line)) = read_line(&mut read, MAX_LINE).await {
            let v = match line {
                Line::Whole(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                // Dropped; whoever asked is told why rather than left waiting.
                Line::TooLong(head) => match id_in(&head) {
                    Some(id) => json!({
                        "id": id,
                        "ok": false,
                        "error": format!("the guest's answer was longer than {} MiB and was dropped", MAX_LINE >> 20),
                    }),
                    None => continue,
                },
            };
            let Some(id) = v.get("id").and_then(Value::as_u64) else { continue };
            let tx = reader.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Some(tx) = tx {
                let _ = tx.send(v);
            }
        }
        // QEMU went away (or restarted): fail whoever waits, and connect anew next time.
        reader.alive.store(false, Ordering::SeqCst);
        reader.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    });
    channels().lock().unwrap_or_else(|p| p.into_inner()).insert(sock.to_path_buf(), c.clone());
    Ok(c)
}

/// Sends one request and waits for its answer.
pub async fn call(sock: &Path, mut req: Value, timeout: Duration) -> Result<Value, GuestError> {
    let id = next_id();
    req["id"] = json!(id);
    let fut = async {
        let c = channel(sock).await?;
        let (tx, rx) = oneshot::channel();
        c.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let mut line = req.to_string();
        line.push('\n');
        let written = c.writer.lock().await.write_all(line.as_bytes()).await;
        if let Err(e) = written {
            c.alive.store(false, Ordering::SeqCst);
            c.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(GuestError::Unreachable(e.to_string()));
        }
        let v = rx.await.map_err(|_| GuestError::Unreachable("connection closed".into()))?;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(v);
        }
        let e = v.get("error").and_then(Value::as_str).unwrap_or("request failed");
        Err(GuestError::Failed(e.to_string()))
    };
    let r = tokio::time::timeout(timeout, fut).await.map_err(|_| GuestError::Timeout(timeout))?;
    if r.is_err() {
        if let Some(c) = channels().lock().unwrap_or_else(|p| p.into_inner()).get(sock) {
            c.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }
    r
}

/// Forgets the channel of a socket (its QEMU is gone).
pub fn forget(sock: &Path) {
    channels().lock().unwrap_or_else(|p| p.into_inner()).remove(sock);
}

/// Asks the guest agent whether the guest is up.
pub async fn ping(sock: &Path, timeout: Duration) -> Result<Value, GuestError> {
    call(sock, json!({"op": "ping"}), timeout).await
}

/// Runs a command in the guest.
pub async fn exec(
    sock: &Path,
    argv: &[String],
    stdin: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<ExecResult, GuestError> {
    let mut req = json!({"op": "exec", "argv": argv});
    if let Some(s) = stdin {
        req["stdin"] = json!(s);
    }
    if let Some(t) = timeout_ms {
        req["timeout_ms"] = json!(t);
    }
    // Leave the guest time to enforce its own timeout first.
    let wait = Duration::from_millis(timeout_ms.unwrap_or(60_000) + 5_000);
    let v = call(sock, req, wait).await?;
    Ok(ExecResult {
        exit_code: v.get("exit_code").and_then(Value::as_i64).unwrap_or(-1) as i32,
        stdout: v.get("stdout").and_then(Value::as_str).unwrap_or_default().to_string(),
        stderr: v.get("stderr").and_then(Value::as_str).unwrap_or_default().to_string(),
    })
}

/// Guest-reported memory use, MiB.
pub async fn mem_used_mib(sock: &Path) -> Option<u64> {
    let v = call(sock, json!({"op": "usage"}), Duration::from_millis(500)).await.ok()?;
    let total = v.get("mem_total_kib")?.as_u64()?;
    let avail = v.get("mem_available_kib")?.as_u64()?;
    Some(total.saturating_sub(avail) / 1024)
}
