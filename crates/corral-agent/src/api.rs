//! The agent's REST API, called by the controller. Handlers only translate HTTP to calls on
//! the VM manager. Every body, path parameter and query is parsed into checked types
//! ([`corral_api::types`]) before a handler runs: a refused value is answered 422 and reaches
//! nothing; bodies with unknown fields are refused too.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use corral_api::agent::{
    ConsoleQuery, CreateRequest, DeleteQuery, ImportRequest, NetworkSpec, ProbeReply, ProbeRequest, PullRequest,
    Register, UuidQuery, VmStatus,
};
use corral_api::image::StreamKind;
use corral_api::migration::{Incoming, IncomingReady, Outgoing, OutgoingStatus};
use corral_api::types::Name;
use corral_api::{ApiError, ConsoleChunk, ExecRequest, ExecResult, ResizeDisk, VmAction};

use corral_http::{HttpError, Json, Path, Query};

use crate::Agent;

type R<T> = Result<Json<T>, HttpError>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Corral agent", description = "What the controller (and other agents) ask of one host"),
    components(schemas(VmAction))
)]
struct ApiDoc;

/// Paths served without a token.
const PUBLIC: &[&str] = &["/v1/health"];

#[utoipa::path(get, path = "/v1/health", tag = "host", responses((status = 200, content_type = "text/plain", body = String, description = "the agent is up")))]
async fn health() -> &'static str {
    "ok"
}

/// The router, with its OpenAPI document at `/v1/openapi.json`.
pub fn router(agent: Arc<Agent>) -> Router {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(host))
        .routes(routes!(probe))
        .routes(routes!(list, create))
        .routes(routes!(show, delete))
        .routes(routes!(action))
        .routes(routes!(exec))
        .routes(routes!(console))
        .routes(routes!(stream))
        .routes(routes!(tcp))
        .routes(routes!(resize_disk))
        .routes(routes!(pull))
        .routes(routes!(import))
        .routes(routes!(put_network, delete_network))
        .routes(routes!(file))
        .routes(routes!(incoming))
        .routes(routes!(outgoing_status, outgoing, cancel_outgoing))
        .routes(routes!(finish_incoming))
        .routes(routes!(switchover_incoming))
        .routes(routes!(revert_outgoing))
        .with_state(agent.clone())
        .split_for_parts();
    utoipa::Modify::modify(&corral_http::openapi::Conformance { public: PUBLIC }, &mut api);
    let api = Arc::new(api);
    router
        .route("/v1/openapi.json", get(move || async move { Json((*api).clone()) }))
        .layer(axum::middleware::from_fn_with_state(agent.cfg.token.clone(), corral_http::require_token))
}

#[utoipa::path(get, path = "/v1/host", tag = "host", responses((status = 200, body = Register, description = "what this agent registers with: capacity, templates, underlay")))]
async fn host(State(a): State<Arc<Agent>>) -> Json<corral_api::agent::Register> {
    Json(a.registration())
}

#[utoipa::path(post, path = "/v1/probe", tag = "host", request_body = ProbeRequest, responses((status = 200, body = ProbeReply), (status = 404, body = corral_api::ErrorBody, description = "not a peer named in this host's lease")))]
/// Can this host reach one of its peers? The controller's second path before a failover.
/// Only a peer named in this host's lease is probed: no URL is taken from the request.
async fn probe(
    State(a): State<Arc<Agent>>,
    Json(req): Json<corral_api::agent::ProbeRequest>,
) -> R<corral_api::agent::ProbeReply> {
    let peer = a.fencer.peer(&req.host).ok_or_else(|| {
        ApiError::not_found(format!(
            "{:?} is not a peer of this host (the controller names them in the lease)",
            req.host
        ))
    })?;
    Ok(Json(match crate::fence::reach(&a.http, &peer).await {
        Ok(how) => corral_api::agent::ProbeReply { reachable: true, how },
        Err(how) => corral_api::agent::ProbeReply { reachable: false, how },
    }))
}

#[utoipa::path(get, path = "/v1/vms", tag = "vms", responses((status = 200, body = Vec<VmStatus>)))]
async fn list(State(a): State<Arc<Agent>>) -> Json<Vec<VmStatus>> {
    Json(a.vms.list())
}

#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", responses((status = 200, body = VmStatus)))]
async fn show(State(a): State<Arc<Agent>>, Path(name): Path<Name>) -> R<VmStatus> {
    Ok(Json(a.vms.get(&name)?))
}

#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateRequest, responses((status = 200, body = VmStatus, description = "defined (and booted if asked)")))]
async fn create(State(a): State<Arc<Agent>>, Json(b): Json<CreateRequest>) -> R<VmStatus> {
    Ok(Json(corral_http::detached(async move { a.vms.create(b.def, b.start).await }).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/actions/{action}", tag = "vms", params(("action" = VmAction, Path, description = "start | stop | pause | resume | suspend")), responses((status = 200, body = VmStatus)))]
async fn action(State(a): State<Arc<Agent>>, Path((name, act)): Path<(Name, VmAction)>) -> R<VmStatus> {
    Ok(Json(corral_http::detached(async move { a.vms.action(&name, act).await }).await?))
}

#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(DeleteQuery), responses((status = 204, description = "deleted (or gone already)")))]
async fn delete(
    State(a): State<Arc<Agent>>,
    Path(name): Path<Name>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, HttpError> {
    corral_http::detached(async move { a.vms.delete(&name, q.uuid, q.keep_shared).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/vms/{name}/exec", tag = "vms", request_body = ExecRequest, responses((status = 200, body = ExecResult)))]
async fn exec(State(a): State<Arc<Agent>>, Path(name): Path<Name>, Json(req): Json<ExecRequest>) -> R<ExecResult> {
    Ok(Json(a.vms.exec(&name, &req).await?))
}

#[utoipa::path(get, path = "/v1/vms/{name}/console", tag = "vms", params(ConsoleQuery), responses((status = 200, body = ConsoleChunk)))]
async fn console(
    State(a): State<Arc<Agent>>,
    Path(name): Path<Name>,
    Query(q): Query<ConsoleQuery>,
) -> R<ConsoleChunk> {
    Ok(Json(a.vms.console(&name, q.offset)?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/disk/resize", tag = "vms", request_body = ResizeDisk,
    responses((status = 200, body = VmStatus), (status = 400, body = corral_api::ErrorBody)))]
/// Grows the VM's root disk (online while it runs).
async fn resize_disk(State(a): State<Arc<Agent>>, Path(name): Path<Name>, Json(req): Json<ResizeDisk>) -> R<VmStatus> {
    Ok(Json(a.vms.resize_disk(&name, &req).await?))
}

#[utoipa::path(get, path = "/v1/vms/{name}/streams/{kind}", tag = "vms",
    params(("kind" = String, Path, description = "console or vnc")),
    responses((status = 101, description = "a websocket carrying the stream's bytes both ways"), (status = 400, body = corral_api::ErrorBody), (status = 404, body = corral_api::ErrorBody),
        (status = 409, body = corral_api::ErrorBody), (status = 422, body = corral_api::ErrorBody)))]
/// A live stream into a running VM (its serial console, or its VNC display) as a websocket.
async fn stream(
    State(a): State<Arc<Agent>>,
    Path((name, kind)): Path<(Name, StreamKind)>,
    corral_http::WebSocket(ws): corral_http::WebSocket,
) -> Result<axum::response::Response, HttpError> {
    let (sock, log) = a.vms.stream_socket(&name, kind)?;
    Ok(ws.on_upgrade(move |ws| async move {
        match kind {
            StreamKind::Console => crate::streams::console(ws, sock, log).await,
            StreamKind::Vnc => crate::streams::vnc(ws, sock).await,
        }
    }))
}

#[utoipa::path(get, path = "/v1/vms/{name}/tcp/{port}", tag = "vms",
    params(("port" = String, Path, description = "a TCP port of the guest, 1 to 65535"), corral_api::tunnel::TunnelQuery),
    responses((status = 101, description = "a websocket carrying the connection's bytes both ways"),
        (status = 400, body = corral_api::ErrorBody), (status = 404, body = corral_api::ErrorBody),
        (status = 409, body = corral_api::ErrorBody), (status = 422, body = corral_api::ErrorBody),
        (status = 500, body = corral_api::ErrorBody), (status = 503, body = corral_api::ErrorBody)))]
/// A TCP connection to a port of a running guest, made from this host's address `via` on the
/// guest's network, as a websocket. It is connected before the websocket is accepted, so a
/// refusal is an ordinary error answer.
async fn tcp(
    State(a): State<Arc<Agent>>,
    Path((name, port)): Path<(Name, corral_api::tunnel::GuestPort)>,
    Query(q): Query<corral_api::tunnel::TunnelQuery>,
    corral_http::WebSocket(ws): corral_http::WebSocket,
) -> Result<axum::response::Response, HttpError> {
    let (network, guest) = a.vms.tunnel_target(&name)?;
    let (tcp, open) = a.tunnels.connect(net(&a)?, network.vni, network.mtu, q.via, guest, port).await?;
    Ok(ws.on_upgrade(move |ws| async move {
        crate::streams::pump(ws, tcp).await;
        drop(open);
    }))
}

#[utoipa::path(post, path = "/v1/templates/pull", tag = "templates", request_body = PullRequest, responses((status = 200, body = Register, description = "the host's new inventory")))]
/// The controller sends a template: fetch it from its library, answer with the new inventory.
async fn pull(State(a): State<Arc<Agent>>, Json(b): Json<PullRequest>) -> R<corral_api::agent::Register> {
    a.pull_template(&b.name).await?;
    Ok(Json(a.registration()))
}

#[utoipa::path(post, path = "/v1/vms/import", tag = "vms", request_body = ImportRequest, responses((status = 200, body = VmStatus)))]
/// Takes over a stopped or suspended VM from another host.
async fn import(State(a): State<Arc<Agent>>, Json(b): Json<ImportRequest>) -> R<VmStatus> {
    Ok(Json(
        corral_http::detached(
            async move { a.vms.import(b.def, b.source.as_str(), &a.http, a.cfg.token.as_deref()).await },
        )
        .await?,
    ))
}

#[utoipa::path(get, path = "/v1/vms/{name}/files/{part}", tag = "vms", params(("part" = String, Path, description = "disk | state")), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "the file's bytes")))]
/// A stopped or suspended VM's disk or saved memory, for the host taking it over.
async fn file(
    State(a): State<Arc<Agent>>,
    Path((name, part)): Path<(Name, String)>,
) -> Result<axum::response::Response, HttpError> {
    let p = a.vms.file(&name, &part)?;
    let f = tokio::fs::File::open(&p).await.map_err(|e| ApiError::internal(format!("{}: {e}", p.display())))?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok(axum::response::Response::new(body))
}

fn net(a: &Agent) -> Result<&crate::netdev::Net, ApiError> {
    a.net.as_ref().ok_or_else(|| ApiError::unavailable("this host cannot manage network devices (netlink unavailable)"))
}

#[utoipa::path(put, path = "/v1/networks/{vni}", tag = "networks", params(("vni" = u32, Path, minimum = 1, maximum = 16777215)), request_body = NetworkSpec, responses((status = 204, description = "the network exists here as given")))]
/// Makes a virtual network exist on this host exactly as given.
async fn put_network(
    State(a): State<Arc<Agent>>,
    Path(vni): Path<u32>,
    Json(spec): Json<corral_api::agent::NetworkSpec>,
) -> Result<StatusCode, HttpError> {
    if spec.vni != vni {
        return Err(ApiError::bad_request("the VNI in the path and the body differ").into());
    }
    let local = a.underlay().ok_or_else(|| {
        ApiError::unavailable("this agent has no underlay address (listen on a specific IPv4 address)")
    })?;
    if let Some(up) = &spec.uplink {
        a.check_uplink(up, vni).map_err(|e| match e {
            crate::uplink::UplinkError::Taken { .. } => ApiError::conflict(e.to_string()),
            _ => ApiError::invalid(format!("uplink.interface: {e}")),
        })?;
    }
    let n = net(&a)?;
    // VXLAN traffic of this network is accepted from its peers only (set before the tunnel
    // exists, so it is never open to others).
    if spec.uplink.is_none() {
        a.vms.set_network_peers(vni, Some(spec.peers.clone())).await;
    }
    n.ensure(&spec, local).await.map_err(|e| ApiError::internal(e.to_string()))?;
    // Local NICs of the network belong on its bridge, whatever happened to it before.
    for tap in a.vms.taps_on(vni) {
        if n.index(&tap).await.ok().flatten().is_some() {
            n.attach(&tap, vni, spec.mtu).await.map_err(|e| ApiError::internal(e.to_string()))?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/networks/{vni}", tag = "networks", params(("vni" = u32, Path, minimum = 1, maximum = 16777215)), responses((status = 204, description = "its devices are gone")))]
/// Removes a virtual network's devices from this host.
async fn delete_network(State(a): State<Arc<Agent>>, Path(vni): Path<u32>) -> Result<StatusCode, HttpError> {
    let users = a.vms.taps_on(vni);
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "network {vni} is in use by {} running VM NIC(s) on this host",
            users.len()
        ))
        .into());
    }
    a.tunnels.forget(vni).await;
    net(&a)?.remove(vni).await.map_err(|e| ApiError::internal(e.to_string()))?;
    a.vms.set_network_peers(vni, None).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/migrations/incoming", tag = "migrations", request_body = Incoming, responses((status = 200, body = IncomingReady)))]
/// Prepares this host to receive a live-migrating VM.
async fn incoming(
    State(a): State<Arc<Agent>>,
    Json(b): Json<corral_api::migration::Incoming>,
) -> R<corral_api::migration::IncomingReady> {
    let listen = a.underlay().ok_or_else(|| {
        ApiError::unavailable("this agent has no underlay address to receive migrations on (listen on an IPv4 address)")
    })?;
    Ok(Json(corral_http::detached(async move { a.vms.incoming(b, listen).await }).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/migration/finish", tag = "migrations", responses((status = 200, body = VmStatus)))]
/// The VM has arrived: make it an ordinary running VM here.
async fn finish_incoming(State(a): State<Arc<Agent>>, Path(name): Path<Name>) -> R<VmStatus> {
    Ok(Json(corral_http::detached(async move { a.vms.finish_incoming(&name).await }).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/migration", tag = "migrations", request_body = Outgoing, responses((status = 200, body = OutgoingStatus)))]
/// Starts sending a running VM to another host.
async fn outgoing(
    State(a): State<Arc<Agent>>,
    Path(name): Path<Name>,
    Json(b): Json<corral_api::migration::Outgoing>,
) -> R<corral_api::migration::OutgoingStatus> {
    let (http, token) = (a.http.clone(), a.cfg.token.clone());
    Ok(Json(a.vms.outgoing(&name, b, http, token).await?))
}

#[utoipa::path(get, path = "/v1/vms/{name}/migration", tag = "migrations", responses((status = 200, body = OutgoingStatus)))]
async fn outgoing_status(
    State(a): State<Arc<Agent>>,
    Path(name): Path<Name>,
) -> R<corral_api::migration::OutgoingStatus> {
    Ok(Json(a.vms.outgoing_status(&name)?))
}

#[utoipa::path(delete, path = "/v1/vms/{name}/migration", tag = "migrations", responses((status = 200, body = OutgoingStatus)))]
async fn cancel_outgoing(
    State(a): State<Arc<Agent>>,
    Path(name): Path<Name>,
) -> R<corral_api::migration::OutgoingStatus> {
    Ok(Json(a.vms.cancel_outgoing(&name)?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/migration/switchover", tag = "migrations", params(UuidQuery), responses((status = 200, body = VmStatus)))]
/// The source is about to hand over: confirm and release the disk export.
async fn switchover_incoming(
    State(a): State<Arc<Agent>>,
    Path(name): Path<Name>,
    Query(q): Query<UuidQuery>,
) -> R<VmStatus> {
    Ok(Json(a.vms.switchover_incoming(&name, q.uuid).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/migration/revert", tag = "migrations", params(UuidQuery), responses((status = 200, body = VmStatus)))]
/// The destination's copy did not survive a completed pre-copy: run the stopped copy here.
async fn revert_outgoing(
    State(a): State<Arc<Agent>>,
    Path(name): Path<Name>,
    Query(q): Query<UuidQuery>,
) -> R<VmStatus> {
    Ok(Json(a.vms.revert_outgoing(&name, q.uuid).await?))
}
