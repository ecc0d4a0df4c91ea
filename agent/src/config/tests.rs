/// A fresh directory and the path of its `agent.toml` (written by [`write_agent`]).
fn config_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    (dir, path)
}

/// Writes `path`: an `[agent]` table, then `text`.
fn write_agent(path: &std::path::Path, text: &str) {
    std::fs::write(path, format!("[agent]\ndevice_id = \"d\"\nstate_dir = \"s\"\n{text}")).unwrap()
}

#[test]
fn the_model_memory_limit_is_checked_and_reaches_the_engine() {
    use super::{Config, Overrides};
    let (_dir, path) = config_file();
    let write = |text: &str| write_agent(&path, text);

    write("");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert_eq!(c.engine.model_limits.max_bytes, 256 << 20, "the default");

    write("\n[engine]\nmax_model_memory_mb = 64\n");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert_eq!(c.engine.model_limits.max_bytes, 64 << 20);
    let env = [("EDGE_AGENT_ENGINE_MAX_MODEL_MEMORY_MB".to_string(), "2048".to_string())];
    let c = Config::load_with_env(&path, &Overrides::default(), &env).unwrap();
    assert_eq!(c.engine.model_limits.max_bytes, 2048 << 20, "the environment overrides the file");

    for bad in ["0", "1048577"] {
        write(&format!("\n[engine]\nmax_model_memory_mb = {bad}\n"));
        let err = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "agent.toml:6: engine.max_model_memory_mb: {bad} is out of range; use 1 to 1048576"
            )),
            "{err}"
        );
    }
}

#[test]
fn capture_is_off_by_default_and_its_ranges_are_checked() {
    use super::{Config, Overrides};
    let (dir, path) = config_file();
    let write = |text: &str| write_agent(&path, text);
    write("");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert!(!c.capture.enabled, "off unless turned on: the data may be private");

    write("\n[capture]\nenabled = true\nrandom_share = 0.01\nca_file = \"ca.pem\"\n");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert!(c.capture.enabled);
    assert_eq!(c.capture.ca_file, Some(dir.path().join("ca.pem")), "relative to the config file");
    let env = [("EDGE_AGENT_CAPTURE_MAX_PER_HOUR".to_string(), "7".to_string())];
    assert_eq!(Config::load_with_env(&path, &Overrides::default(), &env).unwrap().capture.max_per_hour, 7);

    write(
        "\n[capture]\nenabled = true\nrandom_share = 1.5\nlow_confidence = -1\nmax_kb = 0\nmax_per_hour = 0\n",
    );
    let err = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap_err().to_string();
    for want in [
        "capture.random_share: 1.5 is not a share; use 0 to 1",
        "capture.low_confidence: -1 is not a score",
        "capture.max_kb: 0 is out of range",
        "capture.max_per_hour: 0 would keep nothing",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    write("\n[capture]\nenabled = true\n");
    let err = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap_err().to_string();
    assert!(err.contains("no reason keeps anything"), "{err}");
}

/// Cases the property tests found (against the code before they existed).
#[test]
fn env_values_take_the_type_of_their_key_and_odd_names_are_no_panic() {
    use super::{RawConfig, apply_env, prefixed_env};
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let env = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>()
    };
    let raw = apply_env(RawConfig::default(), &env(&[("EDGE_AGENT_AGENT_DEVICE_ID", "1234")])).unwrap();
    assert_eq!(raw.agent.device_id.as_deref(), Some("1234"));
    let raw = apply_env(RawConfig::default(), &env(&[("EDGE_AGENT_ENGINE_THREADS", "3")])).unwrap();
    assert_eq!(raw.engine.threads, 3);
    let raw = apply_env(RawConfig::default(), &env(&[("EDGE_AGENT_LOG_LEVEL", "\"true\"")])).unwrap();
    assert_eq!(raw.log.level, "true", "a quoted value is a TOML string");
    let err = apply_env(RawConfig::default(), &env(&[("EDGE_AGENT_ENGINE_THREADS", "many")])).unwrap_err();
    assert!(err.to_string().contains("EDGE_AGENT_ENGINE_THREADS"), "{err}");
    // Names without the prefix (the caller filters, but stays total), even non-ASCII.
    assert!(apply_env(RawConfig::default(), &env(&[("a\u{1d7ce}0", "123")])).is_ok());
    // A variable that is not UTF-8: someone else's is ignored, one of ours is an error.
    let other = (OsString::from_vec(vec![0x80]), OsString::new());
    assert_eq!(prefixed_env([other].into_iter()).unwrap(), vec![]);
    let ours = (OsString::from("EDGE_AGENT_AGENT_DEVICE_ID"), OsString::from_vec(vec![0xe9]));
    assert!(prefixed_env([ours].into_iter()).unwrap_err().to_string().contains("UTF-8"));
}

/// Property tests of the `EDGE_AGENT_<SECTION>_<KEY>` mapping: any environment is decoded
/// without a panic, and every value written for a key lands in that key, typed as the key
/// takes it, with nothing else changed.
mod env_props {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    use proptest::prelude::*;

    use super::super::{ENV_PREFIX, RawConfig, SECTIONS, apply_env, prefixed_env};

    use crate::testing::proptest_config as config;

    /// A configuration with every section present and most optional keys set, so that
    /// most keys appear in its serialized form.
    const RICH: &str = r#"
[agent]
device_id = "dev-1"
state_dir = "state"
[log]
format = "json"
level = "info"
[engine]
threads = 2
[output]
stdout = false
[api]
listen = "127.0.0.1:8470"
socket = "/run/edge-agent/api.sock"
[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "c-1"
username = "u"
password = "p"
groups = ["g1", "g2"]
[telemetry]
interval_s = 60
[spool]
max_bytes = 1000000
[ota]
url = "http://127.0.0.1:1"
models = ["vibration"]
groups = ["line-3"]
[fallback]
budget_per_hour = 10
budget_per_day = 100
[fallback.resource]
max_temperature_c = 80.5
max_load_per_cpu = 1.5
[capture]
enabled = true
low_confidence = 0.6
random_share = 0.01
max_kb = 1024
ca_file = "ca.pem"
"#;

    fn rich() -> RawConfig {
        toml::from_str(RICH).expect("the rich configuration parses")
    }

    fn table(raw: &RawConfig) -> toml::Table {
        toml::Table::try_from(raw).expect("a RawConfig serializes")
    }

    /// What a key of the serialized configuration takes.
    #[derive(Debug, Clone, PartialEq)]
    enum Kind {
        /// Any text (names, paths, URLs, passwords).
        Text,
        /// One of a fixed set of words (an enum): only its current value is generated.
        Word(String),
        /// An unsigned integer up to this.
        Int(i64),
        Float,
        Bool,
        Texts,
    }

    /// Whether `value` at `section.key` of `base` deserializes.
    fn takes(base: &toml::Table, section: &str, key: &str, value: toml::Value) -> bool {
        let mut t = base.clone();
        if let Some(toml::Value::Table(s)) = t.get_mut(section) {
            s.insert(key.to_string(), value);
        }
        toml::Value::Table(t).try_into::<RawConfig>().is_ok()
    }

    /// Every key env variables can set in the rich configuration, with its kind (worked
    /// out once: it deserializes the configuration a few hundred times).
    fn keys() -> &'static [(String, String, Kind)] {
        static KEYS: std::sync::LazyLock<Vec<(String, String, Kind)>> = std::sync::LazyLock::new(find_keys);
        &KEYS
    }

    fn find_keys() -> Vec<(String, String, Kind)> {
        let base = table(&rich());
        let mut out = Vec::new();
        for section in SECTIONS {
            let Some(toml::Value::Table(sec)) = base.get(section) else { continue };
            for (key, value) in sec {
                let kind = match value {
                    toml::Value::String(s) => {
                        let probe = toml::Value::String("probe Ω 1".into());
                        if takes(&base, section, key, probe) { Kind::Text } else { Kind::Word(s.clone()) }
                    }
                    toml::Value::Integer(_) => {
                        let max = [i64::MAX, i64::from(u32::MAX), 65_535, 255]
                            .into_iter()
                            .find(|m| takes(&base, section, key, toml::Value::Integer(*m)))
                            .expect("an integer key takes 255");
                        Kind::Int(max)
                    }
                    toml::Value::Float(_) => Kind::Float,
                    toml::Value::Boolean(_) => Kind::Bool,
                    toml::Value::Array(_) => {
                        let probe = toml::Value::Array(vec![toml::Value::String("p".into())]);
                        if !takes(&base, section, key, probe) {
                            continue;
                        }
                        Kind::Texts
                    }
                    _ => continue,
                };
                out.push((section.to_string(), key.clone(), kind));
            }
        }
        out
    }

    /// Text a user may put in a variable, including text that reads as another TOML type.
    fn text() -> impl Strategy<Value = String> {
        let tricky = prop::sample::select(vec![
            "123",
            "-5",
            "007",
            "true",
            "false",
            "1979-05-27",
            "07:32:00",
            "1979-05-27T07:32:00Z",
            "[1, 2]",
            "[]",
            "{}",
            "{a = 1}",
            "inf",
            "-inf",
            "nan",
            "1e3",
            "0x1F",
            "0o17",
            "0b1",
            "1_000",
            "\"quoted\"",
            "'single'",
            " padded ",
            "",
            "a = 1",
            "1\nx = 2",
            "\"unterminated",
            "#comment",
            "pump-7",
        ])
        .prop_map(str::to_string);
        let any_text = any::<String>().prop_map(|s| s.replace('\0', ""));
        prop_oneof![tricky, any_text, "[ -~]{0,24}"]
    }

    /// One generated value of every kind; the key picks the one of its kind.
    #[derive(Debug, Clone)]
    struct Seed {
        text: String,
        int: u64,
        float: f64,
        bool: bool,
        texts: Vec<String>,
        lower: bool,
    }

    fn seed() -> impl Strategy<Value = Seed> {
        let float = prop_oneof![-1e9..1e9f64, Just(0.0), Just(-0.0), Just(f64::INFINITY), Just(0.1)];
        (text(), any::<u64>(), float, any::<bool>(), prop::collection::vec(text(), 0..3), any::<bool>())
            .prop_map(|(text, int, float, bool, texts, lower)| Seed { text, int, float, bool, texts, lower })
    }

    /// The TOML value a seed gives a key of `kind`.
    fn value(kind: &Kind, seed: &Seed) -> toml::Value {
        match kind {
            Kind::Text => toml::Value::String(seed.text.clone()),
            Kind::Word(w) => toml::Value::String(w.clone()),
            Kind::Int(max) => {
                toml::Value::Integer((seed.int % (*max as u64).saturating_add(1).max(1)) as i64)
            }
            Kind::Float => toml::Value::Float(seed.float),
            Kind::Bool => toml::Value::Boolean(seed.bool),
            Kind::Texts => toml::Value::Array(seed.texts.iter().cloned().map(toml::Value::String).collect()),
        }
    }

    /// The variable's text for `value`, as a user writes it: text as it is (quoted only
    /// when it would otherwise read as a quoted TOML string), everything else in TOML.
    fn render(value: &toml::Value) -> String {
        match value {
            toml::Value::String(s) => match s.trim().parse::<toml::Value>() {
                Ok(toml::Value::String(_)) => value.to_string(),
                _ => s.clone(),
            },
            other => other.to_string(),
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn every_key_set_by_a_variable_lands_in_that_key(
            picks in prop::collection::vec((any::<prop::sample::Index>(), seed()), 1..5),
        ) {
            let keys = keys();
            prop_assume!(!keys.is_empty());
            let base = rich();
            let mut expected = table(&base);
            let mut env = Vec::new();
            let mut used = Vec::new();
            for (index, seed) in &picks {
                let (section, key, kind) = &keys[index.index(keys.len())];
                if used.contains(&(section, key)) {
                    continue;
                }
                used.push((section, key));
                let v = value(kind, seed);
                let name = format!("{ENV_PREFIX}{}_{}", section.to_uppercase(), key.to_uppercase());
                let name = if seed.lower { format!("{ENV_PREFIX}{section}_{key}") } else { name };
                env.push((name, render(&v)));
                if let Some(toml::Value::Table(s)) = expected.get_mut(section.as_str()) {
                    s.insert(key.clone(), v);
                }
            }
            // What the key holds once the configuration has read it (an f32 key rounds).
            let expected: RawConfig = toml::Value::Table(expected).try_into().expect("generated values fit their keys");
            let got = apply_env(base, &env);
            prop_assert!(got.is_ok(), "{:?}: {}", env, got.err().map(|e| e.to_string()).unwrap_or_default());
            prop_assert_eq!(table(&got.expect("checked")), table(&expected), "{:?}", env);
        }

        #[test]
        fn any_environment_is_decoded_without_panic(
            vars in prop::collection::vec((
                prop_oneof![
                    any::<String>(),
                    any::<String>().prop_map(|s| format!("{ENV_PREFIX}{s}")),
                    (prop::sample::select(SECTIONS.to_vec()), any::<String>())
                        .prop_map(|(sec, k)| format!("{ENV_PREFIX}{}_{k}", sec.to_uppercase())),
                ],
                prop_oneof![text(), any::<String>()],
            ), 0..5),
        ) {
            let _ = apply_env(RawConfig::default(), &vars);
            let _ = apply_env(rich(), &vars);
        }

        #[test]
        fn any_process_environment_is_read_without_panic(
            vars in prop::collection::vec((
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..20),
                    prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| [ENV_PREFIX.as_bytes(), &b].concat()),
                ],
                prop::collection::vec(any::<u8>(), 0..20),
            ), 0..6),
        ) {
            let os: Vec<(OsString, OsString)> =
                vars.iter().map(|(k, v)| (OsString::from_vec(k.clone()), OsString::from_vec(v.clone()))).collect();
            let ours = vars.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX.as_bytes())).count();
            let utf8 = vars
                .iter()
                .filter(|(k, _)| k.starts_with(ENV_PREFIX.as_bytes()))
                .all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok());
            match prefixed_env(os.into_iter()) {
                Ok(read) => {
                    prop_assert!(utf8);
                    prop_assert_eq!(read.len(), ours, "every variable of ours, nothing else");
                }
                Err(e) => {
                    prop_assert!(!utf8);
                    prop_assert!(e.to_string().contains("UTF-8"), "{}", e);
                }
            }
        }
    }

    #[test]
    fn the_rich_configuration_has_keys_of_every_kind() {
        let kinds: Vec<&Kind> = keys().iter().map(|(_, _, k)| k).collect();
        assert!(
            kinds.contains(&&Kind::Text) && kinds.contains(&&Kind::Float) && kinds.contains(&&Kind::Bool)
        );
        assert!(kinds.iter().any(|k| matches!(k, Kind::Int(_))) && kinds.contains(&&Kind::Texts));
        assert!(kinds.iter().any(|k| matches!(k, Kind::Word(_))));
    }
}

/// A simulated source's drift is read, and a drift that cannot be meant is refused with
/// the key and the rule.
#[test]
fn simulated_drift_is_read_and_checked() {
    use super::{Config, Overrides, SourceEntry};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let write = |drift: &str| {
        std::fs::write(
            &path,
            format!(
                "[agent]\ndevice_id = \"d\"\nstate_dir = \"s\"\n\n[[model]]\npath = \"{model}\"\n\n[[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\nnoise_seed = 3\n\n[source.drift]\n{drift}\n",
                model = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/models/vibration"),
            ),
        )
        .unwrap()
    };
    write("after_s = 60\ngain = 1.5\nnoise = 0.1");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    let SourceEntry::Simulated(sim) = &c.sources[0] else { panic!("not simulated") };
    let d = sim.drift.unwrap();
    assert_eq!((d.after_s, d.after_messages, d.gain, d.offset, d.noise), (Some(60.0), None, 1.5, 0.0, 0.1));
    assert_eq!(sim.noise_seed, Some(3));
    for (bad, says) in [
        ("after_s = 1\nafter_messages = 2", "not both"),
        ("after_s = -1", "after_s"),
        ("noise = -0.5", "noise"),
        ("gian = 2", "gian"),
    ] {
        write(bad);
        let err = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn the_probation_label_shift_is_on_by_default_and_checked() {
    use super::{Config, Overrides};
    let (dir, path) = config_file();
    std::fs::write(dir.path().join("root.json"), "{}").unwrap();
    let ota =
        "\n[ota]\nurl = \"http://127.0.0.1:1\"\nmodels = [\"vibration\"]\ntrusted_root = \"root.json\"\n";
    write_agent(&path, ota);
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    let p = c.ota.unwrap().probation;
    assert_eq!((p.max_label_shift, p.min_label_results), (0.3, 100));
    write_agent(&path, &format!("{ota}\n[ota.probation]\nmax_label_shift = 1.5\n"));
    let err = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap_err().to_string();
    assert!(err.contains("ota.probation.max_label_shift: 1.5 is not a Jensen-Shannon distance"), "{err}");
}

#[test]
fn intra_threads_is_checked_and_reaches_the_engine() {
    use super::{Config, Overrides};
    let (_dir, path) = config_file();
    let write = |text: &str| write_agent(&path, text);

    write("");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert_eq!(c.engine.intra_threads, 1, "the default: no threads inside a run");

    write("\n[engine]\nintra_threads = 4\n");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert_eq!(c.engine.intra_threads, 4);

    for bad in ["0", "65"] {
        write(&format!("\n[engine]\nintra_threads = {bad}\n"));
        let err = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "agent.toml:6: engine.intra_threads: {bad} is out of range; use 1 (no threads inside a run) to 64"
            )),
            "{err}"
        );
    }
}
