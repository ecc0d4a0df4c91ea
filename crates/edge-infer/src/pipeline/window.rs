//! Sliding windows over a stream of samples.

use std::collections::VecDeque;

use crate::engine::spec::WindowSpec;

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

/// Cuts windows of `context + size` samples every `hop` samples. Window `k` covers the
/// stream's samples `[k*hop - context, k*hop + size)`; samples before the stream's start
/// are zeros, so the first window's context is silence.
#[derive(Debug)]
pub struct Windower {
    size: usize,
    hop: usize,
    context: usize,
    buf: VecDeque<f32>,
    next_index: u64,
    /// Samples still to skip when `hop > size` (gaps between windows).
    skip: usize,
}

impl Windower {
    /// A windower at the start of a stream.
    pub fn new(spec: &WindowSpec) -> Windower {
        let mut buf = VecDeque::with_capacity(spec.context + spec.size + spec.hop);
        buf.extend(std::iter::repeat_n(0.0, spec.context));
        Windower { size: spec.size, hop: spec.hop.max(1), context: spec.context, buf, next_index: 0, skip: 0 }
    }

    /// Feeds samples; returns the windows they complete, in order.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Window> {
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

    /// Samples waiting for the next window.
    pub fn pending(&self) -> usize {
        self.buf.len().saturating_sub(self.context)
    }
}
