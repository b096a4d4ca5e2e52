//! Dynamic resource scheduling on the live pool: the settings operators give the controller's
//! balancing and consolidation loop, the rounds it records (what it planned, why, and what it
//! did), and the power state of hosts.

use serde::{Deserialize, Serialize};

/// What the balancing and consolidation loop does with its plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DrsMode {
    /// No rounds.
    Off,
    /// Plans every interval and records them; moves nothing.
    Advise,
    /// Plans and carries the plans out: live migrations, standby, wake-up.
    #[default]
    Auto,
}

words!(DrsMode, "DRS mode", "off, advise or auto", { Off => "off", Advise => "advise", Auto => "auto" });

/// Default seconds between rounds.
pub const DEFAULT_INTERVAL_S: f64 = 60.0;
/// Default live migrations one round may start.
pub const DEFAULT_MAX_MIGRATIONS: usize = 2;

/// The pool-wide policy of the loop (`corral drs set`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrsSettings {
    #[serde(default)]
    pub mode: DrsMode,
    /// Seconds between rounds (also the spacing of the demand history the policy reads).
    #[serde(default = "default_interval")]
    pub interval_s: f64,
    /// Policy name as `corral sim` takes it: `corral` (default) or a reference heuristic such
    /// as `lr-mmt`, `thr-mmt`.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// The policy's parameter (safety factor or threshold of a reference heuristic).
    #[serde(default)]
    pub param: Option<f64>,
    /// `corral` policy: utilisation a host may be filled to by placement (0..1].
    #[serde(default)]
    pub target: Option<f64>,
    /// `corral` policy: utilisation above which a host is relieved (0..1].
    #[serde(default)]
    pub high: Option<f64>,
    /// Live migrations one round may start.
    #[serde(default = "default_max_migrations")]
    pub max_migrations: usize,
    /// Hosts never put in standby.
    #[serde(default)]
    pub keep_on: Vec<String>,
}

fn default_interval() -> f64 {
    DEFAULT_INTERVAL_S
}
fn default_policy() -> String {
    "corral".into()
}
fn default_max_migrations() -> usize {
    DEFAULT_MAX_MIGRATIONS
}

impl Default for DrsSettings {
    fn default() -> Self {
        DrsSettings {
            mode: DrsMode::default(),
            interval_s: DEFAULT_INTERVAL_S,
            policy: default_policy(),
            param: None,
            target: None,
            high: None,
            max_migrations: DEFAULT_MAX_MIGRATIONS,
            keep_on: Vec::new(),
        }
    }
}

/// A change of settings: fields left out keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrsSettingsPatch {
    pub mode: Option<DrsMode>,
    pub interval_s: Option<f64>,
    pub policy: Option<String>,
    /// `Some(None)` is not expressible in JSON; a negative value clears it.
    pub param: Option<f64>,
    pub target: Option<f64>,
    pub high: Option<f64>,
    pub max_migrations: Option<usize>,
    pub keep_on: Option<Vec<String>>,
}

/// Why a plan moves a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// Its host is (or is forecast to be) over the load limit.
    Overload,
    /// Its host is being emptied to go to standby.
    Consolidate,
}

words!(wire MoveReason, "move reason", "overload or consolidate", {
    Overload => "overload",
    Consolidate => "consolidate",
});

/// One move of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrsMove {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// Why the plan moves it.
    pub reason: MoveReason,
    /// Why, in words: the host's load against the limit, or the watts emptying it saves.
    pub why: String,
    /// Expected migration time (memory over the link), seconds.
    pub expected_s: f64,
    /// When carried out: the migration's id, or why it was not started.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// One round of the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrsRound {
    pub ms: u64,
    pub mode: DrsMode,
    pub policy: String,
    /// Hosts found overloaded.
    pub overloaded: Vec<String>,
    pub moves: Vec<DrsMove>,
    /// Standby hosts to wake (before the moves that target them).
    pub wake: Vec<String>,
    /// Hosts to put in standby once their VMs have left.
    pub standby: Vec<String>,
    /// Watts the plan is expected to save (hosts going to standby less hosts woken).
    pub expected_saving_watts: f64,
    /// Time the scheduler core took to plan, ms.
    pub planning_ms: f64,
    /// True if the round's plan was carried out (mode `auto`).
    pub executed: bool,
    /// What happened while carrying it out (hosts woken, put in standby, refusals).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// `GET /v1/drs`: settings, power state and the latest round.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrsStatus {
    pub settings: DrsSettings,
    pub hosts_on: Vec<String>,
    pub hosts_standby: Vec<String>,
    pub migrations_running: usize,
    pub last: Option<DrsRound>,
    /// Rounds recorded so far.
    pub rounds: u64,
}

/// The power state of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostPower {
    #[default]
    On,
    /// Emptied by consolidation and powered down (or parked): no VMs, no placements.
    Standby,
    /// Being powered up; placements wait until its agent reports.
    Waking,
}

impl std::fmt::Display for HostPower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostPower::On => "on",
            HostPower::Standby => "standby",
            HostPower::Waking => "waking",
        })
    }
}
