//! `drover dev`: run the whole stack locally, in the foreground, until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tracing::Instrument;

use crate::client::Drover;
use crate::cmd::status::SERVICES;
use crate::error::CliError;

/// The example worker `--demo` starts.
const DEMO_WORKER: &str = "drover-example-worker";
/// `RUST_LOG` for the processes `drover dev` starts (the CLI quiets its own).
pub static CHILD_RUST_LOG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// How long a process gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Run NATS and the Drover services locally until Ctrl-C.
#[derive(Debug, Args)]
pub struct Dev {
    /// Also start the example worker and run a demo workflow.
    #[arg(long)]
    pub demo: bool,
    /// Where NATS keeps its store and every process its log.
    #[arg(long, env = "DROVER_STATE_DIR", default_value = ".drover")]
    pub state_dir: PathBuf,
    /// Delete the state directory first.
    #[arg(long)]
    pub fresh: bool,
    /// Port for NATS clients.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// First of four consecutive ports for the services' admin HTTP (health and metrics);
    /// 0 picks free ports.
    #[arg(long, default_value_t = 9710)]
    pub admin_port: u16,
}

struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Finds a program: `$DROVER_<NAME>` first, then beside this executable, then in
/// `.tools/bin` of an enclosing checkout, then on `PATH`.
fn find_program(name: &str, env: &str) -> Option<PathBuf> {
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

fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, String)],
    logs: &Path,
) -> Result<Process, CliError> {
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let err = file.try_clone()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    command.env(
        "RUST_LOG",
        CHILD_RUST_LOG.get().map_or("info", String::as_str),
    );
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.spawn().map_err(|source| CliError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    Ok(Process {
        name: name.to_owned(),
        child,
        log,
    })
}

async fn port_in_use(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

async fn http_ready(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// Waits until `ready` holds, failing if `process` exits first or time runs out.
async fn await_ready<F, Fut>(
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
        if let Ok(Some(status)) = process.child.try_wait() {
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

async fn nats_ready(url: &str) -> bool {
    let Ok(client) = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .connect(url)
        .await
    else {
        return false;
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await;
    matches!(answer, Ok(Ok(_)))
}

/// Stops every process, newest first: SIGTERM, then SIGKILL after the grace period.
async fn stop_all(processes: &mut Vec<Process>) {
    while let Some(mut process) = processes.pop() {
        if let Some(pid) = process.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, process.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "{} did not stop in {STOP_GRACE:?}, killing it",
                process.name
            );
            let _ = process.child.kill().await;
        }
    }
}

impl Dev {
    /// Runs the command.
    pub async fn run(self) -> Result<(), CliError> {
        let nats_server = find_program("nats-server", "DROVER_NATS_SERVER").ok_or_else(|| {
            CliError::Other(
                "nats-server not found: run scripts/install-nats-server, put nats-server on PATH, or set DROVER_NATS_SERVER".to_owned(),
            )
        })?;
        let mut programs = Vec::new();
        for service in SERVICES {
            let env = format!(
                "DROVER_{}",
                service
                    .trim_start_matches("drover-")
                    .replace('-', "_")
                    .to_uppercase()
            );
            let program = find_program(service, &env).ok_or_else(|| {
                CliError::Other(format!("{service} not found beside drover or on PATH: build it with `cargo build --release --bins`"))
            })?;
            programs.push((service, program));
        }
        let demo_worker = if self.demo {
            Some(find_program(DEMO_WORKER, "DROVER_EXAMPLE_WORKER").ok_or_else(|| {
                CliError::Other(format!("{DEMO_WORKER} not found beside drover: build it with `cargo build --release --bins`"))
            })?)
        } else {
            None
        };
        if port_in_use(self.nats_port).await {
            return Err(CliError::Other(format!(
                "port {} is already in use: is Drover already running? (choose another with --nats-port)",
                self.nats_port
            )));
        }
        if self.fresh && self.state_dir.exists() {
            std::fs::remove_dir_all(&self.state_dir)?;
        }
        let logs = self.state_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let state = std::fs::canonicalize(&self.state_dir)?;
        let url = format!("nats://127.0.0.1:{}", self.nats_port);

        let admin_ports = self.admin_ports()?;
        let mut processes: Vec<Process> = Vec::new();
        let started = self
            .start(
                &nats_server,
                &programs,
                &admin_ports,
                demo_worker.as_deref(),
                &url,
                &state,
                &mut processes,
            )
            .await;
        if let Err(error) = started {
            stop_all(&mut processes).await;
            return Err(error);
        }
        print_summary(&url, &admin_ports, &state, &processes);
        if self.demo {
            if let Err(error) = run_demo(&url).await {
                eprintln!("drover: the demo workflow did not succeed: {error}");
            }
        }
        eprintln!("Drover is running. Ctrl-C stops everything.");
        let outcome = supervise(&mut processes).await;
        eprintln!("stopping...");
        stop_all(&mut processes).await;
        eprintln!("stopped");
        outcome
    }

    fn admin_ports(&self) -> Result<Vec<u16>, CliError> {
        if self.admin_port != 0 {
            return Ok((0..SERVICES.len() as u16)
                .map(|index| self.admin_port + index)
                .collect());
        }
        (0..SERVICES.len())
            .map(|_| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                Ok(listener.local_addr()?.port())
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        nats_server: &Path,
        programs: &[(&str, PathBuf)],
        admin_ports: &[u16],
        demo_worker: Option<&Path>,
        url: &str,
        state: &Path,
        processes: &mut Vec<Process>,
    ) -> Result<(), CliError> {
        let logs = state.join("logs");
        eprintln!("starting nats-server ({})", nats_server.display());
        let nats_args = vec![
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            self.nats_port.to_string(),
            "-js".to_owned(),
            "-sd".to_owned(),
            state.join("jetstream").display().to_string(),
        ];
        let mut nats = spawn("nats-server", nats_server, &nats_args, &[], &logs)?;
        await_ready(&mut nats, Duration::from_secs(20), || nats_ready(url)).await?;
        processes.push(nats);
        let env = [("DROVER_NATS_URL", url.to_owned())];
        for ((service, program), &port) in programs.iter().zip(admin_ports) {
            let args = vec!["--admin-addr".to_owned(), format!("127.0.0.1:{port}")];
            eprintln!("starting {service}");
            let mut process = spawn(service, program, &args, &env, &logs)?;
            await_ready(&mut process, Duration::from_secs(30), || http_ready(port)).await?;
            processes.push(process);
        }
        if let Some(worker) = demo_worker {
            eprintln!("starting {DEMO_WORKER}");
            let process = spawn(DEMO_WORKER, worker, &[], &env, &logs)?;
            processes.push(process);
        }
        Ok(())
    }
}

fn print_summary(url: &str, admin_ports: &[u16], state: &Path, processes: &[Process]) {
    println!();
    println!("  NATS           {url}");
    for (service, port) in SERVICES.iter().zip(admin_ports) {
        println!("  {service:<24} http://127.0.0.1:{port}/metrics  (/healthz, /readyz)");
    }
    println!("  state          {}", state.display());
    println!("  logs           {}", state.join("logs").display());
    for process in processes {
        println!("    {:<24} {}", process.name, process.log.display());
    }
    println!();
    println!("  Try: drover workers list | drover runs list | drover submit <routine> --params '{{}}' --wait");
    println!();
}

/// Waits for Ctrl-C, SIGTERM, or a process that exits on its own.
async fn supervise(processes: &mut [Process]) -> Result<(), CliError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for process in processes.iter_mut() {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(CliError::Other(format!(
                    "{} exited ({status}); see {}",
                    process.name,
                    process.log.display()
                )));
            }
        }
    }
}

/// Submits the demo workflow and follows it to the end.
async fn run_demo(url: &str) -> Result<(), CliError> {
    let drover = Drover::connect(url, Duration::from_secs(10)).await?;
    // The example worker registers right after it starts; wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers: drover_protocol::WorkerList = drover
            .call(
                drover_protocol::subject::keys::REGISTRY_LIST,
                &drover_protocol::RegistryList::default(),
            )
            .await?;
        if workers
            .workers
            .iter()
            .any(|worker| worker.status == drover_protocol::WorkerStatus::Idle)
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Other(
                "the example worker did not come up".to_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spec: drover_protocol::RunSpec = serde_json::from_value(json!({
        "routineID": "demo.workflow",
        "params": {"images": ["cat.png", "dog.png", "fox.png"], "width": 320},
    }))
    .map_err(CliError::Json)?;
    let span = tracing::info_span!("drover.submit", routine = %spec.routine_id);
    let accepted: drover_protocol::Accepted = drover
        .call(drover_protocol::subject::keys::REQUEST_START, &spec)
        .instrument(span)
        .await?;
    println!("demo workflow: run {}", accepted.run_id);
    let record = crate::cmd::submit::wait_for_end(&drover, &accepted.run_id, true, false).await?;
    println!(
        "demo workflow {}: {}",
        record.status,
        record.result.as_ref().map_or_else(
            || record
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            ToString::to_string
        )
    );
    println!(
        "  see it again: drover runs get {} | drover logs --run {}",
        accepted.run_id, accepted.run_id
    );
    Ok(())
}
