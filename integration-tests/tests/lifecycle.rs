//! The worker lifecycle through the real registry and heartbeat-monitor (DESIGN §5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{registry_record, worker_status as status, Recorder};
use drover_protocol::subject::keys;
use drover_protocol::{
    ErrorCode, GivePulse, RegistryList, RoutineId, WorkerId, WorkerList, WorkerStatus,
};
use drover_testkit::{call, hold_for, wait_for, wait_until, Stack};

const INTERVAL_MS: u64 = 200;
const LOST_AFTER_MS: u64 = 1000;

async fn stack() -> Stack {
    Stack::builder()
        .heartbeat_interval_ms(INTERVAL_MS)
        .lost_after_ms(LOST_AFTER_MS)
        .with_registry()
        .with_monitor()
        .start()
        .await
        .expect("stack starts")
}

#[tokio::test]
async fn register_ready_pulse_and_discovery() {
    let stack = stack().await;
    let client = stack.client().await;
    let events = Recorder::start(&client, "v1.registry.events.*").await;
    let worker = WorkerSpec::new("resizer-1", &["images.resize", "images.thumb"])
        .label("gpu", "true")
        .label("region", "eu")
        .capacity(3)
        .start(&client)
        .await;
    assert_eq!(worker.incarnation(), 1);
    assert_eq!(worker.registered.heartbeat_interval_ms, INTERVAL_MS);
    assert_eq!(worker.registered.lost_after_ms, LOST_AFTER_MS);
    wait_until("worker is IDLE", Duration::from_secs(5), || async {
        status(&client, "resizer-1").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();

    let list: WorkerList = call(&client, keys::REGISTRY_LIST, &RegistryList::default())
        .await
        .unwrap();
    let listed = list
        .workers
        .iter()
        .find(|worker| worker.worker_id == "resizer-1")
        .expect("listed");
    assert_eq!(
        listed.routines,
        vec![
            RoutineId::parse("images.resize").unwrap(),
            RoutineId::parse("images.thumb").unwrap()
        ]
    );
    assert_eq!(listed.labels.get("gpu").map(String::as_str), Some("true"));
    assert_eq!(listed.capacity, 3);

    // Filters: by routine, by labels, by status; each filter must hold.
    let by = |routine: Option<&str>, labels: &[(&str, &str)], status: Option<WorkerStatus>| {
        let client = client.clone();
        let filter = RegistryList {
            status,
            routine_id: routine.map(|r| RoutineId::parse(r).unwrap()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..Default::default()
        };
        async move {
            let list: WorkerList = call(&client, keys::REGISTRY_LIST, &filter).await.unwrap();
            list.workers.len()
        }
    };
    assert_eq!(by(Some("images.resize"), &[], None).await, 1);
    assert_eq!(by(Some("other"), &[], None).await, 0);
    assert_eq!(
        by(None, &[("gpu", "true"), ("region", "eu")], None).await,
        1
    );
    assert_eq!(by(None, &[("gpu", "false")], None).await, 0);
    assert_eq!(by(None, &[], Some(WorkerStatus::Idle)).await, 1);
    assert_eq!(by(None, &[], Some(WorkerStatus::Lost)).await, 0);

    // The registry is a NATS micro service that $SRV discovery finds.
    let ping = client
        .request("$SRV.INFO.drover-registry", bytes::Bytes::new())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&ping.payload).unwrap();
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| endpoint["subject"].as_str().unwrap())
        .collect();
    for expected in ["v1.registry.list", "v1.registry.get", "v1.register.*"] {
        assert!(
            subjects.contains(&expected),
            "{expected} not in {subjects:?}"
        );
    }

    // Status changes were announced, in order.
    wait_until("events seen", Duration::from_secs(2), || async {
        events.payloads_on("v1.registry.events.resizer-1").len() >= 2
    })
    .await
    .unwrap();
    let statuses: Vec<String> = events
        .payloads_on("v1.registry.events.resizer-1")
        .iter()
        .map(|event| event["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses[..2], ["INITIALIZING", "IDLE"]);
    // It stays IDLE while it pulses: no probe-driven status change in a few lost-after windows.
    hold_for(Duration::from_millis(3 * LOST_AFTER_MS)).await;
    assert_eq!(status(&client, "resizer-1").await, Some(WorkerStatus::Idle));
    drop(worker);
}

#[tokio::test]
async fn silent_worker_becomes_unresponsive_then_lost_in_time() {
    let stack = stack().await;
    let client = stack.client().await;
    let events = Recorder::start(&client, "v1.registry.events.quiet").await;
    let worker = WorkerSpec::new("quiet", &["r"]).start(&client).await;
    wait_until("worker is IDLE", Duration::from_secs(5), || async {
        status(&client, "quiet").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
    let silenced = drover_protocol::Timestamp::now();
    worker.go_silent();
    wait_until("worker is LOST", Duration::from_secs(5), || async {
        status(&client, "quiet").await == Some(WorkerStatus::Lost)
    })
    .await
    .unwrap();
    // Measured with the registry's own timestamp of the change, not this test's polling:
    // a silent worker is LOST within lostAfterMs plus one interval.
    let lost_at = events
        .payloads_on("v1.registry.events.quiet")
        .iter()
        .find(|event| event["status"] == "LOST")
        .map(|event| drover_protocol::Timestamp::parse(event["at"].as_str().unwrap()).unwrap())
        .expect("a LOST event");
    let took = lost_at.since(silenced);
    assert!(
        took <= Duration::from_millis(LOST_AFTER_MS + INTERVAL_MS),
        "took {took:?}"
    );
    let statuses: Vec<String> = events
        .payloads_on("v1.registry.events.quiet")
        .iter()
        .map(|event| event["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["INITIALIZING", "IDLE", "UNRESPONSIVE", "LOST"]);

    // A lost worker's pulses are refused: it must register again.
    worker
        .publish(
            keys::GIVE_PULSE,
            &GivePulse {
                incarnation: 1,
                status: WorkerStatus::Idle,
                runs: vec![],
                id: None,
            },
        )
        .await;
    let mut worker = worker;
    let error = worker.recv(keys::ERROR, Duration::from_secs(3)).await;
    assert_eq!(error.payload["code"], "not_registered");
    let again = WorkerSpec::new("quiet", &["r"]).start(&client).await;
    assert_eq!(again.incarnation(), 2);
    wait_until("worker is IDLE again", Duration::from_secs(5), || async {
        status(&client, "quiet").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_probe_answered_keeps_the_worker() {
    let stack = stack().await;
    let client = stack.client().await;
    // This worker never pulses on its own, but answers every probe.
    let events = Recorder::start(&client, "v1.registry.events.prober").await;
    let worker = WorkerSpec::new("prober", &["r"])
        .only_answer_probes()
        .start(&client)
        .await;
    wait_until("worker is IDLE", Duration::from_secs(5), || async {
        status(&client, "prober").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
    let _ = worker;
    hold_for(Duration::from_millis(2 * LOST_AFTER_MS)).await;
    assert_eq!(status(&client, "prober").await, Some(WorkerStatus::Idle));
    assert!(events
        .payloads_on("v1.registry.events.prober")
        .iter()
        .all(|event| event["status"] != "LOST"));
}

#[tokio::test]
async fn terminating_then_quiet_is_offline_not_lost() {
    let stack = stack().await;
    let client = stack.client().await;
    let events = Recorder::start(&client, "v1.registry.events.leaver").await;
    let worker = WorkerSpec::new("leaver", &["r"]).start(&client).await;
    wait_until("worker is IDLE", Duration::from_secs(5), || async {
        status(&client, "leaver").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
    worker.terminating("deploy").await;
    wait_until("worker is TERMINATING", Duration::from_secs(5), || async {
        status(&client, "leaver").await == Some(WorkerStatus::Terminating)
    })
    .await
    .unwrap();
    let record = registry_record(&client, "leaver").await.unwrap();
    assert_eq!(record.terminating_reason.as_deref(), Some("deploy"));
    worker.go_silent();
    wait_until("worker is OFFLINE", Duration::from_secs(5), || async {
        status(&client, "leaver").await == Some(WorkerStatus::Offline)
    })
    .await
    .unwrap();
    hold_for(Duration::from_millis(LOST_AFTER_MS)).await;
    let statuses: Vec<String> = events
        .payloads_on("v1.registry.events.leaver")
        .iter()
        .map(|event| event["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["INITIALIZING", "IDLE", "TERMINATING", "OFFLINE"]);
}

#[tokio::test]
async fn a_new_registration_wins_and_the_old_incarnation_goes_stale() {
    let stack = stack().await;
    let client = stack.client().await;
    let mut first = WorkerSpec::new("twin", &["r"]).start(&client).await;
    wait_until("first is IDLE", Duration::from_secs(5), || async {
        status(&client, "twin").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
    let second = WorkerSpec::new("twin", &["r", "s"]).start(&client).await;
    assert_eq!(second.incarnation(), first.incarnation() + 1);
    let current = wait_for(
        "second registration recorded",
        Duration::from_secs(5),
        || async {
            registry_record(&client, "twin")
                .await
                .filter(|record| record.incarnation == 2 && record.status == WorkerStatus::Idle)
        },
    )
    .await
    .unwrap();
    assert_eq!(current.routines.len(), 2);
    // The first incarnation keeps pulsing: every pulse is stale.
    let error = first.recv(keys::ERROR, Duration::from_secs(3)).await;
    assert_eq!(error.payload["code"], ErrorCode::StaleIncarnation.as_str());
    assert_eq!(error.payload["details"]["current"], 2);
    // And the record is not disturbed by it.
    hold_for(Duration::from_millis(3 * INTERVAL_MS)).await;
    assert_eq!(status(&client, "twin").await, Some(WorkerStatus::Idle));
}

#[tokio::test]
async fn the_worker_list_pages_with_limit_and_cursor() {
    let stack = stack().await;
    let client = stack.client().await;
    let mut workers = Vec::new();
    for n in 0..23 {
        workers.push(
            WorkerSpec::new(&format!("pager-{n:02}"), &["pages.routine"])
                .start(&client)
                .await,
        );
    }

    // Pages of 5 in workerID order, each continuing after the last; the last has no cursor.
    let mut filter = RegistryList {
        limit: Some(5),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page: WorkerList = call(&client, keys::REGISTRY_LIST, &filter).await.unwrap();
        pages += 1;
        assert!(page.workers.len() <= 5, "a page holds at most the limit");
        seen.extend(page.workers.iter().map(|w| w.worker_id.to_string()));
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    let expected: Vec<String> = (0..23).map(|n| format!("pager-{n:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 5);

    // Without a limit, everything that fits in one message comes back at once.
    let all: WorkerList = call(&client, keys::REGISTRY_LIST, &RegistryList::default())
        .await
        .unwrap();
    assert_eq!(all.workers.len(), 23);
    assert_eq!(all.next_cursor, None);

    // A limit out of range is refused.
    let error = call::<_, WorkerList>(
        &client,
        keys::REGISTRY_LIST,
        &RegistryList {
            limit: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::SchemaViolation);
    drop(workers);
}

/// Slot claims and releases for one worker that arrive together are written together; each
/// still gets its own answer, and capacity holds.
#[tokio::test]
async fn concurrent_claims_respect_capacity_and_are_written_in_batches() {
    use drover_protocol::envelope::encode_internal;
    use drover_protocol::subject::internal;
    use drover_protocol::{Claim, InternalReply, Release, RunId};

    let stack = stack().await;
    let client = stack.client().await;
    let worker = WorkerSpec::new("batched", &["r"])
        .capacity(8)
        .start(&client)
        .await;
    wait_until("worker is IDLE", Duration::from_secs(5), || async {
        status(&client, "batched").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
    let ask = |subject: &'static str, body: bytes::Bytes| {
        let client = client.clone();
        async move {
            let reply = client.request(subject, body).await.unwrap();
            serde_json::from_slice::<InternalReply>(&reply.payload).unwrap()
        }
    };

    let runs: Vec<RunId> = (0..20).map(|_| RunId::generate()).collect();
    let claims = runs.iter().map(|run| {
        ask(
            internal::REGISTRY_CLAIM,
            encode_internal(&Claim {
                worker_id: WorkerId::parse("batched").unwrap(),
                incarnation: worker.incarnation(),
                run_id: run.clone(),
                attempt: 1,
                traceparent: None,
            }),
        )
    });
    let answers = futures::future::join_all(claims).await;
    let granted: Vec<&RunId> = runs
        .iter()
        .zip(&answers)
        .filter(|(_, answer)| answer.ok)
        .map(|(run, _)| run)
        .collect();
    assert_eq!(granted.len(), 8, "capacity 8: {answers:?}");
    let held = registry_record(&client, "batched").await.unwrap();
    assert_eq!(held.runs.len(), 8);
    assert_eq!(held.status, WorkerStatus::Working);
    for run in &granted {
        assert!(held.runs.iter().any(|r| &&r.run_id == run));
    }

    let releases = granted.iter().map(|run| {
        ask(
            internal::REGISTRY_RELEASE,
            encode_internal(&Release {
                worker_id: WorkerId::parse("batched").unwrap(),
                run_id: (*run).clone(),
                attempt: 1,
            }),
        )
    });
    assert!(futures::future::join_all(releases)
        .await
        .iter()
        .all(|answer| answer.ok));
    let after = registry_record(&client, "batched").await.unwrap();
    assert!(after.runs.is_empty());
    assert_eq!(after.status, WorkerStatus::Idle);

    // 28 changes, fewer writes: the registry's histogram counts changes per write.
    let (_, metrics) = stack
        .admin_get(drover_testkit::REGISTRY, "/metrics")
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (changes, writes) = (
        value("drover_registry_batch_size_sum"),
        value("drover_registry_batch_size_count"),
    );
    assert!(changes >= 28.0, "{changes} changes counted");
    assert!(writes < changes, "{writes} writes for {changes} changes");
    drop(worker);
}
