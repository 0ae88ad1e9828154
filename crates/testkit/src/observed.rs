//! A client connection that records what the server reports to it: permissions violations
//! and other `-ERR`s, for tests that check what NATS refuses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::wait::wait_until;

/// A connection and the errors the server has sent it so far.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The connection.
    pub client: Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Observed {
    /// Connects with `options` (no reconnects: a refusal is final) and starts recording.
    pub async fn connect(
        url: &str,
        options: ConnectOptions,
    ) -> Result<Self, async_nats::ConnectError> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&errors);
        let client = options
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(Some(0))
            .event_callback(move |event| {
                let seen = Arc::clone(&seen);
                async move {
                    if let Event::ServerError(error) = event {
                        seen.lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push(error.to_string());
                    }
                }
            })
            .connect(url)
            .await?;
        Ok(Self { client, errors })
    }

    /// Every error the server has reported so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until the server reports an error containing `fragment` (for example
    /// `Publish to "v1.routine.completed.b"`); false if none comes in time.
    pub async fn refused(&self, fragment: &str) -> bool {
        let errors = Arc::clone(&self.errors);
        let fragment = fragment.to_owned();
        wait_until(
            "the server reports the refusal",
            Duration::from_secs(5),
            move || {
                let found = errors
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .iter()
                    .any(|error| error.contains(&fragment));
                async move { found }
            },
        )
        .await
        .is_ok()
    }
}
