//! Choosing the accelerator. `/dev/kvm` may exist and still be unusable (on nested hosts
//! standard guests hang under it), so KVM is used only after a bounded test boot of the real
//! guest kernel and initramfs succeeds; otherwise the agent falls back to TCG and says why.

use std::path::Path;
use std::time::{Duration, Instant};

use corral_api::{Accel, AccelMode};
use serde::{Deserialize, Serialize};

use crate::templates::Template;

/// The probe's verdict, cached on disk so that agents on one machine probe once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub accel: Accel,
    pub note: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(12);

/// Decides the accelerator: `kvm`/`tcg` forced, or `auto` (probe, cached in `cache`).
pub async fn choose(
    mode: AccelMode,
    qemu: &str,
    template: Option<&Template>,
    cache: Option<&Path>,
    scratch: &Path,
) -> Verdict {
    match mode {
        AccelMode::Tcg => return Verdict { accel: Accel::Tcg, note: "tcg chosen by --accel".into() },
        AccelMode::Kvm => return Verdict { accel: Accel::Kvm, note: "kvm chosen by --accel (not probed)".into() },
        AccelMode::Auto => {}
    }
    if let Some(c) = cache {
        if let Some(v) = std::fs::read(c).ok().and_then(|b| serde_json::from_slice::<Verdict>(&b).ok()) {
            return v;
        }
    }
    let v = probe(qemu, template, scratch).await;
    if let Some(c) = cache {
        if let Ok(b) = serde_json::to_vec(&v) {
            let tmp = c.with_extension("tmp");
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(tmp, c);
            }
        }
    }
    v
}

async fn probe(qemu: &str, template: Option<&Template>, scratch: &Path) -> Verdict {
    let tcg = |why: String| {
        tracing::warn!("accelerator: {why}; using TCG (software emulation)");
        Verdict { accel: Accel::Tcg, note: format!("{why}; using tcg") }
    };
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return tcg("/dev/kvm is not usable".into());
    }
    let Some((kernel, initrd)) = template.and_then(|t| t.direct.as_ref()) else {
        return tcg("no directly booted template to test-boot KVM with".into());
    };
    tracing::info!("accelerator: test-booting the guest kernel under KVM (at most {} s)", PROBE_TIMEOUT.as_secs());
    let log = scratch.join("accel-probe.log");
    let _ = std::fs::remove_file(&log);
    // Kernel and initramfs with no root disk: a working guest reaches the initramfs, finds no
    // disk, prints its message and powers off. A hanging one never gets there.
    let mut child = match tokio::process::Command::new(qemu)
        .args(["-accel", "kvm", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1", "-serial"])
        .arg(format!("file:{}", log.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return tcg(format!("cannot run {qemu}: {e}")),
    };
    let start = Instant::now();
    let exited = tokio::time::timeout(PROBE_TIMEOUT, child.wait()).await;
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    match exited {
        Ok(_) if out.contains("corral-initramfs") => {
            tracing::info!("accelerator: KVM test boot finished in {:?}; using KVM", start.elapsed());
            Verdict { accel: Accel::Kvm, note: format!("kvm test boot passed in {} ms", start.elapsed().as_millis()) }
        }
        Ok(_) => tcg("kvm test boot ended without reaching the guest's initramfs".into()),
        Err(_) => {
            let _ = child.kill().await;
            tcg(format!("kvm test boot hung (no result within {} s)", PROBE_TIMEOUT.as_secs()))
        }
    }
}
