//! The templates a host holds: each is a `<name>.json` metadata file next to its kernel, initrd
//! and qcow2 disk in the template directory.

use std::path::{Path, PathBuf};

use corral_api::agent::TemplateInfo;
use serde::Deserialize;

/// A template's metadata file, as the guest build writes it.
#[derive(Debug, Clone, Deserialize)]
struct Meta {
    name: String,
    kernel: String,
    initrd: String,
    disk: String,
    #[serde(default)]
    kernel_version: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    size_bytes: u64,
}

/// A template with absolute paths to its parts.
#[derive(Debug, Clone)]
pub struct Template {
    pub info: TemplateInfo,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
}

/// Loads every template in `dir`. Unreadable entries are reported and skipped.
pub fn scan(dir: &Path) -> Vec<Template> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        tracing::warn!("template directory {} cannot be read", dir.display());
        return out;
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Meta>(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => {
                let t = Template {
                    kernel: dir.join(&m.kernel),
                    initrd: dir.join(&m.initrd),
                    disk: dir.join(&m.disk),
                    info: TemplateInfo {
                        name: m.name,
                        size_bytes: m.size_bytes,
                        kernel_version: m.kernel_version,
                        os: m.os,
                    },
                };
                if t.kernel.exists() && t.initrd.exists() && t.disk.exists() {
                    out.push(t);
                } else {
                    tracing::warn!(
                        "template {} is missing its kernel, initrd or disk; skipped",
                        p.display()
                    );
                }
            }
            Err(e) => tracing::warn!("template metadata {} is invalid: {e}; skipped", p.display()),
        }
    }
    out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    out
}
