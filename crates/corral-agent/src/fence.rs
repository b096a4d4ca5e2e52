//! Self-fencing. Every heartbeat the controller answers renews this host's lease; an agent
//! that cannot renew it (cut off from the control plane) stops its VMs itself before the
//! lease runs out, because once it has, the controller restarts them elsewhere. The time of
//! the last renewal is kept in a file, so an agent restarted during a partition knows its
//! lease is gone and fences at once instead of granting itself a fresh one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Stop the VMs this long before the lease would run out, at least.
const MARGIN: Duration = Duration::from_millis(2000);

#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Held {
    /// When the heartbeat that renewed it was sent (ms since the epoch).
    renewed_ms: u64,
    /// Its length (0: the controller gives no lease).
    lease_ms: u64,
}

/// This host's lease, as the agent knows it.
#[derive(Debug)]
pub struct Lease {
    file: PathBuf,
    held: Mutex<Held>,
    /// The heartbeat loop has tried the controller at least once since start: before that,
    /// a restarted agent does not judge its lease.
    tried: Mutex<bool>,
}

impl Lease {
    /// The lease recorded in `data_dir` (none if never renewed).
    pub fn load(data_dir: &Path) -> Self {
        let file = data_dir.join("lease.json");
        let held = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Self { file, held: Mutex::new(held), tried: Mutex::new(false) }
    }

    /// A heartbeat sent at `sent_ms` was answered with a lease of `lease_ms`.
    pub fn renewed(&self, sent_ms: u64, lease_ms: u64) {
        let h = Held { renewed_ms: sent_ms, lease_ms };
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = h;
        self.tried();
        let tmp = self.file.with_extension("tmp");
        let ok = serde_json::to_vec(&h).ok().is_some_and(|b| std::fs::write(&tmp, b).is_ok())
            && std::fs::rename(&tmp, &self.file).is_ok();
        if !ok {
            tracing::warn!("cannot record the lease in {}", self.file.display());
        }
    }

    /// The heartbeat loop reached, or failed to reach, the controller.
    pub fn tried(&self) {
        *self.tried.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Whether the VMs must be stopped now, and if so why.
    pub fn must_fence(&self, now: u64) -> Option<String> {
        if !*self.tried.lock().unwrap_or_else(|p| p.into_inner()) {
            return None;
        }
        let h = *self.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.lease_ms == 0 {
            return None;
        }
        let margin = MARGIN.max(Duration::from_millis(h.lease_ms / 4)).as_millis() as u64;
        let deadline = h.renewed_ms + h.lease_ms.saturating_sub(margin);
        (now >= deadline).then(|| {
            format!(
                "fenced: the lease was last renewed {:.1} s ago and runs out after {:.1} s; the controller may restart this VM elsewhere",
                now.saturating_sub(h.renewed_ms) as f64 / 1000.0,
                h.lease_ms as f64 / 1000.0
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_before_the_lease_runs_out_and_only_once_tried() {
        let d = tempfile::tempdir().expect("temporary directory");
        let l = Lease::load(d.path());
        assert!(l.must_fence(1_000_000).is_none(), "no lease ever held: nothing to fence");
        l.renewed(1_000_000, 10_000);
        assert!(l.must_fence(1_007_000).is_none(), "7 s into a 10 s lease");
        assert!(l.must_fence(1_007_500).is_some(), "2.5 s before it runs out");
        // A restarted agent reads the renewal back, and judges only after trying the controller.
        let l2 = Lease::load(d.path());
        assert!(l2.must_fence(1_009_000).is_none());
        l2.tried();
        assert!(l2.must_fence(1_009_000).is_some());
        // No lease from the controller: never fence.
        l2.renewed(1_009_000, 0);
        assert!(l2.must_fence(9_999_999).is_none());
    }
}
