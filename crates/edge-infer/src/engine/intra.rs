//! Threads inside one model run (`engine.intra_threads`): tract's matrix products split
//! their output tiles over a pool of threads (tract-linalg's multithreaded executor, a
//! rayon pool), so one large request finishes sooner. The engine's workers
//! (`engine.threads`) still run one request each; all of them share the one pool.
//!
//! Only matrix products (convolutions lowered to them, dense layers) are split, and only
//! those large enough for tract to think it worth it; element-wise ops, depthwise
//! convolutions and pooling stay on the worker. Each output tile is computed whole by one
//! thread, so the results are the same as with one thread. Requests answered on a
//! caller's own thread (the small models of [`super::inline`]) always run on one thread.

use tract_nnef::tract_core::tract_linalg::multithread::{Executor, multithread_tract_scope};

/// The most threads one run may use; more than a device has cores only adds switching.
pub const MAX_INTRA_THREADS: usize = 64;

/// Whether this build can split a run over threads: the `intra-threads` cargo feature,
/// on by default and left out of the device build (it brings rayon, about 2.9 MiB of
/// code).
pub const AVAILABLE: bool = cfg!(feature = "intra-threads");

/// The pool for `threads` threads per run, or `None` for one (no pool, no threads).
/// A pool that cannot be started (the system refuses threads) is logged and the engine
/// runs single-threaded rather than not at all.
#[cfg(feature = "intra-threads")]
pub(super) fn executor(threads: usize) -> Option<Executor> {
    if threads <= 1 {
        return None;
    }
    let threads = threads.min(MAX_INTRA_THREADS);
    match super::panic::contain(|| Executor::multithread_with_name(threads, "engine-mm")) {
        Ok(pool) => Some(pool),
        Err(message) => {
            tracing::error!(threads, %message, "cannot start the intra-run thread pool; running on one thread");
            None
        }
    }
}

/// A build without the feature runs every request on one thread, and says so when
/// asked for more: a fleet's shared configuration may set the option for all devices,
/// and a device built small must still start.
#[cfg(not(feature = "intra-threads"))]
pub(super) fn executor(threads: usize) -> Option<Executor> {
    if threads > 1 {
        tracing::warn!(
            threads,
            "engine.intra_threads: this build has no threads inside a run (built without the \
             `intra-threads` feature); each request runs on one thread"
        );
    }
    None
}

/// Runs `f` (a worker's loop) with tract's matrix products on `pool`, if any.
pub(super) fn scoped<R>(pool: Option<Executor>, f: impl FnOnce() -> R) -> R {
    match pool {
        Some(pool) => multithread_tract_scope(pool, f),
        None => f(),
    }
}

#[cfg(all(test, feature = "onnx", feature = "intra-threads"))] // the engine tests' ONNX models, a pool
mod tests {
    use std::time::{Duration, Instant};

    use crate::engine::tests::cls_dir;
    use crate::engine::{Engine, EngineConfig, LoadedModel, ModelLimits, Request};

    /// Names of this process's threads.
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .map(|n| n.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn intra_threads_change_nothing_in_the_outputs() {
        let Some(dir) = cls_dir() else { panic!("the test cache has ppocr-cls") };
        let run = |intra_threads: usize| {
            let engine =
                Engine::start(&EngineConfig { threads: 1, intra_threads, ..EngineConfig::default() });
            let model = engine.install(LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap());
            if intra_threads > 1 {
                let pool = thread_names().iter().filter(|n| n.starts_with("engine-mm")).count();
                assert!(pool >= intra_threads, "{intra_threads} threads asked, {pool} found");
            }
            let len = model.spec.data_input().len();
            (0..3)
                .flat_map(|k| {
                    let data: Vec<f32> =
                        (0..len).map(|i| (((i + k) * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
                    let req = Request {
                        model: model.name().into(),
                        stream: None,
                        data,
                        deadline: Instant::now() + Duration::from_secs(60),
                        reset: false,
                        shape: None,
                    };
                    // Through a worker, where the pool applies.
                    engine.submit(req).unwrap().wait_blocking().unwrap().outputs
                })
                .map(|o| o.values)
                .collect::<Vec<_>>()
        };
        let one = run(1);
        // Each output tile is computed whole by one thread: the same bits, not just close.
        assert_eq!(one, run(3));
    }
}
