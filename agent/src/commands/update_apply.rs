//! `update/apply {model, version, force?, shadow?}` (and `POST /ota/apply`): installs a
//! version that the signed registry metadata lists, activated or (with `shadow`) as a
//! shadow candidate beside the active version.

use serde::Deserialize;
use serde_json::Value;

use super::args::{Args, Origin};
use crate::ota::OtaHandle;

/// Arguments of `update/apply`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApplyArgs {
    /// The model to update.
    #[serde(default)]
    pub model: Option<String>,
    /// A version the signed targets list.
    #[serde(default)]
    pub version: Option<String>,
    /// Install even if the policy would not (an older version, outside the window).
    #[serde(default)]
    pub force: bool,
    /// Run it as a shadow candidate beside the active version (compared, never served)
    /// until its verdict, instead of activating it.
    #[serde(default)]
    pub shadow: bool,
}

impl Args for UpdateApplyArgs {
    const COMMAND: &'static str = "update/apply";
}

/// `update/apply` with both its required arguments.
#[derive(Debug)]
pub struct UpdateApply {
    model: String,
    version: String,
    force: bool,
    shadow: bool,
}

impl UpdateApplyArgs {
    /// Checks that the model and the version are given.
    pub fn check(self, origin: Origin) -> Result<UpdateApply, String> {
        let (Some(model), Some(version)) = (self.model, self.version) else {
            return Err(format!(
                "update/apply needs `{}` and `{}` (a version the signed targets list)",
                origin.name("model"),
                origin.name("version")
            ));
        };
        Ok(UpdateApply { model, version, force: self.force, shadow: self.shadow })
    }
}

impl UpdateApply {
    /// Runs the installation on the update task; answers when it is done.
    pub async fn run(self, ota: &OtaHandle) -> Result<Value, String> {
        if self.shadow {
            ota.apply_shadow(self.model, self.version, self.force).await
        } else {
            ota.apply(self.model, self.version, self.force).await
        }
    }
}
