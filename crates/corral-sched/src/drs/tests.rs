//! Tests of the DRS policies: parsing, each detector and selection on known inputs, PABFD and
//! underload consolidation, Corral's relief, consolidation and hysteresis, and properties that
//! must hold for every policy on random pools (no capacity exceeded, no migration to a standby
//! host it does not wake, each VM moved at most once, determinism).

use super::*;
use proptest::prelude::*;

fn host(name: &str, cap: f64) -> HostSnapshot {
    HostSnapshot {
        name: name.into(),
        cpu_capacity: cap,
        core_capacity: cap,
        memory_mib: 16_384,
        migration_mbps: 500.0,
        power: PowerModel::linear(100.0, 200.0),
        state: PowerState::On,
        cpu_used: 0.0,
        schedulable: true,
        keep_on: false,
    }
}

fn vm(name: &str, host: usize, size: f64, history: &[f64]) -> VmSnapshot {
    let demand = history.last().copied().unwrap_or(0.0);
    VmSnapshot {
        name: name.into(),
        host,
        vcpus: 1,
        cpu_size: size,
        demand,
        history: history.to_vec(),
        memory_mib: 1024,
        memory_reserved_mib: 0,
        migrating_to: None,
        pinned: false,
    }
}

/// Sets each host's measured use to the demand of its VMs (capped at capacity).
fn measured(mut s: Snapshot) -> Snapshot {
    for (h, host) in s.hosts.iter_mut().enumerate() {
        let d: f64 = s.vms.iter().filter(|v| v.host == h).map(|v| v.demand).sum();
        host.cpu_used = d.min(host.cpu_capacity);
    }
    s
}

fn snap(hosts: Vec<HostSnapshot>, vms: Vec<VmSnapshot>) -> Snapshot {
    measured(Snapshot { hosts, vms, interval_s: 300.0 })
}

fn run(s: &Snapshot, policy: &str) -> Plan {
    let spec = PolicySpec::parse(policy, None).expect("policy");
    let (p, _) = plan(s, &spec, &PolicyState::new(1)).expect("plan");
    p.check(s).expect("plan keeps its guarantees");
    p
}

fn flat(x: f64, n: usize) -> Vec<f64> {
    vec![x; n]
}

#[test]
fn policy_names_parse_and_round_trip() {
    for name in ["lr-mmt-1.2", "thr-mmt-0.8", "mad-mc-2.5", "iqr-rs-1.5", "lrr-mu-1.2", "corral", "corral:window=6"] {
        let p = PolicySpec::parse(name, None).expect(name);
        assert_eq!(p.to_string(), name);
        assert_eq!(PolicySpec::parse(&p.to_string(), None).expect("again"), p);
    }
    assert_eq!(PolicySpec::parse("LR-MMT", None).expect("default"), PolicySpec::parse("lr-mmt-1.2", None).expect("x"));
    assert_eq!(
        PolicySpec::parse("thr-mmt", Some(0.7)).expect("param"),
        PolicySpec::Reference { detector: Detector::Thr(0.7), selection: Selection::Mmt }
    );
    let PolicySpec::Corral(c) = PolicySpec::parse("corral", Some(0.8)).expect("corral") else { panic!("corral") };
    assert_eq!(c.target, 0.8);
    assert_eq!(PolicySpec::parse("corral-0.8", None).expect("corral"), PolicySpec::Corral(c));
}

#[test]
fn bad_policies_are_refused_with_the_field_named() {
    let e = PolicySpec::parse("thr-mmt-1.3", None).expect_err("threshold above 1").to_string();
    assert!(e.contains("THR utilisation threshold") && e.contains("1.3") && e.contains("(0, 1]"), "{e}");
    let e = PolicySpec::parse("thr-mmt", Some(-0.1)).expect_err("negative").to_string();
    assert!(e.contains("-0.1"), "{e}");
    let e = PolicySpec::parse("corral", Some(1.5)).expect_err("target").to_string();
    assert!(e.contains("target utilisation") && e.contains("1.5"), "{e}");
    let e = PolicySpec::parse("corral:quantile=0", None).expect_err("quantile").to_string();
    assert!(e.contains("quantile"), "{e}");
    assert!(PolicySpec::parse("foo-mmt", None).is_err());
    assert!(PolicySpec::parse("lr-xyz", None).is_err());
    assert!(PolicySpec::parse("lr-mmt-abc", None).expect_err("nan").to_string().contains("abc"));
    assert!(PolicySpec::parse("corral:colour=1", None).is_err());
}

#[test]
fn snapshots_with_bad_indices_or_numbers_are_refused() {
    let mut s = snap(vec![host("a", 1000.0)], vec![vm("v", 0, 500.0, &[100.0])]);
    s.vms[0].host = 3;
    let e = plan(&s, &PolicySpec::default(), &PolicyState::default()).expect_err("index").to_string();
    assert!(e.contains("\"v\"") && e.contains("index 3"), "{e}");
    let mut s = snap(vec![host("a", 1000.0)], vec![vm("v", 0, 500.0, &[100.0])]);
    s.vms[0].demand = f64::NAN;
    assert!(plan(&s, &PolicySpec::default(), &PolicyState::default()).is_err());
    let mut s = snap(vec![host("a", 1000.0)], vec![vm("v", 0, 500.0, &[100.0])]);
    s.hosts[0].state = PowerState::Standby;
    assert!(matches!(plan(&s, &PolicySpec::default(), &PolicyState::default()), Err(DrsError::VmOnStandbyHost(..))));
}

#[test]
fn lr_detects_a_rising_series_and_not_a_flat_one() {
    // One VM on a 1000-unit host, its demand rising 5% of the host per interval to 85%:
    // the regression forecasts 90% for the next interval, × 1.2 = 108% ≥ 100%.
    let rising: Vec<f64> = (0..10).map(|i| 400.0 + 50.0 * i as f64).collect();
    let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &rising)]);
    let p = run(&s, "lr-mmt-1.2");
    assert_eq!(p.overloaded, vec![0]);
    assert_eq!(p.migrations.len(), 1);
    assert_eq!((p.migrations[0].from, p.migrations[0].to), (0, 1));
    assert!(matches!(p.migrations[0].reason, Reason::Overload { .. }));
    // The same level, flat: forecast 85% × 1.2 = 102% ≥ 100% too; at 80% it is 96%: fine.
    let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &flat(800.0, 10))]);
    assert!(run(&s, "lr-mmt-1.2").overloaded.is_empty());
    // Falling towards 85%: not overloaded although higher than the flat case now.
    let falling: Vec<f64> = (0..10).map(|i| 950.0 - 20.0 * i as f64).collect();
    let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &falling)]);
    assert!(run(&s, "lr-mmt-1.2").overloaded.is_empty());
}

#[test]
fn short_history_falls_back_to_a_static_threshold_of_0_7() {
    for policy in ["lr-mmt-1.2", "mad-mmt-2.5", "iqr-mmt-1.5", "lrr-mmt-1.2"] {
        let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &[750.0, 750.0])]);
        assert_eq!(run(&s, policy).overloaded, vec![0], "{policy}");
        let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &[650.0, 650.0])]);
        assert!(run(&s, policy).overloaded.is_empty(), "{policy}");
    }
}

#[test]
fn thr_uses_the_demand_now() {
    let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &[100.0, 810.0])]);
    assert_eq!(run(&s, "thr-mmt-0.8").overloaded, vec![0]);
    assert!(run(&s, "thr-mmt-0.9").overloaded.is_empty());
}

#[test]
fn mad_and_iqr_lower_the_threshold_for_volatile_hosts() {
    // 70% now. Steady history: threshold ≈ 1. Volatile history: threshold well below 70%.
    let steady = flat(700.0, 12);
    let volatile: Vec<f64> = (0..12).map(|i| if i % 2 == 0 { 300.0 } else { 900.0 }).chain([700.0]).collect();
    for policy in ["mad-mmt-2.5", "iqr-mmt-1.5"] {
        let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &steady)]);
        assert!(run(&s, policy).overloaded.is_empty(), "{policy} steady");
        let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("v", 0, 1000.0, &volatile)]);
        assert_eq!(run(&s, policy).overloaded, vec![0], "{policy} volatile");
    }
}

/// Host 0 overloaded (THR 0.5) with three VMs; host 1 empty and on.
fn three_vm_host(histories: [&[f64]; 3], memory: [u64; 3]) -> Snapshot {
    let vms = histories
        .iter()
        .zip(memory)
        .enumerate()
        .map(|(i, (h, m))| {
            let mut v = vm(&format!("v{i}"), 0, 1000.0, h);
            v.memory_mib = m;
            v
        })
        .collect();
    snap(vec![host("a", 3000.0), host("b", 3000.0)], vms)
}

#[test]
fn mmt_takes_the_smallest_memory_first() {
    let s = three_vm_host([&flat(600.0, 3), &flat(600.0, 3), &flat(600.0, 3)], [2048, 512, 1024]);
    let p = run(&s, "thr-mmt-0.5");
    assert_eq!(p.migrations.len(), 1);
    assert_eq!(p.migrations[0].vm, 1);
    // 512 MiB over 500 Mbit/s.
    assert!((p.migrations[0].seconds - 512.0 * 8.0 / 500.0).abs() < 1e-9);
}

#[test]
fn mu_takes_the_least_loaded_first() {
    let s = three_vm_host([&flat(700.0, 3), &flat(300.0, 3), &flat(650.0, 3)], [1024, 1024, 1024]);
    // 1650 of 3000 > 50%; without the 300 still 1350 > 1500? no: 45% — one VM suffices.
    let p = run(&s, "thr-mu-0.5");
    assert_eq!(p.migrations.iter().map(|m| m.vm).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn mc_takes_the_vm_most_correlated_with_the_others() {
    let x: Vec<f64> = (0..15).map(|i| 300.0 + 20.0 * ((i * 7) % 5) as f64).collect();
    let twice: Vec<f64> = x.iter().map(|v| v * 1.5).collect();
    let noise: Vec<f64> = (0..15).map(|i| 400.0 + 90.0 * ((i * 11) % 3) as f64 - 25.0 * (i % 4) as f64).collect();
    // v2 is the noise; v0 and v1 explain each other perfectly.
    let s = three_vm_host([&noise, &x, &twice], [1024, 1024, 1024]);
    let p = run(&s, "thr-mc-0.3");
    assert!(!p.migrations.is_empty());
    assert_ne!(p.migrations[0].vm, 0, "the uncorrelated VM is not the first choice");
}

#[test]
fn rs_is_reproducible_for_a_seed() {
    let s = three_vm_host([&flat(600.0, 3), &flat(600.0, 3), &flat(600.0, 3)], [1024, 1024, 1024]);
    let spec = PolicySpec::parse("thr-rs-0.5", None).expect("rs");
    let picks: Vec<usize> =
        (0..20).map(|seed| plan(&s, &spec, &PolicyState::new(seed)).expect("plan").0.migrations[0].vm).collect();
    let again: Vec<usize> =
        (0..20).map(|seed| plan(&s, &spec, &PolicyState::new(seed)).expect("plan").0.migrations[0].vm).collect();
    assert_eq!(picks, again);
    assert!(picks.iter().any(|&v| v != picks[0]), "different seeds pick different VMs: {picks:?}");
    // The generator state moves on.
    let (_, next) = plan(&s, &spec, &PolicyState::new(3)).expect("plan");
    assert_ne!(next.rng, 3);
    assert_eq!(next.round, 1);
}

#[test]
fn pabfd_prefers_the_smallest_power_increase() {
    // Host 0 is over 80%; the VM with the least memory (500 units) must leave. Host 1 has a
    // steep power curve, host 2 a flat one.
    let mut hosts = vec![host("a", 1000.0), host("steep", 1000.0), host("flat", 1000.0)];
    hosts[1].power = PowerModel::linear(100.0, 400.0);
    hosts[2].power = PowerModel::linear(100.0, 150.0);
    let mut vms = vec![
        vm("v", 0, 1000.0, &[500.0, 500.0]),
        vm("u", 0, 1000.0, &[400.0, 400.0]),
        vm("w1", 1, 1000.0, &[100.0, 100.0]),
        vm("w2", 2, 1000.0, &[100.0, 100.0]),
    ];
    vms[0].memory_mib = 512;
    let s = snap(hosts, vms);
    let p = run(&s, "thr-mmt-0.8");
    let m = p.migrations.iter().find(|m| m.vm == 0).expect("v moves");
    assert_eq!(m.to, 2);
}

#[test]
fn reference_wakes_a_standby_host_only_together_with_its_migration() {
    let mut hosts = vec![host("a", 1000.0), host("b", 1000.0)];
    hosts[1].state = PowerState::Standby;
    let s = snap(hosts, vec![vm("v", 0, 1000.0, &[900.0]), vm("w", 0, 1000.0, &[50.0])]);
    let p = run(&s, "thr-mmt-0.8");
    assert_eq!(p.wake, vec![1]);
    assert!(p.migrations.iter().all(|m| m.to == 1));
}

#[test]
fn underload_empties_the_least_loaded_host_into_the_others() {
    // Three hosts at 10%, 40%, 50%: the first empties into the third (least power added
    // on equal curves goes to the first such host), then the second has nowhere to go
    // (its VMs would push the third over 0.7... it is not: 50+40+10 = 100% > 70%).
    let vms = vec![
        vm("v0", 0, 1000.0, &[100.0, 100.0]),
        vm("v1", 1, 1000.0, &[400.0, 400.0]),
        vm("v2", 2, 1000.0, &[500.0, 500.0]),
    ];
    let s = snap(vec![host("a", 1000.0), host("b", 1000.0), host("c", 1000.0)], vms);
    let p = run(&s, "lr-mmt-1.2");
    assert_eq!(p.migrations.len(), 1);
    assert_eq!(p.migrations[0].from, 0);
    assert!(matches!(p.migrations[0].reason, Reason::Consolidate { saves_watts } if saves_watts == 100.0));
    assert_eq!(p.standby, vec![0]);
}

#[test]
fn empty_hosts_that_are_on_go_to_standby_unless_kept_on() {
    let mut hosts = vec![host("a", 1000.0), host("b", 1000.0), host("c", 1000.0)];
    hosts[2].keep_on = true;
    let s = snap(hosts, vec![vm("v", 0, 1000.0, &[500.0])]);
    assert_eq!(run(&s, "lr-mmt-1.2").standby, vec![1]);
    // Corral also uses the room on the host that stays on anyway, and frees host 0.
    let p = run(&s, "corral");
    assert_eq!(p.standby, vec![0, 1]);
    assert_eq!(p.migrations.iter().map(|m| m.to).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn initial_placement_is_power_aware_best_fit() {
    let mut hosts = vec![host("small", 1000.0), host("big", 2000.0)];
    hosts[0].power = PowerModel::linear(80.0, 200.0);
    hosts[1].power = PowerModel::linear(90.0, 150.0);
    let vms = [NewVm { cpu: 400.0, vcpus: 1, memory_mib: 1024 }; 6];
    let placed = place_initial(&hosts, &vms).expect("fits");
    // The big host adds 12 W per 400 units, the small one 48 W: the big one fills first (5).
    assert_eq!(placed, vec![1, 1, 1, 1, 1, 0]);
    let too_big = [NewVm { cpu: 5000.0, vcpus: 1, memory_mib: 1 }];
    assert!(matches!(place_initial(&hosts, &too_big), Err(DrsError::NoRoom { index: 0, .. })));
}

#[test]
fn corral_relieves_a_hot_host_with_one_big_vm() {
    // 4100 on a 4000 host: moving the 1500 VM fixes it with one migration.
    let vms = vec![
        vm("a", 0, 2000.0, &flat(1500.0, 12)),
        vm("b", 0, 2000.0, &flat(1000.0, 12)),
        vm("c", 0, 2000.0, &flat(800.0, 12)),
        vm("d", 0, 2000.0, &flat(800.0, 12)),
        vm("e", 1, 2000.0, &flat(500.0, 12)),
    ];
    let s = snap(vec![host("h0", 4000.0), host("h1", 4000.0)], vms);
    let p = run(&s, "corral");
    assert_eq!(p.overloaded, vec![0]);
    assert_eq!(p.migrations.len(), 1);
    assert_eq!((p.migrations[0].vm, p.migrations[0].to), (0, 1));
}

#[test]
fn corral_wakes_the_most_efficient_standby_host_when_nothing_has_room() {
    let mut hosts = vec![host("h0", 2000.0), host("old", 2000.0), host("new", 2000.0)];
    hosts[1].state = PowerState::Standby;
    hosts[2].state = PowerState::Standby;
    hosts[1].power = PowerModel::linear(150.0, 300.0);
    let vms = vec![vm("a", 0, 1100.0, &flat(1050.0, 12)), vm("b", 0, 1100.0, &flat(1050.0, 12))];
    let s = snap(hosts, vms);
    let p = run(&s, "corral");
    assert_eq!(p.wake, vec![2]);
    assert_eq!(p.migrations.len(), 1);
    assert_eq!(p.migrations[0].to, 2);
}

#[test]
fn corral_consolidates_only_when_the_rest_keeps_room() {
    // Three 10000 hosts at 10% each: one can empty into the others with room to spare.
    let mk = |load: f64| {
        let vms = (0..3).map(|h| vm(&format!("v{h}"), h, 6000.0, &flat(load, 12))).collect();
        snap(vec![host("a", 10_000.0), host("b", 10_000.0), host("c", 10_000.0)], vms)
    };
    let p = run(&mk(1000.0), "corral");
    assert!(!p.migrations.is_empty());
    assert!(p.migrations.iter().all(|m| matches!(m.reason, Reason::Consolidate { .. })));
    assert!(!p.standby.is_empty());
    // At 50% each, no host can take another's VM within the 90% target.
    let p = run(&mk(5000.0), "corral");
    assert!(p.migrations.is_empty(), "{:?}", p.migrations);
}

#[test]
fn corral_does_not_move_a_vm_back_during_its_cooldown() {
    let vms = vec![vm("a", 0, 5000.0, &flat(1000.0, 12)), vm("b", 1, 5000.0, &flat(1000.0, 12))];
    let s = snap(vec![host("h0", 10_000.0), host("h1", 10_000.0), host("h2", 10_000.0)], vms);
    let spec = PolicySpec::default();
    // "a" was moved last round: host 0 is not emptied; host 1 ("b") may be.
    let mut state = PolicyState::new(0);
    state.round = 10;
    state.last_moved.insert("a".into(), 9);
    let (p, next) = plan(&s, &spec, &state).expect("plan");
    p.check(&s).expect("guarantees");
    assert!(p.migrations.iter().all(|m| m.vm != 0), "{:?}", p.migrations);
    // Ten rounds later the cooldown is over and the entry forgotten.
    let mut later = next.clone();
    later.round = 30;
    let (p2, next2) = plan(&s, &spec, &later).expect("plan");
    p2.check(&s).expect("guarantees");
    // Rounds count the plan being made: this was round 31.
    assert_eq!(next2.round, 31);
    assert!(p2.migrations.iter().all(|m| m.vm != 0) || next2.last_moved["a"] == 31);
}

#[test]
fn nothing_moves_pinned_or_migrating_vms() {
    let mut vms = vec![vm("a", 0, 1000.0, &flat(950.0, 12)), vm("b", 0, 1000.0, &flat(900.0, 12))];
    vms[0].pinned = true;
    vms[1].migrating_to = Some(1);
    let s = snap(vec![host("h0", 2000.0), host("h1", 2000.0), host("h2", 2000.0)], vms);
    for policy in ["thr-mmt-0.5", "lr-mc-1.2", "corral"] {
        assert!(run(&s, policy).migrations.is_empty(), "{policy}");
    }
}

#[test]
fn describe_names_hosts_vms_and_reasons() {
    let rising: Vec<f64> = (0..10).map(|i| 400.0 + 50.0 * i as f64).collect();
    let s = snap(vec![host("a", 1000.0), host("b", 1000.0)], vec![vm("web-1", 0, 1000.0, &rising)]);
    let lines = run(&s, "lr-mmt-1.2").describe(&s);
    assert!(lines.iter().any(|l| l.contains("migrate web-1 from a to b") && l.contains("overloaded")), "{lines:?}");
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let hosts =
        prop::collection::vec((1000u32..6000, 1u32..4, prop::bool::weighted(0.3), prop::bool::weighted(0.1)), 2..7);
    hosts
        .prop_flat_map(|hs| {
            let nh = hs.len();
            let vms = prop::collection::vec(
                (
                    0..nh,
                    100u32..2500,
                    prop::collection::vec(0.0f64..1.0, 0..16),
                    0.0f64..1.0,
                    256u64..4096,
                    prop::bool::weighted(0.1),
                    prop::option::weighted(0.1, 0..nh),
                    0u64..2048,
                ),
                0..24,
            );
            (Just(hs), vms)
        })
        .prop_map(|(hs, vms)| {
            let mut hosts: Vec<HostSnapshot> = hs
                .iter()
                .enumerate()
                .map(|(i, &(cap, cores, standby, unschedulable))| {
                    let mut h = host(&format!("h{i}"), f64::from(cap));
                    h.core_capacity = f64::from(cap) / f64::from(cores);
                    h.memory_mib = 8192;
                    if standby {
                        h.state = PowerState::Standby;
                    }
                    h.schedulable = !unschedulable;
                    h
                })
                .collect();
            // Host 0 is always on, so there is somewhere to put VMs.
            hosts[0].state = PowerState::On;
            let mut out = Vec::new();
            for (i, (h, size, hist, now, mem, pinned, to, reserved)) in vms.into_iter().enumerate() {
                let h = if hosts[h].state == PowerState::Standby { 0 } else { h };
                let size = f64::from(size);
                let history: Vec<f64> = hist.iter().chain([&now]).map(|x| x * size).collect();
                let mut v = vm(&format!("v{i}"), h, size, &history);
                v.memory_mib = mem;
                v.memory_reserved_mib = reserved.min(mem);
                v.pinned = pinned;
                v.migrating_to = to.filter(|&t| t != h && hosts[t].state == PowerState::On);
                out.push(v);
            }
            measured(Snapshot { hosts, vms: out, interval_s: 300.0 })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_policy_keeps_its_guarantees(s in arb_snapshot(), seed in 0u64..1000) {
        for name in ["thr-mmt-0.8", "mad-mc-2.5", "iqr-rs-1.5", "lr-mmt-1.2", "lrr-mu-1.2", "lr-mc-1.2", "corral", "corral:target=1,quantile=0.5"] {
            let spec = PolicySpec::parse(name, None).expect("policy");
            let state = PolicyState::new(seed);
            let (p, next) = plan(&s, &spec, &state).expect("plan");
            prop_assert!(p.check(&s).is_ok(), "{}: {:?}\n{:?}", name, p.check(&s), p);
            // No migration targets a standby host unless the same plan wakes it.
            for m in &p.migrations {
                prop_assert!(s.hosts[m.to].state == PowerState::On || p.wake.contains(&m.to));
            }
            // Deterministic for the same inputs.
            let (p2, next2) = plan(&s, &spec, &state).expect("plan");
            prop_assert_eq!(&p, &p2);
            prop_assert_eq!(&next, &next2);
            prop_assert_eq!(next.round, state.round + 1);
        }
    }
}

#[test]
fn corral_wakes_a_host_for_a_saturated_two_core_host_with_a_short_history() {
    // The live lab's case: cores as CPU units, three 1-vCPU VMs wanting a core each on a
    // 2-core host, the other two hosts in standby, a history of a few samples.
    let mut hosts: Vec<HostSnapshot> = ["lab-1", "lab-2", "lab-3"]
        .iter()
        .map(|n| HostSnapshot { core_capacity: 1.0, memory_mib: 6427, ..host(n, 2.0) })
        .collect();
    hosts[0].state = PowerState::Standby;
    hosts[2].state = PowerState::Standby;
    let vms = (0..3)
        .map(|i| VmSnapshot { memory_mib: 256, memory_reserved_mib: 256, ..vm(&format!("d{i}"), 1, 1.0, &[1.0, 1.0]) })
        .collect();
    let s = snap(hosts, vms);
    let p = run(&s, "corral");
    assert_eq!(p.overloaded, vec![1]);
    assert_eq!(p.wake.len(), 1, "{p:?}");
    assert!(!p.migrations.is_empty());
}
