//! Rendering of CLI output: aligned tables for people, JSON (`--output json`) for programs.

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

use corral_api::{Host, Template, Vm};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn print<T: Serialize>(o: Output, v: &T, table: impl FnOnce(&T)) -> Result<()> {
    match o {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Table => table(v),
    }
    Ok(())
}

/// Prints rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn mib(m: u64) -> String {
    if m >= 1024 && m.is_multiple_of(1024) {
        format!("{}G", m / 1024)
    } else {
        format!("{m}M")
    }
}

fn opt<T: std::fmt::Display>(s: &Option<T>) -> String {
    s.as_ref().map_or_else(|| "-".into(), T::to_string)
}

pub fn hosts(hs: &[Host]) {
    table(
        &["NAME", "STATE", "POWER", "ACCEL", "VCPUS", "MEMORY", "VMS", "CPU%", "MEM USED"],
        hs.iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    match &h.maintenance {
                        Some(m) => format!("{} ({m})", h.state),
                        None if h.cordoned => format!("{} (cordoned)", h.state),
                        None => h.state.to_string(),
                    },
                    h.power.to_string(),
                    h.accel.as_str().into(),
                    format!("{}/{}", h.allocated.vcpus, h.capacity.vcpus),
                    format!("{}/{}", mib(h.allocated.memory_mib), mib(h.capacity.memory_mib)),
                    h.vms.to_string(),
                    format!("{:.0}", h.usage.cpu_pct),
                    mib(h.usage.mem_used_mib),
                ]
            })
            .collect(),
    );
}

pub fn host(h: &Host) {
    println!("name:        {}", h.name);
    println!("state:       {}", h.state);
    println!("power:       {}", h.power);
    println!("agent:       {}", h.url);
    println!("accelerator: {} ({})", h.accel.as_str(), h.accel_note);
    println!("vcpus:       {} allocated of {}", h.allocated.vcpus, h.capacity.vcpus);
    println!("memory:      {} allocated of {}", mib(h.allocated.memory_mib), mib(h.capacity.memory_mib));
    println!("disk:        {} GiB free of {} GiB", h.usage.disk_free_bytes >> 30, h.capacity.disk_bytes >> 30);
    println!("usage:       cpu {:.1}%, memory {} used", h.usage.cpu_pct, mib(h.usage.mem_used_mib));
    println!("vms:         {}", h.vms);
    println!("underlay:    {}", h.underlay.clone().unwrap_or_else(|| "-".into()));
    println!("cordoned:    {}", h.cordoned);
    if let Some(m) = &h.maintenance {
        println!("maintenance: {m}");
    }
    if !h.labels.is_empty() {
        let l: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("labels:      {}", l.join(", "));
    }
    println!("templates:   {}", h.templates.join(", "));
    println!("networks:");
    for n in &h.networks {
        println!(
            "  VNI {:<8} bridge {:<12} vxlan {:<12} cluster {}",
            n.vni,
            n.bridge,
            n.vxlan,
            n.cluster.clone().unwrap_or_else(|| "-".into())
        );
    }
}

/// Images, with the vCPUs and memory their VMs are meant to have when the image says (an
/// imported OVA's).
pub fn templates(ts: &[Template]) {
    table(
        &["NAME", "SIZE", "BOOT", "VCPUS", "MEMORY", "USER", "KERNEL", "OS", "HOSTS"],
        ts.iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    mib(t.size_bytes >> 20),
                    t.boot.to_string(),
                    opt(&t.vcpus),
                    opt(&t.memory_mib.map(mib)),
                    opt(&t.default_user.as_ref().map(|u| u.0.clone())),
                    t.kernel_version.clone(),
                    t.os.clone(),
                    t.hosts.join(","),
                ]
            })
            .collect(),
    );
}

pub fn vms(vs: &[Vm]) {
    table(
        &["NAME", "STATE", "HOST", "VCPUS", "MEMORY", "IP", "MAC", "BOOT"],
        vs.iter()
            .map(|v| {
                vec![
                    v.def.name.to_string(),
                    v.state.to_string(),
                    v.host.clone(),
                    v.def.vcpus.to_string(),
                    mib(v.def.memory_mib),
                    opt(&v.def.ip),
                    v.def.mac.to_string(),
                    v.boot_ms.map(|b| format!("{:.1}s", b as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    );
}

pub fn vm(v: &Vm) {
    println!("name:      {}", v.def.name);
    println!("uuid:      {}", v.def.uuid);
    println!("state:     {}", v.state);
    if let Some(e) = &v.error {
        println!("error:     {e}");
    }
    println!("host:      {}", v.host);
    println!("template:  {}", v.def.template);
    println!("vcpus:     {}", v.def.vcpus);
    println!("memory:    {}", mib(v.def.memory_mib));
    println!("mac:       {}", v.def.mac);
    println!("ip:        {}", opt(&v.def.ip));
    println!("workload:  {}", v.def.workload);
    println!("ha:        {}", v.def.ha);
    println!("storage:   {}", v.def.storage);
    println!("disk:      {}", opt(&v.disk));
    println!("boot time: {}", v.boot_ms.map(|b| format!("{b} ms")).unwrap_or_else(|| "-".into()));
    if let Some(m) = v.def.disk_mib {
        println!("disk size: {}", mib(m));
    }
    if let Some(f) = v.def.firmware {
        println!("firmware:  {f}");
    }
    if let Some(u) = &v.usage {
        println!("usage:     cpu {:.1}%, rss {} MiB, disk {} KiB allocated", u.cpu_pct, u.rss_mib, u.disk_bytes / 1024);
        if let Some(os) = &u.guest_os {
            println!("guest os:  {os}");
        }
        if !u.guest_addresses.is_empty() {
            println!("guest ips: {}", u.guest_addresses.join(", "));
        }
    }
}

pub fn profiles(ps: &[corral_api::cluster::Profile]) {
    table(
        &["NAME", "TEMPLATE", "VCPUS", "MEMORY", "POLICY", "ANTI-AFFINITY"],
        ps.iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.template.clone(),
                    p.vcpus.to_string(),
                    mib(p.memory_mib),
                    p.placement.policy.as_str().into(),
                    p.placement.anti_affinity.to_string(),
                ]
            })
            .collect(),
    );
}

pub fn profile(p: &corral_api::cluster::Profile) {
    println!("# profile {}", p.name);
    print!("{}", p.source);
    if !p.source.ends_with('\n') {
        println!();
    }
}

pub fn clusters(cs: &[corral_api::cluster::ClusterView]) {
    table(
        &["NAME", "STATE", "SIZE", "RUNNING", "PROFILE", "SUBNET", "HOSTS"],
        cs.iter()
            .map(|c| {
                vec![
                    c.cluster.name.clone(),
                    c.cluster.state.to_string(),
                    c.cluster.size.to_string(),
                    c.members.iter().filter(|m| m.state == corral_api::VmState::Running).count().to_string(),
                    c.cluster.profile.name.clone(),
                    c.cluster.subnet.clone(),
                    c.hosts.join(","),
                ]
            })
            .collect(),
    );
}

pub fn cluster(c: &corral_api::cluster::ClusterView) {
    let k = &c.cluster;
    println!("name:    {}", k.name);
    println!("state:   {}", k.state);
    println!(
        "profile: {} ({} vCPU, {} per VM, {})",
        k.profile.name,
        k.profile.vcpus,
        mib(k.profile.memory_mib),
        k.policy.as_str()
    );
    println!("subnet:  {}", k.subnet);
    println!("size:    {} ({} members)", k.size, c.members.len());
    println!("hosts:   {}", c.hosts.join(", "));
    println!();
    table(
        &["MEMBER", "STATE", "HOST", "IP", "MAC", "UUID"],
        c.members
            .iter()
            .map(|m| {
                vec![m.name.clone(), m.state.to_string(), m.host.clone(), opt(&m.ip), m.mac.clone(), m.uuid.to_string()]
            })
            .collect(),
    );
}

pub fn operations(ops: &[corral_api::cluster::Operation]) {
    table(
        &["ID", "KIND", "TARGET", "STATE", "DONE"],
        ops.iter()
            .map(|o| {
                vec![
                    o.id.clone(),
                    o.kind.to_string(),
                    o.target.clone(),
                    o.state.to_string(),
                    format!("{}/{}", o.done, o.total),
                ]
            })
            .collect(),
    );
}

pub fn operation(o: &corral_api::cluster::Operation) {
    let total = o.finished_ms.unwrap_or_else(corral_api::now_ms).saturating_sub(o.started_ms);
    println!(
        "{} {}: {} — {} VMs on {} hosts ({}), {:.1} s",
        o.kind,
        o.target,
        o.state,
        o.vms,
        o.hosts.len(),
        o.hosts.join(", "),
        total as f64 / 1000.0
    );
    for s in &o.steps {
        println!("  {:<10} {:>8.3} s", s.name, s.ms as f64 / 1000.0);
    }
    for m in &o.messages {
        println!("  ! {m}");
    }
}

pub fn events(ev: &[corral_api::cluster::Event]) {
    table(
        &["TIME", "KIND", "SUBJECT", "MESSAGE"],
        ev.iter()
            .map(|e| vec![format!("{:.3}", e.ms as f64 / 1000.0), e.kind.clone(), e.subject.clone(), e.message.clone()])
            .collect(),
    );
}

pub fn networks(ns: &[corral_api::cluster::Network]) {
    table(
        &["NAME", "VNI", "SUBNET", "MTU", "MEMBERS", "HOSTS"],
        ns.iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.vni.to_string(),
                    n.subnet.clone(),
                    n.mtu.to_string(),
                    n.members.len().to_string(),
                    n.hosts.join(","),
                ]
            })
            .collect(),
    );
}

pub fn network(n: &corral_api::cluster::Network) {
    println!("name:    {}", n.name);
    println!("vni:     {}", n.vni);
    println!("subnet:  {} (gateway {} kept free)", n.subnet, n.gateway);
    println!("mtu:     {}", n.mtu);
    println!("hosts:   {}", n.hosts.join(", "));
    println!();
    table(
        &["MEMBER", "STATE", "HOST", "IP", "MAC"],
        n.members
            .iter()
            .map(|m| vec![m.name.clone(), m.state.to_string(), m.host.clone(), opt(&m.ip), m.mac.clone()])
            .collect(),
    );
}

pub fn ha(s: &corral_api::HaStatus) {
    println!(
        "lease {:.1} s, suspect after {:.1} s of silence (confirmed by peers before any failover)",
        s.lease_ms as f64 / 1000.0,
        s.suspect_after_ms as f64 / 1000.0
    );
    println!("hosts down:  {}", if s.hosts_down.is_empty() { "none".into() } else { s.hosts_down.join(", ") });
    println!("protected:   {}", if s.protected.is_empty() { "none".into() } else { s.protected.join(", ") });
    println!("spare:       {}{}", if s.spare_ok { "" } else { "NOT ENOUGH: " }, s.spare_note);
    if !s.unprotected.is_empty() {
        println!();
        table(
            &["UNPROTECTED", "HOST", "WHY"],
            s.unprotected.iter().map(|u| vec![u.name.clone(), u.host.clone(), u.why.clone()]).collect(),
        );
    }
}
