//! How a VM boots, decided before its QEMU starts: its image's kernel and initrd handed to
//! QEMU (`direct`), or the disk's own boot loader under SeaBIOS (`bios`) or OVMF (`uefi`), with
//! the VM's own copy of the UEFI variable store. Firmware-booted VMs use the q35 machine.

use std::path::{Path, PathBuf};

use corral_api::agent::VmDefinition;
use corral_api::image::{Boot, Firmware};

use crate::qemu::VmPaths;
use crate::templates::Template;

/// OVMF's code and its empty variable store, as Debian's `ovmf` package installs them.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The boot of one VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Direct { kernel: PathBuf, initrd: PathBuf },
    Bios,
    Uefi { code: PathBuf, vars: PathBuf },
}

impl Plan {
    /// Whether the VM boots from its disk under firmware (and so is configured by cloud-init).
    pub fn firmware(&self) -> bool {
        !matches!(self, Plan::Direct { .. })
    }

    /// The QEMU arguments of this boot: the machine type and the firmware's files.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-machine".into()];
        match self {
            Plan::Direct { kernel, initrd } => {
                a.push("pc".into());
                a.extend([
                    "-kernel".into(),
                    kernel.display().to_string(),
                    "-initrd".into(),
                    initrd.display().to_string(),
                ]);
            }
            Plan::Bios => a.push("q35".into()),
            Plan::Uefi { code, vars } => {
                a.push("q35".into());
                a.extend([
                    "-drive".into(),
                    format!("if=pflash,unit=0,format=raw,readonly=on,file={}", code.display()),
                    "-drive".into(),
                    format!("if=pflash,unit=1,format=raw,file={}", vars.display()),
                ]);
            }
        }
        if self.firmware() {
            // Cloud guests wait on entropy early in boot without one.
            a.extend(["-device".into(), "virtio-rng-pci".into()]);
        }
        a
    }
}

/// Why a VM cannot boot as asked.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("image {image:?} cannot boot with {firmware} firmware (it boots with: {boots}); pick another --firmware or image")]
    Unsupported { image: String, firmware: Firmware, boots: String },
    #[error("image {0:?} boots directly (kernel and initrd), not from firmware: leave --firmware unset")]
    DirectOnly(String),
    #[error("image {0} boots directly but has no kernel and initrd: import it again")]
    NoKernel(String),
    #[error("UEFI boot needs OVMF, but {0} is missing: install the Debian package ovmf (make setup does)")]
    NoOvmf(String),
    #[error("cannot make the VM's UEFI variable store {0}: {1}")]
    Vars(String, std::io::Error),
}

/// Decides how the VM boots (its own firmware choice, or its image's default) and makes what
/// that needs: for UEFI, the VM's variable store, copied from OVMF's empty one the first time
/// and kept after (boot entries survive restarts).
pub fn plan(def: &VmDefinition, t: &Template, paths: &VmPaths) -> Result<Plan, BootError> {
    plan_with(def, t, paths, Path::new(OVMF_CODE), Path::new(OVMF_VARS))
}

fn plan_with(def: &VmDefinition, t: &Template, paths: &VmPaths, code: &Path, vars: &Path) -> Result<Plan, BootError> {
    let boot = match def.firmware {
        None => t.meta.boot,
        Some(_) if t.direct.is_some() => return Err(BootError::DirectOnly(t.info.name.clone())),
        Some(f) if t.meta.boots_with(f) => Boot::from(f),
        Some(f) => {
            let mut boots: Vec<String> = t.meta.firmware.iter().map(ToString::to_string).collect();
            if let Some(own) = t.meta.boot.firmware().filter(|f| !t.meta.firmware.contains(f)) {
                boots.insert(0, own.to_string());
            }
            return Err(BootError::Unsupported { image: t.info.name.clone(), firmware: f, boots: boots.join(", ") });
        }
    };
    match boot {
        Boot::Direct => match &t.direct {
            Some((kernel, initrd)) => Ok(Plan::Direct { kernel: kernel.clone(), initrd: initrd.clone() }),
            // Meta::check refuses such an image when it is read; said plainly if one gets here.
            None => Err(BootError::NoKernel(t.info.name.clone())),
        },
        Boot::Bios => Ok(Plan::Bios),
        Boot::Uefi => {
            for f in [code, vars] {
                if !f.exists() {
                    return Err(BootError::NoOvmf(f.display().to_string()));
                }
            }
            let own = paths.efivars();
            if !own.exists() {
                let tmp = own.with_extension("partial");
                let made = crate::private::create(&tmp)
                    .and_then(|mut out| std::io::copy(&mut std::fs::File::open(vars)?, &mut out))
                    .and_then(|_| std::fs::rename(&tmp, &own));
                made.map_err(|e| BootError::Vars(own.display().to_string(), e))?;
            }
            Ok(Plan::Uefi { code: code.to_path_buf(), vars: own })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_api::template_dir::Meta;

    fn template(boot: Boot, firmware: Vec<Firmware>) -> Template {
        let direct = boot == Boot::Direct;
        let meta = Meta {
            name: "img".into(),
            kernel: direct.then(|| "k".into()),
            initrd: direct.then(|| "i".into()),
            disk: "d.qcow2".into(),
            boot,
            firmware,
            guest_agent: Default::default(),
            kernel_version: String::new(),
            os: String::new(),
            size_bytes: 0,
            ..Default::default()
        };
        Template {
            info: corral_api::agent::TemplateInfo {
                name: "img".into(),
                size_bytes: 0,
                kernel_version: String::new(),
                os: String::new(),
                boot,
                guest_agent: Default::default(),
            },
            direct: direct.then(|| (PathBuf::from("/t/k"), PathBuf::from("/t/i"))),
            disk: "/t/d.qcow2".into(),
            meta,
        }
    }

    fn def(firmware: Option<Firmware>) -> VmDefinition {
        let mut d: VmDefinition = serde_json::from_value(serde_json::json!({
            "name": "web-1", "uuid": "8d6c6a53-6e4e-4a55-9d3c-0a4c6ea1c001", "template": "img", "vcpus": 1,
            "memory_mib": 512, "mac": "52:54:00:00:00:01", "workload": "idle"
        }))
        .unwrap();
        d.firmware = firmware;
        d
    }

    #[test]
    fn the_image_default_or_a_supported_choice_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = VmPaths::new(dir.path().to_path_buf());
        let code = dir.path().join("code.fd");
        let vars = dir.path().join("vars.fd");
        std::fs::write(&code, b"code").unwrap();
        std::fs::write(&vars, b"empty vars").unwrap();
        let cloud = template(Boot::Bios, vec![Firmware::Bios, Firmware::Uefi]);
        assert_eq!(plan_with(&def(None), &cloud, &p, &code, &vars).unwrap(), Plan::Bios);
        let uefi = plan_with(&def(Some(Firmware::Uefi)), &cloud, &p, &code, &vars).unwrap();
        assert_eq!(uefi, Plan::Uefi { code: code.clone(), vars: p.efivars() });
        assert_eq!(std::fs::read(p.efivars()).unwrap(), b"empty vars");
        // The VM's store is kept, not reset, on the next start.
        std::fs::write(p.efivars(), b"boot entries").unwrap();
        plan_with(&def(Some(Firmware::Uefi)), &cloud, &p, &code, &vars).unwrap();
        assert_eq!(std::fs::read(p.efivars()).unwrap(), b"boot entries");
        let args = uefi.args().join(" ");
        assert!(args.contains("q35") && args.contains("readonly=on") && args.contains("virtio-rng-pci"), "{args}");

        let busybox = template(Boot::Direct, vec![]);
        let direct = plan_with(&def(None), &busybox, &p, &code, &vars).unwrap();
        assert!(direct.args().join(" ").starts_with("-machine pc -kernel /t/k -initrd /t/i"));
    }

    #[test]
    fn unsupported_firmware_and_missing_ovmf_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = VmPaths::new(dir.path().to_path_buf());
        let missing = dir.path().join("none.fd");
        let bios_only = template(Boot::Bios, vec![]);
        let err = plan_with(&def(Some(Firmware::Uefi)), &bios_only, &p, &missing, &missing).unwrap_err();
        assert!(err.to_string().contains("boots with: bios"), "{err}");
        let both = template(Boot::Bios, vec![Firmware::Bios, Firmware::Uefi]);
        let err = plan_with(&def(Some(Firmware::Uefi)), &both, &p, &missing, &missing).unwrap_err();
        assert!(err.to_string().contains("install the Debian package ovmf"), "{err}");
        let busybox = template(Boot::Direct, vec![]);
        let err = plan_with(&def(Some(Firmware::Bios)), &busybox, &p, &missing, &missing).unwrap_err();
        assert!(err.to_string().contains("leave --firmware unset"), "{err}");
    }
}
