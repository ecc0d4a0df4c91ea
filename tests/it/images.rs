//! The device images (`firmware-images/build`, run by tests/run) booted with their own
//! systemd under `systemd-nspawn`: the agent reaches READY under its real unit, joins
//! the host's Mosquitto with the settings the first-boot step took from the container's
//! command line (amd64) or from a config partition (arm64), answers `ping`, infers,
//! survives SIGKILL (restarted by systemd, nothing accepted is lost) and stops cleanly
//! when the container shuts down.
//!
//! The container shares the host's network, so the agent inside reaches the test broker
//! on 127.0.0.1. `--volatile=overlay` keeps the unpacked image untouched between runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::broker::{Broker, BrokerOptions};
use crate::common::*;

/// One emulated machine at a time: each takes both cores, and two at once would slow
/// every other test running beside them.
static ONE_MACHINE: Mutex<()> = Mutex::new(());

fn one_machine() -> std::sync::MutexGuard<'static, ()> {
    ONE_MACHINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The images tests/run built: `EDGE_TEST_IMAGES`, else target/images.
fn images_dir() -> PathBuf {
    std::env::var_os("EDGE_TEST_IMAGES").map(PathBuf::from).unwrap_or_else(|| root().join("target/images"))
}

/// The image's root file system, unpacked once from its tarball (again when the tarball
/// is newer than the unpacked tree).
fn unpacked(arch: &str) -> PathBuf {
    let dir = images_dir();
    let tarball = ["tar.zst", "tar"]
        .iter()
        .map(|ext| dir.join(format!("edge-agent-{arch}.rootfs.{ext}")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no {arch} image in {}: run tests/run (it runs firmware-images/build)", dir.display())
        });
    let tree = dir.join(format!("rootfs-{arch}"));
    let stamp = tree.join(".unpacked");
    let newer = |a: &Path, b: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        m(a) > m(b)
    };
    if !stamp.is_file() || newer(&tarball, &stamp) {
        if tree.exists() {
            let out =
                run_with(Command::new("rm").args(["-rf", "--one-file-system"]).arg(&tree), None, secs(120));
            assert!(out.status.success(), "remove {}: {}", tree.display(), stderr(&out));
        }
        std::fs::create_dir_all(&tree).unwrap();
        let mut tar = Command::new("tar");
        tar.args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&tree);
        if tarball.extension().is_some_and(|e| e == "zst") {
            tar.arg("-I").arg("zstd");
        }
        let out = run_with(&mut tar, None, secs(300));
        assert!(out.status.success(), "unpack {}: {}", tarball.display(), stderr(&out));
        std::fs::write(&stamp, b"").unwrap();
    }
    tree
}

/// A booted container; powered off (or killed) on drop.
struct Container {
    nspawn: Guard,
    console: Arc<Mutex<String>>,
    init: u32,
}

impl Container {
    /// Boots `tree` with `init_args` as its init's command line and `binds` (host dir,
    /// container path) bind-mounted read-only.
    fn boot(tree: &Path, init_args: &[String], binds: &[(PathBuf, &str)]) -> Container {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["-q", "--register=no", "--keep-unit", "--volatile=overlay", "--console=pipe", "-D"])
            .arg(tree)
            .env("SYSTEMD_LOG_LEVEL", "warning");
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        cmd.arg("-b").arg("--").args(init_args);
        let mut nspawn = Guard(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn systemd-nspawn"),
        );
        let console = Arc::new(Mutex::new(String::new()));
        read_into(nspawn.0.stdout.take().expect("stdout"), console.clone());
        read_into(nspawn.0.stderr.take().expect("stderr"), console.clone());
        // The container's init is the child of nspawn that is PID 1 in its own PID
        // namespace (`NSpid: <host pid> 1`); nspawn's first child is an intermediate
        // process in the host's namespace, gone once init runs.
        let start = Instant::now();
        let is_init = |pid: &str| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().find_map(|l| l.strip_prefix("NSpid:")).is_some_and(|ns| {
                let ids: Vec<&str> = ns.split_whitespace().collect();
                ids.len() >= 2 && ids.last() == Some(&"1")
            })
        };
        let init = loop {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", nspawn.0.id()))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().find(|p| is_init(p)).and_then(|p| p.parse().ok()) {
                break pid;
            }
            if let Ok(Some(status)) = nspawn.0.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", console.lock().unwrap());
            }
            assert!(start.elapsed() < secs(30), "no container init after 30 s:\n{}", console.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        };
        Container { nspawn, console, init }
    }

    fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Runs a command inside the container's namespaces (its own programs).
    fn exec(&self, args: &[&str], limit: Duration) -> std::process::Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.to_string(), "-m", "-u", "-i", "-n", "-p", "--"]).args(args);
        run_with(&mut cmd, None, limit)
    }

    /// `systemctl show` properties of a unit inside the container.
    fn unit(&self, unit: &str, props: &[&str]) -> std::collections::HashMap<String, String> {
        self.try_unit(unit, props)
            .unwrap_or_else(|e| panic!("systemctl show {unit}: {e}\n{}", self.console()))
    }

    /// The same, or systemctl's error (early in boot its manager is not up yet).
    fn try_unit(
        &self,
        unit: &str,
        props: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, String> {
        let mut args = vec!["systemctl", "show", unit];
        let joined = props.join(",");
        args.extend(["-p", &joined]);
        let out = self.exec(&args, secs(60));
        if !out.status.success() {
            return Err(stderr(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Waits until the unit is active/running (READY=1 received, for Type=notify).
    fn wait_active(&self, unit: &str, limit: Duration) -> std::collections::HashMap<String, String> {
        let start = Instant::now();
        loop {
            let props = [
                "ActiveState",
                "SubState",
                "NRestarts",
                "ExecMainStartTimestampMonotonic",
                "ActiveEnterTimestampMonotonic",
            ];
            let p = match self.try_unit(unit, &props) {
                Ok(p) => p,
                Err(e) => {
                    assert!(start.elapsed() < limit, "systemctl never answered: {e}\n{}", self.console());
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
            if p.get("ActiveState").map(String::as_str) == Some("active")
                && p.get("SubState").map(String::as_str) == Some("running")
            {
                return p;
            }
            assert!(
                p.get("ActiveState").map(String::as_str) != Some("failed"),
                "{unit} failed: {p:?}\n{}",
                self.journal(unit)
            );
            assert!(
                start.elapsed() < limit,
                "{unit} not active within {limit:?}: {p:?}\n{}\n{}",
                self.journal(unit),
                self.console()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit], secs(60));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl poweroff` inside; returns once nspawn has exited 0.
    fn poweroff(mut self, limit: Duration) -> String {
        let out = self.exec(&["systemctl", "poweroff"], secs(60));
        assert!(out.status.success(), "systemctl poweroff: {}", stderr(&out));
        let status = wait_timeout(&mut self.nspawn.0, limit).unwrap_or_else(|| {
            panic!("the container did not power off within {limit:?}:\n{}", self.console())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(status.success(), "systemd-nspawn exited {status}:\n{}", self.console());
        self.console()
    }
}

impl Drop for Container {
    /// Killing nspawn alone would leave the container running: its init is reparented.
    /// SIGKILL to a PID namespace's init ends every process in it.
    fn drop(&mut self) {
        if matches!(self.nspawn.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-KILL", &self.init.to_string()]).status();
        }
    }
}

fn micros(p: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    p.get(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key} in {p:?}"))
}

/// A sensor message: one golden window of the demo model, with an id.
fn window_message(golden: &Value, case: usize, id: u64) -> (String, String) {
    let c = &golden["cases"][case];
    (
        serde_json::json!({ "id": id, "data": c["input"] }).to_string(),
        c["label"].as_str().unwrap().to_string(),
    )
}

/// The two protections of the unit that systemd cannot set up when it runs under qemu-user
/// (a foreign-architecture container); the emulator is at fault, not the unit, and the
/// arm64 full boot under qemu-system (`full_boot`) runs the unit as shipped, both on.
///
/// `PrivateUsers=`: `unshare(CLONE_NEWUSER)` fails with EINVAL in a process with more than
/// one thread, and qemu-user always runs threads of its own beside the emulated program.
///
/// `PrivateIPC=`: systemd keeps the unit's IPC namespace in a socket pair and first looks
/// for one with a non-blocking `recvmsg` that carries no data buffer. The kernel answers
/// an empty socket with EAGAIN; qemu-user 7.2 (Debian 12's, the newest there is) answers
/// 0, which systemd 252 reads as "a message without the descriptor" and fails the start
/// with EIO at step NAMESPACE, on every restart.
const QEMU_USER_DROPIN: &str = "PrivateUsers=no\nPrivateIPC=no\n";

/// The host's architecture by its Debian name, as the images are named.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn boot_test(arch: &str, via_partition: bool, ready_limit: Duration) {
    let _machine = one_machine();
    let tree = unpacked(arch);
    let broker = Broker::start(BrokerOptions {
        users: vec![("test".into(), "test-pass".into())],
        allow_anonymous: true,
        ..BrokerOptions::default()
    });
    let device = format!("img-{arch}");
    let settings = [
        format!("edge_agent.device_id={device}"),
        "edge_agent.mqtt_host=127.0.0.1".to_string(),
        format!("edge_agent.mqtt_port={}", broker.port),
    ];
    let conf = tempdir();
    let (args, mut binds): (Vec<String>, Vec<(PathBuf, &str)>) = if via_partition {
        std::fs::write(conf.path().join("device.conf"), settings.join("\n") + "\n").unwrap();
        (vec![], vec![(conf.path().to_path_buf(), "/media/edge-config")])
    } else {
        (settings.to_vec(), vec![])
    };
    // A test-only drop-in. The container shares the host's network, where the image's API
    // port (8470) may be taken by another test's agent: it moves the API to a free port.
    // Under emulation it also turns off what qemu-user cannot run (QEMU_USER_DROPIN).
    let dropin = tempdir();
    let mut service = format!("[Service]\nEnvironment=EDGE_AGENT_API_LISTEN=127.0.0.1:{}\n", free_port());
    if arch != host_arch() {
        service.push_str(QEMU_USER_DROPIN);
    }
    std::fs::write(dropin.path().join("test.conf"), service).unwrap();
    binds.push((dropin.path().join("test.conf"), "/etc/systemd/system/edge-agent.service.d/test.conf"));
    let status = broker.subscribe("test", &format!("edge/{device}/status"));
    let replies = broker.subscribe("test", &format!("edge/{device}/cmd/+/reply"));
    let results = broker.subscribe("test", &format!("edge/{device}/results/#"));

    let c = Container::boot(&tree, &args, &binds);
    let p = c.wait_active("edge-agent.service", ready_limit);
    let ready_ms = (micros(&p, "ActiveEnterTimestampMonotonic")
        - micros(&p, "ExecMainStartTimestampMonotonic")) as f64
        / 1000.0;
    eprintln!("{arch}: edge-agent start to READY in {ready_ms:.0} ms inside the image");
    let firstboot = c.unit("edge-agent-firstboot.service", &["ActiveState", "Result"]);
    assert_eq!(
        firstboot["Result"],
        "success",
        "{firstboot:?}\n{}",
        c.journal("edge-agent-firstboot.service")
    );

    let online = |since: usize, limit: Duration| {
        let (_, s) = status.wait_for_after("online status", since, limit, |_, p| p.contains("\"online\""));
        serde_json::from_str::<Value>(&s).expect("status json")
    };
    let s = online(0, secs(60));
    assert_eq!(s["models"]["vibration"], "1", "{s}");

    broker.publish("test", &format!("edge/{device}/cmd/ping"), br#"{"id":"img-ping"}"#, 1, false);
    replies.wait_for("ping reply", secs(60), |_, p| p.contains("img-ping") && p.contains("\"succeeded\""));

    let golden = read_json(&demo_model().join("golden.json"));
    let (msg, label) = window_message(&golden, 0, 1);
    broker.publish("test", "sensors/pump-1/accel", msg.as_bytes(), 1, false);
    let (_, r) = results.wait_for("a result", secs(60), |_, p| p.contains("\"input_id\":1"));
    let r: Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["outputs"]["label"], label, "{r}");

    // SIGKILL: systemd restarts it (Restart=on-failure). A sensor message published while
    // it is down waits in its persistent session and is answered after the restart.
    let before = micros(&p, "NRestarts");
    let mark = status.messages().len();
    let out = c.exec(&["systemctl", "kill", "-s", "SIGKILL", "edge-agent.service"], secs(60));
    assert!(out.status.success(), "systemctl kill: {}", stderr(&out));
    let (msg, label) = window_message(&golden, 1, 2);
    broker.publish("test", "sensors/pump-2/accel", msg.as_bytes(), 1, false);
    let start = Instant::now();
    let p = loop {
        let p = c.unit("edge-agent.service", &["ActiveState", "SubState", "NRestarts"]);
        if micros(&p, "NRestarts") > before && p["SubState"] == "running" {
            break p;
        }
        assert!(
            start.elapsed() < ready_limit + secs(10),
            "not restarted after SIGKILL: {p:?}\n{}",
            c.journal("edge-agent.service")
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(micros(&p, "NRestarts"), before + 1, "{p:?}");
    online(mark, secs(60));
    let (_, r) = results.wait_for("the result of the message sent while it was down", secs(60), |_, p| {
        p.contains("\"input_id\":2")
    });
    let r: Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["outputs"]["label"], label, "{r}");
    let out = c.exec(&["ls", "/var/lib/edge-agent/spool"], secs(30));
    assert!(out.status.success(), "the spool directory is gone after SIGKILL: {}", stderr(&out));

    let journal = c.journal("edge-agent.service");
    let mark = status.messages().len();
    let console = c.poweroff(secs(120));
    status.wait_for_after("offline at shutdown", mark, secs(30), |_, p| p.contains("\"offline\""));
    assert!(!journal.contains("panicked"), "the agent panicked:\n{journal}");
    assert!(!console.contains("edge-agent.service: Failed"), "the agent's stop failed:\n{console}");

    let report = serde_json::json!({ "arch": arch, "start_to_ready_ms": ready_ms });
    std::fs::write(images_dir().join(format!("boot-{arch}.json")), report.to_string()).unwrap();
}

#[test]
fn amd64_image_boots_and_runs_the_agent_under_systemd() {
    boot_test("amd64", false, secs(60));
}

#[test]
fn arm64_image_boots_and_runs_the_agent_under_systemd() {
    // Everything in the container, systemd included, runs under qemu-user.
    boot_test("arm64", true, secs(240));
}

/// A full boot of the ext4 disk image under qemu-system (software emulation, no KVM), with
/// the kernel and initrd taken from the image and the per-device settings on the kernel
/// command line. The guest's only network is QEMU's user-mode stack with `restrict=on`:
/// nothing leaves the process except the one forwarded connection, from the guest's
/// 10.0.2.100:1883 to the test broker on the host's loopback.
fn full_boot(arch: &str, limit: Duration) {
    let _machine = one_machine();
    let dir = images_dir();
    let disk = dir.join(format!("edge-agent-{arch}.ext4"));
    assert!(disk.is_file(), "no {} image: run tests/run (it runs firmware-images/build)", disk.display());
    let broker = Broker::start(BrokerOptions {
        users: vec![("test".into(), "test-pass".into())],
        allow_anonymous: true,
        ..BrokerOptions::default()
    });
    let device = format!("vm-{arch}");
    let status = broker.subscribe("test", &format!("edge/{device}/status"));
    let replies = broker.subscribe("test", &format!("edge/{device}/cmd/+/reply"));
    let results = broker.subscribe("test", &format!("edge/{device}/results/#"));
    let monitor = tempdir();
    let monitor_sock = monitor.path().join("monitor.sock");

    let (program, machine, console): (&str, &[&str], &str) = match arch {
        "amd64" => ("qemu-system-x86_64", &[], "ttyS0"),
        // cortex-a53: `-cpu max` is far slower under TCG.
        _ => ("qemu-system-aarch64", &["-M", "virt", "-cpu", "cortex-a53"], "ttyAMA0"),
    };
    let mut cmd = Command::new(program);
    cmd.args(machine)
        .args(["-m", "768", "-smp", "2", "-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", monitor_sock.display()))
        .arg("-kernel")
        .arg(dir.join(format!("vmlinuz-{arch}")))
        .arg("-initrd")
        .arg(dir.join(format!("initrd.img-{arch}")))
        .arg("-append")
        .arg(format!(
            "root=/dev/vda rw console={console} edge_agent.device_id={device} \
             edge_agent.mqtt_host=10.0.2.100 edge_agent.mqtt_port=1883"
        ))
        // snapshot=on: writes go to a temporary overlay, the image stays as built.
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio,snapshot=on", disk.display()))
        .arg("-netdev")
        .arg(format!("user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:1883-tcp:127.0.0.1:{}", broker.port))
        .args(["-device", "virtio-net-pci,netdev=n0"]);
    let started = Instant::now();
    let mut vm = Guard(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-system"),
    );
    let serial = Arc::new(Mutex::new(String::new()));
    read_into(vm.0.stdout.take().expect("stdout"), serial.clone());
    read_into(vm.0.stderr.take().expect("stderr"), serial.clone());
    let console_text = || serial.lock().unwrap().clone();

    let (_, s) =
        status.wait_for_after("online status from the VM", 0, limit, |_, p| p.contains("\"online\""));
    let online_s = started.elapsed().as_secs_f64();
    let s: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(s["models"]["vibration"], "1", "{s}\n{}", console_text());
    eprintln!("{arch}: qemu-system start to the agent's online status in {online_s:.1} s");

    broker.publish("test", &format!("edge/{device}/cmd/ping"), br#"{"id":"vm-ping"}"#, 1, false);
    replies.wait_for("ping reply", secs(60), |_, p| p.contains("vm-ping") && p.contains("\"succeeded\""));
    let golden = read_json(&demo_model().join("golden.json"));
    let (msg, label) = window_message(&golden, 2, 7);
    broker.publish("test", "sensors/pump-9/accel", msg.as_bytes(), 1, false);
    let (_, r) = results.wait_for("a result from the VM", secs(60), |_, p| p.contains("\"input_id\":7"));
    let r: Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["outputs"]["label"], label, "{r}");

    // The power button (ACPI on amd64, the virt board's GPIO key on arm64): systemd
    // shuts down, the agent stops cleanly (it publishes offline) and QEMU exits. The
    // agent can be online before logind watches the key (or before udev has loaded
    // the gpio-keys driver on a fast host), and a press nobody watches is lost, so the
    // button is pressed again every 10 s until the offline status arrives.
    let mark = status.messages().len();
    let mut sock =
        std::os::unix::net::UnixStream::connect(&monitor_sock).expect("connect to the QEMU monitor");
    let pressed = Instant::now();
    let mut presses = 0;
    loop {
        std::io::Write::write_all(&mut sock, b"system_powerdown\n").expect("system_powerdown");
        presses += 1;
        let next = Instant::now() + secs(10);
        let offline = || status.messages().iter().skip(mark).any(|(_, p)| p.contains("\"offline\""));
        while Instant::now() < next && !offline() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if offline() {
            break;
        }
        assert!(
            pressed.elapsed() < secs(120),
            "no offline status within 120 s of {presses} power-button presses:\n{}",
            console_text()
        );
    }
    eprintln!("{arch}: offline after {presses} power-button press(es)");
    let exit = wait_timeout(&mut vm.0, secs(120))
        .unwrap_or_else(|| panic!("the VM did not power off within 120 s:\n{}", console_text()));
    assert!(exit.success(), "qemu exited {exit}:\n{}", console_text());
    let console = console_text();
    assert!(console.contains("reboot: Power down"), "no clean power-off on the console:\n{console}");
    assert!(!console.contains("Failed to start edge-agent"), "{console}");
    let report = serde_json::json!({ "arch": arch, "qemu_start_to_online_s": online_s });
    std::fs::write(dir.join(format!("qemu-{arch}.json")), report.to_string()).unwrap();
}

#[test]
fn amd64_disk_image_full_boot_under_qemu_system() {
    full_boot("amd64", secs(240));
}

#[test]
fn arm64_disk_image_full_boot_under_qemu_system() {
    full_boot("arm64", secs(400));
}
