//! HTTP pieces shared by the controller's and the agents' REST servers: API errors as JSON
//! responses, extractors whose refusals are error documents too (HTTP 422 naming the field),
//! and the bearer-token check that protects every endpoint but health. [`runner`] starts and
//! stops each daemon's background loops and its server.

pub mod openapi;
pub mod runner;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
        (code, axum::Json(self.0.body())).into_response()
    }
}

/// A JSON request body parsed into `T`, or a JSON response. A body that is not valid JSON or
/// does not parse into `T` (a field's value refused by its type, a missing or unknown field)
/// is answered 422 with the error document; serde's message names the field
/// (`def.name: invalid name "/": ...`). A missing `Content-Type: application/json` stays 415.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(HttpError(json_refusal(&r))),
        }
    }
}

fn json_refusal(r: &JsonRejection) -> ApiError {
    let detail = match r {
        JsonRejection::JsonDataError(e) => e.body_text(),
        JsonRejection::JsonSyntaxError(e) => e.body_text(),
        other => other.body_text(),
    };
    match r {
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            ApiError::invalid(format!("invalid request body: {detail}; correct that field and send it again"))
        }
        other => ApiError {
            status: other.status().as_u16(),
            kind: corral_api::ErrorKind::BadRequest,
            message: format!("{detail}: send a JSON body with Content-Type: application/json"),
        },
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters parsed into `T` (e.g. a [`Name`](corral_api::types::Name)); a value its type
/// refuses is answered 422 with the error document.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) => Err(HttpError(path_refusal(&r))),
        }
    }
}

fn path_refusal(r: &PathRejection) -> ApiError {
    match r {
        PathRejection::FailedToDeserializePathParams(e) => {
            ApiError::invalid(format!("invalid path parameter: {}", e.body_text()))
        }
        other => ApiError::internal(other.body_text()),
    }
}

/// A query string parsed into `T`; a value its type refuses is answered 422 with the error
/// document.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(r) => Err(HttpError(query_refusal(&r))),
        }
    }
}

fn query_refusal(r: &QueryRejection) -> ApiError {
    ApiError::invalid(format!("invalid query string: {}", r.body_text()))
}

/// A websocket upgrade; a request that is not one (no `Upgrade: websocket` and its headers)
/// is answered 400 with the error document, like every other refusal.
pub struct WebSocket(pub axum::extract::ws::WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for WebSocket {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match axum::extract::ws::WebSocketUpgrade::from_request_parts(parts, state).await {
            Ok(ws) => Ok(WebSocket(ws)),
            Err(r) => Err(HttpError(ApiError::bad_request(format!(
                "this endpoint is a websocket ({}): connect with a websocket client",
                r.body_text()
            )))),
        }
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

/// Whether `given` is `token`, in time that does not depend on where they differ (both are
/// hashed first, so neither does it depend on their lengths).
pub fn token_matches(given: &str, token: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(token.as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// Why a daemon refuses to start with its listen address and token.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "refusing to listen on {addr} without an API token: anyone who reaches it could run and delete VMs; \
         give --token-file FILE (the same file on the controller and every agent), listen on 127.0.0.1, \
         or pass --insecure to allow it anyway"
    )]
    NoToken { addr: std::net::SocketAddr },
}

/// Whether a daemon may listen on `addr` with this token: a non-loopback address needs a
/// token unless `insecure` (then the caller warns loudly).
pub fn check_listen(addr: std::net::SocketAddr, token: Option<&str>, insecure: bool) -> Result<(), ListenError> {
    if addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) || insecure {
        Ok(())
    } else {
        Err(ListenError::NoToken { addr })
    }
}

/// Why a token file is not used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "token file {path} may be read or changed by other users (mode {mode:o}): run `chmod 600 {path}` \
         (and make it owned by the user running corral)"
    )]
    Loose { path: String, mode: u32 },
    #[error("token file {path} is empty: put the API token in it, or delete it to have the controller make one")]
    Empty { path: String },
}

/// Reads an API token from a file only its owner may read or write (mode 0600 or tighter).
pub fn read_token_file(path: &std::path::Path) -> Result<String, TokenFileError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read = |source| TokenFileError::Read { path: shown.clone(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenFileError::Loose { path: shown, mode });
    }
    let t = std::fs::read_to_string(path).map_err(read)?;
    let t = t.trim();
    if t.is_empty() {
        return Err(TokenFileError::Empty { path: shown });
    }
    Ok(t.to_string())
}

/// Middleware: requires `Authorization: Bearer <token>` when a token is configured.
pub async fn require_token(State(token): State<Option<String>>, req: Request, next: Next) -> Response {
    let Some(token) = token else { return next.run(req).await };
    if OPEN.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| token_matches(g, &token)) {
        return next.run(req).await;
    }
    let e = ApiError::unauthorized(
        "missing or wrong API token: set CORRAL_TOKEN (`corral lab up` prints it) or pass --token",
    );
    HttpError(e).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body1 {
        name: corral_api::types::Name,
    }

    async fn call(app: axum::Router, uri: &str, body: &str) -> (StatusCode, corral_api::ErrorBody) {
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let res = app.oneshot(req).await.expect("answer");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("error document: {bytes:?}")))
    }

    fn app() -> axum::Router {
        axum::Router::new()
            .route("/b", post(|Json(_b): Json<Body1>| async { "ok" }))
            .route("/p/{name}", post(|Path(_n): Path<corral_api::types::Name>| async { "ok" }))
    }

    #[tokio::test]
    async fn refused_bodies_are_422_documents_naming_the_field() {
        let (s, e) = call(app(), "/b", r#"{"name": "../x"}"#).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.kind, corral_api::ErrorKind::Invalid);
        assert!(e.error.contains("name: invalid name \"../x\""), "{}", e.error);
        let (s, e) = call(app(), "/b", r#"{"name": "web", "extra": 1}"#).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.error.contains("unknown field `extra`"), "{}", e.error);
        let (s, _) = call(app(), "/b", "{not json").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn refused_path_parameters_are_422_documents() {
        let (s, e) = call(app(), "/p/a;touch%20x", "{}").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.error.contains("invalid name \"a;touch x\""), "{}", e.error);
        let (s, e) = call(app(), "/p/..%2Fx", "{}").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{}", e.error);
    }

    #[test]
    fn non_loopback_listening_needs_a_token_or_insecure() {
        let lo: std::net::SocketAddr = "127.0.0.1:7700".parse().expect("addr");
        let any: std::net::SocketAddr = "0.0.0.0:7700".parse().expect("addr");
        let lab: std::net::SocketAddr = "198.18.202.2:7701".parse().expect("addr");
        assert!(check_listen(lo, None, false).is_ok());
        assert!(check_listen("[::1]:7700".parse().expect("addr"), None, false).is_ok());
        for a in [any, lab] {
            let e = check_listen(a, None, false).expect_err("refused");
            assert!(e.to_string().contains("--token-file") && e.to_string().contains("--insecure"), "{e}");
            assert!(check_listen(a, Some(""), false).is_err());
            assert!(check_listen(a, Some("t0ken"), false).is_ok());
            assert!(check_listen(a, None, true).is_ok());
        }
    }

    #[test]
    fn loose_token_files_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("corral-http-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("token");
        std::fs::write(&f, "s3cret\n").expect("write");
        for loose in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(loose)).expect("chmod");
            let e = read_token_file(&f).expect_err("loose");
            assert!(matches!(e, TokenFileError::Loose { .. }), "{e}");
            assert!(e.to_string().contains(&format!("chmod 600 {}", f.display())), "{e}");
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token_file(&f).expect("tight"), "s3cret");
        std::fs::write(&f, " \n").expect("write");
        assert!(matches!(read_token_file(&f), Err(TokenFileError::Empty { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tokens_match_only_themselves() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cret ", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}
