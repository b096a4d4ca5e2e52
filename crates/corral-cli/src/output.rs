//! Rendering of CLI output: aligned tables for people, JSON (`--output json`) for programs.

use corral_api::{Host, Template, Vm};

/// Prints rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
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

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

pub fn hosts(hs: &[Host]) {
    table(
        &[
            "NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "VMS", "CPU%", "MEM USED",
        ],
        hs.iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.state.to_string(),
                    h.accel.as_str().into(),
                    format!("{}/{}", h.allocated.vcpus, h.capacity.vcpus),
                    format!(
                        "{}/{}",
                        mib(h.allocated.memory_mib),
                        mib(h.capacity.memory_mib)
                    ),
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
    println!("agent:       {}", h.url);
    println!("accelerator: {} ({})", h.accel.as_str(), h.accel_note);
    println!(
        "vcpus:       {} allocated of {}",
        h.allocated.vcpus, h.capacity.vcpus
    );
    println!(
        "memory:      {} allocated of {}",
        mib(h.allocated.memory_mib),
        mib(h.capacity.memory_mib)
    );
    println!(
        "disk:        {} GiB free of {} GiB",
        h.usage.disk_free_bytes >> 30,
        h.capacity.disk_bytes >> 30
    );
    println!(
        "usage:       cpu {:.1}%, memory {} used",
        h.usage.cpu_pct,
        mib(h.usage.mem_used_mib)
    );
    println!("vms:         {}", h.vms);
}

pub fn templates(ts: &[Template]) {
    table(
        &["NAME", "SIZE", "KERNEL", "OS", "HOSTS"],
        ts.iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    mib(t.size_bytes >> 20),
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
        &[
            "NAME", "STATE", "HOST", "VCPUS", "MEMORY", "IP", "MAC", "BOOT",
        ],
        vs.iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.state.to_string(),
                    v.host.clone(),
                    v.vcpus.to_string(),
                    mib(v.memory_mib),
                    opt(&v.ip),
                    v.mac.clone(),
                    v.boot_ms
                        .map(|b| format!("{:.1}s", b as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    );
}

pub fn vm(v: &Vm) {
    println!("name:      {}", v.name);
    println!("uuid:      {}", v.uuid);
    println!("state:     {}", v.state);
    if let Some(e) = &v.error {
        println!("error:     {e}");
    }
    println!("host:      {}", v.host);
    println!("template:  {}", v.template);
    println!("vcpus:     {}", v.vcpus);
    println!("memory:    {}", mib(v.memory_mib));
    println!("mac:       {}", v.mac);
    println!("ip:        {}", opt(&v.ip));
    println!("workload:  {}", v.workload);
    println!("disk:      {}", opt(&v.disk));
    println!(
        "boot time: {}",
        v.boot_ms
            .map(|b| format!("{b} ms"))
            .unwrap_or_else(|| "-".into())
    );
    if let Some(u) = &v.usage {
        println!(
            "usage:     cpu {:.1}%, rss {} MiB, disk {} KiB allocated",
            u.cpu_pct,
            u.rss_mib,
            u.disk_bytes / 1024
        );
    }
}
