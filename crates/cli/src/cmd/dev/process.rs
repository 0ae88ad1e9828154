//! The processes `drover dev` runs: starting them with their logs, waiting until they are
//! ready, restarting those that exit with a growing backoff, and stopping them all.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::FutureExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use super::CHILD_RUST_LOG;
use crate::error::CliError;

/// How long a process gets to stop after SIGTERM before SIGKILL.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the processes are checked.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// The wait before restarting a process the first time; it doubles with every restart.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest wait before restarting a process.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting is restarted after the first delay again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// A process `drover dev` runs, and what it takes to start it again.
pub(super) struct Process {
    pub(super) name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    pub(super) log: PathBuf,
    /// Started as the leader of a process group of its own, out of reach of the terminal's
    /// Ctrl-C: only `drover dev` signals it.
    pub(super) own_group: bool,
    /// `None` while it waits to be restarted.
    child: Option<Child>,
    started: Instant,
}

/// Finds a program: `$DROVER_<NAME>` first, then beside this executable, then in
/// `.tools/bin` of an enclosing checkout, then on `PATH`.
pub(super) fn find_program(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let exe = std::env::current_exe().ok()?;
    let here = exe.parent()?;
    let beside = here.join(name);
    if beside.is_file() {
        return Some(beside);
    }
    for dir in here.ancestors() {
        let tool = dir.join(".tools/bin").join(name);
        if tool.is_file() {
            return Some(tool);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Starts `program` as `name`, its stdout and stderr appended to `<logs>/<name>.log`.
pub(super) fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&'static str, String)],
    logs: &Path,
) -> Result<Process, CliError> {
    let mut process = Process::new(name, program, args, envs, logs);
    process.start()?;
    Ok(process)
}

impl Process {
    /// A process not started yet, logging to `<logs>/<name>.log`.
    pub(super) fn new(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&'static str, String)],
        logs: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log: logs.join(format!("{name}.log")),
            own_group: false,
            child: None,
            started: Instant::now(),
        }
    }

    /// Starts the program (again).
    pub(super) fn start(&mut self) -> Result<(), CliError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let err = file.try_clone()?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        if self.own_group {
            command.process_group(0);
        }
        command.env(
            "RUST_LOG",
            CHILD_RUST_LOG.get().map_or("info", String::as_str),
        );
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        let child = command.spawn().map_err(|source| CliError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The exit status, once the running child has exited; the process then waits to be
    /// restarted.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }
}

/// Waits until `ready` holds, failing if `process` exits first or time runs out.
pub(super) async fn await_ready<F, Fut>(
    process: &mut Process,
    timeout: Duration,
    mut ready: F,
) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some(status) = process.exited() {
            return Err(CliError::Other(format!(
                "{} exited ({status}) while starting; see {}",
                process.name,
                process.log.display()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Other(format!(
                "{} was not ready within {timeout:?}; see {}",
                process.name,
                process.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every process, newest first: SIGTERM, then SIGKILL after the grace period.
pub(super) async fn stop_all(processes: &mut Vec<Process>) {
    while let Some(process) = processes.pop() {
        // One waiting to be restarted has nothing to stop.
        let Some(mut child) = process.child else {
            continue;
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "{} did not stop in {STOP_GRACE:?}, killing it",
                process.name
            );
            let _ = child.kill().await;
        }
    }
}

/// When to restart one process, and how often it has been.
struct Restarts {
    delays: ExponentialBackoff,
    count: u32,
    /// When the process, now exited, is to be started again.
    due: Option<Instant>,
}

impl Restarts {
    pub(super) fn new() -> Self {
        Self {
            delays: Self::delays(),
            count: 0,
            due: None,
        }
    }

    /// 1 s, 2 s, 4 s, ... up to 30 s; no jitter, since it is one process on one machine.
    fn delays() -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(FIRST_RESTART_DELAY)
            .with_max_delay(MAX_RESTART_DELAY)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// Schedules the next restart of a process that ran for `ran`; returns the wait.
    fn schedule(&mut self, ran: Duration, now: Instant) -> Duration {
        if ran >= STABLE_AFTER {
            self.delays = Self::delays();
        }
        let delay = self.delays.next().unwrap_or(MAX_RESTART_DELAY);
        self.count += 1;
        self.due = Some(now + delay);
        delay
    }
}

/// Restarts every process that exits, after its backoff, until Ctrl-C or SIGTERM.
pub(super) async fn supervise(processes: &mut [Process]) -> Result<(), CliError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut restarts: Vec<Restarts> = processes.iter().map(|_| Restarts::new()).collect();
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            () = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
        // Ctrl-C in a terminal reaches the children too: their exits are not failures.
        if interrupt.recv().now_or_never().is_some() || terminate.recv().now_or_never().is_some() {
            return Ok(());
        }
        let now = Instant::now();
        for (process, restarts) in processes.iter_mut().zip(&mut restarts) {
            if let Some(status) = process.exited() {
                let delay = restarts.schedule(process.started.elapsed(), now);
                eprintln!(
                    "drover dev: {} exited ({status}); restarting in {} (restart {}); see {}",
                    process.name,
                    humantime::format_duration(delay),
                    restarts.count,
                    process.log.display()
                );
            }
            if process.child.is_none() && restarts.due.is_some_and(|due| due <= now) {
                restarts.due = None;
                match process.start() {
                    Ok(()) => eprintln!(
                        "drover dev: {} restarted (pid {})",
                        process.name,
                        process.pid().unwrap_or_default()
                    ),
                    Err(error) => {
                        let delay = restarts.schedule(Duration::ZERO, now);
                        eprintln!(
                            "drover dev: {} could not be restarted ({error}); trying again in {} \
                             (restart {})",
                            process.name,
                            humantime::format_duration(delay),
                            restarts.count
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_wait_longer_each_time_and_start_over_after_a_stable_run() {
        let now = Instant::now();
        let mut restarts = Restarts::new();
        let quick = Duration::from_secs(2);
        let delays: Vec<u64> = (0..7)
            .map(|_| restarts.schedule(quick, now).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(restarts.count, 7);
        assert_eq!(restarts.due, Some(now + MAX_RESTART_DELAY));
        assert_eq!(restarts.schedule(STABLE_AFTER, now), FIRST_RESTART_DELAY);
        assert_eq!(restarts.count, 8);
    }
}
