//! Reaching into a VM from outside: running a command in the guest and reading its serial
//! console log.

use std::path::PathBuf;

use corral_api::image::StreamKind;
use corral_api::types::Ipv4Cidr;
use corral_api::{ApiError, ConsoleChunk, ExecRequest, ExecResult, VmState};

use super::{internal, Manager};

impl Manager {
    /// Runs a command in a running guest.
    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError> {
        let e = self.entry(name)?;
        let state = e.snapshot().state;
        // A VM being migrated out runs here until the switch-over.
        if !matches!(state, VmState::Running | VmState::Migrating) {
            return Err(ApiError::conflict(format!("cannot exec in VM {name:?}: it is {state}, not running")));
        }
        if req.argv.is_empty() {
            return Err(ApiError::bad_request("exec needs a command: corral vm exec NAME -- COMMAND [ARGS...]"));
        }
        e.guest()
            .exec(&req.argv, req.stdin.as_deref(), req.timeout_ms)
            .await
            .map_err(|err| ApiError::unavailable(err.to_string()))
    }

    /// The socket of a live stream into a running VM, and its console log (for replay).
    pub fn stream_socket(&self, name: &str, kind: StreamKind) -> Result<(PathBuf, PathBuf), ApiError> {
        let e = self.entry(name)?;
        let state = e.snapshot().state;
        if !state.has_process() || state == VmState::Starting && !e.paths.console_sock().exists() {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is {state}: its {kind} is there only while it runs (start it first)"
            )));
        }
        let sock = match kind {
            StreamKind::Console => e.paths.console_sock(),
            StreamKind::Vnc => e.paths.vnc(),
        };
        if !sock.exists() {
            return Err(ApiError::not_found(format!(
                "VM {name:?} has no {kind}: only VMs that boot from firmware have a graphical display"
            )));
        }
        Ok((sock, e.paths.console_log()))
    }

    /// The network and address of running VM `name`, for a tunnel to one of its ports.
    pub fn tunnel_target(&self, name: &str) -> Result<(corral_api::agent::NetAttach, Ipv4Cidr), ApiError> {
        let r = self.entry(name)?.snapshot();
        if r.state != VmState::Running {
            return Err(ApiError::conflict(format!(
                "VM {name:?} is {}: a tunnel reaches only a running guest (start it first)",
                r.state
            )));
        }
        match (r.def.network, r.def.ip) {
            (Some(n), Some(ip)) => Ok((n, ip)),
            _ => {
                Err(ApiError::conflict(format!("VM {name:?} has no address on a network: nothing can reach its ports")))
            }
        }
    }

    /// Reads the serial console log from `offset` (at most 64 KiB).
    pub fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError> {
        use std::io::{Read, Seek, SeekFrom};
        let e = self.entry(name)?;
        let mut data = Vec::new();
        if let Ok(mut f) = std::fs::File::open(e.paths.console_log()) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let offset = offset.min(len);
            f.seek(SeekFrom::Start(offset)).map_err(internal)?;
            f.take(64 * 1024).read_to_end(&mut data).map_err(internal)?;
            let next = offset + data.len() as u64;
            return Ok(ConsoleChunk { offset, next, data: String::from_utf8_lossy(&data).into_owned() });
        }
        Ok(ConsoleChunk { offset: 0, next: 0, data: String::new() })
    }
}
