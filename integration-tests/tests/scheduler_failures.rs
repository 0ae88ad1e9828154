//! Nothing accepted is lost, whatever is killed (DESIGN §6.3 item 1): workers, the
//! scheduler (alone or one of two replicas), and nats-server itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use drover_integration_tests::runs::{get, spec, try_submit, wait_terminal};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{Act, Runner};
use drover_protocol::subject::keys;
use drover_protocol::{ErrorCode, RegistryGet, RunId, RunStatus, WorkerId, WorkerRecord};
use drover_testkit::{
    call, free_port, hold_for, http_get, wait_for, wait_until, ServiceProcess, Stack, SCHEDULER,
};
use rand::Rng;
use serde_json::json;
use tokio::task::JoinHandle;

const LOST_AFTER_MS: u64 = 1000;

fn builder() -> drover_testkit::StackBuilder {
    Stack::builder()
        .lost_after_ms(LOST_AFTER_MS)
        .with_registry()
        .with_monitor()
        .with_scheduler()
        // Leases short enough that a test sees a dead leader replaced within seconds.
        .env("DROVER_RUN_LEASE_MS", "2000")
        .env("DROVER_LEADER_LEASE_MS", "1000")
        .env("DROVER_ASSIGN_ACK_TIMEOUT_MS", "2000")
}

/// Submits `count` runs in the background, retrying each (with its idempotency key) until
/// it is accepted, so that outages delay submissions but never drop one.
fn submit_steadily(
    client: &Client,
    routine: &str,
    count: usize,
    pause: Duration,
) -> (Arc<Mutex<Vec<RunId>>>, JoinHandle<()>) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&accepted);
    let client = client.clone();
    let routine = routine.to_owned();
    let task = tokio::spawn(async move {
        for index in 0..count {
            let mut request = spec(&routine);
            request.idempotency_key = Some(format!("{routine}-{index}"));
            loop {
                match try_submit(&client, &request).await {
                    Ok(run) => {
                        sink.lock().unwrap().push(run);
                        break;
                    }
                    Err(error) if error.code == ErrorCode::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => panic!("run {index} refused: {error}"),
                }
            }
            tokio::time::sleep(pause).await;
        }
    });
    (accepted, task)
}

async fn all_succeed(client: &Client, runs: &[RunId], timeout: Duration) {
    for run in runs {
        let record = wait_terminal(client, run, timeout).await;
        assert_eq!(record.status, RunStatus::Succeeded, "run {run}: {record:?}");
    }
}

async fn start_workers(client: &Client, count: usize, routine: &str) -> Vec<Runner> {
    let mut runners = Vec::new();
    for index in 0..count {
        let worker = WorkerSpec::new(&format!("w{index}"), &[routine])
            .capacity(2)
            .start(client)
            .await;
        runners.push(Runner::start(worker, |_| {
            Act::After(
                Duration::from_millis(20),
                Box::new(Act::Succeed(json!(null))),
            )
        }));
    }
    runners
}

#[tokio::test]
async fn workers_killed_mid_run_twenty_times_lose_and_duplicate_nothing() {
    // Twenty kills can hit one run several times: allow more reassignments than the default.
    let stack = builder()
        .env("DROVER_MAX_REASSIGNMENTS", "20")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let spawn = |index: usize| {
        ServiceProcess::start(
            "drover-test-worker",
            &[],
            &[
                stack.nats_url(),
                format!("crash-{index}"),
                "crash.work".into(),
                "1".into(),
                "200".into(),
                "700".into(),
            ],
        )
        .unwrap()
    };
    let mut workers: Vec<(usize, ServiceProcess)> =
        (0..4).map(|index| (index, spawn(index))).collect();
    let mut next = workers.len();
    let mut runs = Vec::new();
    for _ in 0..60 {
        runs.push(try_submit(&client, &spec("crash.work")).await.unwrap());
    }
    let mut killed = BTreeSet::new();
    let mut hit = BTreeSet::new();
    for _ in 0..20 {
        // A worker in the middle of a run.
        let (position, held) = wait_for("a busy worker", Duration::from_secs(20), || async {
            for (position, (index, _)) in workers.iter().enumerate() {
                let id = WorkerId::parse(format!("crash-{index}")).unwrap();
                if let Ok(record) = call::<_, WorkerRecord>(
                    &client,
                    keys::REGISTRY_GET,
                    &RegistryGet { worker_id: id },
                )
                .await
                {
                    if !record.runs.is_empty() {
                        return Some((position, record.runs));
                    }
                }
            }
            None
        })
        .await
        .unwrap();
        let pause = rand::rng().random_range(0..150);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let (index, mut process) = workers.remove(position);
        process.kill();
        killed.insert(format!("crash-{index}"));
        for held in held {
            hit.insert(held.run_id);
        }
        workers.push((next, spawn(next)));
        next += 1;
    }
    all_succeed(&client, &runs, Duration::from_secs(60)).await;
    // The runs that were hit finished elsewhere, after a reassignment; nothing finished twice
    // (a run has one terminal transition, and its attempt count is its assignments).
    let mut reassigned = 0;
    for run in &runs {
        let record = get(&client, run).await.unwrap();
        let terminal = record
            .transitions
            .iter()
            .filter(|t| t.status.is_terminal())
            .count();
        assert_eq!(terminal, 1, "run {run} ended {terminal} times");
        if record.reassignments > 0 {
            reassigned += 1;
            // It completed on another worker than every one it was taken back from (a
            // reassignment is recorded as a PENDING transition naming the worker left).
            let worker = record.worker_id.clone().unwrap();
            let left: Vec<_> = record
                .transitions
                .iter()
                .filter(|t| t.status == RunStatus::Pending && t.reason.is_some())
                .filter_map(|t| t.worker_id.clone())
                .collect();
            assert!(
                !left.is_empty(),
                "run {run} was reassigned without a recorded reason"
            );
            assert!(
                !left.contains(&worker),
                "run {run} completed on {worker}, which it was taken back from"
            );
        }
    }
    assert!(
        reassigned >= hit.len() / 2,
        "only {reassigned} of {} hit runs were reassigned",
        hit.len()
    );
    println!(
        "{} kills hit {} runs; {reassigned} runs were reassigned and completed elsewhere",
        killed.len(),
        hit.len()
    );
}

#[tokio::test]
async fn a_killed_scheduler_loses_no_accepted_run() {
    let mut stack = builder()
        .env("RUST_LOG", "info")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let _workers = start_workers(&client, 3, "load").await;
    let t0 = std::time::Instant::now();
    let (accepted, submitter) = submit_steadily(&client, "load", 300, Duration::from_millis(5));
    wait_until("a third submitted", Duration::from_secs(30), || async {
        accepted.lock().unwrap().len() >= 100
    })
    .await
    .unwrap();
    println!("100 submitted at {:?}", t0.elapsed());
    stack.kill_service(SCHEDULER);
    hold_for(Duration::from_millis(500)).await;
    stack.restart_service(SCHEDULER).await.unwrap();
    println!("restarted at {:?}", t0.elapsed());
    submitter.await.unwrap();
    println!("all submitted at {:?}", t0.elapsed());
    let runs = accepted.lock().unwrap().clone();
    assert_eq!(runs.len(), 300);
    all_succeed(&client, &runs, Duration::from_secs(60)).await;
    println!("all succeeded at {:?}", t0.elapsed());
    std::fs::write(
        "/tmp/sched-restart.log",
        stack.service(SCHEDULER).log_contents(),
    )
    .unwrap();
}

async fn is_leader(admin: std::net::SocketAddr) -> bool {
    matches!(http_get(admin, "/metrics").await, Ok((200, body)) if body.lines().any(|line| line.starts_with("drover_scheduler_leader ") && line.ends_with(" 1")))
}

#[tokio::test]
async fn with_two_schedulers_killing_the_leader_loses_nothing() {
    let mut stack = builder()
        .env("RUST_LOG", "info")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let port = free_port();
    let second_admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let env = vec![
        ("DROVER_NATS_URL".to_owned(), stack.nats_url()),
        ("DROVER_RUN_LEASE_MS".to_owned(), "2000".to_owned()),
        ("DROVER_LEADER_LEASE_MS".to_owned(), "1000".to_owned()),
        ("DROVER_ASSIGN_ACK_TIMEOUT_MS".to_owned(), "2000".to_owned()),
        ("DROVER_LOST_AFTER_MS".to_owned(), LOST_AFTER_MS.to_string()),
        ("DROVER_HEARTBEAT_INTERVAL_MS".to_owned(), "200".to_owned()),
    ];
    let mut second = ServiceProcess::start(
        SCHEDULER,
        &env,
        &["--admin-addr".into(), second_admin.to_string()],
    )
    .unwrap();
    wait_until(
        "second scheduler ready",
        Duration::from_secs(20),
        || async { matches!(http_get(second_admin, "/readyz").await, Ok((200, _))) },
    )
    .await
    .unwrap();
    let first_admin = stack.admin_addr(SCHEDULER);
    let _workers = start_workers(&client, 3, "load").await;
    let (accepted, submitter) = submit_steadily(&client, "load", 300, Duration::from_millis(5));
    wait_until("a third submitted", Duration::from_secs(30), || async {
        accepted.lock().unwrap().len() >= 100
    })
    .await
    .unwrap();
    // Kill whichever is the leader; the other takes over.
    let first_leads = wait_for("a leader", Duration::from_secs(10), || async {
        if is_leader(first_admin).await {
            Some(true)
        } else if is_leader(second_admin).await {
            Some(false)
        } else {
            None
        }
    })
    .await
    .unwrap();
    let survivor = if first_leads {
        stack.kill_service(SCHEDULER);
        second_admin
    } else {
        second.kill();
        first_admin
    };
    wait_until("the survivor leads", Duration::from_secs(10), || async {
        is_leader(survivor).await
    })
    .await
    .unwrap();
    submitter.await.unwrap();
    let runs = accepted.lock().unwrap().clone();
    assert_eq!(runs.len(), 300);
    all_succeed(&client, &runs, Duration::from_secs(60)).await;
    // One worker at a time: no run had two attempts in flight.
    let mut attempts: HashMap<RunId, u64> = HashMap::new();
    for run in &runs {
        attempts.insert(run.clone(), get(&client, run).await.unwrap().attempt);
    }
    assert!(attempts.values().all(|&attempt| attempt >= 1));
}

#[tokio::test]
async fn restarting_nats_under_load_loses_no_accepted_run() {
    let mut stack = builder()
        .lost_after_ms(5000)
        .env("RUST_LOG", "info")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let _workers = start_workers(&client, 3, "load").await;
    let (accepted, submitter) = submit_steadily(&client, "load", 300, Duration::from_millis(5));
    wait_until("a third submitted", Duration::from_secs(30), || async {
        accepted.lock().unwrap().len() >= 100
    })
    .await
    .unwrap();
    stack.restart_nats().await.unwrap();
    submitter.await.unwrap();
    let runs = accepted.lock().unwrap().clone();
    assert_eq!(runs.len(), 300);
    all_succeed(&client, &runs, Duration::from_secs(90)).await;
}
