//! Virtual cluster trials: profiles, four-step deployment, placement policies, scaling,
//! suspend/resume, template shipping, crash recovery mid-deployment, address management, bad
//! input, and the API's token and OpenAPI document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use libtest_mimic::Failed;
use serde_json::Value;

use super::{check, corral, fails, json, kill9, lab, lab_up, pid_alive, text, wait_for};

/// Writes a profile file and creates the profile.
pub(super) fn profile(name: &str, toml: &str) -> Result<(), Failed> {
    let f = lab().dir.join(format!("{name}.toml"));
    std::fs::write(&f, toml)?;
    let o = corral(&["profile", "create", name, "--file", &f.display().to_string()]);
    check(o.status.success(), format!("profile create {name}: {}", text(&o)))
}

const SMALL: &str = "template = \"base\"\nvcpus = 1\nmemory = \"128M\"\n";

fn small() -> Result<(), Failed> {
    let have = json(&["profile", "list"])?;
    if have.as_array().is_some_and(|a| a.iter().any(|p| p["name"] == "small")) {
        return Ok(());
    }
    profile("small", SMALL)
}

fn show(name: &str) -> Result<Value, Failed> {
    json(&["cluster", "show", name])
}

fn members(v: &Value) -> Vec<Value> {
    v["members"].as_array().cloned().unwrap_or_default()
}

/// Runs `cluster ARGS` (which waits for the operation) and returns the operation.
fn op(args: &[&str]) -> Result<Value, Failed> {
    let mut a = vec!["cluster"];
    a.extend(args);
    let r = json(&a)?;
    check(r["state"] == "succeeded", format!("cluster {}: operation did not succeed: {r}", args.join(" ")))?;
    Ok(r)
}

fn delete_cluster(name: &str) -> Result<(), Failed> {
    op(&["delete", name])?;
    let msg = fails(&["cluster", "show", name])?;
    check(msg.contains("no cluster named"), format!("cluster {name} gone: {msg}"))
}

fn per_host(v: &Value) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in members(v) {
        *m.entry(x["host"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    m
}

/// VM directories the agents hold, by VM name → hosts holding one.
fn agent_disks() -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in 1..=3 {
        let host = format!("lab-{h}");
        if let Ok(rd) = std::fs::read_dir(lab().dir.join(&host).join("vms")) {
            for e in rd.flatten() {
                m.entry(e.file_name().to_string_lossy().to_string()).or_default().push(host.clone());
            }
        }
    }
    m
}

/// Exactly the cluster's members exist, each once, on the host the controller says, running,
/// with distinct addresses; no other disk of this cluster is left on any host.
fn converged(name: &str, size: usize) -> Result<(), Failed> {
    let v = show(name)?;
    let ms = members(&v);
    check(ms.len() == size, format!("{name} has {size} members: {}", ms.len()))?;
    let ips: BTreeSet<&str> = ms.iter().filter_map(|m| m["ip"].as_str()).collect();
    check(ips.len() == size, format!("{name}: distinct addresses: {ips:?}"))?;
    let disks = agent_disks();
    for m in &ms {
        let n = m["name"].as_str().unwrap_or_default();
        check(m["state"] == "running", format!("{n} running: {m}"))?;
        let holders = disks.get(n).cloned().unwrap_or_default();
        check(
            holders == vec![m["host"].as_str().unwrap_or_default().to_string()],
            format!("{n} exists once, on its host: {holders:?}"),
        )?;
    }
    let prefix = format!("{name}-");
    let strays: Vec<&String> =
        disks.keys().filter(|k| k.starts_with(&prefix) && !ms.iter().any(|m| m["name"] == k.as_str())).collect();
    check(strays.is_empty(), format!("no leaked VM of {name} on any host: {strays:?}"))
}

fn wait_converged(name: &str, size: usize, timeout: Duration) -> Result<(), Failed> {
    let mut last = String::new();
    let r = wait_for(&format!("cluster {name} to converge to {size} running members"), timeout, || {
        match converged(name, size) {
            Ok(()) => Some(()),
            Err(e) => {
                last = e.message().unwrap_or_default().to_string();
                None
            }
        }
    });
    r.map_err(|e| format!("{}: last check said: {last}", e.message().unwrap_or_default()).into())
}

pub fn spread_deploys_with_identity() -> Result<(), Failed> {
    small()?;
    let r = op(&["create", "c-spread", "--profile", "small", "--size", "6", "--spread", "--subnet", "100.64.10.0/24"])?;
    let steps: Vec<&str> = r["steps"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    check(steps == ["configure", "place", "prepare", "execute"], format!("the four steps, timed: {steps:?}"))?;
    check(r["vms"] == 6 && r["hosts"].as_array().map(Vec::len) == Some(3), format!("summary: {r}"))?;
    let v = show("c-spread")?;
    let counts = per_host(&v);
    check(counts.len() == 3 && counts.values().all(|c| *c == 2), format!("spread: 2 per host: {counts:?}"))?;
    for m in members(&v) {
        let name = m["name"].as_str().unwrap_or_default();
        let ip = m["ip"].as_str().unwrap_or_default();
        check(
            ip.starts_with("100.64.10.") && ip.ends_with("/24"),
            format!("{name} has an address of the subnet: {ip}"),
        )?;
        let o = corral(&["vm", "exec", name, "--", "sh", "-c", "hostname; ip -4 -o addr show eth0"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        check(out.lines().next() == Some(name), format!("{name}: guest hostname: {out}"))?;
        check(out.contains(&format!("inet {ip}")), format!("{name}: guest configured {ip} on eth0: {out}"))?;
    }
    let table = text(&corral(&["cluster", "show", "c-spread"]));
    check(
        table.contains("c-spread-6") && table.contains("100.64.10."),
        format!("cluster show lists members and IPs: {table}"),
    )?;
    delete_cluster("c-spread")?;
    check(!agent_disks().keys().any(|k| k.starts_with("c-spread-")), "no member disk left after delete")
}

pub fn pack_uses_fewest_hosts() -> Result<(), Failed> {
    small()?;
    op(&["create", "c-pack", "--profile", "small", "--size", "4", "--pack"])?;
    let counts = per_host(&show("c-pack")?);
    check(counts.len() == 1, format!("pack: all on one host: {counts:?}"))?;
    delete_cluster("c-pack")
}

pub fn anti_affinity_is_honoured() -> Result<(), Failed> {
    profile("anti", &format!("{SMALL}\n[placement]\nanti_affinity = true\n"))?;
    let before = json(&["vm", "list"])?;
    let msg = fails(&["cluster", "create", "c-anti4", "--profile", "anti", "--size", "4"])?;
    check(msg.contains("anti-affinity"), format!("4 members on 3 hosts refused, naming anti-affinity: {msg}"))?;
    check(json(&["vm", "list"])? == before, "nothing created by the refused request")?;
    op(&["create", "c-anti", "--profile", "anti", "--size", "3"])?;
    let counts = per_host(&show("c-anti")?);
    check(counts.len() == 3, format!("one member per host: {counts:?}"))?;
    let msg = fails(&["cluster", "scale", "c-anti", "--size", "4"])?;
    check(msg.contains("anti-affinity"), format!("scaling past the hosts refused: {msg}"))?;
    delete_cluster("c-anti")
}

pub fn scale_up_and_down() -> Result<(), Failed> {
    small()?;
    op(&["create", "c-scale", "--profile", "small", "--size", "2"])?;
    let r = op(&["scale", "c-scale", "--size", "4"])?;
    check(r["vms"] == 4, format!("4 members after growing: {r}"))?;
    converged("c-scale", 4)?;
    let before: Vec<String> =
        members(&show("c-scale")?).iter().filter_map(|m| m["ip"].as_str().map(String::from)).collect();
    op(&["scale", "c-scale", "--size", "1"])?;
    let v = show("c-scale")?;
    let left: Vec<String> = members(&v).iter().filter_map(|m| m["name"].as_str().map(String::from)).collect();
    check(left == ["c-scale-1"], format!("the newest members went first: {left:?}"))?;
    check(
        !agent_disks().keys().any(|k| ["c-scale-2", "c-scale-3", "c-scale-4"].contains(&k.as_str())),
        "removed members' disks are gone",
    )?;
    // Freed addresses are given again; member numbers are not.
    op(&["scale", "c-scale", "--size", "2"])?;
    let v = show("c-scale")?;
    let newest = members(&v).last().cloned().unwrap_or_default();
    check(newest["name"] == "c-scale-5", format!("member numbers are not reused: {newest}"))?;
    check(
        before.contains(&newest["ip"].as_str().unwrap_or_default().to_string()),
        format!("a freed address is reused: {newest}"),
    )?;
    delete_cluster("c-scale")
}

fn counter(vm: &str) -> Result<u64, Failed> {
    let o = corral(&["vm", "exec", vm, "--", "cat", "/run/corral-counter"]);
    check(o.status.success(), format!("counter of {vm}: {}", text(&o)))?;
    String::from_utf8_lossy(&o.stdout).trim().parse().map_err(|e| format!("counter of {vm}: {e}").into())
}

fn allocated_mib() -> Result<u64, Failed> {
    let hs = json(&["host", "list"])?;
    Ok(hs.as_array().into_iter().flatten().map(|h| h["allocated"]["memory_mib"].as_u64().unwrap_or(0)).sum())
}

pub fn suspend_and_resume_a_cluster() -> Result<(), Failed> {
    small()?;
    op(&["create", "c-susp", "--profile", "small", "--size", "2"])?;
    let before = members(&show("c-susp")?);
    let mut counts = BTreeMap::new();
    for m in &before {
        let n = m["name"].as_str().unwrap_or_default().to_string();
        let c = wait_for("counter >= 5", Duration::from_secs(30), || counter(&n).ok().filter(|c| *c >= 5))?;
        counts.insert(n, c);
    }
    let held = allocated_mib()?;
    op(&["suspend", "c-susp"])?;
    let v = show("c-susp")?;
    check(v["state"] == "suspended", format!("cluster suspended: {}", v["state"]))?;
    check(members(&v).iter().all(|m| m["state"] == "suspended"), "every member suspended")?;
    check(allocated_mib()? + 256 <= held, "suspended members release their memory for others")?;
    let msg = fails(&["cluster", "scale", "c-susp", "--size", "3"])?;
    check(
        msg.contains("suspended") && msg.contains("resume"),
        format!("scaling a suspended cluster is refused: {msg}"),
    )?;
    // The first member's host goes into maintenance meanwhile: that member must resume
    // elsewhere, with its memory and disk.
    let moved_from = before[0]["host"].as_str().unwrap_or_default().to_string();
    let o = corral(&["host", "cordon", &moved_from]);
    check(o.status.success(), format!("cordon: {}", text(&o)))?;
    op(&["resume", "c-susp"])?;
    let o = corral(&["host", "uncordon", &moved_from]);
    check(o.status.success(), format!("uncordon: {}", text(&o)))?;
    let v = show("c-susp")?;
    check(v["state"] == "active", "cluster active again")?;
    let first = &members(&v)[0];
    check(first["host"] != moved_from.as_str(), format!("the member on the cordoned host resumed elsewhere: {first}"))?;
    check(
        !agent_disks().get(first["name"].as_str().unwrap_or_default()).is_some_and(|h| h.contains(&moved_from)),
        "no copy left on the old host",
    )?;
    for (m, b) in members(&v).iter().zip(&before) {
        let n = m["name"].as_str().unwrap_or_default();
        check(m["state"] == "running", format!("{n} running"))?;
        check(m["ip"] == b["ip"] && m["mac"] == b["mac"] && m["uuid"] == b["uuid"], format!("{n} kept its identity"))?;
        let c = counter(n)?;
        check(c >= counts[n], format!("{n}: guest state kept ({} -> {c})", counts[n]))?;
    }
    delete_cluster("c-susp")
}

pub fn templates_are_sent_once_per_host() -> Result<(), Failed> {
    // A new template arrives in the library; no host has it yet.
    let lib = lab().dir.join("library");
    for (from, to) in
        [("vmlinuz", "shipped.vmlinuz"), ("initrd.img", "shipped.initrd"), ("base.qcow2", "shipped.qcow2")]
    {
        std::fs::hard_link(lib.join(from), lib.join(to))?;
    }
    let mut meta: Value = serde_json::from_slice(&std::fs::read(lib.join("base.json"))?)?;
    meta["name"] = "shipped".into();
    meta["kernel"] = "shipped.vmlinuz".into();
    meta["initrd"] = "shipped.initrd".into();
    meta["disk"] = "shipped.qcow2".into();
    std::fs::write(lib.join("shipped.json"), serde_json::to_vec(&meta)?)?;
    let t = json(&["template", "list"])?;
    let shipped = t
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "shipped"))
        .cloned()
        .ok_or("library template listed")?;
    check(shipped["hosts"].as_array().is_some_and(|h| h.is_empty()), format!("no host holds it yet: {shipped}"))?;
    profile("shipped", "template = \"shipped\"\nvcpus = 1\nmemory = \"128M\"\n")?;
    op(&["create", "c-ship", "--profile", "shipped", "--size", "6"])?;
    let sent: Vec<Value> = json(&["events"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["kind"] == "template.sent" && e["message"].as_str().is_some_and(|m| m.contains("template shipped "))
        })
        .cloned()
        .collect();
    let hosts: BTreeSet<&str> = sent.iter().filter_map(|e| e["subject"].as_str()).collect();
    check(
        sent.len() == 3 && hosts.len() == 3,
        format!("sent once to each of the 3 hosts, though 6 VMs needed it: {sent:?}"),
    )?;
    let disk = Path::new(&lab().dir).join("lab-1/templates/shipped.qcow2");
    check(disk.exists(), "the host holds the template now")?;
    delete_cluster("c-ship")
}

pub fn controller_killed_mid_deployment_finishes() -> Result<(), Failed> {
    small()?;
    let started = json(&["cluster", "create", "c-crash", "--profile", "small", "--size", "10", "--no-wait"])?;
    check(started["state"] == "running", format!("deployment started: {started}"))?;
    // Kill the controller once some members run but not all.
    wait_for("some members running", Duration::from_secs(120), || {
        let v = show("c-crash").ok()?;
        let n = members(&v).iter().filter(|m| m["state"] == "running").count();
        (1..10).contains(&n).then_some(())
    })?;
    let cpid = lab().state()["controller_pid"].as_u64().ok_or("controller pid")?;
    kill9(cpid);
    wait_for("the controller to die", Duration::from_secs(10), || (!pid_alive(cpid)).then_some(()))?;
    lab_up()?;
    wait_converged("c-crash", 10, Duration::from_secs(240))?;
    let op = json(&["operation", "show", started["id"].as_str().unwrap_or_default()])?;
    check(
        op["state"] == "failed" && op.to_string().contains("controller restart"),
        format!("the interrupted operation says so: {op}"),
    )?;
    delete_cluster("c-crash")
}

pub fn agent_killed_mid_deployment_finishes() -> Result<(), Failed> {
    small()?;
    let started = json(&["cluster", "create", "c-akill", "--profile", "small", "--size", "6", "--no-wait"])?;
    wait_for("the deployment to start its VMs", Duration::from_secs(60), || {
        let op = json(&["operation", "show", started["id"].as_str().unwrap_or_default()]).ok()?;
        (op["phase"] == "execute").then_some(())
    })?;
    let st = lab().state();
    let apid = st["hosts"][1]["agent_pid"].as_u64().ok_or("agent pid")?;
    kill9(apid);
    wait_for("the agent to die", Duration::from_secs(10), || (!pid_alive(apid)).then_some(()))?;
    // The operation carries on around the dead host, then the host comes back.
    wait_for("the deployment to end", Duration::from_secs(240), || {
        let op = json(&["operation", "show", started["id"].as_str().unwrap_or_default()]).ok()?;
        (op["state"] != "running").then_some(())
    })?;
    lab_up()?;
    wait_converged("c-akill", 6, Duration::from_secs(120))?;
    delete_cluster("c-akill")
}

pub fn addresses_stay_unique_under_concurrent_creation() -> Result<(), Failed> {
    small()?;
    let names = ["c-ip1", "c-ip2", "c-ip3"];
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let n = n.to_string();
            std::thread::spawn(move || {
                corral(&["cluster", "create", &n, "--profile", "small", "--size", "2", "--output", "json"])
            })
        })
        .collect();
    for h in handles {
        let o = h.join().map_err(|_| "thread panicked")?;
        check(o.status.success(), format!("concurrent create: {}", text(&o)))?;
    }
    let mut subnets = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for n in names {
        let v = show(n)?;
        subnets.insert(v["subnet"].as_str().unwrap_or_default().to_string());
        for m in members(&v) {
            check(ips.insert(m["ip"].as_str().unwrap_or_default().to_string()), format!("address given twice: {m}"))?;
        }
    }
    check(subnets.len() == 3 && ips.len() == 6, format!("distinct subnets {subnets:?} and addresses {ips:?}"))?;
    for n in names {
        delete_cluster(n)?;
    }
    Ok(())
}

pub fn cluster_bad_input_changes_nothing() -> Result<(), Failed> {
    small()?;
    let snapshot = || -> Result<(Value, Value, Value), Failed> {
        Ok((json(&["profile", "list"])?, json(&["cluster", "list"])?, json(&["vm", "list"])?))
    };
    let before = snapshot()?;
    let dir = lab().dir.clone();
    let bad_profiles: &[(&str, &str, &str)] = &[
        (
            "p-unknown",
            "template = \"base\"\nvcpus = 1\nmemory = \"128M\"\ncolour = \"blue\"\n",
            "unknown field `colour`",
        ),
        ("p-zero", "template = \"base\"\nvcpus = 0\nmemory = \"128M\"\n", "vcpus"),
        ("p-potato", "template = \"base\"\nvcpus = 1\nmemory = \"12 potatoes\"\n", "invalid memory size"),
        ("p-tpl", "template = \"nope\"\nvcpus = 1\nmemory = \"128M\"\n", "unknown template"),
        ("p-syntax", "template = \n", "profile p-syntax"),
    ];
    for (name, toml, want) in bad_profiles {
        let f = dir.join(format!("{name}.toml"));
        std::fs::write(&f, toml)?;
        let msg = fails(&["profile", "create", name, "--file", &f.display().to_string()])?;
        check(msg.contains(want), format!("profile {name}: expected {want:?} in: {msg}"))?;
    }
    let cases: &[(&[&str], &str)] = &[
        (&["cluster", "create", "c-bad", "--profile", "ghost", "--size", "2"], "no profile named"),
        (
            &["cluster", "create", "c-bad", "--profile", "small", "--size", "8", "--subnet", "100.64.20.0/29"],
            "room for 5",
        ),
        (
            &["cluster", "create", "c-bad", "--profile", "small", "--size", "2", "--subnet", "100.64.20.7/24"],
            "not a network address",
        ),
        (
            &["cluster", "create", "c-bad", "--profile", "small", "--size", "2", "--subnet", "300.1.2.0/24"],
            "invalid subnet",
        ),
        (&["cluster", "create", "c-bad", "--profile", "small", "--size", "0"], "--size"),
        (&["cluster", "create", "c-bad", "--profile", "small", "--size", "900", "--subnet", "100.80.0.0/16"], "free"),
        (&["cluster", "create", "Bad_Name", "--profile", "small", "--size", "1"], "invalid cluster name"),
        (&["cluster", "scale", "ghost", "--size", "2"], "no cluster named"),
    ];
    for (args, want) in cases {
        let msg = fails(args)?;
        check(msg.contains(want), format!("corral {}: expected {want:?} in: {msg}", args.join(" ")))?;
    }
    check(snapshot()? == before, "bad input created nothing")
}

pub fn api_needs_the_token_and_describes_itself() -> Result<(), Failed> {
    let msg = fails(&["--token", "wrong", "vm", "list"])?;
    check(msg.contains("API token"), format!("a wrong token is refused: {msg}"))?;
    let url = format!("{}/v1/openapi.json", lab().url());
    let o = std::process::Command::new("curl").args(["-sf", &url]).output()?;
    check(o.status.success(), "the OpenAPI document is served")?;
    let doc: Value = serde_json::from_slice(&o.stdout)?;
    check(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "OpenAPI 3")?;
    for p in ["/v1/clusters", "/v1/clusters/{name}/scale", "/v1/profiles", "/v1/vms", "/v1/operations/{id}"] {
        check(doc["paths"].get(p).is_some(), format!("documents {p}"))?;
    }
    let o = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/v1/vms", lab().url())])
        .output()?;
    check(String::from_utf8_lossy(&o.stdout) == "401", "no token: 401")
}
