//! The CLI's HTTP client of the controller: the shared [`ControllerClient`] (leader following,
//! deadlines, error documents), with its failures turned into messages that say what to do.

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::{de::DeserializeOwned, Serialize};

use corral_client::{ClientError, ControllerClient, Method, Settings};

/// A controller at a base URL, or several controllers sharing an etcd store
/// (`--url http://a:7700,http://b:7700`): requests go to the leader, found by trying them in
/// turn and following a standby's pointer to it.
#[derive(Debug, Clone)]
pub struct Client {
    inner: ControllerClient,
}

/// How long one request may take in all: a controller that accepts connections and never
/// answers (hung, or paused) is given up on, and the next one of the list is tried. Reads
/// answer at once; requests that wait for work (a boot, a transfer, `?wait=`) get longer.
fn deadline(method: &Method, url: &str) -> Duration {
    if method == Method::GET && !url.contains("wait=") {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(15 * 60)
    }
}

/// A failure as the user reads it.
fn worded(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::NoUrl => anyhow!("no controller URL given: pass --url or set CORRAL_URL"),
        ClientError::Unreachable { urls, why } => anyhow!(
            "cannot reach the controller at {} ({why}). Is it running? Start a lab with `corral lab up`, \
             or point --url / CORRAL_URL at a running controller",
            urls.join(", ")
        ),
        ClientError::Api(e) => e.into(),
        ClientError::Unreadable { source, .. } => source.into(),
        ClientError::Json(e) => e.into(),
        ClientError::Setup(e) => e.into(),
    }
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let settings = Settings { connect_timeout: Duration::from_secs(5), deadline };
        Ok(Self { inner: ControllerClient::new(base, token, settings).map_err(worded)? })
    }

    /// The controller that leads as far as this client knows.
    pub fn leader(&self) -> String {
        self.inner.leader()
    }

    /// The bearer token it sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.inner.token()
    }

    /// GET `path` from every controller of the list, each on its own (no leader following).
    pub async fn get_each(&self, path: &str) -> Vec<(String, Result<serde_json::Value>)> {
        self.inner
            .get_each(path)
            .await
            .into_iter()
            .map(|(url, r)| {
                let r = r.map_err(|e| match e {
                    ClientError::Unreachable { why, .. } => anyhow!("unreachable ({why})"),
                    e => worded(e),
                });
                (url, r)
            })
            .collect()
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.inner.get(path).await.map_err(worded)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.inner.post(path, body).await.map_err(worded)
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.inner.put(path, body).await.map_err(worded)
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.inner.patch(path, body).await.map_err(worded)
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.inner.delete(path).await.map_err(worded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_worded_for_the_user() {
        let e = Client::new(" , ", None).map(|_| ()).map_err(|e| format!("{e:#}"));
        assert_eq!(e, Err("no controller URL given: pass --url or set CORRAL_URL".to_string()));
        let free = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
        let url = format!("http://{}", free.expect("a free port"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let c = Client::new(&format!("{url}/"), None).expect("a client");
        let e = rt.block_on(c.get::<serde_json::Value>("/v1/hosts")).map_err(|e| format!("{e:#}"));
        assert_eq!(
            e,
            Err(format!(
                "cannot reach the controller at {url} (connection refused or no route). Is it running? Start a lab \
                 with `corral lab up`, or point --url / CORRAL_URL at a running controller"
            ))
        );
        let each = rt.block_on(c.get_each("/v1/leader"));
        assert_eq!(each.len(), 1);
        assert_eq!(
            each[0].1.as_ref().map_err(|e| e.to_string()).err(),
            Some("unreachable (connection refused or no route)".into())
        );
    }
}
