//! `update/check` (and `POST /ota/check`): asks the registry for new signed versions now,
//! and installs them as the update policy says.

use serde::Deserialize;
use serde_json::Value;

use super::args::Args;
use crate::ota::OtaHandle;

/// `update/check` takes no arguments.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCheckArgs {}

impl Args for UpdateCheckArgs {
    const COMMAND: &'static str = "update/check";
}

impl UpdateCheckArgs {
    /// Runs the check on the update task; answers when it is done.
    pub async fn run(self, ota: &OtaHandle) -> Result<Value, String> {
        ota.check().await
    }
}
