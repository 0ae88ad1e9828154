//! Nothing hostile lingers (issue 13): messages captured by `DROVER_DIRECTIVES` and
//! `DROVER_LOG_INTAKE` on a subject whose last token is not a workerID are purged by the
//! stream's owner (scheduler, log-collector), including those nats-server 2.15.1 never
//! delivers (a DEL byte in the subject), while well-formed messages stay or are consumed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use drover_integration_tests::put_idle_worker;
use drover_protocol::subject::{keys, resources};
use drover_protocol::{encode, LogLevel, LogLine, LogPage, LogsQuery, WorkerId};
use drover_testkit::{call, wait_for, wait_until, Stack, LOG_COLLECTOR, SCHEDULER};
use serde_json::json;

/// Every subject stored in `stream`, read message by message: the stream's own subject
/// listing leaves out the subjects that nats-server does not index.
async fn stored_subjects(stream: &Stream) -> Vec<String> {
    let mut subjects = Vec::new();
    let mut next = 1;
    loop {
        let message = stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(">")
            .send()
            .await;
        match message {
            Ok(message) => {
                next = message.sequence + 1;
                subjects.push(message.subject.to_string());
            }
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => return subjects,
            Err(error) => panic!("reading {next}: {error}"),
        }
    }
}

/// A worker record as the registry writes it, so that the collector takes the worker's
/// lines (the registry is left out: it would consume the directives under test).
async fn metric(stack: &Stack, service: &str, name_and_labels: &str) -> f64 {
    let (_, body) = stack.admin_get(service, "/metrics").await.unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn subjects_no_worker_can_have_are_purged_and_the_rest_is_kept() {
    let stack = Stack::builder()
        .with_scheduler()
        .with_log_collector()
        .env("DROVER_HOSTILE_PURGE_INTERVAL_MS", "200")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let js = stack.jetstream().await;
    put_idle_worker(&js, "good").await.unwrap();

    let body = |key: &str| {
        serde_json::to_vec(&json!({"payloadKey": key, "payload": {"incarnation": 1}})).unwrap()
    };
    let line = LogLine {
        level: LogLevel::Info,
        message: "a well-formed line".to_owned(),
        run_id: None,
        fields: None,
        timestamp: None,
    };
    // Through JetStream, so that each is known to be stored before the purge is awaited.
    let published = [
        ("v1.routine.completed.bad\u{7f}", body(keys::COMPLETED)),
        ("v1.ready.x\u{7f}y", body(keys::READY)),
        // Indexed, but no workerID: purged by subject filter. No registry runs to read it.
        ("v1.ready.a$b", body(keys::READY)),
        // Well-formed, and read by no running service: it must stay.
        ("v1.ready.good", body(keys::READY)),
        ("v1.log.bad\u{7f}", encode(&line).to_vec()),
        ("v1.log.good", encode(&line).to_vec()),
    ];
    for (subject, body) in published {
        js.publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|error| panic!("{subject:?} not stored: {error}"));
    }

    let directives = js.get_stream(resources::DIRECTIVES_STREAM).await.unwrap();
    let intake = js.get_stream(resources::LOG_INTAKE_STREAM).await.unwrap();
    let patience = Duration::from_secs(15);
    wait_until("the directives are purged", patience, || async {
        stored_subjects(&directives).await == ["v1.ready.good"]
    })
    .await
    .unwrap();
    wait_until("the log intake is purged and read", patience, || async {
        stored_subjects(&intake).await.is_empty()
    })
    .await
    .unwrap();

    // The well-formed line was stored.
    let query = LogsQuery {
        worker_id: Some(WorkerId::parse("good").unwrap()),
        ..LogsQuery::default()
    };
    let page = wait_for("the good line is stored", patience, || async {
        call::<_, LogPage>(&client, keys::LOGS_QUERY, &query)
            .await
            .ok()
            .filter(|page| !page.logs.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(page.logs.len(), 1);
    assert_eq!(page.logs[0].message, "a well-formed line");

    // Counted by the service that owns each stream.
    let purged = "drover_hostile_messages_purged_total";
    assert_eq!(
        metric(
            &stack,
            SCHEDULER,
            &format!("{purged}{{stream=\"{}\"}}", resources::DIRECTIVES_STREAM)
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &stack,
            LOG_COLLECTOR,
            &format!("{purged}{{stream=\"{}\"}}", resources::LOG_INTAKE_STREAM)
        )
        .await,
        1.0
    );
}
