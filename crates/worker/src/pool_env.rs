//! What a supervisor such as `drover pool` hands a worker process through its environment
//! (DESIGN §9): the workerID to register under, and the pool and group the process belongs
//! to, which become the labels `pool` and `group`.
//!
//! The supervisor's values win over those in code: the pool knows its processes by these
//! workerIDs and labels, and a worker registering under another workerID breaks its start-up
//! order.

use drover_protocol::Labels;

/// The workerID the process registers under; it replaces the one given to
/// [`Worker::builder`](crate::Worker::builder).
pub const WORKER_ID_VAR: &str = "DROVER_WORKER_ID";

/// The poolID of the supervising pool, registered as the label [`POOL_LABEL`].
pub const POOL_ID_VAR: &str = "DROVER_POOL_ID";

/// The pool's group that started the process, registered as the label [`GROUP_LABEL`].
pub const POOL_GROUP_VAR: &str = "DROVER_POOL_GROUP";

/// The label that carries [`POOL_ID_VAR`].
pub const POOL_LABEL: &str = "pool";

/// The label that carries [`POOL_GROUP_VAR`].
pub const GROUP_LABEL: &str = "group";

/// The supervisor's variables as read at start-up; an empty value counts as unset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PoolEnvironment {
    pub(crate) worker_id: Option<String>,
    pub(crate) pool: Option<String>,
    pub(crate) group: Option<String>,
}

impl PoolEnvironment {
    /// Reads the variables of this process.
    pub(crate) fn from_process() -> Self {
        // Lossy rather than `var`: a value that is not UTF-8 must fail the workerID check
        // loudly, not be skipped as if it were unset.
        Self::read(|name| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned()))
    }

    /// Reads the variables through `lookup` (a variable's value, or `None` when unset).
    pub(crate) fn read(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        Self {
            worker_id: get(WORKER_ID_VAR),
            pool: get(POOL_ID_VAR),
            group: get(POOL_GROUP_VAR),
        }
    }

    /// The workerID to register under (the variable's, else `in_code`), and `labels` with
    /// `pool` and `group` set from the variables. Returns whether the workerID came from
    /// the environment.
    pub(crate) fn apply(self, in_code: String, labels: &mut Labels) -> (String, bool) {
        for (label, value, var) in [
            (POOL_LABEL, self.pool, POOL_ID_VAR),
            (GROUP_LABEL, self.group, POOL_GROUP_VAR),
        ] {
            let Some(value) = value else { continue };
            if let Some(previous) = labels.insert(label.to_owned(), value.clone()) {
                if previous != value {
                    tracing::info!(label, %value, replaced = %previous, var, "label taken from the environment");
                }
            }
        }
        match self.worker_id {
            Some(worker_id) => {
                if worker_id != in_code {
                    tracing::info!(%worker_id, replaced = %in_code, var = WORKER_ID_VAR, "workerID taken from the environment");
                }
                (worker_id, true)
            }
            None => (in_code, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> PoolEnvironment {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        PoolEnvironment::read(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_variables_are_read_and_empty_ones_are_unset() {
        let read = env(&[
            (WORKER_ID_VAR, "demo-py-2"),
            (POOL_ID_VAR, "demo"),
            (POOL_GROUP_VAR, ""),
            ("DROVER_OTHER", "x"),
        ]);
        assert_eq!(
            read,
            PoolEnvironment {
                worker_id: Some("demo-py-2".to_owned()),
                pool: Some("demo".to_owned()),
                group: None,
            }
        );
        assert_eq!(env(&[]), PoolEnvironment::default());
    }

    #[test]
    fn the_environment_wins_over_the_code() {
        let mut labels = Labels::from([
            ("pool".to_owned(), "mine".to_owned()),
            ("gpu".to_owned(), "false".to_owned()),
        ]);
        let (id, from_env) = env(&[
            (WORKER_ID_VAR, "demo-py-2"),
            (POOL_ID_VAR, "demo"),
            (POOL_GROUP_VAR, "py"),
        ])
        .apply("in-code".to_owned(), &mut labels);
        assert_eq!(id, "demo-py-2");
        assert!(from_env);
        assert_eq!(labels["pool"], "demo");
        assert_eq!(labels["group"], "py");
        assert_eq!(labels["gpu"], "false");
    }

    #[test]
    fn without_the_variables_nothing_changes() {
        let mut labels = Labels::from([("pool".to_owned(), "mine".to_owned())]);
        let (id, from_env) = PoolEnvironment::default().apply("in-code".to_owned(), &mut labels);
        assert_eq!(id, "in-code");
        assert!(!from_env);
        assert_eq!(
            labels,
            Labels::from([("pool".to_owned(), "mine".to_owned())])
        );
    }
}
