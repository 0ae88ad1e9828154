//! What `/readyz` reports: connected to NATS, JetStream resources ensured, not draining,
//! and every service-specific check passing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::connection::State;
use async_nats::Client;

/// A service-specific readiness check.
pub type Check = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
struct Inner {
    resources_ok: AtomicBool,
    draining: AtomicBool,
    /// Set while the service body has not said it serves (see [`Readiness::await_serving`]).
    awaiting_service: AtomicBool,
    client: Mutex<Option<Client>>,
    checks: Mutex<Vec<(String, Check)>>,
}

/// Shared readiness state; clones see the same state.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("not_ready", &self.not_ready())
            .finish()
    }
}

impl Readiness {
    /// A state that is not ready: no client, resources not ensured.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records whether the JetStream resources are in place.
    pub fn set_resources_ok(&self, ok: bool) {
        self.inner.resources_ok.store(ok, Ordering::SeqCst);
    }

    /// Sets the client whose connection state counts toward readiness.
    pub fn set_client(&self, client: Client) {
        *self
            .inner
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(client);
    }

    /// Marks the process as shutting down: it stays alive but is no longer ready.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Holds readiness back until [`Self::set_serving`]: `run_service` calls this before it
    /// starts anything, so `/readyz` cannot answer 200 before the service has subscribed
    /// to what it serves.
    pub fn await_serving(&self) {
        self.inner.awaiting_service.store(true, Ordering::SeqCst);
    }

    /// Records whether the service body is serving (after [`Self::await_serving`]).
    pub fn set_serving(&self, serving: bool) {
        self.inner
            .awaiting_service
            .store(!serving, Ordering::SeqCst);
    }

    /// Adds a named check; the process is ready only while it returns `true`.
    pub fn add_check(&self, name: impl Into<String>, check: Check) {
        self.inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.into(), check));
    }

    /// Connected, resources ok, not draining and every check passing.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// The names of what is not ready, empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.inner.draining.load(Ordering::SeqCst) {
            missing.push("draining".to_owned());
        }
        let connected = self
            .inner
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|client| client.connection_state() == State::Connected);
        if !connected {
            missing.push("nats".to_owned());
        }
        if !self.inner.resources_ok.load(Ordering::SeqCst) {
            missing.push("jetstream resources".to_owned());
        }
        if self.inner.awaiting_service.load(Ordering::SeqCst) {
            missing.push("service".to_owned());
        }
        // Clone the list so a check may itself touch this state without deadlocking.
        let checks = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, check) in checks {
            if !check() {
                missing.push(name);
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_service_when_asked() {
        let readiness = Readiness::new();
        readiness.set_resources_ok(true);
        readiness.await_serving();
        assert!(readiness.not_ready().contains(&"service".to_owned()));
        readiness.set_serving(true);
        assert!(!readiness.not_ready().contains(&"service".to_owned()));
        readiness.set_serving(false);
        assert!(readiness.not_ready().contains(&"service".to_owned()));
    }

    #[test]
    fn starts_not_ready_and_names_what_is_missing() {
        let readiness = Readiness::new();
        assert!(!readiness.is_ready());
        assert_eq!(readiness.not_ready(), vec!["nats", "jetstream resources"]);
        readiness.set_resources_ok(true);
        assert_eq!(readiness.not_ready(), vec!["nats"]);
    }

    #[test]
    fn custom_checks_count() {
        let readiness = Readiness::new();
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        readiness.add_check(
            "leader election",
            Arc::new(move || seen.load(Ordering::SeqCst)),
        );
        assert!(readiness
            .not_ready()
            .contains(&"leader election".to_owned()));
        flag.store(true, Ordering::SeqCst);
        assert!(!readiness
            .not_ready()
            .contains(&"leader election".to_owned()));
        readiness.set_draining();
        assert_eq!(readiness.clone().not_ready()[0], "draining");
    }
}
