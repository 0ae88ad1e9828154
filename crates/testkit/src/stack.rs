//! A whole Drover stack for integration tests: NATS plus the chosen service binaries.
//!
//! ```ignore
//! let mut stack = Stack::builder()
//!     .heartbeat_interval_ms(200)
//!     .lost_after_ms(1000)
//!     .with_registry()
//!     .with_monitor()
//!     .start()
//!     .await?;
//! let client = stack.client().await;
//! stack.restart_service(REGISTRY).await?;
//! stack.restart_nats().await?;
//! ```
//!
//! With [`StackBuilder::through_proxy`] or [`StackBuilder::cut_at`] the services reach NATS
//! through a [`Proxy`] that the test can cut ([`Stack::proxy`]); test clients still connect
//! to NATS directly. [`StackBuilder::spawn`] starts the processes without waiting for them,
//! for tests of the start-up itself.
//!
//! Each service gets `DROVER_NATS_URL`, `DROVER_HEARTBEAT_INTERVAL_MS`,
//! `DROVER_LOST_AFTER_MS`, `RUST_LOG=info` and the `DROVER_NATS_*` credentials of
//! [`NatsOptions::client_auth`] (TLS, nkey seed) (all overridable with [`StackBuilder::env`]
//! or [`StackBuilder::service_env`]) and `--admin-addr 127.0.0.1:<free port>`. A service
//! counts as started once `GET /readyz` on its admin address answers 200. The binaries must
//! have been built (`cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::bail;

use crate::http::http_get;
use crate::logfile;
use crate::nats::{NatsOptions, NatsServer};
use crate::paths::free_port;
use crate::process::ServiceProcess;
use crate::proxy::{CutPoint, Proxy};
use crate::wait::patient;

/// Binary name of the registry service.
pub const REGISTRY: &str = "drover-registry";
/// Binary name of the heartbeat-monitor service.
pub const HEARTBEAT_MONITOR: &str = "drover-heartbeat-monitor";
/// Binary name of the scheduler service.
pub const SCHEDULER: &str = "drover-scheduler";
/// Binary name of the log-collector service.
pub const LOG_COLLECTOR: &str = "drover-log-collector";

const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Free ports tried for a service's admin server before giving up.
const ADMIN_PORT_TRIES: u32 = 5;

/// Builds a [`Stack`]; see the module docs.
#[derive(Debug, Clone)]
pub struct StackBuilder {
    heartbeat_interval_ms: u64,
    lost_after_ms: u64,
    services: Vec<String>,
    env: Vec<(String, String)>,
    service_env: BTreeMap<String, Vec<(String, String)>>,
    service_args: BTreeMap<String, Vec<String>>,
    nats_options: NatsOptions,
    ready_timeout: Duration,
    through_proxy: bool,
    cut_at: Option<CutPoint>,
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 200,
            lost_after_ms: 1000,
            services: Vec::new(),
            env: Vec::new(),
            service_env: BTreeMap::new(),
            service_args: BTreeMap::new(),
            nats_options: NatsOptions::default(),
            ready_timeout: READY_TIMEOUT,
            through_proxy: false,
            cut_at: None,
        }
    }
}

impl StackBuilder {
    /// Sets `DROVER_HEARTBEAT_INTERVAL_MS` for every service (default 200).
    pub fn heartbeat_interval_ms(mut self, ms: u64) -> Self {
        self.heartbeat_interval_ms = ms;
        self
    }

    /// Sets `DROVER_LOST_AFTER_MS` for every service (default 1000).
    pub fn lost_after_ms(mut self, ms: u64) -> Self {
        self.lost_after_ms = ms;
        self
    }

    /// Adds `drover-registry`.
    pub fn with_registry(self) -> Self {
        self.with_service(REGISTRY)
    }

    /// Adds `drover-heartbeat-monitor`.
    pub fn with_monitor(self) -> Self {
        self.with_service(HEARTBEAT_MONITOR)
    }

    /// Adds `drover-scheduler`.
    pub fn with_scheduler(self) -> Self {
        self.with_service(SCHEDULER)
    }

    /// Adds `drover-log-collector`.
    pub fn with_log_collector(self) -> Self {
        self.with_service(LOG_COLLECTOR)
    }

    /// Adds all four services.
    pub fn with_all_services(self) -> Self {
        self.with_registry()
            .with_monitor()
            .with_scheduler()
            .with_log_collector()
    }

    /// Adds any workspace binary that takes `--admin-addr` and serves `GET /readyz`.
    pub fn with_service(mut self, name: &str) -> Self {
        if !self.services.iter().any(|s| s == name) {
            self.services.push(name.to_string());
        }
        self
    }

    /// Sets an environment variable for every service (overrides the defaults).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets an environment variable for one service (overrides [`StackBuilder::env`]).
    pub fn service_env(
        mut self,
        service: &str,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.service_env
            .entry(service.to_string())
            .or_default()
            .push((key.into(), value.into()));
        self
    }

    /// Appends a command-line argument for one service (after `--admin-addr`).
    pub fn service_arg(mut self, service: &str, arg: impl Into<String>) -> Self {
        self.service_args
            .entry(service.to_string())
            .or_default()
            .push(arg.into());
        self
    }

    /// Options for the NATS server.
    pub fn nats_options(mut self, options: NatsOptions) -> Self {
        self.nats_options = options;
        self
    }

    /// How long each service may take to become ready (default 20 s, scaled by patience).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The services reach NATS through a [`Proxy`] (see [`Stack::proxy`]).
    pub fn through_proxy(mut self) -> Self {
        self.through_proxy = true;
        self
    }

    /// The services reach NATS through a [`Proxy`] with a cut armed at `point` before the
    /// first service starts.
    pub fn cut_at(mut self, point: CutPoint) -> Self {
        self.through_proxy = true;
        self.cut_at = Some(point);
        self
    }

    /// Starts NATS, then every chosen service, and waits until all of them are ready.
    pub async fn start(self) -> anyhow::Result<Stack> {
        let services = self.services.clone();
        let mut stack = self.spawn().await?;
        // Started together, then awaited one by one: they become ready concurrently.
        for name in &services {
            stack.wait_service_ready(name).await?;
        }
        Ok(stack)
    }

    /// Starts NATS (and the proxy), then every chosen service, without waiting for the
    /// services to be ready.
    pub async fn spawn(self) -> anyhow::Result<Stack> {
        let nats = NatsServer::start_with(self.nats_options.clone()).await?;
        let proxy = if self.through_proxy {
            let proxy = Proxy::start(nats.addr()).await?;
            if let Some(point) = self.cut_at {
                proxy.cut_at(point);
            }
            Some(proxy)
        } else {
            None
        };
        let url = proxy.as_ref().map_or_else(|| nats.url(), Proxy::url);
        let mut stack = Stack {
            services: BTreeMap::new(),
            admin: BTreeMap::new(),
            ready_timeout: self.ready_timeout,
            proxy,
            nats,
        };
        for name in &self.services {
            let mut env = vec![
                ("DROVER_NATS_URL".to_string(), url.clone()),
                (
                    "DROVER_HEARTBEAT_INTERVAL_MS".to_string(),
                    self.heartbeat_interval_ms.to_string(),
                ),
                (
                    "DROVER_LOST_AFTER_MS".to_string(),
                    self.lost_after_ms.to_string(),
                ),
                ("RUST_LOG".to_string(), "info".to_string()),
            ];
            // The server's TLS and the testkit's seed reach the services as DROVER_NATS_*.
            let auth_env = self.nats_options.client_auth().env_vars();
            env.extend(
                auth_env
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value)),
            );
            env.extend(self.env.iter().cloned());
            env.extend(self.service_env.get(name).into_iter().flatten().cloned());
            let extra = self.service_args.get(name).cloned().unwrap_or_default();
            let (process, admin) = spawn_service(name, &env, &extra, self.ready_timeout).await?;
            stack.services.insert(name.clone(), process);
            stack.admin.insert(name.clone(), admin);
        }
        Ok(stack)
    }
}

/// Starts service `name` with `--admin-addr` on a free port, and waits until its admin
/// server answers (or it exits).
///
/// A port found free can be taken by another process before the service binds it: then
/// the service exits at once, and it is started again on another port.
async fn spawn_service(
    name: &str,
    env: &[(String, String)],
    extra_args: &[String],
    timeout: Duration,
) -> anyhow::Result<(ServiceProcess, SocketAddr)> {
    let mut tries = 0;
    loop {
        tries += 1;
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut args = vec!["--admin-addr".to_string(), admin.to_string()];
        args.extend(extra_args.iter().cloned());
        let mut process = ServiceProcess::start(name, env, &args)?;
        let deadline = tokio::time::Instant::now() + patient(timeout);
        let mut interval = Duration::from_millis(5);
        loop {
            // Another process may hold the port: only this service's own admin server counts.
            if listens_on(process.pid(), admin.port()) && http_get(admin, "/healthz").await.is_ok()
            {
                return Ok((process, admin));
            }
            if process.exit_status().is_some() {
                let taken = process.log_contents().contains("Address already in use");
                if taken && tries < ADMIN_PORT_TRIES {
                    break;
                }
                // The caller sees the exit and reports it with the log.
                return Ok((process, admin));
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{name}'s admin server did not answer on {admin} within {:?}; log tail:\n{}",
                    patient(timeout),
                    process.log_tail(logfile::DUMP_LINES)
                );
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(50));
        }
    }
}

/// True when process `pid` holds a listening TCP socket on `port` (IPv4), read from
/// `/proc/net/tcp` and the process's file descriptors.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    // Columns: sl, local_address (hex ip:port), rem_address, st (0A = LISTEN), ..., inode.
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = *fields.get(3)? == "0A";
            let inode = fields.get(9)?;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| format!("socket:[{inode}]"))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
}

/// NATS plus a set of running Drover services; everything is killed on drop.
#[derive(Debug)]
pub struct Stack {
    // Services are declared first so that they die before the server they talk to.
    services: BTreeMap<String, ServiceProcess>,
    admin: BTreeMap<String, SocketAddr>,
    ready_timeout: Duration,
    // Between the services and the server, if asked for.
    proxy: Option<Proxy>,
    /// The NATS server every service connects to.
    pub nats: NatsServer,
}

impl Stack {
    /// A builder with heartbeat 200 ms, lost-after 1000 ms and no services.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The NATS server's URL (the services use the proxy's, if the stack has one).
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// The proxy between the services and NATS.
    ///
    /// # Panics
    ///
    /// Panics when the stack was built without [`StackBuilder::through_proxy`] or
    /// [`StackBuilder::cut_at`].
    pub fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("the stack was built with through_proxy or cut_at")
    }

    /// A new NATS client (see [`NatsServer::client`]).
    pub async fn client(&self) -> async_nats::Client {
        self.nats.client().await
    }

    /// A JetStream context over a new client.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        self.nats.jetstream().await
    }

    /// The names of the services in this stack.
    pub fn service_names(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    /// The process of service `name`.
    ///
    /// # Panics
    ///
    /// Panics when the stack has no such service.
    pub fn service(&self, name: &str) -> &ServiceProcess {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("the stack has no service {name}"))
    }

    /// The process of service `name`, mutably.
    ///
    /// # Panics
    ///
    /// Panics when the stack has no such service.
    pub fn service_mut(&mut self, name: &str) -> &mut ServiceProcess {
        self.services
            .get_mut(name)
            .unwrap_or_else(|| panic!("the stack has no service {name}"))
    }

    /// The admin HTTP address of service `name` (stable across restarts).
    ///
    /// # Panics
    ///
    /// Panics when the stack has no such service.
    pub fn admin_addr(&self, name: &str) -> SocketAddr {
        *self
            .admin
            .get(name)
            .unwrap_or_else(|| panic!("the stack has no service {name}"))
    }

    /// `GET <path>` on the admin address of service `name`: status code and body.
    pub async fn admin_get(&self, name: &str, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_addr(name), path).await
    }

    /// Kills service `name` with SIGKILL (start it again with [`Stack::restart_service`]).
    pub fn kill_service(&mut self, name: &str) {
        self.service_mut(name).kill();
    }

    /// Sends SIGTERM to service `name` and waits up to `timeout` for it to exit.
    pub async fn terminate_service(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let service = self.service_mut(name);
        service.terminate()?;
        Ok(service.wait_exit(timeout).await)
    }

    /// Kills service `name` (SIGKILL) if it runs, starts it again with the same settings,
    /// and waits until it is ready.
    pub async fn restart_service(&mut self, name: &str) -> anyhow::Result<()> {
        self.service_mut(name).restart()?;
        self.wait_service_ready(name).await
    }

    /// Restarts the NATS server on the same port and store (the services reconnect by themselves).
    pub async fn restart_nats(&mut self) -> anyhow::Result<()> {
        self.nats.restart().await
    }

    /// Waits until `GET /readyz` of service `name` answers 200, failing early if it exits.
    pub async fn wait_service_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let admin = self.admin_addr(name);
        let limit = patient(self.ready_timeout);
        let deadline = tokio::time::Instant::now() + limit;
        let mut interval = Duration::from_millis(10);
        loop {
            let last = match http_get(admin, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("status {status}: {}", body.trim()),
                Err(error) => format!("{error:#}"),
            };
            let service = self.service_mut(name);
            if let Some(status) = service.exit_status() {
                bail!(
                    "{name} exited ({status}) before it was ready; log tail:\n{}",
                    service.log_tail(logfile::DUMP_LINES)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                let tail = service.log_tail(logfile::DUMP_LINES);
                bail!(
                    "{name} not ready at http://{admin}/readyz within {limit:?} \
                     (last answer: {last}); log tail:\n{tail}"
                );
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_belongs_to_the_process_that_bound_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        assert!(listens_on(std::process::id(), port));
        // Not ours once closed, and never another process's.
        assert!(!listens_on(1, port));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }
}
