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

/// The guest's uptime, seconds (it goes on across a migration or a suspend, not a reboot).
fn uptime(vm: &str) -> Result<f64, Failed> {
    let out = ok(vm, &["cat", "/proc/uptime"])?;
    out.split_whitespace().next().and_then(|u| u.parse().ok()).ok_or_else(|| format!("uptime {out:?}").into())
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
    let uefi = corral_cmd(&[
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
/// Ctrl-]. A second viewer attached meanwhile is shown the recent output first, then sees what
/// the first one runs, and may type too. Then the VNC display answers a VNC client's handshake
/// through `vm vnc`.
pub fn console_and_vnc_reach_the_guest() -> Result<(), Failed> {
    let l = lab();
    let (session, second) = (format!("corral-con-{}", l.index), format!("corral-con2-{}", l.index));
    // The pane stays after the console ends, to show how it ended.
    let cmd = format!(
        "CORRAL_URL={} CORRAL_LAB_DIR={} {} vm console deb-1; echo console-exit-$?; sleep 60",
        l.url(),
        l.dir.display(),
        super::exe()
    );
    for s in [&session, &second] {
        let _ = std::process::Command::new("tmux").args(["kill-session", "-t", s]).output();
    }
    tmux(&["new-session", "-d", "-s", &session, "-x", "160", "-y", "48", &cmd])?;
    let run = || -> Result<(), Failed> {
        pane_shows(&session, "Ctrl-] leaves", Duration::from_secs(20))?;
        tmux(&["send-keys", "-t", &session, "Enter"])?;
        pane_shows(&session, "login:", Duration::from_secs(30))?;
        tmux(&["send-keys", "-t", &session, "debian", "Enter"])?;
        pane_shows(&session, "Password:", Duration::from_secs(30))?;
        tmux(&["send-keys", "-t", &session, "corral-console", "Enter"])?;
        pane_shows(&session, "debian@deb-1", Duration::from_secs(60))?;
        // A second viewer: the recent output (the prompt) first, then the same console.
        tmux(&["new-session", "-d", "-s", &second, "-x", "160", "-y", "48", &cmd])?;
        pane_shows(&second, "Ctrl-] leaves", Duration::from_secs(20))?;
        pane_shows(&second, "debian@deb-1", Duration::from_secs(20))?;
        tmux(&["send-keys", "-t", &session, "echo console-$((6*7))", "Enter"])?;
        pane_shows(&session, "console-42", Duration::from_secs(30))?;
        pane_shows(&second, "console-42", Duration::from_secs(30))?;
        tmux(&["send-keys", "-t", &second, "echo second-$((2*3))", "Enter"])?;
        pane_shows(&session, "second-6", Duration::from_secs(30))?;
        tmux(&["send-keys", "-t", &second, "C-]"])?;
        pane_shows(&second, "console-exit-0", Duration::from_secs(10))?;
        tmux(&["send-keys", "-t", &session, "exit", "Enter"])?;
        tmux(&["send-keys", "-t", &session, "C-]"])?;
        pane_shows(&session, "left deb-1's console", Duration::from_secs(10))?;
        pane_shows(&session, "console-exit-0", Duration::from_secs(10)).map(|_| ())
    };
    let r = run();
    let screen = tmux(&["capture-pane", "-p", "-t", &session, "-S", "-60"]).unwrap_or_default();
    let screen2 = tmux(&["capture-pane", "-p", "-t", &second, "-S", "-60"]).unwrap_or_default();
    for s in [&session, &second] {
        let _ = std::process::Command::new("tmux").args(["kill-session", "-t", s]).output();
    }
    r.map_err(|e| {
        format!(
            "{}\nthe terminal showed:\n{screen}\nthe second viewer's showed:\n{screen2}",
            e.message().unwrap_or_default()
        )
    })?;

    // VNC: a local port carried to QEMU's VNC server; a client first reads the RFB version.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut vnc = corral_cmd(&["vm", "vnc", "deb-1", "--once", "--listen", &listen])
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
/// cloud-init does not run again (same instance, its last boot unchanged), it still reaches
/// its peer by name, and an SSH session open through `vm ssh` all along goes on.
pub fn debian_vm_migrates_live_without_a_reboot() -> Result<(), Failed> {
    // An SSH session that echoes what it is sent, open across the migration.
    // (ssh joins its arguments into one command line for the guest's shell.)
    let mut session = ssh_cmd("deb-1", &[], &["echo open; while read l; do echo \"got $l\"; done"])?
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut to_session = session.stdin.take().ok_or("the session's input")?;
    let from_session = lines_of(session.stdout.take().ok_or("the session's output")?);
    let errors = session.stderr.take().ok_or("the session's errors")?;
    let mut session = Started(session);
    let mut say = |line: &str| -> Result<(), Failed> {
        use std::io::Write;
        writeln!(to_session, "{line}")?;
        to_session.flush()?;
        let want = format!("got {line}");
        let got = from_session.recv_timeout(Duration::from_secs(60));
        check(got.as_deref() == Ok(want.as_str()), format!("the SSH session answered {got:?} to {line:?}"))
    };
    let opened = from_session.recv_timeout(Duration::from_secs(90));
    if opened.as_deref() != Ok("open") {
        let _ = session.0.kill();
        let mut e = String::new();
        let _ = std::io::Read::read_to_string(&mut { errors }, &mut e);
        return Err(format!("the SSH session did not open: {opened:?} {e}").into());
    }
    say("before")?;
    let before = json(&["vm", "show", "deb-1"])?;
    let from = before["host"].as_str().unwrap_or_default().to_string();
    let peer_host = json(&["vm", "show", "deb-2"])?["host"].as_str().unwrap_or_default().to_string();
    let to = ["lab-1", "lab-2", "lab-3"]
        .into_iter()
        .find(|h| *h != from && *h != peer_host)
        .or_else(|| ["lab-1", "lab-2", "lab-3"].into_iter().find(|h| *h != from))
        .ok_or("another host")?;
    let up0 = uptime("deb-1")?;
    let booted = ok("deb-1", &["stat", "-c", "%Y", "/var/lib/cloud/instance/boot-finished"])?;
    let m = json(&["vm", "migrate", "deb-1", "--to", to])?;
    check(m["state"] == "completed", format!("the migration completed: {m}"))?;
    let after = json(&["vm", "show", "deb-1"])?;
    check(after["host"] == to && after["state"] == "running", format!("deb-1 runs on {to}: {after}"))?;
    for k in ["uuid", "mac", "ip"] {
        check(after[k] == before[k], format!("deb-1 keeps its {k}"))?;
    }
    let up1 = uptime("deb-1")?;
    check(up1 > up0, format!("no reboot: uptime {up0} s -> {up1} s"))?;
    let again = ok("deb-1", &["stat", "-c", "%Y", "/var/lib/cloud/instance/boot-finished"])?;
    check(again == booted, "cloud-init did not run again")?;
    check(ok("deb-1", &["hostname"])?.trim() == "deb-1", "same hostname")?;
    ok("deb-1", &["ping", "-c", "2", "-W", "5", "deb-2"])?;
    say("after the migration")?;
    // Its end of input ends the session.
    drop(to_session);
    let status = session.0.wait()?;
    check(status.success(), format!("the SSH session ended cleanly when its input did: {status}"))
}

/// `corral` with the lab's environment, to start in the background.
fn corral_cmd(args: &[&str]) -> std::process::Command {
    let l = lab();
    let mut c = std::process::Command::new(super::exe());
    c.args(args).env("CORRAL_URL", l.url()).env("CORRAL_LAB_DIR", &l.dir);
    c
}

/// A process this trial started, ended by its PID when the trial ends (passed or not).
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child prints, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// The `vm ssh` options of these trials: the lab's key, its own known-hosts file, no prompts
/// (no user: the image's default user, `debian`).
fn ssh_opts() -> Result<Vec<String>, Failed> {
    let key = ssh_key()?;
    let key = key.trim_end_matches(".pub").to_string();
    let known = lab().dir.join("known_hosts").display().to_string();
    Ok([
        "-i",
        &key,
        "--ssh-option",
        &format!("UserKnownHostsFile={known}"),
        "--ssh-option",
        "BatchMode=yes",
        "--ssh-option",
        "IdentitiesOnly=yes",
        "--ssh-option",
        "ConnectTimeout=60",
    ]
    .map(String::from)
    .to_vec())
}

/// `corral vm ssh NAME [ssh_opts] [extra] -- cmd`.
fn ssh_cmd(name: &str, extra: &[&str], cmd: &[&str]) -> Result<std::process::Command, Failed> {
    let opts = ssh_opts()?;
    let mut a: Vec<&str> = vec!["vm", "ssh", name];
    a.extend(opts.iter().map(String::as_str));
    a.extend(extra);
    a.push("--");
    a.extend(cmd);
    Ok(corral_cmd(&a))
}

/// SSH and TCP from the operator's shell to a Debian member, through the controller and the
/// member's agent (the lab's hosts are network namespaces the shell cannot reach): `vm ssh`
/// runs a command; with the operator's key forwarded, the member logs in to the other member
/// by name; `vm port-forward` serves the guest's port 22 on a local port, to several clients
/// at once; a port nothing listens on, a bad port and an unknown VM are refused, saying why.
pub fn ssh_and_port_forward_reach_the_guest() -> Result<(), Failed> {
    let _ = std::fs::remove_file(lab().dir.join("known_hosts"));
    let o = ssh_cmd("deb-1", &[], &["hostname; whoami"])?.output()?;
    check(o.status.success(), format!("vm ssh deb-1 -- hostname: {}", text(&o)))?;
    check(
        String::from_utf8_lossy(&o.stdout) == "deb-1\ndebian\n",
        format!("it ran in deb-1 as the image's default user: {}", text(&o)),
    )?;
    // Debian's ssh hashes the names in known_hosts: ssh-keygen finds one.
    let uuid = json(&["vm", "show", "deb-1"])?["uuid"].as_str().unwrap_or_default().to_string();
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", &format!("corral-vm-{uuid}"), "-f"])
        .arg(lab().dir.join("known_hosts"))
        .output()?;
    check(found.status.success(), format!("the host key is kept under the VM's identity: {}", text(&found)))?;

    // The operator's key, forwarded by an agent of the trial's own, logs deb-1 in to deb-2.
    let sock = lab().dir.join("ssh-agent.sock");
    let _ = std::fs::remove_file(&sock);
    let _agent = Started(
        std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    super::wait_for("the ssh agent's socket", Duration::from_secs(10), || sock.exists().then_some(()))?;
    let key = ssh_key()?;
    let added =
        std::process::Command::new("ssh-add").arg(key.trim_end_matches(".pub")).env("SSH_AUTH_SOCK", &sock).output()?;
    check(added.status.success(), format!("ssh-add: {}", text(&added)))?;
    let hop = ["ssh", "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "deb-2", "hostname"];
    let o = ssh_cmd("deb-1", &["-A"], &hop)?.env("SSH_AUTH_SOCK", &sock).output()?;
    check(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "deb-2",
        format!("deb-1 logs in to deb-2 with the forwarded key: {}", text(&o)),
    )?;

    // A local port to the guest's port 22, two clients at once.
    let mut fwd = corral_cmd(&["vm", "port-forward", "deb-1", ":22"]).stdout(std::process::Stdio::piped()).spawn()?;
    let out = fwd.stdout.take().ok_or("port-forward's output")?;
    let _fwd = Started(fwd);
    let first = lines_of(out).recv_timeout(Duration::from_secs(30)).map_err(|_| "port-forward said nothing")?;
    let local: std::net::SocketAddr = first
        .strip_prefix("Forwarding from ")
        .and_then(|r| r.split(' ').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("port-forward printed {first:?}"))?;
    let banner = |_: usize| -> Result<String, Failed> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(local)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| banner(1).map_err(|e| format!("{e:?}")));
        let b = s.spawn(|| banner(2).map_err(|e| format!("{e:?}")));
        (a.join(), b.join())
    });
    for got in [a, b] {
        let got = got.map_err(|_| "a client thread panicked")??;
        check(got.starts_with("SSH-2.0-OpenSSH"), format!("the guest's sshd answered through the forward: {got:?}"))?;
    }
    let net = json(&["network", "show", "deb"])?;
    let host = json(&["vm", "show", "deb-1"])?["host"].as_str().unwrap_or_default().to_string();
    check(net["tunnels"][&host].is_string(), format!("the network lists {host}'s tunnel address: {net}"))?;

    // Refusals that say what is wrong.
    let msg = fails(&["vm", "tunnel", "deb-1", "2"])?;
    check(msg.contains("refused a connection to port 2"), format!("nothing listens on port 2: {msg}"))?;
    let msg = fails(&["vm", "port-forward", "deb-1", "8080:70000"])?;
    check(msg.contains("1 to 65535"), format!("a bad port: {msg}"))?;
    let msg = fails(&["vm", "ssh", "no-such-vm"])?;
    check(msg.contains("no-such-vm"), format!("an unknown VM is named: {msg}"))
}

/// A Debian member with `ha = "restart-fresh"` whose host loses power is restarted on another
/// host with the same identity: name, UUID, MAC and address; cloud-init configures the fresh
/// disk from a seed with the same instance id (its host name, address and key), and SSH
/// reaches it there.
pub fn debian_vm_restarts_fresh_elsewhere_with_its_identity() -> Result<(), Failed> {
    let r = restart_fresh();
    super::ha::restore();
    // The last Debian trial: the guests of all of them go.
    for c in ["deb-ha", "deb"] {
        let _ = corral(&["cluster", "delete", c]);
    }
    let _ = corral(&["vm", "delete", "deb-uefi"]);
    r
}

fn restart_fresh() -> Result<(), Failed> {
    let key = ssh_key()?;
    profile("debian-ha", &format!("{DEBIAN_PROFILE}ha = \"restart-fresh\"\n"))?;
    let op = json(&["cluster", "create", "deb-ha", "--profile", "debian-ha", "--size", "1", "--ssh-key", &key])?;
    check(op["state"] == "succeeded", format!("the cluster deployed: {op}"))?;
    let before = json(&["vm", "show", "deb-ha-1"])?;
    let h = before["host"].as_str().ok_or("its host")?.to_string();
    check(ok("deb-ha-1", &["touch", "/root/before-the-failure"]).is_ok(), "a file on the first disk")?;
    super::ha::lab_cmd(&["kill", &h])?;
    super::wait_for(&format!("{h} to be declared failed"), Duration::from_secs(30), || {
        (super::ha::host_state(&h).as_deref() == Some("failed")).then_some(())
    })?;
    let after = super::wait_for("deb-ha-1 to run on another host", Duration::from_secs(240), || {
        json(&["vm", "show", "deb-ha-1"]).ok().filter(|v| v["state"] == "running" && v["host"] != h.as_str())
    })?;
    for k in ["uuid", "mac", "ip"] {
        check(after[k] == before[k], format!("deb-ha-1 keeps its {k}: {} -> {}", before[k], after[k]))?;
    }
    let (code, _, _) = exec("deb-ha-1", &["test", "-e", "/root/before-the-failure"])?;
    check(code != 0, "a fresh disk (restart-fresh)")?;
    let status = ok("deb-ha-1", &["cloud-init", "status", "--wait"])?;
    check(status.contains("done"), format!("cloud-init configured the fresh disk: {status}"))?;
    check(ok("deb-ha-1", &["hostname"])?.trim() == "deb-ha-1", "the same host name")?;
    let ip = before["ip"].as_str().unwrap_or_default();
    let addrs = ok("deb-ha-1", &["ip", "-4", "-o", "addr", "show", "eth0"])?;
    check(addrs.contains(&format!("inet {ip}")), format!("the same address {ip}: {addrs}"))?;
    let id = ok("deb-ha-1", &["cat", "/var/lib/cloud/data/instance-id"])?;
    check(id.trim() == before["uuid"].as_str().unwrap_or_default(), format!("the same instance id: {id}"))?;
    // A new host key (a fresh disk): the trial's known-hosts file forgets the old one.
    let known = lab().dir.join("known_hosts");
    let _ = std::fs::remove_file(&known);
    let o = ssh_cmd("deb-ha-1", &[], &["hostname"])?.output()?;
    check(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "deb-ha-1",
        format!("vm ssh reaches it on its new host: {}", text(&o)),
    )
}

/// The Debian cluster suspends whole (memory and device state to disk, no QEMU left) and
/// resumes as it was: no reboot (uptime goes on), same identity, the members reach each other
/// by name, and `vm ssh` reaches them again.
pub fn debian_cluster_suspends_and_resumes() -> Result<(), Failed> {
    let before = members("deb")?;
    let up0 = uptime("deb-2")?;
    let op = json(&["cluster", "suspend", "deb"])?;
    check(op["state"] == "succeeded", format!("the cluster suspended: {op}"))?;
    let v = json(&["cluster", "show", "deb"])?;
    check(v["state"] == "suspended", format!("the cluster is suspended: {}", v["state"]))?;
    check(
        members("deb")?.iter().all(|m| m["state"] == "suspended"),
        format!("every member is suspended: {:?}", members("deb")?),
    )?;
    let op = json(&["cluster", "resume", "deb"])?;
    check(op["state"] == "succeeded", format!("the cluster resumed: {op}"))?;
    let after = members("deb")?;
    for (a, b) in after.iter().zip(&before) {
        let n = a["name"].as_str().unwrap_or_default();
        check(a["state"] == "running", format!("{n} runs again: {a}"))?;
        for k in ["uuid", "mac", "ip"] {
            check(a[k] == b[k], format!("{n} keeps its {k}"))?;
        }
    }
    let up1 = uptime("deb-2")?;
    check(up1 > up0, format!("no reboot: uptime {up0} s -> {up1} s"))?;
    ok("deb-2", &["ping", "-c", "2", "-W", "5", "deb-1"])?;
    let o = ssh_cmd("deb-2", &[], &["hostname"])?.output()?;
    check(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "deb-2",
        format!("vm ssh reaches a resumed member: {}", text(&o)),
    )
}

/// An OVF descriptor for the Debian image as an appliance: 1 vCPU, 1024 MiB, EFI firmware,
/// its disk `debian.vmdk`.
const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="debian.vmdk" ovf:id="file1"/></References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>
  </DiskSection>
  <VirtualSystem ovf:id="debian">
    <Info>Debian 12</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

/// The Debian image exported as an appliance (an OVA: its OVF and a streamOptimized VMDK, as
/// VMware writes them) imports into the library with the OVF's sizes and firmware and boots:
/// a VM created from it without sizes gets the OVF's vCPU and memory, boots under UEFI, runs
/// cloud-init from its seed and answers through its guest agent.
pub fn debian_imported_as_an_ova_boots() -> Result<(), Failed> {
    let r = ova_boots();
    let _ = corral(&["vm", "delete", "deb-ova-1"]);
    let _ = corral(&["image", "delete", "deb-ova"]);
    r
}

fn ova_boots() -> Result<(), Failed> {
    // The lab controller's library holds the project's image.
    let image = lab().dir.join("library").join("debian12.qcow2");
    let dir = lab().dir.join("ova");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let vmdk = dir.join("debian.vmdk");
    let o = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized"])
        .arg(&image)
        .arg(&vmdk)
        .output()?;
    check(o.status.success(), format!("qemu-img convert: {}", text(&o)))?;
    std::fs::write(dir.join("debian.ovf"), OVF)?;
    let ova = dir.join("debian.ova");
    let o = std::process::Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&ova)
        .arg("-C")
        .arg(&dir)
        .args(["debian.ovf", "debian.vmdk"])
        .output()?;
    check(o.status.success(), format!("tar: {}", text(&o)))?;
    let ova_s = ova.display().to_string();
    let img = json(&["image", "import", "deb-ova", &ova_s, "--default-user", "debian"])?;
    check(
        img["boot"] == "uefi" && img["vcpus"] == 1 && img["memory_mib"] == 1024,
        format!("the OVF's defaults: {img}"),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    let key = ssh_key()?;
    let v = json(&["vm", "create", "deb-ova-1", "--template", "deb-ova", "--ssh-key", &key])?;
    check(v["state"] == "running" && v["error"].is_null(), format!("it boots and its agent answers: {v}"))?;
    check(v["vcpus"] == 1 && v["memory_mib"] == 1024, format!("the image's sizes: {v}"))?;
    let (code, _, _) = exec("deb-ova-1", &["test", "-d", "/sys/firmware/efi"])?;
    check(code == 0, "it booted under UEFI, as its OVF says")?;
    check(ok("deb-ova-1", &["hostname"])?.trim() == "deb-ova-1", "cloud-init named it from its seed")?;
    let keys = ok("deb-ova-1", &["cat", "/home/debian/.ssh/authorized_keys"])?;
    check(keys.contains(std::fs::read_to_string(&key)?.trim()), "its key is installed for the default user")
}
