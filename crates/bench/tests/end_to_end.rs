//! The end-to-end measurement's short form: `drover-bench --only drover,drover-drain` with
//! a few hundred runs against the built service binaries (`cargo build --bins` first), and a
//! report that holds together.
//!
//! Only soundness is checked: every run was measured, the backlog drained, the writes and
//! messages per run were counted and broken down. No speed is asserted, and the peers
//! (Dramatiq, Celery) are not run here.

use std::process::Command;

use serde_json::Value;

fn number(value: &Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no {pointer} in {value}"))
}

#[test]
fn a_short_run_reports_runs_the_drain_and_writes_and_messages_per_run() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_drover-bench"))
        .args([
            "--only",
            "drover,drover-drain",
            "--runs",
            "200",
            "--in-flight",
            "1,8",
            "--workers",
            "2",
            "--capacity",
            "8",
            "--count-runs",
            "100",
            "--drain",
            "300",
            "--drain-submitters",
            "32",
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("drover-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "drover-bench failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for heading in ["## Draining a backlog", "## Writes and messages per run"] {
        assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
    }

    let json = std::fs::read_dir(out.path())
        .expect("the results directory")
        .map(|entry| entry.expect("an entry").path())
        .find(|path| path.extension().is_some_and(|ext| ext == "json"))
        .expect("a JSON report");
    // A run of some parts only does not replace the latest results.
    assert!(!out.path().join("latest.json").exists());
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the report")).expect("JSON");

    let drover = report["drover"].as_array().expect("drover figures");
    assert_eq!(drover.len(), 2, "{drover:?}");
    for (figures, in_flight) in drover.iter().zip([1.0, 8.0]) {
        assert_eq!(number(figures, "/completion/in_flight"), in_flight);
        assert_eq!(number(figures, "/completion/count"), 200.0);

        // A run writes at least its record (PENDING … SUCCEEDED) and its queue message.
        let writes = &figures["writes"];
        assert!(number(writes, "/per_run") >= 2.0, "{writes}");
        for stream in ["KV_DROVER_RUNS", "DROVER_QUEUE"] {
            assert!(
                number(writes, &format!("/by_stream/{stream}")) >= 1.0,
                "{writes}"
            );
        }
        let by_stream: f64 = writes["by_stream"]
            .as_object()
            .expect("writes by stream")
            .values()
            .filter_map(Value::as_f64)
            .sum();
        assert!(
            (by_stream - number(writes, "/per_run")).abs() < 1e-6,
            "{writes}"
        );

        let messages = &figures["messages"];
        assert_eq!(number(messages, "/runs"), 100.0, "{messages}");
        let classes = messages["by_class"].as_object().expect("messages by class");
        // At least one event per run and its record's writes are seen, with IDs folded.
        assert!(
            number(messages, "/by_class/v1.run.events.*/per_run") >= 1.0,
            "{messages}"
        );
        assert!(
            number(messages, "/by_class/$KV.DROVER_RUNS.*/per_run") >= 1.0,
            "{messages}"
        );
        let summed: f64 = classes.values().map(|c| number(c, "/per_run")).sum();
        assert!(
            (summed - number(messages, "/per_run")).abs() < 1e-6,
            "{messages}"
        );
        assert!(number(messages, "/per_run") > number(writes, "/per_run"));
    }

    let drain = &report["drain"]["drover"];
    assert_eq!(number(drain, "/drain/count"), 300.0, "{drain}");
    assert!(number(drain, "/drain/per_second") > 0.0, "{drain}");
    assert!(
        number(drain, "/drain/submit_seconds") <= number(drain, "/drain/seconds"),
        "{drain}"
    );
    assert!(number(drain, "/writes/per_run") >= 2.0, "{drain}");
    // The peers were not asked for.
    assert!(report["drain"]["dramatiq"].is_null());
    assert!(report["dramatiq"].as_array().is_some_and(Vec::is_empty));
}
