//! A running worker: its tasks, from connection to graceful shutdown.
//!
//! Tasks: the inbox (probes, assignments, cancels, child events, errors), the pulser, the
//! log shipper, re-registration, and one task per attempt. Shutdown sends `terminating`,
//! lets held attempts finish within the grace period while pulses go on, abandons what is
//! left without completing it (Drover places it again once the worker is OFFLINE), and only
//! then stops pulsing. Dropping the `run` future stops everything at once, without a word
//! to Drover.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use drover_nats_connect::refusals::{self, Refusals};
use drover_nats_connect::NatsAuth;
use drover_protocol::{subject, RoutineId, WorkerId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::builder::Connection;
use crate::error::WorkerError;
use crate::handler::Handler;
use crate::inbox;
use crate::lifecycle::{self, Profile};
use crate::log::{self, LogSink};
use crate::state::Shared;

/// How long the background tasks get to wind down once the worker is done.
const WIND_DOWN: Duration = Duration::from_secs(2);

/// How long handlers get to return once their tokens fired at the end of the grace period,
/// before their tasks are aborted.
const CANCEL_WAIT: Duration = Duration::from_secs(1);

/// A validated worker description.
pub(crate) struct Config {
    pub(crate) id: WorkerId,
    pub(crate) connection: Connection,
    pub(crate) auth: NatsAuth,
    pub(crate) handlers: HashMap<RoutineId, Handler>,
    pub(crate) profile: Profile,
    pub(crate) grace_period: Duration,
    pub(crate) terminating_reason: String,
}

/// Runs the worker until `shutdown` fires and the graceful shutdown is over.
pub(crate) async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let (client, refusals) = match config.connection {
        Connection::Client(client) => (client, None),
        Connection::Url(url) => {
            let (client, refusals) = connect(&url, &config.id, &config.auth).await?;
            (client, Some(refusals))
        }
    };
    // Subscribed before registering, so certainly before `ready`, and kept across
    // registrations (the client subscribes again by itself after a reconnect).
    let inbox = client.subscribe(subject::worker_inbox(&config.id)).await?;
    let (logs, lines) = LogSink::channel();
    let shared = Arc::new(Shared::new(
        config.id.clone(),
        client.clone(),
        logs.clone(),
        config.handlers,
    ));
    let stop = CancellationToken::new();
    let _teardown = Teardown {
        stop: stop.clone(),
        shared: Arc::clone(&shared),
    };
    let mut tasks = vec![
        tokio::spawn(log::ship(
            client.clone(),
            config.id.clone(),
            logs,
            lines,
            stop.clone(),
        )),
        tokio::spawn(inbox::serve(Arc::clone(&shared), inbox, stop.clone())),
        tokio::spawn(lifecycle::pulse(Arc::clone(&shared), stop.clone())),
    ];
    // A credential that is not this worker's is refused its inbox and its registration by
    // NATS: say so and stop, rather than retry a registration that cannot get through.
    let registered = match refusals {
        Some(refusals) => {
            tasks.push(tokio::spawn(report_refusals(
                refusals.clone(),
                stop.clone(),
            )));
            let mut refused = refusals;
            tokio::select! {
                registered = lifecycle::register(&shared, &config.profile, &shutdown) => registered,
                error = refused.next() => Err(WorkerError::Refused {
                    worker_id: config.id.to_string(),
                    error,
                }),
            }
        }
        None => lifecycle::register(&shared, &config.profile, &shutdown).await,
    };
    let result = match registered {
        Ok(Some(registered)) => {
            lifecycle::establish(&shared, &registered, &shutdown).await;
            tasks.push(tokio::spawn(lifecycle::renew(
                Arc::clone(&shared),
                config.profile,
                shutdown.clone(),
                stop.clone(),
            )));
            shutdown.cancelled().await;
            drain(&shared, config.grace_period, &config.terminating_reason).await;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(error) => Err(error),
    };
    stop.cancel();
    shared.abort_tasks();
    for task in tasks {
        let _ = tokio::time::timeout(WIND_DOWN, task).await;
    }
    let _ = tokio::time::timeout(WIND_DOWN, client.flush()).await;
    tracing::info!(worker_id = %shared.id, "worker stopped");
    result
}

/// Connects as the worker: the connection is named after the workerID and replies come to
/// `_INBOX.<workerID>.>`, the only inbox a worker may subscribe under the secured setup.
async fn connect(
    url: &str,
    id: &WorkerId,
    auth: &NatsAuth,
) -> Result<(Client, Refusals), WorkerError> {
    let (options, refusals) = refusals::watch(connect_options(id, url, auth)?);
    let client = options
        .connect(url)
        .await
        .map_err(|source| WorkerError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok((client, refusals))
}

/// Logs each publish or subscription NATS refuses this worker, until `stop`.
async fn report_refusals(mut refusals: Refusals, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            error = refusals.next() => tracing::error!(
                %error,
                "NATS refused this worker a publish or subscription; is its credential this workerID's?"
            ),
        }
    }
}

fn connect_options(
    id: &WorkerId,
    url: &str,
    auth: &NatsAuth,
) -> Result<async_nats::ConnectOptions, WorkerError> {
    let options = async_nats::ConnectOptions::new()
        .name(id.as_str())
        .custom_inbox_prefix(drover_protocol::grants::worker_inbox_prefix(id));
    Ok(auth.apply(url, options)?)
}

/// The graceful part of shutdown: `terminating`, then held runs get until the end of the
/// grace period to finish and have their completions stored.
async fn drain(shared: &Shared, grace_period: Duration, reason: &str) {
    let deadline = Instant::now() + grace_period;
    tracing::info!(worker_id = %shared.id, ?grace_period, "shutting down");
    // Both are bounded by the deadline: a `terminating` that cannot be stored (NATS away)
    // must not hold the process beyond it either.
    let never = CancellationToken::new();
    let finished = async {
        tokio::join!(
            lifecycle::terminating(shared, reason, &never),
            shared.all_released(),
        )
    };
    if tokio::time::timeout_at(deadline, finished).await.is_err() {
        let abandoned = shared.drop_all("the shutdown grace period is over");
        // Their tokens fired: let handlers that watch them return before the rest is aborted.
        let _ = tokio::time::timeout(CANCEL_WAIT, shared.all_tasks_ended()).await;
        shared.abort_tasks();
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "grace period over: runs cancelled without completing; Drover places them again"
            );
        }
    }
}

/// Stops everything when `run` ends, also when its future is dropped before the end.
struct Teardown {
    stop: CancellationToken,
    shared: Arc<Shared>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.drop_all("the worker stopped");
        self.shared.abort_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_is_named_after_the_worker_and_so_is_its_inbox() {
        let id = WorkerId::parse("demo-rs-3").expect("a valid workerID");
        let options = connect_options(&id, "nats://127.0.0.1:4222", &NatsAuth::default())
            .expect("no credentials to read");
        let shown = format!("{options:?}");
        assert!(shown.contains(r#""name": Some("demo-rs-3")"#), "{shown}");
        assert!(
            shown.contains(r#""inbox_prefix": "_INBOX.demo-rs-3""#),
            "{shown}"
        );
    }

    #[test]
    fn unusable_credentials_stop_the_worker_before_connecting() {
        let id = WorkerId::parse("w").expect("a valid workerID");
        let auth = NatsAuth {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let error = connect_options(&id, "nats://127.0.0.1:4222", &auth)
            .expect_err("an unreadable CA is an error");
        assert!(matches!(error, WorkerError::Auth(_)), "{error:?}");
    }
}
