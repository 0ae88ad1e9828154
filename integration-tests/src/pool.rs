//! `drover pool` in tests: a pool configuration written to a file, the `drover pool run`
//! process with its output in files, its NATS requests (status, scale, restart), the three
//! kinds of worker the examples offer, and a steady stream of runs to put it under load.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    ErrorPayload, GroupName, GroupState, PoolId, PoolRestart, PoolRestarting, PoolScale,
    PoolScaled, PoolState, PoolStatus, ProcessPhase, ProcessState, RegistryGet, RegistryList,
    RestartMode, RunId, RunRecord, RunSpec, RunStatus, WorkerId, WorkerRecord,
};
use drover_testkit::{bin_dir, call, list_workers, patient, wait_for, workspace_root, Stack};
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::cli::{drover_binary, processes_mentioning};
use crate::runs::{get, try_submit};

/// Backoff after an unexpected exit in the test groups: short, so that restarts are quick.
pub const RESTART_DELAY: &str = "200ms";
/// Grace between SIGTERM and SIGKILL in the test groups.
pub const STOP_GRACE: &str = "5s";
/// How long a test group's process may take to register and be ready.
pub const START_TIMEOUT: &str = "20s";

/// How long a pool may take to bring its processes up (registered and ready).
pub const STARTED: Duration = Duration::from_secs(40);
/// How long a pool may take to stop, graceful stops included.
pub const STOPPED: Duration = Duration::from_secs(30);
/// How long a restarted or replaced process may take to be running again.
pub const REPLACED: Duration = Duration::from_secs(30);
/// How long the runs of a test may take to end once submitted.
pub const RUNS_END: Duration = Duration::from_secs(60);

/// A stack for pool tests: NATS and the four services, with heartbeats slow enough that a
/// busy machine does not make a live worker look lost.
pub async fn pool_stack() -> Stack {
    Stack::builder()
        .heartbeat_interval_ms(250)
        .lost_after_ms(2500)
        .with_all_services()
        .start()
        .await
        .expect("stack starts")
}

/// The Python of the project's virtual environment (`.tools/venv`, made by `scripts/test`).
///
/// # Panics
///
/// When it is missing: the Python workers' tests cannot run without it.
pub fn venv_python() -> PathBuf {
    let python = workspace_root().join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test once to create the virtual environment",
        python.display()
    );
    python
}

/// The Rust SDK's example worker, built next to the other workspace binaries.
pub fn example_worker_binary() -> PathBuf {
    let binary = bin_dir().unwrap().join("drover-example-worker");
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        binary.display()
    );
    binary
}

/// The worker programs a pool runs in these tests: one per way of writing a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// `examples/rust-worker` (`drover-example-worker`), on the Rust SDK.
    RustSdk,
    /// `examples/python-worker/worker.py`, on the Python SDK.
    PythonSdk,
    /// `examples/plain-python/worker.py`: nats-py and the protocol, no SDK.
    NoSdk,
}

impl WorkerKind {
    /// A group named `name` that runs this worker, with the tests' short settings.
    pub fn group(self, name: &str) -> Group {
        let root = workspace_root();
        match self {
            WorkerKind::RustSdk => {
                Group::new(name, example_worker_binary()).env("RUST_LOG", "info")
            }
            WorkerKind::PythonSdk => Group::new(name, venv_python())
                .arg(root.join("examples/python-worker/worker.py"))
                // The checkout's SDK, ahead of whichever one the venv has installed.
                .env(
                    "PYTHONPATH",
                    root.join("sdk/python/src").to_string_lossy().as_ref(),
                )
                .env("PYTHONUNBUFFERED", "1"),
            WorkerKind::NoSdk => Group::new(name, venv_python())
                .arg(root.join("examples/plain-python/worker.py"))
                .env("PYTHONUNBUFFERED", "1"),
        }
    }

    /// A quick run of one of its routines.
    pub fn quick_run(self) -> RunSpec {
        let (routine, params) = match self {
            WorkerKind::RustSdk => ("demo.greet", json!({"name": "pool"})),
            WorkerKind::PythonSdk => ("py.echo", json!({"n": 1})),
            WorkerKind::NoSdk => ("plain.upper", json!({"text": "pool"})),
        };
        let mut spec = crate::runs::spec(routine);
        spec.params = params;
        spec
    }

    /// A run that takes `ms` milliseconds, where the worker has such a routine.
    pub fn slow_run(self, ms: u64) -> Option<RunSpec> {
        (self == WorkerKind::RustSdk).then(|| slow_rust_run(ms))
    }

    /// Text of a line that a process of this kind prints once it has started as `worker`.
    pub fn printed_line(self, worker: &str) -> String {
        match self {
            WorkerKind::RustSdk => "starting the example worker".to_owned(),
            WorkerKind::PythonSdk => format!("drover: worker {worker} registered"),
            WorkerKind::NoSdk => format!("ready {worker}"),
        }
    }
}

/// `demo.thumbnail` of the Rust example worker, working for `ms` milliseconds.
pub fn slow_rust_run(ms: u64) -> RunSpec {
    let mut spec = crate::runs::spec("demo.thumbnail");
    spec.params = json!({"image": "pool.png", "width": 64, "ms": ms});
    spec
}

/// Limits `spec` to the workers of one pool group (labels `pool` and `group`).
pub fn in_group(mut spec: RunSpec, pool: &PoolId, group: &str) -> RunSpec {
    spec.conditions
        .labels
        .insert("pool".to_owned(), pool.to_string());
    spec.conditions
        .labels
        .insert("group".to_owned(), group.to_owned());
    spec
}

/// A TOML string, quoted and escaped (a JSON string is a valid TOML basic string).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// One `[groups.<name>]` of a pool configuration.
#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    settings: Vec<(String, String)>,
    autoscale: Vec<(String, String)>,
}

impl Group {
    /// A group that runs `command`, with the tests' short restart delay, stop grace and
    /// start timeout.
    pub fn new(name: &str, command: impl AsRef<Path>) -> Self {
        Self {
            name: name.to_owned(),
            command: command.as_ref().to_string_lossy().into_owned(),
            args: Vec::new(),
            env: Vec::new(),
            settings: Vec::new(),
            autoscale: Vec::new(),
        }
        .set_str("restart_delay", RESTART_DELAY)
        .set_str("stop_grace", STOP_GRACE)
        .set_str("start_timeout", START_TIMEOUT)
    }

    /// A group whose processes run `sh -c script`.
    pub fn shell(name: &str, script: &str) -> Self {
        Self::new(name, "/bin/sh").arg("-c").arg(script)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl AsRef<Path>) -> Self {
        self.args.push(arg.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Adds an environment variable to the group's `env`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets `key` to a TOML value written as is (a number, an array), replacing an earlier one.
    pub fn set(mut self, key: &str, raw: impl Display) -> Self {
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.to_owned(), raw.to_string()));
        self
    }

    /// Sets `key` to a string (a duration, a size, a policy), replacing an earlier one.
    pub fn set_str(self, key: &str, value: &str) -> Self {
        self.set(key, quoted(value))
    }

    /// Sets `key` of the group's `autoscale` table to a TOML value written as is.
    pub fn autoscale(mut self, key: &str, raw: impl Display) -> Self {
        self.autoscale.push((key.to_owned(), raw.to_string()));
        self
    }

    fn to_toml(&self) -> String {
        let mut text = format!(
            "[groups.{}]\ncommand = {}\n",
            self.name,
            quoted(&self.command)
        );
        let args: Vec<String> = self.args.iter().map(|arg| quoted(arg)).collect();
        text.push_str(&format!("args = [{}]\n", args.join(", ")));
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(key, value)| format!("{key} = {}", quoted(value)))
            .collect();
        text.push_str(&format!("env = {{ {} }}\n", env.join(", ")));
        for (key, value) in &self.settings {
            text.push_str(&format!("{key} = {value}\n"));
        }
        if !self.autoscale.is_empty() {
            text.push_str(&format!("\n[groups.{}.autoscale]\n", self.name));
            for (key, value) in &self.autoscale {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    }
}

/// A pool configuration file's content.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    id: PoolId,
    settings: Vec<(String, String)>,
    groups: Vec<Group>,
}

impl PoolConfig {
    /// A pool whose poolID is `prefix` and a random suffix, so that no two tests (nor the
    /// processes a failed one may leave behind) share one.
    pub fn new(prefix: &str) -> Self {
        use rand::Rng;
        let suffix: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(6)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        Self {
            id: PoolId::parse(format!("{prefix}{suffix}")).unwrap(),
            settings: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// The poolID.
    pub fn id(&self) -> &PoolId {
        &self.id
    }

    /// Sets a top-level key to a TOML value written as is.
    pub fn set(mut self, key: &str, raw: impl Display) -> Self {
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.to_owned(), raw.to_string()));
        self
    }

    /// Sets a top-level key to a string.
    pub fn set_str(self, key: &str, value: &str) -> Self {
        self.set(key, quoted(value))
    }

    /// Adds a group.
    pub fn group(mut self, group: Group) -> Self {
        self.groups.push(group);
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut text = format!("pool = {}\n", quoted(self.id.as_str()));
        for (key, value) in &self.settings {
            text.push_str(&format!("{key} = {value}\n"));
        }
        for group in &self.groups {
            text.push('\n');
            text.push_str(&group.to_toml());
        }
        text
    }
}

/// The workerID of process `n` of `group` in `pool`.
pub fn worker_id(pool: &PoolId, group: &str, n: u32) -> String {
    format!("{pool}-{group}-{n}")
}

/// A group of a pool's state.
///
/// # Panics
///
/// When the pool has no such group.
pub fn group<'a>(state: &'a PoolState, name: &str) -> &'a GroupState {
    state
        .groups
        .iter()
        .find(|group| group.name.as_str() == name)
        .unwrap_or_else(|| panic!("the pool has no group {name}: {state:#?}"))
}

/// A process of a group, by workerID.
pub fn process<'a>(group: &'a GroupState, worker: &str) -> Option<&'a ProcessState> {
    group
        .processes
        .iter()
        .find(|process| process.worker_id.as_str() == worker)
}

/// The group's processes that are not TERMINATED.
pub fn alive(group: &GroupState) -> Vec<&ProcessState> {
    group
        .processes
        .iter()
        .filter(|process| process.state != ProcessPhase::Terminated)
        .collect()
}

/// The group's processes that are RUNNING (registered and ready).
pub fn running(group: &GroupState) -> Vec<&ProcessState> {
    in_phase(group, ProcessPhase::Running)
}

/// The group's processes in `phase`.
pub fn in_phase(group: &GroupState, phase: ProcessPhase) -> Vec<&ProcessState> {
    group
        .processes
        .iter()
        .filter(|process| process.state == phase)
        .collect()
}

/// The pids of `processes`.
pub fn pids<'a>(processes: impl IntoIterator<Item = &'a ProcessState>) -> BTreeSet<u32> {
    processes
        .into_iter()
        .filter_map(|process| process.pid)
        .collect()
}

/// The workerIDs of `processes`.
pub fn worker_ids<'a>(processes: impl IntoIterator<Item = &'a ProcessState>) -> BTreeSet<String> {
    processes
        .into_iter()
        .map(|process| process.worker_id.to_string())
        .collect()
}

/// A group's processes on one line: `workerID STATE pid`, for failure messages.
pub fn describe(group: &GroupState) -> String {
    let processes: Vec<String> = group
        .processes
        .iter()
        .map(|process| {
            let pid = process
                .pid
                .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
            format!("{} {} {pid}", process.worker_id, process.state.as_str())
        })
        .collect();
    format!(
        "{} (target {}): {}",
        group.name,
        group.target,
        processes.join(", ")
    )
}

/// Whether the group has settled at `n` processes: its target is `n`, `n` are RUNNING and
/// no other is alive.
pub fn settled_at(group: &GroupState, n: u32) -> bool {
    let n = n as usize;
    group.target as usize == n && running(group).len() == n && alive(group).len() == n
}

/// Sends a signal to a process (not to its group).
pub fn signal_pid(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap());
    match kill(pid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(errno) => panic!("send {signal} to {pid}: {errno}"),
    }
}

/// Whether a process with this pid exists (a zombie counts until it is reaped).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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
            .prefix(&format!("drover-pool-{}-", config.id))
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
            id: config.id.clone(),
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

/// A worker's registry record.
pub async fn registry_record(client: &Client, worker: &str) -> Option<WorkerRecord> {
    call::<_, WorkerRecord>(
        client,
        keys::REGISTRY_GET,
        &RegistryGet {
            worker_id: WorkerId::parse(worker).unwrap(),
        },
    )
    .await
    .ok()
}

/// Every worker the registry has with label `pool = <pool>`.
pub async fn pool_workers(client: &Client, pool: &PoolId) -> Vec<WorkerRecord> {
    let filter = RegistryList {
        labels: Some([("pool".to_owned(), pool.to_string())].into()),
        ..Default::default()
    };
    list_workers(client, &filter).await.unwrap_or_default()
}

/// A steady stream of runs from several concurrent submitters.
pub struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<(Vec<RunId>, Vec<ErrorPayload>)>>,
}

impl Load {
    /// Starts `submitters` tasks that each submit `spec`, one run every `pace` at most.
    pub fn start(client: &Client, spec: &RunSpec, submitters: usize, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let tasks = (0..submitters)
            .map(|_| {
                let client = client.clone();
                let spec = spec.clone();
                let stop = Arc::clone(&stop);
                let accepted = Arc::clone(&accepted);
                tokio::spawn(async move {
                    let (mut ids, mut refusals) = (Vec::new(), Vec::new());
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Acquire) {
                        tick.tick().await;
                        match try_submit(&client, &spec).await {
                            Ok(id) => {
                                ids.push(id);
                                accepted.fetch_add(1, Ordering::AcqRel);
                            }
                            Err(error) => refusals.push(error),
                        }
                    }
                    (ids, refusals)
                })
            })
            .collect();
        Self {
            stop,
            accepted,
            tasks,
        }
    }

    /// Runs accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Waits until `more` runs have been accepted since this call.
    pub async fn wait_more(&self, more: usize, timeout: Duration) {
        let target = self.accepted() + more;
        drover_testkit::wait_until(&format!("{more} more runs accepted"), timeout, || async {
            self.accepted() >= target
        })
        .await
        .unwrap();
    }

    /// Stops submitting; returns the runs accepted and the refusals.
    pub async fn stop(self) -> (Vec<RunId>, Vec<ErrorPayload>) {
        self.stop.store(true, Ordering::Release);
        let mut ids = Vec::new();
        let mut refusals = Vec::new();
        for task in self.tasks {
            let (mut i, mut r) = task.await.unwrap();
            ids.append(&mut i);
            refusals.append(&mut r);
        }
        (ids, refusals)
    }
}

/// Submits `count` copies of `spec`, `concurrency` at a time; panics on a refusal.
pub async fn submit_many(
    client: &Client,
    spec: &RunSpec,
    count: usize,
    concurrency: usize,
) -> Vec<RunId> {
    futures::stream::iter(0..count)
        .map(|_| async move {
            try_submit(client, spec)
                .await
                .unwrap_or_else(|error| panic!("submission refused: {error}"))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Waits until every run has ended and returns their records.
///
/// # Panics
///
/// When some have not ended within `timeout` (scaled), naming a few of them.
pub async fn wait_all_ended(client: &Client, runs: &[RunId], timeout: Duration) -> Vec<RunRecord> {
    let deadline = tokio::time::Instant::now() + patient(timeout);
    let mut open: Vec<RunId> = runs.to_vec();
    let mut ended = Vec::with_capacity(runs.len());
    loop {
        let looked: Vec<(RunId, Option<RunRecord>)> = futures::stream::iter(open)
            .map(|run| async move {
                let record = get(client, &run).await;
                (run, record)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        open = Vec::new();
        for (run, record) in looked {
            match record {
                Some(record) if record.status.is_terminal() => ended.push(record),
                Some(_) | None => open.push(run),
            }
        }
        if open.is_empty() {
            return ended;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut sample = Vec::new();
            for run in open.iter().take(5) {
                sample.push(get(client, run).await.map(|record| {
                    (
                        record.run_id,
                        record.status,
                        record.worker_id,
                        record.attempt,
                    )
                }));
            }
            panic!(
                "{} of {} runs not ended within {:?}; some: {sample:#?}",
                open.len(),
                runs.len(),
                patient(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every run has ended and asserts that each SUCCEEDED.
pub async fn assert_all_succeeded(client: &Client, runs: &[RunId], timeout: Duration) {
    let records = wait_all_ended(client, runs, timeout).await;
    let failed: Vec<&RunRecord> = records
        .iter()
        .filter(|record| record.status != RunStatus::Succeeded)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} runs did not succeed; the first: {:?}",
        failed.len(),
        records.len(),
        failed.first()
    );
}

/// The sum of every sample of metric `name` whose labels include all of `labels`, in a
/// Prometheus text exposition (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric_name != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .fold(0.0, |sum, value| sum + value)
}

/// A JSON value with the keys that change from one moment to the next removed (uptimes,
/// memory, run counts, the registry's view), to compare two readings of a pool's state.
pub fn stable_view(state: &Value) -> Value {
    let mut state = state.clone();
    if let Some(object) = state.as_object_mut() {
        object.remove("uptimeMs");
    }
    if let Some(groups) = state["groups"].as_array_mut() {
        for group in groups {
            if let Some(processes) = group["processes"].as_array_mut() {
                for process in processes {
                    if let Some(object) = process.as_object_mut() {
                        for key in ["uptimeMs", "rssBytes", "runs", "workerStatus"] {
                            object.remove(key);
                        }
                    }
                }
            }
        }
    }
    state
}
