//! Rust types against schemas, in both directions: values of every type validate, and every
//! schema lists exactly the type's fields, required fields, nullable fields and enum values.

use std::collections::BTreeSet;

use drover_protocol::schema::{self, SchemaName};
use drover_protocol::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{kinds, Kind};

const DEFS_REF: &str = "defs.schema.json#/$defs/";

fn defs() -> Value {
    SchemaName::Defs.document()
}

/// Follows `$ref`s into the shared definitions and unwraps `anyOf [T, null]`, down to the
/// schema that describes the value itself.
fn resolve<'a>(defs: &'a Value, mut schema: &'a Value) -> &'a Value {
    loop {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference
                .strip_prefix(DEFS_REF)
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            schema = &defs["$defs"][name];
            assert!(!schema.is_null(), "$ref to missing definition {name}");
        } else if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            let not_null: Vec<&Value> = branches
                .iter()
                .filter(|branch| **branch != json!({"type": "null"}))
                .collect();
            assert_eq!(not_null.len(), 1, "anyOf other than [T, null]: {schema}");
            schema = not_null[0];
        } else {
            return schema;
        }
    }
}

fn keys(object: &serde_json::Map<String, Value>) -> BTreeSet<&str> {
    object.keys().map(String::as_str).collect()
}

/// Compares the keys of every object in `value` with the `properties` of its schema, at every
/// level. With `exact`, both sets must be equal (the value must be fully populated);
/// otherwise the value's keys must be among the properties.
fn compare_properties(
    defs: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    exact: bool,
    problems: &mut Vec<String>,
) {
    let schema = resolve(defs, schema);
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        let Some(object) = value.as_object() else {
            problems.push(format!("{at}: schema has properties, Rust wrote {value}"));
            return;
        };
        let in_schema = keys(properties);
        let in_rust = keys(object);
        let only_rust: Vec<_> = in_rust.difference(&in_schema).collect();
        if !only_rust.is_empty() {
            problems.push(format!(
                "{at}: Rust fields {only_rust:?} missing from the schema"
            ));
        }
        let only_schema: Vec<_> = in_schema.difference(&in_rust).collect();
        if exact && !only_schema.is_empty() {
            problems.push(format!(
                "{at}: schema properties {only_schema:?} not written by Rust (or the sample is not full)"
            ));
        }
        for (key, item) in object {
            if let Some(property) = properties.get(key) {
                compare_properties(
                    defs,
                    property,
                    item,
                    &format!("{at}/{key}"),
                    exact,
                    problems,
                );
            }
        }
    } else if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            compare_properties(defs, items, item, &format!("{at}/{index}"), exact, problems);
        }
    }
}

fn violations(kind: &Kind, value: &Value) -> Vec<Violation> {
    schema::validate(kind.schema, value, "")
}

#[test]
fn rust_values_validate() {
    let mut problems = Vec::new();
    for kind in kinds() {
        let alternatives = (kind.alternatives)()
            .into_iter()
            .map(|value| ("alternative", value));
        let samples = [("full", (kind.full)()), ("minimal", (kind.minimal)())];
        for (which, value) in samples.into_iter().chain(alternatives) {
            let found = violations(&kind, &value);
            if !found.is_empty() {
                problems.push(format!("{} {which} {value}: {found:?}", kind.name));
            }
            if !(kind.accepts)(&value) {
                problems.push(format!("{} {which} does not deserialise again", kind.name));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Adds to `into` every member of `from` it lacks, at every level of nesting: the keys that
/// a type's samples write between them.
fn merge(into: &mut Value, from: &Value) {
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        for (key, item) in from {
            match into.get_mut(key) {
                Some(existing) => merge(existing, item),
                None => {
                    into.insert(key.clone(), item.clone());
                }
            }
        }
    }
}

/// `full` with the members of the `alternatives` merged in.
fn every_field(kind: &Kind) -> Value {
    let mut every_field = Value::Object(Default::default());
    for full in kind.fulls() {
        merge(&mut every_field, &full);
    }
    every_field
}

#[test]
fn schemas_list_exactly_the_rust_fields() {
    let defs = defs();
    let mut problems = Vec::new();
    for kind in kinds() {
        let document = kind.schema.document();
        let at = kind.stem();
        // Exclusive fields (`oneOf`) are written by different samples; their union must
        // name every property. The union is compared by its keys only: it need not validate.
        compare_properties(
            &defs,
            &document,
            &every_field(&kind),
            at,
            true,
            &mut problems,
        );
        compare_properties(
            &defs,
            &document,
            &(kind.minimal)(),
            at,
            false,
            &mut problems,
        );
    }
    // A shared definition with no payload field of its own type.
    let violation = serde_json::to_value(Violation {
        path: "/payload/routines".to_owned(),
        message: "\"x\" is not of type \"array\"".to_owned(),
        keyword: Some("type".to_owned()),
    })
    .expect("serialises");
    let schema = json!({"$ref": format!("{DEFS_REF}violation")});
    compare_properties(
        &defs,
        &schema,
        &violation,
        "defs/violation",
        true,
        &mut problems,
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn required_lists_match_the_rust_fields() {
    let defs = defs();
    let mut problems = Vec::new();
    for kind in kinds() {
        let document = kind.schema.document();
        let schema = resolve(&defs, &document);
        let in_schema: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|required| required.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // A field is required in Rust when every sample has it and the type does not
        // deserialise any of them without it. (A field of a `oneOf` branch is absent from
        // the samples of the other branches, so it is not required, as in the schema.)
        let fulls = kind.fulls();
        let in_rust: BTreeSet<&str> = fulls
            .iter()
            .flat_map(|full| full.as_object().expect("payloads are objects").keys())
            .map(String::as_str)
            .filter(|key| {
                fulls.iter().all(|full| {
                    let mut without = full.clone();
                    let object = without.as_object_mut().expect("payloads are objects");
                    object.remove(*key).is_some() && !(kind.accepts)(&without)
                })
            })
            .collect();
        if in_schema != in_rust {
            problems.push(format!(
                "{}: schema requires {in_schema:?}, Rust requires {in_rust:?}",
                kind.stem()
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Where a mutation applies: a member of an object, or an element of an array.
enum Place {
    Member { parent: String, key: String },
    Element { pointer: String },
}

fn places(value: &Value, pointer: &str, found: &mut Vec<Place>) {
    match value {
        Value::Object(object) => {
            for (key, item) in object {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                let child = format!("{pointer}/{escaped}");
                found.push(Place::Member {
                    parent: pointer.to_owned(),
                    key: key.clone(),
                });
                places(item, &child, found);
            }
        }
        Value::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                let child = format!("{pointer}/{index}");
                found.push(Place::Element {
                    pointer: child.clone(),
                });
                places(item, &child, found);
            }
        }
        _ => {}
    }
}

/// Every way to drop one member or null one value, anywhere in `value`.
fn mutations(value: &Value) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    places(value, "", &mut found);
    let mut mutated = Vec::new();
    for place in found {
        match place {
            Place::Member { parent, key } => {
                let mut without = value.clone();
                if let Some(object) = without.pointer_mut(&parent).and_then(Value::as_object_mut) {
                    object.remove(&key);
                }
                mutated.push((format!("without {parent}/{key}"), without));
                let mut nulled = value.clone();
                if let Some(object) = nulled.pointer_mut(&parent).and_then(Value::as_object_mut) {
                    object.insert(key.clone(), Value::Null);
                }
                mutated.push((format!("{parent}/{key} = null"), nulled));
            }
            Place::Element { pointer } => {
                let mut nulled = value.clone();
                if let Some(slot) = nulled.pointer_mut(&pointer) {
                    *slot = Value::Null;
                }
                mutated.push((format!("{pointer} = null"), nulled));
            }
        }
    }
    mutated
}

/// Dropping a field, or sending `null`, is accepted by the schema exactly when serde accepts
/// it, at every level of nesting. This pins down `required` and the nullability of every
/// property: optional (`Option`) fields take `null`, defaulted ones do not.
#[test]
fn absence_and_null_agree_with_rust() {
    let mut problems = Vec::new();
    for kind in kinds() {
        for (change, value) in kind.fulls().iter().flat_map(mutations) {
            let schema_accepts = violations(&kind, &value).is_empty();
            let rust_accepts = (kind.accepts)(&value);
            if schema_accepts != rust_accepts {
                problems.push(format!(
                    "{} with {change}: schema {}, Rust {}",
                    kind.stem(),
                    verdict(schema_accepts),
                    verdict(rust_accepts)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// For a type with exclusive fields (`oneOf`), every way to give, null or leave out each of
/// them is accepted by the schema exactly when serde accepts it: for `v1.pool.scale`, both
/// `target` and `delta` are refused by both, and so is neither.
#[test]
fn exclusive_fields_agree_with_rust() {
    let mut problems = Vec::new();
    let mut kinds_with_alternatives = 0;
    for kind in kinds() {
        let fulls = kind.fulls();
        if fulls.len() < 2 {
            continue;
        }
        kinds_with_alternatives += 1;
        let every_field = every_field(&kind)
            .as_object()
            .expect("payloads are objects")
            .clone();
        // Fields that some sample leaves out: the exclusive ones.
        let exclusive: Vec<&String> = every_field
            .keys()
            .filter(|key| fulls.iter().any(|full| full.get(key.as_str()).is_none()))
            .collect();
        assert!(
            !exclusive.is_empty(),
            "{}: alternatives that leave no field out",
            kind.stem()
        );
        let choices = 3_usize.pow(u32::try_from(exclusive.len()).expect("a few fields"));
        for choice in 0..choices {
            let mut value = every_field.clone();
            let mut change = Vec::new();
            let mut rest = choice;
            for key in &exclusive {
                match rest % 3 {
                    0 => {
                        value.remove(key.as_str());
                        change.push(format!("no {key}"));
                    }
                    1 => {
                        value.insert((*key).clone(), Value::Null);
                        change.push(format!("{key} = null"));
                    }
                    _ => change.push(format!("{key} = {}", every_field[key.as_str()])),
                }
                rest /= 3;
            }
            let value = Value::Object(value);
            let schema_accepts = violations(&kind, &value).is_empty();
            let rust_accepts = (kind.accepts)(&value);
            if schema_accepts != rust_accepts {
                problems.push(format!(
                    "{} with {}: schema {}, Rust {}",
                    kind.stem(),
                    change.join(", "),
                    verdict(schema_accepts),
                    verdict(rust_accepts)
                ));
            }
        }
    }
    assert!(kinds_with_alternatives > 0, "no type has alternatives");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn verdict(accepts: bool) -> &'static str {
    if accepts {
        "accepts"
    } else {
        "rejects"
    }
}

/// Lists every variant of an enum; the match stops compiling when a variant is added and
/// not listed here.
macro_rules! variants {
    ($ty:ident: $($variant:ident),+ $(,)?) => {{
        let all = vec![$($ty::$variant),+];
        for value in &all {
            match value {
                $($ty::$variant)|+ => {}
            }
        }
        all
    }};
}

fn check_enum<E: Serialize + DeserializeOwned>(
    schema: &Value,
    what: &str,
    variants: &[E],
    problems: &mut Vec<String>,
) {
    let in_schema: BTreeSet<String> = schema["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{what} has no enum"))
        .iter()
        .filter_map(|value| value.as_str().map(str::to_owned))
        .collect();
    let in_rust: BTreeSet<String> = variants
        .iter()
        .map(|variant| match serde_json::to_value(variant) {
            Ok(Value::String(text)) => text,
            other => panic!("{what} variant serialises to {other:?}"),
        })
        .collect();
    if in_schema != in_rust {
        problems.push(format!("{what}: schema {in_schema:?}, Rust {in_rust:?}"));
    }
}

#[test]
fn enums_match_the_rust_variants() {
    let defs = defs();
    let def = |name: &str| defs["$defs"][name].clone();
    let mut problems = Vec::new();
    check_enum(
        &SchemaName::Error.document()["properties"]["code"],
        "error code",
        &variants!(ErrorCode: InvalidJson, PayloadKeyMismatch, SchemaViolation, PayloadTooLarge,
            InvalidSubject, WorkerIdMismatch, UnknownWorker, NotRegistered, StaleIncarnation,
            StaleAttempt, UnknownRun, InvalidRoutineId, InvalidBackoff, UnknownParentRun,
            ParentNotRunning, InvalidCursor, UnknownGroup, OutOfBounds, InvalidPayload, Unavailable,
            Internal),
        &mut problems,
    );
    check_enum(
        &def("workerStatus"),
        "workerStatus",
        &variants!(WorkerStatus: Initializing, Idle, Working, Hanging, Terminating, Unresponsive,
            Lost, Offline),
        &mut problems,
    );
    check_enum(
        &def("workerPhase"),
        "workerPhase",
        &variants!(WorkerPhase: Initializing, Ready, Terminating, Offline, Lost),
        &mut problems,
    );
    check_enum(
        &def("runStatus"),
        "runStatus",
        &variants!(RunStatus: Pending, Assigned, Running, Succeeded, Failed, Cancelled),
        &mut problems,
    );
    check_enum(
        &def("failureReason"),
        "failureReason",
        &variants!(FailureReason: Error, MaxExecExceeded, MaxWaitExceeded, RetriesExhausted,
            WorkerLost, Cancelled),
        &mut problems,
    );
    check_enum(
        &def("outcome"),
        "outcome",
        &variants!(Outcome: Succeeded, Failed),
        &mut problems,
    );
    check_enum(
        &def("logLevel"),
        "logLevel",
        &variants!(LogLevel: Trace, Debug, Info, Warn, Error),
        &mut problems,
    );
    let pool_state = SchemaName::PoolState.document();
    let process = &pool_state["properties"]["groups"]["items"]["properties"]["processes"]["items"];
    check_enum(
        &process["properties"]["state"],
        "pool process state",
        &variants!(ProcessPhase: Starting, Running, Stopping, Restarting, Terminated),
        &mut problems,
    );
    check_enum(
        &resolve(&defs, &process["properties"]["lastExit"])["properties"]["class"],
        "lastExit class",
        &variants!(ExitClass: Requested, Final, Unexpected, Critical),
        &mut problems,
    );
    for schema in [SchemaName::PoolRestart, SchemaName::PoolRestarting] {
        check_enum(
            &schema.document()["properties"]["mode"],
            schema.file_stem(),
            &variants!(RestartMode: Hard, Soft),
            &mut problems,
        );
    }
    // The lists the crate itself publishes are complete too.
    let code = &SchemaName::Error.document()["properties"]["code"];
    check_enum(code, "ErrorCode::ALL", &ErrorCode::ALL, &mut problems);
    check_enum(
        &def("workerStatus"),
        "WorkerStatus::ALL",
        &WorkerStatus::ALL,
        &mut problems,
    );
    check_enum(
        &def("runStatus"),
        "RunStatus::ALL",
        &RunStatus::ALL,
        &mut problems,
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Every schema declares the draft, documents itself for worker authors, and keeps payload
/// objects open to unknown properties.
#[test]
fn schemas_follow_the_conventions() {
    fn closed_objects(value: &Value, at: &str, found: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                if object.get("additionalProperties") == Some(&Value::Bool(false)) {
                    found.push(at.to_owned());
                }
                for (key, item) in object {
                    closed_objects(item, &format!("{at}/{key}"), found);
                }
            }
            Value::Array(array) => {
                for (index, item) in array.iter().enumerate() {
                    closed_objects(item, &format!("{at}/{index}"), found);
                }
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    for &name in SchemaName::ALL {
        let document = name.document();
        let stem = name.file_stem();
        if document["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
            problems.push(format!("{stem}: $schema is not draft 2020-12"));
        }
        for field in ["title", "description"] {
            if document[field].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{stem}: no {field}"));
            }
        }
        closed_objects(&document, stem, &mut problems);
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
