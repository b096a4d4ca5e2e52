//! Synthetic workloads the host can switch on inside the guest.
//!
//! * `idle`   — nothing runs.
//! * `cpu`    — one thread spins in a busy loop.
//! * `dirty:R[:S]` — allocate `S` MiB (default 64), touch every page, then
//!   dirty one byte per 4 KiB page at `R` MiB/s, cycling through the buffer.
//!   This is what makes live migration's dirty-page tracking work hard.
//!
//! Every switch bumps a generation counter; worker threads poll it and exit
//! as soon as it no longer matches the generation they were started for.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Page size used for dirtying (x86-64 base pages).
pub const PAGE: usize = 4096;
/// Default working-set size of `dirty:` in MiB.
pub const DEFAULT_DIRTY_MIB: u64 = 64;
/// Upper bound on the `dirty:` working set, to reject obvious typos.
pub const MAX_DIRTY_MIB: u64 = 1 << 20;
/// Length of one dirtying slice.
const SLICE: Duration = Duration::from_millis(10);

/// A parsed workload specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    Idle,
    Cpu,
    Dirty { rate_mib_s: u64, size_mib: u64 },
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Idle => f.write_str("idle"),
            Spec::Cpu => f.write_str("cpu"),
            Spec::Dirty { rate_mib_s, size_mib } => write!(f, "dirty:{rate_mib_s}:{size_mib}"),
        }
    }
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_spec(s)
    }
}

/// Parses `idle`, `cpu`, `dirty:<MiB/s>` or `dirty:<MiB/s>:<MiB>`.
pub fn parse_spec(s: &str) -> Result<Spec, String> {
    let s = s.trim();
    match s {
        "idle" => return Ok(Spec::Idle),
        "cpu" => return Ok(Spec::Cpu),
        _ => {}
    }
    let Some(rest) = s.strip_prefix("dirty:") else {
        return Err(format!("invalid workload spec {s:?}: expected idle, cpu, dirty:<MiB/s> or dirty:<MiB/s>:<MiB>"));
    };
    let mut parts = rest.split(':');
    let rate = parts.next().unwrap_or_default();
    let rate_mib_s = rate
        .parse::<u64>()
        .map_err(|_| format!("invalid workload spec {s:?}: dirty rate {rate:?} is not a whole number of MiB/s"))?;
    let size_mib = match parts.next() {
        None => DEFAULT_DIRTY_MIB,
        Some(size) => size
            .parse::<u64>()
            .map_err(|_| format!("invalid workload spec {s:?}: size {size:?} is not a whole number of MiB"))?,
    };
    if parts.next().is_some() {
        return Err(format!("invalid workload spec {s:?}: too many fields"));
    }
    if size_mib == 0 || size_mib > MAX_DIRTY_MIB {
        return Err(format!("invalid workload spec {s:?}: size must be between 1 and {MAX_DIRTY_MIB} MiB"));
    }
    Ok(Spec::Dirty { rate_mib_s, size_mib })
}

/// Owns the currently running workload.
#[derive(Debug, Default)]
pub struct Workloads {
    generation: Arc<AtomicU64>,
    /// Number of worker threads currently alive (for tests and diagnostics).
    running: Arc<AtomicUsize>,
    current: Mutex<Option<Spec>>,
}

/// Decrements the live-worker count when a worker thread ends.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Workloads {
    pub fn new() -> Self {
        Self::default()
    }

    /// The workload most recently started (None before the first switch).
    #[cfg(test)]
    pub fn current(&self) -> Option<Spec> {
        *self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of workload threads still running.
    #[cfg(test)]
    pub fn running_threads(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops whatever runs now and starts `spec`.
    pub fn switch(&self, spec: Spec) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let my_gen = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *cur = Some(spec);
        let generation = Arc::clone(&self.generation);
        let alive = move || generation.load(Ordering::Relaxed) == my_gen;
        let guard = Running::enter(&self.running);
        let spawned = match spec {
            Spec::Idle => Ok(()),
            Spec::Cpu => thread::Builder::new()
                .name("workload-cpu".into())
                .spawn(move || {
                    let _guard = guard;
                    spin(alive)
                })
                .map(drop),
            Spec::Dirty { rate_mib_s, size_mib } => thread::Builder::new()
                .name("workload-dirty".into())
                .spawn(move || {
                    let _guard = guard;
                    dirty(rate_mib_s, size_mib, alive)
                })
                .map(drop),
        };
        if let Err(e) = spawned {
            eprintln!("corral-guest: cannot start workload {spec}: {e}");
        }
    }
}

fn spin(alive: impl Fn() -> bool) {
    let mut x: u64 = 0;
    while alive() {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn dirty(rate_mib_s: u64, size_mib: u64, alive: impl Fn() -> bool) {
    let Ok(bytes) = usize::try_from(size_mib * 1024 * 1024) else {
        eprintln!("corral-guest: dirty working set of {size_mib} MiB does not fit in memory");
        return;
    };
    let mut buf: Vec<u8> = Vec::new();
    if buf.try_reserve_exact(bytes).is_err() {
        eprintln!("corral-guest: cannot allocate {size_mib} MiB for the dirty workload");
        return;
    }
    buf.resize(bytes, 0);
    let pages = bytes / PAGE;
    // Touch every page so the whole working set is really resident.
    for p in 0..pages {
        if p % 4096 == 0 && !alive() {
            return;
        }
        buf[p * PAGE] = 1;
    }
    std::hint::black_box(&mut buf);

    // Pages per second at the requested rate; carry the fractional part.
    let pages_per_sec = rate_mib_s as f64 * (1024.0 * 1024.0 / PAGE as f64);
    let start = Instant::now();
    let mut written: u64 = 0;
    let mut cursor = 0usize;
    let mut value: u8 = 2;
    while alive() {
        let due = (start.elapsed().as_secs_f64() * pages_per_sec) as u64;
        // Never try to catch up more than one second's worth after a stall
        // (e.g. the VM was paused); just resume at the nominal rate.
        if due.saturating_sub(written) as f64 > pages_per_sec.max(1.0) {
            written = due.saturating_sub(pages_per_sec as u64);
        }
        while written < due {
            buf[cursor * PAGE] = value;
            cursor += 1;
            if cursor == pages {
                cursor = 0;
                value = value.wrapping_add(1);
            }
            written += 1;
        }
        std::hint::black_box(&mut buf);
        thread::sleep(SLICE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_valid_specs() {
        assert_eq!(parse_spec("idle"), Ok(Spec::Idle));
        assert_eq!(parse_spec("cpu"), Ok(Spec::Cpu));
        assert_eq!(parse_spec(" cpu\n"), Ok(Spec::Cpu));
        assert_eq!(parse_spec("dirty:10"), Ok(Spec::Dirty { rate_mib_s: 10, size_mib: 64 }));
        assert_eq!(parse_spec("dirty:5:128"), Ok(Spec::Dirty { rate_mib_s: 5, size_mib: 128 }));
        assert_eq!(parse_spec("dirty:0"), Ok(Spec::Dirty { rate_mib_s: 0, size_mib: 64 }));
    }

    #[test]
    fn parse_invalid_specs() {
        for bad in [
            "",
            "busy",
            "dirty",
            "dirty:",
            "dirty:x",
            "dirty:-1",
            "dirty:1.5",
            "dirty:1:",
            "dirty:1:0",
            "dirty:1:abc",
            "dirty:1:2:3",
            "CPU",
        ] {
            let err = parse_spec(bad).expect_err(bad);
            assert!(err.contains("invalid workload spec"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["idle", "cpu", "dirty:3:16"] {
            let spec = parse_spec(s).expect("parse");
            assert_eq!(spec.to_string(), s);
            assert_eq!(s.parse::<Spec>(), Ok(spec));
        }
    }

    #[test]
    fn switching_stops_previous_workload() {
        let w = Workloads::new();
        w.switch(Spec::Cpu);
        assert_eq!(w.current(), Some(Spec::Cpu));
        assert_eq!(w.running_threads(), 1);
        w.switch(Spec::Dirty { rate_mib_s: 100, size_mib: 1 });
        thread::sleep(Duration::from_millis(50));
        w.switch(Spec::Idle);
        assert_eq!(w.current(), Some(Spec::Idle));
        assert_eq!(w.generation.load(Ordering::SeqCst), 3);
        // The workers must notice the generation change and exit.
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.running_threads() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(w.running_threads(), 0);
    }
}
