//! Pickup strategies: how the scheduler chooses among the workers that could take a run
//! (`pickup_strategy`, and per routine `pickup_strategies`). Parsed once, at start-up, into
//! the values the scheduler's dispatcher resolves each routine against.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use drover_protocol::RoutineId;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How the scheduler chooses a worker among those that match a run and have a free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PickupStrategy {
    /// The worker with the smallest share of its capacity in use; among equals the one that
    /// is owed a run most (stride scheduling), so that equal workers share evenly and
    /// unequal ones in proportion to capacity.
    #[default]
    LeastLoaded,
    /// The next worker in workerID order after the one chosen last for the routine,
    /// whatever the load.
    RoundRobin,
    /// The first worker in workerID order: packs runs onto few workers.
    FirstFit,
}

impl PickupStrategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [PickupStrategy; 3] = [Self::LeastLoaded, Self::RoundRobin, Self::FirstFit];

    /// The name configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastLoaded => "least-loaded",
            Self::RoundRobin => "round-robin",
            Self::FirstFit => "first-fit",
        }
    }
}

impl fmt::Display for PickupStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PickupStrategy {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown pickup strategy {name:?}; expected least-loaded, round-robin or first-fit"
                )
            })
    }
}

impl Serialize for PickupStrategy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PickupStrategy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.trim().parse().map_err(de::Error::custom)
    }
}

/// Pickup strategies for some routines, overriding `pickup_strategy`: for exact routineIDs,
/// and for every routineID under a prefix, written `prefix.*`. An exact routineID beats a
/// prefix, and a longer prefix beats a shorter one.
///
/// Written as `routine=strategy` pairs separated by commas
/// (`reports.nightly=first-fit,images.*=round-robin`), or in a config file also as a table
/// of the same pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PickupStrategies {
    exact: BTreeMap<RoutineId, PickupStrategy>,
    /// Each prefix with its final dot (`images.`), the longest first.
    prefixes: Vec<(String, PickupStrategy)>,
}

impl PickupStrategies {
    /// Parses `routine=strategy` pairs separated by commas; blank pairs are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let pairs = text
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty());
        let mut parsed = Vec::new();
        for pair in pairs {
            let Some((pattern, strategy)) = pair.split_once('=') else {
                return Err(format!("{pair:?} is not a routine=strategy pair"));
            };
            parsed.push((pattern.trim(), strategy.trim()));
        }
        Self::from_pairs(parsed)
    }

    fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut strategies = Self::default();
        for (pattern, strategy) in pairs {
            let strategy: PickupStrategy = strategy
                .parse()
                .map_err(|error| format!("for {pattern:?}: {error}"))?;
            let twice = || format!("{pattern:?} is named twice");
            if let Some(prefix) = pattern.strip_suffix(".*") {
                RoutineId::parse(prefix).map_err(|error| {
                    format!("{pattern:?} is not a routineID or a prefix.*: {error}")
                })?;
                let prefix = format!("{prefix}.");
                if strategies
                    .prefixes
                    .iter()
                    .any(|(known, _)| *known == prefix)
                {
                    return Err(twice());
                }
                strategies.prefixes.push((prefix, strategy));
            } else {
                let routine = RoutineId::parse(pattern).map_err(|error| {
                    format!("{pattern:?} is not a routineID or a prefix.*: {error}")
                })?;
                if strategies.exact.insert(routine, strategy).is_some() {
                    return Err(twice());
                }
            }
        }
        // Longest first, so that the first prefix that matches is the most specific; ties
        // in length cannot both match one routineID.
        strategies
            .prefixes
            .sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Ok(strategies)
    }

    /// The strategy set for `routine`, if any: its exact entry, else the longest prefix
    /// that it is under.
    pub fn get(&self, routine: &RoutineId) -> Option<PickupStrategy> {
        if let Some(strategy) = self.exact.get(routine) {
            return Some(*strategy);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| routine.as_str().starts_with(prefix.as_str()))
            .map(|(_, strategy)| *strategy)
    }

    /// True when no routine has a strategy of its own.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

impl fmt::Display for PickupStrategies {
    /// The pairs form: exact routineIDs in order, then prefixes, longest first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = self
            .exact
            .iter()
            .map(|(routine, strategy)| (routine.as_str().to_owned(), *strategy));
        let prefixes = self
            .prefixes
            .iter()
            .map(|(prefix, strategy)| (format!("{prefix}*"), *strategy));
        for (index, (pattern, strategy)) in exact.chain(prefixes).enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{pattern}={strategy}")?;
        }
        Ok(())
    }
}

impl FromStr for PickupStrategies {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for PickupStrategies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PickupStrategies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PairsVisitor)
    }
}

/// Reads the pairs from a string or from a table.
struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = PickupStrategies;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("routine=strategy pairs separated by commas, or a table of them")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        PickupStrategies::parse(text).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        while let Some((pattern, strategy)) = map.next_entry::<String, String>()? {
            pairs.push((pattern, strategy));
        }
        PickupStrategies::from_pairs(
            pairs
                .iter()
                .map(|(pattern, strategy)| (pattern.trim(), strategy.trim())),
        )
        .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routine(id: &str) -> RoutineId {
        RoutineId::parse(id).unwrap()
    }

    #[test]
    fn strategies_by_name() {
        for strategy in PickupStrategy::ALL {
            assert_eq!(strategy.as_str().parse::<PickupStrategy>(), Ok(strategy));
        }
        assert_eq!(PickupStrategy::default(), PickupStrategy::LeastLoaded);
        let error = "fastest".parse::<PickupStrategy>().unwrap_err();
        assert!(
            error.contains("\"fastest\"") && error.contains("first-fit"),
            "{error}"
        );
    }

    #[test]
    fn an_exact_routine_beats_a_prefix_and_a_longer_prefix_a_shorter_one() {
        let strategies = PickupStrategies::parse(
            "images.*=round-robin, images.thumbs.*=first-fit ,images.thumbs.small=least-loaded,\
             reports.nightly=first-fit",
        )
        .unwrap();
        let of = |id: &str| strategies.get(&routine(id));
        assert_eq!(of("images.resize"), Some(PickupStrategy::RoundRobin));
        assert_eq!(of("images.thumbs.large"), Some(PickupStrategy::FirstFit));
        assert_eq!(of("images.thumbs.x.y"), Some(PickupStrategy::FirstFit));
        assert_eq!(of("images.thumbs.small"), Some(PickupStrategy::LeastLoaded));
        assert_eq!(of("reports.nightly"), Some(PickupStrategy::FirstFit));
        // A prefix covers the routines under it, not the prefix itself nor lookalikes.
        assert_eq!(of("images"), None);
        assert_eq!(of("images2.resize"), None);
        assert_eq!(of("images.thumbs"), Some(PickupStrategy::RoundRobin));
        assert_eq!(of("reports.nightly.x"), None);
        assert_eq!(of("reports"), None);
    }

    #[test]
    fn the_order_of_pairs_does_not_matter() {
        let one = PickupStrategies::parse("a.*=first-fit,a.b.*=round-robin").unwrap();
        let other = PickupStrategies::parse("a.b.*=round-robin,a.*=first-fit").unwrap();
        assert_eq!(one, other);
        assert_eq!(one.get(&routine("a.b.c")), Some(PickupStrategy::RoundRobin));
    }

    #[test]
    fn the_pairs_form_round_trips() {
        let text = "b=first-fit,reports.nightly=first-fit,images.thumbs.*=least-loaded,images.*=round-robin";
        let strategies = PickupStrategies::parse(text).unwrap();
        assert_eq!(strategies.to_string(), text);
        assert_eq!(
            PickupStrategies::parse(&strategies.to_string()),
            Ok(strategies)
        );
        assert!(PickupStrategies::parse("").unwrap().is_empty());
        assert!(PickupStrategies::parse(" , ").unwrap().is_empty());
        assert_eq!(PickupStrategies::default().to_string(), "");
    }

    #[test]
    fn malformed_pairs_are_errors_that_say_what_is_wrong() {
        let cases = [
            ("reports.nightly", "not a routine=strategy pair"),
            (
                "reports.nightly=fastest",
                "unknown pickup strategy \"fastest\"",
            ),
            ("=first-fit", "not a routineID"),
            ("a..b=first-fit", "not a routineID"),
            ("a b=first-fit", "not a routineID"),
            ("*=first-fit", "not a routineID"),
            (".*=first-fit", "not a routineID"),
            ("a.*.b=first-fit", "not a routineID"),
            ("a*=first-fit", "not a routineID"),
            ("a=first-fit,a=first-fit", "\"a\" is named twice"),
            ("a.*=first-fit,a.*=round-robin", "\"a.*\" is named twice"),
        ];
        for (text, expected) in cases {
            let error = PickupStrategies::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
