//! The soak's short form: `drover-bench soak` for a few seconds against the built service
//! binaries (`cargo build --bins` first), and a report that holds together.
//!
//! Only soundness is checked here: every run SUCCEEDED, what was stored and logged was
//! measured, the workers' runs add up. Neither speed nor log volume is asserted.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `drover-bench soak` with `args` and returns its JSON report.
fn soak(out: &Path, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_drover-bench"))
        .arg("soak")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("drover-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "drover-bench soak failed:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("# Drover soak"), "{stdout}");
    // A progress line for every sample at least.
    assert!(stderr.matches("submitted").count() >= 3, "{stderr}");

    let written: Vec<_> = std::fs::read_dir(out)
        .expect("the results directory")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    let json = written
        .iter()
        .find(|path| path.extension().is_some_and(|ext| ext == "json"))
        .unwrap_or_else(|| panic!("no JSON among {written:?}"));
    let stem = json.file_stem().expect("a stem").to_string_lossy();
    assert!(stem.starts_with("soak-"), "{stem}");
    assert!(
        json.with_extension("md").is_file(),
        "no Markdown next to {json:?}"
    );
    serde_json::from_slice(&std::fs::read(json).expect("the report")).expect("JSON")
}

fn number(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {pointer} in the report"))
}

#[test]
fn a_short_soak_reports_every_run_and_what_it_stored_and_logged() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let report = soak(
        out.path(),
        &[
            "--rate",
            "100",
            "--duration",
            "5s",
            "--workers",
            "2",
            "--sample-every",
            "1s",
        ],
    );

    let submitted = number(&report, "/runs/submitted");
    assert_eq!(submitted, 500);
    assert_eq!(number(&report, "/runs/succeeded"), submitted);
    assert_eq!(number(&report, "/runs/not_succeeded"), 0);

    let workers = report["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{workers:?}");
    let runs: u64 = workers.iter().map(|w| number(w, "/runs")).sum();
    assert_eq!(runs, submitted, "{workers:?}");
    let shares: f64 = workers.iter().filter_map(|w| w["share"].as_f64()).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{workers:?}");

    let storage = report["storage"].as_array().expect("storage");
    let runs_bucket = storage
        .iter()
        .find(|s| s["name"] == "KV_DROVER_RUNS")
        .expect("KV_DROVER_RUNS is reported");
    assert_eq!(number(runs_bucket, "/messages"), submitted, "{runs_bucket}");
    assert!(number(runs_bucket, "/bytes") > 0, "{runs_bucket}");
    assert!(
        runs_bucket["bytes_per_run"]
            .as_f64()
            .is_some_and(|b| b > 0.0),
        "{runs_bucket}"
    );
    for name in ["DROVER_QUEUE", "DROVER_LOGS", "KV_DROVER_WORKERS"] {
        assert!(
            storage.iter().any(|s| s["name"] == name),
            "{name} missing from {storage:?}"
        );
    }
    assert!(number(&report, "/disk/end_bytes") > 0);

    // Every service logs its start-up at the default level.
    let services = report["logs"]["services"].as_array().expect("service logs");
    assert_eq!(services.len(), 4, "{services:?}");
    for service in services {
        assert!(number(service, "/total/bytes") > 0, "{service}");
        assert!(number(service, "/total/lines") > 0, "{service}");
    }

    let processes = report["processes"].as_array().expect("processes");
    let nats = processes
        .iter()
        .find(|p| p["process"] == "nats-server")
        .expect("nats-server is measured");
    assert!(number(nats, "/end_rss_bytes") > 0, "{nats}");
    assert_eq!(processes.len(), 6, "{processes:?}");

    let samples = report["samples"].as_array().expect("samples");
    assert!(samples.len() >= 3, "{samples:?}");
    let last = samples.last().expect("a last sample");
    assert_eq!(number(last, "/ended"), submitted);
}
