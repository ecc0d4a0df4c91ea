//! `update/shadow {model, verdict}` (and `POST /ota/shadow`): ends a model's shadow run
//! now with the operator's verdict, whatever its limits say: `promote` activates the
//! candidate (then probation), `reject` unloads it and marks it bad here.

use serde::Deserialize;
use serde_json::Value;

use super::args::{Args, Origin};
use crate::ota::OtaHandle;

/// The operator's verdict on a shadow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowVerdict {
    Promote,
    Reject,
}

/// Arguments of `update/shadow`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateShadowArgs {
    /// The model whose shadow run ends.
    #[serde(default)]
    pub model: Option<String>,
    /// `promote` or `reject`.
    #[serde(default)]
    pub verdict: Option<ShadowVerdict>,
}

impl Args for UpdateShadowArgs {
    const COMMAND: &'static str = "update/shadow";
}

/// `update/shadow` with both its required arguments.
#[derive(Debug)]
pub struct UpdateShadow {
    model: String,
    verdict: ShadowVerdict,
}

impl UpdateShadowArgs {
    /// Checks that the model and the verdict are given.
    pub fn check(self, origin: Origin) -> Result<UpdateShadow, String> {
        let (Some(model), Some(verdict)) = (self.model, self.verdict) else {
            return Err(format!(
                "update/shadow needs `{}` and `{}` (\"promote\" or \"reject\")",
                origin.name("model"),
                origin.name("verdict")
            ));
        };
        Ok(UpdateShadow { model, verdict })
    }
}

impl UpdateShadow {
    /// Ends the shadow run on the update task; answers when the candidate is activated
    /// or unloaded.
    pub async fn run(self, ota: &OtaHandle) -> Result<Value, String> {
        ota.shadow_verdict(self.model, self.verdict == ShadowVerdict::Promote).await
    }
}
