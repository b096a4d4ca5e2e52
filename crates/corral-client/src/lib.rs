//! The one HTTP client of Corral's controller, used by the CLI and by the agent: it sends a
//! request to the leading controller of a list (`--url a,b`, `--controller a,b`), following a
//! standby's `x-corral-leader` pointer and skipping controllers that cannot be reached, gives
//! each attempt a deadline, and turns failures into typed [`ClientError`]s whose API errors
//! carry the controller's [`ErrorKind`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use corral_api::{ApiError, ErrorBody, ErrorKind};

pub use reqwest::Method;

/// How long one attempt (one request to one controller) may take in all, by method and URL.
pub type Deadline = fn(&Method, &str) -> Duration;

/// How the client waits.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long connecting to one controller may take.
    pub connect_timeout: Duration,
    /// The total deadline of one attempt: a controller that accepts connections and never
    /// answers (hung, or paused) is given up on, and the next one of the list is tried.
    pub deadline: Deadline,
}

impl Default for Settings {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(5), deadline: |_, _| Duration::from_secs(30) }
    }
}

/// Why a request to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The list of controller URLs is empty.
    #[error("no controller URL given")]
    NoUrl,
    /// The HTTP client cannot be set up (no TLS backend, ...).
    #[error("cannot set up the HTTP client")]
    Setup(#[source] reqwest::Error),
    /// The request's body cannot be written as JSON, or an empty answer (204) does not stand
    /// for the value expected.
    #[error("cannot write or read the JSON of the exchange")]
    Json(#[source] serde_json::Error),
    /// No controller of the list answered; `why` says what happened with the last one tried.
    #[error("cannot reach the controller at {} ({why})", urls.join(", "))]
    Unreachable { urls: Vec<String>, why: String },
    /// A controller answered with an error (its error document, or its status and text).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A controller answered success with a body that is not what was expected.
    #[error("unreadable answer from the controller at {url}")]
    Unreadable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// What kind of failure this is: the API error's kind, `unavailable` when no controller
    /// answered, `internal` otherwise.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Api(e) => e.kind,
            ClientError::Unreachable { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

/// A controller at a base URL, or several sharing an etcd store of which one leads. Clones
/// share what they know of the leader.
#[derive(Debug, Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    urls: Vec<String>,
    token: Option<String>,
    deadline: Deadline,
    /// The controller that leads, as far as this client knows: tried first.
    leader: Arc<Mutex<String>>,
}

/// One attempt's outcome: an answer, or a reason to try another controller.
enum Attempt {
    Answer(reqwest::Response),
    /// A standby answered; it named the leader (if it knows one).
    Standby(Option<String>, reqwest::Response),
    Unreachable(String),
}

/// The base URLs of a comma-separated list, without trailing slashes.
pub fn parse_urls(list: &str) -> Vec<String> {
    list.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect()
}

impl ControllerClient {
    /// A client of the controllers of `urls` (comma-separated base URLs), sending `token` as
    /// a bearer token when given.
    pub fn new(urls: &str, token: Option<String>, settings: Settings) -> Result<Self, ClientError> {
        let urls = parse_urls(urls);
        let first = urls.first().cloned().ok_or(ClientError::NoUrl)?;
        let http =
            reqwest::Client::builder().connect_timeout(settings.connect_timeout).build().map_err(ClientError::Setup)?;
        Ok(Self { http, urls, token, deadline: settings.deadline, leader: Arc::new(Mutex::new(first)) })
    }

    /// The controller base URLs of the list.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The controller that leads as far as this client knows (the first of the list until
    /// another answered).
    pub fn leader(&self) -> String {
        self.leader.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bearer token it sends, if any (for a connection made outside it, e.g. a websocket).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn set_leader(&self, url: &str) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = url.to_string();
    }

    async fn attempt(&self, method: &Method, url: &str, body: Option<&[u8]>) -> Attempt {
        let deadline = (self.deadline)(method, url);
        let mut req = self.http.request(method.clone(), url).timeout(deadline);
        if let Some(b) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_vec());
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Err(e) => Attempt::Unreachable(if e.is_connect() {
                "connection refused or no route".into()
            } else if e.is_timeout() {
                format!("no answer within {deadline:?}")
            } else {
                e.to_string()
            }),
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE && self.urls.len() > 1 => {
                let leader = r
                    .headers()
                    .get(corral_api::LEADER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| l.trim_end_matches('/').to_string());
                Attempt::Standby(leader, r)
            }
            Ok(r) => Attempt::Answer(r),
        }
    }

    /// Sends the request to the leader, trying the known leader first, then a leader named
    /// by a standby at once, then the rest of the list. Answers the response of the first
    /// controller that is not a standby (any status), or the last standby's when all are.
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<reqwest::Response, ClientError> {
        let first = self.leader();
        let mut queue: std::collections::VecDeque<String> =
            std::iter::once(first.clone()).chain(self.urls.iter().filter(|u| **u != first).cloned()).collect();
        let mut tried: Vec<String> = vec![];
        let mut last_standby = None;
        let mut why = String::new();
        while let Some(base) = queue.pop_front() {
            if tried.contains(&base) {
                continue;
            }
            tried.push(base.clone());
            match self.attempt(method, &format!("{base}{path}"), body).await {
                Attempt::Answer(r) => {
                    self.set_leader(&base);
                    return Ok(r);
                }
                Attempt::Standby(leader, r) => {
                    if let Some(l) = leader.filter(|l| !tried.contains(l)) {
                        queue.push_front(l);
                    }
                    last_standby = Some(r);
                }
                Attempt::Unreachable(w) => why = w,
            }
        }
        // Every controller is a standby: say what the last one said.
        last_standby.ok_or_else(|| ClientError::Unreachable { urls: self.urls.clone(), why })
    }

    /// Sends a request to the leader and answers its successful response; an error status is
    /// decoded into a [`ClientError::Api`].
    pub async fn send_raw<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ClientError> {
        let body = body.map(serde_json::to_vec).transpose().map_err(ClientError::Json)?;
        let resp = self.exchange(&method, path, body.as_deref()).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(ClientError::Api(decode_error(resp).await))
        }
    }

    /// Sends a request to the leader and reads its JSON answer (`null` for 204 No Content).
    pub async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let resp = self.send_raw(method, path, body).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null).map_err(ClientError::Json);
        }
        let url = resp.url().to_string();
        resp.json().await.map_err(|source| ClientError::Unreadable { url, source })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::DELETE, path, None::<&()>).await
    }

    /// GETs `path` from every controller of the list, each on its own (no leader following),
    /// reading each JSON answer whatever its status (a standby answers too).
    pub async fn get_each<T: DeserializeOwned>(&self, path: &str) -> Vec<(String, Result<T, ClientError>)> {
        let mut out = vec![];
        for base in &self.urls {
            let url = format!("{base}{path}");
            let r = match self.attempt(&Method::GET, &url, None).await {
                Attempt::Answer(r) | Attempt::Standby(_, r) => {
                    r.json().await.map_err(|source| ClientError::Unreadable { url, source })
                }
                Attempt::Unreachable(why) => Err(ClientError::Unreachable { urls: vec![base.clone()], why }),
            };
            out.push((base.clone(), r));
        }
        out
    }
}

/// The API error an error response stands for: its error document, or else its status and
/// text ("the controller answered 502 Bad Gateway: ...").
async fn decode_error(resp: reqwest::Response) -> ApiError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => ApiError::from_body(status.as_u16(), b),
        Err(_) => ApiError {
            status: status.as_u16(),
            kind: ErrorKind::from_status(status.as_u16()),
            message: format!("the controller answered {status}: {}", text.trim()),
        },
    }
}

#[cfg(test)]
mod tests;
