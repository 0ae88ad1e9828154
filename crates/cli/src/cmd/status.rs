//! `drover status`: which services answer `$SRV` pings, and the health of JetStream.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use drover_protocol::subject::resources;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::client::Drover;
use crate::error::CliError;
use crate::output;

/// Every service a complete stack runs that answers `$SRV` pings. drover-auth (secured
/// setup only) and drover-console serve no NATS micro service, so they are not listed.
pub const SERVICES: [&str; 4] = [
    "drover-registry",
    "drover-heartbeat-monitor",
    "drover-scheduler",
    "drover-log-collector",
];

const STREAMS: [&str; 5] = [
    resources::QUEUE_STREAM,
    resources::DIRECTIVES_STREAM,
    resources::TIMERS_STREAM,
    resources::LOG_INTAKE_STREAM,
    resources::LOGS_STREAM,
];

const BUCKETS: [&str; 4] = [
    resources::WORKERS_BUCKET,
    resources::RUNS_BUCKET,
    resources::RUN_KEYS_BUCKET,
    resources::LEADERS_BUCKET,
];

/// Show the stack's health.
#[derive(Debug, Args)]
pub struct Status {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One service instance that answered a ping.
#[derive(Debug, Clone, Serialize)]
struct Instance {
    id: String,
    version: String,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    nats: String,
    services: BTreeMap<String, Vec<Instance>>,
    streams: BTreeMap<String, Option<StreamHealth>>,
    buckets: BTreeMap<String, Option<u64>>,
    healthy: bool,
}

#[derive(Debug, Serialize)]
struct StreamHealth {
    messages: u64,
    bytes: u64,
    consumers: usize,
}

/// Asks every service instance to answer `$SRV.PING` and collects the answers.
async fn ping(drover: &Drover) -> Result<BTreeMap<String, Vec<Instance>>, CliError> {
    let client = drover.nats();
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(CliError::nats)?;
    client
        .publish_with_reply("$SRV.PING", inbox, bytes::Bytes::new())
        .await
        .map_err(CliError::nats)?;
    client.flush().await.map_err(CliError::nats)?;
    let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
        let Ok(answer) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        let name = answer["name"].as_str().unwrap_or_default().to_owned();
        services.entry(name).or_default().push(Instance {
            id: answer["id"].as_str().unwrap_or_default().to_owned(),
            version: answer["version"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok(services)
}

impl Status {
    /// Runs the command. Exits 1 when a service or a resource is missing.
    pub async fn run(self, drover: &Drover) -> Result<(), CliError> {
        let services = ping(drover).await?;
        let js = async_nats::jetstream::new(drover.nats().clone());
        let mut streams = BTreeMap::new();
        for name in STREAMS {
            let health = match js.get_stream(name).await {
                Ok(mut stream) => stream.info().await.ok().map(|info| StreamHealth {
                    messages: info.state.messages,
                    bytes: info.state.bytes,
                    consumers: info.state.consumer_count,
                }),
                Err(_) => None,
            };
            streams.insert(name.to_owned(), health);
        }
        let mut buckets = BTreeMap::new();
        for name in BUCKETS {
            let values = match js.get_key_value(name).await {
                Ok(bucket) => bucket.status().await.ok().map(|status| status.values()),
                Err(_) => None,
            };
            buckets.insert(name.to_owned(), values);
        }
        let healthy = SERVICES
            .iter()
            .all(|service| services.contains_key(*service))
            && streams.values().all(Option::is_some)
            && buckets.values().all(Option::is_some);
        let report = Report {
            nats: drover.url().to_owned(),
            services,
            streams,
            buckets,
            healthy,
        };
        if self.json {
            output::json(&report)?;
        } else {
            print_report(&report);
        }
        if report.healthy {
            Ok(())
        } else {
            Err(CliError::Other(
                "the stack is not complete: see above".to_owned(),
            ))
        }
    }
}

fn print_report(report: &Report) {
    println!("NATS {}", report.nats);
    let mut table = output::table(&["SERVICE", "INSTANCES", "VERSION"]);
    for service in SERVICES {
        match report.services.get(service) {
            Some(instances) => table.add_row(vec![
                service.to_owned(),
                instances.len().to_string(),
                instances
                    .first()
                    .map(|i| i.version.clone())
                    .unwrap_or_default(),
            ]),
            None => table.add_row(vec![
                service.to_owned(),
                "0 (not answering)".to_owned(),
                "-".to_owned(),
            ]),
        };
    }
    println!("{table}");
    let mut table = output::table(&["STREAM", "MESSAGES", "BYTES", "CONSUMERS"]);
    for (name, health) in &report.streams {
        match health {
            Some(health) => table.add_row(vec![
                name.clone(),
                health.messages.to_string(),
                health.bytes.to_string(),
                health.consumers.to_string(),
            ]),
            None => table.add_row(vec![
                name.clone(),
                "missing".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ]),
        };
    }
    println!("{table}");
    let mut table = output::table(&["BUCKET", "KEYS"]);
    for (name, values) in &report.buckets {
        table.add_row(vec![
            name.clone(),
            values.map_or_else(|| "missing".to_owned(), |v| v.to_string()),
        ]);
    }
    println!("{table}");
}
