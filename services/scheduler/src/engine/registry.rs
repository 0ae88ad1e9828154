//! Requests to the registry about the runs a worker holds.

use std::time::Duration;

use async_nats::Client;
use drover_protocol::envelope::{decode_internal_reply, encode_internal};
use drover_protocol::subject::internal;
use drover_protocol::{Claim, ErrorCode, Release, Waiting};
use drover_service_kit::Backoff;
use serde::Serialize;
use tracing::debug;

const TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a release is sent before it is left to the worker's next registration.
const RELEASE_TRIES: u32 = 5;

/// The registry refused, or could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered no.
    #[error("registry refused ({code}): {message}")]
    Refused {
        /// Why.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// No answer.
    #[error("registry unreachable: {0}")]
    Unreachable(String),
}

/// Sends claim, release and waiting reports.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    nats: Client,
}

impl RegistryClient {
    /// A client over `nats`.
    pub fn new(nats: Client) -> Self {
        Self { nats }
    }

    async fn call<T: Serialize>(
        &self,
        subject: &'static str,
        body: &T,
    ) -> Result<(), RegistryError> {
        let request = self.nats.request(subject, encode_internal(body));
        let response = tokio::time::timeout(TIMEOUT, request)
            .await
            .map_err(|_| RegistryError::Unreachable("no answer in time".to_owned()))?
            .map_err(|error| RegistryError::Unreachable(error.to_string()))?;
        let reply = decode_internal_reply(&response.payload)
            .map_err(|error| RegistryError::Unreachable(error.to_string()))?;
        if reply.ok {
            Ok(())
        } else {
            Err(RegistryError::Refused {
                code: reply.code.unwrap_or(ErrorCode::Internal),
                message: reply.message.unwrap_or_default(),
            })
        }
    }

    /// Records that the worker holds the run.
    pub async fn claim(&self, claim: &Claim) -> Result<(), RegistryError> {
        self.call(internal::REGISTRY_CLAIM, claim).await
    }

    /// Records that the worker no longer holds the run. Retried a few times; a release that
    /// never lands is harmless once the worker registers again or is declared lost.
    pub async fn release(&self, release: &Release) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..RELEASE_TRIES {
            match self.call(internal::REGISTRY_RELEASE, release).await {
                Ok(()) | Err(RegistryError::Refused { .. }) => return,
                Err(error) => {
                    debug!(run = %release.run_id, %error, attempt, "release not delivered");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Reports whether a held run waits on its children.
    pub async fn waiting(&self, report: &Waiting) {
        if let Err(error) = self.call(internal::REGISTRY_WAITING, report).await {
            debug!(run = %report.run_id, %error, "waiting report not delivered");
        }
    }
}
