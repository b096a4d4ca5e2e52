//! The lab's state file (`<dir>/lab.json`): what the lab is made of, recorded before it is
//! made, and the options `corral lab up` builds it from.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Options of `corral lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub hosts: u32,
    /// Lab number: selects the underlay subnet 198.18.<index>.0/24 and device names.
    pub index: u8,
    pub dir: PathBuf,
    /// Directory holding the templates (the guest build output).
    pub templates: PathBuf,
    /// Machine-wide cache (accelerator probe verdict).
    pub cache: PathBuf,
    /// The `corral` binary to run.
    pub exe: PathBuf,
    /// Controllers: 1 keeps the state in an embedded file; more share a 3-member etcd
    /// cluster the lab runs on loopback, one leading and the others on standby.
    pub controllers: u32,
    pub accel: String,
}

/// One lab host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabHost {
    pub name: String,
    pub netns: String,
    pub veth: String,
    /// The host's second interface (`eth1` inside), on the provider bridge.
    #[serde(default)]
    pub provider_veth: String,
    pub ip: String,
    pub data: PathBuf,
    #[serde(default)]
    pub agent_pid: Option<u32>,
    /// Put in standby by the controller (`corral lab power off`): its agent is stopped and
    /// `lab up` leaves it so.
    #[serde(default)]
    pub standby: bool,
    /// A fault injected by `corral lab kill` (`killed`: agent and QEMU processes dead, link
    /// down, as in a power loss) or `corral lab partition` (`partitioned`: underlay link cut,
    /// processes alive). `corral lab heal` clears it; until then `lab up` leaves the host so.
    #[serde(default)]
    pub fault: Option<String>,
}

/// The lab's state file (`<dir>/lab.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub index: u8,
    pub dir: PathBuf,
    pub bridge: String,
    /// A second segment every host joins with `eth1`, for bridged (provider) networks.
    #[serde(default)]
    pub provider_bridge: String,
    pub url: String,
    #[serde(default)]
    pub controller_pid: Option<u32>,
    pub hosts: Vec<LabHost>,
    /// The accelerator the agents were started with (`--accel`).
    #[serde(default = "default_accel")]
    pub accel: String,
    /// Standby controllers (with `--controllers N`, N > 1): URL and PID of each.
    #[serde(default)]
    pub standby_controllers: Vec<LabController>,
    /// The etcd members the controllers share (with `--controllers N`, N > 1).
    #[serde(default)]
    pub etcd: Vec<LabEtcd>,
}

/// A controller beyond the first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabController {
    pub url: String,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// An etcd member of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabEtcd {
    pub member: corral_store::local_etcd::Member,
    #[serde(default)]
    pub pid: Option<u32>,
}

fn default_accel() -> String {
    "auto".into()
}

impl LabState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        match std::fs::read(Self::path(dir)) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("lab state {} is corrupt", Self::path(dir).display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    pub(crate) fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, Self::path(&self.dir))?;
        Ok(())
    }
    /// The export lines a user pastes into a shell.
    pub fn exports(&self) -> Result<String> {
        let token = std::fs::read_to_string(self.token_file())
            .context("the lab's token file is missing: run `corral lab up` again")?;
        Ok(format!("export CORRAL_URL={}\nexport CORRAL_TOKEN={}", self.urls().join(","), token.trim()))
    }
    /// Every controller's URL, the first controller's first.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(self.url.clone()).chain(self.standby_controllers.iter().map(|c| c.url.clone())).collect()
    }
    /// The etcd client endpoints, if the lab runs etcd.
    pub fn etcd_clients(&self) -> Vec<String> {
        self.etcd.iter().map(|e| e.member.client()).collect()
    }
    /// The API token shared by the lab's controller, agents and CLI.
    /// Hosts not in standby.
    pub fn powered(&self) -> usize {
        self.hosts.iter().filter(|h| !h.standby && h.fault.is_none()).count()
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }
    /// The controller's template library.
    pub fn library(&self) -> PathBuf {
        self.dir.join("library")
    }
}

/// The lab in `dir` and the index of its host `host`, or an error saying what is missing.
pub(crate) fn lab_host(dir: &Path, host: &str) -> Result<(LabState, usize)> {
    let Some(s) = LabState::load(dir)? else {
        bail!("no lab in {}: start one with `corral lab up`", dir.display());
    };
    let Some(i) = s.hosts.iter().position(|h| h.name == host) else {
        let names: Vec<&str> = s.hosts.iter().map(|h| h.name.as_str()).collect();
        bail!("no lab host named {host:?}: the lab has {}", names.join(", "));
    };
    Ok((s, i))
}
