//! A pool configuration file for a test, and the example workers its groups run.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use drover_protocol::{PoolId, RunSpec};
use drover_testkit::{bin_dir, workspace_root};
use serde_json::json;

/// Backoff after an unexpected exit in the test groups: short, so that restarts are quick.
pub const RESTART_DELAY: &str = "200ms";

/// Grace between SIGTERM and SIGKILL in the test groups.
pub const STOP_GRACE: &str = "5s";

/// How long a test group's process may take to register and be ready.
pub const START_TIMEOUT: &str = "20s";

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

    /// A run that takes `ms` milliseconds, where the worker has such a routine: only the Rust
    /// example has one (`demo.thumbnail`); the Python examples' routines answer at once.
    pub fn slow_run(self, ms: u64) -> Option<RunSpec> {
        (self == WorkerKind::RustSdk).then(|| slow_rust_run(ms))
    }

    /// A run that takes `ms` milliseconds where the worker has such a routine, else a quick one.
    pub fn slow_or_quick_run(self, ms: u64) -> RunSpec {
        self.slow_run(ms).unwrap_or_else(|| self.quick_run())
    }

    /// Whether its processes are Python programs: slower to start and to take each run than
    /// the Rust worker, so that the tests give them lighter streams of runs.
    pub fn is_python(self) -> bool {
        matches!(self, WorkerKind::PythonSdk | WorkerKind::NoSdk)
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

/// The keys of one TOML table, each set once, in the order first set.
#[derive(Debug, Clone, Default)]
struct Keys(Vec<(String, String)>);

impl Keys {
    /// Sets `key` to a TOML value written as is, replacing an earlier one.
    fn set(&mut self, key: &str, raw: impl Display) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_owned(), raw.to_string()));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One `key = value` line each.
    fn lines(&self) -> String {
        self.0
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect()
    }
}

/// One `[groups.<name>]` of a pool configuration.
#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    settings: Keys,
    autoscale: Keys,
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
            settings: Keys::default(),
            autoscale: Keys::default(),
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
        self.settings.set(key, raw);
        self
    }

    /// Sets `key` to a string (a duration, a size, a policy), replacing an earlier one.
    pub fn set_str(self, key: &str, value: &str) -> Self {
        self.set(key, quoted(value))
    }

    /// Sets `key` of the group's `autoscale` table to a TOML value written as is.
    pub fn autoscale(mut self, key: &str, raw: impl Display) -> Self {
        self.autoscale.set(key, raw);
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
        text.push_str(&self.settings.lines());
        if !self.autoscale.is_empty() {
            text.push_str(&format!("\n[groups.{}.autoscale]\n", self.name));
            text.push_str(&self.autoscale.lines());
        }
        text
    }
}

/// A pool configuration file's content.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    id: PoolId,
    settings: Keys,
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
            settings: Keys::default(),
            groups: Vec::new(),
        }
    }

    /// The poolID.
    pub fn id(&self) -> &PoolId {
        &self.id
    }

    /// Sets a top-level key to a TOML value written as is.
    pub fn set(mut self, key: &str, raw: impl Display) -> Self {
        self.settings.set(key, raw);
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
        text.push_str(&self.settings.lines());
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
