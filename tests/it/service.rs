//! The test plays systemd: it owns the NOTIFY_SOCKET datagram socket, sets WATCHDOG_USEC
//! and reads what the agent says, and when.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// Messages received on the notify socket, with when they arrived.
#[derive(Clone)]
struct Systemd {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    path: std::path::PathBuf,
}

impl Systemd {
    fn listen(dir: &std::path::Path) -> Systemd {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        Systemd { messages, path }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits for a message containing `needle`; returns when it came.
    fn wait_for(&self, needle: &str, limit: Duration) -> Instant {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some((t, _)) = self.all().into_iter().find(|(_, m)| m.contains(needle)) {
                return t;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "no `{needle}` within {limit:?}; got {:?}",
            self.all().iter().map(|(_, m)| m).collect::<Vec<_>>()
        );
    }

    fn count_after(&self, needle: &str, after: Instant) -> usize {
        self.all().iter().filter(|(t, m)| *t > after && m.contains(needle)).count()
    }
}

fn start(systemd: &Systemd, watchdog_us: u64, fault: bool) -> Daemon {
    let body = format!("[[model]]\npath = \"{}\"\n", demo_model().display());
    let mut env = vec![
        ("NOTIFY_SOCKET", systemd.path.to_str().unwrap().to_string()),
        ("WATCHDOG_USEC", watchdog_us.to_string()),
    ];
    if fault {
        env.push(("EDGE_TEST_FAULT", "wedge-worker".to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Daemon::start("run", &body, "", &env)
}

fn demo_request(d: &Daemon) -> u16 {
    let body = serde_json::json!({"inputs": [{"name": "vibration", "shape": [1, 256], "datatype": "FP32", "data": vec![0.1f32; 256]}]});
    http()
        .post(&d.url("/v2/models/vibration/infer"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn ready_only_when_serving_then_watchdog_then_stopping() {
    let dir = tempdir();
    let systemd = Systemd::listen(dir.path());
    let d = start(&systemd, 400_000, false);
    let ready_at = systemd.wait_for("READY=1", secs(30));
    let messages = systemd.all();
    let first_status = messages.iter().position(|(_, m)| m.contains("STATUS=loading models"));
    let ready = messages.iter().position(|(_, m)| m.contains("READY=1")).unwrap();
    assert!(first_status.is_some_and(|s| s < ready), "a STATUS line before READY: {messages:?}");
    assert!(messages[ready].1.contains("STATUS=serving 1 model(s)"), "{}", messages[ready].1);
    // READY means the API answers: (Daemon::start already saw ready; check inference too).
    assert_eq!(demo_request(&d), 200);
    // Pings every half period (0.2 s) while healthy.
    std::thread::sleep(Duration::from_millis(1500));
    let pings = systemd.count_after("WATCHDOG=1", ready_at);
    assert!((4..=12).contains(&pings), "{pings} pings in 1.5 s with a 0.4 s watchdog");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    systemd.wait_for("STOPPING=1", secs(5));
}

#[test]
fn watchdog_pings_stop_when_a_worker_is_wedged() {
    let dir = tempdir();
    let systemd = Systemd::listen(dir.path());
    let d = start(&systemd, 400_000, true);
    let ready_at = systemd.wait_for("READY=1", secs(30));
    std::thread::sleep(Duration::from_millis(600));
    assert!(systemd.count_after("WATCHDOG=1", ready_at) >= 2, "pings while healthy");
    // This request wedges the only worker for good.
    let url = d.url("/v2/models/vibration/infer");
    std::thread::spawn(move || {
        let body = serde_json::json!({"inputs": [{"name": "vibration", "shape": [1, 256], "datatype": "FP32", "data": vec![0.1f32; 256]}]});
        let _ = ureq::post(&url).header("content-type", "application/json").send(body.to_string().as_bytes());
    });
    // Within one period (0.4 s) plus a tick the pings stop, and stay stopped.
    std::thread::sleep(Duration::from_millis(1000));
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(systemd.count_after("WATCHDOG=1", quiet_from), 0, "no pings while a worker is wedged");
    systemd.wait_for("STATUS=stalled", secs(1));
    // Shutdown still completes (the wedged worker is left behind, not waited for forever).
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("engine workers still busy"), "{log}");
}

#[test]
fn sighup_reloads_models_and_refuses_a_bad_config() {
    let dir = tempdir();
    let systemd = Systemd::listen(dir.path());
    let d = start(&systemd, 0, false);
    systemd.wait_for("READY=1", secs(30));
    assert_eq!(http().get(&d.url("/v2/models/ppocr-cls")).call().unwrap().status(), 404);

    // Add a model, change the deadline and the thread count.
    let text = std::fs::read_to_string(&d.config).unwrap();
    let added = format!(
        "{text}\n[[model]]\npath = \"{}\"\n\n[engine]\nthreads = 2\ndeadline_ms = 2500\n\n[log]\nlevel = \"debug\"\n",
        model("ppocr-cls").display()
    );
    std::fs::write(&d.config, &added).unwrap();
    let before = Instant::now();
    signal(&d.child.0, "HUP");
    systemd.wait_for("STATUS=reloaded", secs(30));
    let reload =
        systemd.all().into_iter().filter(|(t, _)| *t > before).map(|(_, m)| m).collect::<Vec<_>>().join("\n");
    assert!(reload.contains("RELOADING=1"), "{reload}");
    assert!(reload.contains("model ppocr-cls added (2.0)"), "{reload}");
    assert!(reload.contains("engine.deadline_ms 1000 -> 2500"), "{reload}");
    assert!(reload.contains("needs a restart for: engine"), "{reload}");
    // The log level applies in place, no restart needed for it.
    assert!(reload.contains("log.level info -> debug") && !reload.contains("engine, log"), "{reload}");
    let status: serde_json::Value =
        http().get(&d.url("/status")).call().unwrap().into_body().read_json().unwrap();
    assert_eq!(status["log"]["level"], "debug", "{status}");
    assert_eq!(http().get(&d.url("/v2/models/ppocr-cls")).call().unwrap().status(), 200);

    // A broken config is refused; the running one stays.
    std::fs::write(&d.config, added.replace("threads = 2", "threads = 0")).unwrap();
    let before = Instant::now();
    signal(&d.child.0, "HUP");
    systemd.wait_for("STATUS=reload refused", secs(30));
    assert!(systemd.all().iter().any(|(t, m)| *t > before && m.contains("READY=1")));
    assert_eq!(http().get(&d.url("/v2/models/ppocr-cls")).call().unwrap().status(), 200);
    assert_eq!(demo_request(&d), 200);
    let (status, _) = d.stop();
    assert!(status.success());
}

/// SIGTERM under load: requests already taken are answered in full; afterwards the
/// agent refuses connections instead of dropping requests halfway.
#[test]
fn sigterm_under_load_answers_every_accepted_request() {
    let dir = tempdir();
    let systemd = Systemd::listen(dir.path());
    let d = start(&systemd, 0, false);
    systemd.wait_for("READY=1", secs(30));
    let url = d.url("/v2/models/vibration/infer");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let body = serde_json::json!({"inputs": [{"name": "vibration", "shape": [1, 256], "datatype": "FP32", "data": vec![0.1f32; 256]}]}).to_string();
                let agent = http();
                let (mut ok, mut other, mut refused) = (0u32, Vec::new(), 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match agent.post(&url).header("content-type", "application/json").send(body.as_bytes()) {
                        Ok(mut r) if r.status() == 200 => {
                            let v: serde_json::Value = r.body_mut().read_json().expect("a whole JSON answer");
                            assert_eq!(v["model_name"], "vibration");
                            ok += 1;
                        }
                        Ok(r) => other.push(r.status().as_u16()),
                        Err(_) => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                (ok, other, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let (status, log) = d.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.success(), "{log}");
    let mut total_ok = 0;
    for c in clients {
        let (ok, other, _refused) = c.join().expect("client");
        total_ok += ok;
        // 503 is allowed: a request that arrives while the engine drains is told to retry.
        assert!(other.iter().all(|s| *s == 503), "only 200 or 503 while stopping: {other:?}");
    }
    assert!(total_ok > 20, "requests were served before the stop ({total_ok})");
    let summary = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "model summary")
        .expect("summary");
    assert!(summary["ok"].as_u64().unwrap() >= u64::from(total_ok), "{summary}");
}
