//! Downloading files from the controller or another agent: streamed into a temporary file,
//! synced, then renamed into place, so a cut transfer never looks like a whole file.

use std::path::Path;

use tokio::io::AsyncWriteExt;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The other side has no such file (HTTP 404).
    #[error("{0}: not found")]
    NotFound(String),
    /// Anything else: unreachable, refused, cut off, or a local write that failed.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for FetchError {
    fn from(s: String) -> Self {
        FetchError::Failed(s)
    }
}

/// GETs `url` (with the bearer token, if any) into `dest`. Returns the bytes written.
pub async fn download(http: &reqwest::Client, url: &str, token: Option<&str>, dest: &Path) -> Result<u64, FetchError> {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(FetchError::NotFound(url.to_string()));
    }
    let mut resp = resp.error_for_status().map_err(|e| format!("{url}: {e}"))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dest.with_file_name(format!("{name}.partial"));
    // Root's only: a VM's disk or memory, or a template.
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::private::FILE_MODE)
        .open(&tmp)
        .await
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut n = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        f.write_all(&chunk).await.map_err(|e| e.to_string())?;
        n += chunk.len() as u64;
    }
    f.sync_all().await.map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, dest).await.map_err(|e| e.to_string())?;
    Ok(n)
}
