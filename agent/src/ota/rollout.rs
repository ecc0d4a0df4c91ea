//! Which model version a device should run: staged rollout cohorts, device groups,
//! pins, agent version floors, versions this device found bad.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Our part of a target's `custom` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Custom {
    pub model: String,
    pub version: String,
    pub rollout: Rollout,
    /// Device groups the version is meant for; absent: every device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Lowest agent version that can run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agent: Option<String>,
    /// Probation limits for this version, over the device's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<ProbationOverride>,
    /// Limits of a shadow run of this version (`rollout.mode = "shadow"`, or
    /// `update/apply` with `"shadow": true`); absent: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::Limits>,
}

/// `rollout`: the share of devices that take a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// 0 to 100. An integer: TUF's canonical JSON, which signatures cover, has no
    /// floating-point numbers.
    pub percent: u32,
    pub salt: String,
    /// How the devices of the cohort take it: activated (the default), or installed as a
    /// shadow candidate beside the active version until its verdict.
    #[serde(default, skip_serializing_if = "Mode::is_active")]
    pub mode: Mode,
}

/// A rollout stage's mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Activated, then on probation.
    #[default]
    Active,
    /// Run beside the active version on a share of its requests, compared, never
    /// served; promoted or rejected by the limits in `custom.shadow` or a command.
    Shadow,
}

impl Mode {
    fn is_active(&self) -> bool {
        *self == Mode::Active
    }
}

/// Probation limits a publisher may set per version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbationOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_label_shift: Option<f64>,
}

/// A version the signed targets offer.
#[derive(Debug, Clone)]
pub struct Offer {
    /// Target path, `{channel}/{model}/{version}.tar`.
    pub target: String,
    pub length: u64,
    pub sha256: [u8; 32],
    pub custom: Custom,
}

/// The device's bucket for a model version: the first 8 bytes of
/// sha256(device ‖ 0 ‖ model ‖ 0 ‖ salt), big-endian, modulo 10000. A device is in the
/// cohort when its bucket is below percent × 100, so raising the percentage only adds
/// devices, and a new salt draws a new cohort.
pub fn bucket(device: &str, model: &str, salt: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(device.as_bytes());
    ctx.update(&[0]);
    ctx.update(model.as_bytes());
    ctx.update(&[0]);
    ctx.update(salt.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first) % 10_000
}

/// Whether the device is in the cohort of a rollout.
pub fn in_cohort(device: &str, model: &str, rollout: &Rollout) -> bool {
    let threshold = u64::from(rollout.percent.min(100)) * 100;
    bucket(device, model, &rollout.salt) < threshold
}

/// Orders versions: dot- or dash-separated parts, numeric parts as numbers, the rest
/// as text; `2` < `10`, `1.2` < `1.10`.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |s: &str| s.split(['.', '-']).map(str::to_string).collect::<Vec<_>>();
    let (pa, pb) = (split(a), split(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

/// What this device knows about itself, for choosing.
pub struct Device<'a> {
    pub id: &'a str,
    pub groups: &'a [String],
    pub agent_version: &'a str,
    /// Versions pinned by config, per model.
    pub pins: &'a BTreeMap<String, String>,
}

/// Why a version offered was not taken (for `update/check` replies and logs).
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub version: String,
    pub why: String,
}

/// The version of `model` this device should run, out of `offers`, given what runs now
/// and what it found bad; `None` when nothing better is allowed. Also returns why each
/// other offer was passed over.
pub fn choose(
    device: &Device,
    model: &str,
    offers: &[Offer],
    active: Option<&str>,
    bad: &BTreeMap<String, String>,
) -> (Option<Offer>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut best: Option<&Offer> = None;
    let pin = device.pins.get(model);
    for offer in offers.iter().filter(|o| o.custom.model == model) {
        let v = &offer.custom.version;
        let why = if let Some(reason) = bad.get(v) {
            Some(format!("marked bad on this device: {reason}"))
        } else if pin.is_some_and(|p| p != v) {
            Some(format!("this device is pinned to version {}", pin.map(String::as_str).unwrap_or("")))
        } else if let Some(min) = offer
            .custom
            .min_agent
            .as_deref()
            .filter(|m| compare_versions(device.agent_version, m) == Ordering::Less)
        {
            Some(format!("needs agent {min} or later (this is {})", device.agent_version))
        } else if let Some(groups) =
            offer.custom.groups.as_ref().filter(|g| !g.iter().any(|x| device.groups.contains(x)))
        {
            Some(format!("for groups {} only", groups.join(", ")))
        } else if pin.is_none() && !in_cohort(device.id, model, &offer.custom.rollout) {
            Some(format!("not in the {}% rollout cohort", offer.custom.rollout.percent))
        } else if pin.is_none() && active.is_some_and(|a| compare_versions(v, a) != Ordering::Greater) {
            Some("not newer than the active version".to_string())
        } else {
            None
        };
        match why {
            Some(why) => skipped.push(Skipped { version: v.clone(), why }),
            None => {
                if best.is_none_or(|b| compare_versions(v, &b.custom.version) == Ordering::Greater) {
                    if let Some(b) = best {
                        skipped.push(Skipped {
                            version: b.custom.version.clone(),
                            why: "a newer one is allowed".into(),
                        });
                    }
                    best = Some(offer);
                } else {
                    skipped.push(Skipped { version: v.clone(), why: "a newer one is allowed".into() });
                }
            }
        }
    }
    // A pinned version already active needs nothing.
    let best = best.filter(|b| active != Some(b.custom.version.as_str()));
    (best.cloned(), skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(version: &str, percent: u32) -> Offer {
        Offer {
            target: format!("stable/m/{version}.tar"),
            length: 1,
            sha256: [0; 32],
            custom: Custom {
                model: "m".into(),
                version: version.into(),
                rollout: Rollout { percent, salt: "s1".into(), mode: Mode::Active },
                groups: None,
                min_agent: None,
                probation: None,
                shadow: None,
            },
        }
    }

    #[test]
    fn raising_the_percentage_only_adds_devices() {
        let devices: Vec<String> = (0..2000).map(|i| format!("dev-{i}")).collect();
        let mut previous: Vec<&String> = Vec::new();
        for pct in [0, 1, 10, 25, 50, 99, 100] {
            let r = Rollout { percent: pct, salt: "abc".into(), mode: Mode::Active };
            let now: Vec<&String> = devices.iter().filter(|d| in_cohort(d, "m", &r)).collect();
            assert!(previous.iter().all(|d| now.contains(d)), "{pct}% dropped a device");
            let share = now.len() as f64 / devices.len() as f64 * 100.0;
            assert!((share - f64::from(pct)).abs() < 3.5, "{pct}% took {share:.1}%");
            previous = now;
        }
        assert_eq!(previous.len(), devices.len());
    }

    #[test]
    fn the_bucket_is_the_documented_hash() {
        // sha256("d\0m\0s") = 0x1dd1...; checked by hand with sha256sum.
        let expect = {
            let d = ring::digest::digest(&ring::digest::SHA256, b"d\0m\0s");
            u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap()) % 10_000
        };
        assert_eq!(bucket("d", "m", "s"), expect);
    }

    #[test]
    fn versions_order_numerically() {
        assert_eq!(compare_versions("2", "10"), Ordering::Less);
        assert_eq!(compare_versions("1.2", "1.10"), Ordering::Less);
        assert_eq!(compare_versions("1.2", "1.2"), Ordering::Equal);
        assert_eq!(compare_versions("1.2.1", "1.2"), Ordering::Greater);
    }

    #[test]
    fn choose_takes_the_newest_allowed_and_says_why_not_the_others() {
        let pins = BTreeMap::new();
        let groups = vec!["line-3".to_string()];
        let device = Device { id: "dev-1", groups: &groups, agent_version: "0.1.0", pins: &pins };
        let mut grouped = offer("4", 100);
        grouped.custom.groups = Some(vec!["line-9".into()]);
        let mut future = offer("5", 100);
        future.custom.min_agent = Some("9.0".into());
        let offers = vec![offer("1", 100), offer("2", 100), offer("3", 0), grouped, future];
        let mut bad = BTreeMap::new();
        let (best, skipped) = choose(&device, "m", &offers, Some("1"), &bad);
        assert_eq!(best.unwrap().custom.version, "2");
        let why = |v: &str| skipped.iter().find(|s| s.version == v).unwrap().why.clone();
        assert!(why("1").contains("not newer"));
        assert!(why("3").contains("cohort"));
        assert!(why("4").contains("groups"));
        assert!(why("5").contains("needs agent"));
        bad.insert("2".to_string(), "failed probation".to_string());
        let (best, _) = choose(&device, "m", &offers, Some("1"), &bad);
        assert!(best.is_none(), "a bad version is never retried");
    }

    #[test]
    fn a_pin_wins_over_cohort_and_order() {
        let pins = BTreeMap::from([("m".to_string(), "1".to_string())]);
        let device = Device { id: "dev-1", groups: &[], agent_version: "0.1.0", pins: &pins };
        let offers = vec![offer("1", 0), offer("2", 100)];
        let (best, _) = choose(&device, "m", &offers, Some("2"), &BTreeMap::new());
        assert_eq!(best.unwrap().custom.version, "1", "pinned to an older version: it is taken");
        let (best, _) = choose(&device, "m", &offers, Some("1"), &BTreeMap::new());
        assert!(best.is_none(), "already on the pin");
    }
}
