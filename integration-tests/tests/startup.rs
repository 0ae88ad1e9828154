//! Every service rides out NATS going away during its start-up: it stays alive, says not
//! ready while NATS is unreachable, and once NATS is back it becomes ready and serves.
//!
//! Each service reaches NATS through a proxy. A first start, uncut, records the JetStream
//! API requests the start-up makes (ensuring streams, buckets and consumers, then the
//! service's own look-ups, watches, consumers and election). The cases then cut the
//! connection before the first byte, before a few requests of the ensure and before every
//! request of the service's own steps, before a few replies (the server acted, the service
//! never heard), and restart nats-server itself during the start-up, the way a chaos test
//! once made the scheduler exit. A request lost with the connection times out after 5 s,
//! so the cases of one service run side by side, each on its own nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::Client;
use drover_integration_tests::put_idle_worker;
use drover_integration_tests::runs::{get, spec, try_submit};
use drover_protocol::subject::{self, keys, resources};
use drover_protocol::{
    encode, LogLevel, LogLine, LogPage, LogsQuery, RegistryList, WorkerId, WorkerList,
};
use drover_testkit::{
    call, patient, wait_for, wait_until, CutPoint, Stack, HEARTBEAT_MONITOR, LOG_COLLECTOR,
    REGISTRY, SCHEDULER,
};
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

/// How long NATS stays unreachable in each case; the service must not be ready, nor
/// exit, at any moment of it.
const CUT_WINDOW: Duration = Duration::from_millis(1500);
/// How long a start-up may take to reach the cut point.
const REACH_CUT: Duration = Duration::from_secs(20);
/// How long a service may take to notice that NATS is gone.
const NOTICE: Duration = Duration::from_secs(5);
/// How long a service may take to be ready once NATS is back: a request lost with the
/// connection times out (5 s) before the step that made it is retried.
const RECOVER: Duration = Duration::from_secs(30);
/// Cases of one service that run at once, each with its own nats-server.
const CONCURRENT_CASES: usize = 24;
/// What every service logs once `run_service` has ensured the JetStream resources.
const RESOURCES_READY: &str = "jetstream resources ready";

#[derive(Debug, Clone, Copy)]
enum Service {
    Registry,
    Monitor,
    Scheduler,
    LogCollector,
}

impl Service {
    fn binary(self) -> &'static str {
        match self {
            Service::Registry => REGISTRY,
            Service::Monitor => HEARTBEAT_MONITOR,
            Service::Scheduler => SCHEDULER,
            Service::LogCollector => LOG_COLLECTOR,
        }
    }

    /// A quick check that the service does its work, so that "ready" is not a lie.
    async fn serves(self, stack: &Stack) -> anyhow::Result<()> {
        let client = stack.client().await;
        match self {
            Service::Registry => {
                call::<_, WorkerList>(&client, keys::REGISTRY_LIST, &RegistryList::default())
                    .await
                    .context("v1.registry.list")?;
            }
            Service::Monitor => monitor_probes(stack, &client).await?,
            Service::Scheduler => {
                let run = try_submit(&client, &spec("startup.check"))
                    .await
                    .context("v1.routine.request_start")?;
                get(&client, &run).await.context("v1.run.get")?;
                leads(stack, "drover_scheduler_leader").await?;
            }
            Service::LogCollector => {
                leads(stack, "drover_log_collector_intake_leader").await?;
                logs_are_stored(stack, &client).await?;
            }
        }
        Ok(())
    }
}
/// Where in the start-up NATS goes away.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// The proxy cuts at the point and refuses reconnections for [`CUT_WINDOW`].
    Cut(CutPoint),
    /// The same, and nats-server restarts (on its store) while the proxy is cut.
    RestartWhileCut(CutPoint),
    /// nats-server restarts as soon as the service has ensured the JetStream resources.
    RestartAfterResources,
}

/// What an uncut start-up does before it is ready.
struct Calibration {
    /// The subject of every JetStream API request, in order.
    requests: Vec<String>,
    /// How many of them ensure the resources (`run_service`, before the service's body):
    /// up to the last stream create or update.
    ensured: usize,
    /// Replies to requests.
    replies: u64,
}

impl Calibration {
    /// Starts the service through an uncut proxy and watches it until it is ready.
    async fn measure(service: Service) -> anyhow::Result<Self> {
        let mut stack = Stack::builder()
            .with_service(service.binary())
            .through_proxy()
            .spawn()
            .await?;
        stack.wait_service_ready(service.binary()).await?;
        let requests = stack.proxy().js_request_subjects();
        let ensured = requests
            .iter()
            .rposition(|subject| {
                subject.starts_with("$JS.API.STREAM.CREATE.")
                    || subject.starts_with("$JS.API.STREAM.UPDATE.")
            })
            .map_or(0, |last| last + 1);
        if ensured == 0 || ensured >= requests.len() {
            bail!("no JetStream requests of the service's own after ensuring: {requests:?}");
        }
        Ok(Self {
            requests,
            ensured,
            replies: stack.proxy().replies(),
        })
    }

    /// Where to cut: NATS unreachable from the first byte; before a few of the requests
    /// that ensure the resources (one loop, retried as a whole) and before every request
    /// of the service's own steps (look-ups, watches, consumers, elections); before a few
    /// replies (the server acted, the service never heard); and two restarts of nats-server.
    fn cases(&self) -> Vec<Case> {
        let (ensured, all) = (self.ensured as u64, self.requests.len() as u64);
        let mut cases = vec![Case::Cut(CutPoint::AfterClientBytes(0))];
        let mut requests = vec![1, ensured / 2, ensured];
        requests.extend(ensured + 1..=all);
        requests.dedup();
        cases.extend(
            requests
                .into_iter()
                .map(|n| Case::Cut(CutPoint::BeforeJsRequest(n))),
        );
        let last = self.replies.max(ensured + 1);
        let mut replies = vec![ensured / 2, ensured + 1, (ensured + 1 + last) / 2, last];
        replies.dedup();
        cases.extend(
            replies
                .into_iter()
                .map(|n| Case::Cut(CutPoint::BeforeReply(n))),
        );
        cases.push(Case::RestartWhileCut(CutPoint::BeforeJsRequest(
            ensured + 1,
        )));
        cases.push(Case::RestartAfterResources);
        cases
    }

    /// A case for people: where it cuts, with the request's subject.
    fn describe(&self, case: Case) -> String {
        let point = |point: CutPoint| match point {
            CutPoint::AfterClientBytes(0) => "NATS unreachable from the start".to_owned(),
            CutPoint::BeforeJsRequest(n) => format!(
                "cut before request {n} ({})",
                self.requests
                    .get(n as usize - 1)
                    .map_or("?", String::as_str)
            ),
            CutPoint::BeforeReply(n) => format!("cut before reply {n}"),
            other => format!("cut {other:?}"),
        };
        match case {
            Case::Cut(cut) => point(cut),
            Case::RestartWhileCut(cut) => format!("nats-server restarted, {}", point(cut)),
            Case::RestartAfterResources => {
                format!("nats-server restarted after {RESOURCES_READY:?}")
            }
        }
    }
}

/// Runs every case for `service` side by side and fails with all that failed.
async fn rides_out_nats_going_away(service: Service) {
    let started = Instant::now();
    let calibration = Calibration::measure(service)
        .await
        .expect("an uncut start-up");
    let cases = calibration.cases();
    let outcomes: Vec<anyhow::Result<()>> = futures::stream::iter(cases.clone())
        .map(|case| one_case(service, case))
        .buffered(CONCURRENT_CASES)
        .collect()
        .await;
    let failures: Vec<String> = cases
        .iter()
        .zip(outcomes)
        .filter_map(|(&case, outcome)| {
            let error = outcome.err()?;
            Some(format!("{}: {error:#}", calibration.describe(case)))
        })
        .collect();
    eprintln!(
        "{}: {} JetStream requests until ready ({} ensuring the resources), {} replies; \
         {} cases in {:?}",
        service.binary(),
        calibration.requests.len(),
        calibration.ensured,
        calibration.replies,
        cases.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed {} of {} cases:\n{}",
        service.binary(),
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

async fn one_case(service: Service, case: Case) -> anyhow::Result<()> {
    let name = service.binary();
    let builder = Stack::builder().with_service(name).ready_timeout(RECOVER);
    let builder = match case {
        Case::Cut(point) | Case::RestartWhileCut(point) => builder.cut_at(point),
        Case::RestartAfterResources => builder.through_proxy(),
    };
    let mut stack = builder.spawn().await?;
    let result = async {
        match case {
            Case::Cut(_) => {
                reach_the_cut(&mut stack, name).await?;
                not_ready_while_cut(&mut stack, name).await?;
            }
            Case::RestartWhileCut(_) => {
                reach_the_cut(&mut stack, name).await?;
                stack.restart_nats().await?;
                not_ready_while_cut(&mut stack, name).await?;
            }
            Case::RestartAfterResources => {
                wait_until("the resources are ensured", REACH_CUT, || async {
                    stack.service(name).log_contents().contains(RESOURCES_READY)
                })
                .await?;
                stack.restart_nats().await?;
            }
        }
        stack.proxy().restore();
        stack.wait_service_ready(name).await?;
        service.serves(&stack).await?;
        if let Some(status) = stack.service_mut(name).exit_status() {
            bail!("{name} exited ({status}) after it served");
        }
        Ok(())
    }
    .await;
    result.with_context(|| format!("log tail of {name}:\n{}", stack.service(name).log_tail(30)))
}

/// Waits until the armed cut fires, failing if the service exits first.
async fn reach_the_cut(stack: &mut Stack, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + patient(REACH_CUT);
    while !stack.proxy().is_cut() {
        if let Some(status) = stack.service_mut(name).exit_status() {
            bail!("{name} exited ({status}) before the cut point");
        }
        if Instant::now() >= deadline {
            bail!(
                "the start-up never reached the cut point ({} JetStream requests, {} bytes)",
                stack.proxy().js_requests(),
                stack.proxy().client_bytes()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Holds the proxy cut for [`CUT_WINDOW`]: the service notices, and then is never ready
/// and never exits while NATS stays away.
async fn not_ready_while_cut(stack: &mut Stack, name: &str) -> anyhow::Result<()> {
    wait_until("the service notices the cut", NOTICE, || async {
        !matches!(stack.admin_get(name, "/readyz").await, Ok((200, _)))
    })
    .await?;
    let until = Instant::now() + patient(CUT_WINDOW);
    while Instant::now() < until {
        if let Some(status) = stack.service_mut(name).exit_status() {
            bail!("{name} exited ({status}) while NATS was unreachable");
        }
        match stack.admin_get(name, "/readyz").await {
            Ok((200, body)) => bail!("{name} said ready while NATS was unreachable: {body}"),
            Ok(_) => {}
            Err(error) => bail!("{name}'s /readyz did not answer while cut: {error:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The value of an unlabelled gauge on the service's `/metrics`.
async fn gauge(stack: &Stack, name: &str, metric: &str) -> Option<f64> {
    let (_, body) = stack.admin_get(name, "/metrics").await.ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The service's only replica wins its election.
async fn leads(stack: &Stack, metric: &str) -> anyhow::Result<()> {
    let name = stack.service_names().pop().expect("one service");
    wait_until(&format!("{metric} is 1"), RECOVER, || async {
        gauge(stack, &name, metric).await == Some(1.0)
    })
    .await
}

/// A worker record the monitor has never heard from is probed with `check_pulse`.
async fn monitor_probes(stack: &Stack, client: &Client) -> anyhow::Result<()> {
    let worker = WorkerId::parse("silent-1").expect("a valid worker id");
    let mut probes = client
        .subscribe(subject::to_worker(&worker, keys::CHECK_PULSE))
        .await?;
    client.flush().await?;
    let now = drover_protocol::Timestamp::now();
    let record = json!({
        "workerID": "silent-1", "incarnation": 1, "status": "IDLE", "phase": "READY",
        "routines": ["startup.check"], "capacity": 1, "heartbeatIntervalMs": 200,
        "lostAfterMs": 60_000, "registeredAt": now, "statusChangedAt": now,
    });
    let workers = stack
        .jetstream()
        .await
        .get_key_value(resources::WORKERS_BUCKET)
        .await?;
    workers
        .put("silent-1", serde_json::to_vec(&record)?.into())
        .await?;
    tokio::time::timeout(patient(RECOVER), probes.next())
        .await
        .context("no check_pulse for a silent worker")?
        .context("probe subscription ended")?;
    Ok(())
}

/// A line published to the intake comes back from `v1.logs.query`.
async fn logs_are_stored(stack: &Stack, client: &Client) -> anyhow::Result<()> {
    let worker = WorkerId::parse("logger-1").expect("a valid worker id");
    // Lines are stored only for registered workers.
    put_idle_worker(&stack.jetstream().await, worker.as_str()).await?;
    let line = LogLine {
        level: LogLevel::Info,
        message: "after the cut".to_owned(),
        run_id: None,
        fields: None,
        timestamp: None,
    };
    stack
        .jetstream()
        .await
        .publish(subject::from_worker(keys::LOG, &worker), encode(&line))
        .await?
        .await?;
    let query = LogsQuery {
        worker_id: Some(worker),
        ..LogsQuery::default()
    };
    wait_for("the line is stored", RECOVER, || async {
        call::<_, LogPage>(client, keys::LOGS_QUERY, &query)
            .await
            .ok()
            .filter(|page| {
                page.logs
                    .iter()
                    .any(|record| record.message == line.message)
            })
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn registry_rides_out_nats_going_away_during_start_up() {
    rides_out_nats_going_away(Service::Registry).await;
}

#[tokio::test]
async fn heartbeat_monitor_rides_out_nats_going_away_during_start_up() {
    rides_out_nats_going_away(Service::Monitor).await;
}

#[tokio::test]
async fn scheduler_rides_out_nats_going_away_during_start_up() {
    rides_out_nats_going_away(Service::Scheduler).await;
}

#[tokio::test]
async fn log_collector_rides_out_nats_going_away_during_start_up() {
    rides_out_nats_going_away(Service::LogCollector).await;
}
