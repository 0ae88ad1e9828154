//! Drover's wire contract (DESIGN §2–6): every directive type, subject builder and parser,
//! identifier, envelope, schema check and error code. Services, SDKs and the CLI share it,
//! so that what goes on the wire is defined once.

pub mod envelope;
pub mod error;
pub mod grants;
pub mod ids;
pub mod payload;
pub mod schema;
pub mod subject;
pub mod timestamp;
pub mod trace;

pub use envelope::{decode, decode_reply, encode, DecodeError, Payload, DEFAULT_MAX_PAYLOAD_BYTES};
pub use error::{ErrorCode, ErrorPayload, Violation};
pub use ids::{
    Attempt, GroupName, Incarnation, InvalidId, LocalRunId, PoolId, RoutineId, RunId, WorkerId,
};
pub use payload::internal::*;
pub use payload::pool::*;
pub use payload::query::*;
pub use payload::record::*;
pub use payload::run::*;
pub use payload::worker::*;
pub use timestamp::Timestamp;
