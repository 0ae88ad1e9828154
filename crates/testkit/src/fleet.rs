//! Many simulated workers multiplexed over a few connections, for scale tests.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::Client;
use drover_protocol::subject::{self, keys};
use drover_protocol::{
    encode, CheckPulse, GivePulse, Ready, Register, Registered, RoutineId, WorkerId, WorkerStatus,
};
use futures::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::request::call;

struct Member {
    id: WorkerId,
    incarnation: u64,
}

/// Workers that pulse every `period` from a handful of shared connections.
pub struct Fleet {
    /// The workers, in the order they were started.
    pub ids: Vec<WorkerId>,
    alive: Arc<Mutex<HashSet<WorkerId>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Registers `count` workers named `<prefix>-<n>`, spread over `clients`, sends ready for
    /// each, and pulses them every `period` (ignoring the interval the registry hands out,
    /// as a scale test wants).
    pub async fn start(
        clients: &[Client],
        prefix: &str,
        count: usize,
        routine: &str,
        period: Duration,
    ) -> Self {
        let alive = Arc::new(Mutex::new(HashSet::new()));
        let mut per_client: Vec<Vec<Member>> = (0..clients.len()).map(|_| Vec::new()).collect();
        let mut ids = Vec::with_capacity(count);
        let routine = RoutineId::parse(routine).expect("the routine is a valid routineID");
        // Register in waves so the registry sees realistic concurrency, not 10k at once.
        for wave in (0..count).collect::<Vec<_>>().chunks(100) {
            let mut pending = Vec::new();
            for &index in wave {
                let client = clients[index % clients.len()].clone();
                let id = WorkerId::parse(format!("{prefix}-{index}"))
                    .expect("the prefix makes valid workerIDs");
                let routine = routine.clone();
                pending.push(tokio::spawn(async move {
                    let register = Register {
                        worker_id: id.clone(),
                        routines: vec![routine],
                        labels: Default::default(),
                        capacity: 1,
                        name: None,
                        sdk: None,
                        host: None,
                        pid: None,
                    };
                    let registered: Registered = call(
                        &client,
                        subject::from_worker(keys::REGISTER, &id),
                        &register,
                    )
                    .await
                    .unwrap_or_else(|error| panic!("registering {id}: {error}"));
                    client
                        .publish(
                            subject::from_worker(keys::READY, &id),
                            encode(&Ready {
                                incarnation: registered.incarnation,
                            }),
                        )
                        .await
                        .unwrap_or_else(|error| panic!("ready of {id}: {error}"));
                    (index, id, registered.incarnation)
                }));
            }
            for task in pending {
                let (index, id, incarnation) = task.await.expect("registration does not fail");
                lock(&alive).insert(id.clone());
                ids.push(id.clone());
                per_client[index % clients.len()].push(Member { id, incarnation });
            }
        }
        let mut tasks = Vec::new();
        for (client, members) in clients.iter().zip(per_client) {
            let members = Arc::new(members);
            // Pulses.
            {
                let client = client.clone();
                let members = Arc::clone(&members);
                let alive = Arc::clone(&alive);
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    loop {
                        tick.tick().await;
                        let living: Vec<(WorkerId, u64)> = {
                            let alive = lock(&alive);
                            members
                                .iter()
                                .filter(|member| alive.contains(&member.id))
                                .map(|member| (member.id.clone(), member.incarnation))
                                .collect()
                        };
                        for (id, incarnation) in living {
                            let pulse = GivePulse {
                                incarnation,
                                status: WorkerStatus::Idle,
                                runs: vec![],
                                id: None,
                            };
                            let _ = client
                                .publish(
                                    subject::from_worker(keys::GIVE_PULSE, &id),
                                    encode(&pulse),
                                )
                                .await;
                        }
                    }
                }));
            }
            // Probes: answered for living members on this connection.
            {
                let client = client.clone();
                let alive = Arc::clone(&alive);
                let incarnations: std::collections::HashMap<WorkerId, u64> = members
                    .iter()
                    .map(|member| (member.id.clone(), member.incarnation))
                    .collect();
                let mut probes = client
                    .subscribe("v1.worker.*.heartbeat.check_pulse")
                    .await
                    .expect("the probe subscription is made");
                tasks.push(tokio::spawn(async move {
                    while let Some(message) = probes.next().await {
                        let Ok((id, _)) = subject::parse_worker_inbox(message.subject.as_str())
                        else {
                            continue;
                        };
                        let Some(&incarnation) = incarnations.get(&id) else {
                            continue;
                        };
                        if !lock(&alive).contains(&id) {
                            continue;
                        }
                        let body: Value =
                            serde_json::from_slice(&message.payload).unwrap_or_default();
                        let Ok(probe) =
                            serde_json::from_value::<CheckPulse>(body["payload"].clone())
                        else {
                            continue;
                        };
                        let pulse = GivePulse {
                            incarnation,
                            status: WorkerStatus::Idle,
                            runs: vec![],
                            id: Some(probe.id),
                        };
                        let _ = client
                            .publish(subject::from_worker(keys::GIVE_PULSE, &id), encode(&pulse))
                            .await;
                    }
                }));
            }
        }
        for client in clients {
            client.flush().await.expect("the fleet's connections flush");
        }
        Self { ids, alive, tasks }
    }

    /// Stops the given workers' pulses and probe answers, as if their processes died.
    pub fn kill(&self, ids: &[WorkerId]) {
        let mut alive = lock(&self.alive);
        for id in ids {
            alive.remove(id);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Locks the set of living workers, carrying on after a panic in another task.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
