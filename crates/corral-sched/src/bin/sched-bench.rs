//! Benchmark of the scheduler core on a deterministic synthetic pool: 10,000 hosts of two
//! types and 100,000 VMs of four types modelled on CloudSim's EC2 VM types, drawn from the
//! seeded splitmix64 generator ([`corral_sched::rng`]). It times `place_group` (spread, pack,
//! and spread with anti-affinity on a smaller group) and `place_one` called once per VM in
//! sequence, checks that no host ends over capacity, and writes JSON plus a short markdown
//! summary.
//!
//! `cargo run --release -p corral-sched --bin sched-bench -- --out bench/results/sched.json`
//! Options: `--out PATH` (the markdown goes next to it, `.md`), `--seed N`, `--hosts N`,
//! `--vms N`, `--place-one N` (0 skips), `--repeat N`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use corral_sched::rng::SplitMix64;
use corral_sched::{place_group, place_one, GroupRequest, HostView, Overcommit, Placement, Policy, Request, VmReq};

/// A host type or a VM type of the pool.
struct Type {
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
}

const HOST_TYPES: [Type; 2] = [
    Type { name: "16 vCPU / 64 GiB", vcpus: 16, memory_mib: 64 * 1024 },
    Type { name: "32 vCPU / 128 GiB", vcpus: 32, memory_mib: 128 * 1024 },
];
/// CloudSim's EC2-like VM types: 1.7 GiB, 3.75 GiB, 0.6 GiB and 0.613 GiB.
const VM_TYPES: [Type; 4] = [
    Type { name: "1 vCPU / 1.7 GiB", vcpus: 1, memory_mib: 1741 },
    Type { name: "2 vCPU / 3.75 GiB", vcpus: 2, memory_mib: 3840 },
    Type { name: "4 vCPU / 0.6 GiB", vcpus: 4, memory_mib: 614 },
    Type { name: "1 vCPU / 0.613 GiB", vcpus: 1, memory_mib: 628 },
];

/// The types with how many of each the pool holds, as a JSON array.
fn types_json(types: &[Type], counts: &[usize]) -> String {
    let items: Vec<String> = types
        .iter()
        .zip(counts)
        .map(|(t, n)| {
            format!(
                "{{\"name\": {}, \"vcpus\": {}, \"memory_mib\": {}, \"count\": {n}}}",
                json_str(t.name),
                t.vcpus,
                t.memory_mib
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The same for people: "N × name, ...".
fn types_text(types: &[Type], counts: &[usize]) -> String {
    types.iter().zip(counts).map(|(t, n)| format!("{n} × {}", t.name)).collect::<Vec<_>>().join(", ")
}

struct Args {
    out: PathBuf,
    seed: u64,
    hosts: usize,
    vms: usize,
    place_one: usize,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        out: PathBuf::from("bench/results/sched.json"),
        seed: 42,
        hosts: 10_000,
        vms: 100_000,
        place_one: 100_000,
        repeat: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        match flag.as_str() {
            "--out" => a.out = PathBuf::from(value()?),
            "--seed" => a.seed = num(value()?)?,
            "--hosts" => a.hosts = num(value()?)? as usize,
            "--vms" => a.vms = num(value()?)? as usize,
            "--place-one" => a.place_one = num(value()?)? as usize,
            "--repeat" => a.repeat = (num(value()?)? as usize).max(1),
            "-h" | "--help" => {
                return Err("usage: sched-bench [--out PATH] [--seed N] [--hosts N] [--vms N] \
                            [--place-one N] [--repeat N]"
                    .into())
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    Ok(a)
}

fn pool(seed: u64, n_hosts: usize, n_vms: usize) -> (Vec<HostView>, Vec<VmReq>) {
    let mut rng = SplitMix64::new(seed);
    let hosts = (0..n_hosts)
        .map(|i| {
            let t = &HOST_TYPES[rng.below(HOST_TYPES.len())];
            HostView {
                name: format!("host-{i:05}"),
                schedulable: true,
                vcpus: t.vcpus,
                memory_mib: t.memory_mib,
                used_vcpus: 0,
                used_memory_mib: 0,
                cpu_load: (rng.unit() * 100.0).round() / 100.0,
                templates: vec!["base".into()],
                labels: Default::default(),
            }
        })
        .collect();
    let vms = (0..n_vms)
        .map(|i| {
            let t = &VM_TYPES[rng.below(VM_TYPES.len())];
            VmReq { name: format!("vm-{i:06}"), vcpus: t.vcpus, memory_mib: t.memory_mib, host: None }
        })
        .collect();
    (hosts, vms)
}

#[derive(Default)]
struct Stats {
    hosts_used: usize,
    max: f64,
    min: f64,
    mean: f64,
    stddev: f64,
    /// max − min over every host, used or not.
    all_hosts_gap: f64,
    capacity_ok: bool,
}

/// Utilisation (dominant share of overcommitted capacity) per host after `placements`.
fn stats(hosts: &[HostView], vms: &[(u32, u64)], placements: &[usize], oc: Overcommit) -> Stats {
    let mut add = vec![(0u64, 0u64, 0usize); hosts.len()];
    for (&(v, m), &h) in vms.iter().zip(placements) {
        add[h].0 += u64::from(v);
        add[h].1 += m;
        add[h].2 += 1;
    }
    let mut s = Stats { min: f64::INFINITY, max: f64::NEG_INFINITY, capacity_ok: true, ..Default::default() };
    let (mut lo_all, mut hi_all) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut used = Vec::new();
    for (h, &(v, m, n)) in hosts.iter().zip(&add) {
        let cap_v = f64::from(h.vcpus) * oc.cpu;
        let cap_m = h.memory_mib as f64 * oc.memory;
        let (tv, tm) = (u64::from(h.used_vcpus) + v, h.used_memory_mib + m);
        if tv as f64 > cap_v || tm as f64 > cap_m {
            s.capacity_ok = false;
        }
        let u = (tm as f64 / cap_m).max(tv as f64 / cap_v);
        lo_all = lo_all.min(u);
        hi_all = hi_all.max(u);
        if n > 0 {
            used.push(u);
        }
    }
    s.hosts_used = used.len();
    s.all_hosts_gap = hi_all - lo_all;
    if !used.is_empty() {
        s.max = used.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        s.min = used.iter().copied().fold(f64::INFINITY, f64::min);
        s.mean = used.iter().sum::<f64>() / used.len() as f64;
        let var = used.iter().map(|u| (u - s.mean).powi(2)).sum::<f64>() / used.len() as f64;
        s.stddev = var.sqrt();
    }
    s
}

struct Run {
    name: String,
    vms: usize,
    wall_ms: Vec<f64>,
    stats: Stats,
}

impl Run {
    fn best_ms(&self) -> f64 {
        self.wall_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn per_sec(&self) -> f64 {
        self.vms as f64 / (self.best_ms() / 1000.0)
    }
}

fn index_of(hosts: &[HostView]) -> HashMap<&str, usize> {
    hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect()
}

fn run_group(name: &str, hosts: &[HostView], req: &GroupRequest, repeat: usize) -> Result<Run, String> {
    let mut wall_ms = Vec::new();
    let mut last: Vec<Placement> = Vec::new();
    for i in 0..repeat {
        let t = Instant::now();
        let ps = place_group(hosts, req).map_err(|e| format!("{name}: {e}"))?;
        wall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if i > 0 && ps != last {
            return Err(format!("{name}: two runs gave different placements"));
        }
        last = ps;
    }
    let idx = index_of(hosts);
    let at: Vec<usize> =
        last.iter().map(|p| idx.get(p.host.as_str()).copied().ok_or("unknown host")).collect::<Result<_, _>>()?;
    let sizes: Vec<(u32, u64)> = req.vms.iter().map(|v| (v.vcpus, v.memory_mib)).collect();
    Ok(Run { name: name.into(), vms: req.vms.len(), wall_ms, stats: stats(hosts, &sizes, &at, req.overcommit) })
}

/// `place_one` once per VM, in input order, each seeing the previous ones' usage.
fn run_place_one(hosts: &[HostView], vms: &[VmReq], oc: Overcommit) -> Result<Run, String> {
    let mut hs = hosts.to_vec();
    let idx: HashMap<String, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name.clone(), i)).collect();
    let mut at = Vec::with_capacity(vms.len());
    let t = Instant::now();
    for v in vms {
        let r = Request {
            vcpus: v.vcpus,
            memory_mib: v.memory_mib,
            template: "base".into(),
            host: None,
            cpu_overcommit: oc.cpu,
        };
        let name = place_one(&hs, &r).map_err(|e| format!("place_one {}: {e}", v.name))?;
        let i = *idx.get(&name).ok_or("unknown host")?;
        hs[i].used_vcpus += v.vcpus;
        hs[i].used_memory_mib += v.memory_mib;
        at.push(i);
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let sizes: Vec<(u32, u64)> = vms.iter().map(|v| (v.vcpus, v.memory_mib)).collect();
    Ok(Run {
        name: "place_one × N (sequential)".into(),
        vms: vms.len(),
        wall_ms: vec![ms],
        stats: stats(hosts, &sizes, &at, oc),
    })
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{}", (x * 1e6).round() / 1e6)
    } else {
        "null".into()
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("sched-bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let args = parse_args()?;
    let command = format!(
        "cargo run --release -p corral-sched --bin sched-bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    // Other work on the machine skews wall times: record the load average (Linux only).
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let (hosts, vms) = pool(args.seed, args.hosts, args.vms);
    let oc = Overcommit::default();
    let host_counts: Vec<usize> =
        HOST_TYPES.iter().map(|t| hosts.iter().filter(|h| h.vcpus == t.vcpus).count()).collect();
    let vm_counts: Vec<usize> = VM_TYPES
        .iter()
        .map(|t| vms.iter().filter(|v| v.vcpus == t.vcpus && v.memory_mib == t.memory_mib).count())
        .collect();
    let cap_v: f64 = hosts.iter().map(|h| f64::from(h.vcpus) * oc.cpu).sum();
    let cap_m: f64 = hosts.iter().map(|h| h.memory_mib as f64 * oc.memory).sum();
    let dem_v: f64 = vms.iter().map(|v| f64::from(v.vcpus)).sum();
    let dem_m: f64 = vms.iter().map(|v| v.memory_mib as f64).sum();
    // No packing can use fewer hosts than the demand over the biggest host, per resource.
    let big_v = hosts.iter().map(|h| f64::from(h.vcpus) * oc.cpu).fold(0.0, f64::max);
    let big_m = hosts.iter().map(|h| h.memory_mib as f64 * oc.memory).fold(0.0, f64::max);
    let pack_bound = (dem_v / big_v).max(dem_m / big_m).ceil();

    let mut runs = Vec::new();
    for policy in [Policy::Spread, Policy::Pack] {
        let req = GroupRequest { vms: vms.clone(), policy, overcommit: oc, ..Default::default() };
        eprintln!("place_group {policy}: {} VMs on {} hosts", vms.len(), hosts.len());
        runs.push(run_group(&format!("place_group {policy}"), &hosts, &req, args.repeat)?);
    }
    let aa_n = vms.len().min(hosts.len());
    let aa = GroupRequest {
        vms: vms[..aa_n].to_vec(),
        policy: Policy::Spread,
        anti_affinity: true,
        overcommit: oc,
        ..Default::default()
    };
    eprintln!("place_group spread + anti-affinity: {aa_n} VMs");
    runs.push(run_group("place_group spread + anti-affinity", &hosts, &aa, args.repeat)?);
    if args.place_one > 0 {
        let n = args.place_one.min(vms.len());
        eprintln!("place_one × {n}");
        runs.push(run_place_one(&hosts, &vms[..n], oc)?);
    }

    // JSON.
    let mut j = String::from("{\n");
    let _ = writeln!(j, "  \"command\": {},", json_str(&command));
    let _ = writeln!(j, "  \"profile\": {},", json_str(if cfg!(debug_assertions) { "debug" } else { "release" }));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(j, "  \"cores\": {cores},");
    let _ = writeln!(j, "  \"loadavg_1min_at_start\": {},", json_str(&load));
    let _ = writeln!(j, "  \"seed\": {},", args.seed);
    let _ = writeln!(j, "  \"pool\": {{");
    let _ = writeln!(j, "    \"hosts\": {},", hosts.len());
    let _ = writeln!(j, "    \"host_types\": {},", types_json(&HOST_TYPES, &host_counts));
    let _ = writeln!(j, "    \"vms\": {},", vms.len());
    let _ = writeln!(j, "    \"vm_types\": {},", types_json(&VM_TYPES, &vm_counts));
    let _ = writeln!(j, "    \"overcommit\": {{\"cpu\": {}, \"memory\": {}}},", num(oc.cpu), num(oc.memory));
    let _ =
        writeln!(j, "    \"demand_share\": {{\"vcpus\": {}, \"memory\": {}}},", num(dem_v / cap_v), num(dem_m / cap_m));
    let _ = writeln!(j, "    \"pack_lower_bound_hosts\": {}", num(pack_bound));
    let _ = writeln!(j, "  }},");
    let _ = writeln!(j, "  \"runs\": [");
    for (i, r) in runs.iter().enumerate() {
        let s = &r.stats;
        let walls: Vec<String> = r.wall_ms.iter().map(|&w| num(w)).collect();
        let _ = writeln!(
            j,
            "    {{\"name\": {}, \"vms\": {}, \"wall_ms\": {}, \"wall_ms_runs\": [{}], \
             \"placements_per_sec\": {}, \"hosts_used\": {}, \"capacity_ok\": {}, \
             \"utilisation_used_hosts\": {{\"max\": {}, \"min\": {}, \"mean\": {}, \
             \"max_minus_min\": {}, \"stddev\": {}}}, \"utilisation_all_hosts_max_minus_min\": {}}}{}",
            json_str(&r.name),
            r.vms,
            num(r.best_ms()),
            walls.join(", "),
            num(r.per_sec().round()),
            s.hosts_used,
            s.capacity_ok,
            num(s.max),
            num(s.min),
            num(s.mean),
            num(s.max - s.min),
            num(s.stddev),
            num(s.all_hosts_gap),
            if i + 1 < runs.len() { "," } else { "" }
        );
    }
    let _ = writeln!(j, "  ]\n}}");

    // Markdown.
    let mut md = String::from("# Scheduler core benchmark (`corral-sched`)\n\n");
    let _ = writeln!(md, "Command (from the workspace root):\n\n```\n{command}\n```\n");
    let _ = writeln!(
        md,
        "Profile: {}; machine: {cores} cores, 1-minute load average {load} at the start (other \
         work skews wall times). Seed {}. Single-threaded; wall time is the best of {} runs for \
         `place_group` and one run for `place_one`.\n",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        args.seed,
        args.repeat
    );
    let _ = writeln!(
        md,
        "Pool: {} empty hosts ({}), {} VMs ({}), modelled on CloudSim's EC2 VM types, drawn \
         with splitmix64. Overcommit: {} vCPUs per core, memory {}×. The VMs ask for {:.1}% of \
         the overcommitted vCPUs and {:.1}% of the memory.\n",
        hosts.len(),
        types_text(&HOST_TYPES, &host_counts),
        vms.len(),
        types_text(&VM_TYPES, &vm_counts),
        oc.cpu,
        oc.memory,
        100.0 * dem_v / cap_v,
        100.0 * dem_m / cap_m
    );
    md.push_str(
        "Utilisation is a host's dominant share (the larger of its memory and vCPU shares of \
         the overcommitted capacity), over the hosts the run used.\n\n",
    );
    md.push_str(
        "| run | VMs | wall ms | placements/s | hosts used | util min–max | max−min | stddev | capacity ok |\n",
    );
    md.push_str("|---|---:|---:|---:|---:|---|---:|---:|---|\n");
    for r in &runs {
        let s = &r.stats;
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.0} | {} | {:.3}–{:.3} | {:.4} | {:.4} | {} |",
            r.name,
            r.vms,
            r.best_ms(),
            r.per_sec(),
            s.hosts_used,
            s.min,
            s.max,
            s.max - s.min,
            s.stddev,
            if s.capacity_ok { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(
        md,
        "\nNo packing can use fewer than {pack_bound} hosts (the vCPU or memory demand over the \
         biggest host). Every repeated `place_group` run gave the same placements.\n"
    );
    md.push_str(
        "`place_one × N` places the VMs one call at a time in input order, each call scanning every \
         host (O(H) per VM). `place_group` places them in one call: spread biggest first from a heap \
         of hosts per VM size (O(log H) per VM), pack filling one host at a time with the best-matching \
         size (O(sizes) per VM). The anti-affinity run places one VM per host.\n",
    );

    if let Some(dir) = args.out.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    std::fs::write(&args.out, &j).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let md_path = args.out.with_extension("md");
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    print!("{j}");
    eprintln!("wrote {} and {}", args.out.display(), md_path.display());
    Ok(())
}
