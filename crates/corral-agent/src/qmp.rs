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

/// QEMU's run state (`query-status`).
pub async fn status(path: &Path) -> Result<RunState, QmpError> {
    Ok(RunState::of(&run(path, "query-status", None).await?))
}

/// QEMU's run state (QAPI `RunState`), as `query-status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    /// Started with `-incoming`, waiting for (or receiving) a migration or a saved state.
    Inmigrate,
    /// Its state went out by migration (or to a file).
    Postmigrate,
    Prelaunch,
    FinishMigrate,
    Shutdown,
    Suspended,
    InternalError,
    IoError,
    GuestPanicked,
    Watchdog,
    Debug,
    RestoreVm,
    SaveVm,
    Colo,
    /// A state this agent does not know (a newer QEMU), or none in the reply.
    #[serde(other)]
    Unknown,
}

impl RunState {
    /// The state in a `query-status` reply.
    pub fn of(reply: &Value) -> Self {
        serde_json::from_value(reply["status"].clone()).unwrap_or(RunState::Unknown)
    }
}

/// A migration's status (QAPI `MigrationStatus`), as `query-migrate` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    None,
    Setup,
    Active,
    /// Stopped before the switch-over, as `pause-before-switchover` asks.
    PreSwitchover,
    Device,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecoverSetup,
    PostcopyRecover,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
    WaitUnplug,
    Colo,
    /// A status this agent does not know (a newer QEMU), or none in the reply.
    #[serde(other)]
    Unknown,
}

impl MigrationStatus {
    /// The status in a `query-migrate` reply (`none` when no migration ever ran).
    pub fn of(reply: &Value) -> Self {
        match reply.get("status") {
            None => MigrationStatus::None,
            Some(s) => serde_json::from_value(s.clone()).unwrap_or(MigrationStatus::Unknown),
        }
    }

    /// The guest runs at the destination and pulls its memory from here.
    pub fn is_postcopy(self) -> bool {
        matches!(
            self,
            MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecoverSetup
                | MigrationStatus::PostcopyRecover
        )
    }
}

/// The word QEMU uses, for messages.
macro_rules! qapi_display {
    ($($t:ty),+) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(Value::String(s)) => f.pad(&s),
                    _ => f.pad("unknown"),
                }
            }
        }
    )+};
}
qapi_display!(RunState, MigrationStatus);
