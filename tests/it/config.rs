use std::process::Command;

use crate::common::*;

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempdir();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config.replace("DEMO", &demo_model().display().to_string())).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--config", path.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with(&mut cmd, None, secs(30));
    (out.status.code().expect("exit code"), stderr(&out))
}

#[test]
fn unknown_key_names_file_and_line() {
    let (code, err) = check("[agent]\ndevice_id = \"x\"\n\n[engine]\nthreads = 1\nthread = 2\n", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("agent.toml:6:"), "line of the bad key: {err}");
    assert!(err.contains("unknown field `thread`"), "{err}");
}

#[test]
fn every_invalid_value_is_reported_at_once_with_its_line() {
    let config = r#"[agent]
device_id = "bad id!"

[engine]
threads = 0
queue = 0

[[model]]
path = "DEMO"

[[model]]
path = "no/such/model"

[[source]]
kind = "simulated"
model = "vibraton"
"#;
    let (code, err) = check(config, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("5 problem(s)"), "{err}");
    assert!(err.contains("agent.toml:2: agent.device_id"), "{err}");
    assert!(err.contains("agent.toml:5: engine.threads: 0 is out of range"), "{err}");
    assert!(err.contains("agent.toml:6: engine.queue"), "{err}");
    assert!(err.contains("agent.toml:12: model.1.path") && err.contains("model.toml"), "{err}");
    assert!(
        err.contains("agent.toml:16: source.0.model") && err.contains("no model named `vibraton`"),
        "{err}"
    );
}

#[test]
fn environment_overrides_keys_and_is_checked() {
    let base = "[agent]\ndevice_id = \"x\"\n[[model]]\npath = \"DEMO\"\n";
    let (code, err) = check(base, &[("EDGE_AGENT_ENGINE_THREADS", "0")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("engine.threads: 0 is out of range"), "{err}");

    let (code, err) = check(base, &[("EDGE_AGENT_ENGINE_THREADS", "many")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("EDGE_AGENT_ENGINE_THREADS"), "names the variable: {err}");

    let (code, err) = check(base, &[("EDGE_AGENT_ENGNE_THREADS", "2")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no section [engne]"), "{err}");

    // A valid override is applied: the device id shows up in results.
    let with_source = format!(
        "{base}[[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\nspeed = 0.0\nduration_s = 1.0\n"
    );
    let dir = tempdir();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, with_source.replace("DEMO", &demo_model().display().to_string())).unwrap();
    let out = run_with(
        Command::new(bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .env("EDGE_AGENT_AGENT_DEVICE_ID", "from-env"),
        None,
        secs(30),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    assert!(!lines.is_empty());
    assert_eq!(lines[0]["device"], "from-env");

    // Flags win over the environment.
    let out = run_with(
        Command::new(bin())
            .args(["run", "--config", path.to_str().unwrap(), "--device-id", "from-flag"])
            .env("EDGE_AGENT_AGENT_DEVICE_ID", "from-env"),
        None,
        secs(30),
    );
    assert_eq!(json_lines(&out.stdout)[0]["device"], "from-flag");
}

#[test]
fn syntax_error_and_missing_file() {
    let (code, err) = check("[agent\n", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("agent.toml:1:"), "{err}");
    let out = run(&["run", "--config", "/nonexistent/agent.toml"], secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read config file /nonexistent/agent.toml"));
}

#[test]
fn mqtt_settings_are_checked_with_their_lines() {
    let config = r#"[agent]
device_id = "x"

[[model]]
path = "DEMO"

[mqtt]
host = "127.0.0.1"
keep_alive_s = 2
password = "secret"
groups = ["all"]

[mqtt.tls]
ca_file = "no/such/ca.pem"
cert_file = "no/such/cert.pem"

[[mqtt.sensor]]
topic = "sensors/#/accel"
model = "vibration"

[[mqtt.sensor]]
topic = "sensors/+/accel"
model = "vibraton"
stream_level = 7

[spool]
max_bytes = 1000
"#;
    let (code, err) = check(config, &[]);
    assert_eq!(code, 2, "{err}");
    for expected in [
        "agent.toml:9: mqtt.keep_alive_s: 2 is out of range",
        "agent.toml:11: mqtt.groups: `all` is not a group name",
        "mqtt.username: a password needs a username",
        "agent.toml:14: mqtt.tls.ca_file",
        "agent.toml:15: mqtt.tls.cert_file: a client certificate needs its key",
        "agent.toml:18: mqtt.sensor.0.topic: `sensors/#/accel` is not a topic filter",
        "agent.toml:23: mqtt.sensor.1.model: no model named `vibraton`",
        "agent.toml:24: mqtt.sensor.1.stream_level: `sensors/+/accel` has 3 levels (0 to 2); no level 7",
        "agent.toml:27: spool.max_bytes",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn fallback_settings_are_checked_with_their_lines() {
    let config = r#"[agent]
device_id = "x"

[[model]]
path = "DEMO"

[fallback]
failures_to_open = 0
hold_s = 0

[fallback.resource]
max_temperature_c = 500

[[fallback.model]]
model = "vibration"
url = "ftp://cloud"
min_confidence = 1.5
cert_file = "no/such/cert.pem"

[[fallback.model]]
model = "elsewhere"
url = "http://127.0.0.1:9"
"#;
    let (code, err) = check(config, &[]);
    assert_eq!(code, 2, "{err}");
    for expected in [
        "fallback.failures_to_open: must be at least 1",
        "fallback.hold_s: 0 is out of range",
        "fallback.resource.max_temperature_c: 500 is out of range",
        "agent.toml:16: fallback.model.0.url: `ftp://cloud` is not an http:// or https:// URL",
        "fallback.model.0.min_confidence: 1.5 is out of range",
        "fallback.model.0.cert_file",
        "fallback.model.1.spec: `elsewhere` is not installed here",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    // A token file that is not there stops the start with its name (files are read at
    // start, not at the first request).
    let dir = tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "").unwrap();
    let (code, err) = check(
        &format!(
            "[agent]\ndevice_id = \"x\"\nstate_dir = \"{}\"\n[[model]]\npath = \"DEMO\"\n[fallback]\n[[fallback.model]]\nmodel = \"vibration\"\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n",
            dir.path().join("state").display(),
            token.display()
        ),
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("fallback.model `vibration`") && err.contains("empty"), "{err}");
}

#[test]
fn any_environment_is_read_and_values_take_the_type_of_their_key() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let base = "[[model]]\npath = \"DEMO\"\n[[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\nspeed = 0.0\nduration_s = 1.0\n";
    let dir = tempdir();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, base.replace("DEMO", &demo_model().display().to_string())).unwrap();
    // Another program's variable in Latin-1 is none of the agent's business; a device id
    // of digits is still a device id.
    let out = run_with(
        Command::new(bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .env(OsStr::new("LEGACY_LABEL"), OsStr::from_bytes(b"caf\xe9"))
            .env("EDGE_AGENT_AGENT_DEVICE_ID", "1234"),
        None,
        secs(30),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out.stdout)[0]["device"], "1234");
    // One of ours that is not UTF-8: a clear error naming it.
    let out = run_with(
        Command::new(bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .env(OsStr::new("EDGE_AGENT_AGENT_DEVICE_ID"), OsStr::from_bytes(b"caf\xe9")),
        None,
        secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("EDGE_AGENT_AGENT_DEVICE_ID") && err.contains("UTF-8"), "{err}");
}
