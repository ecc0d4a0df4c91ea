//! The registry against python-tuf (`tuf` from PyPI, the reference implementation of The
//! Update Framework), both ways: python-tuf's ngclient refreshes and downloads from a
//! registry made by `edge-agent registry`, and the agent accepts a repository written with
//! python-tuf's metadata API (root rotation, 2-of-2 targets, a delegated role).

use serde_json::{Value, json};
use std::process::{Command, Stdio};

use crate::common::registry::*;
use crate::common::*;

fn python() -> std::path::PathBuf {
    cache().join("venv/bin/python")
}

#[test]
fn ngclient_refreshes_and_downloads_from_a_registry_made_by_the_cli() {
    let p = Publisher::new(2);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 25, &["--groups", "line-3"]);
    // A rotation (new root key, old and new sign) and a fresh timestamp on top.
    p.keygen("root-new");
    let (repo, keys) = (p.repo().display().to_string(), p.keys().display().to_string());
    let new_root = p.keys().join("root-new.key.pub").display().to_string();
    p.cli(&["rotate-root", "--repo", &repo, "--keys", &keys, "--root-key", &new_root]);
    p.cli(&["timestamp", "--repo", &repo, "--keys", &keys]);
    let out = run(&["registry", "verify", &repo, "--json"], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // Served by `edge-agent registry serve` itself, on a port it picks.
    let mut server = Guard(
        Command::new(bin())
            .args(["registry", "serve", &repo, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.0.stdout.take().unwrap()), &mut line)
        .unwrap();
    let url = line.trim().trim_end_matches('/').to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");

    let client = work.path().join("client");
    let out = Command::new(python())
        .arg(root().join("tests/fixtures/tuf_ngclient_fetch.py"))
        .arg(&url)
        .arg(p.root_v1())
        .arg(client.join("metadata"))
        .arg(client.join("downloads"))
        .arg("stable/vibration/2.tar")
        .output()
        .unwrap();
    assert!(out.status.success(), "ngclient failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["roles"]["root"]["version"], 2, "{summary:#}");
    let got = &summary["downloaded"][0];
    let package = std::fs::read(p.repo().join(p.target_path("2"))).unwrap();
    assert_eq!(got["sha256"], json!(edge_tuf::metadata::sha256_hex(&package)), "{summary:#}");
    assert_eq!(got["custom"]["rollout"]["percent"], 25);
    assert_eq!(got["custom"]["groups"], json!(["line-3"]));
    drop(server);
}

#[test]
fn the_agent_accepts_a_repository_written_with_python_tuf() {
    let work = tempdir();
    let repo = python_tuf_repo(work.path());
    let trusted = repo.join("trusted-root.json");

    let out = run(
        &["registry", "verify", repo.to_str().unwrap(), "--root", trusted.to_str().unwrap(), "--json"],
        secs(60),
    );
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["targets"], 2, "{report}");
    let roles: Vec<&str> =
        report["roles"].as_array().unwrap().iter().filter_map(|r| r["role"].as_str()).collect();
    assert!(roles.contains(&"vibration"), "the delegated role is followed: {report}");

    // A device following it: the root rotation is followed, and the version listed by
    // the delegated role is offered; its package is placeholder bytes, which the device
    // downloads, checks against the signed hash, and refuses to unpack.
    let reg = Served::start(&repo);
    let ota = ota_section(&reg.url, &trusted, "");
    let d = Daemon::start(
        "serve",
        &format!("[[model]]\npath = \"{}\"\n\n{ota}", demo_model().display()),
        "",
        &[],
    );
    let (code, v) = post(&d, "/ota/check", json!({}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["registry"]["root"], 2, "{v}");
    assert_eq!(v["models"]["vibration"]["offered"], json!(["2"]), "{v}");
    // Whether this device is in the 25% cohort or not, it can be told to take it.
    let (code, v) = post(&d, "/ota/apply", json!({"model": "vibration", "version": "2"}));
    assert_eq!(code, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("package"), "{v}");
    assert_eq!(serving(&d), "1");
    let _ = d.stop();
}

#[test]
fn a_bad_delegated_role_from_the_server_does_not_stick() {
    let work = tempdir();
    let repo = python_tuf_repo(work.path());
    let reg = Served::start(&repo);
    // The delegated role comes back as something else once (a cache, a proxy, a bad
    // mirror): its signatures do not verify.
    let good = std::fs::read(repo.join("metadata/1.vibration.json")).unwrap();
    let mut forged: Value = serde_json::from_slice(&good).unwrap();
    forged["signed"]["targets"] = json!({});
    reg.faults.set(
        "metadata/1.vibration.json",
        edge_agent::ota::serve::Fault::Replace(forged.to_string().into_bytes()),
    );
    let ota = ota_section(&reg.url, &repo.join("trusted-root.json"), "");
    let d = Daemon::start(
        "serve",
        &format!("[[model]]\npath = \"{}\"\n\n{ota}", demo_model().display()),
        "",
        &[],
    );
    let (code, v) = post(&d, "/ota/check", json!({}));
    assert_eq!(code, 422, "{v}");
    assert!(v.to_string().contains("vibration"), "the refusal names the role: {v}");
    // Once the server answers right, the next check follows the role again.
    reg.faults.clear();
    let (code, v) = post(&d, "/ota/check", json!({}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["models"]["vibration"]["offered"], json!(["2"]), "{v}");
    let _ = d.stop();
}

/// A repository written by python-tuf (`tests/fixtures/tuf_make_repo.py`) under `dir`.
fn python_tuf_repo(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = dir.join("pyrepo");
    let out = Command::new(python())
        .arg(root().join("tests/fixtures/tuf_make_repo.py"))
        .arg(&repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "make_repo.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    repo
}
