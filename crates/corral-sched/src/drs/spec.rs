//! The policies by name: [`PolicySpec`] (a reference heuristic like `lr-mmt-1.2`, or
//! `corral` with its [`CorralParams`]), parsed from and shown as the names `corral sim` and the
//! DRS settings use, and checked for values in range.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Overload detection of the reference policies (Beloglazov & Buyya 2012, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Detector {
    /// Static threshold: overloaded when demand exceeds this fraction of capacity.
    Thr(f64),
    /// Median absolute deviation: threshold 1 − s·MAD(history).
    Mad(f64),
    /// Interquartile range: threshold 1 − s·IQR(history).
    Iqr(f64),
    /// Local regression: overloaded when s × the utilisation forecast for after a migration ≥ 1.
    Lr(f64),
    /// Robust local regression (bisquare-weighted), same rule as `Lr`.
    Lrr(f64),
}

/// VM selection of the reference policies (§6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    /// Minimum migration time (smallest memory).
    Mmt,
    /// Maximum correlation with the other VMs of the host.
    Mc,
    /// Random (seeded).
    Rs,
    /// Minimum utilisation.
    Mu,
}

/// Parameters of Corral's default policy (see `docs/sim.md` for the reasoning).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CorralParams {
    /// Forecast utilisation a host may be filled to by placement (0..1].
    pub target: f64,
    /// Utilisation now above which a host is relieved (0..1]; a host is also relieved when its
    /// forecast exceeds its capacity.
    pub high: f64,
    /// Quantile of a VM's recent demand used as its forecast (0..1].
    pub quantile: f64,
    /// Samples of history the forecast looks at.
    pub window: usize,
    /// Rounds a migrated VM stays put (unless its host runs out of CPU).
    pub cooldown: u64,
    /// Hosts emptied for consolidation per round, at most (unless the pool is less than half
    /// used).
    pub evacuations: usize,
    /// Spare forecast room, in largest-host capacities at the target, the powered hosts must
    /// keep after a consolidation.
    pub spare: f64,
    /// Hosts with more VMs than this are not emptied (each VM is a migration), unless the pool
    /// is less than half used.
    pub evacuate_vms: usize,
}

impl Default for CorralParams {
    fn default() -> Self {
        CorralParams {
            target: 0.9,
            high: 1.0,
            quantile: 0.9,
            window: 12,
            cooldown: 12,
            evacuations: 4,
            spare: 0.3,
            evacuate_vms: 15,
        }
    }
}

/// A scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum PolicySpec {
    /// A CloudSim reference heuristic: overload detection + VM selection, PABFD placement and
    /// CloudSim's underload consolidation.
    Reference { detector: Detector, selection: Selection },
    /// Corral's default policy.
    Corral(CorralParams),
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec::Corral(CorralParams::default())
    }
}

/// A policy name or parameter that cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown policy {0:?}: use `corral`, or DETECTOR-SELECTION[-PARAM] with DETECTOR one of thr, mad, iqr, lr, lrr and SELECTION one of mmt, mc, rs, mu (e.g. lr-mmt-1.2, thr-mmt-0.8)")]
    Unknown(String),
    #[error("policy {name:?}: parameter {text:?} is not a number")]
    BadNumber { name: String, text: String },
    #[error("{field} is {value}: it must be {range}")]
    OutOfRange { field: &'static str, value: f64, range: &'static str },
}

impl PolicySpec {
    /// Parses a policy name such as `lr-mmt-1.2`, `thr-mc-0.8`, `mad-rs` or `corral`. `param`,
    /// when given, replaces the parameter in the name (the threshold or safety parameter of a
    /// reference policy, the target utilisation of `corral`). The result is validated.
    pub fn parse(name: &str, param: Option<f64>) -> Result<Self, SpecError> {
        let lower = name.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('-').collect();
        let number = |text: &str| -> Result<f64, SpecError> {
            text.parse::<f64>().map_err(|_| SpecError::BadNumber { name: name.to_string(), text: text.to_string() })
        };
        let spec = if parts[0] == "corral" || parts[0].starts_with("corral:") {
            let mut p = CorralParams::default();
            // `corral[-TARGET][:key=value,...]`
            let (head, opts) = lower.split_once(':').unwrap_or((lower.as_str(), ""));
            let head: Vec<&str> = head.split('-').collect();
            match head.len() {
                1 if head[0] == "corral" => {}
                2 if head[0] == "corral" => p.target = number(head[1])?,
                _ => return Err(SpecError::Unknown(name.to_string())),
            }
            for kv in opts.split(',').filter(|x| !x.is_empty()) {
                let (k, v) = kv.split_once('=').ok_or_else(|| SpecError::Unknown(name.to_string()))?;
                let x = number(v)?;
                match k.trim() {
                    "target" => p.target = x,
                    "high" => p.high = x,
                    "quantile" => p.quantile = x,
                    "window" => p.window = x.max(0.0) as usize,
                    "cooldown" => p.cooldown = x.max(0.0) as u64,
                    "evacuations" => p.evacuations = x.max(0.0) as usize,
                    "spare" => p.spare = x,
                    "evacuate_vms" => p.evacuate_vms = x.max(0.0) as usize,
                    _ => return Err(SpecError::Unknown(name.to_string())),
                }
            }
            if let Some(x) = param {
                p.target = x;
            }
            PolicySpec::Corral(p)
        } else {
            if !(2..=3).contains(&parts.len()) {
                return Err(SpecError::Unknown(name.to_string()));
            }
            let given = match (param, parts.get(2)) {
                (Some(x), _) => Some(x),
                (None, Some(t)) => Some(number(t)?),
                (None, None) => None,
            };
            let detector = match parts[0] {
                "thr" => Detector::Thr(given.unwrap_or(0.8)),
                "mad" => Detector::Mad(given.unwrap_or(2.5)),
                "iqr" => Detector::Iqr(given.unwrap_or(1.5)),
                "lr" => Detector::Lr(given.unwrap_or(1.2)),
                "lrr" => Detector::Lrr(given.unwrap_or(1.2)),
                _ => return Err(SpecError::Unknown(name.to_string())),
            };
            let selection = match parts[1] {
                "mmt" => Selection::Mmt,
                "mc" => Selection::Mc,
                "rs" => Selection::Rs,
                "mu" => Selection::Mu,
                _ => return Err(SpecError::Unknown(name.to_string())),
            };
            PolicySpec::Reference { detector, selection }
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), SpecError> {
        let check = |field: &'static str, value: f64, ok: bool, range: &'static str| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(SpecError::OutOfRange { field, value, range })
            }
        };
        match *self {
            PolicySpec::Reference { detector, .. } => match detector {
                Detector::Thr(t) => check("the THR utilisation threshold", t, t > 0.0 && t <= 1.0, "in (0, 1]"),
                Detector::Mad(s) => check("the MAD safety parameter", s, s >= 0.0, "0 or more"),
                Detector::Iqr(s) => check("the IQR safety parameter", s, s >= 0.0, "0 or more"),
                Detector::Lr(s) => check("the LR safety parameter", s, s > 0.0, "more than 0"),
                Detector::Lrr(s) => check("the LRR safety parameter", s, s > 0.0, "more than 0"),
            },
            PolicySpec::Corral(p) => {
                check("the corral target utilisation", p.target, p.target > 0.0 && p.target <= 1.0, "in (0, 1]")?;
                check("the corral high-water utilisation", p.high, p.high > 0.0 && p.high <= 1.0, "in (0, 1]")?;
                check("the corral forecast quantile", p.quantile, p.quantile > 0.0 && p.quantile <= 1.0, "in (0, 1]")?;
                check("the corral forecast window", p.window as f64, p.window >= 1, "1 or more")?;
                check("the corral spare room", p.spare, p.spare >= 0.0, "0 or more")?;
                Ok(())
            }
        }
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySpec::Corral(p) => {
                let d = CorralParams::default();
                f.write_str("corral")?;
                let mut sep = ':';
                let mut item = |f: &mut fmt::Formatter<'_>, k: &str, v: String| {
                    let r = write!(f, "{sep}{k}={v}");
                    sep = ',';
                    r
                };
                if p.target != d.target {
                    item(f, "target", p.target.to_string())?;
                }
                if p.high != d.high {
                    item(f, "high", p.high.to_string())?;
                }
                if p.quantile != d.quantile {
                    item(f, "quantile", p.quantile.to_string())?;
                }
                if p.window != d.window {
                    item(f, "window", p.window.to_string())?;
                }
                if p.cooldown != d.cooldown {
                    item(f, "cooldown", p.cooldown.to_string())?;
                }
                if p.evacuations != d.evacuations {
                    item(f, "evacuations", p.evacuations.to_string())?;
                }
                if p.spare != d.spare {
                    item(f, "spare", p.spare.to_string())?;
                }
                if p.evacuate_vms != d.evacuate_vms {
                    item(f, "evacuate_vms", p.evacuate_vms.to_string())?;
                }
                Ok(())
            }
            PolicySpec::Reference { detector, selection } => {
                let (d, x) = match *detector {
                    Detector::Thr(x) => ("thr", x),
                    Detector::Mad(x) => ("mad", x),
                    Detector::Iqr(x) => ("iqr", x),
                    Detector::Lr(x) => ("lr", x),
                    Detector::Lrr(x) => ("lrr", x),
                };
                let s = match selection {
                    Selection::Mmt => "mmt",
                    Selection::Mc => "mc",
                    Selection::Rs => "rs",
                    Selection::Mu => "mu",
                };
                write!(f, "{d}-{s}-{x}")
            }
        }
    }
}

impl FromStr for PolicySpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicySpec::parse(s, None)
    }
}
