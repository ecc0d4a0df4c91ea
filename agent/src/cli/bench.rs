//! `edge-agent bench`: latency, throughput and memory of a model through the engine,
//! measured in the same run as calling tract directly, so the engine's overhead is a
//! ratio that machine noise affects equally on both sides.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::input;
use edge_infer::engine::stats::{Latency, Percentiles};
use edge_infer::engine::{Engine, EngineConfig, LoadedModel, Request};

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model directory (model.toml and the model file).
    #[arg(long, short, value_name = "DIR")]
    pub model: PathBuf,
    /// Measured requests per mode (engine and direct tract).
    #[arg(long, short = 'n', default_value_t = 500)]
    pub iterations: usize,
    /// Unmeasured requests per mode before measuring.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Engine worker threads.
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// Client threads sending requests at once (default: --threads).
    #[arg(long, short = 'c')]
    pub concurrency: Option<usize>,
    /// An input file; default: deterministic pseudo-random data of the input's shape.
    #[arg(long, short, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Alternate the two modes in this many rounds (spreads machine noise evenly).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// How long idle engine workers and waiting clients poll before sleeping, in µs.
    #[arg(long, default_value_t = 50, value_name = "US")]
    pub spin_us: u64,
    /// Models whose typical run is shorter run on the calling thread instead of a
    /// worker's, in µs (0: always through a worker, as before the caller-thread path).
    #[arg(long, default_value_t = edge_infer::engine::inline::DEFAULT_INLINE_BELOW.as_micros() as u64, value_name = "US")]
    pub inline_us: u64,
    /// Threads one model run may use for its matrix products (`engine.intra_threads`).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub intra_threads: usize,
    /// Skip the direct tract baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Print JSON (stable, for scripts).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub limits: super::model::LimitArgs,
}

/// One mode's figures.
#[derive(Debug, Serialize)]
pub struct ModeReport {
    pub requests: u64,
    pub throughput_rps: f64,
    pub mean_ms: f64,
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// The whole report (`--json`).
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub version: String,
    pub threads: usize,
    pub concurrency: usize,
    pub iterations: usize,
    /// The caller-thread path's threshold, µs (0: off).
    pub inline_us: u64,
    /// Threads per model run for matrix products.
    pub intra_threads: usize,
    pub load_ms: f64,
    pub optimise_ms: f64,
    pub engine: ModeReport,
    /// Inside the engine: the model run alone, without queueing and hand-over.
    pub engine_run: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tract_direct: Option<ModeReport>,
    /// engine p50 / direct p50 (1.03 = 3% overhead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_p50: Option<f64>,
    /// The cloud fallback's routing decision for this model (an endpoint configured,
    /// every reason checked, none firing): nanoseconds per request, and as a share of
    /// the engine's mean latency (0.001 = 0.1%).
    pub routing_ns: f64,
    pub routing_share: f64,
    /// Drift monitoring of each result (summaries of the input, the histograms, a score
    /// every `every` results; docs/monitoring.md): nanoseconds per result, as a share of
    /// the engine's mean latency, and the bytes its histograms hold. 0 when the spec
    /// turns it off.
    pub monitor_ns: f64,
    pub monitor_share: f64,
    pub monitor_memory_bytes: u64,
    /// What each stage of a request costs on its own: pre-processing, the model run,
    /// post-processing.
    pub stages: StageCosts,
    pub peak_rss_bytes: u64,
}

/// Mean cost of each stage of one request, in milliseconds.
#[derive(Debug, Serialize)]
pub struct StageCosts {
    /// Pre-processing of one model input: with `--input`, reading the file and turning
    /// it into the model's inputs (decoding an image, resizing, normalising; for audio,
    /// resampling and the `[pre.dsp]` front end), divided by the inputs the file makes
    /// (a WAV makes one per window); without, decoding the same values sent as a JSON
    /// payload, as MQTT and the API receive them.
    pub pre_ms: f64,
    /// `"input file"` or `"json payload"`: what `pre_ms` measured.
    pub pre_source: &'static str,
    /// Model inputs one pre-processing of the input made (`pre_ms` is per input).
    pub pre_inputs: usize,
    /// Pre-processing of the whole input file (or payload), all its inputs.
    pub pre_total_ms: f64,
    /// The model run inside the engine, without queueing.
    pub model_ms: f64,
    /// Post-processing of the model's output into the result (scores, labels, boxes).
    pub post_ms: f64,
    /// Each model of the pipeline (`[[stage]]`) on its own, the model's own first: one
    /// entry for a model without stages.
    pub per_stage: Vec<super::bench_stages::StageCost>,
}

struct Mode {
    latency: Latency,
    /// Every latency, exact: the histogram resolves 1 µs, which is 10% of the demo
    /// model's run, so percentiles are read from these instead.
    all: Vec<Duration>,
    busy: Duration,
    sum: Duration,
}

impl Mode {
    fn new() -> Mode {
        Mode { latency: Latency::default(), all: Vec::new(), busy: Duration::ZERO, sum: Duration::ZERO }
    }

    fn report(&self) -> ModeReport {
        let n = self.latency.count();
        let mut sorted = self.all.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            let ix = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted.get(ix).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        ModeReport {
            requests: n,
            throughput_rps: if self.busy.is_zero() { 0.0 } else { n as f64 / self.busy.as_secs_f64() },
            mean_ms: if n == 0 { 0.0 } else { self.sum.as_secs_f64() * 1000.0 / n as f64 },
            latency: Percentiles { p50_ms: at(0.5), p95_ms: at(0.95), p99_ms: at(0.99), max_ms: at(1.0) },
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "warn");
    anyhow::ensure!(args.iterations > 0, "--iterations must be at least 1");
    anyhow::ensure!((1..=256).contains(&args.threads), "--threads must be 1 to 256");
    let max_intra = edge_infer::engine::intra::MAX_INTRA_THREADS;
    anyhow::ensure!(
        (1..=max_intra).contains(&args.intra_threads),
        "--intra-threads must be 1 to {max_intra}"
    );
    anyhow::ensure!(
        args.intra_threads == 1 || edge_infer::engine::intra::AVAILABLE,
        "--intra-threads {}: this build has no threads inside a run (it was built without the \
         `intra-threads` cargo feature); measure with --intra-threads 1 or a default build",
        args.intra_threads
    );
    let concurrency = args.concurrency.unwrap_or(args.threads).clamp(1, 1024);
    let rounds = args.rounds.clamp(1, args.iterations);
    let dir = super::model_dir(&args.model)?;
    let model = LoadedModel::load_dir(&dir, &args.limits.limits())?;
    let (inputs, frame, shape) = match &args.input {
        Some(path) => {
            let prepared = input::prepare(path, None, &model.spec)?;
            anyhow::ensure!(!prepared.inputs.is_empty(), "{}: the input gave no model input", path.display());
            (prepared.inputs, prepared.frame, prepared.shape)
        }
        None => (vec![pseudo_random(model.spec.data_input().len())], None, None),
    };
    // The first model input is the one measured (a stream's inputs cost the same).
    let data = inputs[0].clone();
    let shape = shape.as_deref();
    let engine = Engine::start(&EngineConfig {
        threads: args.threads,
        queue: concurrency * 2 + 8,
        max_streams: concurrency + 8,
        spin: Duration::from_micros(args.spin_us),
        inline_below: Duration::from_micros(args.inline_us),
        intra_threads: args.intra_threads,
        ..EngineConfig::default()
    });
    let model = engine.install(model);

    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    let modes = if args.no_baseline { 1 } else { 2 };
    bar.set_length(((args.iterations + args.warmup) * modes) as u64);
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("bench");

    // Warm-up: first runs pay for page faults and lazy allocations.
    let warm = |engine_mode: bool| {
        run_block(&engine, &model, (&data, shape), concurrency, args.warmup, engine_mode, &bar)
    };
    if args.warmup > 0 {
        warm(true)?;
        if !args.no_baseline {
            warm(false)?;
        }
    }

    let mut eng = Mode::new();
    let mut direct = Mode::new();
    for r in 0..rounds {
        let n = args.iterations / rounds + usize::from(r < args.iterations % rounds);
        let (lat, busy) = run_block(&engine, &model, (&data, shape), concurrency, n, true, &bar)?;
        merge(&mut eng, lat, busy);
        if !args.no_baseline {
            let (lat, busy) = run_block(&engine, &model, (&data, shape), concurrency, n, false, &bar)?;
            merge(&mut direct, lat, busy);
        }
    }
    bar.finish_and_clear();

    let engine_report = eng.report();
    let direct_report = (!args.no_baseline).then(|| direct.report());
    let overhead = direct_report
        .as_ref()
        .filter(|d| d.latency.p50_ms > 0.0)
        .map(|d| engine_report.latency.p50_ms / d.latency.p50_ms);
    let routing_ns = routing_cost(&engine, &model)?;
    let routing_share =
        if engine_report.mean_ms > 0.0 { routing_ns / (engine_report.mean_ms * 1e6) } else { 0.0 };
    let (monitor_ns, monitor_memory_bytes) = monitor_cost(&engine, &model, &data, shape)?;
    let monitor_share =
        if engine_report.mean_ms > 0.0 { monitor_ns / (engine_report.mean_ms * 1e6) } else { 0.0 };
    let mut stages =
        stage_costs(&engine, &model, (&data, shape), args.input.as_deref(), frame.as_ref(), args.iterations)?;
    let own = super::bench_stages::StageCost {
        stage: model.name().to_string(),
        requests: args.iterations.clamp(10, 100),
        runs: 1.0,
        pre_ms: stages.pre_ms,
        model_ms: stages.model_ms,
        post_ms: stages.post_ms,
    };
    let n = args.iterations.clamp(10, 100);
    stages.per_stage =
        super::bench_stages::per_stage(&engine, &model, own, &inputs, args.input.as_deref(), n)?;
    let report = BenchReport {
        model: model.name().to_string(),
        version: model.version().to_string(),
        threads: args.threads,
        concurrency,
        iterations: args.iterations,
        inline_us: args.inline_us,
        intra_threads: args.intra_threads,
        load_ms: model.info.load_ms,
        optimise_ms: model.info.optimise_ms,
        engine: engine_report,
        engine_run: engine.stats().get(model.name()).map(|r| r.run.clone()).unwrap_or_default(),
        tract_direct: direct_report,
        overhead_p50: overhead,
        routing_ns,
        routing_share,
        monitor_ns,
        monitor_share,
        monitor_memory_bytes,
        stages,
        peak_rss_bytes: crate::telemetry::memory().peak_rss,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn merge(mode: &mut Mode, lat: Vec<Duration>, busy: Duration) {
    for d in lat {
        mode.latency.record(d);
        mode.sum += d;
        mode.all.push(d);
    }
    mode.busy += busy;
}

/// Runs `n` requests from `clients` threads, through the engine or straight into tract.
/// Returns each request's latency and the block's wall time.
fn run_block(
    engine: &Engine,
    model: &Arc<LoadedModel>,
    (data, shape): (&[f32], Option<&[usize]>),
    clients: usize,
    n: usize,
    through_engine: bool,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let share = n / clients + usize::from(c < n % clients);
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut out = Vec::with_capacity(share);
                    // A careful direct caller keeps one run state per thread, as the
                    // engine's workers do: the baseline is the best tract can do.
                    // A varying input's state is made for the size measured.
                    let mut state = match shape {
                        Some(shape) => model.plan_for(shape)?.spawn()?,
                        None => model.spawn_state()?,
                    };
                    // Named once, as a stream's task holds its name: formatting it per
                    // request would be the benchmark's cost, not the engine's.
                    let stream = format!("bench-{c}");
                    for _ in 0..share {
                        let t = Instant::now();
                        if through_engine {
                            engine.infer_blocking(Request {
                                model: model.name().to_string(),
                                stream: Some(stream.clone()),
                                data: data.to_vec(),
                                deadline: t + Duration::from_secs(60),
                                reset: false,
                                shape: shape.map(<[usize]>::to_vec),
                            })?;
                        } else {
                            direct_call(model, &mut state, data.to_vec(), shape)?;
                        }
                        out.push(t.elapsed());
                        bar.inc(1);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a benchmark client thread panicked"))))
            .collect()
    });
    let busy = started.elapsed();
    let mut all = Vec::with_capacity(n);
    for r in results {
        all.extend(r?);
    }
    Ok((all, busy))
}

/// What a program calling tract itself would do per request: build the input tensors,
/// run the plan, read the outputs as f32.
fn direct_call(
    model: &LoadedModel,
    state: &mut edge_infer::tract_nnef::prelude::TypedSimpleState,
    data: Vec<f32>,
    shape: Option<&[usize]>,
) -> anyhow::Result<()> {
    let inputs = match shape {
        Some(shape) => model.assemble_shaped(data, shape, None)?,
        None => model.assemble(data, None)?,
    };
    let outputs = state.run(inputs)?;
    for o in outputs.iter() {
        let cast = o.cast_to::<f32>()?;
        std::hint::black_box(cast.to_plain_array_view::<f32>()?.iter().copied().collect::<Vec<f32>>());
    }
    Ok(())
}

/// Deterministic values in [-1, 1) (a linear congruential sequence).
fn pseudo_random(n: usize) -> Vec<f32> {
    let mut x: u32 = 0x2545_F491;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn print_human(r: &BenchReport) -> anyhow::Result<()> {
    outln!(
        "{} {}  threads {}  concurrency {}  {} requests per mode  (load {:.1} ms, optimise {:.1} ms)",
        r.model,
        r.version,
        r.threads,
        r.concurrency,
        r.iterations,
        r.load_ms,
        r.optimise_ms
    );
    outln!("  {:<14} {:>9} {:>9} {:>9} {:>9} {:>11}", "", "p50 ms", "p95 ms", "p99 ms", "mean ms", "req/s");
    let row = |name: &str, m: &ModeReport| -> anyhow::Result<()> {
        outln!(
            "  {:<14} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>11.1}",
            name,
            m.latency.p50_ms,
            m.latency.p95_ms,
            m.latency.p99_ms,
            m.mean_ms,
            m.throughput_rps
        );
        Ok(())
    };
    row("engine", &r.engine)?;
    outln!(
        "  {:<14} {:>9.3} {:>9.3} {:>9.3}",
        "  model run",
        r.engine_run.p50_ms,
        r.engine_run.p95_ms,
        r.engine_run.p99_ms
    );
    if let Some(d) = &r.tract_direct {
        row("tract direct", d)?;
    }
    if let Some(o) = r.overhead_p50 {
        outln!("  engine overhead at p50: {:+.1}%", (o - 1.0) * 100.0);
    }
    outln!(
        "  cloud fallback routing decision: {:.0} ns per request ({:.4}% of the engine mean)",
        r.routing_ns,
        r.routing_share * 100.0
    );
    outln!(
        "  drift monitoring: {:.0} ns per result ({:.2}% of the engine mean), {:.1} KiB of histograms",
        r.monitor_ns,
        r.monitor_share * 100.0,
        r.monitor_memory_bytes as f64 / 1024.0
    );
    let s = &r.stages;
    outln!(
        "  stages (mean ms): pre {:.3} ({}), model {:.3}, post {:.3}",
        s.pre_ms,
        s.pre_source,
        s.model_ms,
        s.post_ms
    );
    if s.pre_inputs > 1 {
        outln!("    pre per model input: the file makes {} ({:.3} ms in all)", s.pre_inputs, s.pre_total_ms);
    }
    if r.stages.per_stage.len() > 1 {
        for st in &r.stages.per_stage {
            outln!(
                "    stage {}: pre {:.3}, model {:.3}, post {:.3} ({:.1} run(s) per request)",
                st.stage,
                st.pre_ms,
                st.model_ms,
                st.post_ms,
                st.runs
            );
        }
    }
    outln!("  peak RSS: {:.1} MiB", r.peak_rss_bytes as f64 / 1_048_576.0);
    Ok(())
}

/// Times the routing decision a request with a cloud endpoint pays: an endpoint for
/// the model (never contacted), queue and resource checks on, the engine's queue read.
fn routing_cost(engine: &Engine, model: &Arc<LoadedModel>) -> anyhow::Result<f64> {
    use crate::config::fallback::{CloudModelSection, FallbackSection};
    let endpoint: CloudModelSection = toml::from_str(&format!(
        "model = \"{}\"\nurl = \"http://127.0.0.1:9\"\nmin_confidence = 0.5",
        model.name()
    ))?;
    let section = FallbackSection { models: vec![endpoint], ..FallbackSection::default() };
    let (fallback, _events) = crate::fallback::Fallback::new(Some(&section))?;
    const N: u32 = 200_000;
    let started = Instant::now();
    let mut local = 0u32;
    for _ in 0..N {
        let signals = crate::fallback::Signals::from_engine(engine, Duration::from_secs(1));
        if let Some(crate::fallback::Route::Local { .. }) =
            fallback.route(model.name(), Some(model.clone()), &signals)
        {
            local += 1;
        }
    }
    let ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(N);
    anyhow::ensure!(local == N, "the routing benchmark expected every request to stay local");
    Ok(ns)
}

/// Times what drift monitoring adds to each result in steady state: the input summaries
/// and [`Monitors::observe`](crate::monitor::Monitors::observe) with the model's
/// `[monitor]` settings, after the reference is learnt and the window filled (a scoring
/// every `every` results included). Returns nanoseconds per result and the bytes held.
fn monitor_cost(
    engine: &Engine,
    model: &Arc<LoadedModel>,
    data: &[f32],
    shape: Option<&[usize]>,
) -> anyhow::Result<(f64, u64)> {
    let monitors = crate::monitor::Monitors::new();
    // Filling the reference and window needs no fresh summaries: one serves them all.
    let Some(summary) = monitors.summarise(model, data) else {
        return Ok((0.0, 0));
    };
    let resp = super::bench_stages::infer_once(engine, model, data, shape)?;
    let outputs = model.post().apply_answer(resp.post_output(), Some(data), None, 0, None);
    let settings = &model.spec.monitor;
    for _ in 0..settings.reference + settings.window {
        monitors.observe(model, summary.clone(), &outputs);
    }
    // About 20 million values summarised in all: 20,000 results of a small model, a
    // handful of an image's millions (which would otherwise take minutes).
    let n = (20_000_000 / data.len().max(1)).clamp(10, 20_000);
    let rounds = u32::try_from(n).unwrap_or(20_000);
    let started = Instant::now();
    for _ in 0..rounds {
        let s = monitors.summarise(model, std::hint::black_box(data)).unwrap_or_default();
        std::hint::black_box(monitors.observe(model, s, &outputs));
    }
    let ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(rounds);
    let bytes = monitors.report().get(model.name()).map_or(0, |r| r.memory_bytes as u64);
    Ok((ns, bytes))
}

/// Times each stage of a request apart: pre-processing (the input file, or the values as
/// a JSON payload), the model run (the engine's own measure) and post-processing of one
/// real answer, each repeated `iterations` times, kept within 10 to 100.
fn stage_costs(
    engine: &Engine,
    model: &Arc<LoadedModel>,
    (data, shape): (&[f32], Option<&[usize]>),
    path: Option<&std::path::Path>,
    frame: Option<&edge_infer::pipeline::ImageFrame>,
    iterations: usize,
) -> anyhow::Result<StageCosts> {
    let n = iterations.clamp(10, 100);
    let mean_ms = |total: Duration| total.as_secs_f64() * 1000.0 / n as f64;
    let (pre, pre_source, pre_inputs) = match path {
        Some(path) => {
            let started = Instant::now();
            let mut made = 1;
            for _ in 0..n {
                made = std::hint::black_box(input::prepare(path, None, &model.spec)?).inputs.len().max(1);
            }
            (started.elapsed(), "input file", made)
        }
        None => {
            let payload = serde_json::to_value(data)?;
            let started = Instant::now();
            for _ in 0..n {
                let p = edge_infer::pipeline::Payload::Json(payload.clone());
                // A payload the spec refuses (a window of another size) costs its decode
                // all the same: the time is what counts here.
                let _ = std::hint::black_box(edge_infer::pipeline::decode(&model.spec, p));
            }
            (started.elapsed(), "json payload", 1)
        }
    };
    let mut run = Duration::ZERO;
    let mut last = None;
    for _ in 0..n {
        let resp = super::bench_stages::infer_once(engine, model, data, shape)?;
        run += resp.run;
        last = Some(resp);
    }
    let resp = last.context("no model run")?;
    let started = Instant::now();
    for _ in 0..n {
        let mut segment = edge_infer::pipeline::SegmentState::default();
        std::hint::black_box(model.post().apply_answer(
            resp.post_output(),
            None,
            frame,
            0,
            Some(&mut segment),
        ));
    }
    let post = started.elapsed();
    Ok(StageCosts {
        pre_ms: mean_ms(pre) / pre_inputs as f64,
        pre_source,
        pre_inputs,
        pre_total_ms: mean_ms(pre),
        model_ms: mean_ms(run),
        post_ms: mean_ms(post),
        per_stage: Vec::new(),
    })
}
