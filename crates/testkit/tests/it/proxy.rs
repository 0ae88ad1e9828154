use std::time::Duration;

use async_nats::connection::State;
use drover_testkit::{wait_until, CutPoint, NatsServer, Proxy};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(proxy: &Proxy) -> anyhow::Result<async_nats::Client> {
    Ok(NatsServer::connect_options()
        .retry_on_initial_connect()
        .connect(proxy.url())
        .await?)
}

#[tokio::test]
async fn a_nats_client_rides_out_a_cut_and_reconnects_after_restore() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let proxy = Proxy::start(server.addr()).await?;
    let client = connect(&proxy).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.query_account().await?;
    assert_eq!(proxy.js_requests(), 1, "$JS.API.INFO is one request");

    proxy.cut();
    wait_until("the client sees the cut", TIMEOUT, || async {
        client.connection_state() != State::Connected
    })
    .await?;
    wait_until("a reconnection is refused", TIMEOUT, || async {
        proxy.refused() > 0
    })
    .await?;
    assert_eq!(proxy.connections(), 1);

    proxy.restore();
    wait_until("the client reconnects", TIMEOUT, || async {
        client.connection_state() == State::Connected
    })
    .await?;
    js.query_account().await?;
    assert_eq!(proxy.connections(), 2);
    assert_eq!(proxy.js_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn a_request_cut_keeps_that_request_from_the_server() -> anyhow::Result<()> {
    let (server, proxy, js) = jetstream_through_proxy().await?;
    proxy.cut_at(CutPoint::BeforeJsRequest(1));
    let config = proxied_stream();
    let creating = tokio::spawn({
        let js = js.clone();
        async move { js.create_stream(config).await.map(|_| ()) }
    });
    wait_until("the cut", TIMEOUT, || async { proxy.is_cut() }).await?;
    // The server never saw the request: the stream does not exist.
    let direct = server.jetstream().await;
    assert!(direct.get_stream("PROXIED").await.is_err());
    proxy.restore();
    // The request was lost with the connection, so the client's call fails (timeout).
    assert!(creating.await?.is_err());
    assert_eq!(proxy.js_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn a_reply_cut_lets_the_server_act_but_keeps_the_answer_from_the_client() -> anyhow::Result<()>
{
    let (server, proxy, js) = jetstream_through_proxy().await?;
    js.query_account().await?;
    proxy.cut_at(CutPoint::BeforeReply(1));
    let config = proxied_stream();
    let created = js.create_stream(config).await;
    assert!(proxy.is_cut());
    assert!(created.is_err(), "the client never hears back");
    // The server made the stream all the same.
    server.jetstream().await.get_stream("PROXIED").await?;
    assert_eq!(
        proxy.js_request_subjects(),
        vec!["$JS.API.INFO", "$JS.API.STREAM.CREATE.PROXIED"]
    );
    Ok(())
}

/// The stream the cut tests try to create through the proxy.
fn proxied_stream() -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: "PROXIED".to_owned(),
        subjects: vec!["proxied.>".to_owned()],
        ..Default::default()
    }
}

/// A server, a proxy in front of it, and JetStream through the proxy with a short timeout.
async fn jetstream_through_proxy(
) -> anyhow::Result<(NatsServer, Proxy, async_nats::jetstream::Context)> {
    let server = NatsServer::start().await?;
    let proxy = Proxy::start(server.addr()).await?;
    let client = connect(&proxy).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client);
    Ok((server, proxy, js))
}
