//! The log-collector: lines are validated, enriched, stored once and in order, and served
//! by `v1.logs.query` with paging, `since` and follow (DESIGN §4, §7; protocol §7, §8.5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::Client;
use bytes::Bytes;
use drover_integration_tests::runs::{get, spec, submit};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{envelope, Recorder};
use drover_protocol::subject::{self, keys, resources};
use drover_protocol::{
    encode, Assignment, ErrorCode, ErrorPayload, LogLevel, LogLine, LogPage, LogRecord, LogsQuery,
    RunId, RunRecord, Starting, Timestamp, WorkerId,
};
use drover_testkit::{call, wait_for, wait_until, ProcStats, ServiceProcess, Stack, LOG_COLLECTOR};
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn stack() -> Stack {
    Stack::builder()
        .with_registry()
        .with_log_collector()
        .start()
        .await
        .expect("stack starts")
}

fn line(message: impl Into<String>, run: Option<&RunId>) -> LogLine {
    LogLine {
        level: LogLevel::Info,
        message: message.into(),
        run_id: run.cloned(),
        fields: None,
        timestamp: None,
    }
}

fn by_run(run: &RunId) -> LogsQuery {
    LogsQuery {
        run_id: Some(run.clone()),
        ..LogsQuery::default()
    }
}

fn by_worker(worker: &str) -> LogsQuery {
    LogsQuery {
        worker_id: Some(WorkerId::parse(worker).unwrap()),
        ..LogsQuery::default()
    }
}

async fn query(client: &Client, query: &LogsQuery) -> Result<LogPage, ErrorPayload> {
    call::<_, LogPage>(client, keys::LOGS_QUERY, query).await
}

/// Every record matching `filter`, page by page.
async fn query_all(client: &Client, filter: &LogsQuery) -> Vec<LogRecord> {
    let mut filter = LogsQuery {
        limit: Some(LogsQuery::MAX_LIMIT),
        ..filter.clone()
    };
    let mut records = Vec::new();
    loop {
        let page = query(client, &filter).await.expect("query answered");
        if page.logs.is_empty() {
            return records;
        }
        records.extend(page.logs);
        filter.cursor = Some(page.next_cursor.expect("a cursor with every page"));
    }
}

async fn stored(js: &jetstream::Context) -> u64 {
    let stream = js.get_stream(resources::LOGS_STREAM).await.unwrap();
    stream.get_info().await.unwrap().state.messages
}

async fn wait_stored(js: &jetstream::Context, count: u64, timeout: Duration) {
    wait_until(&format!("{count} records stored"), timeout, || async {
        stored(js).await >= count
    })
    .await
    .unwrap();
}

/// Writes a run record the way the scheduler does, for enrichment.
async fn put_run(runs: &kv::Store, run: &RunId, routine: &str, attempt: u64, worker: &str) {
    let record: RunRecord = serde_json::from_value(json!({
        "runID": run, "routineID": routine, "status": "RUNNING", "maxRetries": 1,
        "attempt": attempt, "retries": 0, "reassignments": 0, "workerID": worker,
        "createdAt": Timestamp::now(), "traceID": TRACE_ID,
    }))
    .unwrap();
    runs.put(run.as_str(), serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
}

/// Registers `worker` with the registry: the collector stores lines of registered workers
/// only.
async fn register(client: &Client, worker: &str) {
    let id = WorkerId::parse(worker).unwrap();
    let reply = client
        .request(
            subject::from_worker(keys::REGISTER, &id),
            envelope(keys::REGISTER, json!({"workerID": worker, "routines": []})),
        )
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["payloadKey"], "v1.registered", "{reply}");
}

/// Publishes `lines` on `v1.log.<worker>` through JetStream, so that each is known to be in
/// the intake before the call returns (a worker that needs that sends logs as requests).
async fn publish_acked(js: &jetstream::Context, worker: &WorkerId, lines: &[LogLine]) {
    let subject = subject::from_worker(keys::LOG, worker);
    for window in lines.chunks(256) {
        let mut acks = Vec::with_capacity(window.len());
        for line in window {
            acks.push(js.publish(subject.clone(), encode(line)).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// A counter's value from `/metrics` (0 when absent).
async fn metric(stack: &Stack, name_and_labels: &str) -> f64 {
    let (_, body) = stack.admin_get(LOG_COLLECTOR, "/metrics").await.unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn lines_are_enriched_and_queryable_by_run_and_worker() {
    let stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let runs = js.get_key_value(resources::RUNS_BUCKET).await.unwrap();
    let workers = [
        WorkerSpec::new("w0", &["images.resize"])
            .start(&client)
            .await,
        WorkerSpec::new("w1", &["images.resize"])
            .start(&client)
            .await,
        WorkerSpec::new("w2", &["images.resize"])
            .start(&client)
            .await,
    ];
    let known = RunId::generate();
    let unknown = RunId::generate();
    put_run(&runs, &known, "images.resize", 2, "w0").await;

    let written = Timestamp::from_millis(1_700_000_000_000);
    for index in 0..5 {
        let mut line = line(format!("known {index}"), Some(&known));
        line.fields = Some(json!({"index": index}).as_object().unwrap().clone());
        line.timestamp = Some(written);
        workers[0].publish(keys::LOG, &line).await;
        workers[2]
            .publish(keys::LOG, &self::line(format!("free {index}"), None))
            .await;
        if index < 3 {
            let line = self::line(format!("unknown {index}"), Some(&unknown));
            workers[1].publish(keys::LOG, &line).await;
        }
    }
    workers[0].publish(keys::LOG, &line("w0 alone", None)).await;
    wait_stored(&js, 14, Duration::from_secs(10)).await;

    let records = query(&client, &by_run(&known)).await.unwrap().logs;
    let messages: Vec<_> = records.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        messages,
        ["known 0", "known 1", "known 2", "known 3", "known 4"]
    );
    assert!(records.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.worker_id, "w0");
        assert_eq!(
            record.routine_id.as_ref().map(|r| r.as_str()),
            Some("images.resize")
        );
        assert_eq!(record.attempt, Some(2));
        assert_eq!(record.trace_id.as_deref(), Some(TRACE_ID));
        assert_eq!(record.level, LogLevel::Info);
        assert_eq!(record.fields["index"], json!(index));
        assert_eq!(record.timestamp, written, "the worker's timestamp is kept");
        assert!(record.received_at > written);
    }

    let records = query(&client, &by_run(&unknown)).await.unwrap().logs;
    assert_eq!(records.len(), 3);
    assert!(records
        .iter()
        .all(|r| r.routine_id.is_none() && r.attempt.is_none()));
    assert!(
        records.iter().all(|r| r.timestamp <= r.received_at),
        "arrival time stamped"
    );

    let w0 = query(&client, &by_worker("w0")).await.unwrap().logs;
    let messages: Vec<_> = w0.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        messages[..5],
        ["known 0", "known 1", "known 2", "known 3", "known 4"]
    );
    assert_eq!(messages[5], "w0 alone");
    let free = query(&client, &by_worker("w2")).await.unwrap().logs;
    assert_eq!(free.len(), 5);
    assert!(free
        .iter()
        .all(|r| r.run_id.is_none() && r.routine_id.is_none()));

    let mismatch = LogsQuery {
        worker_id: Some(WorkerId::parse("w1").unwrap()),
        ..by_run(&known)
    };
    let page = query(&client, &mismatch).await.unwrap();
    assert!(page.logs.is_empty());
    assert!(page.next_cursor.is_some(), "a cursor even without records");

    // An empty body means no filter.
    let reply = client
        .request(keys::LOGS_QUERY, Bytes::new())
        .await
        .unwrap();
    let page: LogPage = drover_protocol::envelope::decode_reply(&reply.payload)
        .unwrap()
        .unwrap();
    assert_eq!(page.logs.len(), 14);
    assert!(page.logs.windows(2).all(|pair| pair[0].seq < pair[1].seq));
}

#[tokio::test]
async fn lines_about_a_scheduled_run_carry_its_routine_attempt_and_trace() {
    let stack = Stack::builder()
        .with_registry()
        .with_scheduler()
        .with_log_collector()
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let mut worker = WorkerSpec::new("runner", &["logs.demo"])
        .start(&client)
        .await;
    let run = submit(&client, &spec("logs.demo")).await;
    let assignment = worker
        .recv(keys::REQUEST_START, Duration::from_secs(10))
        .await;
    let assignment: Assignment = serde_json::from_value(assignment.payload).unwrap();
    assert_eq!(assignment.run_id, run);
    worker
        .publish(
            keys::STARTING,
            &Starting {
                run_id: run.clone(),
                attempt: assignment.attempt,
            },
        )
        .await;
    for index in 0..3 {
        worker
            .publish(keys::LOG, &line(format!("working {index}"), Some(&run)))
            .await;
    }
    wait_stored(&js, 3, Duration::from_secs(10)).await;

    let record = get(&client, &run).await.expect("the run exists");
    let logs = query(&client, &by_run(&run)).await.unwrap().logs;
    assert_eq!(logs.len(), 3);
    for log in logs {
        assert_eq!(log.routine_id, Some(record.routine_id.clone()));
        assert_eq!(log.attempt, Some(assignment.attempt));
        assert!(log.trace_id.is_some());
        assert_eq!(log.trace_id, record.trace_id);
        assert_eq!(log.worker_id, worker.id);
    }
}

#[tokio::test]
async fn paging_returns_every_record_once_and_since_filters() {
    let stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let worker = WorkerId::parse("pager").unwrap();
    register(&client, "pager").await;
    let lines: Vec<_> = (0..250).map(|i| line(format!("line {i}"), None)).collect();
    publish_acked(&js, &worker, &lines).await;
    wait_stored(&js, 250, Duration::from_secs(10)).await;

    let mut filter = LogsQuery {
        limit: Some(100),
        ..by_worker("pager")
    };
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = query(&client, &filter).await.unwrap();
        sizes.push(page.logs.len());
        let cursor = page.next_cursor.expect("a cursor with every page");
        if page.logs.is_empty() {
            assert_eq!(
                filter.cursor.as_deref(),
                Some(cursor.as_str()),
                "an empty page keeps its cursor"
            );
            break;
        }
        seen.extend(page.logs);
        filter.cursor = Some(cursor);
    }
    assert_eq!(sizes, [100, 100, 50, 0]);
    let messages: Vec<_> = seen.iter().map(|r| r.message.clone()).collect();
    let expected: Vec<_> = (0..250).map(|i| format!("line {i}")).collect();
    assert_eq!(messages, expected);
    assert!(seen.windows(2).all(|pair| pair[0].seq < pair[1].seq));

    // `since`: only what was stored at or after it.
    let last = seen.last().unwrap().received_at;
    wait_until(
        "the clock passes the last record",
        Duration::from_secs(2),
        || async { Timestamp::now().as_millis() > last.as_millis() + 5 },
    )
    .await
    .unwrap();
    let since = Timestamp::now();
    let later: Vec<_> = (0..7).map(|i| line(format!("later {i}"), None)).collect();
    publish_acked(&js, &worker, &later).await;
    wait_stored(&js, 257, Duration::from_secs(10)).await;
    let filter = LogsQuery {
        since: Some(since),
        ..by_worker("pager")
    };
    let records = query_all(&client, &filter).await;
    let messages: Vec<_> = records.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        messages,
        ["later 0", "later 1", "later 2", "later 3", "later 4", "later 5", "later 6"]
    );

    for (cursor, limit) in [("abc", None), ("0", None), ("t-1", None)] {
        let bad = LogsQuery {
            cursor: Some(cursor.to_owned()),
            limit,
            ..LogsQuery::default()
        };
        assert_eq!(
            query(&client, &bad).await.unwrap_err().code,
            ErrorCode::InvalidCursor,
            "{cursor}"
        );
    }
    for limit in [0, 1001] {
        let bad = LogsQuery {
            limit: Some(limit),
            ..LogsQuery::default()
        };
        assert_eq!(
            query(&client, &bad).await.unwrap_err().code,
            ErrorCode::SchemaViolation
        );
    }
}

/// Polls like `drover logs --follow` until `count` new records came, and returns them.
async fn follow(client: &Client, filter: &mut LogsQuery, count: usize) -> Vec<LogRecord> {
    let state = std::sync::Mutex::new((filter.clone(), Vec::new()));
    wait_until(
        &format!("{count} records followed"),
        Duration::from_secs(10),
        || {
            let state = &state;
            async move {
                let current = state.lock().unwrap().0.clone();
                let page = query(client, &current).await.unwrap();
                let mut state = state.lock().unwrap();
                state.0.cursor = Some(page.next_cursor.expect("a cursor with every reply"));
                state.1.extend(page.logs);
                state.1.len() >= count
            }
        },
    )
    .await
    .unwrap();
    let (next, records) = state.into_inner().unwrap();
    *filter = next;
    records
}

#[tokio::test]
async fn following_with_the_cursor_skips_and_repeats_nothing() {
    let stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let worker = WorkerId::parse("follower").unwrap();
    register(&client, "follower").await;
    let run = RunId::generate();

    // Nothing logged yet: the empty reply still hands out a cursor to poll with, both for a
    // plain filter and for a `since` filter.
    let mut by_run = LogsQuery {
        limit: Some(3),
        ..by_run(&run)
    };
    let mut since_now = LogsQuery {
        since: Some(Timestamp::now()),
        limit: Some(4),
        ..by_worker("follower")
    };
    for filter in [&mut by_run, &mut since_now] {
        let page = query(&client, filter).await.unwrap();
        assert!(page.logs.is_empty());
        filter.cursor = page.next_cursor;
        assert!(filter.cursor.is_some());
    }

    let mut expected = Vec::new();
    let mut followed_run = Vec::new();
    let mut followed_since = Vec::new();
    for round in 0..4 {
        let lines: Vec<_> = (0..5)
            .map(|i| line(format!("round {round} line {i}"), Some(&run)))
            .collect();
        publish_acked(&js, &worker, &lines).await;
        expected.extend(lines.into_iter().map(|line| line.message));
        followed_run
            .extend(follow(&client, &mut by_run, expected.len() - followed_run.len()).await);
        followed_since.extend(
            follow(
                &client,
                &mut since_now,
                expected.len() - followed_since.len(),
            )
            .await,
        );
    }
    for followed in [&followed_run, &followed_since] {
        let messages: Vec<_> = followed.iter().map(|r| r.message.clone()).collect();
        assert_eq!(messages, expected, "every line once, in order");
    }
    // Caught up: polling again returns nothing new.
    assert!(query(&client, &by_run).await.unwrap().logs.is_empty());
}

#[tokio::test]
async fn invalid_lines_are_answered_counted_and_not_stored() {
    let stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let worker = WorkerSpec::new("sloppy", &["r"]).start(&client).await;
    let errors = Recorder::start(&client, "v1.worker.sloppy.error").await;
    let on = subject::from_worker(keys::LOG, &worker.id);
    let bodies = [
        Bytes::from_static(b"this is not json"),
        envelope(
            keys::READY,
            json!({"level": "info", "message": "wrong key"}),
        ),
        envelope(keys::LOG, json!({"level": "loud", "message": "bad level"})),
        envelope(keys::LOG, json!({"level": "info"})),
        envelope(
            keys::LOG,
            json!({"level": "info", "message": "x".repeat(300 * 1024)}),
        ),
    ];
    for body in bodies {
        client.publish(on.clone(), body).await.unwrap();
    }
    worker
        .publish(keys::LOG, &line("the only good line", None))
        .await;

    let codes = wait_for("five errors", Duration::from_secs(10), || async {
        let payloads = errors.payloads_on("v1.worker.sloppy.error");
        (payloads.len() >= 5).then_some(payloads)
    })
    .await
    .unwrap();
    let codes: Vec<_> = codes
        .iter()
        .map(|p| p["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_json",
            "payload_key_mismatch",
            "schema_violation",
            "schema_violation",
            "payload_too_large"
        ]
    );
    assert!(errors
        .payloads_on("v1.worker.sloppy.error")
        .iter()
        .all(|p| p["inReplyTo"] == "v1.log.sloppy"));

    wait_stored(&js, 1, Duration::from_secs(10)).await;
    let records = query_all(&client, &LogsQuery::default()).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].message, "the only good line");
    for (code, count) in [
        ("invalid_json", 1.0),
        ("payload_key_mismatch", 1.0),
        ("schema_violation", 2.0),
        ("payload_too_large", 1.0),
    ] {
        let name = format!("drover_log_collector_lines_rejected_total{{code=\"{code}\"}}");
        assert_eq!(metric(&stack, &name).await, count, "{code}");
    }
    assert_eq!(
        metric(&stack, "drover_log_collector_lines_stored_total").await,
        1.0
    );
}

#[tokio::test]
async fn lines_of_unregistered_workers_are_refused_and_not_stored() {
    let stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let errors = Recorder::start(&client, "v1.worker.*.error").await;
    let ghost = WorkerId::parse("ghost").unwrap();
    publish_acked(&js, &ghost, &[line("from nowhere", None)]).await;
    let refusal = wait_for("the ghost's refusal", Duration::from_secs(10), || async {
        errors
            .payloads_on("v1.worker.ghost.error")
            .into_iter()
            .next()
    })
    .await
    .unwrap();
    assert_eq!(refusal["code"], ErrorCode::UnknownWorker.as_str());
    assert_eq!(refusal["inReplyTo"], "v1.log.ghost");
    assert_eq!(refusal["details"]["workerID"], "ghost");

    // A worker that logs as soon as it has registered is taken, even before the collector
    // has seen its registration go by.
    register(&client, "prompt").await;
    let prompt = WorkerId::parse("prompt").unwrap();
    publish_acked(&js, &prompt, &[line("just registered", None)]).await;
    wait_stored(&js, 1, Duration::from_secs(10)).await;
    let records = query_all(&client, &LogsQuery::default()).await;
    let messages: Vec<_> = records.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["just registered"]);
    assert!(errors.payloads_on("v1.worker.prompt.error").is_empty());
    assert_eq!(
        metric(
            &stack,
            "drover_log_collector_lines_rejected_total{code=\"unknown_worker\"}"
        )
        .await,
        1.0
    );
}

const WORKERS: usize = 5;
const RUNS_PER_WORKER: usize = 4;
const LINES_PER_RUN: usize = 500;

/// `workers × runs × lines` lines, each naming its run and index; a worker interleaves its
/// runs. Returns the runs of each worker.
async fn burst(
    client: &Client,
    js: &jetstream::Context,
    runs: &kv::Store,
    lines_per_run: usize,
) -> (
    Vec<(WorkerId, Vec<RunId>)>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let mut plan = Vec::new();
    for w in 0..WORKERS {
        let worker = WorkerId::parse(format!("burst-{w}")).unwrap();
        register(client, worker.as_str()).await;
        let mut owned = Vec::new();
        for _ in 0..RUNS_PER_WORKER {
            let run = RunId::generate();
            put_run(runs, &run, "burst.routine", 1, worker.as_str()).await;
            owned.push(run);
        }
        plan.push((worker, owned));
    }
    let mut publishers = Vec::new();
    for (worker, owned) in plan.clone() {
        let js = js.clone();
        publishers.push(tokio::spawn(async move {
            let mut lines = Vec::with_capacity(owned.len() * lines_per_run);
            for index in 0..lines_per_run {
                for run in &owned {
                    let mut line = line(format!("{index}"), Some(run));
                    line.fields = Some(json!({"index": index}).as_object().unwrap().clone());
                    lines.push(line);
                }
            }
            publish_acked(&js, &worker, &lines).await;
        }));
    }
    (plan, publishers)
}

/// Every line of the burst is stored exactly once, in order within its run.
async fn assert_burst_stored(
    client: &Client,
    js: &jetstream::Context,
    plan: &[(WorkerId, Vec<RunId>)],
    lines_per_run: usize,
) {
    let intake = js.get_stream(resources::LOG_INTAKE_STREAM).await.unwrap();
    wait_until(
        "the intake is fully acknowledged",
        Duration::from_secs(60),
        || async {
            let info = intake
                .consumer_info(resources::LOG_COLLECTOR_CONSUMER)
                .await
                .unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await
    .unwrap();
    let total = (plan.len() * RUNS_PER_WORKER * lines_per_run) as u64;
    assert_eq!(stored(js).await, total, "no line lost, none stored twice");
    for (worker, owned) in plan {
        for run in owned {
            let records = query_all(client, &by_run(run)).await;
            let indexes: Vec<usize> = records.iter().map(|r| r.message.parse().unwrap()).collect();
            let disorder = indexes.iter().enumerate().find(|(at, index)| at != *index);
            assert!(
                indexes.len() == lines_per_run && disorder.is_none(),
                "run {run} of {worker}: {} lines, first out of place (position, index): {disorder:?}",
                indexes.len()
            );
            assert!(records.windows(2).all(|pair| pair[0].seq < pair[1].seq));
            assert!(records
                .iter()
                .all(|r| r.worker_id == *worker && r.attempt == Some(1)));
        }
    }
}

#[tokio::test]
async fn a_collector_killed_mid_burst_loses_and_repeats_nothing() {
    let mut stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let runs = js.get_key_value(resources::RUNS_BUCKET).await.unwrap();
    let (plan, publishers) = burst(&client, &js, &runs, LINES_PER_RUN).await;

    wait_stored(&js, 2_500, Duration::from_secs(30)).await;
    stack.kill_service(LOG_COLLECTOR);
    let at_kill = stored(&js).await;
    for publisher in publishers {
        publisher.await.unwrap();
    }
    assert!(
        at_kill < 10_000,
        "killed in the middle of the burst ({at_kill} stored)"
    );
    stack.restart_service(LOG_COLLECTOR).await.unwrap();
    assert_burst_stored(&client, &js, &plan, LINES_PER_RUN).await;
    println!(
        "killed with {at_kill} of 10000 stored; after the restart {} redelivered lines were dropped as duplicates",
        metric(&stack, "drover_log_collector_lines_duplicate_total").await
    );
}

#[tokio::test]
async fn replicas_share_the_intake_and_survive_the_leader_dying() {
    let mut stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let runs = js.get_key_value(resources::RUNS_BUCKET).await.unwrap();
    let admin = drover_testkit::free_port();
    let env = [
        ("DROVER_NATS_URL".to_owned(), stack.nats_url()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    let args = ["--admin-addr".to_owned(), format!("127.0.0.1:{admin}")];
    let mut second = ServiceProcess::start(LOG_COLLECTOR, &env, &args).unwrap();
    let second_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let leads = |addr: std::net::SocketAddr| async move {
        matches!(drover_testkit::http_get(addr, "/metrics").await, Ok((200, body))
            if body.lines().any(|l| l.starts_with("drover_log_collector_intake_leader ") && l.ends_with(" 1")))
    };
    let first_addr = stack.admin_addr(LOG_COLLECTOR);
    wait_until("one replica leads", Duration::from_secs(10), || async {
        leads(first_addr).await || leads(second_addr).await
    })
    .await
    .unwrap();

    let (plan, publishers) = burst(&client, &js, &runs, LINES_PER_RUN / 2).await;
    wait_stored(&js, 1_000, Duration::from_secs(30)).await;
    if leads(first_addr).await {
        stack.kill_service(LOG_COLLECTOR);
    } else {
        second.kill();
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    assert_burst_stored(&client, &js, &plan, LINES_PER_RUN / 2).await;
    drop(second);
}

/// `LINES` lines about `run`, spread over the workers, each published with a PubAck.
async fn publish_spread(js: &jetstream::Context, run: &RunId) {
    let mut publishers = Vec::new();
    for w in 0..WORKERS {
        let worker = WorkerId::parse(format!("fast-{w}")).unwrap();
        let js = js.clone();
        let lines: Vec<_> = (0..LINES / WORKERS)
            .map(|i| {
                let mut line = line(format!("{i}: {}", "x".repeat(100)), Some(run));
                line.fields = Some(json!({"index": i}).as_object().unwrap().clone());
                line
            })
            .collect();
        publishers.push(tokio::spawn(async move {
            publish_acked(&js, &worker, &lines).await;
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
}

/// Seconds between the first and the last `receivedAt` the collector stamped.
fn stamped_span(records: &[LogRecord]) -> f64 {
    let first = records.iter().map(|r| r.received_at).min().unwrap();
    let last = records.iter().map(|r| r.received_at).max().unwrap();
    (last.as_millis() - first.as_millis()).max(1) as f64 / 1000.0
}

/// Reads every record of `run` in pages of 1000; returns them and the seconds spent
/// waiting for replies (decoding in this test binary excluded).
async fn timed_read(client: &Client, run: &RunId) -> (Vec<LogRecord>, f64) {
    let mut filter = LogsQuery {
        limit: Some(LogsQuery::MAX_LIMIT),
        ..by_run(run)
    };
    let mut records = Vec::new();
    let mut waited = Duration::ZERO;
    loop {
        let asked = Instant::now();
        let reply = client
            .request(keys::LOGS_QUERY, encode(&filter))
            .await
            .unwrap();
        waited += asked.elapsed();
        let page: LogPage = drover_protocol::envelope::decode_reply(&reply.payload)
            .unwrap()
            .unwrap();
        if page.logs.is_empty() {
            return (records, waited.as_secs_f64());
        }
        records.extend(page.logs);
        filter.cursor = page.next_cursor;
    }
}

const LINES: usize = 20_000;

#[tokio::test]
async fn throughput_of_a_burst() {
    let mut stack = stack().await;
    let client = stack.client().await;
    let js = stack.jetstream().await;
    let runs = js.get_key_value(resources::RUNS_BUCKET).await.unwrap();
    let (live, backlog) = (RunId::generate(), RunId::generate());
    put_run(&runs, &live, "fast.routine", 1, "fast-0").await;
    put_run(&runs, &backlog, "fast.routine", 1, "fast-0").await;
    for w in 0..WORKERS {
        register(&client, &format!("fast-{w}")).await;
    }

    // Live: from the first publish until every line is stored.
    let started = Instant::now();
    publish_spread(&js, &live).await;
    let published = started.elapsed().as_secs_f64();
    wait_stored(&js, LINES as u64, Duration::from_secs(120)).await;
    let live_total = started.elapsed().as_secs_f64();

    // Backlog: the intake filled while the collector was stopped, then drained.
    let stopped = stack
        .terminate_service(LOG_COLLECTOR, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        stopped.is_some_and(|status| status.success()),
        "{stopped:?}"
    );
    publish_spread(&js, &backlog).await;
    let nats_cpu = ProcStats::of(stack.nats.pid()).unwrap().cpu;
    let restarted = Instant::now();
    stack.restart_service(LOG_COLLECTOR).await.unwrap();
    wait_stored(&js, 2 * LINES as u64, Duration::from_secs(120)).await;
    let drain_total = restarted.elapsed().as_secs_f64();
    let collector = ProcStats::of(stack.service(LOG_COLLECTOR).pid()).unwrap();
    let nats_cpu = ProcStats::of(stack.nats.pid()).unwrap().cpu - nats_cpu;

    let (live_records, live_read) = timed_read(&client, &live).await;
    let (backlog_records, _) = timed_read(&client, &backlog).await;
    for records in [&live_records, &backlog_records] {
        assert_eq!(records.len(), LINES);
        let mut per_worker: BTreeMap<WorkerId, Vec<u64>> = BTreeMap::new();
        for record in records.iter() {
            let index = record.fields["index"].as_u64().unwrap();
            per_worker
                .entry(record.worker_id.clone())
                .or_default()
                .push(index);
        }
        assert!(per_worker
            .values()
            .all(|ix| ix.windows(2).all(|p| p[0] < p[1])));
    }
    let rate = |seconds: f64| LINES as f64 / seconds;
    println!(
        "log-collector throughput, {LINES} lines of ~200 bytes from {WORKERS} workers:\n  \
         live burst: first publish to all stored {live_total:.2} s = {:.0} lines/s \
         (publishing took {published:.2} s; collector stamps span {:.2} s = {:.0} lines/s)\n  \
         backlog drain: restart to all stored {drain_total:.2} s = {:.0} lines/s \
         (collector stamps span {:.2} s = {:.0} lines/s; CPU: collector {:.2} s including \
         start-up, nats-server {:.2} s; collector peak RSS {} MiB)\n  \
         query: pages of 1000 answered at {:.0} records/s",
        rate(live_total),
        stamped_span(&live_records),
        rate(stamped_span(&live_records)),
        rate(drain_total),
        stamped_span(&backlog_records),
        rate(stamped_span(&backlog_records)),
        collector.cpu.as_secs_f64(),
        nats_cpu.as_secs_f64(),
        collector.peak_rss_bytes >> 20,
        rate(live_read),
    );
}
