//! Refusals: the publishes and subscriptions nats-server will not allow the credential in use.
//!
//! NATS tells a permissions violation to the connection (`-ERR 'Permissions Violation for
//! Publish to "..."'`), not to the request or subscription that caused it, so a program that
//! only waits for a reply sees a time-out. [`watch`] records the violations a connection is
//! told of, and [`Refusals::next`] lets a program end at once with the server's words.

use async_nats::{ConnectOptions, Event, ServerError};
use tokio::sync::watch;

/// The permissions violations one connection has been told of.
#[derive(Debug, Clone)]
pub struct Refusals {
    seen: watch::Receiver<Option<String>>,
}

/// Sets `options` to record permissions violations (the connection's one event callback).
pub fn watch(options: ConnectOptions) -> (ConnectOptions, Refusals) {
    let (tell, seen) = watch::channel(None);
    let options = options.event_callback(move |event| {
        if let Event::ServerError(ServerError::Other(error)) = &event {
            if is_permissions_violation(error) {
                tell.send_replace(Some(error.clone()));
            }
        }
        async {}
    });
    (options, Refusals { seen })
}

impl Refusals {
    /// The next permissions violation, as the server worded it: the latest one this handle
    /// has not returned yet (a clone has returned none), or the next to come. Pending forever
    /// once the connection is gone.
    pub async fn next(&mut self) -> String {
        loop {
            // Returns at once while a value is unseen, and marks it seen.
            if self.seen.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if let Some(error) = self.seen.borrow().clone() {
                return error;
            }
        }
    }
}

/// nats-server's words for a publish or subscription outside the connection's permissions.
fn is_permissions_violation(error: &str) -> bool {
    error.to_ascii_lowercase().contains("permissions violation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_violation_is_returned_once_to_each_handle() {
        let (tell, seen) = watch::channel(None);
        let original = Refusals { seen };
        let mut early = original.clone();
        tell.send_replace(Some("first".to_owned()));
        let mut late = original.clone();
        assert_eq!(early.next().await, "first");
        assert_eq!(late.next().await, "first");
        let waiting = tokio::spawn(async move { early.next().await });
        tokio::task::yield_now().await;
        tell.send_replace(Some("second".to_owned()));
        assert_eq!(waiting.await.unwrap(), "second");
        let seen_late =
            tokio::time::timeout(std::time::Duration::from_millis(20), late.next()).await;
        assert_eq!(seen_late.ok(), Some("second".to_owned()));
    }

    #[test]
    fn permissions_violations_are_told_from_other_server_errors() {
        assert!(is_permissions_violation(
            "Permissions Violation for Publish to \"v1.run.cancel\""
        ));
        assert!(is_permissions_violation(
            "permissions violation for subscription to \"v1.worker.b.>\""
        ));
        assert!(!is_permissions_violation("Maximum Payload Violation"));
    }
}
