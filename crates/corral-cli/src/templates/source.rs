//! Where an image import's bytes come from: a local file, or an `http://` / `https://` URL
//! whose response body is streamed as it arrives (no temporary file). Either is a [`Source`]:
//! a stream of chunks, its length when known, and the reason it failed, if it did, so the
//! upload reports the source's failure (a stalled server, a cut download) rather than the
//! controller's view of a cut upload. Every failure names the file or URL and what to do.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

/// How long connecting to a URL's server (name lookup, TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// An image's bytes on their way to the controller.
pub struct Source {
    /// What it is, for messages: the file's path or the URL (without its password).
    pub what: String,
    /// Its length in bytes, when known (a file's; a URL's Content-Length).
    pub len: Option<u64>,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
    /// Why reading it failed, set by `body` when it does.
    pub failed: Arc<Mutex<Option<String>>>,
}

fn note(slot: &Mutex<Option<String>>, why: String) -> std::io::Error {
    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
    s.get_or_insert(why.clone());
    std::io::Error::other(why)
}

/// A local file.
pub async fn file(path: &Path) -> Result<Source> {
    let f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {} (give the path of a disk image or OVA file)", path.display()))?;
    let len = f.metadata().await?.len();
    let what = path.display().to_string();
    let failed = Arc::new(Mutex::new(None));
    let slot = failed.clone();
    let shown = what.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)
        .map(move |r| r.map_err(|e| note(&slot, format!("reading {shown} failed: {e}"))))
        .boxed();
    Ok(Source { what, len: Some(len), body, failed })
}

/// A URL an image is downloaded from: `http` or `https`, with a host (boxed: a command's
/// arguments stay small).
#[derive(Debug, Clone)]
pub struct SourceUrl(Box<reqwest::Url>);

impl std::str::FromStr for SourceUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(s)
            .map_err(|e| format!("{s:?} is not a URL ({e}): give http://HOST/PATH or https://HOST/PATH"))?;
        match url.scheme() {
            "http" | "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(SourceUrl(Box::new(url))),
            "http" | "https" => Err(format!("{s:?} names no host: give http://HOST/PATH or https://HOST/PATH")),
            other => Err(format!(
                "only http:// and https:// URLs can be imported, not {other}://: download the file another way and import it as a file"
            )),
        }
    }
}

impl std::fmt::Display for SourceUrl {
    /// The URL as messages show it: a password in it is hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut u = (*self.0).clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        f.write_str(u.as_str())
    }
}

/// The innermost cause of an HTTP client error (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Starts downloading `url`: its answer must come within `stall` and be a success; its body
/// then fails when no byte arrives for `stall`.
pub async fn url(url: &SourceUrl, stall: Duration) -> Result<Source> {
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let resp = match tokio::time::timeout(stall, http.get((*url.0).clone()).send()).await {
        Err(_) => bail!(
            "{url} did not answer within {} s (--stall-timeout): check the URL and that the server works, or give a longer --stall-timeout",
            stall.as_secs()
        ),
        Ok(Err(e)) if e.is_connect() && e.is_timeout() => bail!(
            "cannot connect to {url}: no connection within {} s; check the address, and that the server can be reached from here",
            CONNECT_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) if e.is_connect() => bail!(
            "cannot connect to {url} ({}): check the host name and port, and that the server is up",
            root_cause(&e)
        ),
        Ok(Err(e)) => bail!("cannot download {url} ({}): check the URL", root_cause(&e)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if !status.is_success() {
        bail!("{url} answered {status}: check the URL (nothing was imported)");
    }
    let failed = Arc::new(Mutex::new(None));
    let slot = failed.clone();
    let shown = url.to_string();
    let len = resp.content_length();
    let chunks = resp.bytes_stream();
    let body = futures::stream::unfold(Some(chunks), move |chunks| {
        let (slot, shown) = (slot.clone(), shown.clone());
        async move {
            let mut chunks = chunks?;
            let why = match tokio::time::timeout(stall, chunks.next()).await {
                Ok(None) => return None,
                Ok(Some(Ok(b))) => return Some((Ok(b), Some(chunks))),
                Ok(Some(Err(e))) => {
                    format!("the download of {shown} broke off ({}): try again; nothing was imported", root_cause(&e))
                }
                Err(_) => format!(
                    "{shown} stalled: nothing arrived for {} s (--stall-timeout); try again later or give a longer --stall-timeout; nothing was imported",
                    stall.as_secs()
                ),
            };
            Some((Err(note(&slot, why)), None))
        }
    })
    .boxed();
    Ok(Source { what: url.to_string(), len, body, failed })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        assert!("http://127.0.0.1:8000/x.qcow2".parse::<SourceUrl>().is_ok());
        assert!("https://images.example/noble.img".parse::<SourceUrl>().is_ok());
        for (bad, why) in [
            ("ftp://host/x.qcow2", "only http:// and https://"),
            ("file:///etc/shadow", "only http:// and https://"),
            ("x.qcow2", "not a URL"),
            ("http://", "not a URL"),
        ] {
            let e = bad.parse::<SourceUrl>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_not_shown() {
        let u: SourceUrl = "https://me:secret@host/x.img".parse().unwrap();
        assert_eq!(u.to_string(), "https://me:***@host/x.img");
    }
}
