//! A real nats-server with JetStream, on a free port and a temporary store.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::logfile;
use crate::paths::nats_server_binary;
use crate::supervised::Supervised;
use crate::wait::patient;

const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_NAME: &str = "nats-server.log";

/// Extra settings for [`NatsServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Extra command-line arguments, appended after the testkit's own.
    pub args: Vec<String>,
    /// Text of a configuration file passed with `-c` (for example JetStream limits).
    /// Command-line arguments take precedence over it.
    pub config: Option<String>,
    /// An nkey seed the testkit's own connections (readiness, [`NatsServer::client`]) use,
    /// for a configuration that admits no anonymous client.
    pub nkey_seed: Option<String>,
}

impl NatsOptions {
    /// Appends one command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets the seed the testkit's own connections authenticate with.
    pub fn nkey_seed(mut self, seed: impl Into<String>) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// Sets the configuration file text.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }
}

/// A running `nats-server -js` owned by a test; killed and cleaned up on drop.
///
/// The server listens on 127.0.0.1 on a port that it picked itself (`-p -1`), keeps its
/// JetStream store in a temporary directory, and logs to a file in that directory.
pub struct NatsServer {
    process: Supervised,
    binary: PathBuf,
    options: NatsOptions,
    port: u16,
    starts: u32,
    // Dropped last, after the process is dead.
    dir: Option<TempDir>,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("pid", &self.process.pid())
            .field("port", &self.port)
            .field("dir", &self.dir_path())
            .finish()
    }
}

impl NatsServer {
    /// Starts a server with default options and waits until JetStream answers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(NatsOptions::default()).await
    }

    /// Starts a server with extra options and waits until JetStream answers.
    pub async fn start_with(options: NatsOptions) -> anyhow::Result<Self> {
        let binary = nats_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("drover-nats-")
            .tempdir()
            .context("create a temporary directory for nats-server")?;
        if let Some(text) = &options.config {
            std::fs::write(dir.path().join("nats.conf"), text).context("write nats.conf")?;
        }
        let args = server_args(dir.path(), &options, None);
        let log_path = dir.path().join(LOG_NAME);
        let process = Supervised::spawn(&binary, &args, &[], &log_path, "start #1 of nats-server")?;
        let mut server = Self {
            process,
            binary,
            options,
            port: 0,
            starts: 1,
            dir: Some(dir),
        };
        server.port = server.read_ports_file().await?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client address, 127.0.0.1:<port> (for a [`Proxy`](crate::Proxy) in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.port))
    }

    /// The client port; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`); it stays the same across restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir_path().join("store")
    }

    /// The server's log file (stdout and stderr of every start, with a marker per start).
    pub fn log_path(&self) -> PathBuf {
        self.dir_path().join(LOG_NAME)
    }

    /// The whole log file as text.
    pub fn log_contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// The process id of the current server process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Connect options suited to tests: reconnects are quick and never give up.
    pub fn connect_options() -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(20 * attempts.min(10) as u64)
            })
    }

    /// A new client connection with [`NatsServer::connect_options`].
    ///
    /// # Panics
    ///
    /// Panics when the server does not accept the connection.
    pub async fn client(&self) -> async_nats::Client {
        with_seed(Self::connect_options(), self.options.nkey_seed.as_deref())
            .connect(self.url())
            .await
            .unwrap_or_else(|error| panic!("connect to nats-server at {}: {error}", self.url()))
    }

    /// A JetStream context over a new client connection.
    ///
    /// # Panics
    ///
    /// Panics when the server does not accept the connection.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// Kills the server with SIGKILL and reaps it. The store stays for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the server with SIGTERM and waits for it to exit (SIGKILL after a grace period).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGTERM)?;
        if self
            .process
            .wait_exit(patient(STOP_TIMEOUT))
            .await
            .is_none()
        {
            self.process.kill();
            bail!("nats-server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it");
        }
        Ok(())
    }

    /// Stops the server if it runs, then starts it again on the same port and store, and
    /// waits until JetStream answers (its streams are recovered by then).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.process.is_running() {
            self.stop().await?;
        }
        let args = server_args(self.dir_path(), &self.options, Some(self.port));
        let deadline = tokio::time::Instant::now() + patient(START_TIMEOUT);
        loop {
            self.starts += 1;
            let log_path = self.log_path();
            let log_len = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            let marker = format!(
                "start #{} of nats-server on port {}",
                self.starts, self.port
            );
            self.process = Supervised::spawn(&self.binary, &args, &[], &log_path, &marker)?;
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    let since = log_since(&log_path, log_len);
                    let busy = since.contains("address already in use");
                    if !busy || tokio::time::Instant::now() >= deadline {
                        self.process.kill();
                        return Err(error);
                    }
                    // The port is still held by something else for a moment: retry.
                    self.process.kill();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn dir_path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(TempDir::path)
            .expect("the directory lives as long as the server")
    }

    /// Waits for the ports file that the server writes once it listens, and returns the port.
    async fn read_ports_file(&mut self) -> anyhow::Result<u16> {
        let dir = self.dir_path().to_path_buf();
        let suffix = format!("_{}.ports", self.process.pid());
        let deadline = tokio::time::Instant::now() + patient(START_TIMEOUT);
        let mut interval = Duration::from_millis(5);
        loop {
            if let Some(port) = find_port(&dir, &suffix) {
                return Ok(port);
            }
            if let Some(status) = self.process.try_status() {
                bail!(
                    "nats-server exited ({status}) before listening; log tail:\n{}",
                    logfile::tail(&self.log_path(), logfile::DUMP_LINES)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nats-server wrote no ports file in {} within {:?}; log tail:\n{}",
                    dir.display(),
                    patient(START_TIMEOUT),
                    logfile::tail(&self.log_path(), logfile::DUMP_LINES)
                );
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits until the server accepts a connection and answers `$JS.API.INFO`.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let deadline = tokio::time::Instant::now() + patient(START_TIMEOUT);
        let mut interval = Duration::from_millis(5);
        loop {
            let last_error = match jetstream_answers(&url, self.options.nkey_seed.as_deref()).await
            {
                Ok(()) => return Ok(()),
                Err(error) => format!("{error:#}"),
            };
            if let Some(status) = self.process.try_status() {
                bail!(
                    "nats-server exited ({status}) before it was ready; log tail:\n{}",
                    logfile::tail(&self.log_path(), logfile::DUMP_LINES)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nats-server at {url} not ready within {:?} (last error: {last_error}); \
                     log tail:\n{}",
                    patient(START_TIMEOUT),
                    logfile::tail(&self.log_path(), logfile::DUMP_LINES)
                );
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.process.kill();
        if logfile::should_dump() {
            logfile::dump(&format!("nats-server :{}", self.port), &self.log_path());
        }
        if logfile::keep_dirs() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "testkit: kept nats-server directory {}",
                    dir.keep().display()
                );
            }
        }
    }
}

fn server_args(dir: &Path, options: &NatsOptions, port: Option<u16>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if options.config.is_some() {
        args.extend(["-c".into(), dir.join("nats.conf").into()]);
    }
    let port = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    args.extend([
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.into(),
        "-js".into(),
        "-sd".into(),
        dir.join("store").into(),
        "--ports_file_dir".into(),
        dir.into(),
    ]);
    args.extend(options.args.iter().map(OsString::from));
    args
}

/// The client port from the ports file ending in `suffix`, once it is complete.
fn find_port(dir: &Path, suffix: &str) -> Option<u16> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(suffix))?;
    // The file may be half written: a parse failure means "not yet".
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

fn log_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn with_seed(
    options: async_nats::ConnectOptions,
    seed: Option<&str>,
) -> async_nats::ConnectOptions {
    match seed {
        Some(seed) => options.nkey(seed.to_owned()),
        None => options,
    }
}

async fn jetstream_answers(url: &str, seed: Option<&str>) -> anyhow::Result<()> {
    let client = with_seed(async_nats::ConnectOptions::new(), seed)
        .connection_timeout(Duration::from_millis(500))
        .connect(url)
        .await
        .context("connect")?;
    let jetstream = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(1), jetstream.query_account())
        .await
        .context("$JS.API.INFO timed out")?
        .context("$JS.API.INFO")?;
    Ok(())
}
