//! `edge-agent fleet ...`: the operator's side of the fleet, over the broker the devices
//! use and the registry they follow. Layout:
//! - `broker`: the operator's MQTT connection (options from an agent config or flags).
//! - `status`: `fleet status`, the view of every device.
//! - `view`: the fleet view itself, sans IO: messages in, rows and a summary out.
//! - `rollout`: `fleet rollout`, staged rollouts that halt by themselves.

mod broker;
pub mod rollout;
mod status;
mod view;

#[cfg(test)]
mod tests;

use std::process::ExitCode;

use clap::Subcommand;

/// The `fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Show every device of the fleet (online, versions, states, drift) and a summary per
    /// model version, from the devices' retained status, telemetry and events.
    // `--version` filters by model version here, so the propagated one is off.
    #[command(disable_version_flag = true)]
    Status(Box<status::StatusArgs>),
    /// Raise a published version's rollout step by step, watch the cohort's events, and
    /// halt (pull the version) when too many of its devices fail the update.
    Rollout(Box<rollout::RolloutArgs>),
}

/// Runs a `fleet` subcommand.
pub fn run(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FleetCommand::Status(args) => status::run(*args),
        FleetCommand::Rollout(a) => {
            // Warnings only: the progress lines are the command's own (on a terminal).
            super::init_logging(crate::config::LogFormat::Human, "warn");
            rollout::run(*a)
        }
    }
}
