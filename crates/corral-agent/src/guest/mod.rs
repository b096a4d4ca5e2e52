//! Talking to the agent inside a guest, whichever it is: Corral's own (`corral`, the busybox
//! image) or the standard QEMU guest agent (`qga`, cloud images). An image without one has no
//! channel: the guest counts as up when QEMU runs, and commands cannot be run in it.

use std::path::PathBuf;
use std::time::Duration;

use corral_api::image::GuestAgentKind;
use corral_api::ExecResult;

pub mod corral;
mod line;
pub mod qga;

use line::{read_line, Line, MAX_LINE};

/// Guest agent failures.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("guest agent not reachable: {0}")]
    Unreachable(String),
    #[error("guest agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("guest agent: {0}")]
    Failed(String),
    #[error("the image has no guest agent, so commands cannot be run in this VM: use the console or SSH")]
    NoAgent,
}

/// The guest channel of one VM: its agent's kind and the host end of its port.
#[derive(Debug, Clone)]
pub struct Guest {
    pub kind: GuestAgentKind,
    pub sock: PathBuf,
}

impl Guest {
    /// Whether the guest's agent answers; an image without an agent has nothing to ask.
    pub async fn ping(&self, timeout: Duration) -> Result<(), GuestError> {
        match self.kind {
            GuestAgentKind::Corral => corral::ping(&self.sock, timeout).await.map(|_| ()),
            GuestAgentKind::Qemu => qga::ping(&self.sock, timeout).await,
            GuestAgentKind::None => Err(GuestError::NoAgent),
        }
    }

    /// Runs a command in the guest.
    pub async fn exec(
        &self,
        argv: &[String],
        stdin: Option<&str>,
        timeout_ms: Option<u64>,
    ) -> Result<ExecResult, GuestError> {
        match self.kind {
            GuestAgentKind::Corral => corral::exec(&self.sock, argv, stdin, timeout_ms).await,
            GuestAgentKind::Qemu => qga::exec(&self.sock, argv, stdin, timeout_ms).await,
            GuestAgentKind::None => Err(GuestError::NoAgent),
        }
    }

    /// The guest's OS name and IPv4 addresses (QEMU's guest agent only).
    pub async fn facts(&self) -> Option<(Option<String>, Vec<String>)> {
        match self.kind {
            GuestAgentKind::Qemu => qga::facts(&self.sock, Duration::from_secs(2)).await.ok(),
            _ => None,
        }
    }

    /// Memory the guest says it uses, MiB (Corral's agent only).
    pub async fn mem_used_mib(&self) -> Option<u64> {
        match self.kind {
            GuestAgentKind::Corral => corral::mem_used_mib(&self.sock).await,
            _ => None,
        }
    }

    /// Asks the guest to power off through its agent; false if it could not be asked (the
    /// caller presses the ACPI power button instead).
    pub async fn shutdown(&self) -> bool {
        match self.kind {
            GuestAgentKind::Qemu => qga::shutdown(&self.sock, Duration::from_secs(3)).await.is_ok(),
            _ => false,
        }
    }

    /// Forgets the connection (its QEMU is gone or about to start anew).
    pub fn forget(&self) {
        corral::forget(&self.sock);
        qga::forget(&self.sock);
    }
}
