//! The CLI's HTTP client of the controller, turning transport and API errors into messages
//! that say what to do.

use anyhow::{anyhow, Result};
use serde::{de::DeserializeOwned, Serialize};

use corral_api::ErrorBody;

/// A controller at a base URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5)).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), token })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() { "connection refused or no route".to_string() } else { e.to_string() };
            anyhow!(
                "cannot reach the controller at {} ({why}). Is it running? Start a lab with `corral lab up`, \
                 or point --url / CORRAL_URL at a running controller",
                self.base
            )
        })?;
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

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }
}
