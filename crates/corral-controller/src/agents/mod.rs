//! What the controller asks of an agent: every operation of the controller→agent protocol as
//! one trait, [`AgentApi`]. The controller reaches agents only through it, so its logic runs
//! the same against the HTTP client ([`http::AgentClient`]) and against the in-memory fake of
//! its unit tests (`fake::FakeFleet`).

use std::sync::Arc;

use corral_api::agent::{NetworkSpec, ProbeReply, ProbeRequest, Register, VmDefinition, VmStatus};
use corral_api::image::StreamKind;
use corral_api::migration::{Incoming, IncomingReady, Outgoing, OutgoingStatus};
use corral_api::{ApiError, ConsoleChunk, ExecRequest, ExecResult, VmAction};

#[cfg(test)]
pub(crate) mod fake;
pub mod http;

pub use http::AgentClient;

/// One agent, as the controller sees it. Every call has a total deadline; an error's
/// [`kind`](corral_api::ErrorKind) says what happened (`unavailable`: the agent could not be
/// reached or did not answer in time).
/// A websocket to an agent, carrying a VM's stream.
pub type AgentStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[async_trait::async_trait]
pub trait AgentApi: Send + Sync + std::fmt::Debug {
    /// The agent's base URL (another agent fetches a VM's files from it).
    fn url(&self) -> &str;
    /// Defines a VM on the host, and boots it if `start`.
    async fn create(&self, def: &VmDefinition, start: bool) -> Result<VmStatus, ApiError>;
    /// Takes over a stopped or suspended VM from the agent at `source`.
    async fn import(&self, def: &VmDefinition, source: &str) -> Result<VmStatus, ApiError>;
    async fn get(&self, name: &str) -> Result<VmStatus, ApiError>;
    async fn action(&self, name: &str, a: VmAction) -> Result<VmStatus, ApiError>;
    /// Deletes the VM `name` if it is the one with `uuid`, its disk on shared storage
    /// included; gone already counts as done.
    async fn delete(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError>;
    /// Deletes this host's copy of VM `name` (an orphan, a failed attempt, the source of a
    /// move): a disk on shared storage stays, the VM may run on it elsewhere.
    async fn delete_copy(&self, name: &str, uuid: &uuid::Uuid) -> Result<(), ApiError>;
    async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ApiError>;
    async fn console(&self, name: &str, offset: u64) -> Result<ConsoleChunk, ApiError>;
    /// Grows a VM's root disk.
    async fn resize_disk(&self, name: &str, req: &corral_api::ResizeDisk) -> Result<VmStatus, ApiError>;
    /// Opens a live stream into a running VM (its console or VNC display).
    async fn stream(&self, name: &str, kind: StreamKind) -> Result<AgentStream, ApiError>;
    /// Opens a TCP connection to `port` of a running guest, made from the host's address `via`
    /// on the guest's network.
    async fn tcp(
        &self,
        name: &str,
        port: corral_api::tunnel::GuestPort,
        via: corral_api::types::Ipv4Cidr,
    ) -> Result<AgentStream, ApiError>;
    /// Fetches a template from the controller's library; answers the host's new inventory.
    async fn pull_template(&self, name: &str) -> Result<Register, ApiError>;
    /// Sets a virtual network on the host as given.
    async fn put_network(&self, spec: &NetworkSpec) -> Result<(), ApiError>;
    /// Removes a virtual network's devices from the host.
    async fn delete_network(&self, vni: u32) -> Result<(), ApiError>;
    /// Can this host reach one of its peers over the underlay?
    async fn probe(&self, req: &ProbeRequest) -> Result<ProbeReply, ApiError>;
    /// Prepares this host to receive a live-migrating VM.
    async fn incoming(&self, req: &Incoming) -> Result<IncomingReady, ApiError>;
    /// Starts sending a VM from this host.
    async fn migrate(&self, name: &str, req: &Outgoing) -> Result<OutgoingStatus, ApiError>;
    /// The outgoing migration's figures.
    async fn migration(&self, name: &str) -> Result<OutgoingStatus, ApiError>;
    async fn cancel_migration(&self, name: &str) -> Result<OutgoingStatus, ApiError>;
    /// The VM has arrived here: make it a running VM of this host.
    async fn finish_migration(&self, name: &str) -> Result<VmStatus, ApiError>;
    /// Runs the source's stopped copy again after a completed pre-copy whose destination
    /// copy died.
    async fn revert_migration(&self, name: &str, uuid: &uuid::Uuid) -> Result<VmStatus, ApiError>;
}

/// Makes the client of a registered host's agent.
pub trait Connector: Send + Sync + std::fmt::Debug {
    fn connect(&self, host: &Register) -> Arc<dyn AgentApi>;
}

/// Reaches agents over HTTP with the controller's token.
#[derive(Debug, Clone)]
pub struct HttpConnector {
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Connector for HttpConnector {
    fn connect(&self, host: &Register) -> Arc<dyn AgentApi> {
        Arc::new(AgentClient::new(self.http.clone(), &host.name, &host.url, self.token.clone()))
    }
}
