//! The cloud-init NoCloud seed of a firmware-booted VM: a small ISO 9660 volume labelled
//! `cidata` holding `meta-data` (instance id = the VM's UUID, so cloud-init runs once per VM
//! and not again after a migration or a restart elsewhere; its host name), `network-config`
//! (version 2: its static address from Corral's IPAM, matched by MAC) and `user-data` (a
//! cloud-config with the SSH keys it was given). Every value comes from the checked VM
//! definition and is written as JSON (which YAML readers take as it is), never spliced into
//! text; the volume is made by `genisoimage` from files the agent wrote.

use std::path::Path;

use serde_json::{json, Value};

use corral_api::agent::VmDefinition;

/// `meta-data`: who the VM is.
pub fn meta_data(def: &VmDefinition) -> Value {
    json!({ "instance-id": def.uuid.to_string(), "local-hostname": def.name.as_str() })
}

/// `network-config` (version 2): the NIC, found by its MAC, with its address and MTU. Without
/// an address from Corral the NIC stays unconfigured (no DHCP: nothing would answer, and the
/// boot would wait for it).
pub fn network_config(def: &VmDefinition) -> Value {
    let mut nic = json!({ "match": { "macaddress": def.mac.to_string() }, "set-name": "eth0" });
    match &def.ip {
        Some(ip) => nic["addresses"] = json!([ip.to_string()]),
        None => nic["dhcp4"] = json!(false),
    }
    if let Some(n) = def.network {
        nic["mtu"] = json!(n.mtu);
    }
    json!({ "version": 2, "ethernets": { "eth0": nic } })
}

/// `user-data`: the user's cloud-config (if any) with Corral's settings merged in: the host
/// name is the VM's, its SSH keys are added to the user's, and SSH takes no passwords unless
/// the user's cloud-config says otherwise.
pub fn user_data(def: &VmDefinition) -> String {
    let mut doc = def.user_data.as_ref().map(|c| c.settings().clone()).unwrap_or_default();
    doc.insert("hostname".into(), json!(def.name.as_str()));
    let mut keys: Vec<Value> = match doc.remove("ssh_authorized_keys") {
        Some(Value::Array(a)) => a,
        Some(Value::String(s)) => vec![Value::String(s)],
        _ => vec![],
    };
    keys.extend(def.ssh_keys.iter().map(|k| Value::String(k.line())));
    doc.insert("ssh_authorized_keys".into(), Value::Array(keys));
    doc.entry("ssh_pwauth").or_insert(json!(false));
    format!("#cloud-config\n{}\n", Value::Object(doc))
}

/// Seed failures.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot write the cloud-init seed in {0}: {1}")]
    Io(String, std::io::Error),
    #[error("cannot make the cloud-init seed volume with genisoimage (install the Debian package genisoimage): {0}")]
    Tool(String),
}

/// Writes the seed volume of `def` to `out` (through a temporary file, so a cut write never
/// leaves a half volume).
pub async fn write(def: &VmDefinition, out: &Path) -> Result<(), SeedError> {
    let dir = out.with_extension("d");
    let io = |e: std::io::Error| SeedError::Io(dir.display().to_string(), e);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let files = [
        ("meta-data", format!("{}\n", meta_data(def))),
        ("network-config", format!("{}\n", network_config(def))),
        ("user-data", user_data(def)),
    ];
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).map_err(io)?;
    }
    let tmp = out.with_extension("partial");
    let made = tokio::process::Command::new("genisoimage")
        .args(["-quiet", "-input-charset", "utf-8", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(&tmp)
        .args(files.iter().map(|(name, _)| dir.join(name)))
        .output()
        .await
        .map_err(|e| SeedError::Tool(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !made.status.success() {
        return Err(SeedError::Tool(String::from_utf8_lossy(&made.stderr).trim().to_string()));
    }
    std::fs::rename(&tmp, out).map_err(|e| SeedError::Io(out.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn def() -> VmDefinition {
        serde_json::from_value(json!({
            "name": "web-1", "uuid": "8d6c6a53-6e4e-4a55-9d3c-0a4c6ea1c001", "template": "debian12", "vcpus": 1,
            "memory_mib": 1024, "mac": "52:54:00:aa:00:01", "workload": "idle", "ip": "198.19.5.10/24",
            "network": {"vni": 42, "mtu": 1450},
            "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILfUQEzughetgDvdmwK77bJ3sR54hgv2Ny+epH6/C9yW alice@laptop"]
        }))
        .unwrap()
    }

    #[test]
    fn identity_address_and_keys_come_from_the_definition() {
        let d = def();
        assert_eq!(meta_data(&d)["instance-id"], "8d6c6a53-6e4e-4a55-9d3c-0a4c6ea1c001");
        assert_eq!(meta_data(&d)["local-hostname"], "web-1");
        let n = network_config(&d);
        assert_eq!(n["ethernets"]["eth0"]["match"]["macaddress"], "52:54:00:aa:00:01");
        assert_eq!(n["ethernets"]["eth0"]["addresses"][0], "198.19.5.10/24");
        assert_eq!(n["ethernets"]["eth0"]["mtu"], 1450);
        let u = user_data(&d);
        assert!(u.starts_with("#cloud-config\n"));
        let doc: Value = serde_json::from_str(u.lines().nth(1).unwrap()).unwrap();
        assert!(doc["ssh_authorized_keys"][0].as_str().unwrap().ends_with("alice@laptop"));
        let mut no_ip = def();
        no_ip.ip = None;
        assert_eq!(network_config(&no_ip)["ethernets"]["eth0"]["dhcp4"], false);
    }

    #[test]
    fn the_user_s_cloud_config_is_kept_and_corral_s_identity_and_keys_merged_in() {
        let mut d = def();
        d.user_data = Some(
            "#cloud-config\nhostname: evil\npackages: [htop]\nssh_authorized_keys: [ssh-rsa AAAAB3 mine]\n"
                .parse()
                .unwrap(),
        );
        let u = user_data(&d);
        let doc: Value = serde_json::from_str(u.lines().nth(1).unwrap()).unwrap();
        assert_eq!(doc["hostname"], "web-1", "the VM's name wins");
        assert_eq!(doc["packages"][0], "htop");
        assert_eq!(doc["ssh_authorized_keys"][0], "ssh-rsa AAAAB3 mine");
        assert!(doc["ssh_authorized_keys"][1].as_str().unwrap().ends_with("alice@laptop"));
        assert_eq!(doc["ssh_pwauth"], false);
    }

    #[tokio::test]
    async fn the_volume_is_labelled_cidata_and_holds_the_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seed.iso");
        write(&def(), &out).await.unwrap();
        let iso = std::fs::read(&out).unwrap();
        // The primary volume descriptor (sector 16) carries the label at byte 40.
        assert_eq!(&iso[16 * 2048 + 1..16 * 2048 + 6], b"CD001");
        assert_eq!(&iso[16 * 2048 + 40..16 * 2048 + 46], b"cidata");
        let text = String::from_utf8_lossy(&iso);
        assert!(text.contains("8d6c6a53-6e4e-4a55-9d3c-0a4c6ea1c001") && text.contains("198.19.5.10/24"));
        assert!(!dir.path().join("seed.d").exists() && !dir.path().join("seed.partial").exists());
    }
}
