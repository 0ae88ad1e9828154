//! One child process with its output appended to a log file.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

/// A spawned child. It is not killed on drop: the owners decide when and how to dump logs.
pub(crate) struct Supervised {
    child: Child,
    status: Option<ExitStatus>,
}

impl Supervised {
    /// Appends a marker line to the log, then spawns `program` with stdout and stderr
    /// appended to the same log.
    pub(crate) fn spawn(
        program: &Path,
        args: &[OsString],
        env: &[(String, String)],
        log_path: &Path,
        marker: &str,
    ) -> anyhow::Result<Self> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log file {}", log_path.display()))?;
        writeln!(log, "==== testkit: {marker} ====")
            .with_context(|| format!("write to {}", log_path.display()))?;
        let stderr = log.try_clone().context("duplicate the log file handle")?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        Ok(Self {
            child,
            status: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `signal` unless the process has already been reaped (its pid may be reused).
    pub(crate) fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if self.try_status().is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(errno).with_context(|| format!("send {signal} to pid {pid}")),
        }
    }

    /// SIGKILL, then reap. Idempotent.
    pub(crate) fn kill(&mut self) {
        if self.status.is_none() {
            // Fails only when the process is already gone; wait() reaps it either way.
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Waits up to `timeout` (not scaled) for the process to exit on its own.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut interval = Duration::from_millis(5);
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 2).min(Duration::from_millis(50));
        }
    }
}
