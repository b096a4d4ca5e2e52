//! The on-disk format of a template directory, shared by the controller's library and each
//! host's store: every template is a `<name>.json` metadata file naming its qcow2 disk (and,
//! for a directly booted image, its kernel and initrd), which sit beside it, and saying how it
//! boots and which guest agent it carries.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::TemplateInfo;
use crate::image::{Boot, Firmware, GuestAgentKind};

/// A template's metadata file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Meta {
    pub name: String,
    /// The kernel and initrd QEMU loads (`boot = direct` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    pub disk: String,
    /// How it boots by default.
    #[serde(default)]
    pub boot: Boot,
    /// The firmware it can boot under (a VM may pick one); empty: only `boot`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<Firmware>,
    /// The agent in its guests.
    #[serde(default)]
    pub guest_agent: GuestAgentKind,
    #[serde(default)]
    pub kernel_version: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub size_bytes: u64,
    /// The vCPUs its VMs are meant to have (an OVA's virtual hardware), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// The memory its VMs are meant to have, MiB (an OVA's virtual hardware), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// The user cloud-init makes in its guests (`vm ssh` logs in as it by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub default_user: Option<crate::image::LoginUser>,
}

/// A template with absolute paths to its parts.
#[derive(Debug, Clone)]
pub struct Template {
    pub info: TemplateInfo,
    pub meta: Meta,
    /// Kernel and initrd, for a directly booted image.
    pub direct: Option<(PathBuf, PathBuf)>,
    pub disk: PathBuf,
}

impl Template {
    /// Its files beside the metadata: the disk, then the kernel and initrd if it has them.
    pub fn files(&self) -> Vec<&Path> {
        let mut v = vec![self.disk.as_path()];
        if let Some((k, i)) = &self.direct {
            v.extend([k.as_path(), i.as_path()]);
        }
        v
    }
}

impl Meta {
    /// Whether the image can boot with this firmware.
    pub fn boots_with(&self, f: Firmware) -> bool {
        self.boot.firmware() == Some(f) || self.firmware.contains(&f)
    }

    /// What is wrong with the metadata, if anything: a direct boot needs a kernel and an
    /// initrd, a firmware boot none.
    pub fn check(&self) -> Result<(), String> {
        match (self.boot, &self.kernel, &self.initrd) {
            (Boot::Direct, Some(_), Some(_)) => Ok(()),
            (Boot::Direct, _, _) => Err("boot = direct needs a kernel and an initrd".into()),
            (_, None, None) => Ok(()),
            (b, _, _) => Err(format!("boot = {b} boots from the disk: it takes no kernel or initrd")),
        }
    }
}

/// Loads every complete template in `dir`, sorted by name. Broken entries are skipped with a
/// warning on stderr-bound logs left to the caller: their names are returned in the second list.
pub fn scan(dir: &Path) -> (Vec<Template>, Vec<String>) {
    let mut out = Vec::new();
    let mut broken = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return (out, broken) };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let meta = std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Meta>(&b).map_err(|e| e.to_string()));
        match meta {
            Ok(m) => {
                if let Err(e) = m.check() {
                    broken.push(format!("{}: {e}", p.display()));
                    continue;
                }
                let direct = match (&m.kernel, &m.initrd) {
                    (Some(k), Some(i)) => Some((dir.join(k), dir.join(i))),
                    _ => None,
                };
                let t = Template {
                    direct,
                    disk: dir.join(&m.disk),
                    info: TemplateInfo {
                        name: m.name.clone(),
                        size_bytes: m.size_bytes,
                        kernel_version: m.kernel_version.clone(),
                        os: m.os.clone(),
                        boot: m.boot,
                        guest_agent: m.guest_agent,
                    },
                    meta: m,
                };
                let parts_there = t.direct.as_ref().is_none_or(|(k, i)| k.exists() && i.exists());
                if parts_there && t.disk.exists() {
                    out.push(t);
                } else {
                    broken.push(format!("{}: kernel, initrd or disk missing", p.display()));
                }
            }
            Err(e) => broken.push(format!("{}: {e}", p.display())),
        }
    }
    out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    (out, broken)
}
