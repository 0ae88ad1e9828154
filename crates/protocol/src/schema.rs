//! Schema validation against `schemas/v1/`, the source of truth for every payload.
//!
//! The schema files are compiled into the binary. Shared definitions live in
//! `defs.schema.json` and are referenced relative to each schema's `$id`.

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

use crate::error::Violation;

/// Base URI of every schema's `$id`.
pub const BASE_URI: &str = "https://drover.dev/schemas/v1/";

macro_rules! schemas {
    ($($variant:ident => $file:literal,)*) => {
        /// Every schema in `schemas/v1/`, by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum SchemaName {
            $(
                #[doc = concat!("`schemas/v1/", $file, ".schema.json`")]
                $variant,
            )*
        }

        impl SchemaName {
            /// Every schema.
            pub const ALL: &'static [SchemaName] = &[$(SchemaName::$variant,)*];

            /// The file stem, e.g. `register` for `register.schema.json`.
            pub fn file_stem(self) -> &'static str {
                match self {
                    $(SchemaName::$variant => $file,)*
                }
            }

            /// The schema document's text.
            pub fn source(self) -> &'static str {
                match self {
                    $(SchemaName::$variant => include_str!(concat!(
                        env!("CARGO_MANIFEST_DIR"), "/../../schemas/v1/", $file, ".schema.json"
                    )),)*
                }
            }
        }
    };
}

schemas! {
    Defs => "defs",
    Envelope => "envelope",
    Register => "register",
    Registered => "registered",
    Ready => "ready",
    GivePulse => "heartbeat.give_pulse",
    CheckPulse => "heartbeat.check_pulse",
    Log => "log",
    RequestStart => "routine.request_start",
    Accepted => "routine.accepted",
    Starting => "routine.starting",
    Completed => "routine.completed",
    Terminating => "terminating",
    WorkerRequestStart => "worker.routine.request_start",
    WorkerStarting => "worker.routine.starting",
    WorkerCompleted => "worker.routine.completed",
    WorkerCancel => "worker.routine.cancel",
    Error => "error",
    RunGet => "run.get",
    RunList => "run.list",
    RunCancel => "run.cancel",
    RunRecord => "run.record",
    RunRecords => "run.records",
    RunEvents => "run.events",
    RegistryList => "registry.list",
    RegistryGet => "registry.get",
    RegistryWorker => "registry.worker",
    RegistryWorkers => "registry.workers",
    RegistryEvents => "registry.events",
    LogsQuery => "logs.query",
    PoolScale => "pool.scale",
    PoolScaled => "pool.scaled",
    PoolRestart => "pool.restart",
    PoolRestarting => "pool.restarting",
    PoolStatus => "pool.status",
    PoolState => "pool.state",
    LogsRecords => "logs.records",
}

impl SchemaName {
    /// The schema's `$id`.
    pub fn uri(self) -> String {
        format!("{BASE_URI}{}.schema.json", self.file_stem())
    }

    /// The schema document, parsed.
    pub fn document(self) -> Value {
        // The documents are compiled in and checked by the tests below.
        serde_json::from_str(self.source()).unwrap_or(Value::Null)
    }
}

/// Resolves references between the embedded schemas; never touches the network.
struct Embedded;

impl Retrieve for Embedded {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let wanted = uri.as_str();
        SchemaName::ALL
            .iter()
            .find(|name| name.uri() == wanted)
            .map(|name| name.document())
            .ok_or_else(|| format!("no embedded schema at {wanted}").into())
    }
}

static VALIDATORS: LazyLock<HashMap<SchemaName, Validator>> = LazyLock::new(|| {
    SchemaName::ALL
        .iter()
        .map(|&name| {
            let validator = jsonschema::options()
                .with_retriever(Embedded)
                .build(&name.document())
                .unwrap_or_else(|error| panic!("schema {} does not compile: {error}", name.uri()));
            (name, validator)
        })
        .collect()
});

/// Validates `value` against the schema, returning every violation.
///
/// Each violation's path is a JSON pointer, prefixed with `prefix` (for example `/payload`
/// when `value` is an envelope's payload).
pub fn validate(name: SchemaName, value: &Value, prefix: &str) -> Vec<Violation> {
    let Some(validator) = VALIDATORS.get(&name) else {
        return vec![Violation {
            path: prefix.to_owned(),
            message: format!("no schema named {}", name.file_stem()),
            keyword: None,
        }];
    };
    validator
        .iter_errors(value)
        .map(|error| {
            let mut path = format!("{prefix}{}", error.instance_path().as_str());
            // A missing property is reported at its parent; name the property itself.
            if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
                if let Some(name) = property.as_str() {
                    path.push('/');
                    path.push_str(&name.replace('~', "~0").replace('/', "~1"));
                }
            }
            Violation {
                path,
                message: error.to_string(),
                keyword: Some(error.kind().keyword().to_owned()),
            }
        })
        .collect()
}

/// Forces every schema to compile; call at start-up to fail fast.
pub fn compile_all() {
    LazyLock::force(&VALIDATORS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_and_has_its_id() {
        compile_all();
        for &name in SchemaName::ALL {
            let document = name.document();
            assert_eq!(
                document["$id"].as_str(),
                Some(name.uri().as_str()),
                "{} has the wrong $id",
                name.file_stem()
            );
        }
    }
}
