//! The fleet view, sans IO: MQTT messages from devices in, one row per device and a
//! summary per model version out. `status.rs` feeds it from the broker; the tests feed it
//! directly. Everything here comes from devices, so nothing is trusted: a payload that
//! does not read is recorded on its device as a problem (shown, never a panic), and
//! every string kept is cut to a bound, so memory per device stays bounded whatever a
//! device sends.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::SystemTime;

use clap::ValueEnum;
use clap::builder::PossibleValue;
use serde::Serialize;
use serde_json::Value;

/// Longest device id, model name, version or state kept (longer ones are cut).
const MAX_TEXT: usize = 64;
/// Most models kept per device; more are counted as a problem.
const MAX_MODELS: usize = 32;
/// Recent events kept per device.
const RECENT_EVENTS: usize = 3;
/// Longest problem description kept.
const MAX_PROBLEM: usize = 160;

/// Which of a device's topics a message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Status,
    Telemetry,
    Events,
}

/// The device id and topic kind of `{prefix}/{device}/{status|telemetry|events}`;
/// `None` for any other topic.
pub fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, Topic)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (device, kind) = rest.split_once('/')?;
    let kind = match kind {
        "status" => Topic::Status,
        "telemetry" => Topic::Telemetry,
        "events" => Topic::Events,
        _ => return None,
    };
    (!device.is_empty()).then_some((device, kind))
}

/// A model's state on a device. The retained status says only which version serves;
/// the other states come from the device's events (seen live: events are not retained).
/// The one list of states: `--state` takes each by its name (see [`StateFilter`]), and
/// `clap::ValueEnum`'s derive supplies that list (`value_variants`), so a new state
/// reaches the filter without a second list to keep in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum ModelState {
    /// Serving, not on probation (what the status and telemetry say).
    Active,
    /// Downloading or checking a new version.
    Updating,
    /// A new version serves on probation.
    Probation,
    /// The device went back to its previous version (probation failed, or commanded).
    RolledBack,
    /// An update failed: self-test failed or the update was rejected.
    Failed,
    /// The version was pulled from the registry and the device went back.
    Pulled,
}

impl ModelState {
    /// Its name, as `--state` takes it and `--json` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Active => "active",
            ModelState::Updating => "updating",
            ModelState::Probation => "probation",
            ModelState::RolledBack => "rolled-back",
            ModelState::Failed => "failed",
            ModelState::Pulled => "pulled",
        }
    }
}

/// What the view knows of one model on one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelView {
    pub version: String,
    pub state: ModelState,
    /// The monitor's verdict in the latest telemetry (`None`: no telemetry seen).
    pub drifting: Option<bool>,
    /// The highest drift score in the latest telemetry.
    pub drift: Option<f64>,
}

/// The last few events of a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    pub kind: String,
    pub model: Option<String>,
    pub ts: Option<String>,
}

/// What the view knows of one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Device {
    pub device: String,
    /// `Some(true)` online, `Some(false)` offline, `None` no readable status yet.
    pub online: Option<bool>,
    pub agent_version: Option<String>,
    pub models: BTreeMap<String, ModelView>,
    /// Seconds since the Unix epoch of the latest sign of life: the retained status's
    /// `since`, or the arrival of a live message.
    pub last_seen: Option<u64>,
    /// `model-rolled-back` and `model-pulled` events seen.
    pub rollbacks: u64,
    pub recent_events: Vec<EventView>,
    /// Messages from this device that could not be read, and the latest such problem.
    pub malformed: u64,
    pub problem: Option<String>,
}

impl Device {
    /// The device-level state used by filters and the table.
    pub fn link(&self) -> &'static str {
        match self.online {
            Some(true) => "online",
            Some(false) => "offline",
            None => "unknown",
        }
    }

    fn note(&mut self, what: Topic, problem: String) {
        self.malformed += 1;
        let what = match what {
            Topic::Status => "status",
            Topic::Telemetry => "telemetry",
            Topic::Events => "event",
        };
        self.problem = Some(cut(&format!("{what}: {problem}"), MAX_PROBLEM));
    }

    fn model(&mut self, name: &str) -> Option<&mut ModelView> {
        let name = cut(name, MAX_TEXT);
        if !self.models.contains_key(&name) && self.models.len() >= MAX_MODELS {
            return None;
        }
        Some(self.models.entry(name).or_insert_with(|| ModelView {
            version: String::new(),
            state: ModelState::Active,
            drifting: None,
            drift: None,
        }))
    }

    fn seen(&mut self, at: u64) {
        self.last_seen = Some(self.last_seen.map_or(at, |s| s.max(at)));
    }
}

/// The whole fleet as seen so far.
#[derive(Debug, Default)]
pub struct Fleet {
    devices: HashMap<String, Device>,
}

/// Seconds since the epoch (0 before it).
pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A string from outside, cut to `max` bytes on a character boundary, with control
/// characters replaced so that it cannot move a terminal's cursor.
fn cut(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(|s| cut(s, MAX_TEXT))
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::default()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    #[cfg(test)]
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    /// Takes one message. `retained`: the broker's stored copy, not a live message.
    /// `now` is when it arrived. Returns the device it concerned, if any.
    pub fn apply(
        &mut self,
        prefix: &str,
        topic: &str,
        payload: &[u8],
        retained: bool,
        now: SystemTime,
    ) -> Option<String> {
        let (device, kind) = parse_topic(prefix, topic)?;
        let id = cut(device, 128);
        // An empty retained status is how a device's status is cleared: a device that was
        // retired. It leaves the view.
        if kind == Topic::Status && payload.is_empty() {
            self.devices.remove(&id);
            return Some(id);
        }
        let now = epoch_secs(now);
        let d = self
            .devices
            .entry(id.clone())
            .or_insert_with(|| Device { device: id.clone(), ..Device::default() });
        if !retained {
            d.seen(now);
        }
        if !crate::config::is_valid_id(device) {
            d.note(kind, "the device id in the topic is not 1 to 128 of A-Z a-z 0-9 . _ -".into());
        }
        let value = match decode(kind, payload) {
            Ok(v) => v,
            Err(e) => {
                d.note(kind, e);
                return Some(id);
            }
        };
        let result = match kind {
            Topic::Status => status(d, &value, now),
            Topic::Telemetry => telemetry(d, &value),
            Topic::Events => event(d, &value),
        };
        if let Err(e) = result {
            d.note(kind, e);
        }
        Some(id)
    }

    /// The devices the filter keeps, sorted.
    pub fn rows(&self, filter: &Filter, sort: SortKey) -> Vec<&Device> {
        let mut rows: Vec<&Device> = self.devices.values().filter(|d| filter.keeps(d)).collect();
        rows.sort_by(|a, b| {
            sort.compare(a, b, filter.model.as_deref()).then_with(|| a.device.cmp(&b.device))
        });
        rows
    }
}

/// JSON, or a postcard telemetry report (`telemetry.format = "postcard"`).
fn decode(kind: Topic, payload: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) if kind == Topic::Telemetry && payload.first() != Some(&b'{') => {
            crate::telemetry::report::decode_postcard(payload)
                .ok()
                .and_then(|r| serde_json::to_value(r).ok())
                .ok_or_else(|| format!("neither JSON ({e}) nor a postcard report ({} bytes)", payload.len()))
        }
        Err(e) => Err(format!("not JSON: {e} ({} bytes)", payload.len())),
    }
}

/// `{"state","version","models":{name:version},"since"}`.
fn status(d: &mut Device, v: &Value, now: u64) -> Result<(), String> {
    let online = match v["state"].as_str() {
        Some("online") => true,
        Some("offline") => false,
        _ => return Err("`state` is not \"online\" or \"offline\"".into()),
    };
    // The last will carries no models (the agent cannot know at connect time what will
    // serve when it vanishes): the models last seen stay, as far as this view knows them.
    let models = match v.get("models") {
        None if !online => None,
        m => Some(m.and_then(Value::as_object).ok_or("`models` is not an object of name: version")?),
    };
    d.online = Some(online);
    d.agent_version = text(&v["version"]);
    if let Some(since) = v["since"].as_str().and_then(|s| humantime::parse_rfc3339_weak(s).ok()) {
        // A device's clock may run ahead: never later than now.
        d.seen(epoch_secs(since).min(now));
    }
    let Some(models) = models else { return Ok(()) };
    // The status names the models that serve: models it no longer names are gone.
    let names: Vec<String> = models.keys().map(|k| cut(k, MAX_TEXT)).collect();
    d.models.retain(|k, _| names.contains(k));
    let mut bad = 0;
    for (name, version) in models {
        let Some(version) = text(version) else {
            bad += 1;
            continue;
        };
        let Some(m) = d.model(name) else {
            return Err(format!("more than {MAX_MODELS} models"));
        };
        if m.version != version {
            m.version = version;
            m.state = ModelState::Active;
        }
    }
    if bad > 0 {
        return Err(format!("{bad} model version(s) are not strings"));
    }
    Ok(())
}

/// The models part of a telemetry report. Only fields present are taken, so a report
/// that carries only what changed (`telemetry.only_changed`) keeps the rest.
fn telemetry(d: &mut Device, v: &Value) -> Result<(), String> {
    if let Some(version) = text(&v["version"]) {
        d.agent_version = Some(version);
    }
    let Some(models) = v.get("models") else { return Ok(()) };
    let models = models.as_object().ok_or("`models` is not an object")?;
    for (name, m) in models {
        let Some(m) = m.as_object() else {
            return Err(format!("`models.{}` is not an object", cut(name, MAX_TEXT)));
        };
        let Some(view) = d.model(name) else {
            return Err(format!("more than {MAX_MODELS} models"));
        };
        if let Some(version) = m.get("version").and_then(text)
            && view.version != version
        {
            view.version = version;
            view.state = ModelState::Active;
        }
        if let Some(drifting) = m.get("drifting").and_then(Value::as_bool) {
            view.drifting = Some(drifting);
        }
        if let Some(drift) = m.get("drift").and_then(Value::as_object) {
            view.drift = drift.values().filter_map(Value::as_f64).filter(|x| x.is_finite()).reduce(f64::max);
        }
    }
    Ok(())
}

/// `{"ts","kind","severity","model"?,"detail"}`: the update and drift events move a
/// model's state; every event is kept among the device's recent ones.
fn event(d: &mut Device, v: &Value) -> Result<(), String> {
    let kind = v["kind"].as_str().ok_or("no `kind`")?;
    let model = text(&v["model"]);
    let detail = &v["detail"];
    let e = EventView { kind: cut(kind, MAX_TEXT), model: model.clone(), ts: text(&v["ts"]) };
    if d.recent_events.len() == RECENT_EVENTS {
        d.recent_events.remove(0);
    }
    d.recent_events.push(e);
    let state = match kind {
        "update-downloading" | "update-downloaded" | "selftest-passed" => Some(ModelState::Updating),
        "model-activated"
            if detail["probation"].as_bool() == Some(true) || detail["previous"].is_string() =>
        {
            Some(ModelState::Probation)
        }
        "probation-resumed" => Some(ModelState::Probation),
        "model-activated" | "probation-passed" => Some(ModelState::Active),
        "model-rolled-back" => Some(ModelState::RolledBack),
        "model-pulled" => Some(ModelState::Pulled),
        "selftest-failed" | "update-rejected" => Some(ModelState::Failed),
        _ => None,
    };
    if matches!(kind, "model-rolled-back" | "model-pulled") {
        d.rollbacks += 1;
    }
    let drifting = match kind {
        "model-drift" => Some(true),
        "model-drift-cleared" => Some(false),
        _ => None,
    };
    if state.is_none() && drifting.is_none() {
        return Ok(());
    }
    let Some(name) = model else {
        return Err(format!("a `{}` event names no model", cut(kind, MAX_TEXT)));
    };
    let Some(m) = d.model(&name) else {
        return Err(format!("more than {MAX_MODELS} models"));
    };
    if let Some(state) = state {
        m.state = state;
        // The version the model is on after the event, where the event says it: a
        // rollback's `to`, an activation's `version`. (A failed update keeps the old one.)
        let now_on = match kind {
            "model-rolled-back" | "model-pulled" => text(&detail["to"]),
            "model-activated" => text(&detail["version"]),
            _ => None,
        };
        if let Some(v) = now_on {
            m.version = v;
        }
    }
    if let Some(drifting) = drifting {
        m.drifting = Some(drifting);
    }
    Ok(())
}

/// What a filter on the link or a model's state matches. `--state` takes the names of
/// the link states, of every [`ModelState`] and `drifting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Online,
    Offline,
    /// No readable status seen.
    Unknown,
    /// Some message from the device could not be read.
    Malformed,
    /// A model in this state.
    Model(ModelState),
    /// A model whose monitor says it drifts.
    Drifting,
}

// By hand, as clap's derive takes no variant with a value: the model states come from
// `ModelState`'s own list, between the link states and `drifting`.
impl ValueEnum for StateFilter {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: LazyLock<Vec<StateFilter>> = LazyLock::new(|| {
            use StateFilter::*;
            let models = ModelState::value_variants().iter().map(|s| Model(*s));
            [Online, Offline, Unknown, Malformed].into_iter().chain(models).chain([Drifting]).collect()
        });
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            StateFilter::Online => PossibleValue::new("online"),
            StateFilter::Offline => PossibleValue::new("offline"),
            StateFilter::Unknown => PossibleValue::new("unknown").help("No readable status seen"),
            StateFilter::Malformed => {
                PossibleValue::new("malformed").help("Some message from the device could not be read")
            }
            StateFilter::Model(s) => PossibleValue::new(s.as_str()),
            StateFilter::Drifting => {
                PossibleValue::new("drifting").help("A model whose monitor says it drifts")
            }
        })
    }
}

impl StateFilter {
    /// The model state this filter asks for, if it is one.
    fn model_state(self) -> Option<ModelState> {
        match self {
            StateFilter::Model(s) => Some(s),
            _ => None,
        }
    }
}

/// Which devices a view shows. Model filters (`version`, a model state) look at the
/// model named by `model`, or at any model without it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub model: Option<String>,
    pub version: Option<String>,
    pub state: Option<StateFilter>,
    /// A glob on the device id: `*` any run, `?` one character.
    pub device: Option<String>,
}

impl Filter {
    pub fn keeps(&self, d: &Device) -> bool {
        if let Some(g) = &self.device
            && !glob(g, &d.device)
        {
            return false;
        }
        let models: Vec<&ModelView> = match &self.model {
            Some(name) => d.models.get(name).into_iter().collect(),
            None => d.models.values().collect(),
        };
        if self.model.is_some() && models.is_empty() {
            return false;
        }
        let model_ok = |m: &&ModelView| {
            self.version.as_ref().is_none_or(|v| &m.version == v)
                && match self.state {
                    Some(StateFilter::Drifting) => m.drifting == Some(true),
                    Some(f) => f.model_state().is_none_or(|want| m.state == want),
                    None => true,
                }
        };
        let device_ok = match self.state {
            Some(StateFilter::Online) => d.online == Some(true),
            Some(StateFilter::Offline) => d.online == Some(false),
            Some(StateFilter::Unknown) => d.online.is_none(),
            Some(StateFilter::Malformed) => d.malformed > 0,
            _ => true,
        };
        let model_filtered = self.version.is_some()
            || self.state.is_some_and(|f| f == StateFilter::Drifting || f.model_state().is_some());
        device_ok && (!model_filtered || models.iter().any(model_ok))
    }
}

/// `*` matches any run of characters, `?` one; everything else itself. Iterative with
/// one backtrack point, so a hostile pattern costs at most pattern × text steps.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// How rows are ordered (ties by device id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SortKey {
    /// Device id.
    #[default]
    Device,
    /// Offline first, then unknown, then online.
    Online,
    /// Longest silent first.
    LastSeen,
    /// Model version, natural order (2 before 10); the `--model` one, else the first.
    Version,
    /// Model state (active, updating, probation, rolled-back, failed, pulled).
    State,
    /// Most rollbacks first.
    Rollbacks,
    /// Highest drift score first.
    Drift,
}

impl SortKey {
    fn compare(self, a: &Device, b: &Device, model: Option<&str>) -> std::cmp::Ordering {
        let pick = |d: &Device| -> Option<ModelView> {
            match model {
                Some(m) => d.models.get(m).cloned(),
                None => d.models.values().next().cloned(),
            }
        };
        let link = |d: &Device| match d.online {
            Some(false) => 0,
            None => 1,
            Some(true) => 2,
        };
        let drift =
            |d: &Device| d.models.values().filter_map(|m| m.drift).reduce(f64::max).unwrap_or(f64::MIN);
        match self {
            SortKey::Device => std::cmp::Ordering::Equal,
            SortKey::Online => link(a).cmp(&link(b)),
            SortKey::LastSeen => a.last_seen.cmp(&b.last_seen),
            SortKey::Version => natural(
                &pick(a).map(|m| m.version).unwrap_or_default(),
                &pick(b).map(|m| m.version).unwrap_or_default(),
            ),
            SortKey::State => pick(a).map(|m| m.state).cmp(&pick(b).map(|m| m.state)),
            SortKey::Rollbacks => b.rollbacks.cmp(&a.rollbacks),
            SortKey::Drift => drift(b).total_cmp(&drift(a)),
        }
    }
}

/// Compares versions with runs of digits as numbers: "2" < "10", "1.9" < "1.10".
pub fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len());
    }
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Devices per model version: how many, on the link and in each state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VersionCount {
    pub model: String,
    pub version: String,
    pub devices: u64,
    pub online: u64,
    pub offline: u64,
    pub unknown: u64,
    pub drifting: u64,
    /// Devices per model state; states with none are left out.
    pub states: BTreeMap<&'static str, u64>,
}

/// The summary of the rows shown: totals, then one line per model and version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub devices: u64,
    pub online: u64,
    pub offline: u64,
    pub unknown: u64,
    pub malformed: u64,
    pub versions: Vec<VersionCount>,
}

pub fn summarize(rows: &[&Device], model: Option<&str>) -> Summary {
    let mut s = Summary::default();
    let mut per: BTreeMap<(String, String), VersionCount> = BTreeMap::new();
    for d in rows {
        s.devices += 1;
        match d.online {
            Some(true) => s.online += 1,
            Some(false) => s.offline += 1,
            None => s.unknown += 1,
        }
        if d.malformed > 0 {
            s.malformed += 1;
        }
        for (name, m) in &d.models {
            if model.is_some_and(|want| want != name) {
                continue;
            }
            let c = per.entry((name.clone(), m.version.clone())).or_insert_with(|| VersionCount {
                model: name.clone(),
                version: m.version.clone(),
                ..VersionCount::default()
            });
            c.devices += 1;
            match d.online {
                Some(true) => c.online += 1,
                Some(false) => c.offline += 1,
                None => c.unknown += 1,
            }
            if m.drifting == Some(true) {
                c.drifting += 1;
            }
            *c.states.entry(m.state.as_str()).or_default() += 1;
        }
    }
    let mut versions: Vec<VersionCount> = per.into_values().collect();
    versions.sort_by(|a, b| a.model.cmp(&b.model).then_with(|| natural(&a.version, &b.version)));
    s.versions = versions;
    s
}

/// A duration as a short age: `45s`, `12m`, `3h`, `9d`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// One device's models as `name@version state`, joined.
fn models_cell(d: &Device, model: Option<&str>) -> String {
    let cells: Vec<String> = d
        .models
        .iter()
        .filter(|(n, _)| model.is_none_or(|m| m == n.as_str()))
        .map(|(n, m)| format!("{n}@{} {}", m.version, m.state.as_str()))
        .collect();
    if cells.is_empty() { "-".into() } else { cells.join(", ") }
}

fn drift_cell(d: &Device) -> String {
    let drifting = d.models.values().any(|m| m.drifting == Some(true));
    let score = d.models.values().filter_map(|m| m.drift).reduce(f64::max);
    match (drifting, score) {
        (true, Some(s)) => format!("DRIFT {s:.2}"),
        (true, None) => "DRIFT".into(),
        (false, Some(s)) => format!("{s:.2}"),
        (false, None) => "-".into(),
    }
}

/// A row of the table as plain cells, in column order.
fn cells(d: &Device, model: Option<&str>, now: u64) -> [String; 7] {
    let mut models = models_cell(d, model);
    if let Some(p) = &d.problem {
        models = format!("{models}  [malformed ×{}: {p}]", d.malformed);
    }
    [
        d.device.clone(),
        d.link().into(),
        d.agent_version.clone().unwrap_or_else(|| "-".into()),
        d.last_seen.map(|t| age(now.saturating_sub(t))).unwrap_or_else(|| "-".into()),
        d.rollbacks.to_string(),
        drift_cell(d),
        models,
    ]
}

const HEADERS: [&str; 7] = ["DEVICE", "LINK", "AGENT", "SEEN", "RB", "DRIFT", "MODELS"];

/// The table: a header, one line per row (at most `limit`, then a line saying how many
/// more), then the summary. Every line fits in `width` columns: the last column (the
/// models) is cut with `…`, and the device id too if it must.
pub fn table(
    rows: &[&Device],
    summary: &Summary,
    model: Option<&str>,
    now: u64,
    width: usize,
    limit: usize,
) -> String {
    let shown = &rows[..rows.len().min(limit)];
    let body: Vec<[String; 7]> = shown.iter().map(|d| cells(d, model, now)).collect();
    let mut widths: [usize; 7] = HEADERS.map(|h| h.chars().count());
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    widths[0] = widths[0].min(32);
    let mut out = String::new();
    let line = |cols: &[String; 7], out: &mut String| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i < 6 {
                l.push_str(&pad(c, widths[i]));
                l.push_str("  ");
            } else {
                l.push_str(c);
            }
        }
        out.push_str(&fit(l.trim_end(), width));
        out.push('\n');
    };
    line(&HEADERS.map(String::from), &mut out);
    for r in &body {
        line(r, &mut out);
    }
    if rows.len() > shown.len() {
        out.push_str(&fit(&format!("… {} more (--limit, or filter)", rows.len() - shown.len()), width));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&fit(
        &format!(
            "{} devices: {} online, {} offline, {} unknown, {} malformed",
            summary.devices, summary.online, summary.offline, summary.unknown, summary.malformed
        ),
        width,
    ));
    out.push('\n');
    for v in &summary.versions {
        let states: Vec<String> = v.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let drift = if v.drifting > 0 { format!(", {} drifting", v.drifting) } else { String::new() };
        out.push_str(&fit(
            &format!(
                "  {}@{}: {} device{} ({} online, {} offline{drift}): {}",
                v.model,
                v.version,
                v.devices,
                if v.devices == 1 { "" } else { "s" },
                v.online,
                v.offline,
                states.join(", ")
            ),
            width,
        ));
        out.push('\n');
    }
    out
}

/// One line per change, for `--watch` into a pipe.
pub fn change_line(d: &Device, now: u64) -> String {
    let c = cells(d, None, now);
    format!("{} {} agent {} rb {} drift {} {}", c[0], c[1], c[2], c[4], c[5], c[6])
}

/// What of a device counts as a change for `--watch`: everything but `last_seen`
/// (which every message moves).
pub fn change_key(d: &Device) -> String {
    let mut d = d.clone();
    d.last_seen = None;
    serde_json::to_string(&d).unwrap_or_default()
}

fn pad(s: &str, width: usize) -> String {
    let s = fit(s, width);
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(width.saturating_sub(n)))
}

/// `s` cut to `width` characters, the last one `…` when cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The stable JSON document of `fleet status --json` (schema 1).
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    pub schema: u32,
    /// Whether every retained status was seen before the wait ran out.
    pub complete: bool,
    pub generated: String,
    pub summary: Summary,
    pub devices: Vec<&'a Device>,
}
