use std::process::ExitCode;

use clap::Parser;
use edge_agent::cli::{self, Cli};

fn main() -> ExitCode {
    limit_malloc_arenas();
    match cli::run(Cli::parse()) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): stop quietly and successfully, as
        // ripgrep does; the reader took what it wanted.
        Err(e) if cli::ClosedOutput::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-agent: {}", cli::error_chain(&e));
            cli::exit_code_for(&e)
        }
    }
}

/// glibc gives threads that allocate at once their own malloc arenas (up to eight per
/// core), and each arena keeps what was freed in it. After a burst the agent's threads
/// (runtime, engine workers, blocking pool) each held a few megabytes: with two arenas
/// the peak RSS of a 30,000-message flood fell from 39 to 44 MB to 35 MB (two runs
/// each, `tests/bench/run`'s flood by hand). A `MALLOC_ARENA_MAX` in the environment
/// still decides.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets an allocator tunable; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
