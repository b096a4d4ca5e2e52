//! The controller's HTTP client of an agent's REST API: [`AgentApi`] over the wire, with the
//! request and answer types of `corral_api::agent`, and a total deadline on every call.

use std::time::Duration;

use serde::de::DeserializeOwned;

use corral_api::agent::{
    ConsoleQuery, CreateRequest, DeleteQuery, ImportRequest, NetworkSpec, ProbeReply, ProbeRequest, PullRequest,
    Register, UuidQuery, VmDefinition, VmStatus,
};
use corral_api::image::StreamKind;
use corral_api::migration::{Incoming, IncomingReady, Outgoing, OutgoingStatus};
use corral_api::tunnel::GuestPort;
use corral_api::types::Ipv4Cidr;
use corral_api::{ApiError, ConsoleChunk, ErrorBody, ErrorKind, ExecRequest, ExecResult, VmAction};

use super::AgentApi;

/// Talks to one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    host: String,
    token: Option<String>,
}

/// Long operations (boot, suspend, a disk transfer) wait up to this long.
const SLOW: Duration = Duration::from_secs(600);

impl AgentClient {
    /// Opens a websocket at `path` of the agent, within `limit`.
    async fn websocket(&self, path: &str, what: &str, limit: Duration) -> Result<super::AgentStream, ApiError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.url_of(path);
        let ws_url = match url.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", url.trim_start_matches("http://")),
        };
        let mut req = ws_url.into_client_request().map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| ApiError::internal("the token is not a valid header value"))?;
            req.headers_mut().insert("authorization", v);
        }
        let connect = tokio_tungstenite::connect_async(req);
        match tokio::time::timeout(limit, connect).await {
            Err(_) => Err(ApiError::unavailable(format!(
                "host {} did not open {what} within {} s",
                self.host,
                limit.as_secs()
            ))),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let code = resp.status().as_u16();
                let body = resp.body().as_deref().and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
                Err(match body {
                    Some(b) => ApiError::from_body(code, b),
                    None => ApiError::new(
                        ErrorKind::from_status(code),
                        format!("host {} answered {}", self.host, resp.status()),
                    ),
                })
            }
            Ok(Err(e)) => Err(ApiError::unavailable(format!("host {} is unreachable ({e})", self.host))),
        }
    }

    pub fn new(http: reqwest::Client, host: &str, url: &str, token: Option<String>) -> Self {
        Self { http, base: url.trim_end_matches('/').to_string(), host: host.to_string(), token }
    }

    fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
        let code = status.as_u16();
        Err(match resp.json::<ErrorBody>().await {
            Ok(b) => ApiError::from_body(code, b),
            Err(_) => ApiError::new(ErrorKind::from_status(code), format!("host {} answered {status}", self.host)),
        })
    }

    async fn delete_vm(&self, name: &str, q: &DeleteQuery) -> Result<(), ApiError> {
        let req = self.http.delete(self.url_of(&format!("/v1/vms/{name}"))).query(q).timeout(SLOW);
        match self.send::<()>(req).await {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

#[async_trait::async_trait]
impl AgentApi for AgentClient {
    fn url(&self) -> &str {
        &self.base
    }

    async fn create(&self, def: &VmDefinition, start: bool) -> Result<VmStatus, ApiError> {
        let body = CreateRequest { def: def.clone(), start };
        self.send(self.http.post(self.url_of("/v1/vms")).timeout(SLOW).json(&body)).await
    }

    async fn import(&self, def: &VmDefinition, source: &str) -> Result<VmStatus, ApiError> {
        let source = source.parse().map_err(|e: String| ApiError::internal(format!("source of the move: {e}")))?;
        let body = ImportRequest { def: def.clone(), source };
        self.send(self.http.post(self.url_of("/v1/vms/import")).timeout(SLOW).json(&body)).await
    }

    async fn get(&self, name: &str) -> Result<VmStatus, ApiError> {
        self.send(self.http.get(self.url_of(&format!("/v1/vms/{name}")))).await
    }

    async fn action(&self, name: &str, a: VmAction) -> Result<VmStatus, ApiError> {
        self.send(self.http.post(self.url_of(&format!("/v1/vms/{name}/actions/{}", a.as_str()))).timeout(SLOW)).await
    }

    async fn delete(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError> {
        self.delete_vm(name, &DeleteQuery { uuid: Some(*uuid), keep_shared: false }).await
    }

    async fn delete_copy(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError> {
        self.delete_vm(name, &DeleteQuery { uuid: Some(*uuid), keep_shared: true }).await
    }

    async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError> {
        self.send(self.http.post(self.url_of(&format!("/v1/vms/{name}/exec"))).timeout(SLOW).json(req)).await
    }

    async fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError> {
        let q = ConsoleQuery { offset };
        self.send(self.http.get(self.url_of(&format!("/v1/vms/{name}/console"))).query(&q)).await
    }

    async fn resize_disk(&self, name: &str, req: &corral_api::ResizeDisk) -> Result<VmStatus, ApiError> {
        self.send(self.http.post(self.url_of(&format!("/v1/vms/{name}/disk/resize"))).timeout(SLOW).json(req)).await
    }

    async fn stream(&self, name: &str, kind: StreamKind) -> Result<super::AgentStream, ApiError> {
        self.websocket(&format!("/v1/vms/{name}/streams/{kind}"), &format!("the {kind}"), Duration::from_secs(10)).await
    }

    async fn tcp(&self, name: &str, port: GuestPort, via: Ipv4Cidr) -> Result<super::AgentStream, ApiError> {
        // The agent connects to the guest (within 8 s) before it answers.
        let path = format!("/v1/vms/{name}/tcp/{port}?via={}", via.to_string().replace('/', "%2F"));
        self.websocket(&path, &format!("a tunnel to port {port}"), Duration::from_secs(15)).await
    }

    async fn pull_template(&self, name: &str) -> Result<Register, ApiError> {
        let name = name.parse().map_err(|e: String| ApiError::invalid(format!("template: {e}")))?;
        self.send(self.http.post(self.url_of("/v1/templates/pull")).timeout(SLOW).json(&PullRequest { name })).await
    }

    async fn put_network(&self, spec: &NetworkSpec) -> Result<(), ApiError> {
        self.send::<()>(self.http.put(self.url_of(&format!("/v1/networks/{}", spec.vni))).json(spec)).await
    }

    async fn delete_network(&self, vni: u32) -> Result<(), ApiError> {
        self.send::<()>(self.http.delete(self.url_of(&format!("/v1/networks/{vni}")))).await
    }

    async fn probe(&self, req: &ProbeRequest) -> Result<ProbeReply, ApiError> {
        self.send(self.http.post(self.url_of("/v1/probe")).timeout(Duration::from_secs(4)).json(req)).await
    }

    async fn incoming(&self, req: &Incoming) -> Result<IncomingReady, ApiError> {
        self.send(self.http.post(self.url_of("/v1/migrations/incoming")).timeout(SLOW).json(req)).await
    }

    async fn migrate(&self, name: &str, req: &Outgoing) -> Result<OutgoingStatus, ApiError> {
        self.send(self.http.post(self.url_of(&format!("/v1/vms/{name}/migration"))).json(req)).await
    }

    async fn migration(&self, name: &str) -> Result<OutgoingStatus, ApiError> {
        let url = self.url_of(&format!("/v1/vms/{name}/migration"));
        self.send(self.http.get(url).timeout(Duration::from_secs(5))).await
    }

    async fn cancel_migration(&self, name: &str) -> Result<OutgoingStatus, ApiError> {
        self.send(self.http.delete(self.url_of(&format!("/v1/vms/{name}/migration")))).await
    }

    async fn finish_migration(&self, name: &str) -> Result<VmStatus, ApiError> {
        self.send(self.http.post(self.url_of(&format!("/v1/vms/{name}/migration/finish"))).timeout(SLOW)).await
    }

    async fn revert_migration(&self, name: &str, uuid: &uuid::Uuid) -> Result<VmStatus, ApiError> {
        let url = self.url_of(&format!("/v1/vms/{name}/migration/revert"));
        self.send(self.http.post(url).query(&UuidQuery { uuid: *uuid })).await
    }
}
