//! Parsers for the few `/proc` files the agent reports on.
//!
//! The parsers take the file contents as text so they can be unit tested on
//! the host with sample data; the `read_*` helpers do the actual I/O.

use std::fs;

/// Aggregate CPU counters from the first `cpu ` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Sum of all columns (user nice system idle iowait irq softirq steal ...).
    pub total_jiffies: u64,
    /// idle + iowait.
    pub idle_jiffies: u64,
}

/// Memory figures from `/proc/meminfo`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_kib: u64,
    pub available_kib: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
///
/// `guest` and `guest_nice` (columns 9 and 10) are already included in
/// `user`/`nice`, so they are not added to the total a second time.
pub fn parse_stat(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| "no aggregate cpu line in /proc/stat".to_string())?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().map_err(|e| format!("bad /proc/stat field {f:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if fields.len() < 4 {
        return Err(format!("short cpu line in /proc/stat: {line:?}"));
    }
    let total_jiffies = fields.iter().take(8).sum();
    let idle_jiffies = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok(CpuTimes { total_jiffies, idle_jiffies })
}

/// Parses `MemTotal` and `MemAvailable` from `/proc/meminfo`.
///
/// Kernels older than 3.14 lack `MemAvailable`; it is then approximated by
/// `MemFree + Buffers + Cached`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let mut total = None;
    let mut available = None;
    let (mut free, mut buffers, mut cached) = (0u64, 0u64, 0u64);
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(val) = val.parse::<u64>() else {
            continue;
        };
        match key {
            "MemTotal:" => total = Some(val),
            "MemAvailable:" => available = Some(val),
            "MemFree:" => free = val,
            "Buffers:" => buffers = val,
            "Cached:" => cached = val,
            _ => {}
        }
    }
    let total_kib = total.ok_or_else(|| "no MemTotal in /proc/meminfo".to_string())?;
    let available_kib = available.unwrap_or(free + buffers + cached);
    Ok(MemInfo { total_kib, available_kib })
}

/// Parses the first field (seconds since boot) of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Result<f64, String> {
    text.split_whitespace()
        .next()
        .ok_or_else(|| "empty /proc/uptime".to_string())?
        .parse::<f64>()
        .map_err(|e| format!("bad /proc/uptime: {e}"))
}

/// Parses the 1-minute load average from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<f64, String> {
    text.split_whitespace()
        .next()
        .ok_or_else(|| "empty /proc/loadavg".to_string())?
        .parse::<f64>()
        .map_err(|e| format!("bad /proc/loadavg: {e}"))
}

/// Returns the value of `key=` on a kernel command line, if present.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|tok| tok.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn read(path: &str) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

pub fn read_stat() -> Result<CpuTimes, String> {
    parse_stat(&read("/proc/stat")?)
}

pub fn read_meminfo() -> Result<MemInfo, String> {
    parse_meminfo(&read("/proc/meminfo")?)
}

pub fn read_uptime() -> Result<f64, String> {
    parse_uptime(&read("/proc/uptime")?)
}

pub fn read_loadavg() -> Result<f64, String> {
    parse_loadavg(&read("/proc/loadavg")?)
}

/// The kernel command line, or an empty string if it cannot be read.
pub fn read_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0\n\
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0\n\
intr 1462898 0 0\n\
ctxt 2359830\n";

    const MEMINFO: &str = "MemTotal:         238544 kB\n\
MemFree:          180000 kB\n\
MemAvailable:     201234 kB\n\
Buffers:            1000 kB\n\
Cached:            12000 kB\n\
HugePages_Total:       0\n";

    #[test]
    fn stat_parses_aggregate_line() {
        let t = parse_stat(STAT).expect("parse");
        assert_eq!(t.total_jiffies, 10132153 + 290696 + 3084719 + 46828483 + 16683 + 25195);
        assert_eq!(t.idle_jiffies, 46828483 + 16683);
    }

    #[test]
    fn stat_short_line_with_four_fields() {
        let t = parse_stat("cpu 1 2 3 4\n").expect("parse");
        assert_eq!(t.total_jiffies, 10);
        assert_eq!(t.idle_jiffies, 4);
    }

    #[test]
    fn stat_rejects_garbage() {
        assert!(parse_stat("intr 1 2 3\n").is_err());
        assert!(parse_stat("cpu 1 2 x 4\n").is_err());
        assert!(parse_stat("cpu 1 2\n").is_err());
    }

    #[test]
    fn meminfo_parses_total_and_available() {
        let m = parse_meminfo(MEMINFO).expect("parse");
        assert_eq!(m, MemInfo { total_kib: 238544, available_kib: 201234 });
    }

    #[test]
    fn meminfo_without_available_falls_back() {
        let m = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 1 kB\n").expect("parse");
        assert_eq!(m.available_kib, 111);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn uptime_and_loadavg() {
        assert_eq!(parse_uptime("12.34 5.67\n"), Ok(12.34));
        assert_eq!(parse_loadavg("0.52 0.30 0.10 1/80 123\n"), Ok(0.52));
        assert!(parse_uptime("").is_err());
        assert!(parse_loadavg("x").is_err());
    }

    #[test]
    fn cmdline_lookup() {
        let c = "console=ttyS0 corral.name=t1 corral.uuid=abc corral.workload=dirty:5:32 quiet\n";
        assert_eq!(cmdline_value(c, "corral.name"), Some("t1"));
        assert_eq!(cmdline_value(c, "corral.workload"), Some("dirty:5:32"));
        assert_eq!(cmdline_value(c, "corral.ip"), None);
        assert_eq!(cmdline_value(c, "quiet"), None);
        assert_eq!(cmdline_value("corral.namex=1", "corral.name"), None);
    }
}
