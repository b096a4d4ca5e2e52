//! The controller's REST API (`/v1/...`), with its OpenAPI 3 document at `/v1/openapi.json`
//! generated from the same handlers. Handlers are thin: decode, call the [`Controller`],
//! encode the answer or the error document. Long operations answer with an [`Operation`] to
//! poll (`GET /v1/operations/{id}`) or wait on (`?wait=SECONDS`). Bodies, path parameters
//! and queries go through `corral_http`'s extractors: a value its type refuses (see
//! [`corral_api::types`]) or an unknown field is answered 422 naming the field.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use corral_api::agent::{Heartbeat, HeartbeatReply, Register};
use corral_api::cluster::{
    ClusterView, CreateCluster, Event, Network, Operation, Profile, ProfileSource, ScaleCluster,
};
use corral_api::drs::{DrsRound, DrsSettings, DrsSettingsPatch, DrsStatus};
use corral_api::migration::{MigrateVm, Migration};
use corral_api::types::Name;
use corral_api::{ApiError, ConsoleChunk, CreateVm, ErrorBody, ExecRequest, ExecResult, Host, Template, Vm, VmAction};
use corral_http::{HttpError, Json, Path, Query};

use crate::service::Controller;

type R<T> = Result<Json<T>, HttpError>;
type C = State<Arc<Controller>>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Corral", description = "Virtual clusters of real VMs over many hosts"),
    components(schemas(ErrorBody, VmAction))
)]
struct ApiDoc;

/// Paths served without a token.
const PUBLIC: &[&str] = &["/v1/health"];

#[derive(Debug, Deserialize)]
struct Offset {
    #[serde(default)]
    offset: u64,
}

#[derive(Debug, Deserialize)]
struct Wait {
    /// Seconds to wait for the operation to end.
    #[serde(default)]
    wait: Option<u64>,
}

/// The router, and the OpenAPI document of everything it serves.
pub fn router(c: Arc<Controller>) -> axum::Router {
    let token = c.token.clone();
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(register))
        .routes(routes!(heartbeat))
        .routes(routes!(hosts))
        .routes(routes!(host))
        .routes(routes!(cordon))
        .routes(routes!(uncordon))
        .routes(routes!(labels))
        .routes(routes!(templates))
        .routes(routes!(images))
        .routes(routes!(image, import_image, delete_image))
        .routes(routes!(vms, create))
        .routes(routes!(vm, delete))
        .routes(routes!(exec))
        .routes(routes!(console))
        .routes(routes!(stream))
        .routes(routes!(tcp))
        .routes(routes!(resize_disk))
        .routes(routes!(action))
        .routes(routes!(profiles, create_profile))
        .routes(routes!(profile, replace_profile, delete_profile))
        .routes(routes!(clusters, create_cluster))
        .routes(routes!(cluster, delete_cluster))
        .routes(routes!(scale_cluster))
        .routes(routes!(suspend_cluster))
        .routes(routes!(resume_cluster))
        .routes(routes!(operations))
        .routes(routes!(operation))
        .routes(routes!(events))
        .routes(routes!(networks))
        .routes(routes!(network))
        .routes(routes!(move_vm))
        .routes(routes!(migrate_vm, cancel_migration))
        .routes(routes!(migrations))
        .routes(routes!(migration))
        .routes(routes!(evacuate))
        .routes(routes!(wake))
        .routes(routes!(standby))
        .routes(routes!(drs_status, drs_set))
        .routes(routes!(drs_plan))
        .routes(routes!(drs_history))
        .routes(routes!(ha_status))
        .with_state(c.clone())
        .split_for_parts();
    let mut api = api;
    utoipa::Modify::modify(&corral_http::openapi::Conformance { public: PUBLIC }, &mut api);
    let api = Arc::new(api);
    router
        .route("/v1/openapi.json", axum::routing::get(move || async move { Json((*api).clone()) }))
        .route("/v1/templates/{name}/files/{part}", axum::routing::get(template_file).with_state(c.clone()))
        .route("/v1/leader", axum::routing::get(leader).with_state(c.clone()))
        .layer(axum::middleware::from_fn_with_state(c, leader_only))
        .layer(axum::middleware::from_fn_with_state(token, corral_http::require_token))
}

/// Who leads: `{"me": URL, "leading": bool, "leader": URL|null}`.
async fn leader(State(c): C) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "me": c.leadership.me,
        "leading": c.leadership.is_leader(),
        "leader": c.leadership.leader(),
    }))
}

/// A standby controller serves only its health, who leads, and template files; everything
/// else is answered 503 with the leader's URL (header `x-corral-leader`), which agents and
/// the CLI follow.
async fn leader_only(State(c): C, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let p = req.uri().path();
    if c.leadership.is_leader() || p == "/v1/health" || p == "/v1/leader" || p.contains("/files/") {
        return next.run(req).await;
    }
    let leader = c.leadership.leader();
    let message = match &leader {
        Some(l) => format!("this controller ({}) is on standby: the leader is {l}", c.leadership.me),
        None => format!(
            "this controller ({}) is on standby and no leader is elected yet: retry in a few seconds",
            c.leadership.me
        ),
    };
    let mut resp = HttpError(ApiError::unavailable(message)).into_response();
    if let Some(v) = leader.and_then(|l| header::HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(corral_api::LEADER_HEADER, v);
    }
    resp
}

#[utoipa::path(get, path = "/v1/health", tag = "meta", responses((status = 200, description = "the controller is up")))]
async fn health() -> &'static str {
    "ok"
}

#[utoipa::path(post, path = "/v1/agents/register", tag = "agents", request_body = Register,
    responses((status = 204), (status = 400, body = ErrorBody)))]
async fn register(State(c): C, Json(r): Json<Register>) -> Result<StatusCode, HttpError> {
    c.register(r)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/agents/{name}/heartbeat", tag = "agents", request_body = Heartbeat,
    responses((status = 200, body = HeartbeatReply, description = "the lease, renewed"),
        (status = 404, body = ErrorBody, description = "unknown host: register")))]
async fn heartbeat(State(c): C, Path(name): Path<String>, Json(hb): Json<Heartbeat>) -> R<HeartbeatReply> {
    let tunnels = c.reported_tunnels(&name);
    let reply = c.heartbeat(&name, hb)?;
    if c.reported_tunnels(&name) != tunnels {
        // A network kept for a tunnel may go now (or must stay).
        let c = c.clone();
        tokio::spawn(async move { c.sync_networks().await });
    }
    Ok(Json(reply))
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = Vec<Host>)))]
async fn hosts(State(c): C) -> R<Vec<Host>> {
    Ok(Json(c.hosts()?))
}

#[utoipa::path(get, path = "/v1/hosts/{name}", tag = "hosts", responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
async fn host(State(c): C, Path(name): Path<Name>) -> R<Host> {
    Ok(Json(c.host(&name)?))
}

#[utoipa::path(post, path = "/v1/hosts/{name}/cordon", tag = "hosts", responses((status = 200, body = Host)))]
async fn cordon(State(c): C, Path(name): Path<Name>) -> R<Host> {
    Ok(Json(c.set_cordon(&name, true)?))
}

#[utoipa::path(post, path = "/v1/hosts/{name}/uncordon", tag = "hosts", responses((status = 200, body = Host)))]
async fn uncordon(State(c): C, Path(name): Path<Name>) -> R<Host> {
    Ok(Json(c.set_cordon(&name, false)?))
}

#[utoipa::path(put, path = "/v1/hosts/{name}/labels", tag = "hosts", request_body = BTreeMap<String, String>,
    responses((status = 200, body = Host)))]
async fn labels(State(c): C, Path(name): Path<Name>, Json(l): Json<BTreeMap<String, String>>) -> R<Host> {
    Ok(Json(c.set_labels(&name, l)?))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates", responses((status = 200, body = Vec<Template>)))]
async fn templates(State(c): C) -> R<Vec<Template>> {
    Ok(Json(c.templates()?))
}

#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<Template>)))]
/// The image library (templates are its images).
async fn images(State(c): C) -> R<Vec<Template>> {
    Ok(Json(c.templates()?))
}

#[utoipa::path(get, path = "/v1/images/{name}", tag = "images", responses((status = 200, body = Template), (status = 404, body = ErrorBody)))]
async fn image(State(c): C, Path(name): Path<Name>) -> R<Template> {
    c.templates()?
        .into_iter()
        .find(|t| t.name == name.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no image named {name:?} (see `corral image list`)")).into())
}

#[utoipa::path(put, path = "/v1/images/{name}", tag = "images", params(corral_api::image::ImportImage),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the image file"),
    responses((status = 201, body = Template), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
/// Imports a disk image (qcow2, raw, vmdk, vhdx, vpc, vdi) into the library: checked,
/// converted to qcow2, then usable as a template.
async fn import_image(
    State(c): C,
    Path(name): Path<Name>,
    Query(q): Query<corral_api::image::ImportImage>,
    body: Body,
) -> Result<(StatusCode, Json<Template>), HttpError> {
    use futures::StreamExt;
    let stream = body.into_data_stream().map(|r| r.map_err(|e| e.to_string()));
    Ok((StatusCode::CREATED, Json(c.import_image(&name, &q, Box::pin(stream)).await?)))
}

#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
/// Removes an image from the library (refused while VMs use it).
async fn delete_image(State(c): C, Path(name): Path<Name>) -> Result<StatusCode, HttpError> {
    c.delete_image(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A part of a library template (`meta`, `kernel`, `initrd`, `disk`), streamed to an agent.
async fn template_file(State(c): C, Path((name, part)): Path<(String, String)>) -> Result<Response, HttpError> {
    let t = c
        .library()
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::not_found(format!("the library has no template {name:?}")))?;
    let path = match part.as_str() {
        "meta" => return Ok(Json(t.t.meta.clone()).into_response()),
        "kernel" | "initrd" => {
            let Some((kernel, initrd)) = t.t.direct else {
                return Err(
                    ApiError::not_found(format!("template {name:?} boots from its disk: it has no {part}")).into()
                );
            };
            if part == "kernel" {
                kernel
            } else {
                initrd
            }
        }
        "disk" => t.t.disk,
        _ => return Err(ApiError::not_found(format!("no template part {part:?}")).into()),
    };
    let f = tokio::fs::File::open(&path).await.map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()).into())
}

#[utoipa::path(get, path = "/v1/vms", tag = "vms", responses((status = 200, body = Vec<Vm>)))]
async fn vms(State(c): C) -> R<Vec<Vm>> {
    Ok(Json(c.vms()?))
}

#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
async fn vm(State(c): C, Path(name): Path<Name>) -> R<Vm> {
    Ok(Json(c.vm(&name)?))
}

#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateVm,
    responses((status = 201, body = Vm, description = "created (and running unless start was false)"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(State(c): C, Json(req): Json<CreateVm>) -> Result<(StatusCode, Json<Vm>), HttpError> {
    Ok((StatusCode::CREATED, Json(corral_http::detached(async move { c.create_vm(req).await }).await?)))
}

#[utoipa::path(post, path = "/v1/vms/{name}/actions/{action}", tag = "vms",
    params(("action" = VmAction, Path, description = "start | stop | pause | resume | suspend")),
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody)))]
async fn action(State(c): C, Path((name, a)): Path<(Name, VmAction)>) -> R<Vm> {
    Ok(Json(corral_http::detached(async move { c.vm_action(&name, a).await }).await?))
}

#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete(State(c): C, Path(name): Path<Name>) -> Result<StatusCode, HttpError> {
    corral_http::detached(async move { c.delete_vm(&name).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/vms/{name}/exec", tag = "vms", request_body = ExecRequest, responses((status = 200, body = ExecResult)))]
async fn exec(State(c): C, Path(name): Path<Name>, Json(req): Json<ExecRequest>) -> R<ExecResult> {
    Ok(Json(c.exec(&name, &req).await?))
}

#[utoipa::path(get, path = "/v1/vms/{name}/console", tag = "vms",
    params(("offset" = Option<u64>, Query, description = "byte offset to read from")), responses((status = 200, body = ConsoleChunk)))]
async fn console(State(c): C, Path(name): Path<Name>, Query(q): Query<Offset>) -> R<ConsoleChunk> {
    Ok(Json(c.console(&name, q.offset).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/disk/resize", tag = "vms", request_body = corral_api::ResizeDisk,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
/// Grows a VM's root disk: online while it runs (the guest sees it at once), else on its file.
async fn resize_disk(State(c): C, Path(name): Path<Name>, Json(req): Json<corral_api::ResizeDisk>) -> R<Vm> {
    Ok(Json(c.resize_disk(&name, &req).await?))
}

#[utoipa::path(get, path = "/v1/vms/{name}/streams/{kind}", tag = "vms",
    params(("kind" = String, Path, description = "console or vnc")),
    responses((status = 101, description = "a websocket carrying the stream's bytes both ways"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
/// A live stream into a running VM as a websocket: its serial console (read and write; the
/// recent output first), or its VNC display. The controller carries it to the VM's agent.
async fn stream(
    State(c): C,
    Path((name, kind)): Path<(Name, corral_api::image::StreamKind)>,
    corral_http::WebSocket(ws): corral_http::WebSocket,
) -> Result<Response, HttpError> {
    let upstream = c.stream(&name, kind).await?;
    Ok(ws.on_upgrade(move |ws| crate::streams::relay(ws, upstream)))
}

#[utoipa::path(get, path = "/v1/vms/{name}/tcp/{port}", tag = "vms",
    params(("port" = String, Path, description = "a TCP port of the guest, 1 to 65535")),
    responses((status = 101, description = "a websocket carrying the connection's bytes both ways"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// A TCP connection to a port of a running cluster member, as a websocket (what `corral vm
/// ssh` and `corral vm port-forward` use). The VM's host connects from its address on the
/// cluster's network.
async fn tcp(
    State(c): C,
    Path((name, port)): Path<(Name, corral_api::tunnel::GuestPort)>,
    corral_http::WebSocket(ws): corral_http::WebSocket,
) -> Result<Response, HttpError> {
    let upstream = c.tunnel(&name, port).await?;
    Ok(ws.on_upgrade(move |ws| crate::streams::relay(ws, upstream)))
}

#[utoipa::path(get, path = "/v1/profiles", tag = "profiles", responses((status = 200, body = Vec<Profile>)))]
async fn profiles(State(c): C) -> R<Vec<Profile>> {
    Ok(Json(c.profiles()?))
}

#[utoipa::path(post, path = "/v1/profiles", tag = "profiles", request_body = ProfileSource,
    responses((status = 201, body = Profile), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_profile(State(c): C, Json(src): Json<ProfileSource>) -> Result<(StatusCode, Json<Profile>), HttpError> {
    Ok((StatusCode::CREATED, Json(c.create_profile(src, false)?)))
}

#[utoipa::path(get, path = "/v1/profiles/{name}", tag = "profiles", responses((status = 200, body = Profile), (status = 404, body = ErrorBody)))]
async fn profile(State(c): C, Path(name): Path<Name>) -> R<Profile> {
    Ok(Json(c.profile(&name)?))
}

#[utoipa::path(put, path = "/v1/profiles/{name}", tag = "profiles", request_body = ProfileSource,
    responses((status = 200, body = Profile), (status = 400, body = ErrorBody)))]
async fn replace_profile(
    State(c): C,
    Path(name): Path<corral_api::types::Name>,
    Json(mut src): Json<ProfileSource>,
) -> R<Profile> {
    src.name = name;
    Ok(Json(c.create_profile(src, true)?))
}

#[utoipa::path(delete, path = "/v1/profiles/{name}", tag = "profiles", responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_profile(State(c): C, Path(name): Path<Name>) -> Result<StatusCode, HttpError> {
    c.delete_profile(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", responses((status = 200, body = Vec<ClusterView>)))]
async fn clusters(State(c): C) -> R<Vec<ClusterView>> {
    Ok(Json(c.clusters()?))
}

#[utoipa::path(get, path = "/v1/clusters/{name}", tag = "clusters", responses((status = 200, body = ClusterView), (status = 404, body = ErrorBody)))]
async fn cluster(State(c): C, Path(name): Path<Name>) -> R<ClusterView> {
    Ok(Json(c.cluster_view(&name)?))
}

#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", request_body = CreateCluster,
    responses((status = 202, body = Operation, description = "deployment started: poll the operation"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_cluster(
    State(c): C,
    Json(req): Json<CreateCluster>,
) -> Result<(StatusCode, Json<Operation>), HttpError> {
    Ok((StatusCode::ACCEPTED, Json(c.create_cluster(req).await?)))
}

#[utoipa::path(post, path = "/v1/clusters/{name}/scale", tag = "clusters", request_body = ScaleCluster,
    responses((status = 202, body = Operation), (status = 409, body = ErrorBody)))]
async fn scale_cluster(
    State(c): C,
    Path(name): Path<Name>,
    Json(req): Json<ScaleCluster>,
) -> Result<(StatusCode, Json<Operation>), HttpError> {
    Ok((StatusCode::ACCEPTED, Json(c.scale_cluster(&name, req.size).await?)))
}

#[utoipa::path(post, path = "/v1/clusters/{name}/suspend", tag = "clusters", responses((status = 202, body = Operation), (status = 409, body = ErrorBody)))]
async fn suspend_cluster(State(c): C, Path(name): Path<Name>) -> Result<(StatusCode, Json<Operation>), HttpError> {
    Ok((StatusCode::ACCEPTED, Json(c.suspend_or_resume_cluster(&name, true).await?)))
}

#[utoipa::path(post, path = "/v1/clusters/{name}/resume", tag = "clusters", responses((status = 202, body = Operation), (status = 409, body = ErrorBody)))]
async fn resume_cluster(State(c): C, Path(name): Path<Name>) -> Result<(StatusCode, Json<Operation>), HttpError> {
    Ok((StatusCode::ACCEPTED, Json(c.suspend_or_resume_cluster(&name, false).await?)))
}

#[utoipa::path(delete, path = "/v1/clusters/{name}", tag = "clusters", responses((status = 202, body = Operation), (status = 404, body = ErrorBody)))]
async fn delete_cluster(State(c): C, Path(name): Path<Name>) -> Result<(StatusCode, Json<Operation>), HttpError> {
    Ok((StatusCode::ACCEPTED, Json(c.delete_cluster(&name).await?)))
}

#[utoipa::path(get, path = "/v1/operations", tag = "operations", responses((status = 200, body = Vec<Operation>)))]
async fn operations(State(c): C) -> Json<Vec<Operation>> {
    Json(c.operations())
}

#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations",
    params(("wait" = Option<u64>, Query, description = "seconds to wait for it to end")),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody)))]
async fn operation(State(c): C, Path(id): Path<String>, Query(w): Query<Wait>) -> R<Operation> {
    Ok(Json(match w.wait {
        Some(s) => c.wait_operation(&id, s).await?,
        None => c.operation(&id)?,
    }))
}

#[utoipa::path(get, path = "/v1/events", tag = "meta", responses((status = 200, body = Vec<Event>)))]
async fn events(State(c): C) -> R<Vec<Event>> {
    Ok(Json(c.events()?))
}

#[utoipa::path(get, path = "/v1/networks", tag = "networks", responses((status = 200, body = Vec<Network>)))]
async fn networks(State(c): C) -> R<Vec<Network>> {
    Ok(Json(c.networks()?))
}

#[utoipa::path(get, path = "/v1/networks/{name}", tag = "networks", responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
async fn network(State(c): C, Path(name): Path<Name>) -> R<Network> {
    Ok(Json(c.network(&name)?))
}

/// Where to move a VM.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MoveTo {
    #[schema(value_type = String)]
    to: corral_api::types::Name,
}

#[utoipa::path(post, path = "/v1/vms/{name}/move", tag = "vms", request_body = MoveTo,
    responses((status = 200, body = Vm, description = "moved: same identity, disk and (if suspended) memory"), (status = 409, body = ErrorBody)))]
async fn move_vm(State(c): C, Path(name): Path<Name>, Json(m): Json<MoveTo>) -> R<Vm> {
    Ok(Json(corral_http::detached(async move { c.move_vm(&name, &m.to).await }).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/migration", tag = "migrations", request_body = MigrateVm,
    responses((status = 202, body = Migration, description = "started or queued: follow it at /v1/migrations/{id}"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 507, body = ErrorBody)))]
async fn migrate_vm(
    State(c): C,
    Path(name): Path<Name>,
    Json(m): Json<MigrateVm>,
) -> Result<(StatusCode, Json<Migration>), HttpError> {
    let m = corral_http::detached(async move { c.migrate_vm(&name, m).await }).await?;
    Ok((StatusCode::ACCEPTED, Json(m)))
}

#[utoipa::path(delete, path = "/v1/vms/{name}/migration", tag = "migrations",
    responses((status = 200, body = Migration, description = "cancel requested: the VM stays at the source"),
        (status = 409, body = ErrorBody, description = "nothing to cancel, or too late (post-copy)")))]
async fn cancel_migration(State(c): C, Path(name): Path<Name>) -> R<Migration> {
    Ok(Json(c.cancel_migration(&name).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct MigrationFilter {
    /// Only this VM's migrations.
    vm: Option<String>,
}

#[utoipa::path(get, path = "/v1/migrations", tag = "migrations", params(MigrationFilter),
    responses((status = 200, body = Vec<Migration>, description = "history, oldest first")))]
async fn migrations(State(c): C, Query(f): Query<MigrationFilter>) -> R<Vec<Migration>> {
    Ok(Json(c.migrations(f.vm.as_deref())?))
}

#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "migrations",
    responses((status = 200, body = Migration), (status = 404, body = ErrorBody)))]
async fn migration(State(c): C, Path(id): Path<String>) -> R<Migration> {
    Ok(Json(c.migration(&id)?))
}

#[utoipa::path(post, path = "/v1/hosts/{name}/evacuate", tag = "hosts",
    responses((status = 202, body = Operation, description = "cordoned; its VMs are being moved off"),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn evacuate(State(c): C, Path(name): Path<Name>) -> Result<(StatusCode, Json<Operation>), HttpError> {
    Ok((StatusCode::ACCEPTED, Json(c.evacuate_host(&name).await?)))
}

#[utoipa::path(post, path = "/v1/hosts/{name}/wake", tag = "hosts",
    responses((status = 202, body = Host, description = "waking (or on already): poll the host until its power is \
        `on`; back in `standby` means the wake failed (event `host.wake-failed` says why)"),
        (status = 404, body = ErrorBody)))]
async fn wake(State(c): C, Path(name): Path<Name>) -> Result<(StatusCode, Json<Host>), HttpError> {
    Ok((StatusCode::ACCEPTED, Json(c.begin_wake(&name)?)))
}

#[utoipa::path(post, path = "/v1/hosts/{name}/standby", tag = "hosts",
    responses((status = 200, body = Host, description = "in standby"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn standby(State(c): C, Path(name): Path<Name>) -> R<Host> {
    c.standby_host(&name).await?;
    Ok(Json(c.host(&name)?))
}

#[utoipa::path(get, path = "/v1/ha", tag = "ha",
    responses((status = 200, body = corral_api::HaStatus, description = "protected and unprotected VMs, hosts down, spare capacity")))]
async fn ha_status(State(c): C) -> R<corral_api::HaStatus> {
    Ok(Json(c.ha_status()?))
}

#[utoipa::path(get, path = "/v1/drs", tag = "drs",
    responses((status = 200, body = DrsStatus, description = "settings, power states, the latest round")))]
async fn drs_status(State(c): C) -> R<DrsStatus> {
    Ok(Json(c.drs_status()?))
}

#[utoipa::path(patch, path = "/v1/drs", tag = "drs", request_body = DrsSettingsPatch,
    responses((status = 200, body = DrsSettings), (status = 400, body = ErrorBody)))]
async fn drs_set(State(c): C, Json(p): Json<DrsSettingsPatch>) -> R<DrsSettings> {
    Ok(Json(c.set_drs(p)?))
}

#[utoipa::path(get, path = "/v1/drs/plan", tag = "drs",
    responses((status = 200, body = DrsRound, description = "what a round would do now (nothing is done)")))]
async fn drs_plan(State(c): C) -> R<DrsRound> {
    Ok(Json(c.drs_plan()?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct Limit {
    /// The most recent rounds to return (default 50).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/drs/history", tag = "drs", params(Limit),
    responses((status = 200, body = Vec<DrsRound>, description = "rounds that planned something, oldest first")))]
async fn drs_history(State(c): C, Query(l): Query<Limit>) -> R<Vec<DrsRound>> {
    Ok(Json(c.drs_rounds(l.limit.unwrap_or(50))?))
}
