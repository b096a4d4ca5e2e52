//! Real guest operating systems: the project's Debian 12 cloud image, booted from its own disk
//! under BIOS and UEFI firmware, configured by cloud-init from Corral's NoCloud seed, and
//! reached through the standard QEMU guest agent. These guests take about a minute to boot
//! under TCG, so there are few of them: one 2-member cluster shared by the first trials, and
//! one UEFI VM.

use std::time::Duration;

use libtest_mimic::Failed;
use serde_json::Value;

use super::clusters::profile;
use super::{check, corral, fails, json, lab, text};

/// The Debian profile: its cloud-config sets a console password for the default user (so
/// the serial console trial can log in) and writes a file.
const DEBIAN_PROFILE: &str = r#"template = "debian12"
vcpus = 1
memory = "1G"
user_data = '''
#cloud-config
chpasswd:
  expire: false
  users:
    - {name: debian, password: corral-console, type: text}
write_files:
  - path: /etc/corral-user-data
    content: "from the profile\n"
'''
"#;

/// The `vm create` of the UEFI VM, started by the first trial.
static UEFI: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);

/// The throwaway SSH key pair the trials give the guests (made once per lab).
fn ssh_key() -> Result<String, Failed> {
    let key = lab().dir.join("id_ed25519");
    if !key.exists() {
        let o = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "corral-test", "-f"])
            .arg(&key)
            .output()?;
        check(o.status.success(), format!("ssh-keygen: {}", String::from_utf8_lossy(&o.stderr)))?;
    }
    Ok(format!("{}.pub", key.display()))
}

/// Runs a command in a guest; returns (exit code, stdout, stderr).
fn exec(vm: &str, cmd: &[&str]) -> Result<(i32, String, String), Failed> {
    let mut a = vec!["vm", "exec", vm, "--"];
    a.extend(cmd);
    let o = corral(&a);
    let code = o.status.code().ok_or("exec ended by a signal")?;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    Ok((code, out, err))
}

fn ok(vm: &str, cmd: &[&str]) -> Result<String, Failed> {
    let (code, out, err) = exec(vm, cmd)?;
    check(code == 0, format!("{vm}: {} exited {code}: {out}{err}", cmd.join(" ")))?;
    Ok(out)
}

/// The cluster's members, as `cluster show` lists them.
fn members(name: &str) -> Result<Vec<Value>, Failed> {
    Ok(json(&["cluster", "show", name])?["members"].as_array().cloned().unwrap_or_default())
}

/// A 2-member Debian cluster from a profile, with an SSH key given at creation: cloud-init
/// finishes, each member has the name and static address Corral assigned, the key is
/// installed, commands run through qemu-guest-agent with their exit codes and output, and the
/// members reach each other by name across hosts. The cluster stays for the next trial.
pub fn debian_cluster_is_configured_by_cloud_init() -> Result<(), Failed> {
    profile("debian-small", DEBIAN_PROFILE)?;
    let key = ssh_key()?;
    // The UEFI VM of the next trials boots meanwhile: these guests boot slowly under TCG.
    let l = lab();
    let uefi = std::process::Command::new(super::exe())
        .args([
            "vm",
            "create",
            "deb-uefi",
            "--template",
            "debian12",
            "--memory",
            "1G",
            "--firmware",
            "uefi",
            "-o",
            "json",
        ])
        .env("CORRAL_URL", l.url())
        .env("CORRAL_LAB_DIR", &l.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    *UEFI.lock().unwrap_or_else(|p| p.into_inner()) = Some(uefi);
    let op = json(&["cluster", "create", "deb", "--profile", "debian-small", "--size", "2", "--ssh-key", &key])?;
    check(op["state"] == "succeeded", format!("the cluster deployed: {op}"))?;
    let ms = members("deb")?;
    check(ms.len() == 2, format!("2 members: {ms:?}"))?;
    let pubkey = std::fs::read_to_string(&key)?;
    for m in &ms {
        let name = m["name"].as_str().ok_or("member name")?;
        check(m["state"] == "running", format!("{name} runs: {m}"))?;
        check(m["error"].is_null(), format!("{name}'s guest agent answered at boot: {m}"))?;
        // cloud-init's last stage may still run when the guest agent first answers.
        let status = ok(name, &["cloud-init", "status", "--wait"])?;
        check(status.contains("done"), format!("{name}: cloud-init finished: {status}"))?;
        check(ok(name, &["hostname"])?.trim() == name, format!("{name}: its hostname is its name"))?;
        let ip = m["ip"].as_str().ok_or("member address")?;
        let addrs = ok(name, &["ip", "-4", "-o", "addr", "show", "eth0"])?;
        check(addrs.contains(&format!("inet {ip}")), format!("{name}: eth0 has {ip}: {addrs}"))?;
        let keys = ok(name, &["cat", "/home/debian/.ssh/authorized_keys"])?;
        check(keys.contains(pubkey.trim()), format!("{name}: the SSH key is installed for debian: {keys}"))?;
        let id = ok(name, &["cat", "/var/lib/cloud/data/instance-id"])?;
        check(id.trim() == m["uuid"].as_str().unwrap_or_default(), format!("{name}: instance-id is its UUID: {id}"))?;
    }
    // Its disk grows online; the guest sees the new size at once (lsblk).
    let size = |vm: &str| -> Result<u64, Failed> {
        let out = ok(vm, &["lsblk", "-b", "-d", "-n", "-o", "SIZE", "/dev/vda"])?;
        out.trim().parse::<u64>().map_err(|e| format!("lsblk said {out:?}: {e}").into())
    };
    let before = size("deb-2")?;
    json(&["vm", "disk", "resize", "deb-2", "--size", "+1G"])?;
    let after = super::wait_for("deb-2 to see its grown disk", Duration::from_secs(20), || {
        size("deb-2").ok().filter(|s| *s == before + (1 << 30))
    })?;
    check(after == before + (1 << 30), "lsblk shows the grown disk")?;
    let written = ok("deb-2", &["cat", "/etc/corral-user-data"])?;
    check(written == "from the profile\n", format!("the profile's cloud-config ran: {written:?}"))?;
    // What the guest says of itself shows in `vm show`.
    let ip1 = ms[0]["ip"].as_str().unwrap_or_default().to_string();
    let shown = super::wait_for("deb-1's guest facts in vm show", Duration::from_secs(60), || {
        json(&["vm", "show", "deb-1"])
            .ok()
            .filter(|v| v["usage"]["guest_os"].as_str().is_some_and(|o| o.contains("Debian")))
    })?;
    check(
        shown["usage"]["guest_addresses"].as_array().is_some_and(|a| a.iter().any(|x| x == ip1.as_str())),
        format!("the guest reports its address {ip1}: {shown}"),
    )?;
    let (code, out, err) = exec("deb-1", &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    check(
        (code, out.as_str(), err.as_str()) == (3, "out\n", "err\n"),
        format!("exit code and streams: {code} {out:?} {err:?}"),
    )?;
    let (code, _, err) = exec("deb-1", &["no-such-program"])?;
    check(code != 0 && !err.is_empty(), format!("a missing program is an error, not a hang: {code} {err}"))?;
    // Corral keeps the members' /etc/hosts (through the guest agent): they find each other by
    // name, over the cluster's network across hosts.
    let ip2 = ms[1]["ip"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string();
    let found = super::wait_for("deb-1 to resolve deb-2", Duration::from_secs(60), || {
        ok("deb-1", &["getent", "hosts", "deb-2"]).ok().filter(|s| s.contains(&ip2))
    })?;
    check(found.contains("deb-2"), format!("deb-2 resolves: {found}"))?;
    ok("deb-1", &["ping", "-c", "2", "-W", "5", "deb-2"]).map(|_| ())
}

/// The same image boots under UEFI (OVMF) when asked, and under BIOS by default; asking a
/// directly booted image for firmware, or an unknown firmware, is refused before anything is
/// made.
pub fn the_image_boots_under_uefi_and_bios() -> Result<(), Failed> {
    let child = UEFI.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or("the UEFI VM was not started")?;
    let o = child.wait_with_output()?;
    check(o.status.success(), format!("vm create deb-uefi: {}", text(&o)))?;
    let v: Value = serde_json::from_slice(&o.stdout)?;
    check(v["state"] == "running" && v["error"].is_null(), format!("the UEFI VM runs, its agent answered: {v}"))?;
    let (code, _, _) = exec("deb-uefi", &["test", "-d", "/sys/firmware/efi"])?;
    check(code == 0, "the UEFI VM booted through UEFI firmware (/sys/firmware/efi exists)")?;
    let (code, _, _) = exec("deb-1", &["test", "-d", "/sys/firmware/efi"])?;
    check(code == 1, format!("the default (BIOS) member has no EFI firmware: exit {code}"))?;
    let msg = fails(&["vm", "create", "bad-fw", "--template", "base", "--firmware", "uefi"])?;
    check(msg.contains("boots directly"), format!("firmware for a direct-boot image is refused: {msg}"))?;
    let msg = fails(&["vm", "create", "bad-fw", "--template", "debian12", "--firmware", "efi"])?;
    check(msg.contains("bios or uefi"), format!("an unknown firmware is refused: {msg}"))?;
    let msg = fails(&["vm", "create", "bad-fw", "--template", "debian12", "--ssh-key", "/nonexistent.pub"])?;
    check(msg.contains("cannot read it"), format!("a missing key file is refused: {msg}"))?;
    let list = json(&["vm", "list"])?;
    check(
        !list.as_array().into_iter().flatten().any(|v| v["name"] == "bad-fw"),
        "nothing was made by the refused requests",
    )?;
    let o = corral(&["vm", "stop", "deb-uefi"]);
    check(o.status.success(), format!("a Debian VM stops cleanly: {}", text(&o)))
}

/// Runs `tmux ARGS`.
fn tmux(args: &[&str]) -> Result<String, Failed> {
    let o = std::process::Command::new("tmux").args(args).output()?;
    check(o.status.success(), format!("tmux {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr)))?;
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

/// Waits until the tmux pane shows `what`.
fn pane_shows(session: &str, what: &str, timeout: Duration) -> Result<String, Failed> {
    super::wait_for(&format!("the console to show {what:?}"), timeout, || {
        tmux(&["capture-pane", "-p", "-t", session, "-S", "-200"]).ok().filter(|s| s.contains(what))
    })
}

/// The serial console driven as a person would, in a terminal (tmux): attach, log in with
/// the password the profile's cloud-config set, run a command and see its output, leave with
/// Ctrl-]. Then the VNC display answers a VNC client's handshake through `vm vnc`.
pub fn console_and_vnc_reach_the_guest() -> Result<(), Failed> {
    let l = lab();
    let session = format!("corral-con-{}", l.index);
    let _ = std::process::Command::new("tmux").args(["kill-session", "-t", &session]).output();
    // The pane stays after the console ends, to show how it ended.
    let cmd = format!(
        "CORRAL_URL={} CORRAL_LAB_DIR={} {} vm console deb-1; echo console-exit-$?; sleep 60",
        l.url(),
        l.dir.display(),
        super::exe()
    );
    tmux(&["new-session", "-d", "-s", &session, "-x", "160", "-y", "48", &cmd])?;
    let run = || -> Result<(), Failed> {
        pane_shows(&session, "Ctrl-] leaves", Duration::from_secs(20))?;
        tmux(&["send-keys", "-t", &session, "Enter"])?;
        pane_shows(&session, "login:", Duration::from_secs(30))?;
        tmux(&["send-keys", "-t", &session, "debian", "Enter"])?;
        pane_shows(&session, "Password:", Duration::from_secs(30))?;
        tmux(&["send-keys", "-t", &session, "corral-console", "Enter"])?;
        pane_shows(&session, "debian@deb-1", Duration::from_secs(60))?;
        tmux(&["send-keys", "-t", &session, "echo console-$((6*7))", "Enter"])?;
        pane_shows(&session, "console-42", Duration::from_secs(30))?;
        tmux(&["send-keys", "-t", &session, "exit", "Enter"])?;
        tmux(&["send-keys", "-t", &session, "C-]"])?;
        pane_shows(&session, "left deb-1's console", Duration::from_secs(10))?;
        pane_shows(&session, "console-exit-0", Duration::from_secs(10)).map(|_| ())
    };
    let r = run();
    let screen = tmux(&["capture-pane", "-p", "-t", &session, "-S", "-60"]).unwrap_or_default();
    let _ = std::process::Command::new("tmux").args(["kill-session", "-t", &session]).output();
    r.map_err(|e| format!("{}\nthe terminal showed:\n{screen}", e.message().unwrap_or_default()))?;

    // VNC: a local port carried to QEMU's VNC server; a client first reads the RFB version.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut vnc = std::process::Command::new(super::exe())
        .args(["vm", "vnc", "deb-1", "--once", "--listen", &listen])
        .env("CORRAL_URL", l.url())
        .env("CORRAL_LAB_DIR", &l.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let greeting = super::wait_for("vm vnc to listen", Duration::from_secs(20), || {
        let mut s = std::net::TcpStream::connect(&listen).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut b = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut b).ok()?;
        Some(String::from_utf8_lossy(&b).to_string())
    });
    let _ = vnc.kill();
    let _ = vnc.wait();
    let greeting = greeting?;
    check(greeting.starts_with("RFB 003."), format!("the VNC server's greeting: {greeting:?}"))?;
    let msg = fails(&["vm", "vnc", "no-such-vm"])?;
    check(msg.contains("no-such-vm"), format!("a missing VM is named: {msg}"))
}

/// A Debian member moves live to another host: same identity, no reboot (its uptime goes on),
/// cloud-init does not run again (same instance, its last boot unchanged), and it still
/// reaches its peer by name.
pub fn debian_vm_migrates_live_without_a_reboot() -> Result<(), Failed> {
    let before = json(&["vm", "show", "deb-1"])?;
    let from = before["host"].as_str().unwrap_or_default().to_string();
    let peer_host = json(&["vm", "show", "deb-2"])?["host"].as_str().unwrap_or_default().to_string();
    let to = ["lab-1", "lab-2", "lab-3"]
        .into_iter()
        .find(|h| *h != from && *h != peer_host)
        .or_else(|| ["lab-1", "lab-2", "lab-3"].into_iter().find(|h| *h != from))
        .ok_or("another host")?;
    let up = |vm: &str| -> Result<f64, Failed> {
        let out = ok(vm, &["cat", "/proc/uptime"])?;
        out.split_whitespace().next().and_then(|u| u.parse().ok()).ok_or_else(|| format!("uptime {out:?}").into())
    };
    let up0 = up("deb-1")?;
    let booted = ok("deb-1", &["stat", "-c", "%Y", "/var/lib/cloud/instance/boot-finished"])?;
    let m = json(&["vm", "migrate", "deb-1", "--to", to])?;
    check(m["state"] == "completed", format!("the migration completed: {m}"))?;
    let after = json(&["vm", "show", "deb-1"])?;
    check(after["host"] == to && after["state"] == "running", format!("deb-1 runs on {to}: {after}"))?;
    for k in ["uuid", "mac", "ip"] {
        check(after[k] == before[k], format!("deb-1 keeps its {k}"))?;
    }
    let up1 = up("deb-1")?;
    check(up1 > up0, format!("no reboot: uptime {up0} s -> {up1} s"))?;
    let again = ok("deb-1", &["stat", "-c", "%Y", "/var/lib/cloud/instance/boot-finished"])?;
    check(again == booted, "cloud-init did not run again")?;
    check(ok("deb-1", &["hostname"])?.trim() == "deb-1", "same hostname")?;
    ok("deb-1", &["ping", "-c", "2", "-W", "5", "deb-2"]).map(|_| ())
}
