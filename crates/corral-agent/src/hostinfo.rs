//! What the host offers and how busy it is, read from /proc and statvfs; per-process CPU and
//! memory of QEMU processes.

use std::path::Path;

use corral_api::{Capacity, HostUsage};

/// Total and idle jiffies of all CPUs, from /proc/stat.
pub fn cpu_times() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(s.lines().next()?)
}

/// Parses the aggregate `cpu ...` line of /proc/stat into (total, idle+iowait).
pub fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut it = line.split_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return None;
    }
    let total = v.iter().take(8).sum();
    Some((total, v[3] + v[4]))
}

/// (MemTotal, MemAvailable) in KiB.
pub fn meminfo() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            (s.blocks_available() * frag, s.blocks() * frag)
        }
        Err(_) => (0, 0),
    }
}

/// The host's capacity, with optional operator overrides (a lab host gets a share of the machine).
pub fn capacity(data_dir: &Path, vcpus: Option<u32>, memory_mib: Option<u64>) -> Capacity {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let mem = meminfo().map(|(t, _)| t / 1024).unwrap_or(0);
    Capacity { vcpus: vcpus.unwrap_or(cpus), memory_mib: memory_mib.unwrap_or(mem), disk_bytes: disk_space(data_dir).1 }
}

/// Samples host CPU between calls.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Busy percentage since the last call.
    pub fn sample(&mut self) -> f64 {
        let now = cpu_times();
        let pct = match (self.last, now) {
            (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
                let dt = (t1 - t0) as f64;
                100.0 * (dt - (i1.saturating_sub(i0)) as f64) / dt
            }
            _ => 0.0,
        };
        self.last = now;
        pct
    }
}

/// Current host usage.
pub fn usage(sampler: &mut CpuSampler, data_dir: &Path) -> HostUsage {
    let (total, avail) = meminfo().unwrap_or((0, 0));
    HostUsage {
        cpu_pct: sampler.sample(),
        mem_used_mib: total.saturating_sub(avail) / 1024,
        disk_free_bytes: disk_space(data_dir).0,
    }
}

/// CPU time a process's threads ran plus the time they waited on a run queue for a CPU, in
/// nanoseconds, summed over its threads (`/proc/PID/task/*/schedstat`; None without
/// scheduler statistics). Over an interval this is the CPU it wanted, which is more than it
/// got when the host's CPUs are contended.
pub fn wanted_cpu_ns(pid: u32) -> Option<u64> {
    let mut sum = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
        let mut f = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
        sum += f.next().unwrap_or(0) + f.next().unwrap_or(0);
    }
    Some(sum)
}

/// utime+stime (clock ticks) and RSS (KiB) of a process.
pub fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let rss_pages = f.get(21)?.parse::<u64>().ok()?;
    Some((ticks, rss_pages * 4))
}

/// Clock ticks per second for /proc times.
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map(|v| v as u64).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_cpu_line() {
        let l = "cpu  100 0 50 800 50 0 0 0 0 0";
        assert_eq!(parse_cpu_line(l), Some((1000, 850)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5"), None);
    }

    #[test]
    fn reads_own_process_stat() {
        let (_, rss) = proc_stat(std::process::id()).expect("own /proc/PID/stat");
        assert!(rss > 0);
    }
}
