//! Process log files: tails and dumps for diagnosing failures.

use std::path::Path;

/// Lines of each process log printed when a handle is dropped during a panic.
pub(crate) const DUMP_LINES: usize = 50;

/// The last `lines` lines of the file, or a note saying why it could not be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// Whether logs should be dumped on drop: during a panic, or when `DROVER_TEST_DUMP_LOGS` is set.
pub(crate) fn should_dump() -> bool {
    std::thread::panicking() || std::env::var_os("DROVER_TEST_DUMP_LOGS").is_some()
}

/// Whether temporary directories should be kept (`DROVER_TEST_KEEP_DIRS`).
pub(crate) fn keep_dirs() -> bool {
    std::env::var_os("DROVER_TEST_KEEP_DIRS").is_some()
}

/// Prints the tail of a process log to stderr under a header naming the process.
pub(crate) fn dump(label: &str, path: &Path) {
    eprintln!(
        "---- last {DUMP_LINES} lines of {label} log ({}) ----\n{}\n---- end of {label} log ----",
        path.display(),
        tail(path, DUMP_LINES)
    );
}
