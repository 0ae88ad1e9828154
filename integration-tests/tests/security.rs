//! The secured setup end to end (docs/security.md): nats-server with the auth callout and
//! mutual TLS, the services and drover-auth, and workers and clients with credentials of
//! their own. What a credential does not allow is refused by NATS and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use drover_auth::credential::ClientRole;
use drover_integration_tests::registry_record;
use drover_integration_tests::runs::{self, spec};
use drover_integration_tests::secure::SecureStack;
use drover_integration_tests::worker::WorkerSpec;
use drover_protocol::envelope::encode_as;
use drover_protocol::subject::{self, keys};
use drover_protocol::{RunCancel, RunList, RunPage, RunRecord, RunStatus, WorkerId};
use drover_testkit::{hold_for, patient};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_act_as_another_and_nothing_changes() {
    let secure = SecureStack::start().await.unwrap();
    let client = secure.stack.client().await;
    let b_auth = secure.worker_credential("sec-b").await.unwrap();
    let a_auth = secure.worker_credential("sec-a").await.unwrap();

    // B, acting as itself, holds a run.
    let b_conn = secure
        .connect(&b_auth, Some("sec-b"))
        .await
        .unwrap()
        .unwrap();
    let mut b = WorkerSpec::new("sec-b", &["hold"])
        .start(&b_conn.client)
        .await;
    let run = runs::submit(&client, &spec("hold")).await;
    let assignment = b.recv(keys::REQUEST_START, patient(PATIENCE)).await;
    let attempt = assignment.payload["attempt"].clone();
    b.publish_json(keys::STARTING, &json!({"runID": run, "attempt": attempt}))
        .await;
    runs::wait_status(&client, &run, RunStatus::Running, PATIENCE).await;
    let b_before = registry_record(&client, "sec-b").await.unwrap();
    assert!(b_conn.errors().is_empty(), "{:?}", b_conn.errors());

    // A knows B's run, attempt and incarnation (any reader does) and tries to be B.
    let a = secure
        .connect(&a_auth, Some("sec-a"))
        .await
        .unwrap()
        .unwrap();
    let b_id = WorkerId::parse("sec-b").unwrap();
    let forged = [
        (
            keys::COMPLETED,
            json!({"runID": run, "attempt": attempt, "outcome": "succeeded", "result": "forged"}),
        ),
        (
            keys::GIVE_PULSE,
            json!({"incarnation": b_before.incarnation, "status": "IDLE", "runs": []}),
        ),
    ];
    for (key, payload) in &forged {
        let subject = subject::from_worker(key, &b_id);
        a.client
            .publish(subject.clone(), encode_as(key, payload))
            .await
            .unwrap();
        a.client.flush().await.unwrap();
        assert!(
            a.refused(&format!("Publish to \"{subject}\"")).await,
            "{subject}: {:?}",
            a.errors()
        );
    }
    let _inbox = a
        .client
        .subscribe(subject::worker_inbox(&b_id))
        .await
        .unwrap();
    assert!(a.refused("Subscription to \"v1.worker.sec-b.>\"").await);
    let register = json!({"workerID": "sec-b", "routines": ["hold"]});
    let _ = a
        .client
        .publish(
            subject::from_worker(keys::REGISTER, &b_id),
            encode_as(keys::REGISTER, &register),
        )
        .await;
    a.client.flush().await.unwrap();
    assert!(a.refused("Publish to \"v1.register.sec-b\"").await);

    // Nothing changed: the run is B's and running, B keeps its incarnation.
    hold_for(Duration::from_millis(500)).await;
    let record = runs::get(&client, &run).await.unwrap();
    assert_eq!(record.status, RunStatus::Running);
    assert_eq!(record.result, None);
    let b_after = registry_record(&client, "sec-b").await.unwrap();
    assert_eq!(b_after.incarnation, b_before.incarnation);
    assert_eq!(b_after.status, b_before.status);

    // B's own completion is accepted.
    b.publish_json(
        keys::COMPLETED,
        &json!({"runID": run, "attempt": attempt, "outcome": "succeeded", "result": "real"}),
    )
    .await;
    let done = runs::wait_status(&client, &run, RunStatus::Succeeded, PATIENCE).await;
    assert_eq!(done.result, Some(json!("real")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_cannot_submit_or_cancel_and_a_submit_client_can() {
    let secure = SecureStack::start().await.unwrap();
    let services = secure.stack.client().await;
    let read_auth = secure
        .token_credential("dashboard", ClientRole::Read)
        .await
        .unwrap();
    let submit_auth = secure
        .token_credential("ci", ClientRole::Submit)
        .await
        .unwrap();
    let read = secure.connect(&read_auth, None).await.unwrap().unwrap();
    let submit = secure.connect(&submit_auth, None).await.unwrap().unwrap();

    // The submit client submits (nobody runs "nobody.home", so the run stays PENDING) and
    // the reader sees it.
    let run = runs::submit(&submit.client, &spec("nobody.home")).await;
    let seen = runs::get(&read.client, &run)
        .await
        .expect("the reader reads runs");
    assert_eq!(seen.status, RunStatus::Pending);

    // The reader's submit and cancel never reach Drover.
    let refused = runs::try_submit(&read.client, &spec("nobody.home")).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        read.refused("Publish to \"v1.routine.request_start\"")
            .await
    );
    let cancel = json!({"runID": run, "reason": "not allowed"});
    read.client
        .publish(keys::RUN_CANCEL, encode_as(keys::RUN_CANCEL, &cancel))
        .await
        .unwrap();
    read.client.flush().await.unwrap();
    assert!(read.refused("Publish to \"v1.run.cancel\"").await);
    let page: RunPage = drover_testkit::call(&services, keys::RUN_LIST, &RunList::default())
        .await
        .unwrap();
    assert_eq!(page.runs.len(), 1, "only the submit client's run exists");
    assert_eq!(
        runs::get(&services, &run).await.unwrap().status,
        RunStatus::Pending
    );

    // The submit client cancels.
    let cancelled: RunRecord = drover_testkit::call(
        &submit.client,
        keys::RUN_CANCEL,
        &RunCancel {
            run_id: run.clone(),
            reason: Some("done".to_owned()),
        },
    )
    .await
    .unwrap();
    assert_eq!(cancelled.run_id, run);
    runs::wait_status(&services, &run, RunStatus::Cancelled, PATIENCE).await;
    assert!(submit.errors().is_empty(), "{:?}", submit.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_at_the_next_connection_and_a_wrong_key_never_connects() {
    let secure = SecureStack::start().await.unwrap();
    let auth = secure.worker_credential("sec-r").await.unwrap();
    let first = secure.connect(&auth, Some("sec-r")).await.unwrap();
    assert!(first.is_ok(), "admitted before the revocation");
    secure.store.revoke("sec-r").await.unwrap();
    let again = secure.connect(&auth, Some("sec-r")).await.unwrap();
    assert!(again.is_err(), "refused after the revocation");

    let mut stranger = auth.clone();
    stranger.nkey = Some(drover_nats_connect::NkeySource::Seed(
        nkeys::KeyPair::new_user().seed().unwrap(),
    ));
    assert!(secure
        .connect(&stranger, Some("sec-r"))
        .await
        .unwrap()
        .is_err());
    let anonymous = secure.connect(&secure.tls(), None).await.unwrap();
    assert!(anonymous.is_err(), "no credential, no connection");
}
