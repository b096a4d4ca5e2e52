//! Taking a lab down: its processes (by recorded PID), namespaces, devices and files, also
//! after a crash half-way through `up`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::netns::{self, netns_exists};
use crate::procs::{kill_pid, qemu_pids};
use crate::state::LabState;

/// Takes a lab down: processes (by recorded PID), namespaces, devices and files. Works on a
/// lab that crashed half-way; does nothing if there is no lab.
pub fn down(dir: &Path) -> Result<bool> {
    let Some(s) = LabState::load(dir)? else {
        return Ok(false);
    };
    let marker = s.dir.display().to_string();
    for h in &s.hosts {
        if let Some(p) = h.agent_pid {
            kill_pid(p, &marker);
        }
        for (pid, uuid) in qemu_pids(&h.data) {
            kill_pid(pid, &uuid);
        }
        // Anything else still inside the host's namespace was started there by the lab.
        if netns_exists(&h.netns) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &h.netns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<u32>().ok())
                {
                    kill_pid(pid, "");
                }
            }
        }
    }
    if let Some(p) = s.controller_pid {
        kill_pid(p, &marker);
    }
    for p in s.standby_controllers.iter().filter_map(|c| c.pid).chain(s.etcd.iter().filter_map(|e| e.pid)) {
        kill_pid(p, &marker);
    }
    let errors = netns::remove(&s);
    if !errors.is_empty() {
        bail!("lab down left something behind ({}); run `corral lab down` again", errors.join("; "));
    }
    std::fs::remove_dir_all(&s.dir).with_context(|| format!("cannot remove {}", s.dir.display()))?;
    Ok(true)
}
