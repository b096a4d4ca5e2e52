//! API token files: the one a daemon reads (the controller makes it if missing) and the local
//! lab's, the client's default token.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::lab::local_lab;

/// The local lab's token, if there is a lab.
pub fn default_token() -> Option<String> {
    local_lab().and_then(|s| std::fs::read_to_string(s.token_file()).ok()).map(|t| t.trim().to_string())
}

/// Reads a token file, or makes one with a fresh random token (readable by root only).
pub fn token_from_file(path: &Path, create: bool) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        // Only a file its owner alone may read (the fix is in the error).
        Ok(_) => Ok(corral_http::read_token_file(path)?),
        Err(_) if create => {
            let t = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            // Written aside, then linked into place: of controllers starting together, the
            // first link wins and the others read its token.
            let tmp = path.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write token file {}", tmp.display()))?;
            f.write_all(t.as_bytes())?;
            drop(f);
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => token_from_file(path, false),
                Err(e) => Err(anyhow::Error::from(e).context(format!("cannot write token file {}", path.display()))),
            }
        }
        Err(e) => bail!(
            "cannot read token file {}: {e}: give the file the controller made (--token-file on the controller)",
            path.display()
        ),
    }
}
