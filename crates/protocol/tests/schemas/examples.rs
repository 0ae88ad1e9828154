//! The examples in `schemas/v1/examples/`: `valid/<stem>/*.json` decode and round-trip;
//! `invalid/<stem>/<name>.json` fail with the code (and at the path) that
//! `<name>.expect.json` names. Each example is a whole envelope.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use drover_protocol::envelope::DecodeError;
use drover_protocol::schema::{self, SchemaName};
use serde_json::Value;

use crate::{kinds, Kind};

/// Schemas of what workers send, which get more than one valid example.
const WORKER_FACING: [&str; 8] = [
    "register",
    "heartbeat.give_pulse",
    "routine.request_start",
    "routine.starting",
    "routine.completed",
    "terminating",
    "ready",
    "log",
];

const EXPECT_SUFFIX: &str = ".expect.json";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/v1/examples")
}

/// Every example file under `valid` or `invalid`, by stem (expectation files excluded).
fn examples(which: &str) -> BTreeMap<String, Vec<PathBuf>> {
    let mut found = BTreeMap::new();
    let root = examples_dir().join(which);
    for dir in fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let dir = dir.expect("readable directory entry").path();
        let stem = dir
            .file_name()
            .and_then(|name| name.to_str())
            .expect("UTF-8 directory name")
            .to_owned();
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("readable directory entry").path())
            .filter(|path| {
                let name = path.to_string_lossy();
                name.ends_with(".json") && !name.ends_with(EXPECT_SUFFIX)
            })
            .collect();
        files.sort();
        found.insert(stem, files);
    }
    found
}

fn kind_for<'a>(kinds: &'a [Kind], stem: &str) -> Option<&'a Kind> {
    kinds.iter().find(|kind| kind.stem() == stem)
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn name(path: &Path) -> String {
    let parent = path.parent().and_then(Path::file_name).unwrap_or_default();
    let file = path.file_name().unwrap_or_default();
    format!("{}/{}", parent.to_string_lossy(), file.to_string_lossy())
}

#[test]
fn valid_examples_decode_and_round_trip() {
    let kinds = kinds();
    let mut problems = Vec::new();
    for (stem, files) in examples("valid") {
        let Some(kind) = kind_for(&kinds, &stem) else {
            problems.push(format!("valid/{stem}: no payload schema has this stem"));
            continue;
        };
        for path in files {
            if let Err(problem) = (kind.round_trip)(&read(&path)) {
                problems.push(format!("{} ({}): {problem}", name(&path), kind.name));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    code: String,
    #[serde(default)]
    path: Option<String>,
}

fn check_invalid(kind: &Kind, body: &[u8], expect: &Expectation) -> Result<(), String> {
    let Some(error) = (kind.decode_error)(body) else {
        return Err("decodes, but should not".to_owned());
    };
    if error.code().as_str() != expect.code {
        return Err(format!(
            "fails with {} ({error}), not {}",
            error.code(),
            expect.code
        ));
    }
    let Some(path) = &expect.path else {
        return Ok(());
    };
    let DecodeError::Schema(violations) = &error else {
        return Err(format!("fails with {error}, which names no path"));
    };
    let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    if !paths.contains(&path.as_str()) {
        return Err(format!("violations are at {paths:?}, not at {path}"));
    }
    // Invalid in one clear way: nothing is wrong outside the expected place.
    let inside = |p: &&str| *p == path || p.starts_with(&format!("{path}/"));
    if !paths.iter().all(inside) {
        return Err(format!("violations at {paths:?}, expected only at {path}"));
    }
    // A schema validator alone must reject it too, so that SDKs in other languages that
    // only run the schemas agree with the services.
    let envelope: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut found = schema::validate(SchemaName::Envelope, &envelope, "");
    found.extend(schema::validate(
        kind.schema,
        &envelope["payload"],
        "/payload",
    ));
    if found.is_empty() {
        return Err("only serde rejects it; the schema accepts it".to_owned());
    }
    Ok(())
}

#[test]
fn invalid_examples_fail_as_expected() {
    let kinds = kinds();
    let mut problems = Vec::new();
    for (stem, files) in examples("invalid") {
        let Some(kind) = kind_for(&kinds, &stem) else {
            problems.push(format!("invalid/{stem}: no payload schema has this stem"));
            continue;
        };
        for path in files {
            let expect_path = path.with_extension("expect.json");
            let expect: Expectation = match fs::read(&expect_path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            {
                Ok(expect) => expect,
                Err(error) => {
                    problems.push(format!("{}: {error}", name(&expect_path)));
                    continue;
                }
            };
            if let Err(problem) = check_invalid(kind, &read(&path), &expect) {
                problems.push(format!("{} ({}): {problem}", name(&path), kind.name));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn examples_cover_every_payload_schema() {
    let valid = examples("valid");
    let invalid = examples("invalid");
    let mut problems = Vec::new();
    for kind in kinds() {
        let stem = kind.stem();
        let wanted = if WORKER_FACING.contains(&stem) { 2 } else { 1 };
        let count = valid.get(stem).map_or(0, Vec::len);
        if count < wanted {
            problems.push(format!(
                "valid/{stem}: {count} examples, want at least {wanted}"
            ));
        }
        if invalid.get(stem).is_none_or(Vec::is_empty) {
            problems.push(format!("invalid/{stem}: no examples"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_expectation_has_its_example() {
    let root = examples_dir().join("invalid");
    for dir in fs::read_dir(&root).expect("examples/invalid exists") {
        for file in fs::read_dir(dir.expect("readable entry").path()).expect("readable dir") {
            let path = file.expect("readable entry").path();
            let text = path.to_string_lossy().into_owned();
            if let Some(example) = text.strip_suffix(EXPECT_SUFFIX) {
                let example = PathBuf::from(format!("{example}.json"));
                assert!(example.exists(), "{} has no example", name(&path));
            }
        }
    }
}
