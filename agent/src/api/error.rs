//! API errors: an HTTP status and `{"error": "..."}`, as the Open Inference Protocol
//! specifies.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::engine::InferError;

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
