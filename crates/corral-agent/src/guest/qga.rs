//! Client of the standard QEMU guest agent (`qemu-guest-agent`, virtio-serial port
//! `org.qemu.guest_agent.0`), which cloud images carry. Its protocol is QMP-like JSON with no
//! request ids: answers come in order. So calls to one guest go one at a time over one
//! connection, and every new connection is first synchronised with `guest-sync-delimited`
//! (a 0xFF byte resets the agent's parser; the answer follows a 0xFF byte), which drops whatever
//! a call that timed out left behind. A connection on which anything failed is closed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::Instant;

use corral_api::ExecResult;

use super::{read_line, GuestError, Line, MAX_LINE};

/// The longest a command's output may be, per stream, before it is cut (QEMU's guest agent
/// itself keeps at most 16 MiB).
const MAX_OUTPUT: usize = 4 << 20;

type Conn = BufReader<UnixStream>;
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

fn slots() -> &'static std::sync::Mutex<HashMap<PathBuf, Slot>> {
    static S: OnceLock<std::sync::Mutex<HashMap<PathBuf, Slot>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

fn slot(sock: &Path) -> Slot {
    slots().lock().unwrap_or_else(|p| p.into_inner()).entry(sock.to_path_buf()).or_default().clone()
}

/// Forgets the connection to a socket (its QEMU is gone or restarted).
pub fn forget(sock: &Path) {
    slots().lock().unwrap_or_else(|p| p.into_inner()).remove(sock);
}

fn sync_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let _ = N.compare_exchange(0, corral_api::now_ms() % (1 << 40) * 1000, Ordering::SeqCst, Ordering::SeqCst);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Reads the next JSON line, skipping blank ones.
async fn read_value<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Value, GuestError> {
    loop {
        match read_line(r, MAX_LINE).await.map_err(|e| GuestError::Unreachable(e.to_string()))? {
            None => return Err(GuestError::Unreachable("connection closed".into())),
            Some(Line::TooLong(_)) => {
                return Err(GuestError::Failed(format!("an answer longer than {} MiB was dropped", MAX_LINE >> 20)))
            }
            Some(Line::Whole(b)) => {
                let text = String::from_utf8_lossy(&b);
                // A sync answer is led by 0xFF (sent raw, so not UTF-8) and may follow junk.
                let text = text.trim_start_matches(|c: char| c != '{');
                if text.trim().is_empty() {
                    continue;
                }
                return serde_json::from_str(text.trim())
                    .map_err(|e| GuestError::Failed(format!("unreadable answer from the guest agent: {e}")));
            }
        }
    }
}

/// Connects and synchronises: sends 0xFF and `guest-sync-delimited`, then reads until the
/// answer carrying its id (older answers are dropped).
async fn connect(sock: &Path) -> Result<Conn, GuestError> {
    let stream = UnixStream::connect(sock).await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
    let mut c = BufReader::new(stream);
    let id = sync_id();
    let mut req = vec![0xFFu8];
    req.extend_from_slice(json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}).to_string().as_bytes());
    req.push(b'\n');
    c.get_mut().write_all(&req).await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
    loop {
        let v = read_value(&mut c).await?;
        if v.get("return").and_then(Value::as_u64) == Some(id) {
            return Ok(c);
        }
    }
}

/// Writes one command.
async fn send(c: &mut Conn, execute: &str, arguments: Option<Value>) -> Result<(), GuestError> {
    let mut req = json!({ "execute": execute });
    if let Some(a) = arguments {
        req["arguments"] = a;
    }
    let mut line = req.to_string().into_bytes();
    line.push(b'\n');
    c.get_mut().write_all(&line).await.map_err(|e| GuestError::Unreachable(e.to_string()))
}

/// Runs one command and returns its `return` value.
async fn command(c: &mut Conn, execute: &str, arguments: Option<Value>) -> Result<Value, GuestError> {
    send(c, execute, arguments).await?;
    let v = read_value(c).await?;
    if let Some(r) = v.get("return") {
        return Ok(r.clone());
    }
    let desc = v.pointer("/error/desc").and_then(Value::as_str).unwrap_or("request failed");
    Err(GuestError::Failed(desc.to_string()))
}

/// Runs `f` on this guest's connection (made and synchronised if there is none), within
/// `timeout` in all; on any failure the connection is closed, so a late answer cannot be
/// taken for the next call's.
async fn with_conn<T>(
    sock: &Path,
    timeout: Duration,
    f: impl for<'c> FnOnce(&'c mut Conn) -> futures::future::BoxFuture<'c, Result<T, GuestError>>,
) -> Result<T, GuestError> {
    on_conn(sock, timeout, true, f).await
}

/// [`with_conn`], keeping the connection after a call that succeeded only if `keep`.
async fn on_conn<T>(
    sock: &Path,
    timeout: Duration,
    keep: bool,
    f: impl for<'c> FnOnce(&'c mut Conn) -> futures::future::BoxFuture<'c, Result<T, GuestError>>,
) -> Result<T, GuestError> {
    let slot = slot(sock);
    let run = async {
        let mut g = slot.lock().await;
        // Out of the slot while in use: a call cut by the timeout drops (closes) it, and the
        // next call connects and synchronises anew.
        let mut c = match g.take() {
            Some(c) => c,
            None => connect(sock).await?,
        };
        let r = f(&mut c).await;
        if r.is_ok() && keep {
            *g = Some(c);
        }
        r
    };
    tokio::time::timeout(timeout, run).await.unwrap_or(Err(GuestError::Timeout(timeout)))
}

/// Whether the guest agent answers (`guest-ping`).
pub async fn ping(sock: &Path, timeout: Duration) -> Result<(), GuestError> {
    with_conn(sock, timeout, |c| Box::pin(async move { command(c, "guest-ping", None).await.map(|_| ()) })).await
}

/// Asks the guest to shut down cleanly (`guest-shutdown`, which answers nothing on success).
pub async fn shutdown(sock: &Path, timeout: Duration) -> Result<(), GuestError> {
    // No answer comes: the connection is closed after it rather than left to the next call.
    on_conn(sock, timeout, false, |c| {
        Box::pin(async move { send(c, "guest-shutdown", Some(json!({"mode": "powerdown"}))).await })
    })
    .await
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Decodes an output stream, cut at [`MAX_OUTPUT`].
fn unb64(v: Option<&Value>) -> String {
    let Some(s) = v.and_then(Value::as_str) else { return String::new() };
    let mut bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default();
    bytes.truncate(MAX_OUTPUT);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The exit code a finished `guest-exec-status` reports (128 + the signal, as a shell says,
/// for a command killed by one).
fn exit_code(st: &Value) -> i32 {
    if let Some(code) = st.get("exitcode").and_then(Value::as_i64) {
        return code as i32;
    }
    st.get("signal").and_then(Value::as_i64).map(|s| 128 + s as i32).unwrap_or(-1)
}

/// Runs a command in the guest (`guest-exec`, then `guest-exec-status` until it ends or
/// `timeout_ms` runs out). The program is found on the guest's `PATH`.
pub async fn exec(
    sock: &Path,
    argv: &[String],
    stdin: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<ExecResult, GuestError> {
    let Some((path, args)) = argv.split_first() else {
        return Err(GuestError::Failed("no command given".into()));
    };
    let limit = Duration::from_millis(timeout_ms.unwrap_or(60_000));
    let deadline = Instant::now() + limit;
    let mut a = json!({"path": path, "arg": args, "capture-output": true});
    if let Some(s) = stdin {
        a["input-data"] = json!(b64(s));
    }
    let step = Duration::from_secs(10);
    let started = with_conn(sock, step, |c| Box::pin(async move { command(c, "guest-exec", Some(a)).await })).await?;
    let pid = started
        .get("pid")
        .and_then(Value::as_i64)
        .ok_or_else(|| GuestError::Failed("guest-exec gave no process id".into()))?;
    let mut pause = Duration::from_millis(20);
    loop {
        let st = with_conn(sock, step, |c| {
            Box::pin(async move { command(c, "guest-exec-status", Some(json!({"pid": pid}))).await })
        })
        .await?;
        if st.get("exited").and_then(Value::as_bool) == Some(true) {
            return Ok(ExecResult {
                exit_code: exit_code(&st),
                stdout: unb64(st.get("out-data")),
                stderr: unb64(st.get("err-data")),
            });
        }
        if Instant::now() >= deadline {
            return Err(GuestError::Failed(format!(
                "the command was still running after {} ms (guest pid {pid}); it goes on in the guest",
                limit.as_millis()
            )));
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// What the guest says about itself (for `vm show`): its OS's name and its IPv4 addresses
/// (loopback left out).
pub async fn facts(sock: &Path, timeout: Duration) -> Result<(Option<String>, Vec<String>), GuestError> {
    let (os, nics) = with_conn(sock, timeout, |c| {
        Box::pin(async move {
            let os = command(c, "guest-get-osinfo", None).await?;
            let nics = command(c, "guest-network-get-interfaces", None).await?;
            Ok((os, nics))
        })
    })
    .await?;
    Ok(read_facts(&os, &nics))
}

fn read_facts(os: &Value, nics: &Value) -> (Option<String>, Vec<String>) {
    let name = os.get("pretty-name").or_else(|| os.get("name")).and_then(Value::as_str).map(|s| {
        // Bounded: it is the guest's word.
        s.chars().filter(|c| !c.is_control()).take(80).collect::<String>()
    });
    let mut addrs = Vec::new();
    for nic in nics.as_array().into_iter().flatten() {
        for a in nic.get("ip-addresses").and_then(Value::as_array).into_iter().flatten() {
            let ip = a.get("ip-address").and_then(Value::as_str).and_then(|s| s.parse::<std::net::Ipv4Addr>().ok());
            let prefix = a.get("prefix").and_then(Value::as_u64).filter(|p| *p <= 32);
            if let (Some(ip), Some(p)) = (ip, prefix) {
                if !ip.is_loopback() && addrs.len() < 16 {
                    addrs.push(format!("{ip}/{p}"));
                }
            }
        }
    }
    (name, addrs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A stand-in for qemu-guest-agent on a Unix socket (a fake, for the protocol logic): it
    /// answers a sync with 0xFF and the id, after first sending a stale answer as a guest
    /// would after an abandoned call, and runs `guest-exec` of `echo` only.
    async fn fake_agent(dir: &Path) -> PathBuf {
        let sock = dir.join("qga.sock");
        let l = UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"{\"return\": {\"stale\": true}}\n").await.unwrap();
                    let mut line = Vec::new();
                    let mut outputs: HashMap<i64, String> = HashMap::new();
                    while r.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
                        let text = String::from_utf8_lossy(&line).trim_start_matches('\u{FFFD}').to_string();
                        line.clear();
                        let v: Value = serde_json::from_str(text.trim()).unwrap();
                        let out = match v["execute"].as_str().unwrap() {
                            "guest-sync-delimited" => {
                                w.write_all(&[0xFF]).await.unwrap();
                                json!({"return": v["arguments"]["id"]})
                            }
                            "guest-ping" => json!({"return": {}}),
                            "guest-exec" => {
                                let args: Vec<String> = serde_json::from_value(v["arguments"]["arg"].clone()).unwrap();
                                if v["arguments"]["path"] == "echo" {
                                    outputs.insert(7, args.join(" ") + "\n");
                                    json!({"return": {"pid": 7}})
                                } else {
                                    json!({"error": {"class": "GenericError", "desc": "Failed to execute child process (No such file or directory)"}})
                                }
                            }
                            "guest-exec-status" => {
                                let out = outputs.remove(&7).unwrap_or_default();
                                json!({"return": {"exited": true, "exitcode": 0, "out-data": b64(&out)}})
                            }
                            other => {
                                json!({"error": {"class": "CommandNotFound", "desc": format!("{other} not found")}})
                            }
                        };
                        w.write_all(format!("{out}\n").as_bytes()).await.unwrap();
                    }
                });
            }
        });
        sock
    }

    #[tokio::test]
    async fn sync_drops_stale_answers_and_exec_returns_output() {
        let dir = tempfile::tempdir().unwrap();
        let sock = fake_agent(dir.path()).await;
        ping(&sock, Duration::from_secs(5)).await.unwrap();
        let r = exec(&sock, &["echo".into(), "hello".into(), "there".into()], None, Some(5000)).await.unwrap();
        assert_eq!((r.exit_code, r.stdout.as_str()), (0, "hello there\n"));
        let err = exec(&sock, &["nope".into()], None, Some(5000)).await.unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");
        // The failed call closed the connection; the next one syncs anew.
        ping(&sock, Duration::from_secs(5)).await.unwrap();
        // A shutdown gets no answer (here: an unknown-command error, left unread); the call
        // after it must not take that for its own.
        shutdown(&sock, Duration::from_secs(5)).await.unwrap();
        let r = exec(&sock, &["echo".into(), "after".into()], None, Some(5000)).await.unwrap();
        assert_eq!(r.stdout, "after\n");
        forget(&sock);
    }

    #[tokio::test]
    async fn a_silent_socket_times_out_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("silent.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let err = ping(&sock, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, GuestError::Timeout(_)), "{err}");
        let err = ping(&dir.path().join("missing.sock"), Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, GuestError::Unreachable(_)), "{err}");
    }

    #[test]
    fn facts_keep_ipv4_addresses_and_a_bounded_os_name() {
        let os = json!({"pretty-name": "Debian GNU/Linux 12 (bookworm)\u{1b}[2J", "name": "Debian"});
        let nics = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
            {"name": "eth0", "ip-addresses": [
                {"ip-address": "100.64.0.2", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64},
                {"ip-address": "not an address", "prefix": 24}
            ]}
        ]);
        let (name, addrs) = read_facts(&os, &nics);
        assert_eq!(name.as_deref(), Some("Debian GNU/Linux 12 (bookworm)[2J"));
        assert_eq!(addrs, vec!["100.64.0.2/24".to_string()]);
    }

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_code(&json!({"exited": true, "exitcode": 3})), 3);
        assert_eq!(exit_code(&json!({"exited": true, "signal": 9})), 137);
    }
}
