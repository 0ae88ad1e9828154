//! What each role may publish and subscribe under the secured setup (docs/security.md).
//!
//! The auth service grants these to every connection it admits; the services themselves
//! are trusted with everything and are not listed. Patterns are NATS subject patterns.

use crate::ids::{PoolId, WorkerId};
use crate::subject::{self, keys, WORKER_DIRECTIVES};

/// The subjects a connection may publish and subscribe, and whether it may answer requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Subjects it may publish on.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may publish one reply to each request it receives.
    pub respond: bool,
}

/// The inbox prefix a worker uses for the replies to its own requests: `_INBOX.<workerID>`.
pub fn worker_inbox_prefix(worker: &WorkerId) -> String {
    format!("_INBOX.{worker}")
}

/// A worker acts only as itself: its own directive subjects, its own inbox, its own replies.
pub fn worker(worker: &WorkerId) -> Grants {
    Grants {
        publish: WORKER_DIRECTIVES
            .iter()
            .map(|key| subject::from_worker(key, worker))
            .collect(),
        subscribe: vec![
            subject::worker_inbox(worker),
            format!("{}.>", worker_inbox_prefix(worker)),
        ],
        respond: false,
    }
}

/// A read-only client (dashboards): queries, watches, discovery and stream health.
pub fn client_read() -> Grants {
    Grants {
        publish: [
            keys::RUN_GET,
            keys::RUN_LIST,
            keys::REGISTRY_GET,
            keys::REGISTRY_LIST,
            keys::LOGS_QUERY,
        ]
        .iter()
        .map(|key| (*key).to_owned())
        .chain([
            format!("v1.pool.*.{}", verb(keys::POOL_STATUS)),
            "$SRV.>".to_owned(),
            "$JS.API.INFO".to_owned(),
            "$JS.API.STREAM.INFO.>".to_owned(),
        ])
        .collect(),
        subscribe: vec![
            "_INBOX.>".to_owned(),
            subject::all_run_events(),
            subject::all_registry_events(),
        ],
        respond: false,
    }
}

/// A client that may also submit runs and cancel them.
pub fn client_submit() -> Grants {
    let mut grants = client_read();
    grants
        .publish
        .extend([keys::REQUEST_START.to_owned(), keys::RUN_CANCEL.to_owned()]);
    grants
}

/// A pool's own connection: a reader that ships its processes' output as their log lines
/// and answers its micro service's requests.
pub fn pool(pool: &PoolId) -> Grants {
    let mut grants = client_read();
    grants.publish.push(subject::from_any_worker(keys::LOG));
    grants
        .subscribe
        .extend([format!("v1.pool.{pool}.>"), "$SRV.>".to_owned()]);
    grants.respond = true;
    grants
}

/// Whether `worker` is a process of `pool`: `<poolID>-<group>-<n>` (DESIGN §9).
pub fn is_pool_process(pool: &PoolId, worker: &WorkerId) -> bool {
    let Some(rest) = worker.as_str().strip_prefix(pool.as_str()) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    match rest.rsplit_once('-') {
        Some((group, n)) => {
            !group.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn verb(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &str) -> WorkerId {
        WorkerId::parse(value).unwrap()
    }

    #[test]
    fn a_worker_publishes_only_its_own_directives_and_reads_only_its_inboxes() {
        let grants = worker(&id("w-1"));
        assert_eq!(grants.publish.len(), 8);
        assert!(grants
            .publish
            .contains(&"v1.routine.completed.w-1".to_owned()));
        assert!(grants
            .publish
            .contains(&"v1.heartbeat.give_pulse.w-1".to_owned()));
        assert!(
            grants.publish.iter().all(|s| s.ends_with(".w-1")),
            "{grants:?}"
        );
        assert_eq!(grants.subscribe, ["v1.worker.w-1.>", "_INBOX.w-1.>"]);
        assert!(!grants.respond);
    }

    #[test]
    fn only_the_submit_client_may_submit_or_cancel() {
        let read = client_read();
        let submit = client_submit();
        for key in [keys::REQUEST_START, keys::RUN_CANCEL] {
            assert!(!read.publish.iter().any(|s| s == key));
            assert!(submit.publish.iter().any(|s| s == key));
        }
        assert!(read.publish.iter().all(|s| submit.publish.contains(s)));
        assert!(read.publish.contains(&"v1.pool.*.status".to_owned()));
    }

    #[test]
    fn a_pool_answers_on_its_own_subjects_and_ships_logs() {
        let grants = pool(&PoolId::parse("web").unwrap());
        assert!(grants.subscribe.contains(&"v1.pool.web.>".to_owned()));
        assert!(grants.publish.contains(&"v1.log.*".to_owned()));
        assert!(grants.respond);
    }

    #[test]
    fn pool_processes_are_named_pool_group_number() {
        let pool = PoolId::parse("web").unwrap();
        assert!(is_pool_process(&pool, &id("web-api-0")));
        assert!(is_pool_process(&pool, &id("web-a-b-12")));
        for other in [
            "web",
            "web-",
            "web-api",
            "web-api-",
            "web-api-x",
            "webapi-0",
            "we-api-0",
            "web--0",
        ] {
            assert!(!is_pool_process(&pool, &id(other)), "{other}");
        }
    }
}
