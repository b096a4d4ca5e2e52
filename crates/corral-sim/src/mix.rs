//! The data centre a trace is replayed on: host types (cores, MIPS per core, memory, network,
//! power curve, how many) and VM types (MIPS per vCPU, vCPUs, memory, share of the VMs).
//!
//! [`Mix::standard`] is the experiment of Beloglazov & Buyya (2012) as CloudSim's PlanetLab
//! examples build it: 800 hosts alternating HP ProLiant ML110 G4 and G5, four EC2-like VM
//! types assigned in equal consecutive blocks. Other mixes come from a TOML file
//! ([`Mix::from_toml`]):
//!
//! ```toml
//! interval_s = 300          # optional, seconds per trace line
//! memory_enforced = false   # optional: true keeps each VM's memory reserved on its host
//!
//! [[host]]
//! name = "G5"
//! count = 400
//! cores = 2
//! core_mips = 2660
//! memory_mib = 4096
//! bandwidth_mbps = 1000      # network; half of it carries migrations, as in CloudSim
//! power_watts = [93.7, 97, 101, 105, 110, 116, 121, 125, 129, 133, 135]  # 0%, 10%, ..., 100%
//!
//! [[vm]]
//! name = "small"
//! mips = 1000                # per vCPU
//! vcpus = 1                  # optional, default 1
//! memory_mib = 1740
//! weight = 1                 # optional: share of the VMs, default 1
//! ```
//!
//! Hosts of several types are interleaved (one of each type in turn while counts last); VMs
//! take types in consecutive blocks, in file order, sized by weight (equal weights give
//! CloudSim's `i / ceil(n / types)`).

use std::path::Path;

use corral_sched::drs::PowerModel;
use serde::Deserialize;

/// A kind of host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostType {
    pub name: String,
    pub count: usize,
    pub cores: u32,
    pub core_mips: f64,
    pub memory_mib: u64,
    pub bandwidth_mbps: f64,
    pub power: PowerModel,
}

/// A kind of VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmType {
    pub name: String,
    pub mips: f64,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub weight: f64,
}

/// Hosts and VM types of an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub hosts: Vec<HostType>,
    pub vms: Vec<VmType>,
    /// Seconds per trace sample.
    pub interval_s: f64,
    /// Whether VMs keep their memory reserved once running. CloudSim's experiment gives VMs a
    /// memory demand of zero once instantiated (its cloudlets use `UtilizationModelNull` for
    /// RAM), so memory only binds at the initial placement: false reproduces that.
    pub memory_enforced: bool,
}

/// Why a mix cannot be used; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    #[error("cannot read mix file {file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("mix file {file}: {message}")]
    Toml { file: String, message: String },
    #[error("mix file {file}: {item}: {field} = {value}: {why}")]
    Field { file: String, item: String, field: &'static str, value: String, why: &'static str },
    #[error("mix file {file}: {message}")]
    Other { file: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MixFile {
    interval_s: Option<f64>,
    memory_enforced: Option<bool>,
    #[serde(default)]
    host: Vec<HostFile>,
    #[serde(default)]
    vm: Vec<VmFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    name: String,
    count: usize,
    cores: u32,
    core_mips: f64,
    memory_mib: u64,
    bandwidth_mbps: f64,
    power_watts: Vec<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmFile {
    name: String,
    mips: f64,
    vcpus: Option<u32>,
    memory_mib: u64,
    weight: Option<f64>,
}

impl Mix {
    /// The standard experiment (CloudSim's PlanetLab examples).
    pub fn standard() -> Mix {
        let host = |name: &str, mips: f64, power: PowerModel| HostType {
            name: name.into(),
            count: 400,
            cores: 2,
            core_mips: mips,
            memory_mib: 4096,
            bandwidth_mbps: 1000.0,
            power,
        };
        let vm = |name: &str, mips: f64, mem: u64| VmType {
            name: name.into(),
            mips,
            vcpus: 1,
            memory_mib: mem,
            weight: 1.0,
        };
        Mix {
            hosts: vec![
                host("HP ML110 G4", 1860.0, PowerModel::hp_ml110_g4()),
                host("HP ML110 G5", 2660.0, PowerModel::hp_ml110_g5()),
            ],
            vms: vec![
                vm("high-cpu medium", 2500.0, 870),
                vm("extra large", 2000.0, 1740),
                vm("small", 1000.0, 1740),
                vm("micro", 500.0, 613),
            ],
            interval_s: 300.0,
            memory_enforced: false,
        }
    }

    /// Reads a mix from a TOML file (format in the module documentation).
    pub fn from_toml(path: &Path) -> Result<Mix, MixError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MixError::Io { file: file.clone(), source })?;
        Mix::parse_toml(&file, &text)
    }

    /// Parses a mix; `file` names it in errors.
    pub fn parse_toml(file: &str, text: &str) -> Result<Mix, MixError> {
        let f: MixFile =
            toml::from_str(text).map_err(|e| MixError::Toml { file: file.into(), message: e.to_string() })?;
        let field = |item: String, field: &'static str, value: String, why: &'static str| MixError::Field {
            file: file.into(),
            item,
            field,
            value,
            why,
        };
        if f.host.is_empty() {
            return Err(MixError::Other { file: file.into(), message: "no [[host]] types: add at least one".into() });
        }
        if f.vm.is_empty() {
            return Err(MixError::Other { file: file.into(), message: "no [[vm]] types: add at least one".into() });
        }
        let interval_s = f.interval_s.unwrap_or(300.0);
        if !(interval_s.is_finite() && interval_s > 0.0) {
            return Err(field(
                "top level".into(),
                "interval_s",
                interval_s.to_string(),
                "must be a positive number of seconds",
            ));
        }
        let mut hosts = Vec::new();
        for (i, h) in f.host.into_iter().enumerate() {
            let item = format!("host[{i}] {:?}", h.name);
            if h.count == 0 {
                return Err(field(item, "count", "0".into(), "must be at least 1"));
            }
            if h.cores == 0 {
                return Err(field(item, "cores", "0".into(), "must be at least 1"));
            }
            if !(h.core_mips.is_finite() && h.core_mips > 0.0) {
                return Err(field(item, "core_mips", h.core_mips.to_string(), "must be a positive number"));
            }
            if h.memory_mib == 0 {
                return Err(field(item, "memory_mib", "0".into(), "must be at least 1"));
            }
            if !(h.bandwidth_mbps.is_finite() && h.bandwidth_mbps > 0.0) {
                return Err(field(item, "bandwidth_mbps", h.bandwidth_mbps.to_string(), "must be a positive number"));
            }
            let power = PowerModel::new(h.power_watts.clone()).map_err(|e| MixError::Field {
                file: file.into(),
                item: item.clone(),
                field: "power_watts",
                value: format!("{:?}", h.power_watts),
                why: match e {
                    corral_sched::drs::PowerModelError::TooFewPoints(_) => {
                        "needs at least 2 points: watts at 0% and at 100% utilisation (11 points: 0%, 10%, ..., 100%)"
                    }
                    corral_sched::drs::PowerModelError::BadPoint { .. } => {
                        "every point must be a finite number of watts, 0 or more"
                    }
                },
            })?;
            hosts.push(HostType {
                name: h.name,
                count: h.count,
                cores: h.cores,
                core_mips: h.core_mips,
                memory_mib: h.memory_mib,
                bandwidth_mbps: h.bandwidth_mbps,
                power,
            });
        }
        let mut vms = Vec::new();
        for (i, v) in f.vm.into_iter().enumerate() {
            let item = format!("vm[{i}] {:?}", v.name);
            if !(v.mips.is_finite() && v.mips > 0.0) {
                return Err(field(item, "mips", v.mips.to_string(), "must be a positive number"));
            }
            let vcpus = v.vcpus.unwrap_or(1);
            if vcpus == 0 {
                return Err(field(item, "vcpus", "0".into(), "must be at least 1"));
            }
            let weight = v.weight.unwrap_or(1.0);
            if !(weight.is_finite() && weight > 0.0) {
                return Err(field(item, "weight", weight.to_string(), "must be a positive number"));
            }
            vms.push(VmType { name: v.name, mips: v.mips, vcpus, memory_mib: v.memory_mib, weight });
        }
        Ok(Mix { hosts, vms, interval_s, memory_enforced: f.memory_enforced.unwrap_or(false) })
    }

    /// Host types in data-centre order: one of each type in turn while its count lasts.
    pub fn host_layout(&self) -> Vec<usize> {
        let total: usize = self.hosts.iter().map(|h| h.count).sum();
        let mut left: Vec<usize> = self.hosts.iter().map(|h| h.count).collect();
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            for (t, l) in left.iter_mut().enumerate() {
                if *l > 0 {
                    *l -= 1;
                    out.push(t);
                }
            }
        }
        out
    }

    /// The type of each of `n` VMs: consecutive blocks by weight.
    pub fn vm_layout(&self, n: usize) -> Vec<usize> {
        let total: f64 = self.vms.iter().map(|v| v.weight).sum();
        let mut bounds = Vec::with_capacity(self.vms.len());
        let mut cum = 0.0;
        for (t, v) in self.vms.iter().enumerate() {
            cum += v.weight;
            // Equal weights: (t + 1) · ceil(n / types), CloudSim's blocks.
            let equal = self.vms.iter().all(|w| w.weight == v.weight);
            let b = if equal { (t + 1) * n.div_ceil(self.vms.len()) } else { (n as f64 * cum / total).ceil() as usize };
            bounds.push(b.min(n));
        }
        (0..n).map(|i| bounds.iter().position(|&b| i < b).unwrap_or(self.vms.len() - 1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_layouts_match_cloudsim() {
        let m = Mix::standard();
        let hosts = m.host_layout();
        assert_eq!(hosts.len(), 800);
        assert!(hosts.iter().enumerate().all(|(i, &t)| t == i % 2));
        let vms = m.vm_layout(1052);
        assert!(vms.iter().enumerate().all(|(i, &t)| t == i / 263));
        let vms = m.vm_layout(898);
        assert!(vms.iter().enumerate().all(|(i, &t)| t == i / 225));
    }

    const GOOD: &str = r#"
        [[host]]
        name = "big"
        count = 3
        cores = 4
        core_mips = 1000
        memory_mib = 8192
        bandwidth_mbps = 1000
        power_watts = [100, 200]
        [[vm]]
        name = "a"
        mips = 500
        memory_mib = 512
    "#;

    #[test]
    fn parses_a_mix_and_names_bad_fields() {
        let m = Mix::parse_toml("m.toml", GOOD).expect("good mix");
        assert_eq!(m.hosts[0].count, 3);
        assert_eq!(m.vms[0].vcpus, 1);
        let bad = GOOD.replace("core_mips = 1000", "core_mips = -5");
        let e = Mix::parse_toml("m.toml", &bad).expect_err("bad").to_string();
        assert!(e.contains("m.toml") && e.contains("host[0] \"big\"") && e.contains("core_mips = -5"), "{e}");
        let bad = GOOD.replace("power_watts = [100, 200]", "power_watts = [100]");
        let e = Mix::parse_toml("m.toml", &bad).expect_err("bad").to_string();
        assert!(e.contains("power_watts"), "{e}");
        let bad = GOOD.replace("mips = 500", "mips = 500\nflavour = 1");
        let e = Mix::parse_toml("m.toml", &bad).expect_err("bad").to_string();
        assert!(e.contains("m.toml") && e.contains("flavour"), "{e}");
    }
}
