//! Running the `drover` command the cargo build made, against a stack.

use std::path::PathBuf;
use std::process::Output;

use drover_testkit::bin_dir;

/// The `drover` binary in the cargo target directory.
pub fn drover_binary() -> PathBuf {
    bin_dir().unwrap().join("drover")
}

/// Runs `drover` with `args` against the NATS server at `url` and waits for it.
pub async fn drover(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(drover_binary())
        .args(args)
        .env("DROVER_NATS_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("drover runs")
}

/// What the command wrote on stdout.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every process, other than this test and `except`, whose command line or environment
/// mentions `needle`: the command line names a stack's state directory (nats-server) and the
/// environment its NATS URL (the services), so this finds what a `drover dev` left behind.
pub fn processes_mentioning(needle: &str, except: Option<u32>) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Some(pid) == except {
            continue;
        }
        let mentions = ["cmdline", "environ"].iter().any(|file| {
            std::fs::read(entry.path().join(file))
                .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
        });
        if mentions {
            found.push(pid);
        }
    }
    found
}

/// Starts `drover dev --demo` with its state in `state` and NATS on `port` (admin ports and
/// the console's port free), its stdout and stderr piped; killed when dropped.
pub fn start_dev(state: &std::path::Path, port: u16) -> tokio::process::Child {
    start_dev_with(state, port, &[])
}

/// [`start_dev`] with more arguments (`--secure`, say).
pub fn start_dev_with(state: &std::path::Path, port: u16, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(drover_binary())
        .args(["dev", "--state-dir"])
        .arg(state)
        .args([
            "--nats-port",
            &port.to_string(),
            "--admin-port",
            "0",
            "--console-port",
            "0",
            "--demo",
        ])
        .args(extra)
        .env(
            "DROVER_NATS_SERVER",
            drover_testkit::nats_server_binary().unwrap(),
        )
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Everything a stream of lines printed so far (a child's stdout, say), collected in the
/// background.
pub fn collect(
    reader: impl tokio::io::AsyncBufRead + Unpin + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    use tokio::io::AsyncBufReadExt as _;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&text);
    tokio::spawn(async move {
        let mut lines = reader.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = sink
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}
