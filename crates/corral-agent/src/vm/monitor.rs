//! The monitor's periodic pass over the VMs: noticing QEMU processes that ended on their own,
//! sampling usage (CPU, memory, disk) and keeping console logs bounded.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use corral_api::agent::Ended;
use corral_api::{VmState, VmUsage};

use super::{lock, Entry, Manager};
use crate::{hostinfo, qemu};

/// How often a guest's own facts (OS, addresses) are asked for.
const FACTS_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// A QEMU process's CPU counters at one instant: used time (clock ticks) and used plus
/// run-queue waiting time of all its threads (ns), for the demand of the next sample.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuMark {
    ticks: u64,
    wanted_ns: Option<u64>,
    at: Instant,
}

/// A console log is rotated once it is larger than this (QEMU appends to it).
const CONSOLE_MAX: u64 = 1 << 20;

/// Keeps a console log bounded, whatever the guest prints: once it passes `max` bytes its
/// contents move to `console.log.1` (replacing the previous one) and the log is emptied in
/// place. QEMU opened it for appending, so it goes on writing at the new end. (What the
/// guest prints between the copy and the truncation is lost, as with logrotate's
/// copytruncate.)
fn rotate_console(log: &Path, max: u64) -> std::io::Result<bool> {
    let Ok(meta) = std::fs::metadata(log) else { return Ok(false) };
    if meta.len() <= max {
        return Ok(false);
    }
    let old = log.with_extension("log.1");
    std::fs::copy(log, &old)?;
    std::fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

impl Manager {
    /// One pass of the monitor: notices QEMU processes that ended on their own and samples usage.
    pub async fn monitor_once(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.vms).values().cloned().collect();
        let mut ended = false;
        let hz = hostinfo::clock_ticks() as f64;
        for e in entries {
            let r = {
                let Ok(_g) = e.op.try_lock() else { continue };
                let r = e.snapshot();
                if let Some(pid) = r.pid.filter(|p| !qemu::is_ours(*p, &r.def.uuid)) {
                    let said = std::fs::read_to_string(e.paths.qemu_log()).unwrap_or_default();
                    let said = said.lines().last().map(|l| format!(": {l}")).unwrap_or_default();
                    // The watchdog may have fenced it: then that is the reason, not a crash.
                    let (why, how) = match crate::watchdog::take_fenced_note(&e.paths.dir) {
                        Some(note) => (note, Ended::Fenced),
                        None => (format!("QEMU exited: the guest powered off or crashed{said}"), Ended::Exited),
                    };
                    tracing::info!("VM {}: QEMU process {pid} ended: {why}", r.def.name);
                    let _ = e.update(|r| {
                        r.state = VmState::Inactive;
                        r.pid = None;
                        r.error = Some(why);
                        r.ended = Some(how);
                    });
                    ended = true;
                    continue;
                }
                r
            };
            let Some(pid) = r.pid else {
                lock(&e.usage).0 = VmUsage { disk_bytes: qemu::allocated_bytes(&e.paths.disk()), ..Default::default() };
                continue;
            };
            let mut u = VmUsage { disk_bytes: qemu::allocated_bytes(&e.paths.disk()), ..Default::default() };
            if let Some((ticks, rss_kib)) = hostinfo::proc_stat(pid) {
                u.rss_mib = rss_kib / 1024;
                let mark = CpuMark { ticks, wanted_ns: hostinfo::wanted_cpu_ns(pid), at: Instant::now() };
                let prev = lock(&e.usage).1;
                if let Some(p) = prev {
                    let dt = mark.at.duration_since(p.at).as_secs_f64();
                    if dt > 0.0 {
                        u.cpu_pct = 100.0 * (ticks.saturating_sub(p.ticks) as f64 / hz) / dt;
                        u.cpu_demand_pct = match (mark.wanted_ns, p.wanted_ns) {
                            (Some(w1), Some(w0)) => (100.0 * w1.saturating_sub(w0) as f64 / 1e9 / dt).max(u.cpu_pct),
                            _ => u.cpu_pct,
                        };
                    }
                }
                lock(&e.usage).1 = Some(mark);
            }
            if r.state == VmState::Running {
                let guest = e.guest();
                u.guest_mem_used_mib = guest.mem_used_mib().await;
                // The guest's own facts change rarely: asked again every 15 s, kept between.
                let due = lock(&e.facts_at).is_none_or(|t| t.elapsed() >= FACTS_EVERY);
                if due {
                    if let Some((os, addrs)) = guest.facts().await {
                        (u.guest_os, u.guest_addresses) = (os, addrs);
                        *lock(&e.facts_at) = Some(Instant::now());
                    }
                } else {
                    let prev = &lock(&e.usage).0;
                    (u.guest_os, u.guest_addresses) = (prev.guest_os.clone(), prev.guest_addresses.clone());
                }
            }
            lock(&e.usage).0 = u;
            if let Err(err) = rotate_console(&e.paths.console_log(), CONSOLE_MAX) {
                tracing::warn!("VM {}: cannot rotate its console log: {err}", r.def.name);
            }
        }
        if ended {
            self.refresh_filter().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_log_that_grows_is_rotated_and_stays_bounded() {
        use std::io::Write;
        let d = tempfile::tempdir().expect("temporary directory");
        let log = d.path().join("console.log");
        // A writer that appends, as QEMU does, and keeps its file open across rotations.
        let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open");
        for round in 0..20 {
            w.write_all(&vec![b'a' + (round % 26) as u8; 300 * 1024]).expect("write");
            rotate_console(&log, 1 << 20).expect("rotate");
            let len = std::fs::metadata(&log).expect("log").len();
            assert!(len <= 1 << 20, "the log stays bounded: {len} bytes after round {round}");
        }
        let kept = std::fs::metadata(d.path().join("console.log.1")).expect("rotated copy").len();
        assert!(kept <= (1 << 20) + 300 * 1024, "one rotated copy, bounded too: {kept}");
        // Appends go on at the (new) end, not at the old offset.
        w.write_all(b"after").expect("write");
        let now = std::fs::read(&log).expect("read");
        assert!(now.ends_with(b"after") && now.len() <= 1 << 20);
    }
}
