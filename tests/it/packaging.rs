//! The systemd unit (`configs/systemd/edge-agent.service`) and the Debian package that
//! cargo-deb builds from `[package.metadata.deb]` in `agent/Cargo.toml`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{bin, root, run_with, secs, tempdir};

/// The unit, relative to the repository root.
const UNIT: &str = "configs/systemd/edge-agent.service";

/// Ceiling for `systemd-analyze security --offline=yes`, in tenths: the tool prints the
/// exposure as 0.0 to 10.0 but `--threshold` takes an integer on a 0 to 100 scale.
/// The unit scores 1.1 with systemd 252 (Debian 12); "OK" ends at 4.0. 1.5 leaves room for
/// a newer systemd that weighs a few more settings, but dropping any one of the major
/// protections (PrivateUsers=, the system call filter, ProtectSystem=...) fails.
const MAX_EXPOSURE_TENTHS: u32 = 15;

/// The first executable called `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A system tool the tests need, with a hint when it is missing.
fn tool(name: &str, package: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed: run tests/run, which installs the Debian package {package}")
    })
}

/// cargo-deb as installed by tests/run (target/tools/bin), else from PATH.
fn cargo_deb() -> PathBuf {
    let pinned = root().join("target/tools/bin/cargo-deb");
    if pinned.is_file() {
        return pinned;
    }
    on_path("cargo-deb").unwrap_or_else(|| {
        panic!(
            "cargo-deb is not installed (looked in {} and PATH): run tests/run \
             (or tests/run --prepare-only), which installs the pinned version",
            pinned.display()
        )
    })
}

/// Runs a tool to completion within `limit` seconds, capturing its output.
fn exec(cmd: &mut Command, limit: u64) -> Output {
    run_with(cmd, None, secs(limit))
}

/// Standard output and error of a command, for assertion messages.
fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let analyze = tool("systemd-analyze", "systemd");
    let text = std::fs::read_to_string(root().join(UNIT)).expect("read the unit");
    let shipped = "ExecStart=/usr/bin/edge-agent ";
    assert!(text.contains(shipped), "the unit no longer starts {shipped:?}:\n{text}");
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let text = text.replace(shipped, &format!("ExecStart={} ", bin().display()));
    let dir = tempdir();
    let unit = dir.path().join("edge-agent.service");
    std::fs::write(&unit, text).expect("write the unit");

    let out = exec(Command::new(analyze).arg("verify").arg(&unit), 60);
    // systemd only warns (and still exits 0) on unknown keys or bad values: any output
    // at all is a problem.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify {} is not clean:\n{}",
        unit.display(),
        show(&out)
    );
}

#[test]
fn unit_hardening_score_is_in_the_ok_band() {
    let analyze = tool("systemd-analyze", "systemd");
    let unit = root().join(UNIT);
    let out = exec(
        Command::new(analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--threshold={MAX_EXPOSURE_TENTHS}"))
            .arg(&unit),
        60,
    );
    let text = stdout(&out);
    let overall = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("(no overall line)");
    assert!(
        out.status.success(),
        "{}: exposure above {}.{} ({overall}); the failing checks are marked ✗:\n{}",
        unit.display(),
        MAX_EXPOSURE_TENTHS / 10,
        MAX_EXPOSURE_TENTHS % 10,
        show(&out)
    );
    assert!(overall.contains(" OK") || overall.contains(" SAFE"), "not in the OK band: {overall}");
}

/// The cargo profile the binary under test was built with, from its directory
/// (`target/debug` is the `dev` profile, other profiles use their own name).
fn profile_of(binary: &Path) -> String {
    let dir = binary
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .expect("target/PROFILE/edge-agent");
    if dir == "debug" { "dev".into() } else { dir.into() }
}

#[test]
fn deb_package_contains_binary_unit_config_and_user_setup() {
    let cargo_deb = cargo_deb();
    let dpkg_deb = tool("dpkg-deb", "dpkg");
    let dpkg = tool("dpkg", "dpkg");
    let out_dir = tempdir();

    // Package the binary the tests already built: --no-build keeps cargo-deb from starting
    // a release build, --profile points it at this build's output directory (cargo-deb
    // warns that it is meant for release profiles; the warning is expected), and
    // --no-strip packages the file as is instead of writing a stripped copy, and --fast
    // compresses lightly (the dev binary is large; xz at full strength takes ~20 s).
    let profile = profile_of(&bin());
    let out = exec(
        Command::new(&cargo_deb)
            .current_dir(root())
            .arg("--manifest-path")
            .arg(root().join("agent/Cargo.toml"))
            .args(["--profile", &profile, "--no-build", "--no-strip", "--fast", "--offline", "--output"])
            .arg(out_dir.path()),
        180,
    );
    assert!(out.status.success(), "cargo-deb failed:\n{}", show(&out));
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir.path())
        .expect("read output dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {}: {debs:?}\n{}", out_dir.path().display(), show(&out));
    let deb = &debs[0];

    // Contents: the paths, and the binary is the one under test (same size: not rebuilt).
    let out = exec(Command::new(&dpkg_deb).arg("--contents").arg(deb), 60);
    assert!(out.status.success(), "dpkg-deb --contents:\n{}", show(&out));
    let contents = stdout(&out);
    for path in [
        "./usr/bin/edge-agent",
        "./usr/lib/systemd/system/edge-agent.service",
        "./etc/edge-agent/agent.toml",
        "./usr/share/edge-agent/models/vibration/model.toml",
        "./usr/share/edge-agent/models/vibration/model.onnx",
        "./usr/share/doc/edge-agent/README.md",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} is not in the package:\n{contents}"
        );
    }
    let size = std::fs::metadata(bin()).expect("stat the binary").len().to_string();
    let bin_line = contents.lines().find(|l| l.ends_with(" ./usr/bin/edge-agent")).expect("binary line");
    assert!(
        bin_line.split_whitespace().any(|field| field == size),
        "the packaged binary is not the {size}-byte binary under test ({}): {bin_line}",
        bin().display()
    );
    assert!(
        contents.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" ./usr/bin/edge-agent")),
        "the binary is not mode 755:\n{contents}"
    );

    // Control data.
    let out = exec(Command::new(&dpkg_deb).arg("--info").arg(deb), 60);
    assert!(out.status.success(), "dpkg-deb --info:\n{}", show(&out));
    let info = stdout(&out);
    let arch = stdout(&exec(Command::new(&dpkg).arg("--print-architecture"), 30)).trim().to_string();
    let field = |name: &str| -> String {
        let prefix = format!(" {name}: ");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} field in the control file:\n{info}"))
            .to_string()
    };
    assert_eq!(field("Package"), "edge-agent");
    assert_eq!(field("Architecture"), arch);
    let depends = field("Depends");
    // The shipping builds pack their relocations, which glibc reads from 2.36 on; the
    // binary's requirement names no symbol, so dpkg-shlibdeps alone would write less.
    assert!(depends.contains("libc6 (>= 2.36)"), "Depends lacks libc6 (>= 2.36): {depends}");
    assert!(depends.contains("adduser"), "Depends lacks adduser (the postinst uses it): {depends}");

    let member = |name: &str| -> String {
        let out = exec(Command::new(&dpkg_deb).arg("--info").arg(deb).arg(name), 60);
        assert!(out.status.success(), "the package has no {name}:\n{}\n{info}", show(&out));
        stdout(&out)
    };
    let conffiles = member("conffiles");
    assert!(
        conffiles.lines().any(|l| l.trim() == "/etc/edge-agent/agent.toml"),
        "agent.toml is not a conffile:\n{conffiles}"
    );

    // Maintainer scripts: the user is created, cargo-deb filled in the systemd
    // fragments, and every script is valid shell.
    let postinst = member("postinst");
    assert!(
        postinst.contains("adduser --system") && postinst.contains("edge-agent"),
        "the postinst does not create the edge-agent user:\n{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable edge-agent.service")
            && postinst.contains("deb-systemd-invoke $_dh_action edge-agent.service"),
        "the postinst does not enable and start the unit:\n{postinst}"
    );
    let prerm = member("prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop edge-agent.service"),
        "the prerm does not stop the unit:\n{prerm}"
    );
    let postrm = member("postrm");
    assert!(
        postrm.contains("rm -rf /var/lib/edge-agent")
            && postrm.contains("deb-systemd-helper purge edge-agent.service"),
        "the postrm does not purge the unit and the state directory:\n{postrm}"
    );
    for (name, script) in [("postinst", &postinst), ("prerm", &prerm), ("postrm", &postrm)] {
        assert!(!script.contains("#DEBHELPER#"), "{name}: #DEBHELPER# was not replaced:\n{script}");
        let out = run_with(Command::new("sh").arg("-n"), Some(script.as_bytes()), secs(30));
        assert!(out.status.success(), "{name} is not valid shell:\n{}\n{script}", show(&out));
    }
}
