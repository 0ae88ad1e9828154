//! `run_service`: the fixed bootstrap and the bounded shutdown around a service's body.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::metrics::{self, ServiceMetrics};
use crate::nats::{connect_observed, ConnectError, Connections};
use crate::readiness::Readiness;
use crate::settings::{load_nats_auth, load_settings, CommonArgs, Settings};
use crate::{admin, health_probe, resources};
use drover_nats_connect::NatsAuth;

/// Exit status for a configuration error (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status when a second signal cuts the drain short.
pub const EXIT_SECOND_SIGNAL: i32 = 130;
/// Bound on flushing and draining the NATS client at exit.
const NATS_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a service body gets to work with.
pub struct ServiceContext {
    /// The validated settings.
    pub settings: Settings,
    /// The connected NATS client.
    pub client: Client,
    /// JetStream on that client.
    pub js: jetstream::Context,
    /// Cancelled on SIGTERM/SIGINT, or when the body fails; every task should watch it.
    pub shutdown: CancellationToken,
    /// Tasks spawned here are awaited, within the drain grace, before exit.
    pub tracker: TaskTracker,
    /// Readiness reported on `/readyz`: call `set_serving(true)` once serving, and add
    /// service checks to it.
    pub readiness: Readiness,
    /// This replica's identity (`settings.instance_id`).
    pub instance_id: String,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("instance_id", &self.instance_id)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Runs a service: settings, telemetry, metrics (the kit's and `service_metrics`), admin
/// server, signals, NATS, JetStream resources, then `body`, then a drain bounded by
/// `drain_grace_ms`.
///
/// `body` may run until `shutdown` is cancelled, or spawn its tasks on `tracker` and return;
/// the service then runs until a signal or until every tracked task has ended. Exit status:
/// 0 on a clean stop, 1 if the body or start-up failed, 64 for a configuration error,
/// 130 on a second signal.
pub async fn run_service<F, Fut>(
    service_name: &'static str,
    default_admin_addr: &'static str,
    service_metrics: ServiceMetrics,
    args: CommonArgs,
    body: F,
) -> ExitCode
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match load_settings(&args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{service_name}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_health {
        let admin_addr = settings.admin_addr.as_deref().unwrap_or(default_admin_addr);
        return health_probe::check_health(service_name, admin_addr).await;
    }
    let auth = match load_nats_auth(&settings.nats_url, |name| std::env::var(name).ok()) {
        Ok(auth) => auth,
        Err(error) => {
            eprintln!("{service_name}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let telemetry = drover_telemetry::init(service_name);
    let code = run_with_settings(
        service_name,
        default_admin_addr,
        &service_metrics,
        settings,
        &auth,
        body,
    )
    .await;
    // The OTLP client blocks; keep it off the runtime's worker threads.
    if tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .is_err()
    {
        eprintln!("{service_name}: telemetry shutdown panicked");
    }
    code
}

async fn run_with_settings<F, Fut>(
    service_name: &'static str,
    default_admin_addr: &'static str,
    service_metrics: &ServiceMetrics,
    settings: Settings,
    auth: &NatsAuth,
    body: F,
) -> ExitCode
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let instance_id = settings.instance_id.clone();
    let handle = metrics::install_for(service_metrics);
    ::metrics::gauge!(
        metrics::SERVICE_INFO,
        "service" => service_name,
        "instance" => instance_id.clone(),
        "version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);

    let shutdown = CancellationToken::new();
    // Stop listening when we return, so a later signal gets the default treatment.
    let _signals = spawn_signal_handler(shutdown.clone()).map(AbortOnDrop);

    let readiness = Readiness::new();
    // Not ready until the body says it serves (Readiness::set_serving).
    readiness.await_serving();
    let admin_stop = CancellationToken::new();
    // Serve /healthz and a failing /readyz until the very end, drain included.
    let _admin_guard = admin_stop.clone().drop_guard();
    let admin_addr = settings.admin_addr.as_deref().unwrap_or(default_admin_addr);
    if let Err(error) = admin::serve(admin_addr, readiness.clone(), handle, admin_stop).await {
        error!(addr = admin_addr, %error, "admin server could not start");
        return ExitCode::FAILURE;
    }
    info!(
        service = service_name,
        instance = %instance_id,
        version = env!("CARGO_PKG_VERSION"),
        "starting"
    );

    let connections = Arc::new(Connections::default());
    let name = format!("{service_name}/{instance_id}");
    let client = match connect_observed(
        &settings.nats_url,
        &name,
        auth,
        &shutdown,
        Some(connections.clone()),
    )
    .await
    {
        Ok(client) => client,
        Err(ConnectError::Cancelled) => {
            info!("stopped before reaching nats");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            error!(%error, "cannot connect to nats");
            return ExitCode::FAILURE;
        }
    };
    readiness.set_client(client.clone());
    let js = jetstream::new(client.clone());

    if !ensure_until_done(&js, &settings, &readiness, &shutdown).await {
        info!("stopped before the jetstream resources were ensured");
        close_client(&client).await;
        return ExitCode::SUCCESS;
    }
    tokio::spawn(reensure_on_reconnect(
        connections,
        js.clone(),
        settings.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    let grace = Duration::from_millis(settings.drain_grace_ms);
    let tracker = TaskTracker::new();
    let context = ServiceContext {
        settings,
        client: client.clone(),
        js,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        readiness: readiness.clone(),
        instance_id,
    };
    let outcome = drive(body(context), &shutdown, &tracker, &readiness, grace).await;
    close_client(&client).await;
    match outcome {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            error!(error = format!("{error:#}"), "service failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs the body, then drains: cancels `shutdown` and waits for tracked tasks, all within
/// `grace` of the moment shutdown began.
async fn drive<Fut>(
    body: Fut,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    readiness: &Readiness,
    grace: Duration,
) -> anyhow::Result<()>
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut body = std::pin::pin!(body);
    let mut deadline = None;
    let result = tokio::select! {
        result = &mut body => result,
        () = shutdown.cancelled() => {
            readiness.set_draining();
            let until = Instant::now() + grace;
            deadline = Some(until);
            match tokio::time::timeout_at(until, &mut body).await {
                Ok(result) => result,
                Err(_) => {
                    ::metrics::counter!(metrics::DRAIN_TIMEOUTS_TOTAL).increment(1);
                    warn!(grace_ms = grace.as_millis() as u64, "service body did not stop within the drain grace period");
                    Ok(())
                }
            }
        }
    };

    tracker.close();
    if result.is_ok() && deadline.is_none() && !tracker.is_empty() {
        // The body spawned its work and returned: run until a signal or until the work ends.
        shutdown.run_until_cancelled(tracker.wait()).await;
    }
    readiness.set_draining();
    shutdown.cancel();
    let until = deadline.unwrap_or_else(|| Instant::now() + grace);
    if tokio::time::timeout_at(until, tracker.wait())
        .await
        .is_err()
    {
        ::metrics::counter!(metrics::DRAIN_TIMEOUTS_TOTAL).increment(1);
        warn!(
            tasks = tracker.len(),
            grace_ms = grace.as_millis() as u64,
            "tasks still running after the drain grace period"
        );
    }
    result
}

/// Ensures the resources, retrying with backoff; `false` if shutdown came first.
async fn ensure_until_done(
    js: &jetstream::Context,
    settings: &Settings,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::default();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let Some(result) = shutdown
            .run_until_cancelled(resources::ensure_resources(js, settings))
            .await
        else {
            return false;
        };
        match result {
            Ok(()) => {
                readiness.set_resources_ok(true);
                ::metrics::gauge!(metrics::RESOURCES_READY).set(1.0);
                info!(attempt, "jetstream resources ready");
                return true;
            }
            Err(error) => {
                let delay = backoff.next_delay();
                readiness.set_resources_ok(false);
                ::metrics::gauge!(metrics::RESOURCES_READY).set(0.0);
                ::metrics::counter!(metrics::RESOURCES_FAILURES_TOTAL).increment(1);
                warn!(attempt, retry_in_ms = delay.as_millis() as u64, %error, "jetstream resources not ready");
                if shutdown
                    .run_until_cancelled(tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    return false;
                }
            }
        }
    }
}

/// A server restarted without its store (or a memory stream lost) would leave the
/// resources missing; ensure them again after every reconnection.
async fn reensure_on_reconnect(
    connections: Arc<Connections>,
    js: jetstream::Context,
    settings: Settings,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut seen = connections.count();
    loop {
        if shutdown
            .run_until_cancelled(connections.changed())
            .await
            .is_none()
        {
            return;
        }
        let now = connections.count();
        if now == seen {
            continue;
        }
        seen = now;
        info!("nats reconnected; ensuring jetstream resources");
        if !ensure_until_done(&js, &settings, &readiness, &shutdown).await {
            return;
        }
    }
}

async fn close_client(client: &Client) {
    match tokio::time::timeout(NATS_DRAIN_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "nats flush failed"),
        Err(_) => warn!("nats flush timed out"),
    }
    if let Err(error) = client.drain().await {
        warn!(%error, "nats drain failed");
    }
}

/// The first SIGTERM or SIGINT cancels `shutdown`; a second one exits at once.
///
/// The handlers are registered before this returns, so no signal is missed.
fn spawn_signal_handler(shutdown: CancellationToken) -> Option<JoinHandle<()>> {
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            warn!(%error, "cannot listen for signals; stop the process another way");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let first = signals.next().await;
        info!(signal = first, "shutdown requested");
        shutdown.cancel();
        let second = signals.next().await;
        warn!(signal = second, "second signal; exiting without draining");
        std::process::exit(EXIT_SECOND_SIGNAL);
    }))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> &'static str {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        "ctrl-c"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_returns_leaves_its_tasks_running_until_shutdown() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let readiness = Readiness::new();
        let task_token = shutdown.clone();
        tracker.spawn(async move { task_token.cancelled().await });
        let canceller = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            canceller.cancel();
        });
        let started = Instant::now();
        let result = drive(
            async { Ok(()) },
            &shutdown,
            &tracker,
            &readiness,
            Duration::from_secs(1),
        )
        .await;
        assert!(result.is_ok());
        assert!(started.elapsed() >= Duration::from_secs(60));
        assert!(tracker.is_empty());
        assert_eq!(readiness.not_ready()[0], "draining");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_body_cancels_shutdown_and_reports_the_error() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let token = shutdown.clone();
        tracker.spawn(async move { token.cancelled().await });
        let result = drive(
            async { Err(anyhow::anyhow!("boom")) },
            &shutdown,
            &tracker,
            &Readiness::new(),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(result.unwrap_err().to_string(), "boom");
        assert!(shutdown.is_cancelled());
        assert!(tracker.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_bounded_by_the_grace_period() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // A task that ignores shutdown, and a body that ignores it too.
        tracker.spawn(tokio::time::sleep(Duration::from_secs(3600)));
        shutdown.cancel();
        let started = Instant::now();
        let result = drive(
            std::future::pending(),
            &shutdown,
            &tracker,
            &Readiness::new(),
            Duration::from_secs(2),
        )
        .await;
        assert!(result.is_ok());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_with_no_tasks_exits_at_once() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let result = drive(
            async { Ok(()) },
            &shutdown,
            &tracker,
            &Readiness::new(),
            Duration::from_secs(5),
        )
        .await;
        assert!(result.is_ok());
        assert!(shutdown.is_cancelled());
    }
}
