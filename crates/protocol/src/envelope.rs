//! The envelope every `v1.*` message travels in (DESIGN §3), and the one inbound decoding
//! path: size, JSON, envelope, payloadKey, schema, type. Each step fails with its own code.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ErrorCode, ErrorPayload, Violation};
use crate::payload::internal;
use crate::payload::pool::*;
use crate::payload::query::*;
use crate::payload::record::*;
use crate::payload::run::*;
use crate::payload::worker::*;
use crate::schema::{self, SchemaName};
use crate::subject::keys;

/// The default limit on an inbound message body: 256 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// A payload type: its directive key and the schema it must satisfy.
pub trait Payload: Serialize + DeserializeOwned {
    /// The `payloadKey` it travels under.
    const KEY: &'static str;
    /// The schema (file `schemas/v1/<name>.schema.json`) it must satisfy.
    const SCHEMA: SchemaName;
}

macro_rules! payload {
    ($($ty:ty => $key:expr, $schema:ident;)*) => {
        $(impl Payload for $ty {
            const KEY: &'static str = $key;
            const SCHEMA: SchemaName = SchemaName::$schema;
        })*
    };
}

payload! {
    Register => keys::REGISTER, Register;
    Registered => keys::REGISTERED, Registered;
    Ready => keys::READY, Ready;
    GivePulse => keys::GIVE_PULSE, GivePulse;
    CheckPulse => keys::CHECK_PULSE, CheckPulse;
    LogLine => keys::LOG, Log;
    RunSpec => keys::REQUEST_START, RequestStart;
    Accepted => keys::ACCEPTED, Accepted;
    Starting => keys::STARTING, Starting;
    Completed => keys::COMPLETED, Completed;
    Terminating => keys::TERMINATING, Terminating;
    Assignment => keys::REQUEST_START, WorkerRequestStart;
    ChildStarting => keys::STARTING, WorkerStarting;
    ChildCompleted => keys::COMPLETED, WorkerCompleted;
    Cancel => keys::CANCEL, WorkerCancel;
    ErrorPayload => keys::ERROR, Error;
    RunGet => keys::RUN_GET, RunGet;
    RunList => keys::RUN_LIST, RunList;
    RunCancel => keys::RUN_CANCEL, RunCancel;
    RunRecord => keys::RUN_RECORD, RunRecord;
    RunPage => keys::RUN_RECORDS, RunRecords;
    RunEvent => keys::RUN_EVENTS, RunEvents;
    RegistryList => keys::REGISTRY_LIST, RegistryList;
    RegistryGet => keys::REGISTRY_GET, RegistryGet;
    WorkerRecord => keys::REGISTRY_WORKER, RegistryWorker;
    WorkerList => keys::REGISTRY_WORKERS, RegistryWorkers;
    WorkerEvent => keys::REGISTRY_EVENTS, RegistryEvents;
    LogsQuery => keys::LOGS_QUERY, LogsQuery;
    LogPage => keys::LOGS_RECORDS, LogsRecords;
    PoolScale => keys::POOL_SCALE, PoolScale;
    PoolScaled => keys::POOL_SCALED, PoolScaled;
    PoolRestart => keys::POOL_RESTART, PoolRestart;
    PoolRestarting => keys::POOL_RESTARTING, PoolRestarting;
    PoolStatus => keys::POOL_STATUS, PoolStatus;
    PoolState => keys::POOL_STATE, PoolState;
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeRef<'a, T> {
    payload_key: &'a str,
    payload: &'a T,
}

/// A decoded envelope whose payload has not been interpreted yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawEnvelope {
    /// The directive key.
    pub payload_key: String,
    /// The payload, as JSON.
    pub payload: Value,
}

/// Wraps a payload in its envelope and serialises it.
pub fn encode<T: Payload>(payload: &T) -> Bytes {
    encode_as(T::KEY, payload)
}

/// Wraps any serialisable payload under an explicit key.
pub fn encode_as<T: Serialize>(key: &str, payload: &T) -> Bytes {
    let envelope = EnvelopeRef {
        payload_key: key,
        payload,
    };
    // Serialising these types cannot fail: they hold no maps with non-string keys.
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// Why an inbound message was rejected; each variant maps to one `v1.error` code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the limit.
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not UTF-8 JSON.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// Wrong `payloadKey`.
    #[error("payloadKey {found:?} does not match the subject's directive key {expected:?}")]
    KeyMismatch {
        /// What the subject says.
        expected: String,
        /// What the envelope says.
        found: String,
    },
    /// Breaks the envelope or payload schema.
    #[error("{}", describe_violations(.0))]
    Schema(Vec<Violation>),
}

fn describe_violations(violations: &[Violation]) -> String {
    let mut text = String::from("schema violation");
    for (index, violation) in violations.iter().take(5).enumerate() {
        text.push_str(if index == 0 { ": " } else { "; " });
        let path = if violation.path.is_empty() {
            "/"
        } else {
            &violation.path
        };
        text.push_str(&format!("{path}: {}", violation.message));
    }
    if violations.len() > 5 {
        text.push_str(&format!("; and {} more", violations.len() - 5));
    }
    text
}

impl DecodeError {
    /// The `v1.error` code for this rejection.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            DecodeError::InvalidJson(_) => ErrorCode::InvalidJson,
            DecodeError::KeyMismatch { .. } => ErrorCode::PayloadKeyMismatch,
            DecodeError::Schema(violations) => {
                // A routineID that is there but malformed has its own code; a missing one
                // is an ordinary schema violation.
                if violations.iter().any(|violation| {
                    violation.path == "/payload/routineID"
                        && violation.keyword.as_deref() != Some("required")
                }) {
                    ErrorCode::InvalidRoutineId
                } else {
                    ErrorCode::SchemaViolation
                }
            }
        }
    }

    /// The `v1.error` payload answering the message received on `subject`.
    pub fn to_error(&self, subject: &str) -> ErrorPayload {
        let details = match self {
            DecodeError::TooLarge { size, limit } => json!({"size": size, "limit": limit}),
            DecodeError::InvalidJson(reason) => json!({"reason": reason}),
            DecodeError::KeyMismatch { expected, found } => {
                json!({"expected": expected, "found": found})
            }
            DecodeError::Schema(violations) => json!({"violations": violations}),
        };
        ErrorPayload::new(self.code(), self.to_string(), subject).with_details(details)
    }
}

/// Parses and validates an envelope without interpreting the payload.
///
/// Checks the size limit, JSON syntax and the envelope schema, then that `payloadKey`
/// equals `expected_key`.
pub fn decode_envelope(
    body: &[u8],
    expected_key: &str,
    limit: usize,
) -> Result<RawEnvelope, DecodeError> {
    if body.len() > limit {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let violations = schema::validate(SchemaName::Envelope, &value, "");
    if !violations.is_empty() {
        return Err(DecodeError::Schema(violations));
    }
    let envelope: RawEnvelope = serde_json::from_value(value)
        .map_err(|e| DecodeError::Schema(vec![violation("", e.to_string())]))?;
    if envelope.payload_key != expected_key {
        return Err(DecodeError::KeyMismatch {
            expected: expected_key.to_owned(),
            found: envelope.payload_key,
        });
    }
    Ok(envelope)
}

/// Decodes an inbound message into `T`: size, JSON, envelope, `payloadKey == T::KEY`, schema.
pub fn decode<T: Payload>(body: &[u8], limit: usize) -> Result<T, DecodeError> {
    let envelope = decode_envelope(body, T::KEY, limit)?;
    decode_payload::<T>(envelope.payload)
}

/// Validates a payload against `T`'s schema and converts it.
pub fn decode_payload<T: Payload>(payload: Value) -> Result<T, DecodeError> {
    let violations = schema::validate(T::SCHEMA, &payload, "/payload");
    if !violations.is_empty() {
        return Err(DecodeError::Schema(violations));
    }
    serde_json::from_value(payload)
        .map_err(|e| DecodeError::Schema(vec![violation("/payload", e.to_string())]))
}

/// Decodes a query whose body may be empty: an empty body reads as an empty payload, so
/// that `nats req v1.run.list ''` works.
pub fn decode_query<T: Payload>(body: &[u8], limit: usize) -> Result<T, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return decode_payload::<T>(Value::Object(Default::default()));
    }
    decode::<T>(body, limit)
}

/// Decodes a reply from a service: either `T` or the `v1.error` it answered with.
pub fn decode_reply<T: Payload>(body: &[u8]) -> Result<Result<T, ErrorPayload>, DecodeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let envelope: RawEnvelope = serde_json::from_value(value)
        .map_err(|e| DecodeError::Schema(vec![violation("", e.to_string())]))?;
    if envelope.payload_key == keys::ERROR {
        let error = serde_json::from_value(envelope.payload)
            .map_err(|e| DecodeError::Schema(vec![violation("/payload", e.to_string())]))?;
        return Ok(Err(error));
    }
    if envelope.payload_key != T::KEY {
        return Err(DecodeError::KeyMismatch {
            expected: T::KEY.to_owned(),
            found: envelope.payload_key,
        });
    }
    let payload = serde_json::from_value(envelope.payload)
        .map_err(|e| DecodeError::Schema(vec![violation("/payload", e.to_string())]))?;
    Ok(Ok(payload))
}

fn violation(path: &str, message: String) -> Violation {
    Violation {
        path: path.to_owned(),
        message,
        keyword: None,
    }
}

/// Encodes an internal (non-`v1`) message: plain JSON, no envelope.
pub fn encode_internal<T: Serialize>(message: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(message).unwrap_or_default())
}

/// Decodes an internal (non-`v1`) message.
pub fn decode_internal<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::InvalidJson(e.to_string()))
}

/// Decodes the reply to an internal request.
pub fn decode_internal_reply(body: &[u8]) -> Result<internal::InternalReply, DecodeError> {
    decode_internal(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WorkerId;

    fn register_body() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "payloadKey": "v1.register",
            "payload": {"workerID": "w1", "routines": ["images.resize"], "labels": {"gpu": "true"}}
        }))
        .unwrap()
    }

    #[test]
    fn decodes_a_valid_register() {
        let register: Register = decode(&register_body(), DEFAULT_MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(register.worker_id, WorkerId::parse("w1").unwrap());
        assert_eq!(register.capacity, 1);
    }

    #[test]
    fn each_failure_has_its_code() {
        let too_large = decode::<Register>(&register_body(), 10).unwrap_err();
        assert_eq!(too_large.code(), ErrorCode::PayloadTooLarge);

        let not_json = decode::<Register>(b"{nope", 1024).unwrap_err();
        assert_eq!(not_json.code(), ErrorCode::InvalidJson);

        let not_utf8 = decode::<Register>(&[0xff, 0xfe], 1024).unwrap_err();
        assert_eq!(not_utf8.code(), ErrorCode::InvalidJson);

        let body = json!({"payloadKey": "v1.ready", "payload": {"incarnation": 1}});
        let mismatch = decode::<Register>(body.to_string().as_bytes(), 1024).unwrap_err();
        assert_eq!(mismatch.code(), ErrorCode::PayloadKeyMismatch);

        let body =
            json!({"payloadKey": "v1.register", "payload": {"workerID": "w1", "routines": "x"}});
        let schema = decode::<Register>(body.to_string().as_bytes(), 1024).unwrap_err();
        assert_eq!(schema.code(), ErrorCode::SchemaViolation);
        let error = schema.to_error("v1.register.w1");
        let violations = error.details["violations"].as_array().unwrap();
        assert!(
            violations.iter().any(|v| v["path"] == "/payload/routines"),
            "{violations:?}"
        );

        let body = json!({"payload": {}});
        let no_key = decode::<Register>(body.to_string().as_bytes(), 1024).unwrap_err();
        assert_eq!(no_key.code(), ErrorCode::SchemaViolation);
    }

    #[test]
    fn reports_every_violation() {
        let body = json!({"payloadKey": "v1.register", "payload": {"workerID": "a.b", "routines": [1], "capacity": 0}});
        let error = decode::<Register>(body.to_string().as_bytes(), 4096).unwrap_err();
        let DecodeError::Schema(violations) = error else {
            panic!("expected a schema violation");
        };
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        for expected in [
            "/payload/workerID",
            "/payload/routines/0",
            "/payload/capacity",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn bad_routine_id_has_its_own_code() {
        let body = json!({"payloadKey": "v1.routine.request_start", "payload": {"routineID": "bad routine"}});
        let error = decode::<RunSpec>(body.to_string().as_bytes(), 4096).unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidRoutineId);
    }

    #[test]
    fn replies_decode_to_payload_or_error() {
        let ok = encode(&Ready { incarnation: 3 });
        assert_eq!(
            decode_reply::<Ready>(&ok).unwrap(),
            Ok(Ready { incarnation: 3 })
        );
        let err = encode(&ErrorPayload::new(
            ErrorCode::UnknownRun,
            "no such run",
            "v1.run.get",
        ));
        let decoded = decode_reply::<Ready>(&err).unwrap().unwrap_err();
        assert_eq!(decoded.code, ErrorCode::UnknownRun);
    }
}
