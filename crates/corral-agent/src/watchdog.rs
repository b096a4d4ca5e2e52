//! The fencing watchdog: a small process per host, started by the agent and outliving it, that
//! stops the host's HA VMs when the host is isolated even if the agent has died. Without it,
//! an agent killed at the moment its host is cut off would leave QEMU processes running that
//! the controller restarts elsewhere.
//!
//! It judges exactly as the agent does ([`crate::fence`]), from the lease file the agent
//! writes and its own probes of the peers, and it kills with SIGKILL, all at once, every
//! QEMU of a restartable VM it finds under the data directory (checked by the VM's UUID on
//! the process's command line). It leaves a note in the VM's directory, which the agent
//! reports as the VM's error. It ends by itself once the agent is gone and no QEMU is left,
//! or when the data directory is removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_http::runner::{Runner, Stop};

use crate::fence::{self, Fencer, LeaseRecord, Verdict};
use crate::qemu;
use crate::vm::VmRecord;

/// The watchdog's PID file, in the agent's data directory.
const PID_FILE: &str = "watchdog.pid";
/// The agent's PID file, in the same place.
pub const AGENT_PID_FILE: &str = "agent.pid";
/// A note left in a VM's directory by whoever fenced it: the reason.
const FENCED_NOTE: &str = "fenced";
/// The CLI's (hidden) subcommand that runs the watchdog.
pub const SUBCOMMAND: &str = "agent-watchdog";

/// Whether `pid` is a live process whose command line holds every one of `marks`.
fn process_with(pid: u32, marks: &[&str]) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    marks.iter().all(|m| args.iter().any(|a| a == m))
}

fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The watchdog of `data_dir`, if one runs.
pub fn running(data_dir: &Path) -> Option<u32> {
    let dir = data_dir.display().to_string();
    read_pid(&data_dir.join(PID_FILE)).filter(|p| process_with(*p, &[SUBCOMMAND, &dir]))
}

/// Whether the agent of `data_dir` runs.
fn agent_running(data_dir: &Path) -> bool {
    let dir = data_dir.display().to_string();
    read_pid(&data_dir.join(AGENT_PID_FILE)).is_some_and(|p| process_with(p, &["agent", &dir]))
}

/// Starts the watchdog of `data_dir` (the same executable, in its own process group so that
/// nothing aimed at the agent reaches it), unless one runs already.
pub fn ensure(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    if running(data_dir).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("watchdog.log"))?;
    let mut child = std::process::Command::new(exe)
        .arg(SUBCOMMAND)
        .arg("--data")
        .arg(data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    std::fs::write(data_dir.join(PID_FILE), child.id().to_string())?;
    // Reaped when it ends, so it leaves no zombie behind.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Whether fencing stops this VM: the controller may restart it elsewhere.
pub fn restartable(rec: &VmRecord, lease: Option<&LeaseRecord>) -> bool {
    rec.def.ha != corral_api::HaPolicy::Off || lease.is_some_and(|l| l.restartable.contains(&rec.def.uuid))
}

/// The reason a VM was fenced while the agent was not looking, if it was (the note is
/// removed).
pub fn take_fenced_note(vm_dir: &Path) -> Option<String> {
    let p = vm_dir.join(FENCED_NOTE);
    let why = std::fs::read_to_string(&p).ok()?;
    let _ = std::fs::remove_file(&p);
    Some(why.trim().to_string())
}

/// The live QEMU processes under `data_dir`: (VM directory, record, PID).
fn live_qemus(data_dir: &Path) -> Vec<(PathBuf, VmRecord, u32)> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(data_dir.join("vms")) else { return out };
    for e in rd.flatten() {
        let dir = e.path();
        let Some(rec) =
            std::fs::read(dir.join("vm.json")).ok().and_then(|b| serde_json::from_slice::<VmRecord>(&b).ok())
        else {
            continue;
        };
        let from_file = read_pid(&dir.join("qemu.pid"));
        let pid = rec.pid.into_iter().chain(from_file).find(|p| qemu::is_ours(*p, &rec.def.uuid));
        if let Some(pid) = pid {
            out.push((dir, rec, pid));
        }
    }
    out
}

/// SIGKILLs every restartable VM's QEMU under `data_dir` at once, then waits for them to go.
/// Leaves the reason as a note in each VM's directory. Returns how many were killed.
pub async fn kill_restartable(data_dir: &Path, lease: Option<&LeaseRecord>, why: &str) -> usize {
    let victims: Vec<(PathBuf, VmRecord, u32)> =
        live_qemus(data_dir).into_iter().filter(|(_, r, _)| restartable(r, lease)).collect();
    for (dir, _, _) in &victims {
        let _ = std::fs::write(dir.join(FENCED_NOTE), why);
    }
    qemu::kill_all(&victims.iter().map(|(_, r, pid)| (*pid, r.def.uuid)).collect::<Vec<_>>()).await;
    for (_, r, pid) in &victims {
        tracing::warn!("VM {} (QEMU {pid}): {why}", r.def.name);
    }
    victims.len()
}

/// Probes the peers every half second while the lease is not being renewed, recording when
/// a majority was reached. Shared by the agent and the watchdog (whose own loop re-reads the
/// lease file the agent writes).
pub async fn probe_loop(fencer: Arc<Fencer>, http: reqwest::Client, stop: Stop) {
    loop {
        if fencer.needs_probe(fence::boottime_ms()) {
            fencer.probe_round(&http).await;
        }
        if !stop.sleep(Duration::from_millis(500)).await {
            return;
        }
    }
}

/// Runs the watchdog of `data_dir` until the agent is gone and no QEMU is left (or the
/// directory is removed).
pub async fn run(data_dir: PathBuf) -> anyhow::Result<()> {
    std::fs::write(data_dir.join(PID_FILE), std::process::id().to_string())?;
    tracing::info!("fencing watchdog of {} started", data_dir.display());
    let fencer = Arc::new(Fencer::load(&data_dir, vec![]));
    let http = reqwest::Client::builder().no_proxy().build()?;
    // The watchdog runs until its agent and VMs are gone; its prober as long as it does.
    let mut loops = Runner::new();
    let f = fencer.clone();
    loops.spawn("isolation probes", move |stop| probe_loop(f, http, stop));
    let mut idle_since: Option<Instant> = None;
    loop {
        if !data_dir.exists() {
            return Ok(());
        }
        fencer.reload();
        if let Verdict::Isolated(why) = fencer.verdict(fence::boottime_ms()) {
            kill_restartable(&data_dir, fencer.record().as_ref(), &why).await;
        }
        if agent_running(&data_dir) || !live_qemus(&data_dir).is_empty() {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(10) {
            tracing::info!("fencing watchdog of {}: no agent and no VM left; ending", data_dir.display());
            let _ = std::fs::remove_file(data_dir.join(PID_FILE));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
