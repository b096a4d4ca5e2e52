//! `corral-qemu-watch`: samples every QEMU process on this machine at a fixed interval and
//! counts, per VM, the lab hosts (network namespaces) running it, until it gets SIGTERM or
//! SIGINT. A sample where a VM runs on two hosts is a double run. On exit it writes a JSON
//! summary: `{"samples": N, "double_run_samples": N, "double_run_vms": [..]}`. Used by
//! bench/ha.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Only VMs whose name starts with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Milliseconds between samples.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Where the summary goes.
    #[arg(long)]
    out: PathBuf,
}

/// VM name → the network namespaces its QEMU processes run in, now.
fn sample(prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return m };
    for e in rd.flatten() {
        if !e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        for arg in cmd.split(|b| *b == 0) {
            let a = String::from_utf8_lossy(arg);
            let Some((name, rest)) = a.split_once(",process=corral-") else { continue };
            if name != rest || !name.starts_with(prefix) {
                continue;
            }
            if let Ok(ns) = std::fs::read_link(e.path().join("ns/net")) {
                m.entry(name.to_string()).or_default().insert(ns.display().to_string());
            }
        }
    }
    m
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(a.interval_ms.max(1)));
    let (mut samples, mut doubled) = (0u64, 0u64);
    let mut vms: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = sample(&a.prefix);
                samples += 1;
                let twice: Vec<&String> = s.iter().filter(|(_, h)| h.len() > 1).map(|(n, _)| n).collect();
                if !twice.is_empty() {
                    doubled += 1;
                    vms.extend(twice.into_iter().cloned());
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let summary = serde_json::json!({"samples": samples, "double_run_samples": doubled, "double_run_vms": vms});
    std::fs::write(&a.out, serde_json::to_vec(&summary)?)?;
    Ok(())
}
