//! Which services and pools are running: the `$SRV.PING` discovery of NATS micro services,
//! asked every few seconds in the background so that no page waits for the answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use drover_protocol::PoolId;
use futures::StreamExt;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long discovery collects answers.
const GATHER: Duration = Duration::from_millis(250);
/// How often discovery asks.
const REFRESH: Duration = Duration::from_secs(3);
/// The micro service name every WorkerPool answers under.
pub const POOL_SERVICE: &str = "drover-pool";

/// One running instance of a micro service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    /// The instance's ID.
    pub id: String,
    /// Its version.
    pub version: String,
    /// What it says about itself (a pool's `poolID`, for one).
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// A micro service and its running instances (replicas).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Service {
    /// The service's name, such as `drover-scheduler`.
    pub name: String,
    /// Its instances.
    pub instances: Vec<Instance>,
}

#[derive(Debug, Deserialize)]
struct Ping {
    name: String,
    #[serde(flatten)]
    instance: Instance,
}

/// The last answers to discovery.
#[derive(Debug, Default)]
pub struct Directory {
    services: RwLock<BTreeMap<String, Vec<Instance>>>,
}

impl Directory {
    /// Starts asking in the background.
    pub fn spawn(nats: Client, shutdown: CancellationToken) -> Arc<Self> {
        let directory = Arc::new(Self::default());
        tokio::spawn(Arc::clone(&directory).refresh(nats, shutdown));
        directory
    }

    /// Every service seen at the last discovery, by name.
    pub fn services(&self) -> Vec<Service> {
        self.services
            .read()
            .iter()
            .map(|(name, instances)| Service {
                name: name.clone(),
                instances: instances.clone(),
            })
            .collect()
    }

    /// The pools seen at the last discovery.
    pub fn pools(&self) -> Vec<PoolId> {
        let services = self.services.read();
        let mut pools: Vec<PoolId> = services
            .get(POOL_SERVICE)
            .into_iter()
            .flatten()
            .filter_map(|instance| instance.metadata.get("poolID"))
            .filter_map(|pool| PoolId::parse(pool.as_str()).ok())
            .collect();
        pools.sort();
        pools.dedup();
        pools
    }

    /// Asks now and records the answers.
    pub async fn discover(&self, nats: &Client) -> Result<(), async_nats::Error> {
        let inbox = nats.new_inbox();
        let mut answers = nats.subscribe(inbox.clone()).await?;
        nats.publish_with_reply("$SRV.PING", inbox, "".into())
            .await?;
        let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        let deadline = tokio::time::sleep(GATHER);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                answer = answers.next() => match answer {
                    Some(message) => {
                        if let Ok(ping) = serde_json::from_slice::<Ping>(&message.payload) {
                            services.entry(ping.name).or_default().push(ping.instance);
                        }
                    }
                    None => break,
                },
            }
        }
        for instances in services.values_mut() {
            instances.sort_by(|a, b| a.id.cmp(&b.id));
        }
        *self.services.write() = services;
        Ok(())
    }

    async fn refresh(self: Arc<Self>, nats: Client, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(REFRESH);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            if let Err(error) = self.discover(&nats).await {
                debug!(%error, "service discovery failed");
            }
        }
    }
}
