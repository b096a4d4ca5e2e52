//! Virtual network trials: one overlay per cluster across hosts, isolation between clusters
//! (also on one host), anti-spoofing, MTU, name resolution, moves, and clean removal.

use std::collections::BTreeSet;
use std::time::Duration;

use libtest_mimic::Failed;
use serde_json::Value;

use super::{check, corral, fails, json, text, wait_for};

fn profile(name: &str, toml: &str) -> Result<(), Failed> {
    let have = json(&["profile", "list"])?;
    if have.as_array().is_some_and(|a| a.iter().any(|p| p["name"] == name)) {
        return Ok(());
    }
    let f = super::lab().dir.join(format!("{name}.toml"));
    std::fs::write(&f, toml)?;
    let o = corral(&["profile", "create", name, "--file", &f.display().to_string()]);
    check(o.status.success(), format!("profile create {name}: {}", text(&o)))
}

fn apart() -> Result<(), Failed> {
    profile("apart", "template = \"base\"\nvcpus = 1\nmemory = \"128M\"\n\n[placement]\nanti_affinity = true\n")
}

fn packed() -> Result<(), Failed> {
    profile("packed", "template = \"base\"\nvcpus = 1\nmemory = \"128M\"\n\n[placement]\npolicy = \"pack\"\n")
}

fn create(args: &[&str]) -> Result<Value, Failed> {
    let mut a = vec!["cluster", "create"];
    a.extend(args);
    let r = json(&a)?;
    check(r["state"] == "succeeded", format!("cluster create {}: {r}", args.join(" ")))?;
    Ok(r)
}

fn members(name: &str) -> Result<Vec<Value>, Failed> {
    Ok(json(&["cluster", "show", name])?["members"].as_array().cloned().unwrap_or_default())
}

fn ip(m: &Value) -> String {
    m["ip"].as_str().and_then(|i| i.split('/').next()).unwrap_or_default().to_string()
}

/// Runs a shell command in a guest; returns (exit code, stdout).
fn sh(vm: &str, script: &str) -> (i32, String) {
    let o = corral(&["vm", "exec", vm, "--timeout", "30", "--", "sh", "-c", script]);
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string())
}

fn pings(from: &str, to: &str) -> bool {
    sh(from, &format!("ping -c 1 -W 2 {to} >/dev/null")).0 == 0
}

/// A counter of the guest's /proc/net/snmp (e.g. "Icmp" "InEchos").
fn snmp(vm: &str, proto: &str, field: &str) -> Result<u64, Failed> {
    let (_, out) = sh(vm, "cat /proc/net/snmp");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("{proto}:"))).collect();
    let (names, values) = match lines.as_slice() {
        [n, v, ..] => (n, v),
        _ => return Err(format!("{vm}: no {proto} counters in /proc/net/snmp").into()),
    };
    let i = names.split_whitespace().position(|n| n == field).ok_or_else(|| format!("no counter {field}"))?;
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{vm}: bad {proto} {field}").into())
}

/// Names of the network devices in a lab host's namespace.
fn devices(host: &str) -> Result<Vec<String>, Failed> {
    let ns = format!("corral{}-{host}", super::lab().index);
    let o = std::process::Command::new("ip").args(["-n", &ns, "-o", "link"]).output()?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or_default().to_string()))
        .collect())
}

pub fn members_reach_each_other_across_hosts() -> Result<(), Failed> {
    apart()?;
    create(&["n-a", "--profile", "apart", "--size", "2"])?;
    let ms = members("n-a")?;
    check(ms[0]["host"] != ms[1]["host"], "members on different hosts")?;
    let (a, b) = (ms[0]["name"].as_str().unwrap_or_default(), ms[1]["name"].as_str().unwrap_or_default());
    check(pings(a, &ip(&ms[1])), format!("{a} pings {b} by IP"))?;
    check(pings(a, b), format!("{a} pings {b} by name"))?;
    check(pings(b, a), format!("{b} pings {a} by name"))?;
    // MTU: the guest uses the overlay's MTU, and a packet of exactly that size crosses
    // unfragmented.
    let (_, mtu) = sh(a, "cat /sys/class/net/eth0/mtu");
    check(mtu.trim() == "1450", format!("guest MTU 1450 (underlay 1500 less VXLAN): {mtu}"))?;
    let frags = snmp(a, "Ip", "FragCreates")?;
    check(
        sh(a, &format!("ping -c 2 -W 3 -s 1422 {b} >/dev/null")).0 == 0,
        "a full-MTU ping (1450-byte packets) passes",
    )?;
    check(snmp(a, "Ip", "FragCreates")? == frags, "and was not fragmented")?;
    // The hosts show the network's devices.
    let vni = json(&["network", "show", "n-a"])?["vni"].as_u64().unwrap_or(0);
    let host = json(&["host", "show", ms[0]["host"].as_str().unwrap_or_default()])?;
    let nets: Vec<u64> = host["networks"].as_array().into_iter().flatten().filter_map(|n| n["vni"].as_u64()).collect();
    check(nets.contains(&vni), format!("host show lists VNI {vni}: {host}"))?;
    let table = text(&corral(&["host", "show", ms[0]["host"].as_str().unwrap_or_default()]));
    check(table.contains(&format!("cbr{vni}")), format!("host show names the bridge: {table}"))?;
    Ok(())
}

pub fn clusters_are_isolated_even_on_one_host() -> Result<(), Failed> {
    packed()?;
    create(&["n-x", "--profile", "packed", "--size", "1"])?;
    create(&["n-y", "--profile", "packed", "--size", "1"])?;
    let (x, y) = (members("n-x")?.remove(0), members("n-y")?.remove(0));
    check(x["host"] == y["host"], format!("both on one host: {} / {}", x["host"], y["host"]))?;
    let (xn, yip) = (x["name"].as_str().unwrap_or_default(), ip(&y));
    // Even told that the other cluster's subnet is on its link, x gets no answer: the two
    // networks share no segment.
    let y_subnet = json(&["cluster", "show", "n-y"])?["subnet"].as_str().unwrap_or_default().to_string();
    let (code, _) = sh(xn, &format!("ip route add {y_subnet} dev eth0; ping -c 2 -W 2 {yip}"));
    check(code != 0, format!("{xn} cannot reach {yip} of another cluster on the same host"))?;
    Ok(())
}

pub fn spoofed_addresses_are_dropped() -> Result<(), Failed> {
    apart()?;
    let ms = members("n-a")?;
    let (a, b) = (ms[0]["name"].as_str().unwrap_or_default(), ms[1]["name"].as_str().unwrap_or_default());
    let bip = ip(&ms[1]);
    let fake = {
        let mut parts: Vec<&str> = bip.split('.').collect();
        parts[3] = "99";
        parts.join(".")
    };
    let before = snmp(b, "Icmp", "InEchos")?;
    let (code, _) = sh(a, &format!("ip addr add {fake}/24 dev eth0; ping -c 3 -W 2 -I {fake} {bip}"));
    check(code != 0, "no answer to a spoofed source address")?;
    check(snmp(b, "Icmp", "InEchos")? == before, format!("the spoofed packets never reached {b}"))?;
    check(pings(a, b), "the guest's own address still works")?;
    // A forged MAC is dropped too.
    let (code, _) = sh(
        a,
        &format!("ip addr del {fake}/24 dev eth0; ip link set eth0 address 02:de:ad:be:ef:01; ping -c 2 -W 2 {bip}"),
    );
    let mac = ms[0]["mac"].as_str().unwrap_or_default();
    sh(a, &format!("ip link set eth0 address {mac}"));
    check(code != 0, "no answer from a forged MAC")
}

/// Packets the guest filter of a lab host dropped from guests so far (its counters).
fn guest_drops(host: &str) -> Result<u64, Failed> {
    let ns = format!("corral{}-{host}", super::lab().index);
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "table", "bridge", "corral"])
        .output()?;
    check(o.status.success(), format!("nft list on {host}: {}", String::from_utf8_lossy(&o.stderr)))?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("iifname \"ct*\" counter packets"))
        .filter_map(|l| l.split("packets").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

/// A guest stays in its own network: IPv6 (here to every node of the link, as router
/// advertisements and neighbour discovery are sent) and 802.1Q-tagged frames are dropped at
/// its tap and counted, and the guest cannot reach its host: not its agent's port, not its
/// underlay address, even with a route to the underlay through its NIC.
pub fn guests_cannot_leave_their_network() -> Result<(), Failed> {
    apart()?;
    let ms = members("n-a")?;
    let (a, b) = (ms[0]["name"].as_str().unwrap_or_default(), ms[1]["name"].as_str().unwrap_or_default());
    let host = ms[0]["host"].as_str().unwrap_or_default();
    let underlay = json(&["host", "show", host])?["underlay"].as_str().unwrap_or_default().to_string();
    check(!underlay.is_empty(), format!("{host} has an underlay address"))?;
    let before = guest_drops(host)?;
    let (_, out) = sh(b, "grep -s Icmp6InEchos /proc/net/snmp6 || echo none");
    let b6 = out.split_whitespace().nth(1).unwrap_or("0").to_string();
    let (_, own) = sh(a, "ip -6 -o addr show dev eth0 scope link | awk '{print $4}' | cut -d/ -f1");
    let own = own.trim().to_string();
    check(own.starts_with("fe80:"), format!("{a} has an IPv6 link-local address to send from: {own:?}"))?;
    let (_, out) = sh(a, "ping -6 -c 3 -w 4 -I eth0 ff02::1");
    let others: Vec<&str> = out.lines().filter(|l| l.contains("bytes from") && !l.contains(own.as_str())).collect();
    check(others.is_empty(), format!("no IPv6 answer from anyone but {a} itself: {out}"))?;
    let (_, out) = sh(b, "grep -s Icmp6InEchos /proc/net/snmp6 || echo none");
    check(out.split_whitespace().nth(1).unwrap_or("0") == b6, format!("{b} received no IPv6 echo: {out}"))?;
    let after = guest_drops(host)?;
    check(after >= before + 3, format!("the filter counted the dropped frames ({before} -> {after})"))?;
    // 802.1Q-tagged frames: both guests on VLAN 5, where nothing may pass.
    let before = guest_drops(host)?;
    let vlan = |ip: &str| {
        format!("ip link add link eth0 name eth0.5 type vlan id 5 && ip addr add {ip}/24 dev eth0.5 && ip link set eth0.5 up")
    };
    let (code, out) = sh(b, &vlan("10.99.0.2"));
    check(code == 0, format!("{b} has a VLAN interface: {out}"))?;
    let (code, out) =
        sh(a, &format!("{} && ping -c 3 -W 2 10.99.0.2; r=$?; ip link del eth0.5; exit $r", vlan("10.99.0.1")));
    sh(b, "ip link del eth0.5");
    check(code != 0, format!("no answer over a tagged VLAN: {out}"))?;
    let after = guest_drops(host)?;
    check(after >= before + 3, format!("the tagged frames were dropped and counted ({before} -> {after})"))?;
    // The host, through the guest's own NIC.
    let (code, out) = sh(
        a,
        &format!(
            "ip route add 198.18.0.0/15 dev eth0; nc -w 3 {underlay} 7701 </dev/null; r=$?; \
             ping -c 2 -W 2 {underlay}; p=$?; ip route del 198.18.0.0/15 dev eth0; echo nc=$r ping=$p; [ $r -ne 0 ] && [ $p -ne 0 ]"
        ),
    );
    check(code == 0, format!("{a} reaches neither its host's agent nor its underlay address: {out}"))?;
    check(pings(a, b), "the guests still reach each other")
}

pub fn a_moved_member_is_reached_at_the_same_address() -> Result<(), Failed> {
    apart()?;
    let ms = members("n-a")?;
    let (a, b) = (
        ms[0]["name"].as_str().unwrap_or_default().to_string(),
        ms[1]["name"].as_str().unwrap_or_default().to_string(),
    );
    let hosts: BTreeSet<String> = ms.iter().filter_map(|m| m["host"].as_str().map(String::from)).collect();
    let to = ["lab-1", "lab-2", "lab-3"].into_iter().find(|h| !hosts.contains(*h)).ok_or("a free host")?;
    let o = corral(&["vm", "stop", &b]);
    check(o.status.success(), format!("stop: {}", text(&o)))?;
    let moved = json(&["vm", "move", &b, "--to", to])?;
    check(
        moved["host"] == to && moved["ip"] == ms[1]["ip"] && moved["mac"] == ms[1]["mac"],
        format!("moved with its identity: {moved}"),
    )?;
    let o = corral(&["vm", "start", &b]);
    check(o.status.success(), format!("start: {}", text(&o)))?;
    wait_for(&format!("{a} to reach {b} on {to}"), Duration::from_secs(15), || pings(&a, &b).then_some(()))?;
    let old = ms[1]["host"].as_str().unwrap_or_default();
    let vni = json(&["network", "show", "n-a"])?["vni"].as_u64().unwrap_or(0);
    wait_for("the old host to drop the network", Duration::from_secs(15), || {
        devices(old)
            .ok()
            .filter(|d| !d.iter().any(|n| n == &format!("cbr{vni}") || n == &format!("cvx{vni}")))
            .map(|_| ())
    })
}

pub fn deleting_clusters_leaves_no_devices() -> Result<(), Failed> {
    let vnis: Vec<u64> =
        json(&["network", "list"])?.as_array().into_iter().flatten().filter_map(|n| n["vni"].as_u64()).collect();
    check(!vnis.is_empty(), "there are networks to remove")?;
    for c in ["n-a", "n-x", "n-y"] {
        let o = corral(&["cluster", "delete", c]);
        check(o.status.success(), format!("delete {c}: {}", text(&o)))?;
    }
    let left = || -> Vec<String> {
        ["lab-1", "lab-2", "lab-3"]
            .iter()
            .flat_map(|h| devices(h).unwrap_or_default().into_iter().map(move |d| format!("{h}:{d}")))
            .filter(|d| ["cbr", "cvx", "ct"].iter().any(|p| d.split(':').nth(1).is_some_and(|n| n.starts_with(p))))
            .collect()
    };
    // Removal goes through the operation, the next heartbeat and the reconciler: seconds on an
    // idle machine, longer on a loaded one.
    if wait_for("every bridge, VXLAN device and tap to go", Duration::from_secs(60), || left().is_empty().then_some(()))
        .is_err()
    {
        return Err(format!("devices left behind: {:?}", left()).into());
    }
    check(json(&["network", "list"])?.as_array().is_some_and(|a| a.is_empty()), "no network listed")
}

pub fn network_bad_input() -> Result<(), Failed> {
    profile("plain", "template = \"base\"\nvcpus = 1\nmemory = \"128M\"\n")?;
    let before = json(&["cluster", "list"])?;
    let cases: &[(&[&str], &str)] = &[
        (&["cluster", "create", "n-bad", "--profile", "plain", "--size", "1", "--vni", "0"], "out of range"),
        (&["cluster", "create", "n-bad", "--profile", "plain", "--size", "1", "--vni", "16777216"], "out of range"),
        (
            &["cluster", "create", "n-bad", "--profile", "plain", "--size", "1", "--mtu", "9000"],
            "MTU 9000 is out of range",
        ),
        (
            &["cluster", "create", "n-bad", "--profile", "plain", "--size", "1", "--mtu", "100"],
            "MTU 100 is out of range",
        ),
        (&["cluster", "create", "n-bad", "--profile", "plain", "--size", "1", "--subnet", "100.64.50.0/23"], ""),
    ];
    // An overlapping subnet is refused: make one, then overlap it.
    create(&["n-ovl", "--profile", "plain", "--size", "1", "--subnet", "100.64.50.0/24"])?;
    let with_ovl = json(&["cluster", "list"])?;
    for (args, want) in cases.iter().take(4) {
        let msg = fails(args)?;
        check(msg.contains(want), format!("corral {}: expected {want:?} in: {msg}", args.join(" ")))?;
    }
    let msg = fails(cases[4].0)?;
    check(msg.contains("overlaps the subnet of cluster \"n-ovl\""), format!("overlap refused: {msg}"))?;
    let vni = json(&["network", "show", "n-ovl"])?["vni"].as_u64().unwrap_or(0).to_string();
    let msg = fails(&["cluster", "create", "n-bad", "--profile", "plain", "--size", "1", "--vni", &vni])?;
    check(msg.contains("used by another cluster"), format!("VNI in use refused: {msg}"))?;
    check(json(&["cluster", "list"])? == with_ovl, "nothing created by bad input")?;
    let o = corral(&["cluster", "delete", "n-ovl"]);
    check(o.status.success(), "cleanup")?;
    check(json(&["cluster", "list"])? == before, "back to where it was")
}

/// Removes the test's address from the lab's provider bridge when dropped.
struct ProviderSide(String, String);

impl Drop for ProviderSide {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["addr", "del", &self.1, "dev", &self.0]).status();
    }
}

/// The lab gives every host `eth1` on a provider segment (this kernel has no VLANs); a bridged
/// network puts its VMs on that segment as individual hosts.
pub fn bridged_network_puts_vms_on_the_provider_network() -> Result<(), Failed> {
    let idx = super::lab().index;
    let range = format!("198.19.{idx}.10-198.19.{idx}.20");
    let prov = |iface: &str| {
        format!("template = \"base\"\nvcpus = 1\nmemory = \"128M\"\nnetwork = \"bridged\"\n\n[bridged]\ninterface = \"{iface}\"\nrange = \"{range}\"\nprefix = 24\n")
    };
    // Bad input first: an interface no host has is refused, and nothing is configured.
    profile("prov-bad", &prov("eth9"))?;
    let msg = fails(&["cluster", "create", "p-bad", "--profile", "prov-bad", "--size", "1"])?;
    check(msg.contains("no host has interface \"eth9\""), format!("missing interface named: {msg}"))?;
    for h in ["lab-1", "lab-2", "lab-3"] {
        check(!devices(h)?.iter().any(|d| d.starts_with("cbr")), format!("nothing configured on {h}"))?;
    }
    // The operator's side of the provider network.
    let side = ProviderSide(format!("crl{idx}pv"), format!("198.19.{idx}.1/24"));
    let ok = std::process::Command::new("ip").args(["addr", "add", &side.1, "dev", &side.0]).status()?.success();
    check(ok, "address on the provider segment")?;
    profile("prov", &prov("eth1"))?;
    create(&["p-net", "--profile", "prov", "--size", "2", "--spread"])?;
    let ms = members("p-net")?;
    check(ms[0]["host"] != ms[1]["host"], "members on two hosts")?;
    for m in &ms {
        let addr = ip(m);
        check(addr.starts_with(&format!("198.19.{idx}.1")), format!("address from the operator's range: {addr}"))?;
        // Seen from the provider network as an individual host.
        let seen = wait_for(&format!("{addr} to answer on the provider network"), Duration::from_secs(15), || {
            std::process::Command::new("ping")
                .args(["-c", "1", "-W", "1", &addr])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| ())
        });
        check(seen.is_ok(), format!("{addr} reachable from the provider network"))?;
        let name = m["name"].as_str().unwrap_or_default();
        check(pings(name, &format!("198.19.{idx}.1")), format!("{name} reaches the operator's side"))?;
    }
    let (a, b) = (ms[0]["name"].as_str().unwrap_or_default(), ms[1]["name"].as_str().unwrap_or_default());
    check(pings(a, b), "members reach each other by name across hosts")?;
    let host = json(&["host", "show", ms[0]["host"].as_str().unwrap_or_default()])?;
    check(host["networks"].as_array().is_some_and(|n| !n.is_empty()), "the host lists the bridged network")?;
    let o = corral(&["cluster", "delete", "p-net"]);
    check(o.status.success(), "delete")?;
    wait_for("the bridged network's devices to go", Duration::from_secs(20), || {
        ["lab-1", "lab-2", "lab-3"]
            .iter()
            .all(|h| !devices(h).unwrap_or_default().iter().any(|d| d.starts_with("cbr")))
            .then_some(())
    })?;
    drop(side);
    Ok(())
}
