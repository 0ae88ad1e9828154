//! `drover dev`: run the whole stack locally, in the foreground, until Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use drover_nats_connect::NatsAuth;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use crate::client::Drover;
use crate::cmd::status::SERVICES;
use crate::error::CliError;

mod process;
mod secure;

use process::{await_ready, find_program, spawn, stop_all, supervise, Process, STOP_GRACE};

/// The auth service `--secure` runs beside the four services.
const AUTH_SERVICE: &str = "drover-auth";
/// The web console and HTTP API, started after the services. It is not a NATS micro service
/// (`drover status` pings those), so `drover dev` waits for its `/readyz` alone.
const CONSOLE: &str = "drover-console";
/// The programs in the order of their admin ports from `--admin-port`, which is the order of
/// their own defaults: registry 9710 to log-collector 9713, drover-auth 9714, the console 9715.
const ADMIN_PORT_ORDER: [&str; 6] = [
    SERVICES[0],
    SERVICES[1],
    SERVICES[2],
    SERVICES[3],
    AUTH_SERVICE,
    CONSOLE,
];

/// The example worker `--demo` runs under a pool.
const DEMO_WORKER: &str = "drover-example-worker";
/// The pool `--demo` runs the example worker in, and its one group: the workers are
/// `dev-example-1`, `dev-example-2`, ...
const DEMO_POOL: &str = "dev";
const DEMO_GROUP: &str = "example";
/// The name (and log file) of the `drover pool run` process.
const DEMO_POOL_PROCESS: &str = "drover-pool";
/// `RUST_LOG` for the processes `drover dev` starts (the CLI quiets its own).
pub static CHILD_RUST_LOG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What `drover dev --help` says about processes that exit.
const RESTARTS_HELP: &str = "\
A process that exits, nats-server included, is started again with the same arguments, \
after a wait that doubles from 1 s to 30 s with every restart (and starts from 1 s again once \
the process has stayed up for a minute). nats-server comes back on the same port and store, \
so nothing stored is lost and the services reconnect by themselves. Each restart is reported \
on stderr with the process's log file. Ctrl-C stops everything, also during a wait.";

/// Run NATS and the Drover services locally until Ctrl-C.
#[derive(Debug, Args)]
#[command(after_help = RESTARTS_HELP)]
pub struct Dev {
    /// Also run the example worker under a pool (`dev`, group `example`, two processes) and a
    /// demo workflow.
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
    /// First of six consecutive ports for the admin HTTP (health and metrics) of the four
    /// services, drover-auth (with --secure) and drover-console; 0 picks free ports.
    #[arg(long, default_value_t = 9710)]
    pub admin_port: u16,
    /// Port of the web console and HTTP API (drover-console) on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 7480)]
    pub console_port: u16,
    /// The token that enables the console's actions (cancel, submit, ...). Without it
    /// `drover dev` makes a new one at every start and prints it.
    #[arg(
        long,
        env = "DROVER_CONSOLE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub console_token: Option<String>,
    /// Run the secured setup (docs/security.md): keys and certificates under the state
    /// directory, NATS demanding mutual TLS and credentials, drover-auth checking them, and
    /// every process with a credential of its own.
    #[arg(long)]
    pub secure: bool,
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16, CliError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
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

async fn nats_ready(url: &str, auth: &NatsAuth) -> bool {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_millis(500));
    let Ok(options) = auth.apply(url, options) else {
        return false;
    };
    let Ok(client) = options.connect(url).await else {
        return false;
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await;
    matches!(answer, Ok(Ok(_)))
}

impl Dev {
    /// Runs the command.
    pub async fn run(mut self) -> Result<(), CliError> {
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
        if self.secure {
            let program = find_program(AUTH_SERVICE, "DROVER_AUTH").ok_or_else(|| {
                CliError::Other(format!("{AUTH_SERVICE} not found beside drover or on PATH: build it with `cargo build --release --bins`"))
            })?;
            programs.push((AUTH_SERVICE, program));
        }
        let console = find_program(CONSOLE, "DROVER_CONSOLE").ok_or_else(|| {
            CliError::Other(format!("{CONSOLE} not found beside drover or on PATH: build it with `cargo build --release --bins`"))
        })?;
        programs.push((CONSOLE, console));
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
        if self.console_port == 0 {
            self.console_port = free_port()?;
        } else if port_in_use(self.console_port).await {
            return Err(CliError::Other(format!(
                "port {} is already in use: is Drover already running? (choose another with --console-port)",
                self.console_port
            )));
        }
        let admin_ports = self.admin_ports(&programs)?;
        for ((name, _), port) in programs.iter().zip(&admin_ports) {
            // Another process there would answer the readiness checks in its place.
            if port_in_use(*port).await {
                return Err(CliError::Other(format!(
                    "port {port}, {name}'s admin port, is already in use: is Drover already running? (choose others with --admin-port)"
                )));
            }
        }
        // Actions in the console need its token: without one given, a new one at every start.
        let generated_token = self.console_token.is_none();
        let console_token = self
            .console_token
            .get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string())
            .clone();
        if self.fresh && self.state_dir.exists() {
            std::fs::remove_dir_all(&self.state_dir)?;
        }
        let logs = self.state_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let state = std::fs::canonicalize(&self.state_dir)?;
        let secure = if self.secure {
            Some(secure::Secure::prepare(&state)?)
        } else {
            None
        };
        let scheme = if secure.is_some() { "tls" } else { "nats" };
        let url = format!("{scheme}://127.0.0.1:{}", self.nats_port);

        let mut processes: Vec<Process> = Vec::new();
        let started = self
            .start(
                &nats_server,
                &programs,
                &admin_ports,
                demo_worker.as_deref(),
                &url,
                &state,
                secure.as_ref(),
                &mut processes,
            )
            .await;
        let client_auth = match started {
            Ok(auth) => auth,
            Err(error) => {
                stop_all(&mut processes).await;
                return Err(error);
            }
        };
        let names: Vec<&str> = programs.iter().map(|(name, _)| *name).collect();
        let console = Console {
            port: self.console_port,
            generated_token: generated_token.then_some(console_token.as_str()),
        };
        print_summary(&url, &console, &names, &admin_ports, &state, &processes);
        if secure.is_some() {
            print_secure_summary(&url, &client_auth, secure.as_ref());
        }
        if self.demo {
            if let Err(error) = run_demo(&url, &client_auth).await {
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

    /// Each program's admin port: `--admin-port` plus its place in [`ADMIN_PORT_ORDER`]
    /// (the same whether drover-auth runs or not), or free ports.
    fn admin_ports(&self, programs: &[(&str, PathBuf)]) -> Result<Vec<u16>, CliError> {
        programs
            .iter()
            .map(|(name, _)| {
                if self.admin_port == 0 {
                    return free_port();
                }
                let place = ADMIN_PORT_ORDER
                    .iter()
                    .position(|program| program == name)
                    .expect("every program drover dev starts has its place");
                u16::try_from(place)
                    .ok()
                    .and_then(|place| self.admin_port.checked_add(place))
                    .ok_or_else(|| {
                        CliError::Other(format!(
                            "--admin-port {} leaves no port for {name}: choose a lower one",
                            self.admin_port
                        ))
                    })
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
        secure: Option<&secure::Secure>,
        processes: &mut Vec<Process>,
    ) -> Result<NatsAuth, CliError> {
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
        let mut nats_args = nats_args;
        if let Some(secure) = secure {
            nats_args.extend(["-c".to_owned(), secure.nats_config.display().to_string()]);
        }
        let mut nats = spawn("nats-server", nats_server, &nats_args, &[], &logs)?;
        // Without --secure the local server admits anyone; with it, the services' key.
        let auth = secure
            .map(|secure| secure.services.clone())
            .unwrap_or_default();
        await_ready(&mut nats, Duration::from_secs(20), || {
            nats_ready(url, &auth)
        })
        .await?;
        processes.push(nats);
        let mut env = vec![("DROVER_NATS_URL", url.to_owned())];
        env.extend(auth.env_vars());
        for ((service, program), &port) in programs.iter().zip(admin_ports) {
            let mut args = vec!["--admin-addr".to_owned(), format!("127.0.0.1:{port}")];
            eprintln!("starting {service}");
            let mut service_env = env.clone();
            if let (AUTH_SERVICE, Some(secure)) = (*service, secure) {
                service_env.push((
                    "DROVER_AUTH_ISSUER_SEED",
                    secure.issuer.display().to_string(),
                ));
            }
            if *service == CONSOLE {
                args.extend([
                    "--listen".to_owned(),
                    format!("127.0.0.1:{}", self.console_port),
                ]);
                // In the environment, not on the command line that `ps` shows.
                if let Some(token) = &self.console_token {
                    service_env.push(("DROVER_CONSOLE_TOKEN", token.clone()));
                }
            }
            let mut process = spawn(service, program, &args, &service_env, &logs)?;
            await_ready(&mut process, Duration::from_secs(30), || http_ready(port)).await?;
            processes.push(process);
        }
        // The demo's submissions come from a client that may submit; with --secure, the pool
        // and the client have credentials of their own, created at the first start.
        let mut client_auth = auth.clone();
        let mut pool_env = env.clone();
        if let (Some(secure), true) = (secure, demo_worker.is_some()) {
            let (pool_seed, client_seed) = secure.demo_credentials(url, DEMO_POOL).await?;
            pool_env = vec![("DROVER_NATS_URL", url.to_owned())];
            pool_env.extend(secure.with_seed(&pool_seed).env_vars());
            client_auth = secure.with_seed(&client_seed);
        }
        if let Some(worker) = demo_worker {
            let config = state.join("pool.toml");
            std::fs::write(&config, demo_pool_config(worker)?)?;
            let drover = std::env::current_exe()?;
            let args = vec![
                "pool".to_owned(),
                "run".to_owned(),
                config.display().to_string(),
                "--nats-url".to_owned(),
                url.to_owned(),
            ];
            eprintln!("starting {DEMO_WORKER} under drover pool {DEMO_POOL}");
            let mut pool = Process::new(DEMO_POOL_PROCESS, &drover, &args, &pool_env, &logs);
            // A Ctrl-C in the terminal would reach the pool as well as `drover dev`, and the
            // SIGTERM that `stop_all` sends next would then be a second signal, which makes the
            // pool kill its workers at once rather than let them finish their runs.
            pool.own_group = true;
            pool.start()?;
            processes.push(pool);
        }
        Ok(client_auth)
    }
}

/// The pool configuration `--demo` writes into the state directory at every start.
fn demo_pool_config(worker: &Path) -> Result<String, CliError> {
    let command = worker.to_str().ok_or_else(|| {
        CliError::Other(format!(
            "the path of {DEMO_WORKER} is not UTF-8: {}",
            worker.display()
        ))
    })?;
    Ok(format!(
        "\
# Written by `drover dev --demo` at every start; see docs/pool.md.
pool = \"{DEMO_POOL}\"

[groups.{DEMO_GROUP}]
command = {command}
size = 2
min = 1
max = 4
# Shorter than the {grace} that `drover dev` gives the pool to stop, so that the pool has
# stopped its workers before that runs out.
stop_grace = \"5s\"
",
        command = toml_string(command),
        grace = humantime::format_duration(STOP_GRACE),
    ))
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// What the summary says about the console.
struct Console<'a> {
    port: u16,
    /// The token `drover dev` made; one given with `--console-token` is not repeated.
    generated_token: Option<&'a str>,
}

fn print_summary(
    url: &str,
    console: &Console<'_>,
    services: &[&str],
    admin_ports: &[u16],
    state: &Path,
    processes: &[Process],
) {
    println!();
    println!("  NATS           {url}");
    println!(
        "  console        http://127.0.0.1:{}/  (HTTP API: /api/v1/)",
        console.port
    );
    match console.generated_token {
        Some(token) => {
            println!("  console token  {token}  (sign in with it to cancel, submit, ...)");
        }
        None => println!("  console token  as given (--console-token or DROVER_CONSOLE_TOKEN)"),
    }
    for (service, port) in services.iter().zip(admin_ports) {
        println!("  {service:<24} http://127.0.0.1:{port}/metrics  (/healthz, /readyz)");
    }
    println!("  state          {}", state.display());
    println!("  logs           {}", state.join("logs").display());
    for process in processes {
        let pid = process
            .pid()
            .map_or_else(String::new, |pid| format!("  (pid {pid})"));
        println!("    {:<24} {}{pid}", process.name, process.log.display());
    }
    println!();
    println!("  Try: drover workers list | drover runs list | drover submit <routine> --params '{{}}' --wait");
    if processes
        .iter()
        .any(|process| process.name == DEMO_POOL_PROCESS)
    {
        println!(
            "  Pool: drover pool status {DEMO_POOL} | drover pool scale {DEMO_POOL} {DEMO_GROUP} --target 3"
        );
    }
    println!();
}

/// What a shell needs to talk to the secured setup: the variables of a client that may
/// submit, and the services' key for `drover credentials`.
fn print_secure_summary(url: &str, client: &NatsAuth, secure: Option<&secure::Secure>) {
    println!("  Secured (docs/security.md). A client that may submit:");
    println!("    export DROVER_NATS_URL={url}");
    for (name, value) in client.env_vars() {
        println!("    export {name}={value}");
    }
    if let Some(secure) = secure {
        let services = secure.services.env_vars();
        if let Some((_, seed)) = services
            .iter()
            .find(|(name, _)| *name == "DROVER_NATS_NKEY")
        {
            println!("  drover credentials ... needs the services' key: DROVER_NATS_NKEY={seed}");
        }
    }
    println!(
        "  The console reads and acts with the services' key: its token (above) is what guards its actions."
    );
    println!();
}

/// Submits the demo workflow and follows it to the end.
async fn run_demo(url: &str, auth: &NatsAuth) -> Result<(), CliError> {
    let drover = Drover::connect(url, Duration::from_secs(10), auth).await?;
    // The pool's example workers register right after they start; wait for one.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(admin_port: u16) -> Dev {
        Dev {
            demo: false,
            state_dir: PathBuf::from(".drover"),
            fresh: false,
            nats_port: 4222,
            admin_port,
            console_port: 7480,
            console_token: None,
            secure: false,
        }
    }

    fn programs(names: &[&'static str]) -> Vec<(&'static str, PathBuf)> {
        names.iter().map(|name| (*name, PathBuf::new())).collect()
    }

    #[test]
    fn each_program_has_its_default_admin_port_with_or_without_drover_auth() {
        let plain = programs(&[
            "drover-registry",
            "drover-heartbeat-monitor",
            "drover-scheduler",
            "drover-log-collector",
            CONSOLE,
        ]);
        assert_eq!(
            dev(9710).admin_ports(&plain).unwrap(),
            [9710, 9711, 9712, 9713, 9715]
        );
        let mut secure = plain.clone();
        secure.insert(4, (AUTH_SERVICE, PathBuf::new()));
        assert_eq!(
            dev(19710).admin_ports(&secure).unwrap(),
            [19710, 19711, 19712, 19713, 19714, 19715]
        );
        let error = dev(u16::MAX - 4).admin_ports(&plain).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("leaves no port for drover-console"),
            "{error}"
        );
        let free = dev(0).admin_ports(&plain).unwrap();
        assert!(free.iter().all(|port| *port != 0), "{free:?}");
    }

    #[test]
    fn the_demo_pool_runs_the_example_worker_by_its_path_quoted_for_toml() {
        assert_eq!(toml_string("/opt/drover/bin"), r#""/opt/drover/bin""#);
        assert_eq!(
            toml_string("C:\\a \"b\"\tc\u{7f}"),
            r#""C:\\a \"b\"\u0009c\u007F""#
        );
        let config = demo_pool_config(Path::new("/x/drover-example-worker")).unwrap();
        assert!(config.contains("\npool = \"dev\"\n"), "{config}");
        assert!(
            config.contains("[groups.example]\ncommand = \"/x/drover-example-worker\"\n"),
            "{config}"
        );
        assert!(
            config.contains("\nsize = 2\nmin = 1\nmax = 4\n"),
            "{config}"
        );
    }
}
