//! Credentials and TLS across processes: the CLI with --tlsca/--tlscert/--tlskey and with
//! --nkey, a credential NATS refuses, and unusable credentials as configuration errors
//! (exit 64) for a service and for the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use drover_integration_tests::cli::{drover, stdout};
use drover_testkit::{bin_dir, free_port, patient, NatsOptions, Stack, TestPki, REGISTRY};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_exit(output: &Output, code: i32, contains: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {text}");
    assert!(text.contains(contains), "{text:?} lacks {contains:?}");
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn stack_with(options: NatsOptions) -> Stack {
    Stack::builder()
        .nats_options(options)
        .with_registry()
        .with_scheduler()
        .start()
        .await
        .expect("stack starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_runs_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let stack = stack_with(NatsOptions::default().tls(&pki, true)).await;
    let url = stack.nats_url();

    let listed = drover(
        &url,
        &[
            "--tlsca",
            path(&pki.ca_cert),
            "--tlscert",
            path(&pki.client_cert),
            "--tlskey",
            path(&pki.client_key),
            "runs",
            "list",
            "--json",
        ],
    )
    .await;
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    assert!(
        stdout(&listed).trim_start().starts_with('['),
        "{}",
        stdout(&listed)
    );

    // Without a client certificate the server refuses the connection: exit 4.
    let refused = drover(&url, &["runs", "list", "--tlsca", path(&pki.ca_cert)]).await;
    assert_exit(&refused, 4, "");
    // A certificate without its key is a configuration error naming both.
    let half = drover(&url, &["runs", "list", "--tlscert", path(&pki.client_cert)]).await;
    assert_exit(&half, 64, "DROVER_NATS_TLS_KEY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_runs_with_an_nkey_a_wrong_one_is_refused_and_so_is_what_it_may_not_do() {
    let services = nkeys::KeyPair::new_user();
    let operator = nkeys::KeyPair::new_user();
    let reader = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{ users = [ {{ nkey: {} }}, {{ nkey: {} }}, {{ nkey: {}, permissions: \
         {{ publish: [\"v1.run.list\"], subscribe: [\"_INBOX.>\"] }} }} ] }}\n",
        services.public_key(),
        operator.public_key(),
        reader.public_key()
    );
    let stack = stack_with(
        NatsOptions::default()
            .config(config)
            .nkey_seed(services.seed().unwrap()),
    )
    .await;
    let url = stack.nats_url();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("operator.nk");
    std::fs::write(&seed_file, operator.seed().unwrap()).unwrap();

    let listed = drover(&url, &["--nkey", path(&seed_file), "runs", "list"]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));

    // No credential, or one the server does not know: refused, exit 4.
    let anonymous = drover(&url, &["runs", "list"]).await;
    assert_exit(&anonymous, 4, "");
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let refused = drover(&url, &["runs", "list", "--nkey", &stranger]).await;
    assert_exit(&refused, 4, "refused the credentials");
    assert!(
        !stderr(&refused).contains(&stranger),
        "the seed was printed"
    );

    // A credential NATS admits but does not let publish on v1.routine.request_start: the
    // refusal, in NATS's words, ends the command with exit 5 (not a time-out, exit 4).
    let reader_seed = dir.path().join("reader.nk");
    std::fs::write(&reader_seed, reader.seed().unwrap()).unwrap();
    let as_reader = ["--nkey", path(&reader_seed), "--timeout", "600"];
    let read = drover(&url, &[&as_reader[..], &["runs", "list"]].concat()).await;
    assert_eq!(read.status.code(), Some(0), "{}", stderr(&read));
    let submit = drover(
        &url,
        &[&as_reader[..], &["submit", "nobody.home", "--params", "{}"]].concat(),
    )
    .await;
    assert_exit(
        &submit,
        5,
        "Permissions Violation for Publish to \"v1.routine.request_start\"",
    );
    let after: Vec<serde_json::Value> = serde_json::from_str(&stdout(
        &drover(
            &url,
            &["--nkey", path(&seed_file), "runs", "list", "--json"],
        )
        .await,
    ))
    .unwrap();
    assert!(after.is_empty(), "a refused submit stored a run: {after:?}");

    // A missing seed file and a malformed seed: configuration errors before connecting.
    let missing = dir.path().join("missing.nk");
    let no_file = drover(&url, &["runs", "list", "--nkey", path(&missing)]).await;
    assert_exit(&no_file, 64, path(&missing));
    let malformed = drover(&url, &["runs", "list", "--nkey", "SUNOTASEED"]).await;
    assert_exit(&malformed, 64, "malformed nkey seed");
}

#[tokio::test]
async fn a_service_with_an_unusable_credential_exits_64_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.creds");
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let cases = [
        (
            "DROVER_NATS_CREDS",
            path(&missing).to_owned(),
            path(&missing).to_owned(),
        ),
        (
            "NATS_NKEY",
            "SUNOTASEED".to_owned(),
            "malformed nkey seed".to_owned(),
        ),
        (
            "DROVER_NATS_TLS_KEY",
            path(&missing).to_owned(),
            "DROVER_NATS_TLS_CERT".to_owned(),
        ),
    ];
    for (name, value, says) in cases {
        let run = tokio::process::Command::new(bin_dir().unwrap().join(REGISTRY))
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .env("DROVER_NATS_URL", &nowhere)
            .env(name, &value)
            .env_remove("RUST_LOG")
            .output();
        let output = tokio::time::timeout(patient(Duration::from_secs(10)), run)
            .await
            .expect("the service exits at once")
            .unwrap();
        assert_exit(&output, 64, &says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_started_with_an_nkey_hands_it_to_its_processes() {
    use drover_integration_tests::pool::{
        settled_at, worker_id, PoolConfig, PoolRun, WorkerKind, STARTED,
    };
    use drover_integration_tests::registry_record;
    use drover_protocol::WorkerStatus;

    let services = nkeys::KeyPair::new_user();
    let pool_key = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{ users = [ {{ nkey: {} }}, {{ nkey: {} }} ] }}\n",
        services.public_key(),
        pool_key.public_key()
    );
    let stack = Stack::builder()
        .nats_options(
            NatsOptions::default()
                .config(config)
                .nkey_seed(services.seed().unwrap()),
        )
        .heartbeat_interval_ms(250)
        .lost_after_ms(2500)
        .with_all_services()
        .start()
        .await
        .expect("stack starts");
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("pool.nk");
    std::fs::write(&seed_file, pool_key.seed().unwrap()).unwrap();

    let config = PoolConfig::new("nk").group(WorkerKind::RustSdk.group("w").set("size", 1));
    let pool = PoolRun::spawn(&stack, &config, &["--nkey", path(&seed_file)]).await;
    // The process can only connect with the pool's seed, handed on as DROVER_NATS_NKEY.
    pool.wait_for_state("the process runs", STARTED, |state| {
        state.groups.iter().all(|group| settled_at(group, 1))
    })
    .await;
    let client = stack.client().await;
    let worker = worker_id(&pool.id, "w", 1);
    drover_testkit::wait_for(&format!("{worker} IDLE"), STARTED, || async {
        registry_record(&client, &worker)
            .await
            .filter(|record| record.status == WorkerStatus::Idle)
    })
    .await
    .unwrap();
}
