//! A worker started by a supervisor such as `drover pool` takes its workerID and the labels
//! `pool` and `group` from the process environment, over what its code says.
//!
//! The test sets process environment variables, so it is alone in its binary: no other
//! test can read the environment while it changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{stack, wait_status, PATIENCE};
use drover_protocol::WorkerStatus;
use drover_worker::{
    CancellationToken, Context, RoutineError, Worker, POOL_GROUP_VAR, POOL_ID_VAR, WORKER_ID_VAR,
};
use serde_json::Value;

async fn echo(_ctx: Context, params: Value) -> Result<Value, RoutineError> {
    Ok(params)
}

#[test]
fn the_pool_environment_names_the_worker_and_labels_it() {
    // Set before any runtime thread exists, so that nothing reads the environment meanwhile.
    std::env::set_var(WORKER_ID_VAR, "demo-rs-2");
    std::env::set_var(POOL_ID_VAR, "demo");
    std::env::set_var(POOL_GROUP_VAR, "rs");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stack = stack().await;
        let client = stack.client().await;
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(
            Worker::builder("named-in-code")
                .client(stack.client().await)
                .label("pool", "set-in-code")
                .label("gpu", "false")
                .routine("pool.echo", echo)
                .run(shutdown.clone()),
        );

        let record = wait_status(&client, "demo-rs-2", WorkerStatus::Idle).await;
        let labels: Vec<(&str, &str)> = record
            .labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            labels,
            [("gpu", "false"), ("group", "rs"), ("pool", "demo")]
        );
        assert!(
            common::record(&client, "named-in-code").await.is_none(),
            "nothing registers under the workerID in code"
        );

        shutdown.cancel();
        tokio::time::timeout(drover_testkit::patient(PATIENCE), worker)
            .await
            .expect("the worker stops in time")
            .expect("the worker task does not panic")
            .expect("the worker stops without an error");
        wait_status(&client, "demo-rs-2", WorkerStatus::Offline).await;
    });
}
