//! Registration (protocol §4): register, pulse, ready; pulse on; register again when
//! Drover says the registration is over; say `terminating` when leaving.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use drover_protocol::subject::keys;
use drover_protocol::{
    decode_reply, encode, ErrorCode, Labels, Ready, Register, Registered, RoutineId, SdkInfo,
    Terminating, WorkerId,
};
use tokio_util::sync::CancellationToken;

use crate::deliver::{send_acked, Backoff, REQUEST_TIMEOUT};
use crate::error::WorkerError;
use crate::state::Shared;

/// How long to wait before registering again after a refusal.
const RETRY_REFUSED: Duration = Duration::from_secs(1);

/// What a worker registers with, besides its workerID.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub(crate) routines: Vec<RoutineId>,
    pub(crate) labels: Labels,
    pub(crate) capacity: u32,
    pub(crate) name: Option<String>,
    pub(crate) host: Option<String>,
}

impl Profile {
    fn register(&self, worker_id: &WorkerId) -> Register {
        Register {
            worker_id: worker_id.clone(),
            routines: self.routines.clone(),
            labels: self.labels.clone(),
            capacity: self.capacity,
            name: self.name.clone(),
            sdk: Some(SdkInfo {
                language: "rust".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            host: self.host.clone(),
            pid: Some(u64::from(std::process::id())),
        }
    }
}

/// Registers, retrying while Drover is unreachable; `Ok(None)` if `stop` fired first.
pub(crate) async fn register(
    shared: &Shared,
    profile: &Profile,
    stop: &CancellationToken,
) -> Result<Option<Registered>, WorkerError> {
    let subject = shared.subject(keys::REGISTER);
    let body = encode(&profile.register(&shared.id));
    let mut backoff = Backoff::new();
    loop {
        if stop.is_cancelled() {
            return Ok(None);
        }
        // A request in flight is seen through even when `stop` fires meanwhile: the
        // registry may have registered the worker already, and only a worker that knows
        // it is registered says `terminating` and ends OFFLINE rather than LOST.
        let request = shared.client.request(subject.clone(), body.clone());
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, request).await;
        match outcome {
            Ok(Ok(reply)) => match decode_reply::<Registered>(&reply.payload) {
                Ok(Ok(registered)) => return Ok(Some(registered)),
                Ok(Err(error)) if error.code == ErrorCode::Unavailable => {
                    tracing::debug!(%error, "registry unavailable; retrying");
                }
                Ok(Err(error)) => return Err(WorkerError::Registration(error)),
                Err(error) => tracing::warn!(%error, "unreadable registration reply; retrying"),
            },
            Ok(Err(error)) => tracing::debug!(%error, "registration not answered; retrying"),
            Err(_) => tracing::debug!("registration not answered in time; retrying"),
        }
        if !backoff.wait(stop).await {
            return Ok(None);
        }
    }
}

/// Takes a registration on: pulse at once, then `v1.ready` (stored, retried until it is).
/// The inbox must be subscribed before this is called.
pub(crate) async fn establish(shared: &Shared, registered: &Registered, stop: &CancellationToken) {
    if !shared.registered(registered) {
        return;
    }
    shared.renewed.notify_one();
    tracing::info!(
        worker_id = %shared.id,
        incarnation = registered.incarnation,
        heartbeat_interval_ms = registered.heartbeat_interval_ms,
        "registered"
    );
    shared.pulse(None).await;
    shared.ready();
    let ready = Ready {
        incarnation: registered.incarnation,
    };
    send_acked(
        &shared.client,
        shared.subject(keys::READY),
        &ready,
        format!("ready.{}.{}", shared.id, registered.incarnation),
        HeaderMap::new(),
        stop,
    )
    .await;
}

/// Registers again each time the inbox says the registration is over, until `stop`.
pub(crate) async fn renew(
    shared: Arc<Shared>,
    profile: Profile,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.reregister.notified() => {}
        }
        if !shared.take_renewal() {
            continue;
        }
        if shared.is_terminating() {
            // Leaving anyway: what the worker held has been taken back.
            let dropped = shared.drop_all("the registration ended during shutdown");
            tracing::warn!(dropped, "registration ended during shutdown");
            continue;
        }
        shared.unregistered("the registration is over");
        // A shutdown that starts meanwhile ends the attempt: a new registration would
        // only be told to leave.
        let renewal = async {
            loop {
                match register(&shared, &profile, &shutdown).await {
                    Ok(Some(registered)) => {
                        return establish(&shared, &registered, &shutdown).await
                    }
                    Ok(None) => return,
                    Err(error) => {
                        tracing::error!(%error, "registering again failed; will try again");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_REFUSED) => {}
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = renewal => {}
        }
    }
}

/// Sends `v1.terminating` (stored, retried until it is or `stop` fires).
pub(crate) async fn terminating(shared: &Shared, reason: &str, stop: &CancellationToken) -> bool {
    let incarnation = shared.terminating();
    let payload = Terminating {
        incarnation,
        reason: Some(reason.to_owned()),
    };
    shared.pulse(None).await;
    send_acked(
        &shared.client,
        shared.subject(keys::TERMINATING),
        &payload,
        format!("terminating.{}.{incarnation}", shared.id),
        HeaderMap::new(),
        stop,
    )
    .await
}

/// Pulses every heartbeat interval until `stop` fires; a new registration restarts the
/// period (and may change it).
pub(crate) async fn pulse(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let period = shared.heartbeat();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.renewed.notified() => {}
            _ = tokio::time::sleep(period) => shared.pulse(None).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::{decode, DEFAULT_MAX_PAYLOAD_BYTES};

    use super::*;

    #[test]
    fn the_registration_satisfies_its_schema() {
        let profile = Profile {
            routines: vec![RoutineId::parse("images.resize").unwrap()],
            labels: Labels::from([("gpu".to_owned(), "false".to_owned())]),
            capacity: 4,
            name: Some("resizer".to_owned()),
            host: Some("node-17".to_owned()),
        };
        let id = WorkerId::parse("resizer-1").unwrap();
        let body = encode(&profile.register(&id));
        let register: Register = decode(&body, DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        let sdk = register.sdk.unwrap();
        assert_eq!(sdk.language, "rust");
        assert_eq!(register.pid, Some(u64::from(std::process::id())));
        decode::<Ready>(&encode(&Ready { incarnation: 3 }), 1024).unwrap();
        decode::<Terminating>(
            &encode(&Terminating {
                incarnation: 3,
                reason: Some("deploy".to_owned()),
            }),
            1024,
        )
        .unwrap();
    }
}
