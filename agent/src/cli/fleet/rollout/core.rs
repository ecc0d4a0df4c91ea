//! The rollout controller's decisions, without I/O: a [`State`] that inputs change
//! ([`State::handle`]: device events, commands, the outcome of an action) and that says
//! what to do next ([`State::decide`]: raise the signed percentage, pull the version,
//! stop, or wait). The caller ([`super::run`]) does the signing, the MQTT and the disk,
//! and writes the state to disk after every change, so a killed controller resumes from
//! its file.
//!
//! Two rules make a resumed controller safe: an action is recorded (phase `raising` or
//! `halting`) before it is done and confirmed after, and a halt is never undone. So a
//! step is never raised twice (a `raising` phase found at start is confirmed against
//! the registry, not signed again) and a halt is never forgotten.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ota::rollout::{Rollout, in_cohort};

/// The state file's format version.
pub const SCHEMA: u32 = 1;

/// What the operator asked for; fixed for the life of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub model: String,
    pub version: String,
    pub channel: String,
    /// Rollout percentages, strictly increasing, 1 to 100.
    pub steps: Vec<u32>,
    /// Seconds each step runs before it is judged.
    pub bake_s: u64,
    /// Devices of the cohort that must report (passed probation or failed) before a step
    /// is judged; a cohort smaller than this must report whole.
    pub min_devices: usize,
    /// The largest share of the reporting cohort whose update failed that a step may
    /// have, in basis points (1/10000: 2000 is 20%); more halts the rollout. Whole
    /// numbers, so that the state file reads back exactly and the rule is exact.
    pub max_failure_bp: u32,
    /// Seconds a step waits for its reports after its bake time before the rollout is
    /// paused for the operator; 0: forever.
    pub step_timeout_s: u64,
    /// The cohort salt of the published version (read from its signed `custom`).
    pub salt: String,
}

impl Plan {
    /// Checks what the command line cannot: every problem says what to change.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("--steps is empty; give percentages such as 1,5,25,100".into());
        }
        if let Some(p) = self.steps.iter().find(|p| **p == 0 || **p > 100) {
            return Err(format!("--steps: {p} is not a percentage from 1 to 100"));
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "--steps {:?} must increase strictly (a rollout only ever adds devices)",
                self.steps
            ));
        }
        if self.max_failure_bp > 10_000 {
            return Err(format!(
                "--max-failure-share {} is not a share from 0 to 1 (0.2 is 20%)",
                f64::from(self.max_failure_bp) / 10_000.0
            ));
        }
        Ok(())
    }

    /// The devices of `devices` in the cohort at `percent`.
    pub fn cohort<'a>(&self, devices: impl IntoIterator<Item = &'a String>, percent: u32) -> Vec<String> {
        let r = Rollout { percent, salt: self.salt.clone(), mode: Default::default() };
        devices.into_iter().filter(|d| in_cohort(d, &self.model, &r)).cloned().collect()
    }

    /// Each step with the devices it adds to the cohort, for `--dry-run`.
    pub fn adds(&self, devices: &BTreeSet<String>) -> Vec<(u32, Vec<String>)> {
        let mut seen = BTreeSet::new();
        self.steps
            .iter()
            .map(|&p| {
                let added: Vec<String> =
                    self.cohort(devices, p).into_iter().filter(|d| seen.insert(d.clone())).collect();
                (p, added)
            })
            .collect()
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Step `step` is to be signed (recorded before signing).
    Raising { step: usize },
    /// Step `step` is signed since `since_ms` and runs its bake time.
    Baking { step: usize, since_ms: u64 },
    /// The version is to be pulled (recorded before pulling).
    Halting { reason: String },
    /// Pulled: the end of a failed or aborted rollout.
    Halted { reason: String },
    /// Every step passed.
    Done,
}

/// What one device reported about the version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Report {
    /// It activated the version (on probation).
    Took { at_ms: u64 },
    /// It kept the version after probation.
    Healthy { at_ms: u64 },
    /// Its update failed: `kind` is the event (`model-rolled-back`, `selftest-failed`,
    /// `update-rejected`).
    Failed { at_ms: u64, kind: String, why: String },
}

/// A rollout's whole state: what the state file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema: u32,
    pub plan: Plan,
    pub phase: Phase,
    /// Set by `pause` (or a step that timed out): no step is raised or judged.
    pub paused: Option<String>,
    /// The highest percentage this controller signed (confirmed), 0 before any.
    pub signed_percent: u32,
    /// The known fleet: device ids from `--devices`, retained status and events.
    pub devices: BTreeSet<String>,
    pub reports: BTreeMap<String, Report>,
    /// When the first failure of the version was reported, and when the halt was
    /// confirmed (pulled), for the outcome.
    pub first_failure_ms: Option<u64>,
    pub halted_ms: Option<u64>,
    pub started_ms: u64,
    /// Control commands applied so far (see [`super::control`]).
    pub controls_applied: u64,
    /// Every decision, in order: `{at_ms, what}`.
    pub log: Vec<Value>,
}

/// Something that happened, for [`State::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A device is known (a `--devices` line, a retained status).
    Device(String),
    /// A device's event (`edge/{device}/events`).
    Event {
        device: String,
        kind: String,
        model: Option<String>,
        detail: Value,
    },
    /// The step `step` is signed in the registry.
    Raised {
        step: usize,
    },
    /// The version is unlisted from the registry.
    Pulled,
    Pause,
    Resume,
    Abort,
}

/// What to do next, from [`State::decide`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Sign `percent` (step `step`) unless the registry already has it; then feed
    /// [`Input::Raised`].
    Raise { step: usize, percent: u32 },
    /// Unlist the version unless it already is; then feed [`Input::Pulled`].
    Pull,
    /// The rollout ended (done or halted).
    Stop,
    /// Nothing until more input or time.
    Wait,
}

/// A step's numbers: the cohort and what it reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Judgement {
    pub percent: u32,
    pub cohort: usize,
    pub took: usize,
    pub healthy: usize,
    pub failed: usize,
    /// Reports needed before the step is judged.
    pub needed: usize,
    /// Failed over reported (0 when none reported).
    pub failure_share: f64,
    /// Devices outside the cohort that reported the version (should stay 0).
    pub outside: usize,
}

impl State {
    pub fn new(plan: Plan, devices: BTreeSet<String>, now_ms: u64) -> State {
        let mut s = State {
            schema: SCHEMA,
            plan,
            phase: Phase::Raising { step: 0 },
            paused: None,
            signed_percent: 0,
            devices,
            reports: BTreeMap::new(),
            first_failure_ms: None,
            halted_ms: None,
            started_ms: now_ms,
            controls_applied: 0,
            log: Vec::new(),
        };
        s.note(now_ms, format!("started: steps {:?}", s.plan.steps));
        s
    }

    fn note(&mut self, now_ms: u64, what: String) {
        self.log.push(json!({"at_ms": now_ms, "what": what}));
    }

    /// Whether the rollout ended.
    pub fn finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Halted { .. })
    }

    /// The step in progress (the last one when done).
    pub fn step(&self) -> usize {
        match &self.phase {
            Phase::Raising { step } | Phase::Baking { step, .. } => *step,
            _ => self.plan.steps.iter().position(|p| *p >= self.signed_percent).unwrap_or(0),
        }
    }

    /// The numbers of the cohort at the percentage signed now.
    pub fn judgement(&self) -> Judgement {
        let percent = self.signed_percent;
        let cohort: BTreeSet<String> = self.plan.cohort(&self.devices, percent).into_iter().collect();
        let mut j = Judgement { percent, cohort: cohort.len(), ..Judgement::default() };
        for (device, report) in &self.reports {
            if !cohort.contains(device) {
                j.outside += 1;
                continue;
            }
            match report {
                Report::Took { .. } => j.took += 1,
                Report::Healthy { .. } => j.healthy += 1,
                Report::Failed { .. } => j.failed += 1,
            }
        }
        j.needed = self.plan.min_devices.min(j.cohort);
        let reported = j.healthy + j.failed;
        j.failure_share = if reported == 0 { 0.0 } else { j.failed as f64 / reported as f64 };
        j
    }

    /// Applies one input. Returns whether the state changed (and must be written).
    pub fn handle(&mut self, input: Input, now_ms: u64) -> bool {
        match input {
            Input::Device(id) => self.devices.insert(id),
            Input::Event { device, kind, model, detail } => self.event(device, &kind, model, &detail, now_ms),
            Input::Raised { step } => match self.phase {
                Phase::Raising { step: s } if s == step => {
                    let percent = self.plan.steps[step];
                    self.signed_percent = self.signed_percent.max(percent);
                    self.phase = Phase::Baking { step, since_ms: now_ms };
                    self.note(now_ms, format!("raised to {percent}%"));
                    true
                }
                _ => false,
            },
            Input::Pulled => match &self.phase {
                Phase::Halting { reason } => {
                    let reason = reason.clone();
                    self.phase = Phase::Halted { reason: reason.clone() };
                    self.halted_ms = Some(now_ms);
                    self.note(now_ms, format!("halted (version pulled): {reason}"));
                    true
                }
                _ => false,
            },
            Input::Pause => {
                if self.finished() || self.paused.is_some() {
                    return false;
                }
                self.paused = Some("paused by the operator".into());
                self.note(now_ms, "paused by the operator".into());
                true
            }
            Input::Resume => {
                if self.paused.is_none() {
                    return false;
                }
                self.paused = None;
                // A step's bake and timeout count from the resume.
                if let Phase::Baking { since_ms, .. } = &mut self.phase {
                    *since_ms = now_ms;
                }
                self.note(now_ms, "resumed by the operator".into());
                true
            }
            Input::Abort => {
                if self.finished() || matches!(self.phase, Phase::Halting { .. }) {
                    return false;
                }
                self.halt("aborted by the operator".into(), now_ms);
                true
            }
        }
    }

    fn halt(&mut self, reason: String, now_ms: u64) {
        self.note(now_ms, format!("halting: {reason}"));
        self.phase = Phase::Halting { reason };
    }

    fn event(
        &mut self,
        device: String,
        kind: &str,
        model: Option<String>,
        detail: &Value,
        now_ms: u64,
    ) -> bool {
        if model.as_deref() != Some(self.plan.model.as_str()) {
            return false;
        }
        let v = self.plan.version.as_str();
        let is = |key: &str| detail.get(key).and_then(Value::as_str) == Some(v);
        let report = match kind {
            "probation-passed" if is("version") => Report::Healthy { at_ms: now_ms },
            "model-activated" if is("version") => Report::Took { at_ms: now_ms },
            "model-rolled-back" if is("from") => failed(kind, detail, "reason", now_ms),
            "selftest-failed" | "update-rejected" if is("version") => failed(kind, detail, "error", now_ms),
            _ => return false,
        };
        let mut changed = self.devices.insert(device.clone());
        let keep = match (self.reports.get(&device), &report) {
            (None, _) => true,
            // A device that only took it says more when it passes or fails; a failure
            // or a pass is only replaced by a later verdict on a new attempt.
            (Some(Report::Took { .. }), _) => true,
            (Some(_), Report::Took { .. }) => false,
            (Some(old), new) => old != new,
        };
        if keep {
            if matches!(report, Report::Failed { .. }) && self.first_failure_ms.is_none() {
                self.first_failure_ms = Some(now_ms);
            }
            self.reports.insert(device, report);
            changed = true;
        }
        changed
    }

    /// What to do now. May change the phase (a step judged), which the caller writes.
    pub fn decide(&mut self, now_ms: u64) -> Action {
        match self.phase.clone() {
            Phase::Done | Phase::Halted { .. } => Action::Stop,
            Phase::Halting { .. } => Action::Pull,
            Phase::Raising { step } => {
                if self.paused.is_some() {
                    return Action::Wait;
                }
                Action::Raise { step, percent: self.plan.steps[step] }
            }
            Phase::Baking { step, since_ms } => {
                let j = self.judgement();
                let reported = j.healthy + j.failed;
                let bp = self.plan.max_failure_bp as usize;
                // Past the limit with the minimum reported, or past it whatever the rest
                // of the cohort will say.
                let over = j.failed > 0
                    && ((reported >= j.needed && j.failed * 10_000 > bp * reported)
                        || j.failed * 10_000 > bp * j.cohort.max(1));
                if over {
                    let reason = format!(
                        "{} of {} reporting devices failed at {}% ({:.0}% > {:.0}%)",
                        j.failed,
                        reported,
                        j.percent,
                        j.failure_share * 100.0,
                        bp as f64 / 100.0
                    );
                    self.halt(reason, now_ms);
                    return Action::Pull;
                }
                if self.paused.is_some() {
                    return Action::Wait;
                }
                let elapsed = now_ms.saturating_sub(since_ms);
                if elapsed >= self.plan.bake_s * 1000 && reported >= j.needed {
                    self.note(
                        now_ms,
                        format!(
                            "step {}% passed: {} healthy, {} failed of {} in the cohort",
                            j.percent, j.healthy, j.failed, j.cohort
                        ),
                    );
                    if step + 1 < self.plan.steps.len() {
                        self.phase = Phase::Raising { step: step + 1 };
                        return Action::Raise { step: step + 1, percent: self.plan.steps[step + 1] };
                    }
                    self.phase = Phase::Done;
                    self.note(now_ms, "done".into());
                    return Action::Stop;
                }
                let timeout = self.plan.step_timeout_s * 1000;
                if timeout > 0 && elapsed >= self.plan.bake_s * 1000 + timeout {
                    let why = format!(
                        "paused: only {reported} of the {} reports needed at {}% came within {} s",
                        j.needed, j.percent, self.plan.step_timeout_s
                    );
                    self.note(now_ms, why.clone());
                    self.paused = Some(why);
                }
                Action::Wait
            }
        }
    }

    /// The phase's name, for people and scripts.
    pub fn phase_name(&self) -> &'static str {
        match (&self.phase, &self.paused) {
            (Phase::Done, _) => "done",
            (Phase::Halted { .. }, _) => "halted",
            (Phase::Halting { .. }, _) => "halting",
            (_, Some(_)) => "paused",
            (Phase::Raising { .. }, None) => "raising",
            (Phase::Baking { .. }, None) => "baking",
        }
    }

    /// The rollout record: retained on `{prefix}/fleet/rollouts/{model}`, printed by
    /// `status` and `--json`. Stable keys.
    pub fn record(&self) -> Value {
        let j = self.judgement();
        let reason = match (&self.phase, &self.paused) {
            (Phase::Halting { reason } | Phase::Halted { reason }, _) => Some(reason.clone()),
            (_, Some(p)) => Some(p.clone()),
            _ => None,
        };
        json!({
            "schema": SCHEMA,
            "model": self.plan.model,
            "version": self.plan.version,
            "channel": self.plan.channel,
            "state": self.phase_name(),
            "reason": reason,
            "steps": self.plan.steps,
            "step": self.step(),
            "percent": self.signed_percent,
            "devices": self.devices.len(),
            "cohort": j.cohort,
            "took": j.took,
            "healthy": j.healthy,
            "failed": j.failed,
            "needed": j.needed,
            "failure_share": j.failure_share,
            "max_failure_share": f64::from(self.plan.max_failure_bp) / 10_000.0,
            "outside": j.outside,
            // Devices that ran the version (took it, passed or failed it).
            "affected": self.reports.len(),
            "started_ms": self.started_ms,
            "first_failure_ms": self.first_failure_ms,
            "halted_ms": self.halted_ms,
        })
    }
}

fn failed(kind: &str, detail: &Value, why_key: &str, at_ms: u64) -> Report {
    let why = detail.get(why_key).and_then(Value::as_str).unwrap_or("").chars().take(200).collect();
    Report::Failed { at_ms, kind: kind.to_string(), why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(steps: &[u32], min_devices: usize, share: f64) -> Plan {
        Plan {
            model: "m".into(),
            version: "3".into(),
            channel: "stable".into(),
            steps: steps.to_vec(),
            bake_s: 10,
            min_devices,
            max_failure_bp: (share * 10_000.0).round() as u32,
            step_timeout_s: 0,
            salt: "s".into(),
        }
    }

    fn fleet(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("dev-{i:03}")).collect()
    }

    fn ev(device: &str, kind: &str, detail: Value) -> Input {
        Input::Event { device: device.into(), kind: kind.into(), model: Some("m".into()), detail }
    }

    fn passed(device: &str) -> Input {
        ev(device, "probation-passed", json!({"version": "3"}))
    }

    fn rolled_back(device: &str) -> Input {
        ev(device, "model-rolled-back", json!({"from": "3", "to": "2", "reason": "failed probation"}))
    }

    /// Runs actions as an honest I/O layer would, until the controller waits or stops.
    fn drive(s: &mut State, now: u64) -> Vec<Action> {
        let mut done = Vec::new();
        loop {
            let a = s.decide(now);
            done.push(a.clone());
            match a {
                Action::Raise { step, .. } => {
                    s.handle(Input::Raised { step }, now);
                }
                Action::Pull => {
                    s.handle(Input::Pulled, now);
                }
                Action::Stop | Action::Wait => return done,
            }
        }
    }

    #[test]
    fn plans_are_checked_with_what_to_change() {
        assert!(plan(&[1, 5, 25, 100], 1, 0.2).check().is_ok());
        assert!(plan(&[], 1, 0.2).check().unwrap_err().contains("empty"));
        assert!(plan(&[5, 5], 1, 0.2).check().unwrap_err().contains("increase strictly"));
        assert!(plan(&[0, 5], 1, 0.2).check().unwrap_err().contains("1 to 100"));
        assert!(plan(&[101], 1, 0.2).check().unwrap_err().contains("1 to 100"));
        assert!(plan(&[100], 1, 20.0).check().unwrap_err().contains("0.2 is 20%"));
    }

    #[test]
    fn a_good_version_goes_through_every_step_once_its_cohort_reports() {
        let p = plan(&[10, 50, 100], 1, 0.2);
        let mut s = State::new(p.clone(), fleet(40), 0);
        assert_eq!(drive(&mut s, 0), vec![Action::Raise { step: 0, percent: 10 }, Action::Wait]);
        assert_eq!(s.signed_percent, 10);
        // Bake time not over: waits even with reports.
        for d in p.cohort(&s.devices.clone(), 10) {
            s.handle(passed(&d), 1);
        }
        assert_eq!(drive(&mut s, 9_999), vec![Action::Wait]);
        assert_eq!(drive(&mut s, 10_000), vec![Action::Raise { step: 1, percent: 50 }, Action::Wait]);
        for d in p.cohort(&s.devices.clone(), 100) {
            s.handle(passed(&d), 10_001);
        }
        let actions = drive(&mut s, 20_000);
        assert_eq!(actions, vec![Action::Raise { step: 2, percent: 100 }, Action::Wait]);
        assert_eq!(drive(&mut s, 30_000), vec![Action::Stop]);
        assert_eq!(s.phase, Phase::Done);
        assert_eq!(s.record()["state"], "done");
        assert_eq!(s.record()["healthy"], 40);
    }

    #[test]
    fn a_step_waits_for_the_minimum_of_reports_and_pauses_after_its_timeout() {
        let mut p = plan(&[100], 3, 0.2);
        p.step_timeout_s = 5;
        let mut s = State::new(p, fleet(10), 0);
        drive(&mut s, 0);
        s.handle(passed("dev-000"), 1);
        s.handle(passed("dev-001"), 1);
        assert_eq!(drive(&mut s, 10_000), vec![Action::Wait], "2 of 3 reports");
        assert_eq!(drive(&mut s, 15_000), vec![Action::Wait]);
        assert_eq!(s.phase_name(), "paused");
        assert!(s.paused.as_ref().unwrap().contains("only 2 of the 3"), "{:?}", s.paused);
        s.handle(passed("dev-002"), 15_001);
        assert_eq!(drive(&mut s, 15_002), vec![Action::Wait], "paused: not judged");
        s.handle(Input::Resume, 16_000);
        assert_eq!(drive(&mut s, 26_000), vec![Action::Stop]);
    }

    #[test]
    fn failures_over_the_share_halt_at_that_step_and_a_halt_sticks() {
        let p = plan(&[10, 100], 2, 0.25);
        let mut s = State::new(p.clone(), fleet(60), 0);
        drive(&mut s, 0);
        let cohort = p.cohort(&s.devices.clone(), 10);
        assert!(cohort.len() >= 3, "{cohort:?}");
        // One failure among enough healthy reports stays under the share ...
        s.handle(rolled_back(&cohort[0]), 100);
        for d in &cohort[1..] {
            s.handle(passed(d), 100);
        }
        let share = 1.0 / cohort.len() as f64;
        let actions = drive(&mut s, 200);
        if share > 0.25 {
            assert_eq!(actions, vec![Action::Pull, Action::Stop]);
        } else {
            assert_eq!(actions, vec![Action::Wait]);
        }
        // ... a second one past it halts (before the bake time is over).
        let mut s = State::new(p.clone(), fleet(60), 0);
        drive(&mut s, 0);
        s.handle(rolled_back(&cohort[0]), 100);
        s.handle(ev(&cohort[1], "selftest-failed", json!({"version": "3"})), 150);
        assert_eq!(drive(&mut s, 200), vec![Action::Pull, Action::Stop]);
        assert!(matches!(&s.phase, Phase::Halted { reason } if reason.contains("2 of 2")), "{:?}", s.phase);
        assert_eq!(s.first_failure_ms, Some(100));
        assert_eq!(s.halted_ms, Some(200));
        assert_eq!(s.signed_percent, 10, "never raised past the failing step");
        // Nothing undoes a halt.
        for d in &cohort {
            s.handle(passed(d), 300);
        }
        s.handle(Input::Resume, 300);
        s.handle(Input::Raised { step: 1 }, 300);
        assert_eq!(drive(&mut s, 100_000), vec![Action::Stop]);
        assert_eq!(s.phase_name(), "halted");
    }

    #[test]
    fn events_of_other_models_versions_and_kinds_count_for_nothing() {
        let mut s = State::new(plan(&[100], 1, 0.0), fleet(3), 0);
        drive(&mut s, 0);
        for input in [
            ev("dev-000", "model-rolled-back", json!({"from": "2"})),
            ev("dev-000", "update-rejected", json!({"version": "4"})),
            ev("dev-000", "model-pulled", json!({"from": "3"})),
            Input::Event {
                device: "dev-000".into(),
                kind: "model-rolled-back".into(),
                model: Some("other".into()),
                detail: json!({"from": "3"}),
            },
        ] {
            assert!(!s.handle(input, 1));
        }
        assert!(s.reports.is_empty());
        // A device that only took it is not a report yet.
        assert!(s.handle(ev("dev-001", "model-activated", json!({"version": "3"})), 2));
        assert_eq!(s.judgement().took, 1);
        assert_eq!(s.judgement().healthy + s.judgement().failed, 0);
    }

    #[test]
    fn an_abort_halts_and_pause_stops_raising() {
        let mut s = State::new(plan(&[50, 100], 0, 0.2), fleet(10), 0);
        s.handle(Input::Pause, 0);
        assert_eq!(drive(&mut s, 0), vec![Action::Wait], "paused before the first step");
        assert_eq!(s.signed_percent, 0);
        s.handle(Input::Resume, 1);
        drive(&mut s, 1);
        assert_eq!(s.signed_percent, 50);
        s.handle(Input::Abort, 2);
        assert_eq!(drive(&mut s, 2), vec![Action::Pull, Action::Stop]);
        assert!(matches!(&s.phase, Phase::Halted { reason } if reason.contains("operator")));
    }

    #[test]
    fn the_dry_run_lists_what_each_step_adds_once() {
        let p = plan(&[10, 50, 100], 0, 0.2);
        let devices = fleet(100);
        let adds = p.adds(&devices);
        let all: Vec<String> = adds.iter().flat_map(|(_, d)| d.clone()).collect();
        let unique: BTreeSet<String> = all.iter().cloned().collect();
        assert_eq!(all.len(), unique.len(), "each device is added by one step");
        assert_eq!(unique, devices, "100% adds the rest");
        assert_eq!(adds[0].1, p.cohort(&devices, 10));
    }

    /// One random input, a restart (the state written and read back), or time.
    #[derive(Debug, Clone)]
    enum Op {
        Input(Input),
        Restart,
        Time(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let device = (0usize..30).prop_map(|i| format!("dev-{i:03}"));
        let kind = prop::sample::select(vec![
            "probation-passed",
            "model-activated",
            "model-rolled-back",
            "selftest-failed",
            "update-rejected",
            "model-pulled",
        ]);
        let version = prop::sample::select(vec!["3", "2"]);
        prop_oneof![
            6 => (device, kind, version).prop_map(|(d, k, v)| Op::Input(Input::Event {
                device: d,
                kind: k.into(),
                model: Some("m".into()),
                detail: json!({"version": v, "from": v}),
            })),
            1 => Just(Op::Input(Input::Pause)),
            1 => Just(Op::Input(Input::Resume)),
            1 => Just(Op::Input(Input::Abort)),
            1 => Just(Op::Restart),
            3 => (0u64..20_000).prop_map(Op::Time),
        ]
    }

    fn reload(s: &State) -> State {
        serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap()
    }

    proptest! {
        /// Whatever happens, and however often the controller dies between deciding an
        /// action and confirming it (the I/O layer signs only what the registry lacks, as
        /// `run` does): percentages are signed in increasing order, each once; nothing is
        /// signed after a halt is decided; a halt is never undone and says why.
        #[test]
        fn steps_rise_once_each_and_a_halt_is_final(
            ops in prop::collection::vec((op(), any::<bool>()), 1..120),
            share in 0.0f64..=1.0,
            min in 0usize..5,
        ) {
            let p = plan(&[5, 25, 60, 100], min, share);
            let mut s = State::new(p, fleet(30), 0);
            let mut now = 0;
            let mut registry = 0u32;
            let mut signed: Vec<u32> = Vec::new();
            let mut halted = false;
            for (op, crash) in ops {
                match op {
                    Op::Input(i) => { s.handle(i, now); }
                    Op::Restart => {
                        let back = reload(&s);
                        prop_assert_eq!(&back, &s);
                        s = back;
                    }
                    Op::Time(dt) => now += dt,
                }
                let action = s.decide(now);
                // What the disk holds when the action starts.
                let saved = reload(&s);
                match action {
                    Action::Raise { step, percent } => {
                        prop_assert!(!halted, "raised after a halt");
                        if registry < percent {
                            signed.push(percent);
                            registry = percent;
                        } else {
                            prop_assert_eq!(registry, percent, "a lower step after a higher one");
                        }
                        if crash { s = saved } else { s.handle(Input::Raised { step }, now); }
                    }
                    Action::Pull => {
                        halted = true;
                        if crash { s = saved } else { s.handle(Input::Pulled, now); }
                    }
                    Action::Stop | Action::Wait => {}
                }
                if halted {
                    prop_assert!(matches!(s.phase, Phase::Halting { .. } | Phase::Halted { .. }), "{:?}", s.phase);
                    prop_assert!(s.record()["reason"].is_string());
                }
                prop_assert!(signed.windows(2).all(|w| w[0] < w[1]), "{:?}", signed);
                prop_assert!(s.signed_percent <= registry);
            }
        }

        /// A judged step agrees with the rule written out: halt when the failed share of
        /// the reports exceeds the limit once the minimum reported, or the failures alone
        /// exceed it over the whole cohort; pass after the bake with the minimum reported.
        #[test]
        fn a_step_is_judged_as_the_rule_says(outcomes in prop::collection::vec(0u8..3, 30), share in 0.0f64..=1.0, min in 0usize..8) {
            let p = plan(&[100], min, share);
            let mut s = State::new(p, fleet(30), 0);
            drive(&mut s, 0);
            let (mut healthy, mut failed) = (0usize, 0usize);
            for (i, o) in outcomes.iter().enumerate() {
                let d = format!("dev-{i:03}");
                match o {
                    0 => { s.handle(passed(&d), 1); healthy += 1; }
                    1 => { s.handle(rolled_back(&d), 1); failed += 1; }
                    _ => {}
                }
            }
            let reported = healthy + failed;
            let needed = min.min(30);
            // The rule in floating point, on the basis points the plan holds.
            let limit = (share * 10_000.0).round() / 10_000.0;
            let rate = if reported == 0 { 0.0 } else { failed as f64 / reported as f64 };
            let halt = failed > 0 && ((reported >= needed && rate > limit) || failed as f64 / 30.0 > limit);
            let pass = !halt && reported >= needed;
            let a = s.decide(20_000);
            let expect = if halt { Action::Pull } else if pass { Action::Stop } else { Action::Wait };
            prop_assert_eq!(a, expect);
        }
    }
}
