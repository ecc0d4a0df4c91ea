use serde_json::json;

use crate::common::*;

/// Resident and mapped bytes of the executable's read-only mappings that hold no private
/// copies (what `service::trim` releases), read from the process's smaps.
fn clean_readonly_exe_pages(pid: u32) -> (u64, u64) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe link");
    let exe = exe.to_string_lossy().to_string();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (mut rss, mut mapped) = (0u64, 0u64);
    // Per mapping: (is a clean read-only mapping of exe so far, its size, its Rss).
    let mut cur: Option<(bool, u64, u64)> = None;
    let mut close = |c: Option<(bool, u64, u64)>| {
        if let Some((true, size, r)) = c {
            mapped += size;
            rss += r;
        }
    };
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[0].contains('-') && !f[0].ends_with(':') {
            close(cur.take());
            let (a, b) = f[0].split_once('-').unwrap();
            let size = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            let path = line.splitn(6, ' ').nth(5).unwrap_or("").trim_start();
            cur = Some((path == exe && !f[1].contains('w') && f[1].ends_with('p'), size, 0));
        } else if let Some(c) = cur.as_mut() {
            let kb = || f.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
            match f.first() {
                Some(&"Rss:") => c.2 = kb(),
                Some(&"Anonymous:") if kb() > 0 => c.0 = false,
                _ => {}
            }
        }
    }
    close(cur);
    (rss, mapped)
}

/// Loading a model runs much of tract's code once; a serving daemon must not keep those
/// pages resident. In the dev build, over half of its executable's clean read-only pages
/// were resident at ready before the release and under a fifth after it (what the code
/// run since maps back, 64 KiB around each page fault); the test allows a third. After
/// the release, the daemon still answers inference requests.
#[test]
fn serving_daemon_keeps_few_start_up_pages_of_its_executable() {
    let body = format!("[[model]]\npath = \"{}\"\n", demo_model().display());
    let d = Daemon::start("serve", &body, "", &[]);
    let pid = d.child.0.id();
    let (rss, mapped) = clean_readonly_exe_pages(pid);
    assert!(mapped > 0, "found the executable's read-only mappings");
    assert!(
        rss * 3 < mapped,
        "ready daemon keeps {} of {} KiB of its executable's read-only pages resident",
        rss / 1024,
        mapped / 1024
    );

    let window: Vec<f32> = (0..256).map(|i| (i as f32 * 0.3).sin() * 0.1).collect();
    let request =
        json!({"inputs": [{"name": "vibration", "shape": [1, 256], "datatype": "FP32", "data": window}]});
    let mut r = http()
        .post(&d.url("/v2/models/vibration/infer"))
        .header("content-type", "application/json")
        .send(request.to_string().as_bytes())
        .expect("infer request");
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let out = floats(&answer["outputs"][0]["data"]);
    assert!(!out.is_empty() && out.iter().all(|v| v.is_finite()), "{answer}");
    let (status, _) = d.stop();
    assert!(status.success());
}
