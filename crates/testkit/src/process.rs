//! A workspace binary (a Drover service) run as a child process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::logfile;
use crate::paths::bin_dir;
use crate::supervised::Supervised;

/// A running workspace binary, killed on drop; its stdout and stderr go to a log file that
/// is kept across restarts, with a marker line for every start.
pub struct ServiceProcess {
    name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    process: Supervised,
    starts: u32,
    log_path: PathBuf,
    // Dropped last, after the process is dead.
    dir: Option<TempDir>,
}

impl std::fmt::Debug for ServiceProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProcess")
            .field("name", &self.name)
            .field("pid", &self.process.pid())
            .field("log_path", &self.log_path)
            .finish()
    }
}

impl ServiceProcess {
    /// Starts the binary `name` from [`bin_dir`](crate::bin_dir) with extra environment
    /// variables and arguments. It does not wait for the process to be ready.
    pub fn start(name: &str, env: &[(String, String)], args: &[String]) -> anyhow::Result<Self> {
        let dir = bin_dir()?;
        let binary = dir.join(name);
        if !binary.is_file() {
            bail!(
                "binary {name} not found in {}: run `cargo build --workspace --bins` first",
                dir.display()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!("drover-{name}-"))
            .tempdir()
            .context("create a temporary directory for the process log")?;
        let log_path = tmp.path().join(format!("{name}.log"));
        let process = spawn(&binary, env, args, &log_path, name, 1)?;
        Ok(Self {
            name: name.to_string(),
            binary,
            env: env.to_vec(),
            args: args.to_vec(),
            process,
            starts: 1,
            log_path,
            dir: Some(tmp),
        })
    }

    /// The binary's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the current process (of the last one, once it has exited).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the current process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The exit status of the current process, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }

    /// How many times the process has been started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM; use [`ServiceProcess::wait_exit`] to wait for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGTERM)
    }

    /// Waits up to `timeout` (scaled by `DROVER_TEST_PATIENCE`) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(crate::patient(timeout)).await
    }

    /// Kills the current process if it runs, then starts a new one with the same binary,
    /// environment and arguments.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.starts += 1;
        self.process = spawn(
            &self.binary,
            &self.env,
            &self.args,
            &self.log_path,
            &self.name,
            self.starts,
        )?;
        Ok(())
    }

    /// The log file with the stdout and stderr of every start.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log file as text.
    pub fn log_contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        logfile::tail(&self.log_path, lines)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.process.kill();
        if logfile::should_dump() {
            logfile::dump(&self.name, &self.log_path);
        }
        if logfile::keep_dirs() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "testkit: kept {} directory {}",
                    self.name,
                    dir.keep().display()
                );
            }
        }
    }
}

fn spawn(
    binary: &Path,
    env: &[(String, String)],
    args: &[String],
    log_path: &Path,
    name: &str,
    start: u32,
) -> anyhow::Result<Supervised> {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let marker = format!("start #{start} of {name} {}", args_display(&args))
        .trim_end()
        .to_string();
    Supervised::spawn(binary, &args, env, log_path, &marker)
}

fn args_display(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
