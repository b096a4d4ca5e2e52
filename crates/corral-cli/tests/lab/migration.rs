//! Live-migration trials on real guests: an idle VM keeps running and reachable and keeps the
//! writes made during the move; a guest dirtying memory faster than the link defeats plain
//! pre-copy but not `auto`; cancel; the destination agent, the source agent or the controller
//! killed mid-way; bad input; evacuation.

use std::time::Duration;

use libtest_mimic::Failed;
use serde_json::Value;

use super::{
    agent_pid, check, corral, counter, counter_or_diagnosis, create, fails, json, kill9, lab, lab_up, text, vm,
    wait_for,
};

/// Runs a shell command in a guest; returns (exit code, stdout).
fn sh(name: &str, script: &str) -> (i32, String) {
    let o = corral(&["vm", "exec", name, "--timeout", "60", "--", "sh", "-c", script]);
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string())
}

/// Starts a migration and returns its record at once.
fn start(name: &str, args: &[&str]) -> Result<Value, Failed> {
    let mut a = vec!["vm", "migrate", name, "--no-wait"];
    a.extend(args);
    json(&a)
}

fn migration(id: &str) -> Result<Value, Failed> {
    let all = json(&["vm", "migrations"])?;
    all.as_array()
        .and_then(|a| a.iter().find(|m| m["id"] == id))
        .cloned()
        .ok_or_else(|| format!("migration {id} not in the history").into())
}

/// Waits for a migration to end; returns its record.
fn finished(id: &str, within: Duration) -> Result<Value, Failed> {
    wait_for(&format!("migration {id} to end"), within, || {
        migration(id).ok().filter(|m| ["completed", "failed", "cancelled"].contains(&m["state"].as_str().unwrap_or("")))
    })
}

/// Waits until a running migration is copying memory (past the disk mirror).
fn copying_memory(id: &str) -> Result<(), Failed> {
    wait_for("the migration to copy memory", Duration::from_secs(60), || {
        migration(id).ok().filter(|m| m["state"] == "running" && m["rounds"].as_u64().unwrap_or(0) >= 1).map(|_| ())
    })
}

/// The VM's directory on a host of the lab, if it exists.
/// Suspends and resumes a VM that took part in a migration (its QEMU keeps the migration's
/// settings: post-copy, pause before switch-over, a bandwidth limit): the save must not use
/// them, and the guest goes on where it was.
fn suspend_and_resume(name: &str) -> Result<(), Failed> {
    let c1 = counter(name)?;
    let o = corral(&["vm", "suspend", name]);
    check(o.status.success(), format!("suspend {name} after a migration: {}", text(&o)))?;
    check(vm(name)?["state"] == "suspended", format!("{name} is suspended"))?;
    let o = corral(&["vm", "resume", name]);
    check(o.status.success(), format!("resume {name}: {}", text(&o)))?;
    let c2 = counter(name)?;
    check(c2 >= c1, format!("{name}'s guest went on where it was ({c1} -> {c2})"))
}

fn copy_on(host: &str, name: &str) -> bool {
    lab().dir.join(host).join("vms").join(name).exists()
}

pub fn idle_vm_moves_live_and_stays_reachable() -> Result<(), Failed> {
    let o = corral(&["profile", "list", "-o", "json"]);
    check(o.status.success(), "profile list")?;
    let f = lab().dir.join("mig.toml");
    std::fs::write(&f, "template = \"base\"\nvcpus = 1\nmemory = \"128M\"\n\n[placement]\nanti_affinity = true\n")?;
    let _ = corral(&["profile", "create", "mig", "--file", &f.display().to_string()]);
    let c = json(&["cluster", "create", "mig-a", "--profile", "mig", "--size", "2"])?;
    check(c["state"] == "succeeded", format!("cluster create: {c}"))?;
    let members = json(&["cluster", "show", "mig-a"])?["members"].as_array().cloned().unwrap_or_default();
    let (a, b) = (&members[0], &members[1]);
    let (an, bn) = (a["name"].as_str().unwrap_or(""), b["name"].as_str().unwrap_or(""));
    let b_ip = b["ip"].as_str().and_then(|i| i.split('/').next()).unwrap_or("").to_string();
    let from = b["host"].as_str().unwrap_or("").to_string();
    let to = ["lab-1", "lab-2", "lab-3"]
        .into_iter()
        .find(|h| *h != from && Some(*h) != a["host"].as_str())
        .ok_or("a third host")?;
    check(sh(an, &format!("ping -c 1 -W 2 {b_ip} >/dev/null")).0 == 0, "peers reach each other before")?;
    check(sh(bn, "echo before > /root/before && sync").0 == 0, "write a file before")?;
    let c1 = counter(bn)?;
    // The peer pings throughout; the member writes a numbered line every 50 ms throughout.
    let (rc, _) = sh(an, &format!("ping -c 100 -i 0.1 -W 1 {b_ip} > /tmp/ping.log 2>&1 &"));
    check(rc == 0, "start the peer's ping")?;
    let (rc, _) = sh(
        bn,
        "(i=0; while [ $i -lt 150 ]; do echo $i >> /root/during; sync; i=$((i+1)); sleep 0.05; done) >/dev/null 2>&1 &",
    );
    check(rc == 0, "start the writer")?;
    // A capped link makes the move last a few seconds, during the writes.
    let m = start(bn, &["--to", to, "--bandwidth", "100M"])?;
    let id = m["id"].as_str().unwrap_or_default().to_string();
    let m = finished(&id, Duration::from_secs(120))?;
    check(m["state"] == "completed", format!("migration completed: {m}"))?;
    for k in ["source", "destination", "mode", "rounds", "total_ms", "downtime_ms", "bytes", "result"] {
        check(m.get(k).is_some(), format!("migrations --output json has {k}: {m}"))?;
    }
    check(m["source"] == from && m["destination"] == to, format!("from {from} to {to}: {m}"))?;
    check(m["rounds"].as_u64().unwrap_or(0) >= 1 && m["bytes"].as_u64().unwrap_or(0) > 0, format!("figures: {m}"))?;
    let v = vm(bn)?;
    check(v["host"] == to && v["state"] == "running", format!("runs at the destination: {v}"))?;
    check(v["ip"] == b["ip"] && v["mac"] == b["mac"] && v["uuid"] == b["uuid"], "same identity")?;
    wait_for("the source's copy to go", Duration::from_secs(30), || (!copy_on(&from, bn)).then_some(()))?;
    let c2 = counter(bn)?;
    check(c2 > c1, format!("the guest counter continued ({c1} -> {c2}), not a reboot"))?;
    // Every line written during the migration is on the disk at the destination.
    wait_for("the writer to finish", Duration::from_secs(60), || {
        (sh(bn, "tail -n 1 /root/during").1.trim() == "149").then_some(())
    })?;
    let (_, lines) = sh(bn, "cat /root/before; wc -l < /root/during; sort -n /root/during | uniq | wc -l");
    let l: Vec<&str> = lines.split_whitespace().collect();
    check(l == ["before", "150", "150"], format!("all writes present: {lines:?}"))?;
    // The peer lost at most a few packets.
    wait_for("the peer's ping to finish", Duration::from_secs(60), || {
        sh(an, "cat /tmp/ping.log").1.contains("packets transmitted").then_some(())
    })?;
    let (_, log) = sh(an, "cat /tmp/ping.log");
    let line = log.lines().find(|l| l.contains("packets transmitted")).unwrap_or_default().to_string();
    let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse().ok()).collect();
    let (sent, got) = (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0));
    check(sent == 100 && sent - got <= 5, format!("peer lost at most 5 of 100 pings: {line}"))?;
    check(sh(an, &format!("ping -c 1 -W 2 {b_ip} >/dev/null")).0 == 0, "peers reach each other after")?;
    let hist = json(&["vm", "migrations", bn])?;
    check(hist.as_array().is_some_and(|h| h.len() == 1), format!("history of {bn}: {hist}"))?;
    let o = corral(&["cluster", "delete", "mig-a"]);
    check(o.status.success(), format!("cluster delete: {}", text(&o)))
}

/// Migrates t-busy to lab-2 over a 40 Mbit/s link, waiting; returns (exit status ok, record).
fn migrate_busy(mode: &str, budget: &str) -> Result<(bool, Value), Failed> {
    let args = ["vm", "migrate", "t-busy", "--to", "lab-2", "--mode", mode, "--bandwidth", "40M", "--budget", budget];
    let o = corral(&[&args[..], &["-o", "json"]].concat());
    let m: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("{e}: {}", text(&o)))?;
    Ok((o.status.success(), m))
}

pub fn busy_vm_defeats_precopy_but_not_auto() -> Result<(), Failed> {
    create("t-busy", &["--host", "lab-1", "--workload", "dirty:24:48"])?;
    // 40 Mbit/s (5 MB/s) is slower than the guest dirties its 48 MiB.
    let (ok, m) = migrate_busy("precopy", "10s")?;
    check(!ok, format!("precopy must not succeed: {m}"))?;
    check(m["state"] == "failed", format!("precopy failed: {m}"))?;
    check(m["result"].as_str().is_some_and(|r| r.contains("did not converge")), format!("says why: {m}"))?;
    let v = vm("t-busy")?;
    check(v["host"] == "lab-1" && v["state"] == "running", format!("still running at the source: {v}"))?;
    check(!copy_on("lab-2", "t-busy"), "nothing left at the destination")?;
    let c1 = counter("t-busy")?;
    let (ok, m) = migrate_busy("auto", "30s")?;
    check(ok, format!("auto completes: {m}"))?;
    check(m["state"] == "completed" && m["used_mode"] == "postcopy", format!("auto switched to post-copy: {m}"))?;
    check(m["actions"].as_array().is_some_and(|a| !a.is_empty()), format!("the policy says what it did: {m}"))?;
    let v = vm("t-busy")?;
    check(v["host"] == "lab-2" && v["state"] == "running", format!("runs at the destination: {v}"))?;
    let c2 = counter("t-busy")?;
    check(c2 > c1, format!("guest counter continued ({c1} -> {c2})"))?;
    suspend_and_resume("t-busy")
}

pub fn cancel_midway_keeps_vm_at_source() -> Result<(), Failed> {
    create("t-cancel", &["--host", "lab-1"])?;
    let c1 = counter("t-cancel")?;
    // 8 Mbit/s: the move would take a minute.
    let m = start("t-cancel", &["--to", "lab-3", "--bandwidth", "8M"])?;
    let id = m["id"].as_str().unwrap_or_default().to_string();
    copying_memory(&id)?;
    let o = corral(&["vm", "migrate", "t-cancel", "--cancel", "-o", "json"]);
    check(o.status.success(), format!("cancel: {}", text(&o)))?;
    let m = finished(&id, Duration::from_secs(60))?;
    check(m["state"] == "cancelled", format!("cancelled: {m}"))?;
    let v = vm("t-cancel")?;
    check(v["host"] == "lab-1" && v["state"] == "running", format!("still at the source: {v}"))?;
    check(counter("t-cancel")? > c1, "the guest kept running")?;
    wait_for("the destination's copy to go", Duration::from_secs(30), || {
        (!copy_on("lab-3", "t-cancel")).then_some(())
    })?;
    let msg = fails(&["vm", "migrate", "t-cancel", "--cancel"])?;
    check(msg.contains("no migration"), format!("nothing left to cancel: {msg}"))?;
    suspend_and_resume("t-cancel")
}

pub fn destination_agent_killed_midway() -> Result<(), Failed> {
    create("t-dkill", &["--host", "lab-1"])?;
    let m = start("t-dkill", &["--to", "lab-2", "--bandwidth", "8M"])?;
    let id = m["id"].as_str().unwrap_or_default().to_string();
    copying_memory(&id)?;
    kill9(agent_pid("lab-2")?);
    let m = finished(&id, Duration::from_secs(120))?;
    check(m["state"] == "failed", format!("the migration failed: {m}"))?;
    let v = vm("t-dkill")?;
    check(v["host"] == "lab-1" && v["state"] == "running", format!("still running at the source: {v}"))?;
    let (rc, _) = sh("t-dkill", "true");
    check(rc == 0, "the guest answers at the source")?;
    lab_up()?;
    wait_for("3 hosts ready", Duration::from_secs(30), || super::hosts_ready().ok().filter(|n| *n == 3))?;
    wait_for("the half-arrived copy to go", Duration::from_secs(30), || (!copy_on("lab-2", "t-dkill")).then_some(()))?;
    check(vm("t-dkill")?["host"] == "lab-1", "one copy, at the source")?;
    let h = json(&["host", "show", "lab-2"])?;
    check(h["state"] == "ready", format!("lab-2 stays ready after its agent's restart: {h}"))
}

pub fn migration_bad_input() -> Result<(), Failed> {
    wait_for("3 hosts ready", Duration::from_secs(30), || super::hosts_ready().ok().filter(|n| *n == 3))?;
    create("t-mbad", &["--host", "lab-1"])?;
    let cases: &[(&[&str], &str)] = &[
        (&["vm", "migrate", "t-mbad", "--to", "lab-1"], "already runs on lab-1"),
        (&["vm", "migrate", "t-mbad", "--to", "lab-9"], "unknown host"),
        (&["vm", "migrate", "t-mbad", "--mode", "sideways"], "unknown migration mode"),
        (&["vm", "migrate", "t-mbad", "--bandwidth", "fast"], "invalid bandwidth"),
        (&["vm", "migrate", "no-such-vm"], "no VM named"),
    ];
    let before = vm("t-mbad")?;
    for (args, want) in cases {
        let msg = fails(args)?;
        check(msg.contains(want), format!("corral {}: expected {want:?} in: {msg}", args.join(" ")))?;
    }
    // A cordoned host and a host without room are refused.
    let o = corral(&["host", "cordon", "lab-3"]);
    check(o.status.success(), "cordon")?;
    let msg = fails(&["vm", "migrate", "t-mbad", "--to", "lab-3"])?;
    check(msg.contains("cordoned"), format!("cordoned host refused: {msg}"))?;
    let o = corral(&["host", "uncordon", "lab-3"]);
    check(o.status.success(), "uncordon")?;
    let cap = json(&["host", "show", "lab-2"])?["capacity"]["memory_mib"].as_u64().unwrap_or(0);
    // Leaves lab-2 less free memory than t-mbad's 128 MiB.
    let big = format!("{}M", cap.saturating_sub(64).max(256));
    let o = corral(&["vm", "create", "t-mfill", "--host", "lab-2", "--memory", &big]);
    check(o.status.success(), format!("a VM filling lab-2: {}", text(&o)))?;
    let msg = fails(&["vm", "migrate", "t-mbad", "--to", "lab-2"])?;
    check(msg.contains("lab-2") && msg.contains("room"), format!("full host refused: {msg}"))?;
    super::delete("t-mfill")?;
    // Paused, suspended, inactive: say what to do.
    json(&["vm", "pause", "t-mbad"])?;
    let msg = fails(&["vm", "migrate", "t-mbad", "--to", "lab-2"])?;
    check(msg.contains("paused") && msg.contains("resume"), format!("paused VM: {msg}"))?;
    json(&["vm", "resume", "t-mbad"])?;
    json(&["vm", "stop", "t-mbad"])?;
    let msg = fails(&["vm", "migrate", "t-mbad", "--to", "lab-2"])?;
    check(msg.contains("inactive") && msg.contains("vm move"), format!("inactive VM: {msg}"))?;
    json(&["vm", "start", "t-mbad"])?;
    // Two migrations of one VM at once.
    let m = start("t-mbad", &["--to", "lab-2", "--bandwidth", "8M"])?;
    let msg = fails(&["vm", "migrate", "t-mbad", "--to", "lab-3"])?;
    check(msg.contains("already being migrated") || msg.contains("busy"), format!("second migration refused: {msg}"))?;
    let o = corral(&["vm", "migrate", "t-mbad", "--cancel"]);
    check(o.status.success(), format!("cancel the first: {}", text(&o)))?;
    finished(m["id"].as_str().unwrap_or_default(), Duration::from_secs(60))?;
    let after = vm("t-mbad")?;
    check(after["host"] == before["host"] && after["state"] == "running", format!("untouched: {after}"))
}

pub fn evacuate_moves_every_vm_off() -> Result<(), Failed> {
    wait_for("3 hosts ready", Duration::from_secs(30), || super::hosts_ready().ok().filter(|n| *n == 3))?;
    for n in ["t-ev1", "t-ev2", "t-ev3"] {
        create(n, &["--host", "lab-2"])?;
    }
    let c1: Vec<u64> = ["t-ev1", "t-ev2", "t-ev3"].iter().map(|n| counter(n)).collect::<Result<_, _>>()?;
    let o = corral(&["host", "evacuate", "lab-2", "-o", "json"]);
    check(o.status.success(), format!("evacuate: {}", text(&o)))?;
    let h = json(&["host", "show", "lab-2"])?;
    check(h["cordoned"] == true && h["maintenance"] == "evacuated", format!("lab-2 shown evacuated: {h}"))?;
    for (i, n) in ["t-ev1", "t-ev2", "t-ev3"].iter().enumerate() {
        let v = vm(n)?;
        check(v["host"] != "lab-2" && v["state"] == "running", format!("{n} moved off live: {v}"))?;
        check(counter(n)? > c1[i], format!("{n} kept running"))?;
    }
    // At most two left lab-2 at a time (the default outbound limit): the third waited.
    let ms: Vec<Value> = json(&["vm", "migrations"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["vm"].as_str().is_some_and(|v| v.starts_with("t-ev")) && m["state"] == "completed")
        .collect();
    check(ms.len() == 3, format!("three migrations: {ms:?}"))?;
    let span = |m: &Value| (m["started_ms"].as_u64().unwrap_or(0), m["ended_ms"].as_u64().unwrap_or(u64::MAX));
    for m in &ms {
        let (s, _) = span(m);
        let overlapping = ms.iter().filter(|o| span(o).0 <= s && s < span(o).1).count();
        check(overlapping <= 2, format!("no more than 2 at once from lab-2: {ms:?}"))?;
    }
    check(json(&["vm", "list"])?.as_array().is_some_and(|a| a.iter().all(|v| v["host"] != "lab-2")), "lab-2 empty")
}

pub fn source_agent_killed_midway_keeps_vm_at_source() -> Result<(), Failed> {
    create("t-skill", &["--host", "lab-1"])?;
    let c1 = counter("t-skill")?;
    let m = start("t-skill", &["--to", "lab-2", "--bandwidth", "100M"])?;
    let id = m["id"].as_str().unwrap_or_default().to_string();
    copying_memory(&id)?;
    kill9(agent_pid("lab-1")?);
    lab_up()?;
    wait_for("3 hosts ready", Duration::from_secs(30), || super::hosts_ready().ok().filter(|n| *n == 3))?;
    let m = finished(&id, Duration::from_secs(120))?;
    check(m["state"] == "failed", format!("the migration was called off: {m}"))?;
    let v = vm("t-skill")?;
    check(v["host"] == "lab-1" && v["state"] == "running", format!("still running at the source: {v}"))?;
    check(counter("t-skill")? > c1, "the guest kept running at the source")?;
    wait_for("the arriving copy to go", Duration::from_secs(30), || (!copy_on("lab-2", "t-skill")).then_some(()))
}

/// The controller is SIGKILLed while it drives a migration; the restarted controller picks the
/// migration up from its stored record and commits it. The link cap and the 50 ms downtime
/// target give many short pre-copy rounds of an idle guest: the case that used to arrive with
/// stale memory under TCG (see `corral-agent`'s `qemu::ram_size`), so the guest must also work
/// at the destination.
pub fn controller_killed_midway_then_committed() -> Result<(), Failed> {
    create("t-ckill", &["--host", "lab-1"])?;
    let c1 = counter("t-ckill")?;
    let m = start("t-ckill", &["--to", "lab-2", "--mode", "precopy", "--max-downtime", "50ms", "--bandwidth", "40M"])?;
    let id = m["id"].as_str().unwrap_or_default().to_string();
    copying_memory(&id)?;
    let cpid = lab().state()["controller_pid"].as_u64().ok_or("controller pid")?;
    kill9(cpid);
    wait_for("the controller to die", Duration::from_secs(10), || (!super::pid_alive(cpid)).then_some(()))?;
    lab_up()?;
    let m = finished(&id, Duration::from_secs(120))?;
    check(m["state"] == "completed", format!("the restarted controller finished the migration: {m}"))?;
    let v = vm("t-ckill")?;
    check(v["host"] == "lab-2" && v["state"] == "running", format!("runs at the destination: {v}"))?;
    let c2 = counter_or_diagnosis("t-ckill")?;
    check(c2 > c1, format!("guest counter continued ({c1} -> {c2})"))?;
    let (rc, out) = sh("t-ckill", "echo alive; cat /proc/uptime");
    check(rc == 0 && out.contains("alive"), format!("the guest works at the destination: {out}"))?;
    wait_for("the source's copy to go", Duration::from_secs(30), || (!copy_on("lab-1", "t-ckill")).then_some(()))
}
