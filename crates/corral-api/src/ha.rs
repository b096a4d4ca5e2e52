//! High availability on the wire: a VM's HA policy, the admission policy, and `GET /v1/ha`.

use serde::{Deserialize, Serialize};

/// What happens to a VM when its host fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HaPolicy {
    /// It stays with its host: it runs again when the host returns and it is started.
    #[default]
    Off,
    /// Restarted on another host with its disk as it was (shared storage only).
    Restart,
    /// Restarted on another host from its template, with the same name, UUID, MAC and IP
    /// (its disk stayed on the failed host: what it wrote there is not carried over).
    RestartFresh,
}

words!(flag HaPolicy, "HA policy", "off, restart (shared storage) or restart-fresh", {
    Off => "off",
    Restart => "restart",
    RestartFresh => "restart-fresh",
});

/// What the controller does with an HA VM that would leave too little room to restart the HA
/// VMs of the failed hosts it keeps a reserve for (`corral controller --ha-admission`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaAdmission {
    /// Refuse the VM.
    #[default]
    Refuse,
    /// Admit it, with a warning event.
    Warn,
}

words!(flag HaAdmission, "HA admission", "refuse or warn", { Refuse => "refuse", Warn => "warn" });

/// `GET /v1/ha`: what is protected against a host failure and what is not.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HaStatus {
    /// Agents lose their lease (and stop their VMs) this long after their last renewal.
    pub lease_ms: u64,
    /// Heartbeats missing this long make a host a suspect, checked by its peers.
    pub suspect_after_ms: u64,
    /// VMs restarted elsewhere if their host fails.
    pub protected: Vec<String>,
    /// VMs that are not, each with why.
    pub unprotected: Vec<HaUnprotected>,
    /// Hosts failed or recovering.
    pub hosts_down: Vec<String>,
    /// Whether the protected VMs of the busiest host would fit on the others if it failed.
    pub spare_ok: bool,
    /// What the spare-capacity check found.
    pub spare_note: String,
}

/// A VM that a host failure would leave down.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HaUnprotected {
    pub name: String,
    pub host: String,
    pub why: String,
}
