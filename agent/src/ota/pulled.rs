//! A version pulled from the registry: the signed targets of the device's channel no
//! longer list the version it runs. The device goes back to its previous version (event
//! `model-pulled`) unless the model is pinned, so that a halted rollout (`edge-agent
//! fleet rollout`) also takes the version off the devices that already run it.

use super::rollout::Offer;

/// What the device knows about the version of one model it runs, for [`is_pulled`].
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    /// The version serving, if any.
    pub active: Option<&'a str>,
    /// Whether it came from the registry (the store's `current` is its version
    /// directory). A configured model directory is never pulled: the registry never
    /// listed it.
    pub from_registry: bool,
    /// `ota.pin` names the model: the operator chose its version, whatever the registry
    /// lists.
    pub pinned: bool,
}

/// Whether the version running must be taken off this device: it came from the
/// registry, the model is not pinned, and no offer of the (freshly verified) signed
/// targets names it any more.
pub fn is_pulled(running: Running<'_>, model: &str, offers: &[Offer]) -> bool {
    let Some(active) = running.active else { return false };
    running.from_registry
        && !running.pinned
        && !offers.iter().any(|o| o.custom.model == model && o.custom.version == active)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::rollout::{Custom, Mode, Rollout};

    fn offer(model: &str, version: &str) -> Offer {
        Offer {
            target: format!("stable/{model}/{version}.tar"),
            length: 1,
            sha256: [0; 32],
            custom: Custom {
                model: model.into(),
                version: version.into(),
                rollout: Rollout { percent: 0, salt: "s".into(), mode: Mode::Active },
                groups: None,
                min_agent: None,
                probation: None,
                shadow: None,
            },
        }
    }

    fn running(active: Option<&str>, from_registry: bool, pinned: bool) -> Running<'_> {
        Running { active, from_registry, pinned }
    }

    #[test]
    fn a_registry_version_no_longer_listed_is_pulled() {
        let offers = [offer("m", "2"), offer("m", "4")];
        assert!(is_pulled(running(Some("3"), true, false), "m", &offers));
        // Listed, even at 0 %: the rollout only decides who takes it next.
        assert!(!is_pulled(running(Some("2"), true, false), "m", &offers));
        // An empty list pulls everything from the registry.
        assert!(is_pulled(running(Some("2"), true, false), "m", &[]));
    }

    #[test]
    fn configured_pinned_and_missing_models_are_never_pulled() {
        assert!(!is_pulled(running(Some("1"), false, false), "m", &[]), "the configured version");
        assert!(!is_pulled(running(Some("3"), true, true), "m", &[]), "pinned");
        assert!(!is_pulled(running(None, true, false), "m", &[]), "nothing serves");
    }

    #[test]
    fn another_models_offer_of_the_same_version_does_not_keep_it() {
        assert!(is_pulled(running(Some("3"), true, false), "m", &[offer("other", "3")]));
    }
}
