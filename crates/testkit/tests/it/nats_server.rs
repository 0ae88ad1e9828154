use std::time::Duration;

use async_nats::jetstream::stream::{Config, StorageType};
use drover_testkit::{wait_until, NatsOptions, NatsServer};
use futures::StreamExt;

use crate::process_exists;

const SUBJECTS: &str = "testkit.>";

async fn create_file_stream(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    js.create_stream(Config {
        name: "TESTKIT".to_string(),
        subjects: vec![SUBJECTS.to_string()],
        storage: StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn publish_acked(js: &async_nats::jetstream::Context, n: u32) -> anyhow::Result<()> {
    for i in 0..n {
        js.publish(format!("testkit.{i}"), format!("message {i}").into())
            .await?
            .await?;
    }
    Ok(())
}

async fn assert_messages(js: &async_nats::jetstream::Context, n: u32) -> anyhow::Result<()> {
    let mut stream = js.get_stream("TESTKIT").await?;
    assert_eq!(stream.info().await?.state.messages, u64::from(n));
    for i in 0..n {
        let message = stream.get_raw_message(u64::from(i) + 1).await?;
        assert_eq!(message.subject.as_str(), format!("testkit.{i}"));
        assert_eq!(message.payload.as_ref(), format!("message {i}").as_bytes());
    }
    Ok(())
}

#[tokio::test]
async fn starts_and_carries_messages() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    assert!(server.url().ends_with(&format!(":{}", server.port())));
    assert!(server.store_dir().starts_with(std::env::temp_dir()));
    let client = server.client().await;
    let mut subscription = client.subscribe("testkit.hello").await?;
    client.publish("testkit.hello", "hi".into()).await?;
    client.flush().await?;
    let message = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await?
        .expect("subscription open");
    assert_eq!(message.payload.as_ref(), b"hi");
    Ok(())
}

#[tokio::test]
async fn request_reply_round_trip() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let responder = server.client().await;
    let mut requests = responder.subscribe("testkit.echo").await?;
    responder.flush().await?;
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, request.payload).await;
            }
        }
    });
    let client = server.client().await;
    let answer = client.request("testkit.echo", "ping".into()).await?;
    assert_eq!(answer.payload.as_ref(), b"ping");
    Ok(())
}

#[tokio::test]
async fn jetstream_stream_survives_restart() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let (port, store) = (server.port(), server.store_dir());
    let js = server.jetstream().await;
    create_file_stream(&js).await?;
    publish_acked(&js, 5).await?;
    let old_pid = server.pid();

    server.restart().await?;

    assert_eq!(server.port(), port);
    assert_eq!(server.store_dir(), store);
    assert_ne!(server.pid(), old_pid);
    assert!(!process_exists(old_pid));
    assert_messages(&server.jetstream().await, 5).await?;
    // A client from before the restart reconnects by itself.
    wait_until(
        "the old client reconnects",
        Duration::from_secs(10),
        || async {
            match js.publish("testkit.after", "x".into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        },
    )
    .await?;
    let log = server.log_contents();
    assert!(log.contains("start #1 of nats-server"), "{log}");
    assert!(log.contains("start #2 of nats-server"), "{log}");
    Ok(())
}

#[tokio::test]
async fn kill_then_restart_keeps_acknowledged_messages() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let port = server.port();
    let js = server.jetstream().await;
    create_file_stream(&js).await?;
    publish_acked(&js, 3).await?;
    let old_pid = server.pid();

    server.kill();
    assert!(!server.is_running());
    assert!(!process_exists(old_pid));
    server.restart().await?;

    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_messages(&server.jetstream().await, 3).await?;
    Ok(())
}

#[tokio::test]
async fn stop_ends_the_process() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let pid = server.pid();
    server.stop().await?;
    assert!(!server.is_running());
    assert!(!process_exists(pid));
    assert!(server.log_contents().contains("Server Exiting"));
    Ok(())
}

#[tokio::test]
async fn drop_leaves_no_process_and_no_directory() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let pid = server.pid();
    let store = server.store_dir();
    assert!(process_exists(pid));
    assert!(store.exists());
    drop(server);
    assert!(
        !process_exists(pid),
        "nats-server {pid} outlived its handle"
    );
    assert!(!store.exists(), "{} outlived its handle", store.display());
    Ok(())
}

#[tokio::test]
async fn two_servers_run_side_by_side() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(NatsServer::start(), NatsServer::start())?;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    let (ca, cb) = (a.client().await, b.client().await);
    let mut sub_b = cb.subscribe("testkit.where").await?;
    cb.flush().await?;
    ca.publish("testkit.where", "a".into()).await?;
    cb.publish("testkit.where", "b".into()).await?;
    ca.flush().await?;
    cb.flush().await?;
    let first = tokio::time::timeout(Duration::from_secs(5), sub_b.next())
        .await?
        .expect("subscription open");
    // Server b only ever sees its own publication.
    assert_eq!(first.payload.as_ref(), b"b");
    Ok(())
}

#[tokio::test]
async fn options_reach_the_server() -> anyhow::Result<()> {
    let options = NatsOptions::default()
        .arg("--server_name")
        .arg("testkit-named")
        .config("max_payload: 4096\n");
    let server = NatsServer::start_with(options).await?;
    let info = server.client().await.server_info();
    assert_eq!(info.server_name, "testkit-named");
    assert_eq!(info.max_payload, 4096);
    Ok(())
}
