//! Wall-clock timestamps as they appear on the wire: RFC 3339 in UTC with milliseconds.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time with millisecond precision, written as `2026-11-22T13:17:00.123Z`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        Self(millis)
    }

    /// A timestamp from milliseconds since the Unix epoch.
    pub fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This timestamp moved forward by `ms` milliseconds.
    pub fn plus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms.min(i64::MAX as u64) as i64))
    }

    /// How long after `earlier` this timestamp is (zero when it is not after it).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// How long from now until this timestamp (zero when it has passed).
    pub fn remaining(self) -> Duration {
        self.since(Timestamp::now())
    }

    /// The same instant as a `SystemTime` (the epoch for one before it).
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64)
    }

    /// Parses an RFC 3339 timestamp with any offset.
    pub fn parse(text: &str) -> Result<Self, time::error::Parse> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339)?;
        Ok(Self((parsed.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = self.to_datetime();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .examples(["2026-11-22T13:17:00.123Z"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_millis() {
        let ts = Timestamp::from_millis(1_795_000_000_123);
        let text = ts.to_string();
        assert!(text.ends_with(".123Z"), "{text}");
        assert_eq!(Timestamp::parse(&text).unwrap(), ts);
    }

    #[test]
    fn parses_offsets() {
        let a = Timestamp::parse("2026-01-01T01:00:00+01:00").unwrap();
        let b = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn arithmetic() {
        let a = Timestamp::from_millis(1000);
        assert_eq!(a.plus_millis(500).since(a), Duration::from_millis(500));
        assert_eq!(a.since(a.plus_millis(500)), Duration::ZERO);
    }
}
