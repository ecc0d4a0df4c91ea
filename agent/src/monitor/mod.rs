//! Drift monitoring: each model's recent inputs and outputs against a reference.
//!
//! # Layout
//! - `profile.rs`: the reference profile (`profile.json`), the input summaries, and the
//!   builder that turns observations into a profile (`edge-agent model profile`, and a
//!   device learning from its first results).
//! - `histogram.rs`: fixed-memory sliding histograms and the Jensen-Shannon distance.
//! - this file: [`Monitors`], the one handle the stream tasks feed and status,
//!   telemetry and metrics read; per model version, the drift state with hysteresis.
//!
//! For each local result the stream task computes the window's input summaries (a pass
//! over its data) and hands them with the answer to [`Monitors::observe`]. Every
//! `[monitor] every` results, once `window` results were seen, each summary's recent
//! histogram is scored against the reference; drift is raised when a score reaches
//! `raise` and cleared once every score is below `clear`, and each change is returned as
//! a [`Transition`] for the caller to emit as an event.

pub mod histogram;
pub mod profile;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::events::{Event, Kind};
use edge_infer::engine::LoadedModel;
use edge_infer::engine::spec::MonitorSpec;
use histogram::{Binning, Sliding, js_distance};
pub use profile::{Observation, Profile, ProfileBuilder, ProfileError, Summariser};

/// The monitors of every model, by model name. Stream tasks of several streams feed one
/// model's monitor, hence the lock: each call holds it for a few microseconds (a bin
/// search per summary; every `every` results a score per summary), never across an
/// await.
#[derive(Default)]
pub struct Monitors {
    models: Mutex<HashMap<String, ModelMonitor>>,
}

impl Monitors {
    /// No model watched yet; each is set up at its first result.
    pub fn new() -> Monitors {
        Monitors::default()
    }

    /// The input summaries of one window for `model`, or `None` when its monitoring is
    /// off (then [`observe`](Self::observe) is not needed either).
    pub fn summarise(&self, model: &LoadedModel, data: &[f32]) -> Option<Vec<f64>> {
        model.spec.monitor.enabled.then(|| Summariser::for_spec(&model.spec).summarise(data))
    }

    /// Records one result of `model` (its input summaries and its `outputs`); returns a
    /// drift change, if this result made one. A new version of the model starts afresh
    /// with that version's profile, read here once (a small file; the lock is held
    /// while it is read, once per version).
    pub fn observe(
        &self,
        model: &LoadedModel,
        inputs: Vec<f64>,
        outputs: &Map<String, Value>,
    ) -> Option<Transition> {
        let obs = Observation::new(inputs, outputs);
        let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = models.entry(model.name().to_string()).or_insert_with(|| ModelMonitor::start(model));
        // Load ids only grow (a rollback loads the old version anew), so a smaller one is
        // a result of the version just replaced, still in flight on another stream: it
        // must not start the monitor over.
        if model.id < m.load_id {
            return None;
        }
        if model.id > m.load_id {
            *m = ModelMonitor::start(model);
        }
        m.observe(&obs)
    }

    /// Whether drift is raised for `model` now (a capture store asks this per result).
    pub fn is_drifting(&self, model: &str) -> bool {
        let models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        models.get(model).is_some_and(|m| m.drifting)
    }

    /// The labels `model`'s current version has answered: its recent ones (the last
    /// `window`) and all since it was activated, for a probation to compare versions by.
    /// `None` before the model's first result (or with its monitoring off).
    pub fn labels(&self, model: &str) -> Option<LabelCounts> {
        let models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        models.get(model).map(|m| m.labels.counts(&m.version))
    }

    /// Every watched model's state, by name.
    pub fn report(&self) -> BTreeMap<String, DriftReport> {
        let models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        models.iter().map(|(name, m)| (name.clone(), m.report())).collect()
    }
}

/// Where a model's reference comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferenceKind {
    /// `profile.json`, shipped with the model.
    Profile,
    /// The model's first results after activation (no usable profile).
    FirstResults,
}

impl ReferenceKind {
    /// The name in status and events.
    pub fn as_str(self) -> &'static str {
        match self {
            ReferenceKind::Profile => "profile",
            ReferenceKind::FirstResults => "first-results",
        }
    }
}

/// One summary's reference and its place in the sliding histograms.
struct Watched {
    name: String,
    binning: Binning,
    freq: Vec<f64>,
    reference_mean: Option<f64>,
}

/// The reference, once known.
struct Reference {
    watched: Vec<Watched>,
    /// For each watched summary: the observation field it reads.
    fields: Vec<Field>,
    sliding: Sliding,
    /// The recent values of each numeric summary (a ring beside the bins' ring; empty
    /// for labels), for the means an event reports next to the reference's.
    values: Vec<Vec<f32>>,
}

/// What field of an [`Observation`] a summary reads.
#[derive(Debug, Clone, Copy)]
enum Field {
    Input(usize),
    Score,
    Label,
}

/// One model version's monitor.
struct ModelMonitor {
    load_id: u64,
    version: String,
    settings: MonitorSpec,
    kind: ReferenceKind,
    /// Without a profile: what the first results look like so far.
    learning: Option<ProfileBuilder>,
    reference: Option<Reference>,
    /// Why the profile was not used, when it was not.
    profile_error: Option<String>,
    input_names: Vec<String>,
    results: u64,
    since_score: usize,
    scores: Vec<(String, f64)>,
    drifting: bool,
    since: Option<String>,
    /// Position of the next slot in the value rings.
    head: usize,
    /// The labels answered, whatever the reference (kept from the first result).
    labels: LabelTally,
}

/// The labels of one model version's results, for [`Monitors::labels`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelCounts {
    pub version: String,
    /// The last `window` labelled results, by label.
    pub recent: BTreeMap<String, u64>,
    /// Every labelled result since the version was activated, by label.
    pub total: BTreeMap<String, u64>,
}

/// Most distinct labels tallied; further ones count under [`OTHER_LABEL`]. A model's
/// labels are a fixed list, but `class` numbers without one could be anything: the
/// bound keeps the memory fixed.
const MAX_LABELS: usize = 256;
/// Where labels past [`MAX_LABELS`] are counted.
pub const OTHER_LABEL: &str = "(other)";

/// A ring of the last `window` labels (as indices into `names`) and a count of all.
struct LabelTally {
    names: Vec<String>,
    ring: Vec<u16>,
    head: usize,
    filled: usize,
    total: Vec<u64>,
}

impl LabelTally {
    fn new(window: usize) -> LabelTally {
        LabelTally { names: Vec::new(), ring: vec![0; window.max(1)], head: 0, filled: 0, total: Vec::new() }
    }

    fn push(&mut self, label: &str) {
        let i = match self.names.iter().position(|n| n == label) {
            Some(i) => i,
            None if self.names.len() < MAX_LABELS => {
                self.names.push(label.to_string());
                self.total.push(0);
                self.names.len() - 1
            }
            None => match self.names.iter().position(|n| n == OTHER_LABEL) {
                Some(i) => i,
                None => {
                    // The last slot becomes the catch-all; its label keeps its count
                    // under the catch-all's name.
                    let last = self.names.len() - 1;
                    self.names[last] = OTHER_LABEL.to_string();
                    last
                }
            },
        };
        self.total[i] += 1;
        self.ring[self.head] = i as u16;
        self.head = (self.head + 1) % self.ring.len();
        self.filled = (self.filled + 1).min(self.ring.len());
    }

    fn counts(&self, version: &str) -> LabelCounts {
        let mut recent = BTreeMap::new();
        // The filled slots are the `filled` before `head`, wrapping.
        for k in 0..self.filled {
            let slot = (self.head + self.ring.len() - 1 - k) % self.ring.len();
            *recent.entry(self.names[usize::from(self.ring[slot])].clone()).or_insert(0) += 1;
        }
        let total = self
            .names
            .iter()
            .zip(&self.total)
            .filter(|(_, c)| **c > 0)
            .map(|(n, c)| (n.clone(), *c))
            .collect();
        LabelCounts { version: version.to_string(), recent, total }
    }
}

impl ModelMonitor {
    fn start(model: &LoadedModel) -> ModelMonitor {
        let settings = model.spec.monitor.clone();
        let input_names = Summariser::for_spec(&model.spec).names();
        let (profile, profile_error) = match Profile::load_dir(&model.dir) {
            // Another model's profile (a directory copied whole) describes other data.
            Ok(Some(p)) if p.model != model.name() => {
                let e = format!(
                    "profile.json was made for model `{}`, not `{}`; make it again with `edge-agent model profile`",
                    p.model,
                    model.name()
                );
                tracing::warn!(model = %model.name(), error = %e, "drift profile unusable: the first results are the reference");
                (None, Some(e))
            }
            Ok(p) => (p, None),
            Err(e) => {
                tracing::warn!(model = %model.name(), error = %e, "drift profile unusable: the first results are the reference");
                (None, Some(e.to_string()))
            }
        };
        let mut m = ModelMonitor {
            load_id: model.id,
            version: model.version().to_string(),
            kind: ReferenceKind::FirstResults,
            learning: None,
            reference: None,
            profile_error,
            input_names,
            results: 0,
            since_score: 0,
            scores: Vec::new(),
            drifting: false,
            since: None,
            head: 0,
            labels: LabelTally::new(settings.window),
            settings,
        };
        match profile {
            Some(p) => {
                m.kind = ReferenceKind::Profile;
                m.reference = Some(m.reference_from(&p));
            }
            None => m.learning = Some(ProfileBuilder::new(&model.spec)),
        }
        m
    }

    fn reference_from(&self, profile: &Profile) -> Reference {
        let mut watched = Vec::new();
        let mut fields = Vec::new();
        for s in &profile.summaries {
            let field = if s.name == profile::OUTPUT_SCORE {
                Field::Score
            } else if s.name == profile::OUTPUT_LABEL {
                Field::Label
            } else if let Some(i) = self.input_names.iter().position(|n| *n == s.name) {
                Field::Input(i)
            } else {
                // A summary this agent does not compute (a newer profile): skipped.
                continue;
            };
            let binning = if s.labels.is_empty() {
                Binning::Edges(s.edges.clone())
            } else {
                Binning::Labels(s.labels.clone())
            };
            fields.push(field);
            watched.push(Watched {
                name: s.name.clone(),
                binning,
                freq: s.freq.clone(),
                reference_mean: s.mean,
            });
        }
        let bins: Vec<usize> = watched.iter().map(|w| w.binning.bins()).collect();
        let window = self.settings.window;
        let values = fields
            .iter()
            .map(|f| if matches!(f, Field::Label) { Vec::new() } else { vec![f32::NAN; window] })
            .collect();
        Reference { watched, fields, sliding: Sliding::new(&bins, window), values }
    }

    fn observe(&mut self, obs: &Observation) -> Option<Transition> {
        self.results += 1;
        if let Some(l) = obs.label.as_deref() {
            self.labels.push(l);
        }
        if let Some(builder) = self.learning.as_mut() {
            builder.add(obs);
            if builder.windows() >= self.settings.reference as u64 {
                let profile = builder.build("", &self.version);
                self.learning = None;
                self.reference = Some(self.reference_from(&profile));
                tracing::info!(version = %self.version, results = self.settings.reference,
                    "drift reference learnt from the first results");
            }
            return None;
        }
        let r = self.reference.as_mut()?;
        let bins: Vec<Option<usize>> = r
            .fields
            .iter()
            .zip(&r.watched)
            .map(|(f, w)| match f {
                Field::Input(i) => {
                    obs.inputs.get(*i).filter(|v| v.is_finite()).map(|v| w.binning.index_of(*v))
                }
                Field::Score => obs.score.map(|v| w.binning.index_of(v)),
                Field::Label => obs.label.as_deref().map(|l| w.binning.index_of_label(l)),
            })
            .collect();
        r.sliding.push(&bins);
        for (values, f) in r.values.iter_mut().zip(&r.fields) {
            if values.is_empty() {
                continue;
            }
            let v = match f {
                Field::Input(i) => obs.inputs.get(*i).copied(),
                Field::Score => obs.score,
                Field::Label => None,
            };
            values[self.head] = v.map_or(f32::NAN, |v| v as f32);
        }
        self.head = (self.head + 1) % self.settings.window.max(1);
        self.since_score += 1;
        if !r.sliding.is_full() || self.since_score < self.settings.every {
            return None;
        }
        self.since_score = 0;
        self.scores = r
            .watched
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let q: Vec<f64> = r.sliding.counts(i).iter().map(|c| f64::from(*c)).collect();
                (w.name.clone(), js_distance(&w.freq, &q))
            })
            .collect();
        let top = self.scores.iter().map(|(_, s)| *s).fold(0.0, f64::max);
        let changed = if !self.drifting && top >= self.settings.raise {
            self.drifting = true;
            self.since = Some(crate::events::now());
            true
        } else if self.drifting && top < self.settings.clear {
            self.drifting = false;
            self.since = None;
            true
        } else {
            false
        };
        changed.then(|| self.transition())
    }

    /// The change just made, naming the summaries at or above `raise` (or, on clearing,
    /// every score).
    fn transition(&self) -> Transition {
        let Some(r) = self.reference.as_ref() else {
            return Transition { raised: self.drifting, detail: json!({}) };
        };
        let moved: Vec<Value> = self
            .scores
            .iter()
            .zip(r.watched.iter().zip(&r.values))
            .filter(|((_, s), _)| !self.drifting || *s >= self.settings.raise)
            .map(|((name, score), (w, values))| {
                let mut v = json!({"summary": name, "score": round(*score)});
                let finite: Vec<f64> =
                    values.iter().filter(|x| x.is_finite()).map(|x| f64::from(*x)).collect();
                if let (Some(reference), false) = (w.reference_mean, finite.is_empty()) {
                    v["reference_mean"] = json!(round(reference));
                    v["mean"] = json!(round(finite.iter().sum::<f64>() / finite.len() as f64));
                }
                v
            })
            .collect();
        let detail = json!({
            "version": self.version,
            "reference": self.kind.as_str(),
            "window": self.settings.window,
            "results": self.results,
            "raise": self.settings.raise,
            "clear": self.settings.clear,
            "summaries": moved,
        });
        Transition { raised: self.drifting, detail }
    }

    fn report(&self) -> DriftReport {
        let state = if self.learning.is_some() {
            "learning"
        } else if self.drifting {
            "drift"
        } else if self.scores.is_empty() {
            "filling"
        } else {
            "ok"
        };
        DriftReport {
            version: self.version.clone(),
            state,
            reference: self.kind,
            results: self.results,
            drifting: self.drifting,
            since: self.since.clone(),
            scores: self.scores.iter().map(|(n, s)| (n.clone(), round(*s))).collect(),
            profile_error: self.profile_error.clone(),
            memory_bytes: self.reference.as_ref().map_or(0, |r| {
                r.sliding.memory_bytes() + r.values.iter().map(|v| v.len() * 4).sum::<usize>()
            }),
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// A drift state change of one model, for the event.
#[derive(Debug, Clone)]
pub struct Transition {
    /// Raised (`model-drift`) or cleared (`model-drift-cleared`).
    pub raised: bool,
    /// The event's detail: version, reference, the summaries and their scores.
    pub detail: Value,
}

impl Transition {
    /// The `model-drift` or `model-drift-cleared` event about `model`.
    pub fn event(self, model: &str) -> Event {
        let e = if self.raised {
            Event::warning(Kind::ModelDrift, self.detail)
        } else {
            Event::info(Kind::ModelDriftCleared, self.detail)
        };
        e.model(model)
    }
}

/// One model's drift state, for status, telemetry and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub version: String,
    /// `learning` (taking the reference from the first results), `filling` (the window
    /// is not full yet), `ok`, or `drift`.
    pub state: &'static str,
    pub reference: ReferenceKind,
    pub results: u64,
    pub drifting: bool,
    /// When drift was raised.
    pub since: Option<String>,
    /// The last scores (Jensen-Shannon distance) by summary.
    pub scores: BTreeMap<String, f64>,
    pub profile_error: Option<String>,
    /// Bytes the histograms hold (fixed once the reference is known).
    pub memory_bytes: usize,
}
