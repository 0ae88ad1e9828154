//! TLS between the nodes of a NATS cluster (docs/security.md, TLS): three real nats-servers
//! on 127.0.0.1 form one JetStream cluster whose routes use mutual TLS with one CA, and
//! whose clients connect over mutual TLS too. An R3 stream works across them, and a node
//! whose route certificate another CA signed is kept out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer, stream};
use drover_testkit::{free_port, http_get, wait_until, NatsOptions, NatsServer, TestPki};
use futures::StreamExt;

const CLUSTER: &str = "drover";
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// What nats-server logs when a route's TLS handshake fails, on either side.
const ROUTE_HANDSHAKE_ERROR: &str = "TLS route handshake error";
/// nats-server tries a configured route again about a second after a failure.
const RETRY_SPAN: f64 = 0.5;

/// One node's fixed ports: routes must name each other's before any starts.
#[derive(Debug, Clone, Copy)]
struct Ports {
    route: u16,
    monitor: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            route: free_port(),
            monitor: free_port(),
        }
    }
}

/// A running node and where its monitoring endpoint listens.
struct Node {
    name: String,
    server: NatsServer,
    monitor: SocketAddr,
}

/// The `tls` block of a `cluster` block: the certificate this node presents on its routes
/// (accepted and solicited alike) and the CA it checks the other side's against.
fn route_tls(cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "  tls {{\n    cert_file: {:?}\n    key_file: {:?}\n    ca_file: {:?}\n    verify: true\n  }}\n",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string()
    )
}

/// A node's configuration: its name, monitoring port, and a `cluster` block listening on
/// its route port with TLS routes to every node (itself included; nats-server skips it).
fn node_config(name: &str, own: Ports, all: &[Ports], tls: &str) -> String {
    let routes: Vec<String> = all
        .iter()
        .map(|ports| format!("tls://127.0.0.1:{}", ports.route))
        .collect();
    format!(
        "server_name: {name}\nhttp: \"127.0.0.1:{monitor}\"\n\
         cluster {{\n  name: {CLUSTER}\n  listen: \"127.0.0.1:{route}\"\n  routes: [ {routes} ]\n{tls}}}\n",
        monitor = own.monitor,
        route = own.route,
        routes = routes.join(", "),
    )
}

/// Starts a node; clients connect to it over mutual TLS with `client_pki`. A node `alone`
/// is ready once it takes a client: it will have no JetStream meta leader.
async fn start_node(
    name: &str,
    own: Ports,
    config: String,
    client_pki: &TestPki,
    alone: bool,
) -> Node {
    let mut options = NatsOptions::default().config(config).tls(client_pki, true);
    if alone {
        options = options.ready_when_connected();
    }
    let server = NatsServer::start_with(options)
        .await
        .unwrap_or_else(|error| panic!("{name} starts: {error:#}"));
    Node {
        name: name.to_owned(),
        server,
        monitor: SocketAddr::from((Ipv4Addr::LOCALHOST, own.monitor)),
    }
}

/// Starts three nodes with route and client certificates from `pki` and waits until each
/// one has routes to the two others.
async fn start_cluster(pki: &TestPki) -> (Vec<Node>, Vec<Ports>) {
    let ports: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
    let tls = route_tls(&pki.server_cert, &pki.server_key, &pki.ca_cert);
    let names = ["n1", "n2", "n3"];
    let configs: Vec<String> = names
        .iter()
        .zip(&ports)
        .map(|(name, own)| node_config(name, *own, &ports, &tls))
        .collect();
    // Together: a clustered node answers JetStream only once the cluster has a meta leader.
    let started = Instant::now();
    let (n1, n2, n3) = tokio::join!(
        start_node(names[0], ports[0], configs[0].clone(), pki, false),
        start_node(names[1], ports[1], configs[1].clone(), pki, false),
        start_node(names[2], ports[2], configs[2].clone(), pki, false),
    );
    let nodes = vec![n1, n2, n3];
    for node in &nodes {
        let others: BTreeSet<String> = names
            .iter()
            .filter(|name| **name != node.name)
            .map(|name| (*name).to_owned())
            .collect();
        wait_until(
            &format!("{} has routes to {others:?}", node.name),
            FORM_TIMEOUT,
            || async { route_peers(node.monitor).await.as_ref() == Some(&others) },
        )
        .await
        .unwrap();
    }
    eprintln!(
        "cluster of three formed over TLS routes in {:?}",
        started.elapsed()
    );
    (nodes, ports)
}

/// The names of the servers `/routez` reports routes to. nats-server keeps a pool of
/// several route connections to each peer (and one per pinned account), so `num_routes`
/// counts connections, not servers: the distinct `remote_name`s are the peers.
async fn route_peers(monitor: SocketAddr) -> Option<BTreeSet<String>> {
    let (status, body) = http_get(monitor, "/routez").await.ok()?;
    if status != 200 {
        return None;
    }
    let routez: serde_json::Value = serde_json::from_str(&body).ok()?;
    let routes = routez
        .get("routes")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    routes
        .iter()
        .map(|route| Some(route.get("remote_name")?.as_str()?.to_owned()))
        .collect()
}

/// Seconds between the first and the last refusal of a route certificate signed by an
/// unknown CA in `log` (nats-server's `[pid] YYYY/MM/DD HH:MM:SS.micros [ERR] ...` lines).
fn refusal_span(log: &str) -> Option<f64> {
    let times: Vec<f64> = log
        .lines()
        .filter(|line| line.contains(ROUTE_HANDSHAKE_ERROR) && line.contains("unknown authority"))
        .filter_map(|line| {
            let clock = line.split_whitespace().nth(2)?;
            let mut parts = clock.split(':');
            let hours: f64 = parts.next()?.parse().ok()?;
            let minutes: f64 = parts.next()?.parse().ok()?;
            let seconds: f64 = parts.next()?.parse().ok()?;
            Some(hours * 3600.0 + minutes * 60.0 + seconds)
        })
        .collect();
    Some(times.last()? - times.first()?)
}

async fn num_routes(monitor: SocketAddr) -> Option<u64> {
    let (status, body) = http_get(monitor, "/varz").await.ok()?;
    if status != 200 {
        return None;
    }
    let varz: serde_json::Value = serde_json::from_str(&body).ok()?;
    varz.get("routes")?.as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_jetstream_cluster_over_mutual_tls_routes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let (nodes, _) = start_cluster(&pki).await;

    // Clients over mutual TLS (the testkit's connections use the CA and client certificate).
    let through_1 = nodes[0].server.jetstream().await;
    let through_3 = nodes[2].server.jetstream().await;
    let mut created = through_1
        .create_stream(stream::Config {
            name: "CLUSTER_TLS".into(),
            subjects: vec!["cluster.tls.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("an R3 stream can be created on the cluster");
    let info = created.info().await.unwrap();
    let cluster = info
        .cluster
        .clone()
        .expect("a clustered stream reports its group");
    let mut members: BTreeSet<String> = cluster.replicas.iter().map(|p| p.name.clone()).collect();
    members.extend(cluster.leader.clone());
    let all: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(members, all, "one replica on every node: {cluster:?}");

    through_1
        .publish("cluster.tls.hello", "over tls routes".into())
        .await
        .unwrap()
        .await
        .expect("the stream stores the message on a majority");

    let stream = through_3.get_stream("CLUSTER_TLS").await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let message = messages
        .next()
        .await
        .expect("node 3 delivers the message published through node 1")
        .unwrap();
    assert_eq!(message.subject.as_str(), "cluster.tls.hello");
    assert_eq!(&message.payload[..], b"over tls routes");

    // Every replica holds it: node 3's own copy included.
    wait_until("every replica current", FORM_TIMEOUT, || {
        let stream = stream.clone();
        async move {
            let mut stream = stream;
            let Ok(info) = stream.info().await else {
                return false;
            };
            info.state.messages == 1
                && info
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.replicas.len() == 2 && c.replicas.iter().all(|p| p.current))
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_route_certificate_another_ca_signed_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("cluster")).unwrap();
    let other = TestPki::generate(&dir.path().join("other")).unwrap();
    let (nodes, ports) = start_cluster(&pki).await;
    let logs_before: Vec<usize> = nodes
        .iter()
        .map(|node| node.server.log_contents().len())
        .collect();

    // The outsider trusts the cluster's CA, so it accepts the nodes' certificates: only the
    // nodes' check of its own certificate (signed by another CA) can keep it out.
    let outsider_ports = Ports::free();
    let mut all = ports.clone();
    all.push(outsider_ports);
    let tls = route_tls(&other.server_cert, &other.server_key, &pki.ca_cert);
    let config = node_config("n4", outsider_ports, &all, &tls);
    let outsider = start_node("n4", outsider_ports, config, &other, true).await;

    // Each node refuses the outsider's route, and again when it retries (a second after
    // its first attempts), so the refusal is not a hiccup of start-up.
    let started = Instant::now();
    for (node, before) in nodes.iter().zip(&logs_before) {
        wait_until(
            &format!(
                "{} refuses n4's route certificate on a retry too",
                node.name
            ),
            FORM_TIMEOUT,
            || async {
                let log = node.server.log_contents();
                let since = log.get(*before..).unwrap_or_default();
                refusal_span(since).is_some_and(|span| span >= RETRY_SPAN)
            },
        )
        .await
        .unwrap();
    }
    eprintln!("every node refused n4 again within {:?}", started.elapsed());
    let outsider_log = outsider.server.log_contents();
    assert!(
        outsider_log.contains(ROUTE_HANDSHAKE_ERROR),
        "n4 logs its failed handshakes:\n{outsider_log}"
    );

    assert_eq!(
        num_routes(outsider.monitor).await,
        Some(0),
        "n4 has no route"
    );
    assert_eq!(route_peers(outsider.monitor).await, Some(BTreeSet::new()));
    for node in &nodes {
        let peers = route_peers(node.monitor).await.unwrap();
        assert_eq!(
            peers.len(),
            2,
            "{} still has its two peers: {peers:?}",
            node.name
        );
        assert!(!peers.contains("n4"), "{} took n4 in: {peers:?}", node.name);
    }
}
