//! Killing the registry, the heartbeat-monitor or nats-server loses no worker record and
//! declares no live worker lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::Client;
use drover_integration_tests::worker::{SimWorker, WorkerSpec};
use drover_integration_tests::{worker_status as status, Recorder};
use drover_protocol::subject::keys;
use drover_protocol::{
    Ready, RegistryGet, RegistryList, WorkerId, WorkerList, WorkerRecord, WorkerStatus,
};
use drover_testkit::{
    call, hold_for, wait_until, ServiceProcess, Stack, HEARTBEAT_MONITOR, REGISTRY,
};

const INTERVAL_MS: u64 = 200;
const LOST_AFTER_MS: u64 = 1000;

async fn stack(lost_after_ms: u64) -> Stack {
    Stack::builder()
        .heartbeat_interval_ms(INTERVAL_MS)
        .lost_after_ms(lost_after_ms)
        .with_registry()
        .with_monitor()
        .start()
        .await
        .expect("stack starts")
}

async fn workers(client: &Client) -> Vec<WorkerRecord> {
    call::<_, WorkerList>(client, keys::REGISTRY_LIST, &RegistryList::default())
        .await
        .map(|list| list.workers)
        .unwrap_or_default()
}

async fn start_workers(client: &Client, count: usize) -> Vec<SimWorker> {
    let mut started = Vec::new();
    for index in 0..count {
        started.push(
            WorkerSpec::new(&format!("w{index}"), &["r"])
                .start(client)
                .await,
        );
    }
    wait_until("every worker is IDLE", Duration::from_secs(10), || async {
        let records = workers(client).await;
        records.len() == count && records.iter().all(|w| w.status == WorkerStatus::Idle)
    })
    .await
    .unwrap();
    started
}

fn lost_events(recorder: &Recorder) -> Vec<String> {
    recorder
        .all()
        .into_iter()
        .filter(|(_, body)| body["payload"]["status"] == "LOST")
        .map(|(subject, _)| subject)
        .collect()
}

#[tokio::test]
async fn registry_killed_and_restarted_loses_nothing() {
    let mut stack = stack(LOST_AFTER_MS).await;
    let client = stack.client().await;
    let events = Recorder::start(&client, "v1.registry.events.*").await;
    let _workers = start_workers(&client, 5).await;
    let before = workers(&client).await;

    // A worker registers, then the registry dies before it handles the worker's ready.
    let late = WorkerId::parse("late").unwrap();
    let registered: drover_protocol::Registered = call(
        &client,
        "v1.register.late",
        &drover_protocol::Register {
            worker_id: late.clone(),
            routines: vec![],
            labels: Default::default(),
            capacity: 1,
            name: None,
            sdk: None,
            host: None,
            pid: None,
        },
    )
    .await
    .unwrap();
    let pulses = {
        let client = client.clone();
        let incarnation = registered.incarnation;
        tokio::spawn(async move {
            loop {
                let pulse = drover_protocol::GivePulse {
                    incarnation,
                    status: WorkerStatus::Initializing,
                    runs: vec![],
                    id: None,
                };
                let _ = client
                    .publish(
                        "v1.heartbeat.give_pulse.late",
                        drover_protocol::encode(&pulse),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
            }
        })
    };
    stack.kill_service(REGISTRY);
    client
        .publish(
            "v1.ready.late",
            drover_protocol::encode(&Ready {
                incarnation: registered.incarnation,
            }),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    // Down for longer than lostAfterMs.
    hold_for(Duration::from_millis(LOST_AFTER_MS + 500)).await;
    stack.restart_service(REGISTRY).await.unwrap();

    let after = workers(&client).await;
    for record in &before {
        let again = after
            .iter()
            .find(|r| r.worker_id == record.worker_id)
            .unwrap_or_else(|| panic!("{} was lost", record.worker_id));
        assert_eq!(again.incarnation, record.incarnation);
        assert_eq!(again.status, WorkerStatus::Idle);
    }
    // The ready sent while the registry was down was kept and applied.
    wait_until("late worker is ready", Duration::from_secs(5), || async {
        status(&client, "late").await == Some(WorkerStatus::Idle)
    })
    .await
    .unwrap();
    let late_record: WorkerRecord = call(
        &client,
        keys::REGISTRY_GET,
        &RegistryGet { worker_id: late },
    )
    .await
    .unwrap();
    assert!(
        late_record.ready_at.is_some(),
        "the stored ready was not applied"
    );
    // Live workers were never declared lost.
    hold_for(Duration::from_millis(LOST_AFTER_MS)).await;
    let lost = lost_events(&events);
    assert!(lost.is_empty(), "live workers declared lost: {lost:?}");
    pulses.abort();
}

#[tokio::test]
async fn monitor_killed_and_restarted_declares_no_live_worker_lost() {
    let mut stack = stack(LOST_AFTER_MS).await;
    let client = stack.client().await;
    let events = Recorder::start(&client, "v1.registry.events.*").await;
    let workers_now = start_workers(&client, 5).await;

    stack.kill_service(HEARTBEAT_MONITOR);
    // While the monitor is down, one worker dies.
    workers_now[0].go_silent();
    hold_for(Duration::from_millis(2 * LOST_AFTER_MS)).await;
    stack.restart_service(HEARTBEAT_MONITOR).await.unwrap();

    // The restarted monitor gives everyone a full lostAfterMs, then finds the dead one.
    wait_until("w0 is LOST", Duration::from_secs(5), || async {
        status(&client, "w0").await == Some(WorkerStatus::Lost)
    })
    .await
    .unwrap();
    hold_for(Duration::from_millis(2 * LOST_AFTER_MS)).await;
    assert_eq!(lost_events(&events), ["v1.registry.events.w0"]);
    for index in 1..5 {
        assert_eq!(
            status(&client, &format!("w{index}")).await,
            Some(WorkerStatus::Idle)
        );
    }
}

#[tokio::test]
async fn nats_restart_keeps_every_worker_record() {
    // Long enough that the workers' pulses resume before anyone could be lost.
    let mut stack = stack(4000).await;
    let client = stack.client().await;
    let _workers = start_workers(&client, 5).await;
    let before = workers(&client).await;
    stack.restart_nats().await.unwrap();
    wait_until(
        "registry answers again",
        Duration::from_secs(15),
        || async { workers(&client).await.len() == before.len() },
    )
    .await
    .unwrap();
    let after = workers(&client).await;
    for record in &before {
        let again = after
            .iter()
            .find(|r| r.worker_id == record.worker_id)
            .unwrap_or_else(|| panic!("{} was lost", record.worker_id));
        assert_eq!(again.incarnation, record.incarnation);
        assert_eq!(again.routines, record.routines);
    }
    // Workers pulsing across the restart stay live.
    let events = Recorder::start(&client, "v1.registry.events.*").await;
    hold_for(Duration::from_millis(5000)).await;
    assert!(lost_events(&events).is_empty());
    for record in workers(&client).await {
        assert_eq!(record.status, WorkerStatus::Idle, "{}", record.worker_id);
    }
}

#[tokio::test]
async fn two_monitors_agree() {
    let stack = stack(LOST_AFTER_MS).await;
    let client = stack.client().await;
    let admin = drover_testkit::free_port();
    let env = vec![
        ("DROVER_NATS_URL".to_owned(), stack.nats_url()),
        (
            "DROVER_HEARTBEAT_INTERVAL_MS".to_owned(),
            INTERVAL_MS.to_string(),
        ),
        ("DROVER_LOST_AFTER_MS".to_owned(), LOST_AFTER_MS.to_string()),
    ];
    let args = vec!["--admin-addr".to_owned(), format!("127.0.0.1:{admin}")];
    let _second = ServiceProcess::start(HEARTBEAT_MONITOR, &env, &args).unwrap();
    wait_until("second monitor ready", Duration::from_secs(10), || async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
        matches!(
            drover_testkit::http_get(addr, "/readyz").await,
            Ok((200, _))
        )
    })
    .await
    .unwrap();
    let events = Recorder::start(&client, "v1.registry.events.*").await;
    let workers_now = start_workers(&client, 4).await;
    hold_for(Duration::from_millis(2 * LOST_AFTER_MS)).await;
    assert!(lost_events(&events).is_empty());
    workers_now[1].go_silent();
    wait_until("w1 is LOST", Duration::from_secs(5), || async {
        status(&client, "w1").await == Some(WorkerStatus::Lost)
    })
    .await
    .unwrap();
    hold_for(Duration::from_millis(LOST_AFTER_MS)).await;
    // Both monitors reported; the registry applied it once.
    assert_eq!(lost_events(&events), ["v1.registry.events.w1"]);
    for index in [0, 2, 3] {
        assert_eq!(
            status(&client, &format!("w{index}")).await,
            Some(WorkerStatus::Idle)
        );
    }
}
