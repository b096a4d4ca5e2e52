//! Client of Corral's guest agent (`corral-guest`), which answers JSON lines on a virtio-serial
//! port. QEMU exposes the port as a Unix socket on the host; the agent opens one connection per
//! call and matches answers to requests by id, ignoring stale answers and unsolicited events.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use corral_api::ExecResult;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    // Start from the clock so ids never repeat across agent restarts.
    let _ = NEXT_ID.compare_exchange(0, corral_api::now_ms() * 1000, Ordering::SeqCst, Ordering::SeqCst);
    NEXT_ID.fetch_add(1, Ordering::SeqCst)
}

/// Guest agent failures.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest agent not reachable: {0}")]
    Unreachable(String),
    #[error("guest agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("guest agent: {0}")]
    Failed(String),
}

/// Sends one request and waits for its answer.
pub async fn call(sock: &Path, mut req: Value, timeout: Duration) -> Result<Value, GuestError> {
    let id = next_id();
    req["id"] = json!(id);
    let fut = async {
        let stream = UnixStream::connect(sock).await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
        let mut stream = BufReader::new(stream);
        let mut line = req.to_string();
        line.push('\n');
        stream.get_mut().write_all(line.as_bytes()).await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
        loop {
            let mut buf = String::new();
            let n = stream.read_line(&mut buf).await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
            if n == 0 {
                return Err(GuestError::Unreachable("connection closed".into()));
            }
            let Ok(v) = serde_json::from_str::<Value>(&buf) else {
                continue;
            };
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if v.get("ok").and_then(Value::as_bool) == Some(true) {
                return Ok(v);
            }
            let e = v.get("error").and_then(Value::as_str).unwrap_or("request failed");
            return Err(GuestError::Failed(e.to_string()));
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| GuestError::Timeout(timeout))?
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
