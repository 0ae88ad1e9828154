use drover_testkit::{NatsOptions, NatsServer, TestPki};

#[tokio::test]
async fn mutual_tls_admits_the_client_certificate_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = TestPki::generate(dir.path())?;
    let server = NatsServer::start_with(NatsOptions::default().tls(&pki, true)).await?;
    // The testkit's own client presents the generated client certificate.
    let client = server.client().await;
    client.publish("tls.check", "hello".into()).await?;
    client.flush().await?;
    assert_eq!(
        server.client_auth().tls_cert.as_deref(),
        Some(pki.client_cert.as_path())
    );

    // Trusting the CA is not enough without a client certificate.
    let without_cert = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_cert.clone())
        .require_tls(true)
        .connect(server.url())
        .await;
    assert!(
        without_cert.is_err(),
        "a client without a certificate got in"
    );
    // Nor is a plain connection.
    let plain = async_nats::ConnectOptions::new()
        .connect(server.url())
        .await;
    assert!(plain.is_err(), "a plain client got in");
    Ok(())
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ours_dir, other_dir) = (dir.path().join("ours"), dir.path().join("other"));
    std::fs::create_dir_all(&ours_dir)?;
    std::fs::create_dir_all(&other_dir)?;
    let ours = TestPki::generate(&ours_dir)?;
    let other = TestPki::generate(&other_dir)?;
    let server = NatsServer::start_with(NatsOptions::default().tls(&ours, false)).await?;
    let wrong_ca = async_nats::ConnectOptions::new()
        .add_root_certificates(other.ca_cert.clone())
        .require_tls(true)
        .connect(server.url())
        .await;
    assert!(
        wrong_ca.is_err(),
        "a server certificate of another CA was trusted"
    );
    Ok(())
}
