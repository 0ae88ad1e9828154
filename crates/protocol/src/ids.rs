//! Identifier newtypes that validate themselves (DESIGN §2).
//!
//! Every identifier that ends up in a NATS subject is checked here once, so that
//! the rest of the code can put it in a subject without thinking about escaping.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidId {
    /// Which identifier was being parsed, e.g. `workerID`.
    pub kind: &'static str,
    /// The rejected value (truncated to 80 characters).
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

impl InvalidId {
    fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        let value: String = value.chars().take(80).collect();
        Self {
            kind,
            value,
            reason,
        }
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

macro_rules! string_id {
    (
        $(#[$meta:meta])* $name:ident, $kind:literal, $check:path,
        pattern = $pattern:literal, max = $max:expr
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        /// A string that `parse` takes: the same rules, as a schema.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .min_length(Some(1))
                    .max_length(Some($max))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl $name {
            /// Parses and validates the identifier.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                $check(&value).map_err(|reason| InvalidId::new($kind, &value, reason))?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the identifier, returning the inner string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::parse(value).map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

fn check_token(value: &str, max: usize) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > max {
        return Err("is too long");
    }
    if !value.chars().all(is_token_char) {
        return Err("may only contain letters, digits, '_' and '-'");
    }
    Ok(())
}

fn check_worker_id(value: &str) -> Result<(), &'static str> {
    check_token(value, WorkerId::MAX_LEN)
}

fn check_run_id(value: &str) -> Result<(), &'static str> {
    check_token(value, RunId::MAX_LEN)
}

fn check_routine_id(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > RoutineId::MAX_LEN {
        return Err("is longer than 128 characters");
    }
    for token in value.split('.') {
        if token.is_empty() {
            return Err("has an empty dot-separated part");
        }
        if !token.chars().all(is_token_char) {
            return Err("parts may only contain letters, digits, '_' and '-'");
        }
    }
    Ok(())
}

fn check_local_run_id(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.chars().count() > LocalRunId::MAX_LEN {
        return Err("is longer than 256 characters");
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

string_id!(
    /// A worker's self-chosen identifier: `[A-Za-z0-9_-]{1,64}`, one subject token.
    WorkerId,
    "workerID",
    check_worker_id,
    pattern = "^[A-Za-z0-9_-]+$",
    max = WorkerId::MAX_LEN
);

string_id!(
    /// A routine identifier: dot-separated `[A-Za-z0-9_-]+` parts, at most 128 characters.
    RoutineId,
    "routineID",
    check_routine_id,
    pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
    max = RoutineId::MAX_LEN
);

string_id!(
    /// A run identifier. Generated runIDs are UUIDv7 strings; any subject-safe token of up
    /// to 64 characters is accepted when parsing, so that an unknown ID reads as unknown
    /// rather than malformed.
    RunId,
    "runID",
    check_run_id,
    pattern = "^[A-Za-z0-9_-]+$",
    max = RunId::MAX_LEN
);

string_id!(
    /// A caller-chosen correlation ID for a run request: 1 to 256 characters, no control
    /// characters. It never appears in a subject.
    LocalRunId,
    "localRunID",
    check_local_run_id,
    pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$",
    max = LocalRunId::MAX_LEN
);

string_id!(
    /// A pool's identifier (DESIGN §9): the workerID rules, `[A-Za-z0-9_-]{1,64}`.
    PoolId,
    "poolID",
    check_worker_id,
    pattern = "^[A-Za-z0-9_-]+$",
    max = WorkerId::MAX_LEN
);

string_id!(
    /// A group of a pool (DESIGN §9): the workerID rules, `[A-Za-z0-9_-]{1,64}`.
    GroupName,
    "group",
    check_worker_id,
    pattern = "^[A-Za-z0-9_-]+$",
    max = WorkerId::MAX_LEN
);

impl WorkerId {
    /// The longest workerID allowed.
    pub const MAX_LEN: usize = 64;
}

impl RoutineId {
    /// The longest routineID allowed.
    pub const MAX_LEN: usize = 128;

    /// A name for this routine's durable consumer.
    ///
    /// Consumer names may not contain dots, so dots become `_`, and a short hash of the
    /// exact routineID keeps `a.b` and `a_b` apart.
    pub fn consumer_name(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.0.as_bytes());
        let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let readable: String = self
            .0
            .chars()
            .take(64)
            .map(|c| if c == '.' { '_' } else { c })
            .collect();
        format!("routine_{readable}_{hash}")
    }
}

impl RunId {
    /// The longest runID accepted.
    pub const MAX_LEN: usize = 64;

    /// A new, unique, time-sortable runID (UUIDv7).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string())
    }
}

impl LocalRunId {
    /// The longest localRunID accepted, in characters.
    pub const MAX_LEN: usize = 256;
}

/// The registration counter of a workerID; it grows with every registration.
pub type Incarnation = u64;

/// The assignment counter of a run; it grows with every assignment.
pub type Attempt = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_rules() {
        assert!(WorkerId::parse("resizer-1_A").is_ok());
        assert!(WorkerId::parse("a".repeat(64)).is_ok());
        assert!(WorkerId::parse("a".repeat(65)).is_err());
        assert!(WorkerId::parse("").is_err());
        for bad in ["a.b", "a b", "a*", "a>", "ü"] {
            assert!(WorkerId::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn routine_id_rules() {
        assert!(RoutineId::parse("images.resize").is_ok());
        assert!(RoutineId::parse("a").is_ok());
        assert!(RoutineId::parse("a".repeat(128)).is_ok());
        assert!(RoutineId::parse("a".repeat(129)).is_err());
        for bad in ["", ".a", "a.", "a..b", "a b", "a.*", "a.>"] {
            assert!(RoutineId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn run_ids_sort_by_time() {
        let a = RunId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RunId::generate();
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(a.as_str().len(), 36);
    }

    #[test]
    fn consumer_names_do_not_collide() {
        let a = RoutineId::parse("a.b").unwrap().consumer_name();
        let b = RoutineId::parse("a_b").unwrap().consumer_name();
        assert_ne!(a, b);
        assert!(!a.contains('.'));
    }

    #[test]
    fn deserialize_validates() {
        let ok: Result<WorkerId, _> = serde_json::from_str("\"w-1\"");
        assert!(ok.is_ok());
        let bad: Result<WorkerId, _> = serde_json::from_str("\"w.1\"");
        assert!(bad.is_err());
    }
}
