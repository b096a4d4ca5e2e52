//! The replicated control plane on the live lab: a second lab (index 202) with two
//! controllers sharing a 3-member etcd cluster. The leader is killed in the middle of a
//! cluster deployment; the standby takes over within seconds and finishes it, and the CLI,
//! given both URLs, follows whichever leads. Then the leader is paused (SIGSTOP) past its lease
//! in the middle of another deployment: the other takes over, and once resumed the deposed
//! one lands no write and starts no VM twice. Then etcd loses its quorum: the leader stops
//! acting, and every VM keeps running for the 60 s it lasts. The lab is always taken down at
//! the end.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde_json::Value;

use super::{check, exe, kill9, pid_alive, text, wait_for};

/// The index of this trial's own lab: the next after the shared lab's
/// (`CORRAL_TEST_LAB_INDEX`, 201 by default), so the two never meet.
fn index() -> String {
    let main = std::env::var("CORRAL_TEST_LAB_INDEX").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(201);
    (main + 1).to_string()
}

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("corral-test-lab-{}", index()))
}

/// `corral ARGS` against this lab: both controllers' URLs, the lab's token.
fn c(args: &[&str]) -> Output {
    let i = index();
    let urls = format!("http://198.18.{i}.1:7700,http://198.18.{i}.1:7710");
    Command::new(exe()).args(args).env("CORRAL_URL", urls).env("CORRAL_LAB_DIR", dir()).output().expect("run corral")
}

fn j(args: &[&str]) -> Result<Value, Failed> {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let o = c(&a);
    check(o.status.success(), format!("corral {}: {}", args.join(" "), text(&o)))?;
    serde_json::from_slice(&o.stdout).map_err(|e| format!("corral {}: {e}", args.join(" ")).into())
}

fn leader() -> Option<String> {
    let cs = j(&["ha", "controllers"]).ok()?;
    cs.as_array()?.iter().find(|c| c["leading"] == true).and_then(|c| c["url"].as_str().map(String::from))
}

pub fn leader_killed_mid_deployment_standby_finishes() -> Result<(), Failed> {
    let d = dir().display().to_string();
    let _ = c(&["lab", "down", "--dir", &d]);
    let r = run(&d);
    let down = c(&["lab", "down", "--dir", &d]);
    r?;
    check(down.status.success(), format!("lab down: {}", text(&down)))
}

fn run(d: &str) -> Result<(), Failed> {
    let o = c(&["lab", "up", "--hosts", "2", "--controllers", "2", "--index", &index(), "--dir", d]);
    check(o.status.success(), format!("lab up with two controllers: {}", text(&o)))?;
    check(text(&o).contains(":7710"), format!("both controllers exported: {}", text(&o)))?;
    j(&["drs", "set", "--mode", "off"])?;
    let first = wait_for("a leader", Duration::from_secs(30), leader)?;
    let pf = dir().join("small.toml");
    std::fs::write(&pf, "template = \"base\"\nvcpus = 1\nmemory = \"128M\"\n")?;
    let o = c(&["profile", "create", "small", "--file", &pf.display().to_string()]);
    check(o.status.success(), format!("profile: {}", text(&o)))?;
    let started = j(&["cluster", "create", "c-lead", "--profile", "small", "--size", "6", "--no-wait"])?;
    wait_for("some members running", Duration::from_secs(120), || {
        let v = j(&["cluster", "show", "c-lead"]).ok()?;
        let n = v["members"].as_array()?.iter().filter(|m| m["state"] == "running").count();
        (1..6).contains(&n).then_some(())
    })?;
    // Kill the leader.
    let st: Value = serde_json::from_slice(&std::fs::read(dir().join("lab.json"))?)?;
    let pid = if st["url"] == first.as_str() {
        st["controller_pid"].as_u64()
    } else {
        st["standby_controllers"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["url"] == first.as_str()))
            .and_then(|x| x["pid"].as_u64())
    }
    .ok_or("the leader's PID")?;
    let t0 = Instant::now();
    kill9(pid);
    wait_for("the leader to die", Duration::from_secs(10), || (!pid_alive(pid)).then_some(()))?;
    let (second, took) = wait_for("the standby to take over", Duration::from_secs(30), || {
        leader().filter(|l| *l != first).map(|l| (l, t0.elapsed()))
    })?;
    eprintln!("  leader {first} killed; {second} leads after {took:?}");
    // The new leader finishes the deployment: six members running, one each.
    let v = wait_for("the deployment to finish under the new leader", Duration::from_secs(240), || {
        let v = j(&["cluster", "show", "c-lead"]).ok()?;
        let ms = v["members"].as_array()?;
        (ms.len() == 6 && ms.iter().all(|m| m["state"] == "running")).then_some(v)
    })?;
    let names: Vec<&str> = v["members"].as_array().into_iter().flatten().filter_map(|m| m["name"].as_str()).collect();
    let mut uniq = names.clone();
    uniq.sort();
    uniq.dedup();
    check(uniq.len() == 6, format!("six distinct members: {names:?}"))?;
    let op = j(&["operation", "show", started["id"].as_str().unwrap_or_default()])?;
    check(op["state"] != "running", format!("the old leader's operation is settled by the new one: {op}"))?;
    let ev = j(&["events"])?;
    check(
        ev.as_array()
            .is_some_and(|a| a.iter().any(|e| e["kind"] == "controller.leader" && e["subject"] == second.as_str())),
        "the takeover is an event",
    )?;
    let hosts = j(&["host", "list"])?;
    check(
        hosts.as_array().is_some_and(|h| h.len() == 2 && h.iter().all(|h| h["state"] == "ready")),
        format!("the agents report to the new leader: {hosts}"),
    )?;
    paused_leader_lands_nothing(d, &second)?;
    // etcd loses its quorum: the leader stops acting rather than act on state it cannot
    // write, and the CLI says no controller leads. The VMs are not the control plane's: every
    // one keeps running, in the same QEMU process, through 60 s without a quorum.
    let vms = j(&["vm", "list"])?;
    let running: Vec<(String, u64)> = vms
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["state"] == "running")
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), super::qemu_pid(v)?)))
        .collect();
    check(running.len() >= 6, format!("the cluster's members run before the quorum is lost: {running:?}"))?;
    let st: Value = serde_json::from_slice(&std::fs::read(dir().join("lab.json"))?)?;
    let etcd: Vec<u64> =
        st["etcd"].as_array().into_iter().flatten().filter_map(|e| e["pid"].as_u64()).take(2).collect();
    check(etcd.len() == 2, format!("two etcd members to stop: {}", st["etcd"]))?;
    for p in &etcd {
        kill9(*p);
    }
    let t1 = Instant::now();
    wait_for("the leader to step down without etcd", Duration::from_secs(30), || leader().is_none().then_some(()))?;
    eprintln!("  etcd lost its quorum: no controller leads after {:?}", t1.elapsed());
    let o = c(&["vm", "list"]);
    check(
        !o.status.success() && text(&o).contains("standby"),
        format!("requests are refused, saying why: {}", text(&o)),
    )?;
    super::ha::all_alive_for(&running, Duration::from_secs(60), "etcd's loss of quorum")
}

/// The PID of the controller at `url`.
fn controller_pid(url: &str) -> Result<u64, Failed> {
    let st: Value = serde_json::from_slice(&std::fs::read(dir().join("lab.json"))?)?;
    let pid = if st["url"] == url {
        st["controller_pid"].as_u64()
    } else {
        st["standby_controllers"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["url"] == url))
            .and_then(|x| x["pid"].as_u64())
    };
    pid.ok_or_else(|| format!("the PID of controller {url}").into())
}

/// Leadership is enforced in the store: the leader is paused past its lease while its
/// deployment is in flight, the other controller takes over and finishes it, and the paused
/// one, resumed, lands nothing: every member runs once, on one host, at every sampled moment.
fn paused_leader_lands_nothing(d: &str, leading: &str) -> Result<(), Failed> {
    // The controller killed earlier comes back as a standby.
    let o = c(&["lab", "up", "--hosts", "2", "--controllers", "2", "--index", &index(), "--dir", d]);
    check(o.status.success(), format!("lab up again: {}", text(&o)))?;
    let pid = controller_pid(leading)?;
    let names: Vec<String> = (1..=4).map(|i| format!("c-pause-{i}")).collect();
    let sampler = super::ha::DoubleRuns::start(&names);
    j(&["cluster", "create", "c-pause", "--profile", "small", "--size", "4", "--no-wait"])?;
    wait_for("the deployment to be under way", Duration::from_secs(120), || {
        let v = j(&["cluster", "show", "c-pause"]).ok()?;
        v["members"].as_array()?.iter().any(|m| m["state"] == "starting" || m["state"] == "running").then_some(())
    })?;
    let i = index();
    let other = [format!("http://198.18.{i}.1:7700"), format!("http://198.18.{i}.1:7710")]
        .into_iter()
        .find(|u| u != leading)
        .ok_or("the other controller's URL")?;
    // Asked alone: the paused one would keep a request waiting until the CLI gives up on it.
    let leads = |url: &str| {
        let o = Command::new(exe())
            .args(["ha", "controllers", "--output", "json"])
            .env("CORRAL_URL", url)
            .env("CORRAL_LAB_DIR", dir())
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.as_array()?.iter().any(|c| c["url"] == url && c["leading"] == true).then_some(())
    };
    let t0 = Instant::now();
    let _ = Command::new("kill").args(["-STOP", &pid.to_string()]).status();
    let took = wait_for("the other controller to take over", Duration::from_secs(30), || leads(&other));
    let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
    took?;
    eprintln!("  leader {leading} paused; {other} leads after {:?}; the paused one resumed", t0.elapsed());
    let v = wait_for("the deployment to finish under the new leader", Duration::from_secs(240), || {
        let v = j(&["cluster", "show", "c-pause"]).ok()?;
        let ms = v["members"].as_array()?;
        (ms.len() == 4 && ms.iter().all(|m| m["state"] == "running")).then_some(v)
    })?;
    // Give the resumed controller's in-flight work time to try its writes: it has stepped
    // down once the CLI sees one leader, the other.
    wait_for("the resumed controller to stand by", Duration::from_secs(30), || {
        let cs = j(&["ha", "controllers"]).ok()?;
        let a = cs.as_array()?;
        let leaders: Vec<&Value> = a.iter().filter(|c| c["leading"] == true).collect();
        (leaders.len() == 1 && leaders[0]["url"] == other.as_str()).then_some(())
    })?;
    let samples = sampler.finish()?;
    eprintln!("  no member ran twice ({samples} samples)");
    let members = v["members"].as_array().cloned().unwrap_or_default();
    let mut seen: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
    seen.sort();
    seen.dedup();
    check(seen.len() == 4, format!("four distinct members: {members:?}"))?;
    check(leader().as_deref() == Some(other.as_str()), "the new leader still leads")
}
