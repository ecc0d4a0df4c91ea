//! `POST /ota/check`, `/ota/apply` and `/ota/rollback`: the update task's commands for
//! `edge-agent update check` and `edge-agent model rollback` on the device itself. They
//! read the argument types of the MQTT commands of the same names (a key those do not
//! take is refused), run the same code, and can only install versions the signed
//! registry metadata lists.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiError, ApiState};
use crate::commands::UPDATES_OFF;
use crate::commands::args::{self, Args, Origin};
use crate::commands::rollback::RollbackArgs;
use crate::commands::update_apply::UpdateApplyArgs;
use crate::commands::update_check::UpdateCheckArgs;
use crate::commands::update_shadow::UpdateShadowArgs;

/// Reads the body into the command's argument type: empty is `{}`.
async fn args<A: Args>(st: &ApiState, body: Body) -> Result<A, ApiError> {
    let bytes = super::read_body(body, 64 * 1024, st.limits.body_timeout).await?;
    args::from_body(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn handle(st: &ApiState) -> Result<crate::ota::OtaHandle, ApiError> {
    st.ota.clone().ok_or_else(|| ApiError { status: StatusCode::CONFLICT, message: UPDATES_OFF.into() })
}

fn answer(r: Result<serde_json::Value, String>) -> Result<Json<serde_json::Value>, ApiError> {
    r.map(Json).map_err(|message| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message })
}

/// `POST /ota/check` (a body, if any, is `{}`).
pub async fn check(State(st): State<ApiState>, body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    // Read (and check) it even though nothing is taken from it: a connection closed with a request
    // body unread is reset, and the client may lose the answer it was already sent.
    let a: UpdateCheckArgs = args(&st, body).await?;
    answer(a.run(&handle(&st)?).await)
}

/// `POST /ota/apply` with `{"model", "version", "force"?, "shadow"?}`.
pub async fn apply(State(st): State<ApiState>, body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    let a: UpdateApplyArgs = args(&st, body).await?;
    let apply = a.check(Origin::Body).map_err(ApiError::bad_request)?;
    answer(apply.run(&handle(&st)?).await)
}

/// `POST /ota/shadow` with `{"model", "verdict"}`.
pub async fn shadow(State(st): State<ApiState>, body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    let a: UpdateShadowArgs = args(&st, body).await?;
    let shadow = a.check(Origin::Body).map_err(ApiError::bad_request)?;
    answer(shadow.run(&handle(&st)?).await)
}

/// `POST /ota/rollback` with `{"model"?}`.
pub async fn rollback(State(st): State<ApiState>, body: Body) -> Result<Json<serde_json::Value>, ApiError> {
    let a: RollbackArgs = args(&st, body).await?;
    answer(a.run(&handle(&st)?).await)
}
