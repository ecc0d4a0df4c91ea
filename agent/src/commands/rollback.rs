//! `rollback {model?}` (and `POST /ota/rollback`): goes back to a model's previous
//! version (to every model's, without `model`).

use serde::Deserialize;
use serde_json::Value;

use super::args::Args;
use crate::ota::OtaHandle;

/// Arguments of `rollback`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackArgs {
    /// The model to roll back; every model with a previous version without it.
    #[serde(default)]
    pub model: Option<String>,
}

impl Args for RollbackArgs {
    const COMMAND: &'static str = "rollback";
}

impl RollbackArgs {
    /// Runs the rollback on the update task; answers when it is done.
    pub async fn run(self, ota: &OtaHandle) -> Result<Value, String> {
        ota.rollback(self.model).await
    }
}
