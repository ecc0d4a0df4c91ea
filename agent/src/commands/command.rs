//! Every command this agent knows: its name, its typed arguments (one file each), and the
//! two steps of running one, [`prepare`] (everything that can refuse) then [`run`].

use serde_json::{Map, Value};

use super::args::{self, Args, Origin};
use super::config_get::ConfigGetArgs;
use super::config_set::{self, ConfigSetArgs};
use super::diagnostics::DiagnosticsArgs;
use super::diagnostics_bundle::{self, DiagnosticsBundleArgs};
use super::fallback_force::{self, FallbackForceArgs};
use super::logs_upload::{self, LogsUploadArgs};
use super::models_list::ModelsListArgs;
use super::ping::PingArgs;
use super::rollback::RollbackArgs;
use super::samples_upload::{self, SamplesUploadArgs};
use super::spool_flush::{self, SpoolFlushArgs};
use super::status::StatusArgs;
use super::update_apply::{UpdateApply, UpdateApplyArgs};
use super::update_check::UpdateCheckArgs;
use super::update_shadow::{UpdateShadow, UpdateShadowArgs};
use super::{Context, Outcome, Progress};
use crate::ota::OtaHandle;

/// Every command this agent knows.
pub const NAMES: [&str; 15] = [
    PingArgs::COMMAND,
    StatusArgs::COMMAND,
    ModelsListArgs::COMMAND,
    ConfigGetArgs::COMMAND,
    ConfigSetArgs::COMMAND,
    DiagnosticsArgs::COMMAND,
    UpdateCheckArgs::COMMAND,
    UpdateApplyArgs::COMMAND,
    UpdateShadowArgs::COMMAND,
    RollbackArgs::COMMAND,
    FallbackForceArgs::COMMAND,
    SamplesUploadArgs::COMMAND,
    LogsUploadArgs::COMMAND,
    DiagnosticsBundleArgs::COMMAND,
    SpoolFlushArgs::COMMAND,
];

/// A command whose arguments were checked: [`run`] has nothing left to refuse, only to
/// do (and maybe fail). Everything that can be refused is refused by [`prepare`], before
/// the request is `accepted`, as the protocol says (`rejected`: it never started).
pub enum Command {
    Ping,
    Status,
    ModelsList,
    /// The answer, read while checking that the key exists.
    ConfigGet(Value),
    ConfigSet(config_set::Checked),
    Diagnostics,
    UpdateCheck(UpdateCheckArgs),
    UpdateApply(UpdateApply),
    UpdateShadow(UpdateShadow),
    Rollback(RollbackArgs),
    FallbackForce(fallback_force::Checked),
    SamplesUpload(samples_upload::Checked),
    LogsUpload(diagnostics_bundle::Checked),
    DiagnosticsBundle(diagnostics_bundle::Checked),
    SpoolFlush(spool_flush::Checked),
}

/// Reads a known command's arguments into its type and checks them (and that this device
/// can run it).
pub fn prepare(name: &str, ctx: &Context, args: Map<String, Value>) -> Result<Command, String> {
    fn read<A: Args>(args: Map<String, Value>) -> Result<A, String> {
        args::parse(args, Origin::Request).map_err(|e| e.to_string())
    }
    Ok(match name {
        PingArgs::COMMAND => read::<PingArgs>(args).map(|_| Command::Ping)?,
        StatusArgs::COMMAND => read::<StatusArgs>(args).map(|_| Command::Status)?,
        ModelsListArgs::COMMAND => read::<ModelsListArgs>(args).map(|_| Command::ModelsList)?,
        ConfigGetArgs::COMMAND => Command::ConfigGet(super::config_get::prepare(read(args)?, ctx)?),
        ConfigSetArgs::COMMAND => Command::ConfigSet(config_set::prepare(read(args)?, ctx)?),
        DiagnosticsArgs::COMMAND => read::<DiagnosticsArgs>(args).map(|_| Command::Diagnostics)?,
        UpdateCheckArgs::COMMAND => {
            let args = read(args)?;
            updates_on(ctx)?;
            Command::UpdateCheck(args)
        }
        UpdateApplyArgs::COMMAND => {
            let args: UpdateApplyArgs = read(args)?;
            updates_on(ctx)?;
            Command::UpdateApply(args.check(Origin::Request)?)
        }
        UpdateShadowArgs::COMMAND => {
            let args: UpdateShadowArgs = read(args)?;
            updates_on(ctx)?;
            Command::UpdateShadow(args.check(Origin::Request)?)
        }
        RollbackArgs::COMMAND => {
            let args = read(args)?;
            updates_on(ctx)?;
            Command::Rollback(args)
        }
        FallbackForceArgs::COMMAND => Command::FallbackForce(fallback_force::prepare(read(args)?, ctx)?),
        SamplesUploadArgs::COMMAND => Command::SamplesUpload(samples_upload::prepare(read(args)?, ctx)?),
        LogsUploadArgs::COMMAND => Command::LogsUpload(logs_upload::prepare(read(args)?, ctx)?),
        DiagnosticsBundleArgs::COMMAND => {
            Command::DiagnosticsBundle(diagnostics_bundle::prepare(read(args)?, ctx)?)
        }
        SpoolFlushArgs::COMMAND => Command::SpoolFlush(spool_flush::prepare(read(args)?, ctx)?),
        other => return Err(format!("unknown command `{}`", crate::mqtt::excerpt(other, 64))),
    })
}

/// What the update commands say on a device without the update task: the same on MQTT
/// and on the HTTP API.
pub const UPDATES_OFF: &str = "model updates are off on this device: there is no [ota] section";

/// Update commands go to the update task, which answers when the work is done.
fn updates_on(ctx: &Context) -> Result<(), String> {
    match ctx.ota {
        Some(_) => Ok(()),
        None => Err(UPDATES_OFF.into()),
    }
}

/// Runs a checked command.
pub async fn run(cmd: Command, ctx: &Context, progress: &Progress<'_>) -> Outcome {
    match cmd {
        Command::Ping => super::ping::run(ctx),
        Command::Status => super::status::run(ctx),
        Command::ModelsList => super::models_list::run(ctx),
        Command::ConfigGet(answer) => super::config_get::run(answer),
        Command::ConfigSet(checked) => config_set::run(checked, ctx).await,
        Command::Diagnostics => super::diagnostics::run(ctx, progress).await,
        Command::UpdateCheck(check) => match update_task(ctx, progress).await {
            Some(ota) => outcome(check.run(ota).await),
            None => updates_stopped(),
        },
        Command::UpdateApply(apply) => match update_task(ctx, progress).await {
            Some(ota) => outcome(apply.run(ota).await),
            None => updates_stopped(),
        },
        Command::UpdateShadow(shadow) => match update_task(ctx, progress).await {
            Some(ota) => outcome(shadow.run(ota).await),
            None => updates_stopped(),
        },
        Command::Rollback(rollback) => match update_task(ctx, progress).await {
            Some(ota) => outcome(rollback.run(ota).await),
            None => updates_stopped(),
        },
        Command::FallbackForce(checked) => fallback_force::run(checked, ctx),
        Command::SamplesUpload(checked) => samples_upload::run(checked, progress).await,
        Command::LogsUpload(checked) => logs_upload::run(checked, ctx, progress).await,
        Command::DiagnosticsBundle(checked) => diagnostics_bundle::run(checked, ctx, progress).await,
        Command::SpoolFlush(checked) => spool_flush::run(checked, ctx),
    }
}

/// The update task, once the command is under way (`prepare` made sure it exists).
async fn update_task<'a>(ctx: &'a Context, progress: &Progress<'_>) -> Option<&'a OtaHandle> {
    let ota = ctx.ota.as_ref()?;
    progress.report(0.0).await;
    Some(ota)
}

fn updates_stopped() -> Outcome {
    Outcome::Failed("model updates stopped on this device".into())
}

/// The update task's answer as an outcome.
fn outcome(result: Result<Value, String>) -> Outcome {
    match result {
        Ok(v) => Outcome::Succeeded(v),
        Err(e) => Outcome::Failed(e),
    }
}
