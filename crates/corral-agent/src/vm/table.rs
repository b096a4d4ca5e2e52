//! The host's table of VMs and of the templates it holds: look-ups, listings, and adding a VM
//! to the table.

use std::sync::{Arc, Mutex};

use corral_api::agent::{VmDefinition, VmStatus};
use corral_api::{ApiError, VmState, VmUsage};

use super::{lock, Entry, Manager, Registered, VmRecord};
use crate::qemu::VmPaths;
use crate::templates::Template;

impl Manager {
    pub fn templates(&self) -> Vec<Template> {
        lock(&self.templates).clone()
    }

    pub fn set_templates(&self, t: Vec<Template>) {
        *lock(&self.templates) = t;
    }

    pub(super) fn template(&self, name: &str) -> Result<Template, ApiError> {
        lock(&self.templates)
            .iter()
            .find(|t| t.info.name == name)
            .cloned()
            .ok_or_else(|| ApiError::bad_request(format!("this host has no template {name:?}")))
    }

    pub(super) fn entry(&self, name: &str) -> Result<Arc<Entry>, ApiError> {
        lock(&self.vms)
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no VM named {name:?} on this host")))
    }

    /// Status of every VM.
    pub fn list(&self) -> Vec<VmStatus> {
        lock(&self.vms).values().map(|e| e.status()).collect()
    }

    pub fn get(&self, name: &str) -> Result<VmStatus, ApiError> {
        Ok(self.entry(name)?.status())
    }

    /// vCPUs and memory held by VMs that have a process.
    pub fn allocated(&self) -> (u32, u64) {
        lock(&self.vms)
            .values()
            .map(|e| e.snapshot())
            .filter(|r| r.state.holds_resources())
            .fold((0, 0), |(v, m), r| (v + r.def.vcpus, m + r.def.memory_mib))
    }

    /// Adds a VM to the host's table in `state` (its record is written by the caller). The same
    /// VM again (same UUID, a retried request) is returned as it is; another VM of that name is
    /// a conflict.
    pub(super) fn register(&self, def: &VmDefinition, state: VmState) -> Result<Registered, ApiError> {
        let mut vms = lock(&self.vms);
        if let Some(existing) = vms.get(&def.name) {
            let r = existing.snapshot();
            if r.def.uuid == def.uuid && r.state != VmState::Deleting {
                return Ok(Registered::Existing(existing.clone()));
            }
            return Err(ApiError::already_exists(format!("a VM named {:?} already exists on this host", def.name)));
        }
        let rec = VmRecord {
            def: def.clone(),
            state,
            error: None,
            ended: None,
            pid: None,
            boot_ms: None,
            migration: None,
            guest_agent: Default::default(),
        };
        let e = Arc::new(Entry {
            paths: VmPaths::new(self.s.data_dir.join("vms").join(&def.name)),
            op: Default::default(),
            rec: Mutex::new(rec),
            usage: Mutex::new((VmUsage::default(), None)),
            outgoing: Mutex::new(None),
            cancel: Default::default(),
            facts_at: Default::default(),
        });
        vms.insert(def.name.clone(), e.clone());
        Ok(Registered::New(e))
    }
}
