//! Fixed-memory sliding histograms and the drift score.
//!
//! The score is the Jensen-Shannon distance (base 2): the square root of the
//! Jensen-Shannon divergence between the reference and the recent histogram. It is
//! bounded (0 for identical histograms, 1 for disjoint ones), symmetric, and finite when
//! a bin is empty on either side (the mixture is never 0 where either is not), so it
//! needs no smoothing and one threshold means the same for every summary. The
//! population stability index, the usual alternative, is unbounded and infinite on an
//! empty bin, so its value depends on the smoothing constant chosen; see
//! docs/monitoring.md.

/// How values fall into bins.
#[derive(Debug, Clone, PartialEq)]
pub enum Binning {
    /// Inner edges, ascending: `edges.len() + 1` bins.
    Edges(Vec<f64>),
    /// One bin per label, then one for any other label.
    Labels(Vec<String>),
}

impl Binning {
    /// Number of bins.
    pub fn bins(&self) -> usize {
        match self {
            Binning::Edges(e) => e.len() + 1,
            Binning::Labels(l) => l.len() + 1,
        }
    }

    /// The bin of a numeric value (a value on an edge goes to the bin above it; NaN to
    /// the last bin, though callers drop non-finite values first).
    pub fn index_of(&self, v: f64) -> usize {
        match self {
            Binning::Edges(e) => e.partition_point(|edge| *edge <= v || v.is_nan()),
            Binning::Labels(l) => l.len(),
        }
    }

    /// The bin of a label.
    pub fn index_of_label(&self, label: &str) -> usize {
        match self {
            Binning::Labels(l) => l.iter().position(|x| x == label).unwrap_or(l.len()),
            Binning::Edges(e) => e.len(),
        }
    }
}

/// No value for this summary in a slot of the ring (a result without a score).
const MISSING: u8 = u8::MAX;

/// Histograms of the last `window` observations of several summaries at once. Memory
/// is fixed when built: a ring of one bin index per summary and observation, plus one
/// counter per bin; nothing grows with run time.
#[derive(Debug, Clone)]
pub struct Sliding {
    summaries: usize,
    window: usize,
    /// `window` slots of `summaries` bin indices each.
    ring: Vec<u8>,
    /// Next slot to write.
    head: usize,
    /// Slots filled (up to `window`).
    filled: usize,
    /// Per summary, per bin.
    counts: Vec<Vec<u32>>,
}

impl Sliding {
    /// Histograms with the given number of bins per summary (each at most 254) over
    /// `window` observations (at least 1).
    pub fn new(bins: &[usize], window: usize) -> Sliding {
        let window = window.max(1);
        Sliding {
            summaries: bins.len(),
            window,
            ring: vec![MISSING; bins.len() * window],
            head: 0,
            filled: 0,
            counts: bins.iter().map(|b| vec![0; (*b).clamp(1, 254)]).collect(),
        }
    }

    /// Adds one observation: a bin index per summary (`None`: no value), evicting the
    /// oldest once the window is full. Indices beyond a summary's bins count in its last.
    pub fn push(&mut self, bins: &[Option<usize>]) {
        let at = self.head * self.summaries;
        for s in 0..self.summaries {
            let slot = &mut self.ring[at + s];
            if self.filled == self.window && *slot != MISSING {
                let old = &mut self.counts[s][usize::from(*slot)];
                *old = old.saturating_sub(1);
            }
            *slot = match bins.get(s).copied().flatten() {
                Some(b) => {
                    let last = self.counts[s].len() - 1;
                    let b = b.min(last);
                    self.counts[s][b] += 1;
                    // `b` < 254: the constructor bounds the bins.
                    u8::try_from(b).unwrap_or(MISSING - 1)
                }
                None => MISSING,
            };
        }
        self.head = (self.head + 1) % self.window;
        self.filled = (self.filled + 1).min(self.window);
    }

    /// Whether the window has been filled once.
    pub fn is_full(&self) -> bool {
        self.filled == self.window
    }

    /// Observations in the window.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether no observation was added.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// One summary's bin counts.
    pub fn counts(&self, summary: usize) -> &[u32] {
        &self.counts[summary]
    }

    /// Bytes held, for the memory bound.
    pub fn memory_bytes(&self) -> usize {
        self.ring.len() + self.counts.iter().map(|c| c.len() * 4).sum::<usize>()
    }
}

/// Jensen-Shannon distance (base 2, in 0..=1) between two histograms given as
/// non-negative weights (normalised here; an all-zero side scores 0: nothing to compare).
/// Bins missing on one side count as empty.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let clean = |x: &f64| if x.is_finite() && *x > 0.0 { *x } else { 0.0 };
    let (sp, sq): (f64, f64) = (p.iter().map(clean).sum(), q.iter().map(clean).sum());
    if sp <= 0.0 || sq <= 0.0 || !sp.is_finite() || !sq.is_finite() {
        return 0.0;
    }
    let n = p.len().max(q.len());
    let mut div = 0.0;
    for i in 0..n {
        let a = p.get(i).map_or(0.0, clean) / sp;
        let b = q.get(i).map_or(0.0, clean) / sq;
        let m = 0.5 * (a + b);
        if a > 0.0 {
            div += 0.5 * a * (a / m).log2();
        }
        if b > 0.0 {
            div += 0.5 * b * (b / m).log2();
        }
    }
    // Rounding can leave a tiny negative or a hair above 1.
    let d = div.clamp(0.0, 1.0).sqrt();
    if d.is_finite() { d } else { 0.0 }
}
