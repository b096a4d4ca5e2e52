//! Templates: the controller's library, the templates it can send to hosts that lack them, and
//! shipping them (one transfer per host and template, shared by everyone who needs it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use corral_api::agent::Register;
use corral_api::{ApiError, Template};

use crate::service::{lock, store_err, Controller};
use crate::tables::HOSTS;

/// One transfer of a template to a host, shared by everyone waiting for it.
pub(crate) type TemplateSend = Arc<tokio::sync::OnceCell<Result<(), String>>>;

/// A template of the library.
#[derive(Debug, Clone)]
pub struct LibraryTemplate {
    pub name: String,
    pub size_bytes: u64,
    pub kernel_version: String,
    pub os: String,
    pub t: corral_api::template_dir::Template,
}

/// Loads the library in `dir`.
pub fn scan(dir: &Path) -> Vec<LibraryTemplate> {
    let (ok, broken) = corral_api::template_dir::scan(dir);
    for b in broken {
        tracing::warn!("library template skipped: {b}");
    }
    ok.into_iter()
        .map(|t| LibraryTemplate {
            name: t.info.name.clone(),
            size_bytes: t.info.size_bytes,
            kernel_version: t.info.kernel_version.clone(),
            os: t.info.os.clone(),
            t,
        })
        .collect()
}

impl Controller {
    /// Templates of the controller's library.
    pub(crate) fn library(&self) -> Vec<LibraryTemplate> {
        self.settings.templates_dir.as_deref().map(scan).unwrap_or_default()
    }

    pub fn templates(&self) -> Result<Vec<Template>, ApiError> {
        let regs: Vec<Register> = HOSTS.list(&*self.store).map_err(store_err)?;
        let mut out: BTreeMap<String, Template> = BTreeMap::new();
        for t in self.library() {
            out.insert(
                t.name.clone(),
                Template {
                    name: t.name.clone(),
                    size_bytes: t.size_bytes,
                    kernel_version: t.kernel_version.clone(),
                    os: t.os.clone(),
                    boot: t.t.meta.boot,
                    guest_agent: t.t.meta.guest_agent,
                    vcpus: t.t.meta.vcpus,
                    memory_mib: t.t.meta.memory_mib,
                    default_user: t.t.meta.default_user.clone(),
                    hosts: vec![],
                },
            );
        }
        for r in regs {
            for t in r.templates {
                out.entry(t.name.clone())
                    .or_insert_with(|| Template {
                        name: t.name.clone(),
                        size_bytes: t.size_bytes,
                        kernel_version: t.kernel_version.clone(),
                        os: t.os.clone(),
                        boot: t.boot,
                        guest_agent: t.guest_agent,
                        vcpus: None,
                        memory_mib: None,
                        default_user: None,
                        hosts: vec![],
                    })
                    .hosts
                    .push(r.name.clone());
            }
        }
        Ok(out.into_values().collect())
    }

    /// Checks that a template exists somewhere (library or a host).
    pub(crate) fn check_template(&self, name: &str) -> Result<Template, ApiError> {
        let all = self.templates()?;
        let have: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
        all.into_iter().find(|t| t.name == name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown template {name:?}: available templates are [{}] (see `corral template list`)",
                have.join(", ")
            ))
        })
    }

    /// Whether a VM from template `t` may ask for firmware: only an image booting from its disk
    /// has any (the agent checks which the image supports).
    pub(crate) fn check_firmware(t: &Template, firmware: Option<corral_api::image::Firmware>) -> Result<(), String> {
        if firmware.is_some() && t.boot == corral_api::image::Boot::Direct {
            return Err(format!("template {} boots directly (kernel and initrd), not from firmware", t.name));
        }
        Ok(())
    }

    /// Makes sure `host` holds `template`, sending it from the library if not. Concurrent
    /// callers for the same host and template share one transfer.
    pub(crate) async fn ensure_template(&self, host: &str, template: &str) -> Result<(), ApiError> {
        let has = |c: &Self| -> Result<bool, ApiError> {
            let r: Option<Register> = HOSTS.get(&*c.store, host).map_err(store_err)?;
            Ok(r.is_some_and(|r| r.templates.iter().any(|t| t.name == template)))
        };
        if has(self)? {
            return Ok(());
        }
        let key = (host.to_string(), template.to_string());
        let cell = lock(&self.sends).entry(key.clone()).or_default().clone();
        let res = cell
            .get_or_init(|| async {
                if has(self).unwrap_or(false) {
                    return Ok(());
                }
                if !self.library().iter().any(|t| t.name == template) {
                    return Err(format!(
                        "host {host} lacks template {template:?} and the controller's library does not hold it"
                    ));
                }
                let started = Instant::now();
                let reg =
                    self.agent(host).map_err(|e| e.message)?.pull_template(template).await.map_err(|e| e.message)?;
                HOSTS.put(&*self.store, host, &reg).map_err(|e| e.to_string())?;
                self.event(
                    "template.sent",
                    host,
                    format!("template {template} sent in {} ms", started.elapsed().as_millis()),
                );
                Ok(())
            })
            .await
            .clone();
        if res.is_err() {
            // Let a later attempt try again.
            lock(&self.sends).remove(&key);
        }
        res.map_err(ApiError::unavailable)
    }
}
