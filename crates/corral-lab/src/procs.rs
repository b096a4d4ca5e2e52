//! The lab's processes: starting the etcd members, controllers and agents (recording their
//! PIDs first), and ending processes by recorded PID, checked against their command line.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::health::{wait_hosts, wait_http};
use crate::state::{LabState, UpOptions};

/// True if `pid` runs a command line that mentions `marker` (the lab directory).
pub(crate) fn pid_is_ours(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(marker)).unwrap_or(false)
}

pub(crate) fn kill_pid(pid: u32, marker: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !pid_is_ours(pid, marker) {
        return;
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let t = Instant::now();
    while pid_is_ours(pid, marker) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid_is_ours(pid, marker) {
        let _ = kill(p, Signal::SIGKILL);
        while pid_is_ours(pid, marker) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts a daemon in its own process group, its output appended to `log`.
pub(crate) fn spawn_daemon(mut cmd: Command, log: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("cannot start process")?;
    Ok(child.id())
}

/// QEMU processes of a lab host: the PIDs its agent recorded, checked by the VM's UUID.
pub(crate) fn qemu_pids(host_data: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(host_data.join("vms")) else {
        return out;
    };
    for e in rd.flatten() {
        let pid = std::fs::read_to_string(e.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
        let uuid = std::fs::read(e.path().join("vm.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.pointer("/def/uuid").and_then(|u| u.as_str()).map(str::to_string));
        if let (Some(p), Some(u)) = (pid, uuid) {
            out.push((p, u));
        }
    }
    out
}

/// Puts every template of `from` into `to`, as hard links (copies across filesystems).
fn link_templates(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let (templates, _) = corral_api::template_dir::scan(from);
    for t in templates {
        let meta = from.join(format!("{}.json", t.info.name));
        for f in std::iter::once(meta.as_path()).chain(t.files()) {
            let name = f.file_name().context("template file without a name")?;
            let dst = tmp.join(name);
            if dst.exists() {
                continue;
            }
            if std::fs::hard_link(f, &dst).is_err() {
                std::fs::copy(f, &dst).with_context(|| format!("cannot copy {}", f.display()))?;
            }
        }
    }
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// Starts the controller and the agents that are not running, recording their PIDs first.
pub(crate) async fn start_daemons(s: &mut LabState, o: &UpOptions) -> Result<()> {
    let dir = s.dir.clone();
    let marker = dir.display().to_string();
    if !s.library().exists() {
        link_templates(&o.templates, &s.library())?;
    }
    // The etcd members first (several controllers share their state there).
    let members: Vec<corral_store::local_etcd::Member> = s.etcd.iter().map(|e| e.member.clone()).collect();
    for i in 0..s.etcd.len() {
        if s.etcd[i].pid.is_some_and(|p| pid_is_ours(p, &marker)) {
            continue;
        }
        let c = corral_store::local_etcd::member_command(&dir.join("etcd"), &s.etcd[i].member, &members);
        s.etcd[i].pid = Some(spawn_daemon(c, &dir.join(format!("etcd-{}.log", s.etcd[i].member.name)))?);
        s.save()?;
    }
    let eps = s.etcd_clients();
    if !eps.is_empty() {
        let e = eps.clone();
        tokio::task::spawn_blocking(move || corral_store::local_etcd::wait_ready(&e, Duration::from_secs(60)))
            .await?
            .context("the lab's etcd cluster did not come up; see etcd-*.log in the lab directory")?;
    }
    // Controllers: the first, then the standby ones.
    let all_urls = s.urls();
    let (library, token_file) = (s.library(), s.token_file());
    let controller = |url: &str, data: &str| {
        let mut c = Command::new(&o.exe);
        let listen = url.trim_start_matches("http://");
        c.args(["controller", "--listen", listen, "--data", &format!("{marker}/{data}")]);
        c.arg("--templates").arg(&library).arg("--token-file").arg(&token_file);
        // Consolidation's standby and wake-up stop and start a host's agent, as a power-off
        // and a power-on would.
        let power = |what: &str| format!("'{}' lab power {what} {{host}} --dir '{marker}'", o.exe.display());
        c.arg("--standby-command").arg(power("off")).arg("--wake-command").arg(power("on"));
        if !eps.is_empty() {
            c.arg("--etcd").arg(eps.join(",")).arg("--advertise").arg(url);
        }
        c
    };
    if !s.controller_pid.is_some_and(|p| pid_is_ours(p, &marker)) {
        let c = controller(&s.url.clone(), "controller");
        s.controller_pid = Some(spawn_daemon(c, &dir.join("controller.log"))?);
        s.save()?;
    }
    // The first controller makes the token file; the others must find it there, not race it.
    wait_http(&format!("{}/v1/health", s.url), Duration::from_secs(20))
        .await
        .context("the controller did not come up; see controller.log in the lab directory")?;
    for i in 0..s.standby_controllers.len() {
        if s.standby_controllers[i].pid.is_some_and(|p| pid_is_ours(p, &marker)) {
            continue;
        }
        let c = controller(&s.standby_controllers[i].url.clone(), &format!("controller-{}", i + 2));
        s.standby_controllers[i].pid = Some(spawn_daemon(c, &dir.join(format!("controller-{}.log", i + 2)))?);
        s.save()?;
    }
    for u in &all_urls {
        wait_http(&format!("{u}/v1/health"), Duration::from_secs(20))
            .await
            .context("a controller did not come up; see controller*.log in the lab directory")?;
    }
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(4 << 20);
    let n = s.hosts.len() as u64;
    let per_host_mib = (mem_total / 1024) * 8 / 10 / n;
    std::fs::create_dir_all(&o.cache)?;
    std::fs::create_dir_all(dir.join("shared"))?;
    for i in 0..s.hosts.len() {
        let h = s.hosts[i].clone();
        if h.standby || h.fault.is_some() || h.agent_pid.is_some_and(|p| pid_is_ours(p, &marker)) {
            continue;
        }
        std::fs::create_dir_all(&h.data)?;
        let host_templates = h.data.join("templates");
        if !host_templates.exists() {
            // A host comes installed with the templates the lab started with; others are sent
            // by the controller when needed.
            link_templates(&s.library(), &host_templates)?;
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.netns]).arg(&o.exe).args([
            "agent",
            "--name",
            &h.name,
            "--listen",
            &format!("{}:7701", h.ip),
            "--controller",
            &all_urls.join(","),
            "--data",
            &h.data.display().to_string(),
            "--templates",
            &host_templates.display().to_string(),
            "--token-file",
            &s.token_file().display().to_string(),
            "--provider-interfaces",
            "eth1",
            "--accel",
            &o.accel,
            "--accel-cache",
            &o.cache.join("accel.json").display().to_string(),
            "--memory",
            &format!("{per_host_mib}"),
        ]);
        // Every host mounts the same shared pool: one directory of the lab.
        c.arg("--shared-dir").arg(dir.join("shared"));
        s.hosts[i].agent_pid = Some(spawn_daemon(c, &dir.join(format!("{}.log", h.name)))?);
        s.save()?;
        if !o.cache.join("accel.json").exists() {
            // The first agent probes the accelerator; the others reuse its verdict.
            wait_hosts(s, 1, Duration::from_secs(120)).await?;
        }
    }
    wait_hosts(s, s.powered(), Duration::from_secs(120)).await
}
