//! Ties the Rust payload types to the JSON Schemas in `schemas/v1/`, in both directions.
//!
//! - `examples`: every example in `schemas/v1/examples/` decodes and round-trips, or fails
//!   with the code and at the path its `.expect.json` names.
//! - `contract`: every type's values validate, and every schema lists exactly the fields,
//!   the required fields, the nullability and the enum values of its Rust type.

mod contract;
mod examples;
mod samples;

use std::fmt::Debug;

use drover_protocol::envelope::{self, DecodeError, Payload, DEFAULT_MAX_PAYLOAD_BYTES};
use drover_protocol::schema::{self, SchemaName};
use drover_protocol::*;
use serde_json::Value;

use samples::Sample;

/// One payload type, reached through its schema.
pub struct Kind {
    /// The Rust type's name, for messages.
    pub name: &'static str,
    /// `T::SCHEMA`.
    pub schema: SchemaName,
    /// Decodes a whole envelope and checks that it round-trips.
    pub round_trip: fn(&[u8]) -> Result<(), String>,
    /// Decodes a whole envelope, returning why it was rejected.
    pub decode_error: fn(&[u8]) -> Option<DecodeError>,
    /// `T::full()` as JSON.
    pub full: fn() -> Value,
    /// `T::minimal()` as JSON.
    pub minimal: fn() -> Value,
    /// `T::alternatives()` as JSON.
    pub alternatives: fn() -> Vec<Value>,
    /// Whether serde turns this JSON into a `T`.
    pub accepts: fn(&Value) -> bool,
}

impl Kind {
    /// The schema's file stem, which is also the examples' directory name.
    pub fn stem(&self) -> &'static str {
        self.schema.file_stem()
    }

    /// `full` followed by the `alternatives`: the values that, between them, write every field.
    pub fn fulls(&self) -> Vec<Value> {
        let mut all = vec![(self.full)()];
        all.extend((self.alternatives)());
        all
    }
}

fn kind<T: Sample + PartialEq + Debug>() -> Kind {
    Kind {
        name: std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or_default(),
        schema: T::SCHEMA,
        round_trip: round_trip::<T>,
        decode_error: |body| envelope::decode::<T>(body, DEFAULT_MAX_PAYLOAD_BYTES).err(),
        full: || to_json(&T::full()),
        minimal: || to_json(&T::minimal()),
        alternatives: || T::alternatives().iter().map(to_json).collect(),
        accepts: |value| serde_json::from_value::<T>(value.clone()).is_ok(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("payload types serialise")
}

/// Every payload type; the `Payload` impls give each its key and schema.
pub fn kinds() -> Vec<Kind> {
    vec![
        kind::<Register>(),
        kind::<Registered>(),
        kind::<Ready>(),
        kind::<GivePulse>(),
        kind::<CheckPulse>(),
        kind::<LogLine>(),
        kind::<RunSpec>(),
        kind::<Accepted>(),
        kind::<Starting>(),
        kind::<Completed>(),
        kind::<Terminating>(),
        kind::<Assignment>(),
        kind::<ChildStarting>(),
        kind::<ChildCompleted>(),
        kind::<Cancel>(),
        kind::<ErrorPayload>(),
        kind::<RunGet>(),
        kind::<RunList>(),
        kind::<RunCancel>(),
        kind::<RunRecord>(),
        kind::<RunPage>(),
        kind::<RunEvent>(),
        kind::<RegistryList>(),
        kind::<RegistryGet>(),
        kind::<WorkerRecord>(),
        kind::<WorkerList>(),
        kind::<WorkerEvent>(),
        kind::<LogsQuery>(),
        kind::<LogPage>(),
        kind::<PoolScale>(),
        kind::<PoolScaled>(),
        kind::<PoolRestart>(),
        kind::<PoolRestarting>(),
        kind::<PoolStatus>(),
        kind::<PoolState>(),
    ]
}

/// Decode, re-encode, validate the re-encoded envelope, decode again and compare.
fn round_trip<T: Payload + PartialEq + Debug>(body: &[u8]) -> Result<(), String> {
    let decoded: T = envelope::decode(body, DEFAULT_MAX_PAYLOAD_BYTES)
        .map_err(|error| format!("does not decode: {error}"))?;
    let encoded = envelope::encode(&decoded);
    let value: Value = serde_json::from_slice(&encoded).map_err(|error| error.to_string())?;
    let mut violations = schema::validate(SchemaName::Envelope, &value, "");
    violations.extend(schema::validate(T::SCHEMA, &value["payload"], "/payload"));
    if !violations.is_empty() {
        return Err(format!(
            "re-encoded as {value}, which breaks the schema: {violations:?}"
        ));
    }
    let again: T = envelope::decode(&encoded, DEFAULT_MAX_PAYLOAD_BYTES)
        .map_err(|error| format!("re-encoded as {value}, which does not decode: {error}"))?;
    if again != decoded {
        return Err(format!(
            "decodes to {decoded:?} but its re-encoding to {again:?}"
        ));
    }
    if to_json(&again) != value["payload"] {
        return Err(format!("re-encoding {value} is not stable"));
    }
    Ok(())
}

#[test]
fn every_payload_schema_has_one_type() {
    let kinds = kinds();
    for &name in SchemaName::ALL {
        let types: Vec<&str> = kinds
            .iter()
            .filter(|kind| kind.schema == name)
            .map(|kind| kind.name)
            .collect();
        let expected = usize::from(!matches!(name, SchemaName::Defs | SchemaName::Envelope));
        assert_eq!(
            types.len(),
            expected,
            "schema {} is used by {types:?}",
            name.file_stem()
        );
    }
}

#[test]
fn a_run_event_borrowing_its_record_encodes_as_the_owned_one() {
    for event in [RunEvent::full(), RunEvent::minimal()] {
        let borrowed = RunEventRef {
            run_id: &event.run_id,
            status: event.status,
            previous_status: event.previous_status,
            attempt: event.attempt,
            at: event.at,
            run: &event.run,
        };
        assert_eq!(
            envelope::encode_as(RunEvent::KEY, &borrowed),
            envelope::encode(&event)
        );
    }
}
