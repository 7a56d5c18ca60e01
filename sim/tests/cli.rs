//! The binary's surface: clear errors on bad input, JSON output, and a small end-to-end run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_headroom-sim"))
}

fn temp(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("headroom-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn a_bad_csv_names_the_line_and_column_and_exits_64() {
    let p = temp("bad.csv", "unix,arrivals\n0,1\n10,2\n20,lots\n");
    let out = sim().arg("--trace").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv:4: column 2: arrivals \"lots\""),
        "{err}"
    );
}

#[test]
fn bad_flags_are_all_reported_at_once() {
    let p = temp("ok.csv", "0,1\n10,2\n");
    let out = sim()
        .arg("--trace")
        .arg(&p)
        .args([
            "--boot-min",
            "100",
            "--boot-max",
            "50",
            "--spot-share",
            "2",
            "--scale-down-after=-5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--boot-min")
            && err.contains("--spot-share")
            && err.contains("--scale-down-after"),
        "{err}"
    );
    let out = sim()
        .arg("--trace")
        .arg(&p)
        .args(["--schedule", "0 8 * * * for 0m = 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("window 1"));
}

#[test]
fn a_user_trace_runs_every_policy_and_prints_json() {
    // Two hours: quiet, then a 20-minute burst of one job per second.
    let mut body = String::from("unix_seconds,arrivals\n");
    for i in 0..720 {
        let t = 1_715_558_400 + i * 10;
        let a = if (360..480).contains(&i) { 10 } else { 0 };
        body.push_str(&format!("{t},{a}\n"));
    }
    let p = temp("burst.csv", &body);
    let out_dir = std::env::temp_dir().join(format!("headroom-sim-out-{}", std::process::id()));
    let out = sim()
        .arg("--trace")
        .arg(&p)
        .args([
            "--service-seconds",
            "20",
            "--concurrency",
            "2",
            "--json",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 7);
    let get = |p: &str| rows.iter().find(|r| r["policy"] == p).unwrap();
    // Jobs conserved across policies (within what is left unserved at the end).
    assert!((get("oracle")["jobs"].as_f64().unwrap() - 1200.0).abs() < 50.0);
    // The oracle knows the burst is coming; KEDA waits for nodes.
    assert!(get("oracle")["wait_p95_s"].as_f64().unwrap() < 5.0);
    assert!(get("keda-defaults")["wait_p95_s"].as_f64().unwrap() > 200.0);
    assert!(out_dir.join("results.csv").exists());
    let svg = std::fs::read_to_string(out_dir.join("burst.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("headroom"));
}

#[test]
fn backtest_reports_the_forecaster_against_seasonal_naive() {
    let out = sim().arg("backtest").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("naive (yesterday)") && text.contains("nyc_taxi"),
        "{text}"
    );
}
