//! `edge-agent fleet ...`: the operator's side of a fleet, over the broker the devices
//! use and the registry they follow.

pub mod rollout;

use std::process::ExitCode;

use clap::Subcommand;

/// `fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Raise a published version's rollout step by step, watch the cohort's events, and
    /// halt (pull the version) when too many of its devices fail the update.
    Rollout(Box<rollout::RolloutArgs>),
}

pub fn run(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    // Warnings only: the progress lines are the command's own (on a terminal).
    super::init_logging(crate::config::LogFormat::Human, "warn");
    match cmd {
        FleetCommand::Rollout(a) => rollout::run(*a),
    }
}
