use std::process::ExitCode;

use clap::Parser;
use edge_agent::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            cli::exit_code_for(&e)
        }
    }
}
