//! A thin QMP (QEMU Machine Protocol) client. The agent opens a short connection per
//! operation, so a restarted agent re-attaches to a running QEMU simply by connecting again.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP connection closed by QEMU")]
    Closed,
    #[error("QMP timed out after {0:?}")]
    Timeout(Duration),
    #[error("QMP {command} failed: {desc}")]
    Command { command: String, desc: String },
    #[error("QMP sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The operations Corral needs from a VM monitor. Implemented over QMP by [`QmpClient`].
pub trait Monitor {
    /// Runs one command and returns its `return` value.
    fn execute(
        &mut self,
        command: &str,
        args: Option<Value>,
    ) -> impl std::future::Future<Output = Result<Value, QmpError>> + Send;
}

/// A QMP connection over a Unix socket, capabilities already negotiated.
#[derive(Debug)]
pub struct QmpClient {
    stream: BufReader<UnixStream>,
    timeout: Duration,
}

impl QmpClient {
    /// Connects, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let timeout = Duration::from_secs(30);
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect { path: path.display().to_string(), source })?;
        let mut c = Self { stream: BufReader::new(stream), timeout };
        let greeting = c.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Command { command: "greeting".into(), desc: greeting.to_string() });
        }
        c.execute("qmp_capabilities", None).await?;
        Ok(c)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = tokio::time::timeout(self.timeout, self.stream.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout(self.timeout))??;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }
}

impl QmpClient {
    /// Hands an open file to QEMU under `name` (QMP `getfd`, the descriptor passed along with
    /// the command as SCM_RIGHTS ancillary data), for a later `fd:NAME` URI on this same
    /// connection. QEMU keeps its own copy; the caller may close `fd` afterwards.
    pub async fn send_fd(&mut self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), QmpError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut line = json!({ "execute": "getfd", "arguments": { "fdname": name } }).to_string();
        line.push('\n');
        let bytes = line.as_bytes();
        let sock = self.stream.get_ref();
        let sent = loop {
            sock.writable().await?;
            let r = sock.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(bytes)];
                let fds = [fd.as_raw_fd()];
                sendmsg::<()>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
                    .map_err(std::io::Error::from)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // The descriptor went with the first byte; the rest of the line follows plainly.
        self.stream.get_mut().write_all(&bytes[sent..]).await?;
        self.reply("getfd").await.map(|_| ())
    }

    /// Reads up to the answer of the command just sent, skipping events.
    async fn reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let m = self.read_message().await?;
            if m.get("event").is_some() {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error").to_string();
                return Err(QmpError::Command { command: command.into(), desc });
            }
        }
    }
}

impl Monitor for QmpClient {
    async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.stream.get_mut().write_all(line.as_bytes()).await?;
        self.reply(command).await
    }
}

/// Connects and runs a single command.
pub async fn run(path: &Path, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
    let mut c = QmpClient::connect(path).await?;
    c.execute(command, args).await
}

/// QEMU's run state (`query-status`), e.g. "running", "paused", "inmigrate", "postmigrate".
pub async fn status(path: &Path) -> Result<String, QmpError> {
    let r = run(path, "query-status", None).await?;
    Ok(r.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string())
}
