//! The console benchmark's short form: `drover-bench console` with a few thousand stored
//! runs against the built binaries (`cargo build --workspace --bins` first, the console's
//! among them), and a report that holds together.
//!
//! Only soundness is checked: every page was fetched and answered 200, and the catch-up and
//! the console's memory were measured. No time is asserted.

use std::process::Command;

use serde_json::Value;

/// Every page the benchmark times.
const PAGES: [&str; 10] = [
    "overview",
    "runs",
    "runs_failed",
    "runs_routine",
    "runs_page_2",
    "run_with_children",
    "workers",
    "worker",
    "api_runs",
    "api_workers",
];

fn number(value: &Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no {pointer} in {value}"))
}

#[test]
fn a_short_console_bench_times_every_page() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_drover-bench"))
        .args([
            "console",
            "--runs",
            "3000",
            "--workers",
            "50",
            "--samples",
            "3",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("drover-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "drover-bench console failed:\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains("# Drover console"), "{stdout}");
    assert!(
        out.path().join("console.md").is_file(),
        "no console.md in {:?}",
        out.path()
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("console.json")).expect("console.json"),
    )
    .expect("JSON");

    assert_eq!(number(&report, "/seeded/runs"), 3000.0);
    assert!(number(&report, "/seeded/runs_bucket_messages") >= 3000.0);
    assert_eq!(number(&report, "/seeded/workers"), 50.0);
    assert!(number(&report, "/seeded/failed") > 0.0);
    assert!(number(&report, "/seeded/children") > 0.0);
    assert!(number(&report, "/catch_up/seconds") > 0.0);
    assert!(number(&report, "/memory/after_catch_up_bytes") > 0.0);
    assert!(number(&report, "/memory/after_samples_bytes") > 0.0);

    let pages = report["pages"].as_array().expect("pages");
    for name in PAGES {
        let page = pages
            .iter()
            .find(|page| page["page"] == name)
            .unwrap_or_else(|| panic!("no {name} among {pages:?}"));
        assert_eq!(page["status"], 200, "{page}");
        assert!(page.get("error").is_none(), "{page}");
        assert_eq!(number(page, "/samples"), 3.0, "{page}");
        // Three warm-up requests, then the three timed.
        assert_eq!(number(page, "/ok"), 6.0, "{page}");
        for figure in ["/p50_ms", "/p95_ms", "/max_ms"] {
            assert!(number(page, figure) > 0.0, "{figure} of {page}");
        }
        assert!(number(page, "/bytes") > 0.0, "{page}");
    }
}
