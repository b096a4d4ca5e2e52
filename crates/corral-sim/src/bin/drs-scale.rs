//! Scale benchmark of the scheduler core's DRS planning: a synthetic pool of (by default)
//! 10,000 hosts and 100,000 VMs, in the live controller's units (cores and MiB, memory
//! reserved), with an hour of per-VM demand history, replayed for a few rounds: each round the
//! demands move (a random walk around a per-VM level, with a shared daily swing, drawn from
//! [`corral_sched::rng`] with the seed), the policy plans, and the plan is applied at once.
//! Prints JSON: per policy, the wall time of `plan` per round, and what the plans did.
//!
//! `drs-scale [--hosts N] [--vms N] [--rounds N] [--seed N] [--spread] [--policy NAME]...`
//! (default: `corral` on a packed pool and on a spread one — every powered host lightly
//! loaded, as after a restart, which makes it consolidate in bulk — and, for comparison,
//! `lr-mmt-1.2` on the packed pool for two rounds: the reference heuristic's underload phase
//! is quadratic in the hosts.)

use std::time::Instant;

use anyhow::Context as _;
use corral_sched::drs::{self, HostSnapshot, PolicySpec, PolicyState, PowerModel, PowerState, Snapshot, VmSnapshot};
use corral_sched::rng::SplitMix64;
use serde_json::json;

const HISTORY: usize = 12;

struct Pool {
    snap: Snapshot,
    level: Vec<f64>,
}

/// Hosts: half 16 cores / 64 GiB, half 32 cores / 128 GiB, 10% of them in standby. VMs: 1, 2
/// or 4 vCPUs, 1–8 GiB, each with its own mean load (5–60% of its vCPUs); placed first fit
/// by memory and expected CPU up to 75% of the host, so a few hosts start hot and many light.
fn pool(hosts: usize, vms: usize, seed: u64, spread: bool) -> Pool {
    let mut rng = SplitMix64::new(seed);
    let hs: Vec<HostSnapshot> = (0..hosts)
        .map(|i| {
            let big = i % 2 == 1;
            let cores = if big { 32.0 } else { 16.0 };
            HostSnapshot {
                name: format!("host{i:05}"),
                cpu_capacity: cores,
                core_capacity: 1.0,
                memory_mib: if big { 131_072 } else { 65_536 },
                migration_mbps: 10_000.0,
                power: if big { PowerModel::linear(180.0, 420.0) } else { PowerModel::linear(110.0, 250.0) },
                state: if i % 10 == 9 { PowerState::Standby } else { PowerState::On },
                cpu_used: 0.0,
                schedulable: true,
                keep_on: false,
            }
        })
        .collect();
    let mut used_cpu = vec![0.0f64; hosts];
    let mut used_mem = vec![0u64; hosts];
    let mut out = Vec::with_capacity(vms);
    let mut level = Vec::with_capacity(vms);
    let mut h = 0usize;
    for i in 0..vms {
        let vcpus = [1u32, 2, 4][rng.below(3)];
        let mem = 1024 * (1 + rng.below(8) as u64);
        let lvl = f64::from(vcpus) * (0.05 + 0.55 * rng.unit());
        // First fit from where the last VM went, skipping standby hosts; or, spread, the next
        // powered host in turn (a pool after a restart: every host lightly loaded).
        if spread {
            h = (h + 1) % hosts;
            while hs[h].state != PowerState::On || used_mem[h] + mem > hs[h].memory_mib {
                h = (h + 1) % hosts;
            }
        } else {
            for _ in 0..=hosts {
                let host = &hs[h];
                let fits = host.state == PowerState::On
                    && used_mem[h] + mem <= host.memory_mib
                    && used_cpu[h] + lvl <= 0.75 * host.cpu_capacity;
                if fits {
                    break;
                }
                h = (h + 1) % hosts;
            }
        }
        used_cpu[h] += lvl;
        used_mem[h] += mem;
        let history: Vec<f64> = (0..HISTORY).map(|_| (lvl * (0.7 + 0.6 * rng.unit())).min(f64::from(vcpus))).collect();
        out.push(VmSnapshot {
            name: format!("vm{i:06}"),
            host: h,
            vcpus,
            cpu_size: f64::from(vcpus),
            demand: *history.last().unwrap_or(&0.0),
            history,
            memory_mib: mem,
            memory_reserved_mib: mem,
            migrating_to: None,
            pinned: false,
        });
        level.push(lvl);
    }
    let mut snap = Snapshot { hosts: hs, vms: out, interval_s: 300.0 };
    measure(&mut snap);
    Pool { snap, level }
}

/// Measured use: demand, capped at capacity.
fn measure(s: &mut Snapshot) {
    let mut d = vec![0.0; s.hosts.len()];
    for v in &s.vms {
        d[v.host] += v.demand;
    }
    for (h, host) in s.hosts.iter_mut().enumerate() {
        host.cpu_used = d[h].min(host.cpu_capacity);
    }
}

/// Moves demands one interval on: a random walk around each VM's level with a shared swing.
fn advance(p: &mut Pool, round: usize, rng: &mut SplitMix64) {
    let swing = 1.0 + 0.25 * (round as f64 / 12.0).sin();
    for (v, &lvl) in p.snap.vms.iter_mut().zip(&p.level) {
        let next = (v.demand * 0.6 + lvl * swing * 0.4) * (0.8 + 0.4 * rng.unit());
        v.demand = next.clamp(0.0, v.cpu_size);
        v.history.push(v.demand);
        if v.history.len() > HISTORY {
            v.history.remove(0);
        }
    }
    measure(&mut p.snap);
}

/// Carries a plan out at once.
fn apply(p: &mut Pool, plan: &drs::Plan) {
    for &h in &plan.wake {
        p.snap.hosts[h].state = PowerState::On;
    }
    for m in &plan.migrations {
        p.snap.vms[m.vm].host = m.to;
    }
    let mut count = vec![0usize; p.snap.hosts.len()];
    for v in &p.snap.vms {
        count[v.host] += 1;
    }
    for &h in &plan.standby {
        if count[h] == 0 {
            p.snap.hosts[h].state = PowerState::Standby;
        }
    }
    measure(&mut p.snap);
}

fn run(
    policy: &str,
    hosts: usize,
    vms: usize,
    rounds: usize,
    seed: u64,
    spread: bool,
) -> anyhow::Result<serde_json::Value> {
    let spec = PolicySpec::parse(policy, None).with_context(|| format!("policy {policy}"))?;
    let mut p = pool(hosts, vms, seed, spread);
    let mut rng = SplitMix64::new(seed ^ 0xABCD);
    let mut state = PolicyState::new(seed);
    let mut times = Vec::new();
    let mut rounds_out = Vec::new();
    for r in 0..rounds {
        advance(&mut p, r, &mut rng);
        let t0 = Instant::now();
        let (plan, next) = drs::plan(&p.snap, &spec, &state)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        plan.check(&p.snap).map_err(|e| anyhow::anyhow!("round {r}: plan broke a guarantee: {e}"))?;
        state = next;
        times.push(ms);
        let on = p.snap.hosts.iter().filter(|h| h.state == PowerState::On).count();
        rounds_out.push(json!({
            "round": r + 1,
            "plan_ms": ms,
            "hosts_on_before": on,
            "overloaded": plan.overloaded.len(),
            "migrations": plan.migrations.len(),
            "wake": plan.wake.len(),
            "standby": plan.standby.len(),
        }));
        apply(&mut p, &plan);
        let what = if spread { "spread pool" } else { "packed pool" };
        eprintln!(
            "[drs-scale] {policy}, {what}: round {} planned in {ms:.1} ms ({} migrations)",
            r + 1,
            plan.migrations.len()
        );
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    Ok(json!({
        "policy": spec.to_string(),
        "start": if spread { "spread: every powered host lightly loaded (bulk consolidation)" } else { "packed: first fit to 75% of expected load" },
        "hosts": hosts,
        "vms": vms,
        "rounds": rounds,
        "plan_ms_mean": mean,
        "plan_ms_max": max,
        "within_1s": max < 1000.0,
        "per_round": rounds_out,
    }))
}

fn main() -> anyhow::Result<()> {
    let mut hosts = 10_000usize;
    let mut vms = 100_000usize;
    let mut rounds = 5usize;
    let mut seed = 42u64;
    let mut policies: Vec<String> = Vec::new();
    let mut spread = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--hosts" => hosts = val("--hosts")?.parse()?,
            "--vms" => vms = val("--vms")?.parse()?,
            "--rounds" => rounds = val("--rounds")?.parse()?,
            "--seed" => seed = val("--seed")?.parse()?,
            "--policy" => policies.push(val("--policy")?),
            "--spread" => spread = true,
            "-h" | "--help" => {
                println!("drs-scale [--hosts N] [--vms N] [--rounds N] [--seed N] [--spread] [--policy NAME]...");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let mut results = Vec::new();
    if policies.is_empty() {
        results.push(run("corral", hosts, vms, rounds, seed, false)?);
        results.push(run("corral", hosts, vms, rounds.min(2), seed, true)?);
        results.push(run("lr-mmt-1.2", hosts, vms, rounds.min(2), seed, false)?);
    } else {
        for p in &policies {
            results.push(run(p, hosts, vms, rounds, seed, spread)?);
        }
    }
    println!("{}", serde_json::to_string_pretty(&json!({ "seed": seed, "results": results }))?);
    Ok(())
}
