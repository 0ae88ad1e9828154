//! The metrics an operator relies on (docs/observability.md): every documented metric is
//! exposed by its service with `# HELP` and its documented `# TYPE`, histograms are
//! Prometheus histograms, nothing undocumented is exposed, the dashboards and the Prometheus
//! configuration use only documented metrics, and the registry's workers-by-status gauge
//! changes with each status change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use drover_integration_tests::runs::{spec, submit, wait_terminal};
use drover_integration_tests::worker::WorkerSpec;
use drover_integration_tests::{worker_status, Act, Runner};
use drover_protocol::envelope::encode_internal;
use drover_protocol::subject::{self, internal, keys, resources};
use drover_protocol::{
    Claim, Completed, InternalReply, LogLevel, LogLine, LogPage, LogsQuery, Outcome, Release,
    RunId, RunStatus, WorkerEvent, WorkerId, WorkerStatus,
};
use drover_testkit::{
    call, wait_for, wait_until, workspace_root, Stack, HEARTBEAT_MONITOR, LOG_COLLECTOR, REGISTRY,
    SCHEDULER,
};
use futures::StreamExt;
use serde_json::json;

const SERVICES: [&str; 4] = [REGISTRY, HEARTBEAT_MONITOR, SCHEDULER, LOG_COLLECTOR];

/// A metric as docs/observability.md lists it.
#[derive(Debug, Clone)]
struct Documented {
    name: String,
    kind: String,
    /// The services that expose it (none for those Prometheus writes itself).
    services: Vec<&'static str>,
}

/// The services a section of the metrics list is about, from its heading; `None` for a
/// heading that is not one of the metric sections.
fn section_services(heading: &str) -> Option<Vec<&'static str>> {
    if heading.contains("Every service") {
        return Some(SERVICES.to_vec());
    }
    if heading.contains("Services with a leader") {
        return Some(vec![SCHEDULER, LOG_COLLECTOR]);
    }
    if heading.contains("Written by Prometheus") {
        return Some(Vec::new());
    }
    SERVICES
        .iter()
        .find(|service| heading.trim() == **service)
        .map(|service| vec![*service])
}

/// The metric tables of docs/observability.md: rows ``| `name` | type | labels | meaning |``
/// under a `###` heading that names their services.
fn documented() -> Vec<Documented> {
    let text = std::fs::read_to_string(workspace_root().join("docs/observability.md")).unwrap();
    let mut services = None;
    let mut metrics = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            services = section_services(heading);
            continue;
        }
        if line.starts_with("# ") || line.starts_with("## ") {
            services = None;
            continue;
        }
        let (Some(services), Some(row)) = (&services, line.strip_prefix("| `")) else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[0].trim_end_matches('`').to_owned();
        metrics.push(Documented {
            name,
            kind: cells[1].to_owned(),
            services: services.clone(),
        });
    }
    assert!(
        metrics.len() > 40,
        "the metric tables were not found: {metrics:?}"
    );
    let names: HashSet<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), metrics.len(), "a metric is listed twice");
    let kinds = ["counter", "gauge", "histogram"];
    for metric in &metrics {
        assert!(kinds.contains(&metric.kind.as_str()), "{metric:?}");
    }
    metrics
}

/// What one scrape says: the described metrics, their types, and each sample.
#[derive(Debug, Default)]
struct Exposition {
    help: HashSet<String>,
    types: HashMap<String, String>,
    /// Name, label set as rendered (`status="IDLE"`), value.
    samples: Vec<(String, String, f64)>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut exposition = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                exposition.help.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (name, kind) = (words.next().unwrap(), words.next().unwrap());
                exposition.types.insert(name.to_owned(), kind.to_owned());
            } else if !line.is_empty() && !line.starts_with('#') {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let value = value.parse().unwrap_or(f64::NAN);
                exposition
                    .samples
                    .push((name.to_owned(), labels.to_owned(), value));
            }
        }
        exposition
    }

    fn value(&self, name: &str, labels: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, value)| *value)
    }

    /// What does not match the documentation for `service`: documented metrics missing or
    /// of another type, histograms without buckets, and `drover_` metrics not documented.
    fn mismatches(&self, service: &str, documented: &[Documented]) -> Vec<String> {
        let mut problems = Vec::new();
        for metric in documented.iter().filter(|m| m.services.contains(&service)) {
            let name = &metric.name;
            if !self.help.contains(name) {
                problems.push(format!("{name}: no # HELP"));
            }
            match self.types.get(name) {
                None => problems.push(format!("{name}: no # TYPE")),
                Some(kind) if *kind != metric.kind => problems.push(format!(
                    "{name}: # TYPE {kind}, documented as {}",
                    metric.kind
                )),
                Some(_) => {}
            }
            let bucket = format!("{name}_bucket");
            if metric.kind == "histogram" && !self.samples.iter().any(|(n, _, _)| *n == bucket) {
                problems.push(format!("{name}: no {bucket} series"));
            }
        }
        for name in self.types.keys().filter(|name| name.starts_with("drover_")) {
            let listed = documented
                .iter()
                .any(|m| &m.name == name && m.services.contains(&service));
            if !listed {
                problems.push(format!("{name}: exposed but not documented for {service}"));
            }
        }
        problems.sort();
        problems
    }
}

async fn scrape(stack: &Stack, service: &str) -> Exposition {
    let (status, body) = stack.admin_get(service, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{service} /metrics");
    Exposition::parse(&body)
}

/// Publishes raw bytes on a worker's directive subject `key`.
async fn publish_raw(client: &Client, key: &str, worker: &WorkerId, body: &'static [u8]) {
    client
        .publish(subject::from_worker(key, worker), Bytes::from_static(body))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_documented_metric_is_exposed_described_and_of_its_type() {
    let documented = documented();
    let stack = Stack::builder()
        .with_all_services()
        .env("DROVER_STORAGE_METRICS_INTERVAL_MS", "200")
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let worker = WorkerSpec::new("metrics-w", &["metrics.echo"])
        .start(&client)
        .await;
    let id = worker.id.clone();
    let runner = Runner::start(worker, |assignment| {
        let echo = Act::Succeed(json!({"echo": assignment.params}));
        if assignment.params == json!("hold") {
            Act::After(Duration::from_secs(1), Box::new(echo))
        } else {
            echo
        }
    });

    let run = submit(&client, &spec("metrics.echo")).await;
    let record = wait_terminal(&client, &run, Duration::from_secs(10)).await;
    assert_eq!(record.status, RunStatus::Succeeded);
    // A run held long enough for the scheduler's holdings to reach the registry (a run
    // placed and ended within one batch never does), so that its batch size shows.
    let mut held = spec("metrics.echo");
    held.params = json!("hold");
    let held = submit(&client, &held).await;
    wait_until(
        "the registry sees the worker WORKING",
        Duration::from_secs(10),
        || async { worker_status(&client, id.as_str()).await == Some(WorkerStatus::Working) },
    )
    .await
    .unwrap();
    let record = wait_terminal(&client, &held, Duration::from_secs(10)).await;
    assert_eq!(record.status, RunStatus::Succeeded);
    let line = LogLine {
        level: LogLevel::Info,
        message: "done".to_owned(),
        run_id: Some(run.clone()),
        fields: None,
        timestamp: None,
    };
    runner.worker().publish(keys::LOG, &line).await;
    // One refusal for each service, so that the metrics counted by error code show.
    runner
        .worker()
        .publish(
            keys::COMPLETED,
            &Completed {
                run_id: RunId::generate(),
                attempt: 1,
                outcome: Outcome::Succeeded,
                result: None,
                error: None,
            },
        )
        .await;
    publish_raw(&client, keys::READY, &id, b"not json").await;
    publish_raw(&client, keys::GIVE_PULSE, &id, b"not json").await;
    publish_raw(&client, keys::LOG, &id, b"not json").await;
    let query = LogsQuery {
        run_id: Some(run.clone()),
        ..LogsQuery::default()
    };
    wait_until(
        "the log line is stored",
        Duration::from_secs(10),
        || async {
            call::<_, LogPage>(&client, keys::LOGS_QUERY, &query)
                .await
                .is_ok_and(|page| !page.logs.is_empty())
        },
    )
    .await
    .unwrap();

    for service in SERVICES {
        let last = wait_for(
            &format!("{service} exposes its documented metrics"),
            Duration::from_secs(10),
            || async {
                let problems = scrape(&stack, service)
                    .await
                    .mismatches(service, &documented);
                problems.is_empty().then_some(())
            },
        )
        .await;
        if last.is_err() {
            let problems = scrape(&stack, service)
                .await
                .mismatches(service, &documented);
            panic!("{service}:\n  {}", problems.join("\n  "));
        }
    }

    let scheduler = scrape(&stack, SCHEDULER).await;
    let ended = r#"reason="none",routine="metrics.echo",status="SUCCEEDED""#;
    let ended_count = scheduler
        .samples
        .iter()
        .find(|(name, labels, _)| {
            name == "drover_scheduler_runs_ended_total" && sorted_labels(labels) == ended
        })
        .map(|(_, _, value)| *value);
    assert_eq!(ended_count, Some(2.0), "{:?}", scheduler.samples);
    assert_eq!(
        scheduler.value(
            "drover_scheduler_runs_submitted_total",
            r#"routine="metrics.echo""#
        ),
        Some(2.0)
    );
    // The run's record is in its bucket, and every stream and bucket is reported.
    let runs = r#"stream="KV_DROVER_RUNS""#;
    let stored = wait_for(
        "the scheduler reports the stored run",
        Duration::from_secs(10),
        || async {
            let scheduler = scrape(&stack, SCHEDULER).await;
            let bytes = scheduler.value("drover_jetstream_stored_bytes", runs)?;
            let messages = scheduler.value("drover_jetstream_stored_messages", runs)?;
            (bytes > 0.0 && messages >= 1.0).then_some(scheduler)
        },
    )
    .await
    .unwrap();
    for stream in [
        resources::QUEUE_STREAM.to_owned(),
        resources::DIRECTIVES_STREAM.to_owned(),
        resources::TIMERS_STREAM.to_owned(),
        resources::LOG_INTAKE_STREAM.to_owned(),
        resources::LOGS_STREAM.to_owned(),
        format!("KV_{}", resources::WORKERS_BUCKET),
        format!("KV_{}", resources::RUN_KEYS_BUCKET),
        format!("KV_{}", resources::LEADERS_BUCKET),
    ] {
        let labels = format!(r#"stream="{stream}""#);
        assert!(
            stored
                .value("drover_jetstream_stored_bytes", &labels)
                .is_some(),
            "no stored bytes for {stream}"
        );
    }
    drop(runner);
}

/// A label set as rendered, its labels in name order.
fn sorted_labels(labels: &str) -> String {
    let mut pairs: Vec<&str> = labels.split(',').collect();
    pairs.sort_unstable();
    pairs.join(",")
}

/// Metric names in `text`: words that start with `drover_`, and `up`, with a histogram's
/// `_bucket`, `_sum` and `_count` taken off.
fn metric_names(text: &str, histograms: &HashSet<&str>) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("drover_") || *word == "up")
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    word.strip_suffix(suffix)
                        .filter(|base| histograms.contains(base))
                })
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

#[test]
fn metric_names_come_out_of_queries_without_the_histogram_suffixes() {
    let histograms = HashSet::from(["drover_x_seconds"]);
    let names = metric_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(drover_x_seconds_bucket{a="b"}[5m]))) / up{job=~"drover-.*"} + drover_y_count"#,
        &histograms,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["drover_x_seconds", "drover_y_count", "up"]
    );
}

/// Every string of a JSON document.
fn strings(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::String(text) => into.push(text.clone()),
        serde_json::Value::Array(values) => values.iter().for_each(|v| strings(v, into)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, into)),
        _ => {}
    }
}

#[test]
fn dashboards_and_prometheus_use_only_documented_metrics() {
    let documented = documented();
    let names: HashSet<&str> = documented.iter().map(|m| m.name.as_str()).collect();
    let histograms: HashSet<&str> = documented
        .iter()
        .filter(|m| m.kind == "histogram")
        .map(|m| m.name.as_str())
        .collect();
    let deploy = workspace_root().join("deploy");
    let mut files = Vec::new();
    for (dir, extension) in [("grafana/dashboards", "json"), ("prometheus", "yml")] {
        for entry in std::fs::read_dir(deploy.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == extension) {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    let mut used = BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let text = if path.extension().is_some_and(|ext| ext == "json") {
            let dashboard: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            let mut all = Vec::new();
            strings(&dashboard, &mut all);
            all.join("\n")
        } else {
            text
        };
        for name in metric_names(&text, &histograms) {
            assert!(
                names.contains(name.as_str()),
                "{} uses {name}, which docs/observability.md does not list",
                path.display()
            );
            used.insert(name);
        }
    }
    for required in [
        "drover_scheduler_runs_submitted_total",
        "drover_scheduler_runs_ended_total",
        "drover_scheduler_runs_pending",
        "drover_scheduler_placement_latency_seconds",
        "drover_scheduler_run_duration_seconds",
        "drover_registry_workers",
        "drover_registry_workers_lost_total",
        "drover_scheduler_directives_rejected_total",
        "drover_leadership_changes_total",
        "up",
    ] {
        assert!(used.contains(required), "no dashboard shows {required}");
    }
}

/// Waits for the next `v1.registry.events` about a worker, which must say `status`.
async fn next_event(events: &mut async_nats::Subscriber, status: WorkerStatus) {
    let message = tokio::time::timeout(
        drover_testkit::patient(Duration::from_secs(10)),
        events.next(),
    )
    .await
    .unwrap_or_else(|_| panic!("no event within the timeout; expected {status}"))
    .unwrap();
    let event: WorkerEvent = drover_protocol::decode(&message.payload, 1 << 20).unwrap();
    assert_eq!(event.status, status, "{event:?}");
}

/// Scrapes the registry once: it must count the one worker under `status` and under no
/// other status.
async fn counted_as(stack: &Stack, status: WorkerStatus) -> Exposition {
    let registry = scrape(stack, REGISTRY).await;
    for each in WorkerStatus::ALL {
        let expected = if each == status { 1.0 } else { 0.0 };
        let labels = format!(r#"status="{}""#, each.as_str());
        assert_eq!(
            registry.value("drover_registry_workers", &labels),
            Some(expected),
            "the worker is {status}: drover_registry_workers{{{labels}}}"
        );
    }
    registry
}

/// The registry counts a worker under its new status before it announces the change: at
/// each `v1.registry.events` about the worker, `/metrics` already has it. A gauge refreshed
/// on a timer would still show the status before (these changes come within a second of
/// start-up, and each is checked as soon as it is announced).
#[tokio::test]
async fn the_workers_gauge_moves_with_each_status_change() {
    let stack = Stack::builder()
        .heartbeat_interval_ms(200)
        .lost_after_ms(1000)
        .with_registry()
        .with_monitor()
        .start()
        .await
        .expect("stack starts");
    let client = stack.client().await;
    let worker_id = WorkerId::parse("gauged").unwrap();
    let mut events = client
        .subscribe(subject::registry_events(&worker_id))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let worker = WorkerSpec::new("gauged", &["r"]).start(&client).await;
    // The worker says ready at once: INITIALIZING is too short to look at.
    next_event(&mut events, WorkerStatus::Initializing).await;
    next_event(&mut events, WorkerStatus::Idle).await;
    counted_as(&stack, WorkerStatus::Idle).await;
    let ask = |subject: &'static str, body: Bytes| {
        let client = client.clone();
        async move {
            let reply = client.request(subject, body).await.unwrap();
            let answer: InternalReply = serde_json::from_slice(&reply.payload).unwrap();
            assert!(answer.ok, "{answer:?}");
        }
    };
    let run = RunId::generate();
    ask(
        internal::REGISTRY_CLAIM,
        encode_internal(&Claim {
            worker_id: worker_id.clone(),
            incarnation: worker.incarnation(),
            run_id: run.clone(),
            attempt: 1,
            traceparent: None,
        }),
    )
    .await;
    next_event(&mut events, WorkerStatus::Working).await;
    counted_as(&stack, WorkerStatus::Working).await;
    ask(
        internal::REGISTRY_RELEASE,
        encode_internal(&Release {
            worker_id: worker_id.clone(),
            run_id: run,
            attempt: 1,
        }),
    )
    .await;
    next_event(&mut events, WorkerStatus::Idle).await;
    counted_as(&stack, WorkerStatus::Idle).await;
    let before = scrape(&stack, REGISTRY)
        .await
        .value("drover_registry_workers_lost_total", "");
    assert_eq!(before, Some(0.0));

    worker.go_silent();
    // UNRESPONSIVE lasts only until the monitor gives up on the worker.
    next_event(&mut events, WorkerStatus::Unresponsive).await;
    next_event(&mut events, WorkerStatus::Lost).await;
    let registry = counted_as(&stack, WorkerStatus::Lost).await;
    assert_eq!(
        registry.value("drover_registry_workers_lost_total", ""),
        Some(1.0)
    );
}
