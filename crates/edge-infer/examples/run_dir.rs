//! Runs a model directory on a file of payloads and prints one answer per line.
//!
//! ```sh
//! cargo run -p edge-infer --example run_dir -- configs/models/vibration crates/edge-infer/examples/vibration.jsonl
//! ```
//!
//! Each line of the file is one payload in the model spec's `pre.format` (for the demo
//! model, a JSON array of accelerometer samples); with a `[pre.window]`, the payloads
//! are one stream of samples cut into windows, as the agent does with a sensor's
//! messages. Each answer is a JSON line: the line of the payload that completed the
//! window, the window's index and offset, and the post-processed outputs.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use edge_infer::{Answer, EngineConfig, Payload, Runner};
use serde::Serialize;

/// One printed line: an answer and the line of the payload that completed its window.
#[derive(Serialize)]
struct Shown<'a> {
    line: usize,
    #[serde(flatten)]
    answer: &'a Answer,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, samples] = args.as_slice() else {
        eprintln!("usage: run_dir MODEL_DIR PAYLOADS_FILE   (one payload per line)");
        return ExitCode::from(2);
    };
    match run(&PathBuf::from(dir), &PathBuf::from(samples)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &std::path::Path, samples: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut runner = Runner::open(dir, &EngineConfig::default())?;
    let file = std::fs::File::open(samples).map_err(|e| format!("{}: {e}", samples.display()))?;
    for (ix, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answers =
            runner.push(Payload::Bytes(line.into_bytes())).map_err(|e| format!("line {}: {e}", ix + 1))?;
        for answer in &answers {
            println!("{}", serde_json::to_string(&Shown { line: ix + 1, answer })?);
        }
    }
    Ok(())
}
