//! `POST /logs/upload` and `POST /diagnostics/bundle`: the MQTT commands of the same
//! names on the local API, with the same argument types (a JSON body: `url`, `since`?,
//! `until`?, `level`?) and the same code; the answer is the command's result, once the
//! upload is done. Bad arguments are 400, a failed packing or upload 422.

use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use super::{ApiError, ApiState};
use crate::commands::args::{self, Args};
use crate::commands::diagnostics_bundle::{self, ArchiveArgs, Setup};

/// What the archives need that the API's other parts do not.
#[derive(Debug, Clone)]
pub struct DiagnosticsSetup {
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub upload_max_mb: u64,
    /// `capture.ca_file`: the CAs an https upload server is checked against.
    pub ca_file: Option<PathBuf>,
}

/// `POST /logs/upload`.
pub async fn logs(State(st): State<ApiState>, body: Body) -> Result<Json<Value>, ApiError> {
    run::<false>(st, body).await
}

/// `POST /diagnostics/bundle`.
pub async fn bundle(State(st): State<ApiState>, body: Body) -> Result<Json<Value>, ApiError> {
    run::<true>(st, body).await
}

async fn run<const BUNDLE: bool>(st: ApiState, body: Body) -> Result<Json<Value>, ApiError>
where
    ArchiveArgs<BUNDLE>: Args,
{
    let bytes = super::read_body(body, 64 * 1024, st.limits.body_timeout).await?;
    let a: ArchiveArgs<BUNDLE> = args::from_body(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let d = st.diagnostics.clone();
    // The checks name keys as an MQTT request's `args.x`; a body's keys are plain `x`.
    let checked = diagnostics_bundle::check(a, d.ca_file.as_deref())
        .map_err(|e| ApiError::bad_request(e.replace("`args.", "`")))?;
    let status = {
        let st = st.clone();
        move || st.parts().gather(Some(st.report()))
    };
    let setup = Setup {
        config_file: &d.config_file,
        state_dir: &d.state_dir,
        upload_max_mb: d.upload_max_mb,
        status: &status,
    };
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_millis())
        .unwrap_or_default();
    diagnostics_bundle::send(checked, &setup, &format!("api-{millis}"), None)
        .await
        .map(Json)
        .map_err(|message| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message })
}
