//! `drover-test-worker`: a plain-NATS worker in its own process, for tests that kill
//! workers with SIGKILL. Each assignment is acknowledged, takes a random time in the given
//! range, and succeeds. Every assignment is printed as a JSON line on stdout.
//!
//! ```text
//! drover-test-worker NATS_URL WORKER_ID ROUTINE[,ROUTINE...] [CAPACITY] [MIN_MS] [MAX_MS]
//! ```
//!
//! It connects as a plain-NATS worker should: named after its workerID, replies on
//! `_INBOX.<workerID>`, with the credentials and TLS of `DROVER_NATS_*` / `NATS_*`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write;
use std::time::Duration;

use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{Act, Runner};
use rand::Rng;
use serde_json::json;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let id = &args[2];
    let routines: Vec<&str> = args[3].split(',').collect();
    let capacity: u32 = args.get(4).map_or(1, |value| value.parse().unwrap());
    let min_ms: u64 = args.get(5).map_or(0, |value| value.parse().unwrap());
    let max_ms: u64 = args.get(6).map_or(min_ms, |value| value.parse().unwrap());
    let auth = drover_nats_connect::NatsAuth::from_env().expect("usable NATS credentials");
    let options = async_nats::ConnectOptions::new()
        .name(id)
        .custom_inbox_prefix(drover_protocol::grants::worker_inbox_prefix(
            &drover_protocol::WorkerId::parse(id.as_str()).expect("a valid workerID"),
        ))
        .retry_on_initial_connect();
    let client = auth
        .apply(url, options)
        .expect("usable NATS credentials")
        .connect(url.as_str())
        .await
        .unwrap();
    let worker = WorkerSpec::new(id, &routines)
        .capacity(capacity)
        .start(&client)
        .await;
    println!(
        "{}",
        json!({"event": "ready", "workerID": id, "incarnation": worker.incarnation()})
    );
    let _runner = Runner::start(worker, move |assignment| {
        println!(
            "{}",
            json!({"event": "assigned", "runID": assignment.run_id, "attempt": assignment.attempt})
        );
        let _ = std::io::stdout().flush();
        let work = rand::rng().random_range(min_ms..=max_ms);
        Act::After(
            Duration::from_millis(work),
            Box::new(Act::Succeed(json!({"by": "test-worker"}))),
        )
    });
    std::future::pending::<()>().await;
}
