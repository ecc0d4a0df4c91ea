//! `edge-agent model convert --model DIR`, and the same step inside `registry publish`: the
//! model folder's ONNX models converted once to NNEF (`model.nnef.tgz` beside each
//! file), which devices then load instead (see edge_infer::engine::nnef).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use edge_infer::engine::ModelLimits;
use edge_infer::engine::nnef::{self, Conversion};

/// Arguments of `model convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The model directory (model.toml and the ONNX file; selftest.json's inputs are
    /// compared when it has one).
    #[arg(long, short, value_name = "DIR")]
    pub model: PathBuf,
    /// Print the result as JSON (stable, for scripts).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub limits: super::LimitArgs,
}

/// What converting a folder came to.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Outcome {
    /// Every model file has its archive, with outputs equal to ONNX.
    Converted {
        /// One per model file, the model's first.
        files: Vec<Conversion>,
    },
    /// tract cannot convert the model (or the archive answers differently): the folder
    /// stays ONNX only, which builds with the `onnx` feature load.
    OnnxOnly {
        /// Why, naming the operator or the output.
        reason: String,
    },
}

/// Converts `dir`, comparing on its self-test's inputs (the model's own cases) when it
/// has a selftest.json. An error is a model that does not load at all, or a build
/// that cannot convert.
/// With `progress`, a spinner on standard error while it works, when that is a terminal
/// (a large model takes seconds: both models are loaded and run).
pub fn convert_dir(dir: &Path, limits: &ModelLimits, progress: bool) -> anyhow::Result<Outcome> {
    let bar = match progress {
        true => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        false => ProgressBar::hidden(),
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(format!("converting {} to NNEF and comparing its outputs", dir.display()));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let outcome = convert_quietly(dir, limits);
    bar.finish_and_clear();
    outcome
}

fn convert_quietly(dir: &Path, limits: &ModelLimits) -> anyhow::Result<Outcome> {
    let inputs: Vec<Vec<f32>> = match crate::ota::selftest::read(dir) {
        Ok(golden) => golden.cases.into_iter().filter(|c| c.stage.is_none()).map(|c| c.input).collect(),
        Err(_) if !dir.join(crate::ota::package::SELFTEST_FILE).exists() => Vec::new(),
        Err(e) => anyhow::bail!(e),
    };
    match nnef::convert(dir, limits, &inputs) {
        Ok(files) => Ok(Outcome::Converted { files }),
        Err(e) if e.onnx_only() => Ok(Outcome::OnnxOnly { reason: e.to_string() }),
        Err(e) => Err(e.into()),
    }
}

/// The NNEF archives of `dir`'s model files that exist (the model's and its stages').
pub fn archives(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let head = edge_infer::engine::spec::ModelSpec::load_dir(dir)?;
    let mut files = vec![head.model_path.clone()];
    files.extend(head.spec.stages.iter().map(|s| dir.join(&s.model_spec(&head.spec).file)));
    Ok(files.iter().map(|f| nnef::nnef_path(f)).filter(|p| p.exists()).collect())
}

/// One line per archive, or why the folder stays ONNX.
pub fn describe(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Converted { files } => files
            .iter()
            .map(|c| {
                format!(
                    "wrote {} ({} bytes): outputs equal to ONNX on {} input(s), largest difference {:e}; load {:.1} ms from NNEF against {:.1} ms from ONNX",
                    c.path.display(),
                    c.bytes,
                    c.compared,
                    c.max_diff,
                    c.nnef_load_ms + c.nnef_optimise_ms,
                    c.onnx_load_ms + c.onnx_optimise_ms
                )
            })
            .collect(),
        Outcome::OnnxOnly { reason } => vec![format!(
            "not converted to NNEF, the model stays ONNX only (devices built without the `onnx` feature cannot load it): {reason}"
        )],
    }
}

/// `model convert --model DIR`.
pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let outcome = convert_dir(&args.model, &args.limits.limits(), !args.json)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for line in describe(&outcome) {
            outln!("{line}");
        }
    }
    Ok(match outcome {
        Outcome::Converted { .. } => ExitCode::SUCCESS,
        // Not a failure of the command's input, but the conversion asked for is not
        // there: scripts see it.
        Outcome::OnnxOnly { .. } => ExitCode::from(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--json` shapes scripts read: a tag `result` and its fields.
    #[test]
    fn outcome_json_is_tagged_by_result() {
        let only = serde_json::to_value(Outcome::OnnxOnly { reason: "no If".into() }).unwrap();
        assert_eq!(only, serde_json::json!({"result": "onnx_only", "reason": "no If"}));
        let c = Conversion {
            path: "m/model.nnef.tgz".into(),
            bytes: 10,
            compared: 2,
            max_diff: 0.0,
            onnx_load_ms: 1.0,
            onnx_optimise_ms: 2.0,
            nnef_load_ms: 3.0,
            nnef_optimise_ms: 4.0,
        };
        let v = serde_json::to_value(Outcome::Converted { files: vec![c.clone()] }).unwrap();
        assert_eq!(v["result"], "converted");
        let keys: Vec<&String> = v["files"][0].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "bytes",
                "compared",
                "max_diff",
                "nnef_load_ms",
                "nnef_optimise_ms",
                "onnx_load_ms",
                "onnx_optimise_ms",
                "path"
            ]
        );
        let line = &describe(&Outcome::Converted { files: vec![c] })[0];
        assert!(
            line.contains("m/model.nnef.tgz")
                && line.contains("2 input(s)")
                && line.contains("7.0 ms from NNEF"),
            "{line}"
        );
        let line = &describe(&Outcome::OnnxOnly { reason: "no If".into() })[0];
        assert!(line.contains("ONNX only") && line.contains("no If"), "{line}");
    }
}
