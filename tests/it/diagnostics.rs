//! Remote diagnostics: the agent's own log, `logs/upload` and `diagnostics/bundle` over a
//! real broker to a loopback server that cuts connections, and the log level at run time.

use std::path::Path;

use serde_json::Value;

use crate::common::mqtt_agent::{MqttSetup, Running};
use crate::common::upload_server::upload_server;
use crate::common::*;

/// A token the fallback reads from its file: it must never reach an archive.
const TOKEN: &str = "fallback-token-7d41c9e0a2";
/// The MQTT password of `write_config`.
const PASSWORD: &str = "agent-pass";

/// The files of a bundle, as docs/diagnostics.md lists them (sorted).
const BUNDLE_FILES: [&str; 8] = [
    "config.toml",
    "doctor.json",
    "logs/agent.jsonl",
    "manifest.json",
    "ota.json",
    "spool.json",
    "status.json",
    "versions.json",
];

/// `[fallback]` for the flat model with a token file, and `[log]` with `log`.
fn extra(dir: &Path, log: &str) -> String {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    format!(
        "[fallback]\n[[fallback.model]]\nmodel = \"flat\"\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n\n[log]\n{log}\n",
        token.display()
    )
}

/// Writes `bytes` of log lines (JSON, as the agent writes them, with hard-to-compress
/// messages) to `path`; every `error_every`th line is an ERROR, the others DEBUG.
fn fill_log(path: &Path, bytes: usize, error_every: usize, seed: u64) -> usize {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(bytes + 2048);
    let mut lines = 0;
    while out.len() < bytes {
        let level = if lines % error_every == 0 { "ERROR" } else { "DEBUG" };
        out.extend_from_slice(
            format!("{{\"timestamp\":\"{now}\",\"level\":\"{level}\",\"message\":\"filler ").as_bytes(),
        );
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(CHARS[(state % 64) as usize]);
        }
        out.extend_from_slice(b"\",\"target\":\"prefill\"}\n");
        lines += 1;
    }
    std::fs::write(path, out).unwrap();
    lines
}

/// Publishes a command and returns all its replies.
fn command<const N: usize>(running: &Running<N>, command: &str, id: &str, args: Value) -> Vec<Value> {
    let request = serde_json::json!({"id": id, "args": args}).to_string();
    running.broker.publish("test", &format!("edge/dev1/cmd/{command}"), request.as_bytes(), 1, false);
    crate::common::upload_server::replies_to(&running.subs[0], command, id)
}

/// Lists and extracts `archive` with the system's `tar`; returns the names.
fn untar(archive: &Path, into: &Path) -> Vec<String> {
    std::fs::create_dir_all(into).unwrap();
    let list = run_with(std::process::Command::new("tar").arg("-tzf").arg(archive), None, secs(60));
    assert!(list.status.success(), "tar -tzf: {}", String::from_utf8_lossy(&list.stderr));
    let x = run_with(
        std::process::Command::new("tar").arg("-xzf").arg(archive).arg("-C").arg(into),
        None,
        secs(60),
    );
    assert!(x.status.success(), "tar -xzf: {}", String::from_utf8_lossy(&x.stderr));
    String::from_utf8(list.stdout).unwrap().lines().map(str::to_string).collect()
}

/// Every extracted file's bytes, by name.
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().map(Result::unwrap) {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                all.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    all
}

/// `diagnostics/bundle` of a log of about 66 MB (three rotated files and the active one)
/// to a server that cuts the connection twice: the upload resumes and completes, the
/// reply's size and SHA-256 are those of what the server holds, `tar` opens it, it holds
/// the files docs/diagnostics.md lists and the lines of every log file (the active one
/// included), and neither the MQTT password nor the fallback token is anywhere in it.
#[test]
fn a_50_mb_bundle_resumes_after_two_cuts_opens_with_tar_and_holds_no_secret() {
    let setup = MqttSetup::new();
    let log = "file_max_mb = 400\nfiles = 8\nupload_max_mb = 100";
    let setup = {
        let e = extra(setup.dir(), log);
        setup.extra(&e)
    };
    let mut filler = 0;
    for i in 1..=3 {
        filler += fill_log(&setup.dir().join(format!("state/log/agent.log.{i}")), 22 << 20, 1000, i);
    }
    let running = setup.start(["edge/dev1/cmd/#"]);
    let (port, server) = upload_server(2, None);
    let url = format!("http://127.0.0.1:{port}/ok?X-Signature=secret");
    let all = command(&running, "diagnostics/bundle", "b-1", serde_json::json!({"url": url}));
    let states: Vec<&str> = all.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"accepted"), "{all:?}");
    assert!(states.iter().filter(|s| **s == "running").count() >= 3, "progress replies: {all:?}");
    let last = all.last().unwrap();
    assert_eq!(last["state"], "succeeded", "{last}");
    let result = &last["result"];
    let got = server.lock().unwrap();
    assert!(got.complete && got.cuts_left == 0, "both cuts happened and it completed");
    assert!(result["resumed"].as_u64().unwrap() >= 2, "{result}");
    assert_eq!(result["bytes"].as_u64(), Some(got.bytes.len() as u64));
    assert!(got.bytes.len() > 45 << 20, "a bundle of about 50 MB: {} bytes", got.bytes.len());
    let digest = ring::digest::digest(&ring::digest::SHA256, &got.bytes);
    assert_eq!(result["sha256"].as_str(), Some(hex::encode(digest).as_str()));
    assert_eq!(result["url"], format!("http://127.0.0.1:{port}/ok"), "the signature is not echoed");
    let archive = running.dir.path().join("got.tar.gz");
    std::fs::write(&archive, &got.bytes).unwrap();
    drop(got);

    let out = running.dir.path().join("extracted");
    let mut names = untar(&archive, &out);
    names.sort();
    assert_eq!(names, BUNDLE_FILES);
    let log = std::fs::read_to_string(out.join("logs/agent.jsonl")).unwrap();
    let prefilled = log.lines().filter(|l| l.contains("\"target\":\"prefill\"")).count();
    assert_eq!(prefilled, filler, "every line of the rotated files");
    assert!(
        log.lines().any(|l| l.contains("\"target\":\"edge_agent")),
        "the agent's own lines from the active file"
    );
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("(redacted)") && config.contains("token_file"), "{config}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "diagnostics");
    assert_eq!(manifest["device"], "dev1");
    let versions: Value = serde_json::from_slice(&std::fs::read(out.join("versions.json")).unwrap()).unwrap();
    assert_eq!(versions["models"]["flat"], "1", "{versions}");
    let status: Value = serde_json::from_slice(&std::fs::read(out.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["device"], "dev1");
    for (name, bytes) in files_in(&out) {
        for secret in [PASSWORD, TOKEN] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in {name}");
        }
    }
    assert!(
        std::fs::read_dir(running.dir.path().join("state/uploads")).unwrap().next().is_none(),
        "the archive is removed after the upload"
    );
    running.agent.stop();
}

/// Whether the agent's standard error has a line with all of `parts`.
fn logged(agent: &crate::common::mqtt_agent::Agent, parts: &[&str]) -> bool {
    agent.log().lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// With `log.upload_max_mb = 1` and 3 MB of hard-to-compress log: bad arguments are
/// refused before anything starts; `logs/upload` of the errors alone fits and holds only
/// them; the whole log is refused as too large, saying which setting, and no archive is
/// left behind. Then `config/set log.level = "debug"` for 2 s: debug lines appear on the
/// agent's output, `status` shows the level and its revert, and the level goes back by
/// itself (an event says so), after which no debug line appears.
#[test]
fn bad_args_and_oversize_are_refused_and_the_log_level_changes_and_reverts_at_run_time() {
    let setup = MqttSetup::new();
    let setup = {
        let e = extra(setup.dir(), "upload_max_mb = 1");
        setup.extra(&e)
    };
    let lines = fill_log(&setup.dir().join("state/log/agent.log.1"), 3 << 20, 100, 7);
    let running = setup.start(["edge/dev1/cmd/#", "edge/dev1/events"]);
    let (port, server) = upload_server(0, None);
    let url = format!("http://127.0.0.1:{port}/ok");

    for (cmd, id, args, why) in [
        ("logs/upload", "r-1", serde_json::json!({}), "logs/upload needs `args.url`"),
        (
            "logs/upload",
            "r-2",
            serde_json::json!({"url": url, "level": "loud"}),
            "`args.level`: `loud` is not a level",
        ),
        (
            "logs/upload",
            "r-3",
            serde_json::json!({"url": url, "since": "yesterday"}),
            "`args.since`: `yesterday` is neither",
        ),
        (
            "diagnostics/bundle",
            "r-4",
            serde_json::json!({"url": url, "bucket": "b"}),
            "`args.bucket` is not an argument of diagnostics/bundle",
        ),
        (
            "diagnostics/bundle",
            "r-5",
            serde_json::json!({"url": url, "since": "1h", "until": "2h"}),
            "`args.since` is after `args.until`",
        ),
        ("diagnostics/bundle", "r-6", serde_json::json!({"url": "ftp://127.0.0.1/x"}), "the scheme is ftp"),
        ("config/set", "r-7", serde_json::json!({"key": "log.level", "value": "loud=="}), "log.level"),
        (
            "config/set",
            "r-8",
            serde_json::json!({"key": "telemetry.qos", "value": 1, "revert_after_s": 5}),
            "applies to log.level only",
        ),
        (
            "config/set",
            "r-9",
            serde_json::json!({"key": "log.level", "value": "debug", "revert_after_s": 0}),
            "use 1 to 604800",
        ),
    ] {
        let all = command(&running, cmd, id, args);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0]["state"], "rejected", "{all:?}");
        let error = all[0]["error"].as_str().unwrap();
        assert!(error.contains(why), "{id}: {error}");
    }

    // The errors alone: a small archive holding only ERROR lines.
    let all = command(&running, "logs/upload", "l-1", serde_json::json!({"url": url, "level": "error"}));
    let last = all.last().unwrap();
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["result"]["files"], serde_json::json!(["logs/agent.jsonl", "manifest.json"]));
    let got = std::mem::take(&mut server.lock().unwrap().bytes);
    let archive = running.dir.path().join("errors.tar.gz");
    std::fs::write(&archive, &got).unwrap();
    let out = running.dir.path().join("errors");
    untar(&archive, &out);
    let log = std::fs::read_to_string(out.join("logs/agent.jsonl")).unwrap();
    assert!(log.lines().all(|l| l.contains("\"level\":\"ERROR\"")), "only errors");
    let errors = log.lines().filter(|l| l.contains("\"target\":\"prefill\"")).count();
    assert_eq!(errors, lines.div_ceil(100));
    assert_eq!(last["result"]["log_lines"].as_u64(), Some(log.lines().count() as u64));

    // The whole log does not fit in 1 MB: a clear failure, nothing left behind.
    server.lock().unwrap().complete = false;
    let all = command(&running, "diagnostics/bundle", "l-2", serde_json::json!({"url": url}));
    let last = all.last().unwrap();
    assert_eq!(last["state"], "failed", "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("larger than 1048576 bytes (log.upload_max_mb)"), "{error}");
    assert!(server.lock().unwrap().bytes.is_empty(), "nothing was sent");
    assert!(
        std::fs::read_dir(running.dir.path().join("state/uploads")).unwrap().next().is_none(),
        "the partial archive is removed"
    );

    // Run-time log level: no debug lines at `info`, then debug for 2 s, then back.
    command(&running, "ping", "p-1", serde_json::json!({}));
    running.agent.wait_log("\"id\":\"p-1\"", secs(10));
    assert!(!logged(&running.agent, &["command received", "p-1"]), "no debug line at info");
    let all = command(
        &running,
        "config/set",
        "s-1",
        serde_json::json!({"key": "log.level", "value": "debug", "revert_after_s": 2}),
    );
    let last = all.last().unwrap();
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["result"]["previous"], "info");
    assert_eq!(last["result"]["revert_to"], "info");
    assert!(last["result"].get("persisted").is_none(), "a temporary level is not persisted");
    let events = &running.subs[1];
    events.wait_for("the change event", secs(10), |_, p| {
        p.contains("log-level-changed") && p.contains("\"level\":\"debug\"")
    });
    let status = command(&running, "status", "st-1", serde_json::json!({}));
    let log_status = &status.last().unwrap()["result"]["log"];
    assert_eq!(log_status["level"], "debug", "{log_status}");
    assert_eq!(log_status["revert_to"], "info", "{log_status}");
    assert!(log_status["revert_at"].is_string(), "{log_status}");
    command(&running, "ping", "p-2", serde_json::json!({}));
    running.agent.wait_log("\"id\":\"p-2\"", secs(10));
    assert!(logged(&running.agent, &["command received", "\"id\":\"p-2\""]), "debug lines at debug");
    assert!(
        std::fs::read_to_string(running.dir.path().join("state/log/agent.log"))
            .unwrap()
            .contains("command received"),
        "the own log has them too"
    );
    events.wait_for("the revert event", secs(20), |_, p| {
        p.contains("log-level-changed") && p.contains("\"reverted\":true")
    });
    command(&running, "ping", "p-3", serde_json::json!({}));
    running.agent.wait_log("\"id\":\"p-3\"", secs(10));
    assert!(!logged(&running.agent, &["command received", "\"id\":\"p-3\""]), "back at info");
    let status = command(&running, "status", "st-2", serde_json::json!({}));
    assert_eq!(status.last().unwrap()["result"]["log"]["level"], "info");
    running.agent.stop();
}

/// On the device, without the daemon: `edge-agent logs` prints the own log filtered
/// (JSON as stored, or a line per event for a person), refuses a bad level as a usage
/// error, and `edge-agent diagnostics bundle --out` writes an archive `tar` opens,
/// holding the documented files, no secret, and saying why there is no status.
#[test]
fn logs_and_diagnostics_bundle_work_on_the_device_without_the_daemon() {
    let dir = tempdir();
    let model = crate::common::mqtt_agent::flat_model(dir.path());
    let config = crate::common::mqtt_agent::write_config(dir.path(), 1, &model, "", &extra(dir.path(), ""));
    let lines = fill_log(&dir.path().join("state/log/agent.log"), 200_000, 10, 3);
    let config = config.to_str().unwrap();

    let out = run(&["logs", "--config", config, "--level", "error", "--json"], secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), lines.div_ceil(10));
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["level"], "ERROR");
    }
    let out = run(&["logs", "--config", config, "--level", "warn"], secs(30));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().next().unwrap().contains(" ERROR prefill: filler "), "{}", &text[..200]);
    let out = run(&["logs", "--config", config, "--level", "loud"], secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`--level`: `loud` is not a level"));

    let archive = dir.path().join("bundle.tar.gz");
    let out = run(
        &[
            "diagnostics",
            "bundle",
            "--config",
            config,
            "--out",
            archive.to_str().unwrap(),
            "--since",
            "1h",
            "--json",
        ],
        secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["bytes"].as_u64(), Some(std::fs::metadata(&archive).unwrap().len()));
    assert_eq!(result["log_lines"].as_u64(), Some(lines as u64));
    let extracted = dir.path().join("bundle");
    let mut names = untar(&archive, &extracted);
    names.sort();
    assert_eq!(names, BUNDLE_FILES);
    let status: Value =
        serde_json::from_slice(&std::fs::read(extracted.join("status.json")).unwrap()).unwrap();
    assert!(status["error"].as_str().unwrap().contains("no status"), "{status}");
    let doctor: Value =
        serde_json::from_slice(&std::fs::read(extracted.join("doctor.json")).unwrap()).unwrap();
    assert!(doctor["checks"].as_array().is_some_and(|c| !c.is_empty()), "{doctor}");
    for (name, bytes) in files_in(&extracted) {
        for secret in [PASSWORD, TOKEN] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in {name}");
        }
    }
}

/// Under systemd (`JOURNAL_STREAM` and `INVOCATION_ID` set) `logs/upload` takes the
/// journal: `journalctl -u UNIT -o json` for the time range, its entries turned into
/// log lines (a JSON line kept, a text line given its level), the level filter applied.
/// When journalctl fails, the own log is the source and the manifest says why.
#[test]
fn under_systemd_the_journal_is_the_source_and_the_own_log_the_fallback() {
    use std::os::unix::fs::PermissionsExt;
    let setup = MqttSetup::new();
    let bin = setup.dir().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = setup.dir().join("journalctl.args");
    let fail = setup.dir().join("journalctl.fail");
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let own = format!(
        r#"{{"timestamp":"{now}","level":"ERROR","message":"from the journal as json","target":"edge_agent"}}"#
    );
    let own = own.as_str();
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{calls}'\nif [ -e '{fail}' ]; then echo 'No journal files were found.' >&2; exit 1; fi\n\
         cat <<'EOF2'\n{}\n{}\n{}\nnot json at all\nEOF2\n",
        serde_json::json!({"MESSAGE": own, "__REALTIME_TIMESTAMP": now_us.to_string(), "PRIORITY": "6"}),
        serde_json::json!({"MESSAGE": "2026-12-07T10:00:01Z  WARN edge_agent: journal text warning", "__REALTIME_TIMESTAMP": now_us.to_string(), "PRIORITY": "6"}),
        serde_json::json!({"MESSAGE": "journal info line", "__REALTIME_TIMESTAMP": now_us.to_string(), "PRIORITY": "6"}),
        calls = calls.display(),
        fail = fail.display(),
    );
    std::fs::write(bin.join("journalctl"), script).unwrap();
    std::fs::set_permissions(bin.join("journalctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let setup = setup.env("PATH", &path).env("JOURNAL_STREAM", "8:12345").env("INVOCATION_ID", "0123abcd");
    let running = setup.start(["edge/dev1/cmd/#"]);
    let (port, server) = upload_server(0, None);
    let url = format!("http://127.0.0.1:{port}/ok");

    let last = command(
        &running,
        "logs/upload",
        "j-1",
        serde_json::json!({"url": url, "level": "warn", "since": "1h"}),
    )
    .pop()
    .unwrap();
    assert_eq!(last["state"], "succeeded", "{last}");
    let archive = running.dir.path().join("j1.tar.gz");
    std::fs::write(&archive, std::mem::take(&mut server.lock().unwrap().bytes)).unwrap();
    let out = running.dir.path().join("j1");
    untar(&archive, &out);
    let log = std::fs::read_to_string(out.join("logs/agent.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "the error and the warning, not the info line: {log}");
    assert_eq!(log.lines().next().unwrap(), own);
    assert!(log.contains("journal text warning") && log.contains("\"level\":\"WARN\""), "{log}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["log_source"].as_str().unwrap().starts_with("journal of "), "{manifest}");
    let args = std::fs::read_to_string(&calls).unwrap();
    assert!(args.contains("-u ") && args.contains("-o json") && args.contains("--since=@"), "{args}");

    // journalctl fails: the own log instead, and the manifest says why.
    std::fs::write(&fail, "").unwrap();
    server.lock().unwrap().complete = false;
    let last = command(&running, "logs/upload", "j-2", serde_json::json!({"url": url})).pop().unwrap();
    assert_eq!(last["state"], "succeeded", "{last}");
    let archive = running.dir.path().join("j2.tar.gz");
    std::fs::write(&archive, std::mem::take(&mut server.lock().unwrap().bytes)).unwrap();
    let out = running.dir.path().join("j2");
    untar(&archive, &out);
    let log = std::fs::read_to_string(out.join("logs/agent.jsonl")).unwrap();
    assert!(!log.contains("from the journal") && log.contains("\"target\":\"edge_agent"), "{log}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let source = manifest["log_source"].as_str().unwrap();
    assert!(source.contains("state/log") && source.contains("No journal files were found"), "{source}");
    running.agent.stop();
}

/// The local API's `POST /diagnostics/bundle` and `POST /logs/upload`: the same
/// arguments (named as a body names them) and the same archive, answered when the
/// upload is done; bad bodies are 400 before anything starts.
#[test]
fn the_local_api_uploads_a_bundle_and_refuses_bad_bodies() {
    let port = free_port();
    let setup = MqttSetup::new();
    let setup = {
        let e = extra(setup.dir(), "");
        setup.extra(&format!("{e}\n[api]\nlisten = \"127.0.0.1:{port}\"\n"))
    };
    let running = setup.start(["edge/dev1/cmd/#"]);
    let (server_port, server) = upload_server(1, None);
    let url = format!("http://127.0.0.1:{server_port}/ok?X-Signature=secret");
    let post = |path: &str, body: Value| {
        let r = http().post(&format!("http://127.0.0.1:{port}{path}")).send_json(&body).expect("POST");
        let code = r.status().as_u16();
        (code, r.into_body().read_json::<Value>().unwrap_or(Value::Null))
    };
    for (path, body, why) in [
        (
            "/diagnostics/bundle",
            serde_json::json!({"url": url, "bucket": 1}),
            "`bucket` is not an argument of diagnostics/bundle",
        ),
        ("/logs/upload", serde_json::json!({"url": url, "level": "loud"}), "`level`: `loud` is not a level"),
        ("/logs/upload", serde_json::json!({}), "logs/upload needs `url`"),
    ] {
        let (code, v) = post(path, body);
        assert_eq!(code, 400, "{v}");
        assert!(v.to_string().contains(why), "{path}: {v}");
    }
    let (code, v) = post("/diagnostics/bundle", serde_json::json!({"url": url, "since": "1h"}));
    assert_eq!(code, 200, "{v}");
    let got = server.lock().unwrap();
    assert!(got.complete && got.cuts_left == 0);
    assert_eq!(v["bytes"].as_u64(), Some(got.bytes.len() as u64));
    let digest = ring::digest::digest(&ring::digest::SHA256, &got.bytes);
    assert_eq!(v["sha256"].as_str(), Some(hex::encode(digest).as_str()));
    assert!(v["resumed"].as_u64().unwrap() >= 1, "{v}");
    let mut files: Vec<String> = serde_json::from_value(v["files"].clone()).unwrap();
    files.sort();
    assert_eq!(files, BUNDLE_FILES);
    drop(got);
    running.agent.stop();
}
