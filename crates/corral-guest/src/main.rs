//! `corral-guest` — Corral's guest agent.
//!
//! A small static binary that runs inside every Corral VM (started and
//! respawned by the guest's `/sbin/init`). It talks to the host over the
//! virtio-serial port named `org.corral.guest.0`, speaking one JSON object
//! per line in each direction:
//!
//! * requests carry `"id"` (u64) and `"op"`; every response echoes `"id"`
//!   and has `"ok"` plus `"error"` on failure;
//! * ops: `ping`, `exec`, `counter`, `usage`, `workload`, `shutdown`
//!   (see [`proto`]);
//! * whenever the port is (re)opened the agent first sends an unsolicited
//!   `{"event":"ready",...}` line.
//!
//! Each request runs on its own thread, so a long `exec` never delays a
//! `ping`; writes to the port are serialized by a mutex. A background thread
//! increments an in-RAM counter every 100 ms (mirrored to
//! `/run/corral-counter`), which lets the host tell a resumed VM (counter
//! continues) from a rebooted one (counter restarts at 0).

mod exec;
mod procfs;
mod proto;
mod workload;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use proto::{After, Ctx};

/// Name of the virtio-serial port the host exposes.
const PORT_NAME: &str = "org.corral.guest.0";
/// Delay between attempts to find / (re)open the port.
const RETRY: Duration = Duration::from_millis(200);
/// Counter tick period.
const TICK: Duration = Duration::from_millis(100);
/// Where the counter is mirrored (tmpfs).
const COUNTER_FILE: &str = "/run/corral-counter";

/// The write half of the port, shared by all request threads.
type Writer = Arc<Mutex<File>>;

fn log(msg: &str) {
    eprintln!("corral-guest: {msg}");
}

/// Looks for `/sys/class/virtio-ports/*/name` == `name` and returns the
/// matching `/dev/vportNpM` node.
fn find_port(name: &str) -> Option<PathBuf> {
    let entries = fs::read_dir("/sys/class/virtio-ports").ok()?;
    for entry in entries.flatten() {
        let Ok(found) = fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if found.trim() == name {
            let dev = Path::new("/dev").join(entry.file_name());
            if dev.exists() {
                return Some(dev);
            }
        }
    }
    None
}

fn write_line(writer: &Writer, line: &str) -> io::Result<()> {
    let mut f = writer.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    f.write_all(&buf)?;
    f.flush()
}

fn power_off() {
    log("shutdown requested: syncing and powering off");
    if let Err(e) = Command::new("sync").status() {
        log(&format!("sync failed: {e}"));
    }
    for prog in ["poweroff", "/bin/busybox"] {
        let mut cmd = Command::new(prog);
        if prog.ends_with("busybox") {
            cmd.arg("poweroff");
        }
        match cmd.arg("-f").status() {
            Ok(_) => return,
            Err(e) => log(&format!("{prog} -f failed: {e}")),
        }
    }
}

fn handle(ctx: Arc<Ctx>, writer: Writer, line: String) {
    let Some((resp, after)) = proto::dispatch(&ctx, &line) else {
        return;
    };
    if let Err(e) = write_line(&writer, &resp) {
        log(&format!("cannot write response: {e}"));
    }
    match after {
        After::Nothing => {}
        After::PowerOff => power_off(),
    }
}

/// Serves one open of the port until the host goes away.
fn serve(ctx: &Arc<Ctx>, port: &Path) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(port)?;
    let writer: Writer = Arc::new(Mutex::new(file.try_clone()?));
    // Writes to a virtio-serial port block until the host side is connected.
    // Send one leading space first (valid JSON whitespace at the start of the
    // ready line) so the event is composed only once the host is there and
    // its counter is current rather than from when the port was opened.
    {
        let mut f = writer.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(b" ")?;
    }
    write_line(&writer, &ctx.ready_event())?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        // A partial line followed by EOF is dropped, like the host would.
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if !line.ends_with('\n') => return Ok(()),
            Ok(_) => {}
            // Non-UTF-8 input: answer with an error rather than dropping the link.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                line = "\u{fffd}".into();
            }
            Err(e) => return Err(e),
        }
        let req = std::mem::take(&mut line);
        let (ctx, writer) = (Arc::clone(ctx), Arc::clone(&writer));
        if let Err(e) = thread::Builder::new().name("request".into()).spawn(move || handle(ctx, writer, req)) {
            log(&format!("cannot spawn request thread: {e}"));
        }
    }
}

fn start_counter(ctx: &Arc<Ctx>) {
    let counter = Arc::clone(&ctx.counter);
    let file = ctx.counter_file.clone();
    // The file exists from the start: the host may read it as soon as the agent answers.
    if let Some(path) = &file {
        if let Err(e) = fs::write(path, "0\n") {
            log(&format!("cannot write {}: {e}", path.display()));
        }
    }
    let spawned = thread::Builder::new().name("counter".into()).spawn(move || {
        let start = Instant::now();
        let mut next = start;
        let mut warned = false;
        loop {
            next += TICK;
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            } else if now - next > TICK * 10 {
                // We were descheduled for a long time (e.g. VM paused):
                // don't try to catch up, just keep ticking from here.
                next = now;
            }
            let value = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(path) = &file {
                if let Err(e) = fs::write(path, format!("{value}\n")) {
                    if !warned {
                        log(&format!("cannot write {}: {e}", path.display()));
                        warned = true;
                    }
                }
            }
        }
    });
    if let Err(e) = spawned {
        log(&format!("cannot start counter thread: {e}"));
    }
}

fn main() {
    let cmdline = procfs::read_cmdline();
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let name = match procfs::cmdline_value(&cmdline, "corral.name") {
        Some(n) if hostname.is_empty() || hostname == "(none)" => n.to_string(),
        _ => hostname,
    };
    let uuid = procfs::cmdline_value(&cmdline, "corral.uuid").unwrap_or_default();
    let mut ctx = Ctx::new(name, uuid);
    ctx.counter_file = Some(PathBuf::from(COUNTER_FILE));
    let ctx = Arc::new(ctx);

    start_counter(&ctx);

    let initial = procfs::cmdline_value(&cmdline, "corral.workload").unwrap_or("idle");
    match workload::parse_spec(initial) {
        Ok(spec) => ctx.workloads.switch(spec),
        Err(e) => {
            log(&format!("{e}; running idle"));
            ctx.workloads.switch(workload::Spec::Idle);
        }
    }

    let mut waiting_logged = false;
    loop {
        let Some(port) = find_port(PORT_NAME) else {
            if !waiting_logged {
                log(&format!("waiting for virtio-serial port {PORT_NAME}"));
                waiting_logged = true;
            }
            thread::sleep(RETRY);
            continue;
        };
        waiting_logged = false;
        if let Err(e) = serve(&ctx, &port) {
            // EBUSY (a previous open still held by a request thread) and
            // host disconnects both end up here; just retry.
            if e.raw_os_error() != Some(16) {
                log(&format!("{}: {e}", port.display()));
            }
        }
        thread::sleep(RETRY);
    }
}
