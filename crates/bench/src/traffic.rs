//! What a run costs the broker: JetStream writes and NATS messages per run.
//!
//! Writes come from stream sequence numbers: every stream's last sequence, listed through
//! the JetStream API before and after the runs, and the sum of the deltas (a KV put or
//! delete is one message in its bucket's stream `KV_<bucket>`). Messages come from a `>`
//! subscription on a connection of its own, which sees every core message, JetStream
//! delivery, API call, acknowledgement and reply; it counts them by subject class and never
//! decodes a payload.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

/// Where the spy marks the start and the end of what it counts.
const MARK: &str = "drover-bench.spy.mark";
const START: &[u8] = b"start";
const END: &[u8] = b"end";
/// Messages the spy may hold before the client drops some (then the count is refused).
const SPY_CAPACITY: usize = 1 << 20;

/// Every stream's last sequence number, by stream name.
pub type Sequences = BTreeMap<String, u64>;

/// Lists every stream (buckets included) with its last sequence number.
pub async fn sequences(js: &jetstream::Context) -> anyhow::Result<Sequences> {
    let mut sequences = Sequences::new();
    let mut listed = js.streams();
    while let Some(info) = listed.try_next().await.context("listing the streams")? {
        sequences.insert(info.config.name.clone(), info.state.last_sequence);
    }
    Ok(sequences)
}

/// Acknowledged JetStream writes per run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Writes {
    /// All streams together.
    pub per_run: f64,
    /// By stream, those written to only.
    pub by_stream: BTreeMap<String, f64>,
}

impl Writes {
    /// Writes between two listings, over `runs`.
    pub fn between(before: &Sequences, after: &Sequences, runs: usize) -> Self {
        let runs = runs.max(1) as f64;
        let by_stream: BTreeMap<String, f64> = after
            .iter()
            .filter_map(|(name, &last)| {
                let written = last.saturating_sub(before.get(name).copied().unwrap_or(0));
                (written > 0).then(|| (name.clone(), written as f64 / runs))
            })
            .collect();
        Self {
            per_run: by_stream.values().sum(),
            by_stream,
        }
    }
}

/// Messages of one subject class per run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCount {
    /// Messages per run.
    pub per_run: f64,
    /// Mean payload size, bytes.
    pub mean_bytes: f64,
}

/// NATS messages per run, counted on `>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Messages {
    /// Runs counted over.
    pub runs: usize,
    /// Runs per second while counting (the counting slows them).
    pub per_second: f64,
    /// All messages per run.
    pub per_run: f64,
    /// By subject class: IDs folded into `*`, worker IDs into `<w>`, replies into one class.
    pub by_class: BTreeMap<String, ClassCount>,
}

/// Messages and payload bytes by subject class.
type Tally = HashMap<String, (u64, u64)>;

/// A `>` subscription on its own connection that counts between two marks.
pub struct Spy {
    client: async_nats::Client,
    counting: JoinHandle<Tally>,
    dropped: Arc<AtomicU64>,
}

impl Spy {
    /// Connects to `url`, subscribes to everything, and starts counting.
    pub async fn start(url: &str, worker_prefix: &'static str) -> anyhow::Result<Self> {
        let dropped = Arc::new(AtomicU64::new(0));
        let client = {
            let dropped = Arc::clone(&dropped);
            async_nats::ConnectOptions::new()
                .subscription_capacity(SPY_CAPACITY)
                .event_callback(move |event| {
                    let dropped = Arc::clone(&dropped);
                    async move {
                        if matches!(event, async_nats::Event::SlowConsumer(_)) {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .connect(url)
                .await
                .context("connecting the spy")?
        };
        let mut everything = client.subscribe(">").await?;
        let counting = tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut started = false;
            let mut class = String::new();
            while let Some(message) = everything.next().await {
                if message.subject.as_str() == MARK {
                    if message.payload.as_ref() == END {
                        break;
                    }
                    started = message.payload.as_ref() == START;
                    continue;
                }
                if !started {
                    continue;
                }
                class.clear();
                subject_class(message.subject.as_str(), worker_prefix, &mut class);
                let bytes = message.payload.len() as u64;
                match tally.get_mut(class.as_str()) {
                    Some((count, sum)) => {
                        *count += 1;
                        *sum += bytes;
                    }
                    None => {
                        tally.insert(class.clone(), (1, bytes));
                    }
                }
            }
            tally
        });
        // The subscription is in place before the mark goes out after it.
        client.flush().await?;
        client.publish(MARK, Bytes::from_static(START)).await?;
        client.flush().await?;
        Ok(Self {
            client,
            counting,
            dropped,
        })
    }

    /// Stops counting and returns what was counted, over `runs`.
    pub async fn finish(self, runs: usize) -> anyhow::Result<Messages> {
        // The end mark reaches the spy after every message delivered to it before.
        self.client.publish(MARK, Bytes::from_static(END)).await?;
        self.client.flush().await?;
        let tally = tokio::time::timeout(Duration::from_secs(60), self.counting)
            .await
            .context("the spy did not see its end mark within a minute")??;
        let dropped = self.dropped.load(Ordering::Relaxed);
        anyhow::ensure!(
            dropped == 0,
            "the spy fell behind and lost messages ({dropped} slow-consumer events)"
        );
        let per_run = |count: u64| count as f64 / runs.max(1) as f64;
        Ok(Messages {
            runs,
            per_second: 0.0,
            per_run: per_run(tally.values().map(|(count, _)| count).sum()),
            by_class: tally
                .into_iter()
                .map(|(class, (count, bytes))| {
                    let counted = ClassCount {
                        per_run: per_run(count),
                        mean_bytes: bytes as f64 / count.max(1) as f64,
                    };
                    (class, counted)
                })
                .collect(),
        })
    }
}

/// Writes the class of `subject` into `out`: each token that is an ID (a number, 20 or more
/// ID characters such as a runID, the random tokens of flow control) becomes `*`, a
/// worker's ID `<w>`, and every reply subject (`_INBOX.…`: PubAcks, request replies) one
/// class.
pub fn subject_class(subject: &str, worker_prefix: &str, out: &mut String) {
    if subject.starts_with("_INBOX.") {
        out.push_str("_INBOX.*");
        return;
    }
    // `$JS.FC.<stream>.<random>.<random>`: a consumer's flow control.
    let flow_control = subject.starts_with("$JS.FC.");
    for (index, token) in subject.split('.').enumerate() {
        if index > 0 {
            out.push('.');
        }
        let is_id = (flow_control && index > 2)
            || token.bytes().all(|b| b.is_ascii_digit())
            || (token.len() >= 20
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        if is_id {
            out.push('*');
        } else if token.starts_with(worker_prefix) {
            out.push_str("<w>");
        } else {
            out.push_str(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(subject: &str) -> String {
        let mut out = String::new();
        subject_class(subject, "bench-", &mut out);
        out
    }

    #[test]
    fn subjects_fold_ids_workers_and_replies() {
        assert_eq!(
            class("$KV.DROVER_RUNS.0190a2b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b"),
            "$KV.DROVER_RUNS.*"
        );
        assert_eq!(
            class("$KV.DROVER_WORKERS.bench-3"),
            "$KV.DROVER_WORKERS.<w>"
        );
        assert_eq!(
            class("v1.worker.bench-0.routine.request_start"),
            "v1.worker.<w>.routine.request_start"
        );
        assert_eq!(
            class("$JS.ACK.DROVER_QUEUE.scheduler.1.2045.2045.1764700000000000000.0"),
            "$JS.ACK.DROVER_QUEUE.scheduler.*.*.*.*.*"
        );
        assert_eq!(class("_INBOX.abcdefgh.12345"), "_INBOX.*");
        assert_eq!(
            class("$JS.FC.KV_DROVER_WORKERS.BhUwxYZa.7iLm"),
            "$JS.FC.KV_DROVER_WORKERS.*.*"
        );
        assert_eq!(
            class("$JS.API.CONSUMER.MSG.NEXT.DROVER_QUEUE.scheduler"),
            "$JS.API.CONSUMER.MSG.NEXT.DROVER_QUEUE.scheduler"
        );
    }

    #[test]
    fn writes_are_sequence_deltas_per_run() {
        let before: Sequences = [("A".to_owned(), 10), ("B".to_owned(), 5)].into();
        let after: Sequences = [
            ("A".to_owned(), 30),
            ("B".to_owned(), 5),
            ("C".to_owned(), 10),
        ]
        .into();
        let writes = Writes::between(&before, &after, 10);
        assert_eq!(writes.per_run, 3.0);
        assert_eq!(
            writes.by_stream,
            [("A".to_owned(), 2.0), ("C".to_owned(), 1.0)].into()
        );
    }
}
