//! The controller's client of the agents' REST API.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::json;

use corral_api::agent::{VmDefinition, VmStatus};
use corral_api::{ApiError, ConsoleChunk, ErrorBody, ExecRequest, ExecResult, VmAction};

/// Talks to one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    host: String,
    token: Option<String>,
}

impl AgentClient {
    pub fn new(http: reqwest::Client, host: &str, url: &str, token: Option<String>) -> Self {
        Self { http, base: url.trim_end_matches('/').to_string(), host: host.to_string(), token }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ApiError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            ApiError::unavailable(format!("host {} is unreachable ({e}); check `corral host list`", self.host))
        })?;
        let status = resp.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return serde_json::from_value(serde_json::Value::Null).map_err(|e| ApiError::internal(e.to_string()));
            }
            return resp
                .json()
                .await
                .map_err(|e| ApiError::internal(format!("host {} sent an invalid answer: {e}", self.host)));
        }
        let body: Option<ErrorBody> = resp.json().await.ok();
        let msg = body.map(|b| b.error).unwrap_or_else(|| status.to_string());
        Err(match status.as_u16() {
            400 => ApiError::bad_request(msg),
            404 => ApiError::not_found(msg),
            409 => ApiError::conflict(msg),
            503 => ApiError::unavailable(msg),
            _ => ApiError::internal(format!("host {}: {msg}", self.host)),
        })
    }

    /// Long operations (boot, suspend) wait up to this long.
    const SLOW: Duration = Duration::from_secs(600);

    pub async fn create(&self, def: &VmDefinition, start: bool) -> Result<VmStatus, ApiError> {
        self.send(
            self.http
                .post(format!("{}/v1/vms", self.base))
                .timeout(Self::SLOW)
                .json(&json!({"def": def, "start": start})),
        )
        .await
    }

    /// Sets a virtual network on the host as given.
    pub async fn put_network(&self, spec: &corral_api::agent::NetworkSpec) -> Result<(), ApiError> {
        self.send::<()>(self.http.put(format!("{}/v1/networks/{}", self.base, spec.vni)).json(spec)).await
    }

    /// Removes a virtual network's devices from the host.
    pub async fn delete_network(&self, vni: u32) -> Result<(), ApiError> {
        self.send::<()>(self.http.delete(format!("{}/v1/networks/{vni}", self.base))).await
    }

    /// The agent's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Asks this agent to take over a stopped or suspended VM from the agent at `source`.
    pub async fn import(&self, def: &VmDefinition, source: &str) -> Result<VmStatus, ApiError> {
        let body = json!({"def": def, "source": source});
        self.send(self.http.post(format!("{}/v1/vms/import", self.base)).timeout(Self::SLOW).json(&body)).await
    }

    pub async fn get(&self, name: &str) -> Result<VmStatus, ApiError> {
        self.send(self.http.get(format!("{}/v1/vms/{name}", self.base))).await
    }

    pub async fn action(&self, name: &str, a: VmAction) -> Result<VmStatus, ApiError> {
        self.send(self.http.post(format!("{}/v1/vms/{name}/actions/{}", self.base, a.as_str())).timeout(Self::SLOW))
            .await
    }

    /// Deletes the VM `name` if it is the one with `uuid`, its disk on shared storage
    /// included; gone already counts as done.
    pub async fn delete(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError> {
        self.delete_url(format!("{}/v1/vms/{name}?uuid={uuid}", self.base)).await
    }

    /// Deletes this host's copy of VM `name` (an orphan, a failed attempt, the source of a
    /// move): a disk on shared storage stays, the VM may run on it elsewhere.
    pub async fn delete_copy(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError> {
        self.delete_url(format!("{}/v1/vms/{name}?uuid={uuid}&keep_shared=true", self.base)).await
    }

    async fn delete_url(&self, url: String) -> Result<(), ApiError> {
        match self.send::<()>(self.http.delete(url).timeout(Self::SLOW)).await {
            Err(e) if e.status == 404 => Ok(()),
            r => r,
        }
    }

    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError> {
        self.send(self.http.post(format!("{}/v1/vms/{name}/exec", self.base)).timeout(Self::SLOW).json(req)).await
    }

    /// Asks the agent to fetch a template from the controller's library; returns its new inventory.
    pub async fn pull_template(&self, name: &str) -> Result<corral_api::agent::Register, ApiError> {
        self.send(
            self.http.post(format!("{}/v1/templates/pull", self.base)).timeout(Self::SLOW).json(&json!({"name": name})),
        )
        .await
    }

    pub async fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError> {
        self.send(self.http.get(format!("{}/v1/vms/{name}/console?offset={offset}", self.base))).await
    }

    /// Asks this host whether it can reach another one over the underlay.
    pub async fn probe(
        &self,
        req: &corral_api::agent::ProbeRequest,
    ) -> Result<corral_api::agent::ProbeReply, ApiError> {
        self.send(self.http.post(format!("{}/v1/probe", self.base)).timeout(Duration::from_secs(4)).json(req)).await
    }

    /// Prepares this host to receive a live-migrating VM.
    pub async fn incoming(
        &self,
        req: &corral_api::migration::Incoming,
    ) -> Result<corral_api::migration::IncomingReady, ApiError> {
        self.send(self.http.post(format!("{}/v1/migrations/incoming", self.base)).timeout(Self::SLOW).json(req)).await
    }

    /// Starts sending a VM from this host.
    pub async fn migrate(
        &self,
        name: &str,
        req: &corral_api::migration::Outgoing,
    ) -> Result<corral_api::migration::OutgoingStatus, ApiError> {
        self.send(self.http.post(format!("{}/v1/vms/{name}/migration", self.base)).json(req)).await
    }

    /// The outgoing migration's figures.
    pub async fn migration(&self, name: &str) -> Result<corral_api::migration::OutgoingStatus, ApiError> {
        self.send(self.http.get(format!("{}/v1/vms/{name}/migration", self.base)).timeout(Duration::from_secs(5))).await
    }

    pub async fn cancel_migration(&self, name: &str) -> Result<corral_api::migration::OutgoingStatus, ApiError> {
        self.send(self.http.delete(format!("{}/v1/vms/{name}/migration", self.base))).await
    }

    /// The VM has arrived here: make it a running VM of this host.
    pub async fn finish_migration(&self, name: &str) -> Result<VmStatus, ApiError> {
        self.send(self.http.post(format!("{}/v1/vms/{name}/migration/finish", self.base)).timeout(Self::SLOW)).await
    }

    /// Runs the source's stopped copy again after a completed pre-copy whose destination
    /// copy died.
    pub async fn revert_migration(&self, name: &str, uuid: &uuid::Uuid) -> Result<VmStatus, ApiError> {
        self.send(self.http.post(format!("{}/v1/vms/{name}/migration/revert?uuid={uuid}", self.base))).await
    }
}
