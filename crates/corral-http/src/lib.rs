//! HTTP pieces shared by the controller's and the agents' REST servers: API errors as JSON
//! responses, and the bearer-token check that protects every endpoint but health.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use corral_api::ApiError;

/// An [`ApiError`] as an HTTP response carrying the error document.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

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

/// Runs `work` to completion even if the client goes away: axum drops a handler's future
/// when its connection closes, which would cut a lifecycle operation off half-way.
pub async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(|e| ApiError::internal(format!("operation failed: {e}")))?
}

/// Paths anyone may read.
const OPEN: &[&str] = &["/v1/health", "/v1/openapi.json", "/v1/leader"];

/// Middleware: requires `Authorization: Bearer <token>` when a token is configured.
pub async fn require_token(State(token): State<Option<String>>, req: Request, next: Next) -> Response {
    let Some(token) = token else { return next.run(req).await };
    if OPEN.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        return next.run(req).await;
    }
    let e = ApiError {
        status: 401,
        kind: "unauthorized",
        message: "missing or wrong API token: set CORRAL_TOKEN (`corral lab up` prints it) or pass --token".into(),
    };
    HttpError(e).into_response()
}
