//! The templates this host holds, in its template directory (format: [`corral_api::template_dir`]),
//! and fetching a template from the controller's library when the controller sends one.

use std::path::Path;

pub use corral_api::template_dir::{Meta, Template};

/// Loads every template in `dir`; broken entries are logged and skipped.
pub fn scan(dir: &Path) -> Vec<Template> {
    let (ok, broken) = corral_api::template_dir::scan(dir);
    for b in broken {
        tracing::warn!("template skipped: {b}");
    }
    ok
}

/// Downloads template `name` from the controller into `dir`: the parts first, each through a
/// temporary file, and the metadata last, so a cut transfer never looks like a template.
pub async fn pull(
    http: &reqwest::Client,
    controller: &str,
    token: Option<&str>,
    name: &str,
    dir: &Path,
) -> Result<(), crate::fetch::FetchError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let base = format!("{}/v1/templates/{name}/files", controller.trim_end_matches('/'));
    let mut req = http.get(format!("{base}/meta"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(crate::fetch::FetchError::NotFound(format!("{base}/meta")));
    }
    let meta: Meta = resp.error_for_status().map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
    meta.check().map_err(|e| format!("template {name:?} from the controller: {e}"))?;
    let direct = meta.kernel.is_some();
    let local = Meta {
        kernel: direct.then(|| format!("{name}.vmlinuz")),
        initrd: direct.then(|| format!("{name}.initrd")),
        disk: format!("{name}.qcow2"),
        ..meta
    };
    let parts = [("disk", Some(&local.disk)), ("kernel", local.kernel.as_ref()), ("initrd", local.initrd.as_ref())];
    for (part, file) in parts {
        if let Some(file) = file {
            crate::fetch::download(http, &format!("{base}/{part}"), token, &dir.join(file)).await?;
        }
    }
    let bytes = serde_json::to_vec_pretty(&local).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("{name}.json.partial"));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join(format!("{name}.json"))).map_err(|e| e.to_string())?;
    Ok(())
}
