//! Balancing and consolidation on the live lab (DRS, `auto` mode): CPU-loop guests piled on
//! two hosts are spread by live migration; with light load, consolidation empties hosts and
//! puts them in standby (their agents stop), and raising the load wakes one. Every trial turns
//! DRS off again and wakes what it put in standby (the harness's clean-up does too).

use std::collections::BTreeMap;
use std::time::Duration;

use libtest_mimic::Failed;
use serde_json::Value;

use super::{check, corral, create, fails, json, lab, text, vm, wait_for};

fn drs_set(args: &[&str]) -> Result<Value, Failed> {
    let mut a = vec!["drs", "set"];
    a.extend(args);
    json(&a)
}

/// VM name → host, for the VMs given.
fn hosts_of(names: &[&str]) -> Result<BTreeMap<String, String>, Failed> {
    names.iter().map(|n| Ok((n.to_string(), vm(n)?["host"].as_str().unwrap_or_default().to_string()))).collect()
}

/// How many of `names` run on each host.
fn per_host(placement: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in placement.values() {
        *m.entry(h.clone()).or_insert(0) += 1;
    }
    m
}

fn host_field(name: &str, field: &str) -> Option<String> {
    json(&["host", "show", name]).ok().and_then(|h| h[field].as_str().map(String::from))
}

fn lab_host_standby(name: &str) -> bool {
    lab().state()["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == name))
        .is_some_and(|h| h["standby"] == true)
}

/// A failure with what DRS saw and did, for the reader of the test log.
fn explain(e: Failed) -> Failed {
    let show = |args: &[&str]| text(&corral(args));
    format!(
        "{}\n--- host list\n{}\n--- vm list\n{}\n--- drs history\n{}\n--- drs plan\n{}\n--- events\n{}",
        e.message().unwrap_or_default(),
        show(&["host", "list"]),
        show(&["vm", "list"]),
        show(&["drs", "history"]),
        show(&["drs", "plan"]),
        show(&["events"]),
    )
    .into()
}

/// DRS off, every host on: what the other trials expect.
pub fn restore() {
    let _ = corral(&["drs", "set", "--mode", "off"]);
    if let Ok(hs) = json(&["host", "list"]) {
        for h in hs.as_array().into_iter().flatten().filter(|h| h["power"] != "on") {
            let _ = corral(&["host", "wake", h["name"].as_str().unwrap_or_default()]);
        }
    }
}

pub fn auto_spreads_cpu_load_by_migration() -> Result<(), Failed> {
    let r = spread();
    restore();
    r
}

fn spread() -> Result<(), Failed> {
    // lab-1 runs three CPU loops (it has two cores), lab-2 one and an idle VM, lab-3 an idle VM.
    let loops = ["t-c1", "t-c2", "t-c3", "t-c4"];
    for (n, h) in [("t-c1", "lab-1"), ("t-c2", "lab-1"), ("t-c3", "lab-1"), ("t-c4", "lab-2")] {
        create(n, &["--host", h, "--workload", "cpu"])?;
    }
    create("t-i1", &["--host", "lab-2"])?;
    create("t-i2", &["--host", "lab-3"])?;
    let before = hosts_of(&loops)?;
    check(per_host(&before).get("lab-1") == Some(&3), format!("three loops on lab-1 to start with: {before:?}"))?;
    let s = drs_set(&["--mode", "auto", "--interval", "3s"])?;
    check(s["mode"] == "auto" && s["interval_s"] == 3.0, format!("settings stored: {s}"))?;
    // Even: every host runs a loop and none more than two (two cores each).
    let after = wait_for("DRS to spread the CPU loops", Duration::from_secs(180), || {
        let p = hosts_of(&loops).ok()?;
        let n = per_host(&p);
        let moving = loops.iter().any(|l| vm(l).is_ok_and(|v| !v["migration"].is_null()));
        (!moving && n.len() == 3 && n.values().all(|&c| c <= 2)).then_some(p)
    })
    .map_err(explain)?;
    for n in loops {
        let v = vm(n)?;
        check(v["state"] == "running", format!("{n} still running: {v}"))?;
    }
    // The idle VMs may be moving too (consolidation is on): running, wherever they are.
    for n in ["t-i1", "t-i2"] {
        let v = vm(n)?;
        check(v["state"] == "running" || v["state"] == "migrating", format!("{n} still running: {v}"))?;
    }
    // Which loops moved is the policy's choice (lab-1 had to lose at least one of its three).
    let moved: Vec<&String> = after.keys().filter(|k| after[*k] != before[*k]).collect();
    // The history says what was done and why.
    let rounds = json(&["drs", "history"])?;
    let moves: Vec<&Value> =
        rounds.as_array().into_iter().flatten().flat_map(|r| r["moves"].as_array().into_iter().flatten()).collect();
    check(
        moves.iter().any(|m| {
            m["reason"] == "overload"
                && m["from"] == "lab-1"
                && m["outcome"].as_str().is_some_and(|o| o.starts_with("mig-"))
        }),
        format!("an overload move off lab-1 recorded with its migration: {rounds}"),
    )?;
    // The migrations went through the live-migration machinery and completed.
    for k in &moved {
        let ms = json(&["vm", "migrations", k])?;
        check(
            ms.as_array().and_then(|a| a.last()).is_some_and(|m| m["state"] == "completed"),
            format!("{k} was live-migrated: {ms}"),
        )?;
    }
    Ok(())
}

pub fn consolidation_puts_hosts_in_standby_and_load_wakes_them() -> Result<(), Failed> {
    let r = consolidate_and_wake();
    restore();
    r
}

fn consolidate_and_wake() -> Result<(), Failed> {
    let vms = ["t-s1", "t-s2", "t-s3"];
    for (i, n) in vms.iter().enumerate() {
        create(n, &["--host", &format!("lab-{}", i + 1)])?;
    }
    // Advice first: a plan is shown and recorded, nothing moves.
    drs_set(&["--mode", "advise", "--interval", "3s"])?;
    let plan = wait_for("an advised plan", Duration::from_secs(60), || {
        json(&["drs", "plan"]).ok().filter(|p| p["standby"].as_array().is_some_and(|s| !s.is_empty()))
    })?;
    check(
        plan["moves"].as_array().is_some_and(|m| {
            m.iter().all(|m| m["reason"] == "consolidate" && m["why"].as_str().is_some_and(|w| w.contains("W")))
        }),
        format!("the plan says which VM goes where and what it saves: {plan}"),
    )?;
    wait_for("an advice round in the history", Duration::from_secs(30), || {
        json(&["drs", "history"]).ok().filter(|h| h.as_array().is_some_and(|a| a.iter().any(|r| r["mode"] == "advise")))
    })?;
    let placed = hosts_of(&vms)?;
    check(per_host(&placed).len() == 3, format!("advice moved nothing: {placed:?}"))?;
    // Auto: hosts are emptied and go to standby; their agents stop. The policy picks which
    // (it may keep another host than advised), and it may put them to sleep one after the
    // other: wait until the consolidation is done (no VM moving, and every host that has
    // gone to standby asleep) before judging it.
    drs_set(&["--mode", "auto"])?;
    let asleep = wait_for("consolidation to put hosts in standby and settle", Duration::from_secs(120), || {
        let hs = json(&["host", "list"]).ok()?;
        let hs = hs.as_array()?;
        let s: Vec<String> = hs
            .iter()
            .filter(|h| h["state"] == "standby" && h["power"] == "standby")
            .filter_map(|h| h["name"].as_str().map(String::from))
            .collect();
        let going = hs.iter().any(|h| h["power"] == "standby" && h["state"] != "standby");
        let moving = vms.iter().any(|n| vm(n).is_ok_and(|v| !v["migration"].is_null()));
        (!s.is_empty() && !going && !moving).then_some(s)
    })
    .map_err(explain)?;
    for h in &asleep {
        check(lab_host_standby(h), format!("{h}'s agent was stopped by the standby command"))?;
        let n = json(&["host", "show", h])?["vms"].as_u64();
        check(n == Some(0), format!("{h} holds no VM"))?;
    }
    for n in &vms {
        check(vm(n)?["state"] == "running", format!("{n} kept running through the consolidation"))?;
    }
    // Load returns: CPU loops in every VM, now on fewer hosts than before.
    for n in &vms {
        let o = corral(&[
            "vm",
            "exec",
            n,
            "--",
            "sh",
            "-c",
            "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &",
        ]);
        check(o.status.success(), format!("start a CPU loop in {n}: {}", text(&o)))?;
    }
    // Any host that went to standby in this trial may be the one woken.
    let slept: Vec<String> = json(&["events"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "host.standby")
        .filter_map(|e| e["subject"].as_str().map(String::from))
        .filter(|h| asleep.contains(h))
        .collect();
    check(!slept.is_empty(), format!("the standby of {asleep:?} is an event"))?;
    let woken = wait_for("a standby host to be woken and take a VM", Duration::from_secs(180), || {
        let p = hosts_of(&vms).ok()?;
        slept.iter().find(|h| p.values().any(|x| x == *h) && host_field(h, "power").as_deref() == Some("on")).cloned()
    })
    .map_err(explain)?;
    check(host_field(&woken, "state").as_deref() == Some("ready"), format!("{woken} reports again"))?;
    check(!lab_host_standby(&woken), format!("{woken}'s agent was started by the wake command"))?;
    let ev = json(&["events"])?;
    check(
        ev.as_array().is_some_and(|a| a.iter().any(|e| e["kind"] == "host.woken" && e["subject"] == woken.as_str())),
        "the wake-up is an event",
    )?;
    Ok(())
}

/// A VM that only a host in standby has room for wakes it, and runs there: the host counts as
/// woken only once its agent has reported again (not on a heartbeat from before it slept), so
/// the VM is not sent to an agent that is not up yet and left in error.
pub fn create_wakes_a_standby_host_and_runs_there() -> Result<(), Failed> {
    let r = create_wakes();
    for n in ["t-wk1", "t-wk2", "t-wk3"] {
        let _ = corral(&["vm", "delete", n]);
    }
    restore();
    r
}

fn create_wakes() -> Result<(), Failed> {
    let h = json(&["host", "standby", "lab-3"])?;
    check(h["power"] == "standby", format!("lab-3 in standby: {h}"))?;
    check(
        json(&["host", "show", "lab-3"])?["state"] == "standby",
        "a host put in standby is shown asleep at once, not ready on its old heartbeats",
    )?;
    // Each host has about 6 GiB: two big VMs fill lab-1 and lab-2, a third needs lab-3.
    for (n, host) in [("t-wk1", "lab-1"), ("t-wk2", "lab-2")] {
        let v = json(&["vm", "create", n, "--memory", "4500M", "--host", host])?;
        check(v["state"] == "running", format!("{n} running: {v}"))?;
    }
    let v = json(&["vm", "create", "t-wk3", "--memory", "4500M"]).map_err(explain)?;
    check(v["state"] == "running" && v["host"] == "lab-3", format!("t-wk3 woke lab-3 and runs there: {v}"))?;
    let o = corral(&["vm", "exec", "t-wk3", "--", "hostname"]);
    check(String::from_utf8_lossy(&o.stdout).trim() == "t-wk3", format!("t-wk3 answers: {}", text(&o)))?;
    let woke = json(&["events"])?
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["kind"] == "host.woken" && e["subject"] == "lab-3");
    check(woke, "the wake-up is an event")?;
    check(host_field("lab-3", "power").as_deref() == Some("on"), "lab-3 is on")
}

pub fn drs_bad_input() -> Result<(), Failed> {
    let before = json(&["drs", "status"])?["settings"].clone();
    let cases: &[(&[&str], &str)] = &[
        (&["drs", "set", "--mode", "sometimes"], "unknown DRS mode"),
        (&["drs", "set", "--target", "1.5"], "out of range"),
        (&["drs", "set", "--high", "0"], "out of range"),
        (&["drs", "set", "--target", "0.9", "--high", "0.5"], "above high"),
        (&["drs", "set", "--interval", "0s"], "invalid interval"),
        (&["drs", "set", "--policy", "fastest"], "policy"),
        (&["drs", "set", "--keep-on", "lab-9"], "unknown host"),
        (&["drs", "set", "--max-migrations", "0"], "out of range"),
        (&["host", "wake", "lab-9"], "no host named"),
    ];
    for (args, want) in cases {
        let msg = fails(args)?;
        check(msg.contains(want), format!("corral {}: expected {want:?} in: {msg}", args.join(" ")))?;
    }
    let after = json(&["drs", "status"])?["settings"].clone();
    check(before == after, format!("settings unchanged:\n{before}\n{after}"))?;
    // A host holding VMs is not put in standby by hand.
    create("t-sb", &["--host", "lab-1"])?;
    let msg = fails(&["host", "standby", "lab-1"])?;
    check(msg.contains("still holds VM"), format!("standby of a busy host refused: {msg}"))?;
    check(host_field("lab-1", "power").as_deref() == Some("on"), "lab-1 stays on")
}
