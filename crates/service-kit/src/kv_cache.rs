//! An in-memory copy of a KV bucket, kept current by a watch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, EntryError, Operation, Store};
use async_nats::jetstream::Context;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::lookup::open_bucket;

/// A value and the bucket revision it was read at.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// Its revision in the bucket.
    pub revision: u64,
}

/// A change seen by the watch.
#[derive(Debug)]
pub enum Change<T> {
    /// A key was written.
    Put(String, Arc<T>),
    /// A key was deleted or purged.
    Deleted(String),
}

impl<T> Clone for Change<T> {
    fn clone(&self) -> Self {
        match self {
            Change::Put(key, value) => Change::Put(key.clone(), Arc::clone(value)),
            Change::Deleted(key) => Change::Deleted(key.clone()),
        }
    }
}

/// The cache: every key's latest value, decoded.
pub struct KvCache<T> {
    bucket: Store,
    entries: RwLock<HashMap<String, Versioned<Arc<T>>>>,
    caught_up: AtomicBool,
    caught_up_notify: Notify,
    changes: broadcast::Sender<Change<T>>,
}

impl<T> std::fmt::Debug for KvCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("caught_up", &self.caught_up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> KvCache<T> {
    /// Opens the bucket `bucket_name` (retrying the look-up with backoff), follows it, and
    /// waits until the cache has caught up. `None` when `shutdown` came first.
    pub async fn open(
        js: &Context,
        bucket_name: &str,
        shutdown: &CancellationToken,
    ) -> Option<Arc<Self>> {
        let bucket = open_bucket(js, bucket_name, shutdown).await?;
        let cache = Self::spawn(bucket, shutdown.child_token());
        shutdown.run_until_cancelled(cache.wait_caught_up()).await?;
        Some(cache)
    }

    /// Starts following the bucket. The cache fills in the background; see [`Self::wait_caught_up`].
    pub fn spawn(bucket: Store, shutdown: CancellationToken) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        let cache = Arc::new(Self {
            bucket,
            entries: RwLock::new(HashMap::new()),
            caught_up: AtomicBool::new(false),
            caught_up_notify: Notify::new(),
            changes,
        });
        tokio::spawn(Arc::clone(&cache).follow(shutdown));
        cache
    }

    /// The bucket behind the cache.
    pub fn bucket(&self) -> &Store {
        &self.bucket
    }

    /// True once every value that existed at start-up has been loaded.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Waits until every value that existed at start-up has been loaded.
    pub async fn wait_caught_up(&self) {
        loop {
            let notified = self.caught_up_notify.notified();
            if self.is_caught_up() {
                return;
            }
            notified.await;
        }
    }

    /// Subscribes to changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<T>> {
        self.changes.subscribe()
    }

    /// The cached value of a key.
    pub fn get(&self, key: &str) -> Option<Versioned<Arc<T>>> {
        self.read().get(key).cloned()
    }

    /// Every cached value.
    pub fn values(&self) -> Vec<Arc<T>> {
        self.read()
            .values()
            .map(|entry| Arc::clone(&entry.value))
            .collect()
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Records a value this process just wrote, so reads see it before the watch does.
    pub fn note_written(&self, key: &str, value: T, revision: u64) {
        self.apply_put(key, Arc::new(value), revision, false);
    }

    /// Reads one key straight from the bucket and refreshes the cache with it.
    pub async fn fetch(&self, key: &str) -> Result<Option<Versioned<Arc<T>>>, FetchError> {
        let entry = self.bucket.entry(key).await.map_err(FetchError::Read)?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                let value: T =
                    serde_json::from_slice(&entry.value).map_err(FetchError::Undecodable)?;
                let value = Arc::new(value);
                self.apply_put(key, Arc::clone(&value), entry.revision, false);
                Ok(Some(Versioned {
                    value,
                    revision: entry.revision,
                }))
            }
            _ => Ok(None),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Versioned<Arc<T>>>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Versioned<Arc<T>>>> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn apply_put(&self, key: &str, value: Arc<T>, revision: u64, announce: bool) {
        {
            let mut entries = self.write();
            if let Some(existing) = entries.get(key) {
                if existing.revision >= revision {
                    return;
                }
            }
            entries.insert(
                key.to_owned(),
                Versioned {
                    value: Arc::clone(&value),
                    revision,
                },
            );
        }
        if announce {
            let _ = self.changes.send(Change::Put(key.to_owned(), value));
        }
    }

    fn apply(&self, entry: Entry) {
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<T>(&entry.value) {
                Ok(value) => self.apply_put(&entry.key, Arc::new(value), entry.revision, true),
                Err(error) => {
                    warn!(key = %entry.key, %error, "skipping undecodable value")
                }
            },
            Operation::Delete | Operation::Purge => {
                let removed = {
                    let mut entries = self.write();
                    match entries.get(&entry.key) {
                        Some(existing) if existing.revision < entry.revision => {
                            entries.remove(&entry.key);
                            true
                        }
                        _ => false,
                    }
                };
                if removed {
                    let _ = self.changes.send(Change::Deleted(entry.key));
                }
            }
        }
    }

    fn mark_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            debug!(bucket = %self.bucket.name, keys = self.len(), "cache caught up");
        }
        self.caught_up_notify.notify_waiters();
    }

    async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let bucket = self.bucket.clone();
        follow(
            &bucket,
            &shutdown,
            |entry| self.apply(entry),
            || self.mark_caught_up(),
        )
        .await;
    }
}

/// Follows `bucket` until `shutdown`: `apply` gets the latest value of every key, then every
/// change; `caught_up` is called once what existed at the start has been delivered (at once
/// for an empty bucket), and again whenever the watch is current after that. A failed watch
/// is restarted with backoff from the revision after the last one seen, so nothing is
/// delivered twice or missed.
pub async fn follow(
    bucket: &Store,
    shutdown: &CancellationToken,
    mut apply: impl FnMut(Entry),
    caught_up: impl Fn(),
) {
    let mut last_revision = 0u64;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    while !shutdown.is_cancelled() {
        match watch_once(bucket, shutdown, &mut last_revision, &mut apply, &caught_up).await {
            Ok(()) => return,
            Err(error) => {
                warn!(bucket = %bucket.name, %error, "watch failed, restarting");
                if !backoff.wait(shutdown).await {
                    return;
                }
            }
        }
    }
}

async fn watch_once(
    bucket: &Store,
    shutdown: &CancellationToken,
    last_revision: &mut u64,
    apply: &mut impl FnMut(Entry),
    caught_up: &impl Fn(),
) -> Result<(), String> {
    let mut watch = if *last_revision == 0 {
        let status = bucket.status().await.map_err(|error| error.to_string())?;
        if status.values() == 0 {
            caught_up();
        }
        bucket
            .watch_with_history(">")
            .await
            .map_err(|error| error.to_string())?
    } else {
        bucket
            .watch_all_from_revision(*last_revision + 1)
            .await
            .map_err(|error| error.to_string())?
    };
    loop {
        let Some(next) = shutdown.run_until_cancelled(watch.next()).await else {
            return Ok(());
        };
        let entry = match next {
            Some(Ok(entry)) => entry,
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("watch ended".to_owned()),
        };
        *last_revision = (*last_revision).max(entry.revision);
        let current = entry.delta == 0 || entry.seen_current;
        apply(entry);
        if current {
            caught_up();
        }
    }
}

/// A read from the bucket failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The bucket did not answer.
    #[error("reading the bucket failed: {0}")]
    Read(#[source] EntryError),
    /// The value is not a `T`.
    #[error("reading the bucket failed: undecodable value: {0}")]
    Undecodable(#[source] serde_json::Error),
}
