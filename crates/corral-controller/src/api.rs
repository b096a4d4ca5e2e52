//! The controller's REST API (`/v1/...`). Handlers are thin: they decode the request, call the
//! [`Controller`], and encode the answer or the error document.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use corral_api::agent::{Heartbeat, Register};
use corral_api::{
    ApiError, ConsoleChunk, CreateVm, ExecRequest, ExecResult, Host, Template, Vm, VmAction,
};

use crate::service::Controller;

/// An [`ApiError`] as an HTTP response.
pub struct HttpError(ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.0.body())).into_response()
    }
}

type R<T> = Result<Json<T>, HttpError>;
type C = State<Arc<Controller>>;

#[derive(Debug, Deserialize)]
struct Offset {
    #[serde(default)]
    offset: u64,
}

pub fn router(c: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/agents/register", post(register))
        .route("/v1/agents/{name}/heartbeat", post(heartbeat))
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/{name}", get(host))
        .route("/v1/templates", get(templates))
        .route("/v1/vms", get(vms).post(create))
        .route("/v1/vms/{name}", get(vm).delete(delete))
        .route("/v1/vms/{name}/exec", post(exec))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/vms/{name}/{action}", post(action))
        .with_state(c)
}

async fn register(State(c): C, Json(r): Json<Register>) -> Result<StatusCode, HttpError> {
    c.register(r)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(c): C,
    Path(name): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Result<StatusCode, HttpError> {
    c.heartbeat(&name, hb)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn hosts(State(c): C) -> R<Vec<Host>> {
    Ok(Json(c.hosts()?))
}

async fn host(State(c): C, Path(name): Path<String>) -> R<Host> {
    Ok(Json(c.host(&name)?))
}

async fn templates(State(c): C) -> R<Vec<Template>> {
    Ok(Json(c.templates()?))
}

async fn vms(State(c): C) -> R<Vec<Vm>> {
    Ok(Json(c.vms()?))
}

async fn vm(State(c): C, Path(name): Path<String>) -> R<Vm> {
    Ok(Json(c.vm(&name)?))
}

async fn create(
    State(c): C,
    Json(req): Json<CreateVm>,
) -> Result<(StatusCode, Json<Vm>), HttpError> {
    Ok((StatusCode::CREATED, Json(c.create_vm(req).await?)))
}

async fn action(State(c): C, Path((name, action)): Path<(String, String)>) -> R<Vm> {
    let a = VmAction::parse(&action).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown action {action:?}: use start, stop, pause, resume or suspend"
        ))
    })?;
    Ok(Json(c.vm_action(&name, a).await?))
}

async fn delete(State(c): C, Path(name): Path<String>) -> Result<StatusCode, HttpError> {
    c.delete_vm(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(c): C,
    Path(name): Path<String>,
    Json(req): Json<ExecRequest>,
) -> R<ExecResult> {
    Ok(Json(c.exec(&name, &req).await?))
}

async fn console(
    State(c): C,
    Path(name): Path<String>,
    Query(q): Query<Offset>,
) -> R<ConsoleChunk> {
    Ok(Json(c.console(&name, q.offset).await?))
}
