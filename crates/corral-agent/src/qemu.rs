//! Starting and ending QEMU processes. QEMU runs daemonized (its own session), so it outlives
//! an agent that crashes; the agent finds it again by the PID file and checks that the PID
//! still belongs to that VM (its command line carries the VM's UUID) before signalling it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_api::image::GuestAgentKind;
use corral_api::{agent::VmDefinition, Accel};

use crate::boot::Plan;

/// Files of one VM in its directory.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn guest(&self) -> PathBuf {
        self.dir.join("guest.sock")
    }
    pub fn console_sock(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn saved_state(&self) -> PathBuf {
        self.dir.join("memory.state")
    }
    /// The VM's UEFI variable store (UEFI boot only).
    pub fn efivars(&self) -> PathBuf {
        self.dir.join("efivars.fd")
    }
    /// Its VNC display's socket (firmware boot only).
    pub fn vnc(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
    /// Its cloud-init NoCloud seed volume (firmware boot only).
    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.iso")
    }
    /// QEMU's own messages (its standard error, kept after it daemonizes).
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
}

/// The block device name of a VM's disk (what the migration's mirror and NBD export name).
pub const DISK_ID: &str = "disk0";

/// The tap device name of a VM's NIC (at most 15 characters, unique per VM).
pub fn tap_name(def: &VmDefinition) -> String {
    format!("ct{}", &def.uuid.simple().to_string()[..12])
}

/// The QEMU command line of a VM. `incoming` starts it waiting for a saved or migrated state.
pub fn command_line(
    def: &VmDefinition,
    boot: &Plan,
    agent: GuestAgentKind,
    p: &VmPaths,
    accel: Accel,
    incoming: bool,
) -> Vec<String> {
    let s = |x: &Path| x.display().to_string();
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("{},process=corral-{}", def.name, def.name),
        "-uuid".into(),
        def.uuid.to_string(),
        "-accel".into(),
        // TCG's translation cache defaults to 1 GiB; a small guest needs far less, and a full
        // OS runs as fast with 256 MiB.
        match (accel, boot.firmware()) {
            (Accel::Tcg, false) => "tcg,tb-size=64".into(),
            (Accel::Tcg, true) => "tcg,tb-size=256".into(),
            (Accel::Kvm, _) => "kvm".into(),
        },
        "-m".into(),
        ram_size(def.memory_mib, accel),
        "-smp".into(),
        def.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
    ];
    a.extend(boot.args());
    if let Plan::Direct { .. } = boot {
        let mut append = format!(
            "console=ttyS0 root=/dev/vda rw quiet panic=-1 corral.name={} corral.uuid={} corral.workload={}",
            def.name, def.uuid, def.workload
        );
        if let Some(ip) = &def.ip {
            append.push_str(&format!(" corral.ip={ip}"));
        }
        if let Some(n) = def.network {
            append.push_str(&format!(" corral.mtu={}", n.mtu));
        }
        // The busybox guest panics rather than hangs; its QEMU then ends.
        a.extend(["-no-reboot".into(), "-append".into(), append]);
    }
    // The root disk is the first virtio disk (vda) and, under firmware, the boot device:
    // SeaBIOS otherwise tries only the first disk it finds, which may be the seed. (A direct
    // boot's kernel loader holds boot index 0 itself.)
    let boot_device = if boot.firmware() { ",bootindex=0" } else { "" };
    a.extend([
        "-drive".into(),
        format!("file={},if=none,id={DISK_ID},format=qcow2,cache=writeback,discard=unmap", s(&p.disk())),
        "-device".into(),
        format!("virtio-blk-pci,drive={DISK_ID}{boot_device}"),
    ]);
    if boot.firmware() {
        // A display for the graphical console, served as VNC on a socket only root reaches.
        a.extend(["-device".into(), "VGA".into(), "-vnc".into(), format!("unix:{}", s(&p.vnc()))]);
        a.extend([
            "-drive".into(),
            format!("file={},if=none,id=seed0,format=raw,readonly=on", s(&p.seed())),
            "-device".into(),
            "virtio-blk-pci,drive=seed0".into(),
        ]);
    }
    let port = match agent {
        GuestAgentKind::Qemu => "org.qemu.guest_agent.0",
        GuestAgentKind::Corral | GuestAgentKind::None => "org.corral.guest.0",
    };
    a.extend([
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        format!("socket,id=guest0,path={},server=on,wait=off", s(&p.guest())),
        "-device".into(),
        format!("virtserialport,chardev=guest0,name={port}"),
        "-chardev".into(),
        format!(
            "socket,id=con0,path={},server=on,wait=off,logfile={},logappend=on",
            s(&p.console_sock()),
            s(&p.console_log())
        ),
        "-serial".into(),
        "chardev:con0".into(),
        "-netdev".into(),
        format!("tap,id=net0,ifname={},script=no,downscript=no", tap_name(def)),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={}", def.mac),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", s(&p.qmp())),
        "-pidfile".into(),
        s(&p.pidfile()),
        // With a log file set (written only for -d items), a daemonized QEMU keeps its
        // standard error, which goes to qemu.log.
        "-D".into(),
        s(&p.dir.join("qemu-trace.log")),
        "-daemonize".into(),
    ]);
    if incoming {
        a.push("-incoming".into());
        a.push("defer".into());
    }
    a
}

/// The `-m` value. Under TCG the guest gets 8 KiB more than asked for, so that its RAM block is
/// not a whole number of 256 KiB (64-page) chunks. QEMU 7.2 syncs the migration dirty bitmap of
/// such aligned blocks on a fast path that forgets to re-arm TCG's write tracking, so pages the
/// guest writes after the first sync through cached TLB entries are never re-sent and the guest
/// arrives with stale memory (kernel panics at the destination; later QEMU resets the TLB dirty
/// bits on that path too). Unaligned blocks take the per-page path, which does
/// re-arm it. Both ends of a migration compute the same size, as they must.
pub fn ram_size(memory_mib: u64, accel: Accel) -> String {
    match accel {
        Accel::Tcg => format!("{}k", memory_mib * 1024 + 8),
        Accel::Kvm => format!("{memory_mib}M"),
    }
}

/// Starts QEMU daemonized and returns its PID. QEMU's own error message is returned on failure.
pub async fn spawn(qemu: &str, args: &[String], p: &VmPaths) -> Result<u32, String> {
    for f in [p.qmp(), p.guest(), p.console_sock(), p.vnc(), p.pidfile()] {
        let _ = std::fs::remove_file(f);
    }
    let log =
        crate::private::create(&p.qemu_log()).map_err(|e| format!("cannot create {}: {e}", p.qemu_log().display()))?;
    let status = tokio::process::Command::new(qemu)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .status()
        .await
        .map_err(|e| format!("cannot run {qemu}: {e}"))?;
    if !status.success() {
        // With -D, QEMU reports errors in that log rather than on its standard error.
        let mut err = std::fs::read_to_string(p.qemu_log()).unwrap_or_default();
        err.push_str(&std::fs::read_to_string(p.dir.join("qemu-trace.log")).unwrap_or_default());
        return Err(format!("QEMU failed to start: {}", err.trim()));
    }
    let pid = std::fs::read_to_string(p.pidfile())
        .map_err(|e| format!("QEMU started but wrote no PID file: {e}"))?
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("QEMU PID file is invalid: {e}"))?;
    Ok(pid)
}

/// True if `pid` is alive and is the QEMU process of the VM with this UUID.
pub fn is_ours(pid: u32, uuid: &uuid::Uuid) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = uuid.to_string();
    // A zombie has an empty command line: it is gone for our purposes.
    cmd.split(|b| *b == 0).any(|arg| arg == want.as_bytes())
}

/// Sends a signal to our QEMU process (checked by UUID first).
pub fn signal(pid: u32, uuid: &uuid::Uuid, sig: nix::sys::signal::Signal) {
    if is_ours(pid, uuid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

/// Whether our QEMU process is still there, exiting included: a killed process loses its
/// command line as soon as it drops its memory, well before it has closed its files and
/// become a zombie, so an empty command line means "still going" here, not "gone".
fn still_there(pid: u32, uuid: &uuid::Uuid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold any byte.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X" | "x")) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) if cmd.is_empty() => true,
        Ok(cmd) => cmd.split(|b| *b == 0).any(|arg| arg == uuid.to_string().as_bytes()),
        Err(_) => false,
    }
}

/// Waits until the process is gone (exited, a zombie at most); false if it is still there
/// after `timeout`.
pub async fn wait_exit(pid: u32, uuid: &uuid::Uuid, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !still_there(pid, uuid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills these QEMU processes all at once (SIGKILL to every one, as a power cut would), then
/// waits for all of them to go, each checked by its VM's UUID.
pub async fn kill_all(victims: &[(u32, uuid::Uuid)]) {
    for (pid, uuid) in victims {
        signal(*pid, uuid, nix::sys::signal::Signal::SIGKILL);
    }
    futures::future::join_all(victims.iter().map(|(pid, uuid)| wait_exit(*pid, uuid, Duration::from_secs(10)))).await;
}

/// Kills the process for sure (SIGKILL) and waits for it to go.
pub async fn kill(pid: u32, uuid: &uuid::Uuid) {
    signal(pid, uuid, nix::sys::signal::Signal::SIGKILL);
    let _ = wait_exit(pid, uuid, Duration::from_secs(10)).await;
}

/// Creates the VM's copy-on-write overlay on the template (never a copy of it), of the
/// template's size or `size_mib` when given (a larger virtual disk costs nothing up front).
pub async fn create_overlay(template_disk: &Path, overlay: &Path, size_mib: Option<u64>) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(template_disk).arg(overlay);
    if let Some(m) = size_mib {
        cmd.arg(format!("{m}M"));
    }
    let out = cmd.output().await.map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("qemu-img create failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Points an overlay at another copy of its template, without touching the data (the
/// template's contents are the same on every host).
pub async fn rebase(overlay: &Path, template_disk: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(template_disk)
        .arg(overlay)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("qemu-img rebase failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Bytes allocated on disk by a file (sparse-aware).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> VmDefinition {
        serde_json::from_value(serde_json::json!({
            "name": "web-1", "uuid": "8d6c6a53-6e4e-4a55-9d3c-0a4c6ea1c001", "template": "img", "vcpus": 1,
            "memory_mib": 512, "mac": "02:00:00:00:00:01", "workload": "idle"
        }))
        .expect("definition")
    }

    #[test]
    fn a_direct_boot_leaves_the_boot_index_to_the_kernel_loader_and_firmware_boots_the_disk() {
        let p = VmPaths::new("/vms/web-1".into());
        let direct = Plan::Direct { kernel: "/t/k".into(), initrd: "/t/i".into() };
        let a = command_line(&def(), &direct, GuestAgentKind::Corral, &p, Accel::Tcg, false).join(" ");
        // QEMU refuses a second boot index 0 next to -kernel's loader.
        assert!(!a.contains("bootindex"), "{a}");
        assert!(a.contains("-kernel /t/k") && a.contains("org.corral.guest.0") && !a.contains("seed.iso"), "{a}");
        let a = command_line(&def(), &Plan::Bios, GuestAgentKind::Qemu, &p, Accel::Tcg, false).join(" ");
        assert!(a.contains("virtio-blk-pci,drive=disk0,bootindex=0"), "{a}");
        // The disk comes before the seed (vda), and the seed is read-only.
        let (disk, seed) = (a.find("drive=disk0").unwrap_or(usize::MAX), a.find("seed.iso").unwrap_or(0));
        assert!(disk < seed && a.contains("readonly=on"), "{a}");
        assert!(a.contains("org.qemu.guest_agent.0") && a.contains("vnc.sock") && !a.contains("-kernel"), "{a}");
        assert!(a.contains("tcg,tb-size=256") && a.contains("-machine q35"), "{a}");
    }

    #[test]
    fn tcg_ram_is_never_a_whole_number_of_dirty_bitmap_words() {
        for mib in [64, 256, 1024, 4096] {
            let kib: u64 = ram_size(mib, Accel::Tcg).trim_end_matches('k').parse().expect("KiB");
            assert!(kib >= mib * 1024, "the guest gets at least what it asked for");
            assert_ne!(kib % 256, 0, "{mib} MiB would take QEMU 7.2's fast path");
            assert_eq!(kib % 8, 0, "QEMU rounds RAM to 8 KiB");
        }
        assert_eq!(ram_size(256, Accel::Kvm), "256M");
    }
}
