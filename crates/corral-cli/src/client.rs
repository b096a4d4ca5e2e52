//! The CLI's HTTP client of the controller, turning transport and API errors into messages
//! that say what to do.

use anyhow::{anyhow, Result};
use serde::{de::DeserializeOwned, Serialize};

use corral_api::ErrorBody;

/// A controller at a base URL, or several controllers sharing an etcd store
/// (`--url http://a:7700,http://b:7700`): requests go to the leader, found by trying them in
/// turn and following a standby's pointer to it.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    token: Option<String>,
}

/// How long one request may take in all: a controller that accepts connections and never
/// answers (hung, or paused) is given up on, and the next one of the list is tried. Reads
/// answer at once; requests that wait for work (a boot, a transfer, `?wait=`) get longer.
fn deadline(method: &reqwest::Method, url: &str) -> std::time::Duration {
    if method == reqwest::Method::GET && !url.contains("wait=") {
        std::time::Duration::from_secs(30)
    } else {
        std::time::Duration::from_secs(15 * 60)
    }
}

/// One attempt's outcome: an answer, or a reason to try another controller.
enum Attempt {
    Answer(reqwest::Response),
    /// A standby answered; it named the leader (if it knows one).
    Standby(Option<String>, reqwest::Response),
    Unreachable(String),
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5)).build()?;
        let bases: Vec<String> =
            base.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        if bases.is_empty() {
            return Err(anyhow!("no controller URL given: pass --url or set CORRAL_URL"));
        }
        Ok(Self { http, bases, token })
    }

    async fn attempt(&self, method: &reqwest::Method, url: &str, body: Option<&serde_json::Value>) -> Attempt {
        let mut req = self.http.request(method.clone(), url).timeout(deadline(method, url));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Err(e) => Attempt::Unreachable(if e.is_connect() {
                "connection refused or no route".into()
            } else if e.is_timeout() {
                format!("no answer within {:?}", deadline(method, url))
            } else {
                e.to_string()
            }),
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && self.bases.len() > 1 => {
                let leader = r.headers().get(corral_api::LEADER_HEADER).and_then(|v| v.to_str().ok()).map(String::from);
                Attempt::Standby(leader, r)
            }
            Ok(r) => Attempt::Answer(r),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let mut tried: Vec<String> = vec![];
        let mut queue: Vec<String> = self.bases.clone();
        let mut last_standby = None;
        let mut why = String::new();
        let resp = loop {
            let Some(base) = queue.first().cloned() else {
                if let Some(r) = last_standby {
                    break r; // every controller is a standby: say what the last one said
                }
                return Err(anyhow!(
                    "cannot reach the controller at {} ({why}). Is it running? Start a lab with `corral lab up`, \
                     or point --url / CORRAL_URL at a running controller",
                    self.bases.join(", ")
                ));
            };
            queue.remove(0);
            tried.push(base.clone());
            match self.attempt(&method, &format!("{base}{path}"), body.as_ref()).await {
                Attempt::Answer(r) => break r,
                Attempt::Standby(leader, r) => {
                    if let Some(l) = leader.map(|l| l.trim_end_matches('/').to_string()) {
                        if !tried.contains(&l) {
                            queue.insert(0, l);
                        }
                    }
                    last_standby = Some(r);
                }
                Attempt::Unreachable(w) => why = w,
            }
        };
        let status = resp.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return Ok(serde_json::from_value(serde_json::Value::Null)?);
            }
            return Ok(resp.json().await?);
        }
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => Err(anyhow!("{}", b.error)),
            Err(_) => Err(anyhow!("the controller answered {status}: {}", text.trim())),
        }
    }

    /// GET `path` from every controller of the list, each on its own (no leader following).
    pub async fn get_each(&self, path: &str) -> Vec<(String, Result<serde_json::Value>)> {
        let mut out = vec![];
        for b in &self.bases {
            let r = match self.attempt(&reqwest::Method::GET, &format!("{b}{path}"), None).await {
                Attempt::Answer(r) | Attempt::Standby(_, r) => r.json().await.map_err(anyhow::Error::from),
                Attempt::Unreachable(w) => Err(anyhow!("unreachable ({w})")),
            };
            out.push((b.clone(), r));
        }
        out
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(reqwest::Method::POST, path, Some(serde_json::to_value(body)?)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(reqwest::Method::PUT, path, Some(serde_json::to_value(body)?)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(reqwest::Method::PATCH, path, Some(serde_json::to_value(body)?)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}
