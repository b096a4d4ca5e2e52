//! The on-disk format of a template directory, shared by the controller's library and each
//! host's store: every template is a `<name>.json` metadata file naming its kernel, initrd and
//! qcow2 disk, which sit beside it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::TemplateInfo;

/// A template's metadata file.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Meta {
    pub name: String,
    pub kernel: String,
    pub initrd: String,
    pub disk: String,
    #[serde(default)]
    pub kernel_version: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub size_bytes: u64,
}

/// A template with absolute paths to its parts.
#[derive(Debug, Clone)]
pub struct Template {
    pub info: TemplateInfo,
    pub meta: Meta,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
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
                let t = Template {
                    kernel: dir.join(&m.kernel),
                    initrd: dir.join(&m.initrd),
                    disk: dir.join(&m.disk),
                    info: TemplateInfo {
                        name: m.name.clone(),
                        size_bytes: m.size_bytes,
                        kernel_version: m.kernel_version.clone(),
                        os: m.os.clone(),
                    },
                    meta: m,
                };
                if t.kernel.exists() && t.initrd.exists() && t.disk.exists() {
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
