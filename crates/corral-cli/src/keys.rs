//! Reading the SSH public keys given with `--ssh-key FILE`: every key line of each file,
//! checked before anything is sent, with the file and line named when one is wrong.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use corral_api::image::SshKey;

/// The keys in these files (blank lines and `#` comments skipped), in order, without repeats.
pub fn read(files: &[PathBuf]) -> Result<Vec<SshKey>> {
    let mut keys: Vec<SshKey> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| {
            format!(
                "--ssh-key {}: cannot read it (give the path of a public key file, e.g. ~/.ssh/id_ed25519.pub)",
                f.display()
            )
        })?;
        let mut found = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key: SshKey =
                line.parse().map_err(|e: String| anyhow::anyhow!("--ssh-key {} line {}: {e}", f.display(), i + 1))?;
            found += 1;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        if found == 0 {
            bail!("--ssh-key {}: the file holds no key", f.display());
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_read_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("id.pub");
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILfUQEzughetgDvdmwK77bJ3sR54hgv2Ny+epH6/C9yW alice@laptop";
        std::fs::write(&good, format!("# mine\n{key}\n\n{key}\n")).unwrap();
        let keys = read(std::slice::from_ref(&good)).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].line(), key);
        let err = read(&[dir.path().join("missing.pub")]).unwrap_err();
        assert!(format!("{err:#}").contains("missing.pub: cannot read it"), "{err:#}");
        let priv_key = dir.path().join("id");
        std::fs::write(&priv_key, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n").unwrap();
        let err = read(&[priv_key]).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("private key"), "{err}");
        let empty = dir.path().join("empty.pub");
        std::fs::write(&empty, "\n").unwrap();
        assert!(read(&[empty]).unwrap_err().to_string().contains("holds no key"));
    }
}
