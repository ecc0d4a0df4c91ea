//! Sliding windows over a stream of samples.

use std::collections::VecDeque;
use std::sync::Arc;

use super::dsp::{Dsp, DspStream};
use crate::engine::spec::{ModelSpec, WindowSpec};

/// One model input cut from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// `context + size` samples.
    pub data: Vec<f32>,
    /// Index of this window in its stream, from 0.
    pub index: u64,
    /// Stream offset of the window's first new sample (after the context).
    pub offset: u64,
}

/// What cuts a stream into model inputs: windows of samples (`[pre.window]`), or frames
/// of features from a DSP front end (`[pre.dsp]`). Both keep per-stream state and hand
/// out the inputs a push completes.
#[derive(Debug)]
pub struct Windower {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Samples(SampleWindower),
    Dsp(DspStream),
}

impl Windower {
    /// A windower of samples at the start of a stream.
    pub fn new(spec: &WindowSpec) -> Windower {
        Windower { inner: Inner::Samples(SampleWindower::new(spec)) }
    }

    /// What the spec cuts its streams with: its DSP front end, or its windows; `None`
    /// when each payload is one whole input.
    pub fn for_spec(spec: &ModelSpec) -> Option<Windower> {
        if let Some(d) = &spec.pre.dsp {
            // The spec's checks built this front end once already; a spec that skipped
            // them gets no front end rather than a panic, and its inputs fail on size.
            let dsp = Dsp::new(d, spec.pre.sample_rate).ok()?;
            return Some(Windower { inner: Inner::Dsp(DspStream::new(Arc::new(dsp))) });
        }
        spec.pre.window.as_ref().map(Windower::new)
    }

    /// Feeds samples; returns the inputs they complete, in order.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Window> {
        match &mut self.inner {
            Inner::Samples(w) => w.push(samples),
            Inner::Dsp(d) => d.push(samples),
        }
    }

    /// Samples waiting for the next window (or frame).
    pub fn pending(&self) -> usize {
        match &self.inner {
            Inner::Samples(w) => w.pending(),
            Inner::Dsp(d) => d.pending(),
        }
    }
}

/// Cuts windows of `context + size` samples every `hop` samples. Window `k` covers the
/// stream's samples `[k*hop - context, k*hop + size)`; samples before the stream's start
/// are zeros, so the first window's context is silence.
#[derive(Debug)]
struct SampleWindower {
    size: usize,
    hop: usize,
    context: usize,
    buf: VecDeque<f32>,
    next_index: u64,
    /// Samples still to skip when `hop > size` (gaps between windows).
    skip: usize,
}

impl SampleWindower {
    fn new(spec: &WindowSpec) -> SampleWindower {
        let mut buf = VecDeque::with_capacity(spec.context + spec.size + spec.hop);
        buf.extend(std::iter::repeat_n(0.0, spec.context));
        SampleWindower {
            size: spec.size,
            hop: spec.hop.max(1),
            context: spec.context,
            buf,
            next_index: 0,
            skip: 0,
        }
    }

    fn push(&mut self, samples: &[f32]) -> Vec<Window> {
        let mut out = Vec::new();
        let mut rest = samples;
        let skip = self.skip.min(rest.len());
        rest = &rest[skip..];
        self.skip -= skip;
        let need = self.context + self.size;
        for &s in rest {
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            self.buf.push_back(s);
            if self.buf.len() == need {
                let index = self.next_index;
                out.push(Window {
                    data: self.buf.iter().copied().collect(),
                    index,
                    offset: index * self.hop as u64,
                });
                self.next_index += 1;
                if self.hop <= need {
                    self.buf.drain(..self.hop);
                } else {
                    self.buf.clear();
                    self.skip = self.hop - need;
                }
            }
        }
        out
    }

    fn pending(&self) -> usize {
        self.buf.len().saturating_sub(self.context)
    }
}
