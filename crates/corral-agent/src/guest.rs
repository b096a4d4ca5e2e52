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
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
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

/// The longest line the agent reads from a guest: a guest cannot make the agent hold more.
const MAX_LINE: usize = 8 << 20;
/// What is kept of a longer line (to find whose answer it was).
const HEAD: usize = 4096;

/// One line from a guest.
#[derive(Debug, PartialEq)]
enum Line {
    Whole(Vec<u8>),
    /// Longer than the limit: its first bytes; the rest was read and dropped.
    TooLong(Vec<u8>),
}

/// Reads one line of at most `max` bytes (without its newline), holding no more than that
/// however long the line is; `None` at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            if too_long {
                return Ok(Some(Line::TooLong(buf)));
            }
            return Ok((!buf.is_empty()).then_some(Line::Whole(buf)));
        }
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long && buf.len() + part.len() > max {
            too_long = true;
            let keep = HEAD.saturating_sub(buf.len().min(HEAD));
            buf.truncate(HEAD);
            buf.extend_from_slice(&part[..keep.min(part.len())]);
        } else if !too_long {
            buf.extend_from_slice(part);
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(if too_long { Line::TooLong(buf) } else { Line::Whole(buf) }));
        }
    }
}

/// The request id at the start of an answer (`{"...","id":N,...`), if it is there.
fn id_in(head: &[u8]) -> Option<u64> {
    let s = String::from_utf8_lossy(head);
    let at = s.find("\"id\":")? + 5;
    let digits: String = s[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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

#[cfg(test)]
mod line_tests {
    use super::*;

    #[tokio::test]
    async fn an_endless_line_is_bounded_and_the_next_answer_still_arrives() {
        // 40 MiB without a newline, then an ordinary answer: the reader keeps at most the
        // limit, says whose over-long answer it dropped, and goes on.
        let mut data = br#"{"exit_code":0,"id":41,"stdout":""#.to_vec();
        data.resize(40 << 20, b'x');
        data.extend_from_slice(b"\"}\n{\"id\":42,\"ok\":true}\n");
        let mut r = BufReader::with_capacity(64 * 1024, &data[..]);
        let first = read_line(&mut r, MAX_LINE).await.expect("read");
        match first {
            Some(Line::TooLong(head)) => {
                assert!(head.len() <= HEAD, "kept {} bytes of it", head.len());
                assert_eq!(id_in(&head), Some(41));
            }
            other => panic!("expected an over-long line, got {:?}", other.map(|_| "something else")),
        }
        let second = read_line(&mut r, MAX_LINE).await.expect("read");
        assert_eq!(second, Some(Line::Whole(br#"{"id":42,"ok":true}"#.to_vec())));
        assert_eq!(read_line(&mut r, MAX_LINE).await.expect("read"), None);
    }

    #[tokio::test]
    async fn lines_up_to_the_limit_are_whole() {
        let mut data = vec![b'a'; 100];
        data.push(b'\n');
        data.extend_from_slice(b"tail");
        let mut r = BufReader::with_capacity(7, &data[..]);
        assert_eq!(read_line(&mut r, 100).await.expect("read"), Some(Line::Whole(vec![b'a'; 100])));
        assert_eq!(read_line(&mut r, 100).await.expect("read"), Some(Line::Whole(b"tail".to_vec())));
    }
}
