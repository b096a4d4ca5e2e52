//! The simulator on tiny synthetic traces whose energy and SLA figures are computed by hand,
//! and its refusal of bad input.

use std::fs;
use std::path::PathBuf;

use corral_sched::drs::PolicySpec;
use corral_sim::cli::{self, Args, Output};
use corral_sim::{simulate, trace, Mix, Options};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("corral-sim-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Two single-core 1000-MIPS hosts drawing 100 W idle and 200 W flat out, linearly; VMs of
/// 1000 MIPS and 625 MiB (10 s to migrate over half of 1 Gbit/s).
const MIX: &str = r#"
    [[host]]
    name = "tiny"
    count = 2
    cores = 1
    core_mips = 1000
    memory_mib = 4096
    bandwidth_mbps = 1000
    power_watts = [100, 200]
    [[vm]]
    name = "vm"
    mips = 1000
    memory_mib = 625
"#;

fn opts(policy: &str) -> Options {
    Options { policy: PolicySpec::parse(policy, None).expect("policy"), check_plans: true, ..Options::default() }
}

#[test]
fn two_vms_consolidate_onto_one_host_with_hand_computed_energy_and_sla() {
    // Two VMs at a constant 25% (250 MIPS), 4 samples: rounds at 300.1, 600.1 and 900.1 s.
    // Full-size placement puts one VM on each host. Round 1 empties host 0 into host 1: a
    // 10 s migration. Then:
    //   [300.1, 310.1]  host 0: 25%      -> 125 W x 10 s  =  1250 J, active, no violation
    //                   host 1: 25% + 10% of the incoming VM's 25% = 27.5% -> 127.5 W x 10 s
    //                           = 1275 J, active, violated (275 of 500 MIPS granted)
    //                   VM 0 migrating: granted 90% of 250 -> 25 MIPS x 10 s short (PDM)
    //   [310.1, 600.1]  host 0 empty: 0 J, inactive; host 1 50% -> 150 W x 290 s = 43500 J
    //   [600.1, 900.1]  host 1 -> 150 W x 300 s = 45000 J
    // Energy 91025 J; SLATAH 10 / 610; PDM 250 / (2500 + 2500 + 500 x 290 + 500 x 300).
    let dir = TempDir::new("hand");
    dir.write("vm-a", "25\n25\n25\n25\n");
    dir.write("vm-b", "25\n25\n25\n25\n");
    let tr = trace::read_dir(&dir.0, 4, 300.0).expect("trace");
    let mix = Mix::parse_toml("mix.toml", MIX).expect("mix");
    for policy in ["thr-mmt-0.8", "lr-mmt-1.2", "corral"] {
        let r = simulate(&tr, &mix, &opts(policy)).expect("run");
        assert_eq!(r.migrations, 1, "{policy}");
        assert_eq!(r.intervals, 3, "{policy}");
        assert!((r.metered_s - 600.0).abs() < 1e-9, "{policy}: {}", r.metered_s);
        assert!((r.energy_kwh - 91_025.0 / 3.6e6).abs() < 1e-9, "{policy}: {}", r.energy_kwh);
        assert!((r.slatah - 10.0 / 610.0).abs() < 1e-12, "{policy}: {}", r.slatah);
        assert!((r.pdm - 250.0 / 300_000.0).abs() < 1e-12, "{policy}: {}", r.pdm);
        assert!((r.slav - r.slatah * r.pdm).abs() < 1e-18);
        assert!((r.esv - r.energy_kwh * r.slav).abs() < 1e-18);
        assert_eq!(r.standbys, 1, "{policy}");
    }
}

#[test]
fn a_vm_at_zero_demand_ends_as_in_cloudsim_unless_kept() {
    // VM b falls to 0% for two samples: at 600.1 s its demand is exactly 0 and CloudSim
    // drops it. Kept, it stays; either way energy is metered on what runs.
    let dir = TempDir::new("zero");
    dir.write("vm-a", "25\n25\n25\n25\n");
    dir.write("vm-b", "25\n0\n0\n0\n");
    let tr = trace::read_dir(&dir.0, 4, 300.0).expect("trace");
    let mix = Mix::parse_toml("mix.toml", MIX).expect("mix");
    let r = simulate(&tr, &mix, &opts("lr-mmt-1.2")).expect("run");
    assert_eq!(r.vms_removed, 1);
    let kept = simulate(&tr, &mix, &Options { remove_idle_vms: false, ..opts("lr-mmt-1.2") }).expect("run");
    assert_eq!(kept.vms_removed, 0);
}

#[test]
fn a_mix_that_cannot_hold_the_vms_is_refused_naming_the_vm() {
    let dir = TempDir::new("full");
    for i in 0..3 {
        dir.write(&format!("vm-{i}"), "25\n25\n25\n25\n");
    }
    let tr = trace::read_dir(&dir.0, 4, 300.0).expect("trace");
    let mix = Mix::parse_toml("mix.toml", MIX).expect("mix");
    let e = simulate(&tr, &mix, &opts("corral")).expect_err("3 full-size VMs on 2 hosts").to_string();
    assert!(e.contains("cannot hold") && e.contains("VM #2") && e.contains("vm-2"), "{e}");
    let big = MIX.replace("mips = 1000\n    memory_mib = 625", "mips = 1500\n    memory_mib = 625");
    let mix = Mix::parse_toml("mix.toml", &big).expect("mix");
    let e = simulate(&tr, &mix, &opts("corral")).expect_err("VM bigger than a core").to_string();
    assert!(e.contains("\"vm\"") && e.contains("1500"), "{e}");
}

fn args(dir: &std::path::Path, policy: &str, param: Option<f64>, mix: Option<PathBuf>) -> Args {
    Args {
        trace: dir.to_path_buf(),
        policy: policy.into(),
        param,
        mix,
        output: Output::Json,
        seed: 1,
        keep_idle_vms: false,
        samples: Some(4),
        series: false,
    }
}

#[test]
fn the_command_line_reports_json_and_names_bad_input() {
    let dir = TempDir::new("cli");
    dir.write("vm-a", "25\n25\n25\n25\n");
    dir.write("vm-b", "25\n25\n25\n25\n");
    let mix = dir.write("mix.toml", MIX);
    let tr = TempDir::new("cli-trace");
    tr.write("vm-a", "25\n25\n25\n25\n");
    tr.write("vm-b", "25\n25\n25\n25\n");
    let r = cli::run(&args(&tr.0, "lr-mmt", None, Some(mix.clone()))).expect("run");
    let json: serde_json::Value = serde_json::from_str(&cli::render(&r, Output::Json).expect("json")).expect("parse");
    for key in ["energy_kwh", "slatah", "pdm", "slav", "esv", "migrations", "policy"] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["policy"], "lr-mmt-1.2");
    assert!(cli::render(&r, Output::Table).expect("table").contains("kWh"));

    let e = cli::run(&args(&tr.0, "thr-mmt", Some(1.5), Some(mix.clone()))).expect_err("threshold").to_string();
    assert!(e.contains("--policy") || e.contains("threshold"), "{e}");
    let e = format!("{:#}", cli::run(&args(&tr.0, "thr-mmt", Some(1.5), Some(mix.clone()))).expect_err("threshold"));
    assert!(e.contains("THR utilisation threshold is 1.5"), "{e}");

    let bad = TempDir::new("cli-bad");
    bad.write("vm-a", "25\n25\n25\n25\n");
    bad.write("vm-b", "25\n125\n25\n25\n");
    let e = format!("{:#}", cli::run(&args(&bad.0, "corral", None, Some(mix.clone()))).expect_err("range"));
    assert!(e.contains("vm-b") && e.contains("line 2") && e.contains("125"), "{e}");
    let short = TempDir::new("cli-short");
    short.write("vm-a", "25\n25\n25\n");
    let e = format!("{:#}", cli::run(&args(&short.0, "corral", None, Some(mix.clone()))).expect_err("short"));
    assert!(e.contains("vm-a") && e.contains("has 3 lines, expected 4"), "{e}");

    let badmix = dir.write("bad.toml", &MIX.replace("core_mips = 1000", "core_mips = 0"));
    let e = format!("{:#}", cli::run(&args(&tr.0, "corral", None, Some(badmix))).expect_err("mix"));
    assert!(e.contains("bad.toml") && e.contains("core_mips = 0"), "{e}");
}
