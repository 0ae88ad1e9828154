//! When each worker last gave a pulse. Pulses are core NATS and never stored (DESIGN §7), so
//! the console listens to them itself; a worker it has not heard since it started shows none.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::Client;
use drover_protocol::subject::{self, keys};
use drover_protocol::{Timestamp, WorkerId};
use futures::StreamExt;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The last pulse heard from each worker.
#[derive(Debug, Default)]
pub struct Pulses {
    last: RwLock<HashMap<String, Timestamp>>,
}

impl Pulses {
    /// Starts listening.
    pub async fn spawn(nats: &Client, shutdown: CancellationToken) -> Arc<Self> {
        let pulses = Arc::new(Self::default());
        match nats
            .subscribe(subject::from_any_worker(keys::GIVE_PULSE))
            .await
        {
            Ok(mut subscription) => {
                let listening = Arc::clone(&pulses);
                tokio::spawn(async move {
                    while let Some(Some(message)) =
                        shutdown.run_until_cancelled(subscription.next()).await
                    {
                        if let Some(worker) = subject::worker_token(&message.subject) {
                            listening.heard(&worker, Timestamp::now());
                        }
                    }
                });
            }
            Err(error) => warn!(%error, "cannot listen to pulses; workers show no last pulse"),
        }
        pulses
    }

    /// Notes a pulse from `worker` at `at`.
    pub fn heard(&self, worker: &WorkerId, at: Timestamp) {
        self.last.write().insert(worker.as_str().to_owned(), at);
    }

    /// When `worker` last gave a pulse, if the console heard one.
    pub fn last(&self, worker: &WorkerId) -> Option<Timestamp> {
        self.last.read().get(worker.as_str()).copied()
    }
}
