//! End-to-end tests of the walking skeleton on a real lab: three hosts as network namespaces,
//! each running the real agent, a real controller, and real QEMU guests built from the
//! project's template. One lab is shared by all trials (each uses its own VMs) and is always
//! taken down at the end, also when a trial fails.
//!
//! Run with `make test` (it builds the guest image first).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

#[path = "lab/clusters.rs"]
mod clusters;
#[path = "lab/control.rs"]
mod control;
#[path = "lab/drs.rs"]
mod drs;
#[path = "lab/guests.rs"]
mod guests;
#[path = "lab/ha.rs"]
mod ha;
#[path = "lab/migration.rs"]
mod migration;
#[path = "lab/networks.rs"]
mod networks;
use serde_json::Value;

struct Lab {
    dir: PathBuf,
    index: u8,
}

impl Lab {
    fn url(&self) -> String {
        format!("http://198.18.{}.1:7700", self.index)
    }
    fn state(&self) -> Value {
        let b = std::fs::read(self.dir.join("lab.json")).expect("lab state file");
        serde_json::from_slice(&b).expect("lab state JSON")
    }
}

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

fn lab() -> &'static Lab {
    static LAB: std::sync::OnceLock<Lab> = std::sync::OnceLock::new();
    LAB.get_or_init(|| {
        let index = std::env::var("CORRAL_TEST_LAB_INDEX").ok().and_then(|v| v.parse().ok()).unwrap_or(201);
        let dir = std::env::temp_dir().join(format!("corral-test-lab-{index}"));
        Lab { dir, index }
    })
}

/// Runs `corral ARGS` against the test lab.
fn corral(args: &[&str]) -> Output {
    let l = lab();
    Command::new(exe())
        .args(args)
        .env("CORRAL_URL", l.url())
        .env("CORRAL_LAB_DIR", &l.dir)
        .output()
        .expect("run corral")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs a command that must succeed and returns its stdout parsed as JSON.
fn json(args: &[&str]) -> Result<Value, Failed> {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let o = corral(&a);
    if !o.status.success() {
        return Err(format!("corral {} failed: {}", args.join(" "), text(&o)).into());
    }
    serde_json::from_slice(&o.stdout)
        .map_err(|e| format!("corral {}: bad JSON: {e}: {}", args.join(" "), text(&o)).into())
}

/// Runs a command that must fail; returns its message.
fn fails(args: &[&str]) -> Result<String, Failed> {
    let o = corral(args);
    if o.status.success() {
        return Err(format!("corral {} should have failed but printed: {}", args.join(" "), text(&o)).into());
    }
    Ok(text(&o))
}

fn check(cond: bool, msg: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg.into().into())
    }
}

/// Waits until `f` returns Some, or fails after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, Failed> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn vm(name: &str) -> Result<Value, Failed> {
    json(&["vm", "show", name])
}

/// The guest's counter (ticks every 100 ms in guest RAM), read through the guest agent.
fn counter(name: &str) -> Result<u64, Failed> {
    let o = corral(&["vm", "exec", name, "--", "cat", "/run/corral-counter"]);
    check(o.status.success(), format!("reading counter of {name}: {}", text(&o)))?;
    String::from_utf8_lossy(&o.stdout).trim().parse().map_err(|e| format!("counter of {name}: {e}").into())
}

/// The guest's counter, or, when it cannot be read, an error that also carries what the VM's
/// record says and the end of its serial console, to tell a hung guest from a lost channel.
fn counter_or_diagnosis(name: &str) -> Result<u64, Failed> {
    counter(name).map_err(|e| {
        let record =
            vm(name).map(|v| v.to_string()).unwrap_or_else(|e| format!("(none: {})", e.message().unwrap_or("")));
        let console = text(&corral(&["vm", "console", name]));
        let tail: String = console.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
        format!("{}\nrecord: {record}\nend of its console:\n{tail}", e.message().unwrap_or("")).into()
    })
}

fn create(name: &str, extra: &[&str]) -> Result<Value, Failed> {
    let mut a = vec!["vm", "create", name, "--template", "base", "--vcpus", "1", "--memory", "128M"];
    a.extend(extra);
    json(&a)
}

fn delete(name: &str) -> Result<(), Failed> {
    let o = corral(&["vm", "delete", name]);
    check(o.status.success(), format!("delete {name}: {}", text(&o)))
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/status")).map(|s| !s.contains("State:\tZ")).unwrap_or(false)
}

/// PID of a VM's QEMU, from the files its agent keeps.
fn qemu_pid(v: &Value) -> Option<u64> {
    let disk = PathBuf::from(v["disk"].as_str()?);
    std::fs::read_to_string(disk.parent()?.join("qemu.pid")).ok()?.trim().parse().ok()
}

/// PID of a lab host's agent, as the lab recorded it.
fn agent_pid(host: &str) -> Result<u64, Failed> {
    lab().state()["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == host))
        .and_then(|h| h["agent_pid"].as_u64())
        .ok_or_else(|| format!("the PID of {host}'s agent").into())
}

fn kill9(pid: u64) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

fn lab_up() -> Result<(), Failed> {
    let l = lab();
    let idx = l.index.to_string();
    let dir = l.dir.display().to_string();
    let o = corral(&["lab", "up", "--hosts", "3", "--index", &idx, "--dir", &dir]);
    check(o.status.success(), format!("lab up: {}", text(&o)))?;
    check(
        text(&o).contains(&format!("export CORRAL_URL={}", l.url())),
        format!("lab up prints the export line: {}", text(&o)),
    )
}

fn hosts_ready() -> Result<usize, Failed> {
    let hs = json(&["host", "list"])?;
    Ok(hs.as_array().map(|a| a.iter().filter(|h| h["state"] == "ready").count()).unwrap_or(0))
}

// ---- trials ------------------------------------------------------------------------------

fn hosts_and_templates() -> Result<(), Failed> {
    let hs = json(&["host", "list"])?;
    let hs = hs.as_array().ok_or("host list is an array")?;
    check(hs.len() == 3, format!("3 hosts, got {}", hs.len()))?;
    for h in hs {
        check(h["state"] == "ready", format!("host ready: {h}"))?;
        check(h["accel"] == "kvm" || h["accel"] == "tcg", "accelerator shown")?;
        check(h["capacity"]["vcpus"].as_u64().unwrap_or(0) > 0, "vcpus reported")?;
        check(h["capacity"]["memory_mib"].as_u64().unwrap_or(0) > 0, "memory reported")?;
    }
    let table = text(&corral(&["host", "list"]));
    check(table.contains("ACCEL") && table.contains("lab-1"), format!("host table: {table}"))?;
    let ts = json(&["template", "list"])?;
    check(ts.as_array().is_some_and(|a| a.iter().any(|t| t["name"] == "base")), format!("template base listed: {ts}"))
}

fn boot_to_ready_and_exec() -> Result<(), Failed> {
    let v = create("t-boot", &[])?;
    check(v["state"] == "running", format!("running after create: {v}"))?;
    check(v["boot_ms"].as_u64().is_some_and(|b| b > 0), "boot time measured")?;
    for k in ["name", "uuid", "state", "host", "mac", "template"] {
        check(!v[k].is_null(), format!("vm show has {k}"))?;
    }
    check(v.get("ip").is_some(), "vm show has ip (null until assigned)")?;
    // The guest reports the identity it was given.
    let o = corral(&["vm", "exec", "t-boot", "--", "hostname"]);
    check(String::from_utf8_lossy(&o.stdout).trim() == "t-boot", format!("guest hostname: {}", text(&o)))?;
    let o = corral(&["vm", "exec", "t-boot", "--", "cat", "/proc/uptime"]);
    check(o.status.success(), format!("exec cat /proc/uptime: {}", text(&o)))?;
    let up: f64 =
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(-1.0);
    check(up > 0.0, format!("guest uptime: {}", text(&o)))?;
    let o = corral(&["vm", "exec", "t-boot", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    check(o.status.code() == Some(3), format!("exit code passed through: {:?}", o.status))?;
    check(
        String::from_utf8_lossy(&o.stdout) == "out\n" && String::from_utf8_lossy(&o.stderr) == "err\n",
        "stdout and stderr kept apart",
    )?;
    let mac = v["mac"].as_str().unwrap_or_default().to_string();
    let o = corral(&["vm", "exec", "t-boot", "--", "cat", "/sys/class/net/eth0/address"]);
    check(
        String::from_utf8_lossy(&o.stdout).trim() == mac,
        format!("guest NIC has the assigned MAC {mac}: {}", text(&o)),
    )?;
    let con = text(&corral(&["vm", "console", "t-boot"]));
    check(con.contains("corral-guest: ready name=t-boot"), format!("console shows the guest's ready line: {con}"))?;
    delete("t-boot")
}

fn overlay_is_copy_on_write() -> Result<(), Failed> {
    let v = create("t-disk", &["--no-start"])?;
    check(v["state"] == "inactive", format!("--no-start leaves it inactive: {v}"))?;
    let disk = v["disk"].as_str().ok_or("disk path")?.to_string();
    let info = Command::new("qemu-img").args(["info", "-U", "--output", "json", &disk]).output()?;
    let info: Value = serde_json::from_slice(&info.stdout)?;
    check(info["format"] == "qcow2", format!("overlay is qcow2: {info}"))?;
    let backing = info["full-backing-filename"].as_str().or(info["backing-filename"].as_str()).unwrap_or_default();
    check(backing.ends_with("base.qcow2"), format!("backing file is the template: {backing}"))?;
    let tpl: Value = json(&["template", "list"])?;
    let tsize = tpl
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "base"))
        .map(|t| t["size_bytes"].clone())
        .unwrap_or_default();
    check(info["virtual-size"] == tsize, format!("overlay has the template's size {tsize}"))?;
    let bytes = std::fs::metadata(&disk)?.len();
    check(bytes < 1 << 20, format!("overlay is under 1 MiB right after creation: {bytes} bytes"))?;
    delete("t-disk")
}

fn pause_and_resume() -> Result<(), Failed> {
    create("t-pause", &[])?;
    let v = json(&["vm", "pause", "t-pause"])?;
    check(v["state"] == "paused", format!("paused: {v}"))?;
    let msg = fails(&["vm", "exec", "t-pause", "--", "true"])?;
    check(msg.contains("paused"), format!("exec in a paused VM is refused saying why: {msg}"))?;
    let v = json(&["vm", "resume", "t-pause"])?;
    check(v["state"] == "running", format!("running again: {v}"))?;
    counter("t-pause")?;
    delete("t-pause")
}

fn suspend_resume_keeps_guest_state() -> Result<(), Failed> {
    let v = create("t-susp", &[])?;
    let before = wait_for("the guest counter to pass 5", Duration::from_secs(30), || {
        counter("t-susp").ok().filter(|c| *c >= 5)
    })?;
    let pid = qemu_pid(&v).ok_or("QEMU pid")?;
    let s = json(&["vm", "suspend", "t-susp"])?;
    check(s["state"] == "suspended", format!("suspended: {s}"))?;
    check(!pid_alive(pid), "no QEMU process while suspended")?;
    let dir = PathBuf::from(v["disk"].as_str().unwrap_or_default()).parent().map(Path::to_path_buf).unwrap_or_default();
    check(dir.join("memory.state").exists(), "memory saved to a file")?;
    // The guest's data is root's only: memory, disk, console log in a 0700 directory.
    let mode =
        |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    for (p, want) in [
        (dir.clone(), 0o700),
        (dir.join("memory.state"), 0o600),
        (dir.join("disk.qcow2"), 0o600),
        (dir.join("console.log"), 0o600),
    ] {
        let m = mode(&p)?;
        check(m == want, format!("{} has mode {m:o}, not {want:o}", p.display()))?;
    }
    check(!fails(&["vm", "exec", "t-susp", "--", "true"])?.is_empty(), "exec refused while suspended")?;
    let r = json(&["vm", "resume", "t-susp"])?;
    check(r["state"] == "running", format!("running after resume: {r}"))?;
    let after = counter("t-susp")?;
    check(after >= before, format!("guest counter continued ({before} -> {after}), it did not restart"))?;
    check(!dir.join("memory.state").exists(), "saved state consumed")?;
    delete("t-susp")
}

fn stop_and_start() -> Result<(), Failed> {
    let v = create("t-stop", &[])?;
    let o = corral(&["vm", "exec", "t-stop", "--", "sh", "-c", "echo kept > /root/mark && sync"]);
    check(o.status.success(), format!("write a file: {}", text(&o)))?;
    wait_for("counter >= 10", Duration::from_secs(30), || counter("t-stop").ok().filter(|c| *c >= 10))?;
    let pid = qemu_pid(&v).ok_or("QEMU pid")?;
    let s = json(&["vm", "stop", "t-stop"])?;
    check(s["state"] == "inactive", format!("inactive after stop: {s}"))?;
    check(!pid_alive(pid), "QEMU process gone after stop")?;
    let con = text(&corral(&["vm", "console", "t-stop"]));
    check(con.contains("power button pressed"), format!("stop went through the guest's ACPI power-off: {con}"))?;
    let s = json(&["vm", "start", "t-stop"])?;
    check(s["state"] == "running", format!("running after start: {s}"))?;
    check(counter("t-stop")? < 10, "a fresh boot: the counter restarted")?;
    let o = corral(&["vm", "exec", "t-stop", "--", "cat", "/root/mark"]);
    check(
        String::from_utf8_lossy(&o.stdout).trim() == "kept",
        format!("disk contents survive stop/start: {}", text(&o)),
    )?;
    delete("t-stop")
}

/// The guest's disk size in bytes, as its kernel sees it.
fn guest_disk_bytes(name: &str) -> Result<u64, Failed> {
    let o = corral(&["vm", "exec", name, "--", "cat", "/sys/block/vda/size"]);
    check(o.status.success(), format!("read {name}'s disk size: {}", text(&o)))?;
    let sectors: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().map_err(|e| format!("disk size: {e}"))?;
    Ok(sectors * 512)
}

fn disk_grows_online_and_offline_never_shrinks() -> Result<(), Failed> {
    create("t-grow", &[])?;
    let before = guest_disk_bytes("t-grow")?;
    let v = json(&["vm", "disk", "resize", "t-grow", "--size", "+64M"])?;
    check(v["state"] == "running", format!("still running after growing: {v}"))?;
    let want = before + (64 << 20);
    check(v["disk_mib"].as_u64() == Some(want >> 20), format!("the new size is recorded: {v}"))?;
    // The guest sees it without a reboot.
    let seen = wait_for("the guest to see the larger disk", Duration::from_secs(10), || {
        guest_disk_bytes("t-grow").ok().filter(|b| *b == want)
    })?;
    check(seen == want, "guest disk size")?;
    let msg = fails(&["vm", "disk", "resize", "t-grow", "--size", "64M"])?;
    check(msg.contains("cannot shrink"), format!("shrinking is refused: {msg}"))?;
    json(&["vm", "stop", "t-grow"])?;
    let v = json(&["vm", "disk", "resize", "t-grow", "--size", &format!("{}M", (want >> 20) + 32)])?;
    check(v["state"] == "inactive", format!("a stopped VM's disk grows too: {v}"))?;
    json(&["vm", "start", "t-grow"])?;
    check(guest_disk_bytes("t-grow")? == want + (32 << 20), "the stopped VM boots with the grown disk")?;
    delete("t-grow")
}

fn workload_and_usage_are_reported() -> Result<(), Failed> {
    create("t-load", &["--workload", "cpu"])?;
    // The guest spins a CPU: its QEMU process shows it, as measured by the agent.
    let v = wait_for("the busy guest's CPU to show in its usage", Duration::from_secs(60), || {
        vm("t-load").ok().filter(|v| v["usage"]["cpu_pct"].as_f64().unwrap_or(0.0) > 50.0)
    })?;
    check(v["workload"] == "cpu", "workload recorded")?;
    check(v["usage"]["rss_mib"].as_u64().unwrap_or(0) > 0, format!("QEMU memory reported: {v}"))?;
    check(v["usage"]["guest_mem_used_mib"].as_u64().is_some(), format!("guest-reported memory: {v}"))?;
    let hosts = json(&["host", "list"])?;
    let h =
        hosts.as_array().and_then(|a| a.iter().find(|h| h["name"] == v["host"])).cloned().ok_or("host of the VM")?;
    check(h["vms"] == 1 && h["allocated"]["memory_mib"] == 128, format!("host shows the VM's allocation: {h}"))?;
    check(h["usage"]["mem_used_mib"].as_u64().unwrap_or(0) > 0, "host usage reported")?;
    delete("t-load")
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A guest that floods its serial console and answers with a line far longer than the agent
/// reads: the console log is rotated and stays bounded, the over-long answer is refused with
/// the reason (not waited for, not held in memory), and the agent's memory does not grow with
/// what the guest sends.
fn guest_floods_stay_bounded() -> Result<(), Failed> {
    let v = create("t-flood", &["--host", "lab-1"])?;
    let dir = PathBuf::from(v["disk"].as_str().unwrap_or_default()).parent().map(Path::to_path_buf).ok_or("vm dir")?;
    let apid = agent_pid("lab-1")?;
    let before = rss_kib(apid).ok_or("agent memory")?;
    // 3 MiB of console output, with no newline.
    let o =
        corral(&["vm", "exec", "t-flood", "--", "sh", "-c", "head -c 3145728 /dev/zero | tr '\\000' x > /dev/ttyS0"]);
    check(o.status.success(), format!("the guest floods its console: {}", text(&o)))?;
    let log = dir.join("console.log");
    let rotated = wait_for("the console log to be rotated", Duration::from_secs(30), || {
        dir.join("console.log.1").exists().then_some(())
    });
    let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let old = std::fs::metadata(dir.join("console.log.1")).map(|m| m.len()).unwrap_or(0);
    rotated?;
    check(len <= 2 << 20 && old <= 3 << 20, format!("console logs bounded: {len} + {old} bytes"))?;
    // An answer of 12 MiB on one line (the limit is 8 MiB): refused quickly, with the reason.
    let t = Instant::now();
    let o = corral(&["vm", "exec", "t-flood", "--", "sh", "-c", "head -c 12582912 /dev/zero | tr '\\000' y"]);
    check(
        !o.status.success() && text(&o).contains("longer than 8 MiB"),
        format!("an over-long answer is refused with the reason: {}", text(&o)),
    )?;
    check(t.elapsed() < Duration::from_secs(120), format!("refused without waiting it out: {:?}", t.elapsed()))?;
    let after = rss_kib(apid).ok_or("agent memory")?;
    check(after < before + 48 * 1024, format!("the agent's memory stays bounded: {before} KiB -> {after} KiB"))?;
    // The channel still works.
    let o = corral(&["vm", "exec", "t-flood", "--", "echo", "still here"]);
    check(String::from_utf8_lossy(&o.stdout).trim() == "still here", format!("the guest still answers: {}", text(&o)))?;
    delete("t-flood")
}

fn delete_leaves_no_files() -> Result<(), Failed> {
    let v = create("t-del", &[])?;
    let dir = PathBuf::from(v["disk"].as_str().unwrap_or_default()).parent().map(Path::to_path_buf).ok_or("vm dir")?;
    let pid = qemu_pid(&v).ok_or("QEMU pid")?;
    check(dir.exists(), "VM directory exists")?;
    delete("t-del")?;
    check(!dir.exists(), format!("{} removed", dir.display()))?;
    check(!pid_alive(pid), "QEMU gone")?;
    let msg = fails(&["vm", "show", "t-del"])?;
    check(msg.contains("no VM named"), format!("deleted VM not found: {msg}"))
}

fn agent_sigkill_then_restart_reattaches() -> Result<(), Failed> {
    let v = create("t-agent", &["--host", "lab-2"])?;
    let c1 = counter("t-agent")?;
    let qpid = qemu_pid(&v).ok_or("QEMU pid")?;
    let apid = agent_pid("lab-2")?;
    kill9(apid);
    wait_for("the agent to die", Duration::from_secs(10), || (!pid_alive(apid)).then_some(()))?;
    check(pid_alive(qpid), "the VM keeps running without its agent")?;
    lab_up()?;
    wait_for("3 hosts ready", Duration::from_secs(30), || hosts_ready().ok().filter(|n| *n == 3))?;
    let v2 = vm("t-agent")?;
    check(v2["state"] == "running" && v2["uuid"] == v["uuid"], format!("still running and known: {v2}"))?;
    check(qemu_pid(&v2) == Some(qpid), "the same QEMU process")?;
    // The controller may still count the old agent's last heartbeat: wait for the new one.
    let c2 = wait_for("the restarted agent to answer", Duration::from_secs(30), || counter("t-agent").ok())?;
    check(c2 >= c1, format!("guest state intact ({c1} -> {c2})"))?;
    let p = json(&["vm", "pause", "t-agent"])?;
    check(p["state"] == "paused", "the restarted agent manages the VM")?;
    delete("t-agent")
}

/// The stored part of `vm list` (usage figures are live measurements and change).
fn stored_vms() -> Result<Value, Failed> {
    let mut v = json(&["vm", "list"])?;
    for vm in v.as_array_mut().into_iter().flatten() {
        if let Some(o) = vm.as_object_mut() {
            o.remove("usage");
        }
    }
    Ok(v)
}

fn controller_restart_keeps_state() -> Result<(), Failed> {
    create("t-ctl", &["--no-start"])?;
    let before = stored_vms()?;
    let cpid = lab().state()["controller_pid"].as_u64().ok_or("controller pid")?;
    kill9(cpid);
    wait_for("the controller to die", Duration::from_secs(10), || (!pid_alive(cpid)).then_some(()))?;
    let msg = fails(&["vm", "list"])?;
    check(msg.contains("cannot reach the controller"), format!("unreachable controller: clear message: {msg}"))?;
    lab_up()?;
    let after = stored_vms()?;
    check(before == after, format!("state intact across a controller restart:\n{before}\n{after}"))?;
    wait_for("3 hosts ready", Duration::from_secs(30), || hosts_ready().ok().filter(|n| *n == 3))?;
    delete("t-ctl")
}

fn bad_input_is_refused_and_changes_nothing() -> Result<(), Failed> {
    create("t-bad", &["--no-start"])?;
    let before = json(&["vm", "list"])?;
    let cases: &[(&[&str], &str)] = &[
        (&["vm", "create", "x1", "--template", "nope"], "unknown template"),
        (&["vm", "create", "x2", "--memory", "900G"], "largest host"),
        (&["vm", "create", "x3", "--vcpus", "200"], "largest host"),
        (&["vm", "create", "x3", "--vcpus", "500"], "invalid vCPU count 500: use 1 to 256"),
        (&["vm", "create", "x4", "--vcpus", "0"], "invalid vCPU count 0"),
        (&["vm", "create", "x5", "--memory", "12 potatoes"], "invalid memory size"),
        (&["vm", "create", "t-bad"], "already exists"),
        (&["vm", "create", "Web_1"], "invalid VM name"),
        (&["vm", "create", "x6", "--host", "lab-99"], "unknown host"),
        (&["vm", "create", "x7", "--workload", "dance"], "invalid workload"),
        (&["vm", "pause", "t-bad"], "cannot pause a VM that is inactive"),
        (&["vm", "resume", "t-bad"], "cannot resume"),
        (&["vm", "show", "ghost"], "no VM named"),
        (&["--url", "http://127.0.0.1:9", "vm", "list"], "cannot reach the controller"),
    ];
    for (args, want) in cases {
        let msg = fails(args)?;
        check(msg.contains(want), format!("corral {}: expected {want:?} in: {msg}", args.join(" ")))?;
        check(!msg.contains("panicked"), "no panic")?;
    }
    check(json(&["vm", "list"])? == before, "bad input changed nothing")?;
    delete("t-bad")
}

fn lab_down_leaves_nothing() -> Result<(), Failed> {
    let l = lab();
    // A VM is running and the controller has crashed: down must still clean up everything.
    let v = create("t-down", &[])?;
    let qpid = qemu_pid(&v).ok_or("QEMU pid")?;
    let st = l.state();
    let mut pids: Vec<u64> = vec![qpid];
    pids.extend(st["controller_pid"].as_u64());
    pids.extend(st["hosts"].as_array().into_iter().flatten().filter_map(|h| h["agent_pid"].as_u64()));
    kill9(st["controller_pid"].as_u64().unwrap_or(0));
    let o = corral(&["lab", "down", "--dir", &l.dir.display().to_string()]);
    check(o.status.success(), format!("lab down: {}", text(&o)))?;
    for p in pids {
        check(!pid_alive(p), format!("process {p} ended"))?;
    }
    let ns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout).to_string();
    check(!ns.contains(&format!("corral{}-", l.index)), format!("no lab namespace left: {ns}"))?;
    let links = String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output()?.stdout).to_string();
    check(!links.contains(&format!("crl{}", l.index)), format!("no lab device left: {links}"))?;
    check(!l.dir.exists(), "lab directory removed")?;
    Ok(())
}

/// Removes whatever a trial left behind (also when it failed), so each trial starts on empty
/// hosts.
fn clean_slate() {
    ha::restore();
    drs::restore();
    if let Ok(hs) = json(&["host", "list"]) {
        for h in hs.as_array().into_iter().flatten().filter(|h| h["cordoned"] == true) {
            let _ = corral(&["host", "uncordon", h["name"].as_str().unwrap_or_default()]);
        }
    }
    if let Ok(cs) = json(&["cluster", "list"]) {
        for c in cs.as_array().into_iter().flatten() {
            if let Some(n) = c["name"].as_str() {
                let _ = corral(&["cluster", "delete", n]);
            }
        }
    }
    if let Ok(vs) = json(&["vm", "list"]) {
        for v in vs.as_array().into_iter().flatten() {
            if let Some(n) = v["name"].as_str() {
                let _ = corral(&["vm", "delete", n]);
            }
        }
    }
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let l = lab();
    // A lab left by an earlier, interrupted run goes first.
    let _ = corral(&["lab", "down", "--dir", &l.dir.display().to_string()]);
    // Balancing and consolidation are on by default; the trials of other features turn them
    // off so that no VM moves under them (the DRS trials turn them on).
    let setup = lab_up().and_then(|()| {
        let o = corral(&["drs", "set", "--mode", "off"]);
        check(o.status.success(), format!("drs off: {}", text(&o)))
    });
    let t = |name: &'static str, f: fn() -> Result<(), Failed>| {
        let setup = setup.clone();
        Trial::test(name, move || {
            setup.map_err(|e| Failed::from(format!("lab up failed: {}", e.message().unwrap_or_default())))?;
            let r = f();
            clean_slate();
            r
        })
    };
    // Trials that leave their VMs for the next one.
    let tn = |name: &'static str, f: fn() -> Result<(), Failed>| {
        let setup = setup.clone();
        Trial::test(name, move || {
            setup.map_err(|e| Failed::from(format!("lab up failed: {}", e.message().unwrap_or_default())))?;
            f()
        })
    };
    let trials = vec![
        t("hosts_and_templates", hosts_and_templates),
        t("boot_to_ready_and_exec", boot_to_ready_and_exec),
        t("overlay_is_copy_on_write", overlay_is_copy_on_write),
        t("pause_and_resume", pause_and_resume),
        t("suspend_resume_keeps_guest_state", suspend_resume_keeps_guest_state),
        t("stop_and_start", stop_and_start),
        t("workload_and_usage_are_reported", workload_and_usage_are_reported),
        t("disk_grows_online_and_offline_never_shrinks", disk_grows_online_and_offline_never_shrinks),
        t("delete_leaves_no_files", delete_leaves_no_files),
        t("guest_floods_stay_bounded", guest_floods_stay_bounded),
        t("agent_sigkill_then_restart_reattaches", agent_sigkill_then_restart_reattaches),
        t("controller_restart_keeps_state", controller_restart_keeps_state),
        t("bad_input_is_refused_and_changes_nothing", bad_input_is_refused_and_changes_nothing),
        t("cluster_spread_deploys_with_identity", clusters::spread_deploys_with_identity),
        t("cluster_pack_uses_fewest_hosts", clusters::pack_uses_fewest_hosts),
        t("cluster_anti_affinity_is_honoured", clusters::anti_affinity_is_honoured),
        t("cluster_scale_up_and_down", clusters::scale_up_and_down),
        t("cluster_suspend_and_resume", clusters::suspend_and_resume_a_cluster),
        t("cluster_templates_sent_once_per_host", clusters::templates_are_sent_once_per_host),
        t("cluster_controller_killed_mid_deployment_finishes", clusters::controller_killed_mid_deployment_finishes),
        t("cluster_agent_killed_mid_deployment_finishes", clusters::agent_killed_mid_deployment_finishes),
        t(
            "cluster_addresses_unique_under_concurrent_creation",
            clusters::addresses_stay_unique_under_concurrent_creation,
        ),
        t("cluster_bad_input_changes_nothing", clusters::cluster_bad_input_changes_nothing),
        t("api_needs_token_and_serves_openapi", clusters::api_needs_the_token_and_describes_itself),
        // The Debian trials share their cluster and UEFI VM: the last one removes them.
        tn("guest_debian_cluster_configured_by_cloud_init", guests::debian_cluster_is_configured_by_cloud_init),
        tn("guest_debian_console_and_vnc", guests::console_and_vnc_reach_the_guest),
        tn("guest_debian_ssh_and_port_forward", guests::ssh_and_port_forward_reach_the_guest),
        tn("guest_debian_migrates_live_without_a_reboot", guests::debian_vm_migrates_live_without_a_reboot),
        tn("guest_debian_cluster_suspends_and_resumes", guests::debian_cluster_suspends_and_resumes),
        t("guest_debian_boots_under_uefi_and_bios", guests::the_image_boots_under_uefi_and_bios),
        tn("guest_debian_restarts_fresh_elsewhere", guests::debian_vm_restarts_fresh_elsewhere_with_its_identity),
        t("guest_debian_imported_as_an_ova_boots", guests::debian_imported_as_an_ova_boots),
        // The network trials share their clusters: they run in this order, without cleanup
        // between them, and the last one removes everything.
        tn("network_members_reach_each_other_across_hosts", networks::members_reach_each_other_across_hosts),
        tn("network_clusters_isolated_even_on_one_host", networks::clusters_are_isolated_even_on_one_host),
        tn("network_spoofed_addresses_dropped", networks::spoofed_addresses_are_dropped),
        tn("network_guests_cannot_leave_their_network", networks::guests_cannot_leave_their_network),
        tn("network_moved_member_reached_at_same_address", networks::a_moved_member_is_reached_at_the_same_address),
        t("network_deleting_clusters_leaves_no_devices", networks::deleting_clusters_leaves_no_devices),
        t("network_bad_input", networks::network_bad_input),
        t("network_bridged_puts_vms_on_provider_network", networks::bridged_network_puts_vms_on_the_provider_network),
        t("migration_idle_vm_moves_live_and_stays_reachable", migration::idle_vm_moves_live_and_stays_reachable),
        t("migration_busy_vm_defeats_precopy_but_not_auto", migration::busy_vm_defeats_precopy_but_not_auto),
        t("migration_cancel_midway_keeps_vm_at_source", migration::cancel_midway_keeps_vm_at_source),
        t("migration_destination_agent_killed_midway", migration::destination_agent_killed_midway),
        t("migration_source_agent_killed_midway", migration::source_agent_killed_midway_keeps_vm_at_source),
        t("migration_controller_killed_midway_then_committed", migration::controller_killed_midway_then_committed),
        t("migration_bad_input", migration::migration_bad_input),
        t("migration_evacuate_moves_every_vm_off", migration::evacuate_moves_every_vm_off),
        t("drs_auto_spreads_cpu_load_by_migration", drs::auto_spreads_cpu_load_by_migration),
        t("drs_consolidation_standby_then_wake", drs::consolidation_puts_hosts_in_standby_and_load_wakes_them),
        t("drs_bad_input", drs::drs_bad_input),
        t("drs_create_wakes_a_standby_host_and_runs_there", drs::create_wakes_a_standby_host_and_runs_there),
        t("ha_admission_keeps_room_for_a_failure", ha::admission_keeps_room_for_a_failure),
        t("ha_crashed_qemu_restarts_on_its_host", ha::crashed_qemu_restarts_on_its_host),
        t("ha_shared_storage_vms_restart_with_their_disk", ha::shared_storage_vms_restart_with_their_disk),
        t("ha_killed_host_vms_restart_elsewhere", ha::killed_host_vms_restart_elsewhere),
        t("ha_partitioned_host_fences_itself_first", ha::partitioned_host_fences_itself_first),
        t("ha_flapping_host_is_quarantined", ha::flapping_host_is_quarantined),
        t("ha_controller_outage_keeps_every_vm_running", ha::controller_outage_keeps_every_vm_running),
        t("ha_agent_killed_and_partitioned_fenced_by_watchdog", ha::agent_killed_and_partitioned_fenced_by_watchdog),
        t("ha_one_stopped_agent_stalls_nothing_else", ha::one_stopped_agent_stalls_nothing_else),
        // On a lab of its own (two controllers on etcd), made and removed by the trial.
        t("control_plane_leader_killed_mid_deployment", control::leader_killed_mid_deployment_standby_finishes),
        t("lab_down_leaves_nothing", lab_down_leaves_nothing),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    // Whatever happened above, remove the lab.
    let _ = corral(&["lab", "down", "--dir", &l.dir.display().to_string()]);
    conclusion.exit();
}
