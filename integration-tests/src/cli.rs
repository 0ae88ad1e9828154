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
