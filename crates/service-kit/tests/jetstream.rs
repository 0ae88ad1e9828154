//! `ensure_resources`, the admin server, served endpoints, start-up look-ups and leases
//! against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy};
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, kv, Context};
use async_nats::{HeaderMap, Message};
use common::{http_get, wait_until, NatsServer};
use drover_protocol::subject::{self, keys, resources, timers};
use drover_protocol::{DecodeError, ErrorCode, ErrorPayload, Ready, RunId, WorkerId};
use drover_service_kit::kv_cache::KvCache;
use drover_service_kit::{
    admin, connect, ensure_resources, metrics, open_bucket, reply, run_for_leadership, Lease,
    Readiness, Requests, Settings,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn connected(server: &NatsServer) -> (async_nats::Client, Context) {
    let client = connect(&server.url, "service-kit-test", &CancellationToken::new())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    (client, js)
}

async fn stream_config(js: &Context, name: &str) -> StreamConfig {
    js.get_stream(name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone()
}

async fn fetch_one(consumer: &PullConsumer, wait: Duration) -> Option<jetstream::Message> {
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(wait)
        .messages()
        .await
        .unwrap();
    batch.next().await.map(|message| message.unwrap())
}

#[tokio::test]
async fn resources_are_created_idempotently_with_the_intended_shape() {
    let server = NatsServer::start();
    let (client, js) = connected(&server).await;
    let settings = Settings::default();
    ensure_resources(&js, &settings).await.unwrap();
    ensure_resources(&js, &settings).await.unwrap();

    let queue = stream_config(&js, resources::QUEUE_STREAM).await;
    assert_eq!(queue.subjects, vec![subject::all_queues()]);
    assert_eq!(queue.retention, RetentionPolicy::WorkQueue);
    assert_eq!(queue.storage, StorageType::File);
    assert_eq!(queue.num_replicas, 1);
    assert_eq!(queue.duplicate_window, Duration::from_secs(120));

    let directives = stream_config(&js, resources::DIRECTIVES_STREAM).await;
    assert_eq!(directives.retention, RetentionPolicy::WorkQueue);
    assert_eq!(directives.max_age, Duration::from_secs(7 * 24 * 3600));
    for key in [
        keys::READY,
        keys::STARTING,
        keys::COMPLETED,
        keys::TERMINATING,
    ] {
        assert!(
            directives.subjects.contains(&subject::from_any_worker(key)),
            "{key}"
        );
    }

    let timers_stream = stream_config(&js, resources::TIMERS_STREAM).await;
    assert_eq!(timers_stream.subjects, vec![timers::all()]);
    assert_eq!(timers_stream.retention, RetentionPolicy::WorkQueue);
    assert!(timers_stream.allow_message_schedules);

    let intake = stream_config(&js, resources::LOG_INTAKE_STREAM).await;
    assert_eq!(intake.subjects, vec![subject::all_worker_logs()]);
    assert_eq!(intake.retention, RetentionPolicy::WorkQueue);

    let logs = stream_config(&js, resources::LOGS_STREAM).await;
    assert_eq!(logs.subjects, vec![subject::all_logs()]);
    assert_eq!(logs.retention, RetentionPolicy::Limits);
    assert_eq!(logs.discard, DiscardPolicy::Old);
    assert_eq!(
        logs.max_age,
        Duration::from_millis(settings.logs_max_age_ms)
    );
    assert_eq!(logs.max_bytes, settings.logs_max_bytes);
    assert!(logs.allow_direct);

    for bucket in [
        resources::WORKERS_BUCKET,
        resources::RUNS_BUCKET,
        resources::RUN_KEYS_BUCKET,
        resources::LEADERS_BUCKET,
    ] {
        let config = stream_config(&js, &format!("KV_{bucket}")).await;
        assert_eq!(config.max_messages_per_subject, 1, "{bucket} history");
        assert_eq!(config.num_replicas, 1, "{bucket}");
        js.get_key_value(bucket).await.unwrap();
    }
    let runs = stream_config(&js, &format!("KV_{}", resources::RUNS_BUCKET)).await;
    assert!(runs.allow_message_ttl);
    assert_eq!(runs.max_age, Duration::ZERO);
    let run_keys = stream_config(&js, &format!("KV_{}", resources::RUN_KEYS_BUCKET)).await;
    assert!(run_keys.allow_message_ttl);
    let leaders = stream_config(&js, &format!("KV_{}", resources::LEADERS_BUCKET)).await;
    assert_eq!(
        leaders.max_age,
        Duration::from_millis(settings.leader_lease_ms)
    );

    let consumers = [
        (
            resources::DIRECTIVES_STREAM,
            resources::REGISTRY_CONSUMER,
            vec![
                subject::from_any_worker(keys::READY),
                subject::from_any_worker(keys::TERMINATING),
            ],
            10_000,
        ),
        (
            resources::DIRECTIVES_STREAM,
            resources::SCHEDULER_CONSUMER,
            vec![
                subject::from_any_worker(keys::STARTING),
                subject::from_any_worker(keys::COMPLETED),
            ],
            10_000,
        ),
        (
            resources::TIMERS_STREAM,
            resources::TIMERS_CONSUMER,
            vec![timers::all_fired().to_owned()],
            10_000,
        ),
        (
            resources::LOG_INTAKE_STREAM,
            resources::LOG_COLLECTOR_CONSUMER,
            vec![subject::all_worker_logs()],
            20_000,
        ),
    ];
    for (stream, name, filters, max_ack_pending) in consumers {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .consumer_info(name)
            .await
            .unwrap();
        let config = info.config;
        assert_eq!(config.durable_name.as_deref(), Some(name));
        assert_eq!(config.filter_subjects, filters, "{name}");
        assert_eq!(config.ack_policy, AckPolicy::Explicit);
        assert_eq!(config.ack_wait, drover_service_kit::CONSUMER_ACK_WAIT);
        assert_eq!(config.max_deliver, -1);
        assert_eq!(config.max_ack_pending, max_ack_pending);
        assert_eq!(config.deliver_policy, DeliverPolicy::All);
    }

    // A completion from a worker is captured and goes to the scheduler, not the registry.
    let worker = WorkerId::parse("w1").unwrap();
    let ack = js
        .publish(subject::from_worker(keys::COMPLETED, &worker), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, resources::DIRECTIVES_STREAM);
    let directives_stream = js.get_stream(resources::DIRECTIVES_STREAM).await.unwrap();
    let registry: PullConsumer = directives_stream
        .get_consumer(resources::REGISTRY_CONSUMER)
        .await
        .unwrap();
    let scheduler: PullConsumer = directives_stream
        .get_consumer(resources::SCHEDULER_CONSUMER)
        .await
        .unwrap();
    assert!(fetch_one(&registry, Duration::from_millis(300))
        .await
        .is_none());
    let message = fetch_one(&scheduler, Duration::from_secs(2))
        .await
        .expect("completion delivered");
    assert_eq!(message.subject.as_str(), "v1.routine.completed.w1");
    message.double_ack().await.unwrap();

    // Settings changes are applied to existing resources.
    let changed = Settings {
        logs_max_age_ms: 3_600_000,
        ..settings.clone()
    };
    ensure_resources(&js, &changed).await.unwrap();
    let logs = stream_config(&js, resources::LOGS_STREAM).await;
    assert_eq!(logs.max_age, Duration::from_secs(3600));
    drop(client);
}

#[tokio::test]
async fn a_schedule_fires_into_the_timers_consumer() {
    let server = NatsServer::start();
    let (_client, js) = connected(&server).await;
    ensure_resources(&js, &Settings::default()).await.unwrap();

    let run = RunId::generate();
    let fire_at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let at = fire_at
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Schedule", format!("@at {at}").as_str());
    headers.insert(
        "Nats-Schedule-Target",
        timers::timer_fire(timers::TimerKind::MaxWait, &run).as_str(),
    );
    let ack = js
        .publish_with_headers(
            timers::timer_schedule(timers::TimerKind::MaxWait, &run),
            headers,
            "deadline".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, resources::TIMERS_STREAM);

    let consumer: PullConsumer = js
        .get_stream(resources::TIMERS_STREAM)
        .await
        .unwrap()
        .get_consumer(resources::TIMERS_CONSUMER)
        .await
        .unwrap();
    let fired = fetch_one(&consumer, Duration::from_secs(10))
        .await
        .expect("the timer fired");
    assert!(time::OffsetDateTime::now_utc() >= fire_at - time::Duration::milliseconds(50));
    assert_eq!(
        timers::parse_fire(fired.subject.as_str()),
        Some((timers::TimerKind::MaxWait, run))
    );
    assert_eq!(fired.payload.as_ref(), b"deadline");
    fired.double_ack().await.unwrap();
}

#[tokio::test]
async fn refused_updates_keep_the_existing_resource() {
    let server = NatsServer::start();
    let (_client, js) = connected(&server).await;
    // An older deployment's consumer whose replay policy can no longer change.
    js.create_stream(StreamConfig {
        name: resources::DIRECTIVES_STREAM.to_owned(),
        subjects: vec![
            subject::from_any_worker(keys::READY),
            subject::from_any_worker(keys::TERMINATING),
        ],
        retention: RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    js.create_consumer_on_stream(
        pull::Config {
            durable_name: Some(resources::REGISTRY_CONSUMER.to_owned()),
            replay_policy: ReplayPolicy::Original,
            ack_policy: AckPolicy::Explicit,
            filter_subjects: vec![subject::from_any_worker(keys::READY)],
            ack_wait: Duration::from_secs(10),
            ..Default::default()
        },
        resources::DIRECTIVES_STREAM,
    )
    .await
    .unwrap();
    // A stream created with storage that cannot change.
    js.create_stream(StreamConfig {
        name: resources::QUEUE_STREAM.to_owned(),
        subjects: vec![subject::all_queues().to_owned()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();

    ensure_resources(&js, &Settings::default()).await.unwrap();
    let directives = stream_config(&js, resources::DIRECTIVES_STREAM).await;
    assert_eq!(
        directives.subjects.len(),
        4,
        "mutable stream fields are updated"
    );
    let queue = stream_config(&js, resources::QUEUE_STREAM).await;
    assert_eq!(
        queue.storage,
        StorageType::Memory,
        "the existing stream is kept"
    );
    let registry = js
        .get_stream(resources::DIRECTIVES_STREAM)
        .await
        .unwrap()
        .consumer_info(resources::REGISTRY_CONSUMER)
        .await
        .unwrap();
    assert_eq!(registry.config.replay_policy, ReplayPolicy::Original);
    assert_ne!(
        registry.config.ack_wait,
        Duration::from_secs(30),
        "kept as it was"
    );
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let server = NatsServer::start();
    let (client, js) = connected(&server).await;
    let handle = metrics::install();
    let readiness = Readiness::new();
    let stop = CancellationToken::new();
    let addr = admin::serve("127.0.0.1:0", readiness.clone(), handle, stop.clone())
        .await
        .unwrap();
    assert_ne!(addr.port(), 0);

    let health = http_get(addr, "/healthz").await.unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    let not_ready = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(not_ready.status, 503);
    assert!(not_ready.body.contains("nats"), "{}", not_ready.body);
    assert!(
        not_ready.body.contains("jetstream resources"),
        "{}",
        not_ready.body
    );

    readiness.set_client(client.clone());
    ensure_resources(&js, &Settings::default()).await.unwrap();
    readiness.set_resources_ok(true);
    let ready = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);

    let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = gate.clone();
    readiness.add_check(
        "warm cache",
        Arc::new(move || seen.load(std::sync::atomic::Ordering::SeqCst)),
    );
    let gated = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(gated.status, 503);
    assert!(gated.body.contains("warm cache"));
    gate.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(http_get(addr, "/readyz").await.unwrap().status, 200);

    ::metrics::counter!(metrics::REPLIES_TOTAL, "outcome" => "ok").increment(2);
    let scrape = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.header("content-type"),
        Some(admin::METRICS_CONTENT_TYPE)
    );
    assert!(
        scrape.body.contains("drover_replies_total{outcome=\"ok\"}"),
        "{}",
        scrape.body
    );

    stop.cancel();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            http_get(addr, "/healthz").await.is_err()
        })
        .await,
        "the admin server stops with its token"
    );
}

#[tokio::test]
async fn replies_carry_envelopes_and_service_error_headers() {
    let server = NatsServer::start();
    let (client, _js) = connected(&server).await;

    let mut requests = client.subscribe("test.reply").await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if message.payload.as_ref() == b"ok" {
                reply::ok_message(&responder, &message, &Ready { incarnation: 7 }).await;
            } else {
                let err = ErrorPayload::new(
                    ErrorCode::UnknownRun,
                    "no such run",
                    message.subject.as_str(),
                );
                reply::error_message(&responder, &message, &err).await;
            }
        }
    });

    let answer = client.request("test.reply", "ok".into()).await.unwrap();
    let decoded = drover_protocol::decode_reply::<Ready>(&answer.payload).unwrap();
    assert_eq!(decoded, Ok(Ready { incarnation: 7 }));

    let answer = client.request("test.reply", "fail".into()).await.unwrap();
    let headers = answer.headers.expect("error headers");
    assert_eq!(
        headers.get(reply::SERVICE_ERROR_HEADER).map(|v| v.as_str()),
        Some("no such run")
    );
    assert_eq!(
        headers
            .get(reply::SERVICE_ERROR_CODE_HEADER)
            .map(|v| v.as_str()),
        Some(ErrorCode::UnknownRun.service_status().to_string().as_str())
    );
    let error = drover_protocol::decode_reply::<Ready>(&answer.payload)
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::UnknownRun);
    assert_eq!(error.in_reply_to, "test.reply");
}

#[tokio::test]
async fn micro_service_replies_keep_the_error_body() {
    use async_nats::service::ServiceExt;

    let server = NatsServer::start();
    let (client, _js) = connected(&server).await;
    let service = client
        .service_builder()
        .start("drover-kit-test", "0.1.0")
        .await
        .unwrap();
    let mut endpoint = service.endpoint("test.micro").await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            if request.message.payload.as_ref() == b"ok" {
                reply::ok_request(&request, &Ready { incarnation: 1 }).await;
            } else {
                let err = ErrorPayload::new(ErrorCode::SchemaViolation, "bad body", "test.micro");
                reply::error_request(&responder, &request, &err).await;
            }
        }
    });

    assert_eq!(
        ask(&client, "test.micro", "ok").await,
        Ok(Ready { incarnation: 1 })
    );
    let error = ask(&client, "test.micro", "bad").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::SchemaViolation);
}

/// Requests `subject` of a micro service and decodes the answer; an error answer must
/// carry the service error headers too.
async fn ask(
    client: &async_nats::Client,
    subject: &'static str,
    body: &'static str,
) -> Result<Ready, ErrorPayload> {
    let answer = client.request(subject, body.into()).await.unwrap();
    let decoded = drover_protocol::decode_reply::<Ready>(&answer.payload).unwrap();
    if decoded.is_err() {
        let headers = answer.headers.expect("error headers");
        assert!(headers.get(reply::SERVICE_ERROR_CODE_HEADER).is_some());
    }
    decoded
}

#[tokio::test]
async fn replicas_starting_together_all_succeed() {
    let server = NatsServer::start();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let (_client, js) = connected(&server).await;
        handles.push(tokio::spawn(async move {
            ensure_resources(&js, &Settings::default()).await
        }));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn served_endpoints_answer_count_and_stop_with_shutdown() {
    use async_nats::service::ServiceExt;

    let server = NatsServer::start();
    let (client, _js) = connected(&server).await;
    let handle = metrics::install();
    let service = client
        .service_builder()
        .start("drover-kit-serve-test", "0.1.0")
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let requests = Requests::new(&client, "drover_kit_test_requests_total", &shutdown, &tasks);
    requests
        .add(
            &service,
            "echo",
            "test.serve",
            |message: Message| async move {
                if message.payload.as_ref() == b"ok" {
                    Ok(drover_protocol::encode(&Ready { incarnation: 2 }))
                } else {
                    Err(DecodeError::InvalidJson("not ok".to_owned()))
                }
            },
        )
        .await
        .unwrap();

    assert_eq!(
        ask(&client, "test.serve", "ok").await,
        Ok(Ready { incarnation: 2 })
    );
    let error = ask(&client, "test.serve", "no").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidJson);
    assert_eq!(error.in_reply_to, "test.serve");

    let scrape = handle.render();
    for outcome in ["ok", "invalid_json"] {
        assert!(
            scrape
                .lines()
                .any(|line| line.starts_with("drover_kit_test_requests_total{")
                    && line.contains("endpoint=\"echo\"")
                    && line.contains(&format!("outcome=\"{outcome}\""))
                    && line.ends_with(" 1")),
            "{outcome}: {scrape}"
        );
    }

    shutdown.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .expect("the endpoint loop stops with shutdown");
}

#[tokio::test]
async fn start_up_look_ups_wait_for_their_resource_or_shutdown() {
    let server = NatsServer::start();
    let (_client, js) = connected(&server).await;
    let shutdown = CancellationToken::new();
    let opening = tokio::spawn({
        let js = js.clone();
        let shutdown = shutdown.clone();
        async move {
            KvCache::<serde_json::Value>::open(&js, "LATE", &shutdown)
                .await
                .map(|cache| cache.len())
        }
    });
    // Let the first look-ups fail: the bucket comes later, as after a broker restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!opening.is_finished());
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "LATE".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    bucket.put("a", "{\"x\":1}".into()).await.unwrap();
    let loaded = tokio::time::timeout(Duration::from_secs(10), opening)
        .await
        .expect("the cache opens once the bucket exists")
        .unwrap();
    assert_eq!(loaded, Some(1));

    let never = tokio::spawn({
        let js = js.clone();
        let shutdown = shutdown.clone();
        async move { open_bucket(&js, "NEVER", &shutdown).await.is_some() }
    });
    shutdown.cancel();
    let opened = tokio::time::timeout(Duration::from_secs(5), never)
        .await
        .expect("shutdown ends the look-up")
        .unwrap();
    assert!(!opened);
}

/// Who leads, as seen by the `lead` closures of a lease test.
#[derive(Default)]
struct Terms {
    leading: Mutex<Vec<&'static str>>,
    overlapped: AtomicBool,
}

impl Terms {
    fn leaders(&self) -> Vec<&'static str> {
        self.leading.lock().unwrap().clone()
    }

    /// Waits until exactly `expected` lead.
    async fn led_by(&self, expected: &[&str], within: Duration) -> bool {
        wait_until(within, || async { self.leaders() == expected }).await
    }
}

/// A replica competing for `key` of `bucket`; its terms are recorded in `terms`.
fn contender(
    bucket: &kv::Store,
    key: &'static str,
    name: &'static str,
    lifetime: Duration,
    terms: &Arc<Terms>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let lease = Lease::new(
        bucket.clone(),
        key,
        name,
        lifetime,
        "drover_kit_test_leader",
    );
    let terms = Arc::clone(terms);
    tokio::spawn(run_for_leadership(lease, stop.clone(), move |term| {
        let terms = Arc::clone(&terms);
        async move {
            {
                let mut leading = terms.leading.lock().unwrap();
                leading.push(name);
                if leading.len() > 1 {
                    terms.overlapped.store(true, Ordering::SeqCst);
                }
            }
            term.cancelled().await;
            terms.leading.lock().unwrap().retain(|who| *who != name);
        }
    }))
}

/// A nats-server, a bucket of leases that live `lifetime` unless renewed (as in
/// `DROVER_LEADERS`), and an empty record of terms.
async fn leases(lifetime: Duration) -> (NatsServer, kv::Store, Arc<Terms>) {
    let server = NatsServer::start();
    let (_client, js) = connected(&server).await;
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "LEASES".to_owned(),
            max_age: lifetime,
            ..Default::default()
        })
        .await
        .unwrap();
    (server, bucket, Arc::new(Terms::default()))
}

async fn holder(bucket: &kv::Store, key: &str) -> Option<String> {
    let value = bucket.get(key).await.unwrap()?;
    Some(String::from_utf8(value.to_vec()).unwrap())
}

#[tokio::test]
async fn one_contender_leads_and_another_takes_over() {
    let lifetime = Duration::from_millis(900);
    let (_server, bucket, terms) = leases(lifetime).await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = contender(&bucket, "work", "a", lifetime, &terms, &stop_a);
    let b = contender(&bucket, "work", "b", lifetime, &terms, &stop_b);

    assert!(
        wait_until(Duration::from_secs(5), || async {
            terms.leaders().len() == 1
        })
        .await,
        "someone is elected"
    );
    let first = terms.leaders()[0];
    assert_eq!(holder(&bucket, "work").await.as_deref(), Some(first));
    // The lease is renewed: the leader outlives several lifetimes.
    tokio::time::sleep(lifetime * 3).await;
    assert_eq!(terms.leaders(), vec![first]);

    // The leader resigns: the other takes over without waiting for the lease to expire.
    let (resigning, resigner, other, stop_other) = if first == "a" {
        (&stop_a, a, "b", &stop_b)
    } else {
        (&stop_b, b, "a", &stop_a)
    };
    let resigned_at = Instant::now();
    resigning.cancel();
    tokio::time::timeout(Duration::from_secs(5), resigner)
        .await
        .expect("the resigning contender stops")
        .unwrap();
    assert!(
        terms.led_by(&[other], Duration::from_secs(5)).await,
        "{other} takes over"
    );
    assert!(
        resigned_at.elapsed() < lifetime,
        "took over after {:?}",
        resigned_at.elapsed()
    );
    assert_eq!(holder(&bucket, "work").await.as_deref(), Some(other));

    // Someone else writes the key: the leader cannot renew, steps down, and is elected again
    // once that write, never renewed, has expired.
    bucket.put("work", "intruder".into()).await.unwrap();
    assert!(
        terms.led_by(&[], Duration::from_secs(5)).await,
        "the leader steps down when its renewal fails"
    );
    assert!(
        terms.led_by(&[other], Duration::from_secs(10)).await,
        "the lease that nobody renews expires and {other} leads again"
    );
    assert!(
        !terms.overlapped.load(Ordering::SeqCst),
        "two leaders at once"
    );
    stop_other.cancel();
}

#[tokio::test]
async fn a_lease_nobody_renews_is_taken_over_when_it_expires() {
    let lifetime = Duration::from_millis(600);
    let (_server, bucket, terms) = leases(lifetime).await;
    // A leader that died without resigning.
    bucket.create("work", "gone".into()).await.unwrap();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let waiting = contender(&bucket, "work", "next", lifetime, &terms, &stop);
    assert!(
        terms.led_by(&["next"], Duration::from_secs(10)).await,
        "the stale lease is taken over"
    );
    assert!(
        started.elapsed() >= lifetime / 2,
        "elected after {:?}, before the stale lease expired",
        started.elapsed()
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the contender stops")
        .unwrap();
    assert_eq!(holder(&bucket, "work").await, None, "the lease is released");
}
