//! A thread's tract run states: one per model version and input shape.
//!
//! Each worker and each thread that runs models itself (the caller-thread path) keeps
//! its own, so that a plan's buffers are allocated once, not on every call. A thread
//! holds a handful at most (one per model, more only for a model whose input size
//! varies), so they live in a short list searched front to back: finding one compares
//! an id and a few dimensions, where a hash map hashed the id and the shape (twice: a
//! lookup by reference, then the fetch) on a path that runs in 10 µs for the smallest
//! models.

use tract_nnef::prelude::TypedSimpleState;

use super::LoadedModel;

/// How many states a thread keeps before dropping them all: models replaced often (a
/// rollout, a test) would otherwise pile up old versions' buffers.
const MAX_STATES: usize = 16;

#[derive(Default)]
pub(super) struct RunStates(Vec<Entry>);

struct Entry {
    model: u64,
    shape: Vec<usize>,
    state: TypedSimpleState,
}

impl RunStates {
    /// `model`'s state for input `shape`, spawned from the model's plan for that shape
    /// the first time, and where it is (for [`RunStates::discard`]).
    pub(super) fn find_or_spawn(
        &mut self,
        model: &LoadedModel,
        shape: &[usize],
    ) -> Result<(usize, &mut TypedSimpleState), String> {
        let at = match self.0.iter().position(|e| e.model == model.id && e.shape == shape) {
            Some(at) => at,
            None => {
                if self.0.len() >= MAX_STATES {
                    self.0.clear();
                }
                let plan = model.plan_for(shape).map_err(|e| e.to_string())?;
                let state = plan.spawn().map_err(|e| format!("{e:#}"))?;
                self.0.push(Entry { model: model.id, shape: shape.to_vec(), state });
                self.0.len() - 1
            }
        };
        Ok((at, &mut self.0[at].state))
    }

    /// Drops the state at `at`: after a panic inside a run it may be half-updated.
    pub(super) fn discard(&mut self, at: usize) {
        if at < self.0.len() {
            self.0.swap_remove(at);
        }
    }

    /// How many states are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Takes every state out, leaving none (for a drop that must be contained).
    pub(super) fn take(&mut self) -> RunStates {
        RunStates(std::mem::take(&mut self.0))
    }
}

#[cfg(all(test, feature = "onnx"))] // uses the engine tests' ONNX demo model
mod tests {
    use super::*;
    use crate::engine::ModelLimits;
    use crate::engine::tests::demo_dir;

    fn load() -> LoadedModel {
        LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap()
    }

    #[test]
    fn a_state_per_model_version_and_shape_found_again_until_discarded() {
        let (v1, v2) = (load(), load());
        let shape = v1.spec.data_input().shape.clone();
        let mut states = RunStates::default();
        let a = states.find_or_spawn(&v1, &shape).unwrap().0;
        assert_eq!(states.find_or_spawn(&v1, &shape).unwrap().0, a, "found, not spawned again");
        let b = states.find_or_spawn(&v2, &shape).unwrap().0;
        assert_ne!(a, b, "another load of the model is another version with its own state");
        assert_eq!(states.len(), 2);
        states.discard(a);
        assert_eq!(states.len(), 1);
        assert_eq!(states.find_or_spawn(&v2, &shape).unwrap().0, 0, "the other state stays");
        let err = states.find_or_spawn(&v1, &[1, 3]).unwrap_err();
        assert!(err.contains("[1, 3]"), "a shape the model does not take is refused: {err}");
        assert_eq!(states.len(), 1, "and nothing is kept for it");
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_states() {
        let shape = load().spec.data_input().shape.clone();
        let mut states = RunStates::default();
        for _ in 0..MAX_STATES + 3 {
            states.find_or_spawn(&load(), &shape).unwrap();
        }
        assert!(states.len() <= MAX_STATES, "{} states kept", states.len());
    }
}
