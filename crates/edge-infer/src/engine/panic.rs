//! Containing panics from tract.
//!
//! tract can panic on malformed or unusual models (index out of bounds in an op, an
//! unwrap on an unexpected shape). A device must not go down because one model file is
//! bad, so every call into tract that depends on model content runs through [`contain`],
//! which turns a panic into an error message. The panic hook installed by
//! [`install_hook`] stays quiet for contained panics (they are reported as errors by the
//! caller) and keeps the default report for every other panic.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)`.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CONTAINED.with(|c| c.replace(true));
    // AssertUnwindSafe: on a panic, everything `f` touched is dropped or discarded by the
    // caller (a model that panicked while loading is never used; a run's state is rebuilt).
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    out.map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".to_string()
        }
    })
}

/// Installs a panic hook that logs contained panics at debug level only.
pub fn install_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if CONTAINED.with(|c| c.get()) {
            tracing::debug!(panic = %info, "contained panic");
        } else {
            default(info);
        }
    }));
}
