//! `drover pool run` as a child process of the test, and its requests over NATS.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject;
use drover_protocol::{
    ErrorPayload, GroupName, PoolId, PoolRestart, PoolRestarting, PoolScale, PoolScaled, PoolState,
    PoolStatus, RestartMode,
};
use drover_testkit::{call, patient, wait_for, Stack};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::{group, settled_at, PoolConfig, STARTED};
use crate::cli::{drover_binary, processes_mentioning};

/// Sends a signal to a process (not to its group).
pub fn signal_pid(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap());
    match kill(pid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(errno) => panic!("send {signal} to {pid}: {errno}"),
    }
}

/// A `drover pool run` process, its output in files; killed on drop with every process
/// it started.
pub struct PoolRun {
    /// The poolID.
    pub id: PoolId,
    child: Child,
    status: Option<ExitStatus>,
    client: Client,
    url: String,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    // Removed last, after every process is dead.
    _dir: TempDir,
}

impl std::fmt::Debug for PoolRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRun")
            .field("id", &self.id)
            .field("pid", &self.child.id())
            .field("config", &self.config_path)
            .finish()
    }
}

impl PoolRun {
    /// Writes `config` to a file and starts `drover pool run <file> --nats-url <stack>`
    /// with `extra` arguments, without waiting for anything.
    pub async fn spawn(stack: &Stack, config: &PoolConfig, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("drover-pool-{}-", config.id()))
            .tempdir()
            .unwrap();
        let config_path = dir.path().join("pool.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let url = stack.nats_url();
        let child = Command::new(drover_binary())
            .arg("pool")
            .arg("run")
            .arg(&config_path)
            .args(["--nats-url", &url])
            .args(extra)
            .env_remove("DROVER_NATS_URL")
            .env("RUST_LOG", "info,async_nats=warn")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap())
            // Its own process group, so that Drop can kill it and whatever it forked at once.
            .process_group(0)
            .spawn()
            .expect("drover pool run starts");
        Self {
            id: config.id().clone(),
            child,
            status: None,
            client: stack.client().await,
            url,
            config_path,
            stdout_path,
            stderr_path,
            _dir: dir,
        }
    }

    /// Starts the pool and waits until every group's target is RUNNING and nothing else is alive.
    pub async fn start(stack: &Stack, config: &PoolConfig) -> Self {
        let pool = Self::spawn(stack, config, &[]).await;
        pool.wait_for_state("every group settled at its target", STARTED, |state| {
            state
                .groups
                .iter()
                .all(|group| settled_at(group, group.target))
        })
        .await;
        pool
    }

    /// The `drover pool run` process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The NATS URL the pool was given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A client of the stack's NATS.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends a signal to `drover pool run`.
    pub fn signal(&mut self, signal: Signal) {
        if self.exit_status().is_none() {
            signal_pid(self.pid(), signal);
        }
    }

    /// Its exit status, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for it to exit.
    ///
    /// # Panics
    ///
    /// When it has not exited within `timeout` (scaled by `DROVER_TEST_PATIENCE`).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + patient(timeout);
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "drover pool run did not exit within {:?}\n{}",
                patient(timeout),
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for it to exit with `code`, and checks that none of its processes is left.
    pub async fn wait_ended(&mut self, code: i32, timeout: Duration) {
        let status = self.wait_exit(timeout).await;
        assert_eq!(
            status.code(),
            Some(code),
            "{status}\n{}",
            self.output_tail()
        );
        let marker = format!("DROVER_POOL_ID={}\0", self.id);
        assert!(
            processes_mentioning(&marker, None).is_empty(),
            "processes left behind\n{}",
            self.output_tail()
        );
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    /// Everything it printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// The last lines of its stdout and stderr, for failure messages.
    pub fn output_tail(&self) -> String {
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        format!(
            "---- pool {} stdout ----\n{}\n---- pool {} stderr ----\n{}\n---- end of pool output ----",
            self.id,
            tail(self.stdout()),
            self.id,
            tail(self.stderr())
        )
    }

    /// `v1.pool.<poolID>.status`.
    pub async fn status(&self) -> Result<PoolState, ErrorPayload> {
        call(
            &self.client,
            subject::pool::status(&self.id),
            &PoolStatus {},
        )
        .await
    }

    /// `v1.pool.<poolID>.scale` with `target` and/or `delta` as given.
    pub async fn scale(
        &self,
        group: &str,
        target: Option<u32>,
        delta: Option<i64>,
    ) -> Result<PoolScaled, ErrorPayload> {
        let request = PoolScale {
            group: GroupName::parse(group).unwrap(),
            target,
            delta,
        };
        call(&self.client, subject::pool::scale(&self.id), &request).await
    }

    /// `v1.pool.<poolID>.restart` of one group, or of all.
    pub async fn restart(
        &self,
        mode: RestartMode,
        group: Option<&str>,
    ) -> Result<PoolRestarting, ErrorPayload> {
        let request = PoolRestart {
            mode,
            group: group.map(|name| GroupName::parse(name).unwrap()),
        };
        call(&self.client, subject::pool::restart(&self.id), &request).await
    }

    /// Polls the status until `done` holds for it, and returns that state.
    ///
    /// # Panics
    ///
    /// When it does not within `timeout` (scaled), with the last state and the pool's output.
    pub async fn wait_for_state(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&PoolState) -> bool,
    ) -> PoolState {
        let last = Mutex::new(None);
        let found = wait_for(what, timeout, || {
            let status = self.status();
            let last = &last;
            let done = &done;
            async move {
                let state = status.await.ok()?;
                let hit = done(&state);
                *last.lock().unwrap() = Some(state.clone());
                hit.then_some(state)
            }
        })
        .await;
        match found {
            Ok(state) => state,
            Err(error) => panic!(
                "{error}\nlast status: {:#?}\n{}",
                last.lock().unwrap(),
                self.output_tail()
            ),
        }
    }

    /// Waits until `group` has settled at `n` processes (see [`settled_at`]).
    pub async fn wait_settled(&self, group_name: &str, n: u32, timeout: Duration) -> PoolState {
        self.wait_for_state(
            &format!("group {group_name} settled at {n} RUNNING processes"),
            timeout,
            |state| settled_at(group(state, group_name), n),
        )
        .await
    }

    /// Samples the status in the background until [`Sampler::stop`].
    pub fn sample(&self) -> Sampler {
        Sampler::start(&self.client, &self.id)
    }
}

impl Drop for PoolRun {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if self.exit_status().is_none() {
            // The whole process group: `drover pool run` and anything it forked that stayed
            // in it. Its workers lead groups of their own and are found below.
            let group = Pid::from_raw(-i32::try_from(self.child.id()).unwrap());
            let _ = kill(group, Signal::SIGKILL);
            let _ = self.child.wait();
        }
        for pid in processes_mentioning(&format!("DROVER_POOL_ID={}\0", self.id), None) {
            let pid = i32::try_from(pid).unwrap();
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if panicking || std::env::var_os("DROVER_TEST_DUMP_LOGS").is_some() {
            eprintln!("{}", self.output_tail());
        }
    }
}

/// A pool's status, sampled in the background.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<PoolState>>,
}

impl Sampler {
    /// Starts sampling `v1.pool.<pool>.status` back to back.
    pub fn start(client: &Client, pool: &PoolId) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = Arc::clone(&stop);
            let client = client.clone();
            let subject = subject::pool::status(pool);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    if let Ok(state) =
                        call::<_, PoolState>(&client, subject.clone(), &PoolStatus {}).await
                    {
                        samples.push(state);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                samples
            })
        };
        Self { stop, task }
    }

    /// Stops sampling and returns every sample, oldest first.
    pub async fn stop(self) -> Vec<PoolState> {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap()
    }
}
