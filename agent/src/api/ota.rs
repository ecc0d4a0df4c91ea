//! `POST /ota/check`, `/ota/apply` and `/ota/rollback`: the update task's commands for
//! `edge-agent update check` and `edge-agent model rollback` on the device itself. They
//! run the same code as the MQTT commands of the same names, and can only install
//! versions the signed registry metadata lists.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{ApiError, ApiState};

/// Body of `/ota/apply` and `/ota/rollback` (`/ota/check` takes none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaArgs {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub force: bool,
}

async fn args(st: &ApiState, body: Body) -> Result<OtaArgs, ApiError> {
    let bytes = super::read_body(body, 64 * 1024, st.limits.body_timeout).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(OtaArgs::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"model\", \"version\", \"force\"}}: {e}")))
}

fn handle(st: &ApiState) -> Result<crate::ota::OtaHandle, ApiError> {
    st.ota.clone().ok_or_else(|| ApiError {
        status: StatusCode::CONFLICT,
        message: "model updates are off on this device: there is no [ota] section".into(),
    })
}

fn answer(r: Result<serde_json::Value, String>) -> Result<Json<serde_json::Value>, ApiError> {
    r.map(Json).map_err(|message| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message })
}

/// `POST /ota/check` (a body, if any, is `{}`).
pub async fn check(State(st): State<ApiState>, body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    // Read it even though nothing is taken from it: a connection closed with a request
    // body unread is reset, and the client may lose the answer it was already sent.
    args(&st, body).await?;
    answer(handle(&st)?.check().await)
}

/// `POST /ota/apply` with `{"model", "version", "force"?}`.
pub async fn apply(State(st): State<ApiState>, body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    let a = args(&st, body).await?;
    let (Some(model), Some(version)) = (a.model, a.version) else {
        return Err(ApiError::bad_request("give `model` and `version`"));
    };
    answer(handle(&st)?.apply(model, version, a.force).await)
}

/// `POST /ota/rollback` with `{"model"?}`.
pub async fn rollback(State(st): State<ApiState>, body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    let a = args(&st, body).await?;
    answer(handle(&st)?.rollback(a.model).await)
}
