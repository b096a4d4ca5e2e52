//! Profiles: the TOML a user writes to describe a cluster's VMs, parsed, checked and stored.

use serde::Deserialize;

use corral_api::cluster::{Placement, Profile, ProfileSource};
use corral_api::ApiError;

use crate::ipam::bridged_range;
use crate::service::{store_err, Controller};
use crate::tables::PROFILES;

/// A memory or disk size in a profile: `512`, `"512M"`, `"2G"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Mib(u64),
    Text(String),
}

impl Size {
    fn mib(&self, field: &str) -> Result<u64, String> {
        match self {
            Size::Mib(n) => Ok(*n),
            Size::Text(s) => corral_api::size::parse_mib(s).map_err(|e| format!("field `{field}`: {e}")),
        }
    }
}

/// A profile file as the user writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    template: String,
    vcpus: u32,
    memory: Size,
    #[serde(default)]
    disk: Option<Size>,
    #[serde(default)]
    workload: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    restart_priority: i32,
    #[serde(default)]
    ha: Option<String>,
    #[serde(default)]
    storage: Option<String>,
    #[serde(default)]
    bridged: Option<corral_api::cluster::Bridged>,
    #[serde(default)]
    firmware: Option<String>,
    #[serde(default)]
    ssh_keys: Vec<String>,
    #[serde(default)]
    user_data: Option<String>,
}

impl Controller {
    fn parse_profile(&self, src: &ProfileSource) -> Result<Profile, ApiError> {
        let name = &src.name;
        corral_api::names::validate_name("profile", name).map_err(ApiError::bad_request)?;
        let bad = |m: String| ApiError::bad_request(format!("profile {name}: {m}"));
        let t: ProfileToml = toml::from_str(&src.toml).map_err(|e| bad(e.to_string().trim().replace('\n', " ")))?;
        if t.vcpus == 0 || t.vcpus > 256 {
            return Err(bad(format!("field `vcpus`: {} is not possible: use 1 to 256", t.vcpus)));
        }
        let memory_mib = t.memory.mib("memory").map_err(bad)?;
        if memory_mib < 32 {
            return Err(bad(format!("field `memory`: {memory_mib} MiB is too little: a guest needs at least 32 MiB")));
        }
        corral_api::types::check_memory_mib(memory_mib).map_err(|e| bad(format!("field `memory`: {e}")))?;
        let tpl = self.check_template(&t.template).map_err(|e| bad(e.message))?;
        let disk_mib = match &t.disk {
            None => None,
            Some(d) => {
                let m = d.mib("disk").map_err(bad)?;
                corral_api::types::check_disk_mib(m).map_err(|e| bad(format!("field `disk`: {e}")))?;
                let min = tpl.size_bytes.div_ceil(1 << 20);
                if m < min {
                    return Err(bad(format!(
                        "field `disk`: {m} MiB is smaller than template {} ({min} MiB)",
                        tpl.name
                    )));
                }
                Some(m)
            }
        };
        let workload = t.workload.unwrap_or_else(|| "idle".into());
        corral_api::validate_workload(&workload).map_err(|e| bad(format!("field `workload`: {e}")))?;
        let network = t.network.unwrap_or_else(|| "overlay".into());
        match (network.as_str(), &t.bridged) {
            ("overlay", None) => {}
            ("overlay", Some(_)) => return Err(bad("section [bridged] needs `network = \"bridged\"`".into())),
            ("bridged", None) => {
                return Err(bad(
                    "`network = \"bridged\"` needs a [bridged] section: interface, range, prefix (and vlan)".into(),
                ))
            }
            ("bridged", Some(b)) => {
                if let Err(e) = corral_api::agent::check_interface(&b.interface) {
                    return Err(bad(format!("field `bridged.interface`: {e}")));
                }
                if b.vlan.is_some_and(|v| v == 0 || v > 4094) {
                    return Err(bad("field `bridged.vlan`: use 1 to 4094".into()));
                }
                bridged_range(b).map_err(|e| bad(format!("field `bridged`: {e}")))?;
            }
            (other, _) => {
                return Err(bad(format!(
                    "field `network`: {other:?} is not a network kind: use \"overlay\" or \"bridged\""
                )))
            }
        }
        for (k, v) in &t.placement.labels {
            if k.is_empty() || v.is_empty() {
                return Err(bad("field `placement.labels`: keys and values must not be empty".into()));
            }
        }
        let storage: corral_api::Storage = match &t.storage {
            None => corral_api::Storage::Local,
            Some(s) => s.parse().map_err(|e: String| bad(format!("field `storage`: {e}")))?,
        };
        let asked = t.ha.as_deref().map(str::parse).transpose().map_err(|e: String| bad(format!("field `ha`: {e}")))?;
        let ha = crate::ha_policy::resolve_ha(asked, storage).map_err(|e| bad(format!("field `ha`: {}", e.message)))?;
        let firmware = t
            .firmware
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| bad(format!("field `firmware`: {e}")))?;
        Self::check_firmware(&tpl, firmware).map_err(|e| bad(format!("field `firmware`: {e}: remove the field")))?;
        let ssh_keys = t
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, k)| k.parse().map_err(|e: String| bad(format!("field `ssh_keys`, key {}: {e}", i + 1))))
            .collect::<Result<Vec<_>, _>>()?;
        let user_data = t
            .user_data
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| bad(format!("field `user_data`: {e}")))?;
        Ok(Profile {
            ha,
            firmware,
            ssh_keys,
            user_data,
            storage,
            name: name.to_string(),
            template: t.template,
            vcpus: t.vcpus,
            memory_mib,
            disk_mib,
            workload,
            network,
            placement: t.placement,
            restart_priority: t.restart_priority,
            bridged: t.bridged,
            source: src.toml.clone(),
        })
    }

    pub fn create_profile(&self, src: ProfileSource, replace: bool) -> Result<Profile, ApiError> {
        let p = self.parse_profile(&src)?;
        let exists = PROFILES.contains(&*self.store, &p.name).map_err(store_err)?;
        if exists && !replace {
            return Err(ApiError::conflict(format!(
                "profile {:?} already exists: use `corral profile edit {}` or delete it first",
                p.name, p.name
            )));
        }
        if !exists && replace {
            return Err(ApiError::not_found(format!("no profile named {:?}", p.name)));
        }
        PROFILES.put(&*self.store, &p.name, &p).map_err(store_err)?;
        Ok(p)
    }

    pub fn profiles(&self) -> Result<Vec<Profile>, ApiError> {
        PROFILES.list(&*self.store).map_err(store_err)
    }

    pub fn profile(&self, name: &str) -> Result<Profile, ApiError> {
        PROFILES
            .get(&*self.store, name)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found(format!("no profile named {name:?}: see `corral profile list`")))
    }

    pub fn delete_profile(&self, name: &str) -> Result<(), ApiError> {
        self.profile(name)?;
        // Clusters keep a copy of their profile, so deleting it harms none of them.
        PROFILES.delete(&*self.store, name).map_err(store_err)
    }
}
