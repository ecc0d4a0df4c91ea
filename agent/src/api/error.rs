//! API errors: an HTTP status and `{"error": "..."}`, as the Open Inference Protocol
//! specifies.

use axum::Json;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use edge_infer::engine::InferError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    /// 400: the request is wrong; the message says how.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// 404: no such model or version.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    /// 503: overloaded or shutting down; retry later.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into() }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> ApiError {
        let status = match &e {
            InferError::QueueFull { .. } | InferError::ShuttingDown | InferError::StreamBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InferError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
            InferError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            InferError::Input { .. } => StatusCode::BAD_REQUEST,
            InferError::Run { .. } | InferError::Panic { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message: e.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// The start of a URL path for a message (a 60 KB path is not echoed whole).
fn shown(uri: &Uri) -> String {
    let path = uri.path();
    match path.char_indices().nth(120) {
        Some((at, _)) => format!("{}...", &path[..at]),
        None => path.to_string(),
    }
}

/// `Path`, with its rejections (a segment that is not UTF-8 once percent-decoded, ...)
/// answered as `{"error"}` like every other error.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError {
                status: rejection.status(),
                message: format!(
                    "malformed URL {}: {}; percent-encode model names and versions as UTF-8",
                    shown(&parts.uri),
                    rejection.body_text()
                ),
            }),
        }
    }
}

/// The answer to a known path with a method it does not take (axum adds `Allow`).
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "{method} is not allowed on {}; the Allow header lists the methods it takes (docs/api.md)",
            shown(&uri)
        ),
    }
}
