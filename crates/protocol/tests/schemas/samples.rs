//! A fully populated and a minimal value of every payload type.
//!
//! "Full" means every `Option` is `Some`, every list and map is non-empty, at every level of
//! nesting: the contract tests compare the keys these serialise to with the schemas'
//! `properties`, so a field left out here would hide a field missing from a schema.

use std::collections::BTreeMap;

use drover_protocol::*;
use serde_json::{json, Value};

/// A payload type with sample values.
pub trait Sample: Payload {
    /// Every optional field present, every collection non-empty.
    fn full() -> Self;
    /// Every optional field absent, every collection empty where allowed.
    fn minimal() -> Self;
    /// More values, for a type whose schema makes some fields exclusive (`oneOf`): `full()`
    /// can hold only one of them, so these hold the others.
    fn alternatives() -> Vec<Self> {
        Vec::new()
    }
}

fn run(n: usize) -> RunId {
    let ids = [
        "0193a5b2-7c4e-7d11-9a2b-3c4d5e6f7a8b",
        "0193a5b2-8d01-7a42-b3c5-d6e7f8091a2b",
        "0193a5b3-0f1e-7c33-8e4d-5f6a7b8c9d0e",
    ];
    RunId::parse(ids[n]).expect("valid runID")
}

fn worker(id: &str) -> WorkerId {
    WorkerId::parse(id).expect("valid workerID")
}

fn routine(id: &str) -> RoutineId {
    RoutineId::parse(id).expect("valid routineID")
}

fn local(id: &str) -> LocalRunId {
    LocalRunId::parse(id).expect("valid localRunID")
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("valid timestamp")
}

fn labels() -> Labels {
    Labels::from([
        ("gpu".to_owned(), "true".to_owned()),
        ("region".to_owned(), "eu-west-1".to_owned()),
    ])
}

fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("LOG_LEVEL".to_owned(), "debug".to_owned())])
}

fn params() -> Value {
    json!({"url": "s3://photos/raw/42.jpg", "width": 800, "height": 600})
}

fn fields() -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({"widthPx": 12000, "source": "s3://photos/raw/42.tiff"}) else {
        unreachable!("an object literal")
    };
    map
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn sdk() -> SdkInfo {
    SdkInfo {
        language: "python".to_owned(),
        version: "0.3.1".to_owned(),
    }
}

fn run_error() -> RunError {
    RunError {
        message: "unsupported image format: image/heic".to_owned(),
        kind: Some("UnsupportedFormat".to_owned()),
        retryable: Some(false),
    }
}

fn conditions() -> Conditions {
    Conditions {
        worker_ids: vec![worker("gpu-worker-07"), worker("gpu-worker-08")],
        labels: labels(),
    }
}

fn backoff() -> RetryBackoff {
    RetryBackoff {
        initial_ms: 1_000,
        multiplier: 2.0,
        max_ms: 30_000,
    }
}

impl Sample for Register {
    fn full() -> Self {
        Register {
            worker_id: worker("gpu-worker-07"),
            routines: vec![routine("images.resize"), routine("video.transcode")],
            labels: labels(),
            capacity: 4,
            name: Some("GPU worker 7".to_owned()),
            sdk: Some(sdk()),
            host: Some("node-12.internal".to_owned()),
            pid: Some(48_213),
        }
    }
    fn minimal() -> Self {
        Register {
            worker_id: worker("w1"),
            routines: vec![],
            labels: Labels::new(),
            capacity: 1,
            name: None,
            sdk: None,
            host: None,
            pid: None,
        }
    }
}

impl Sample for Registered {
    fn full() -> Self {
        Registered {
            worker_id: worker("gpu-worker-07"),
            incarnation: 3,
            heartbeat_interval_ms: 5_000,
            lost_after_ms: 15_000,
        }
    }
    fn minimal() -> Self {
        Registered {
            incarnation: 1,
            ..Self::full()
        }
    }
}

impl Sample for Ready {
    fn full() -> Self {
        Ready { incarnation: 3 }
    }
    fn minimal() -> Self {
        Ready { incarnation: 1 }
    }
}

impl Sample for GivePulse {
    fn full() -> Self {
        GivePulse {
            incarnation: 2,
            status: WorkerStatus::Working,
            runs: vec![RunRef {
                run_id: run(0),
                attempt: 1,
            }],
            id: Some("probe-8f14e45f".to_owned()),
        }
    }
    fn minimal() -> Self {
        GivePulse {
            incarnation: 1,
            status: WorkerStatus::Idle,
            runs: vec![],
            id: None,
        }
    }
}

impl Sample for CheckPulse {
    fn full() -> Self {
        CheckPulse {
            id: "probe-8f14e45f".to_owned(),
        }
    }
    fn minimal() -> Self {
        CheckPulse { id: String::new() }
    }
}

impl Sample for LogLine {
    fn full() -> Self {
        LogLine {
            level: LogLevel::Warn,
            message: "image is larger than 50 MB, downscaling first".to_owned(),
            run_id: Some(run(0)),
            fields: Some(fields()),
            timestamp: Some(at("2026-11-22T13:17:02.481Z")),
        }
    }
    fn minimal() -> Self {
        LogLine {
            level: LogLevel::Info,
            message: "worker started".to_owned(),
            run_id: None,
            fields: None,
            timestamp: None,
        }
    }
}

impl Sample for RunSpec {
    fn full() -> Self {
        RunSpec {
            routine_id: routine("images.resize"),
            params: params(),
            env: env(),
            conditions: conditions(),
            max_wait_time_ms: Some(60_000),
            max_exec_time_ms: Some(300_000),
            max_retries: 3,
            retry_backoff: Some(backoff()),
            idempotency_key: Some("resize-photo-42-800x600".to_owned()),
            local_run_id: Some(local("photo-42")),
            parent_run_id: Some(run(0)),
        }
    }
    fn minimal() -> Self {
        RunSpec::new(routine("images.resize"))
    }
}

impl Sample for Accepted {
    fn full() -> Self {
        Accepted {
            run_id: run(0),
            local_run_id: Some(local("photo-42")),
        }
    }
    fn minimal() -> Self {
        Accepted {
            run_id: run(0),
            local_run_id: None,
        }
    }
}

impl Sample for Starting {
    fn full() -> Self {
        Starting {
            run_id: run(0),
            attempt: 2,
        }
    }
    fn minimal() -> Self {
        Starting {
            run_id: run(0),
            attempt: 1,
        }
    }
}

impl Sample for Completed {
    fn full() -> Self {
        Completed {
            run_id: run(0),
            attempt: 2,
            outcome: Outcome::Failed,
            result: Some(json!({"partial": true})),
            error: Some(run_error()),
        }
    }
    fn minimal() -> Self {
        Completed {
            run_id: run(0),
            attempt: 1,
            outcome: Outcome::Succeeded,
            result: None,
            error: None,
        }
    }
}

impl Sample for Terminating {
    fn full() -> Self {
        Terminating {
            incarnation: 2,
            reason: Some("SIGTERM received".to_owned()),
        }
    }
    fn minimal() -> Self {
        Terminating {
            incarnation: 1,
            reason: None,
        }
    }
}

impl Sample for Assignment {
    fn full() -> Self {
        Assignment {
            run_id: run(1),
            attempt: 1,
            routine_id: routine("images.thumbnail"),
            params: params(),
            env: env(),
            max_exec_time_ms: Some(300_000),
            parent_run_id: Some(run(0)),
        }
    }
    fn minimal() -> Self {
        Assignment {
            run_id: run(1),
            attempt: 1,
            routine_id: routine("images.thumbnail"),
            params: Value::Null,
            env: BTreeMap::new(),
            max_exec_time_ms: None,
            parent_run_id: None,
        }
    }
}

impl Sample for ChildStarting {
    fn full() -> Self {
        ChildStarting {
            run_id: run(1),
            local_run_id: local("thumbnail-128"),
            routine_id: routine("images.thumbnail"),
            worker_id: worker("resizer-2"),
        }
    }
    fn minimal() -> Self {
        Self::full()
    }
}

impl Sample for ChildCompleted {
    fn full() -> Self {
        ChildCompleted {
            run_id: run(1),
            local_run_id: local("thumbnail-128"),
            outcome: Outcome::Failed,
            result: Some(json!({"url": "s3://photos/128/42.jpg"})),
            error: Some(run_error()),
            status: Some(RunStatus::Failed),
            failure_reason: Some(FailureReason::Error),
        }
    }
    fn minimal() -> Self {
        ChildCompleted {
            run_id: run(1),
            local_run_id: local("thumbnail-128"),
            outcome: Outcome::Succeeded,
            result: None,
            error: None,
            status: None,
            failure_reason: None,
        }
    }
}

impl Sample for Cancel {
    fn full() -> Self {
        Cancel {
            run_id: run(0),
            attempt: 1,
            reason: "max_exec_exceeded".to_owned(),
        }
    }
    fn minimal() -> Self {
        Cancel {
            reason: String::new(),
            ..Self::full()
        }
    }
}

impl Sample for ErrorPayload {
    fn full() -> Self {
        ErrorPayload::new(
            ErrorCode::StaleAttempt,
            "attempt 1 is not current",
            "v1.routine.completed.w1",
        )
        .with_details(json!({"attempt": 2}))
    }
    fn minimal() -> Self {
        ErrorPayload::new(ErrorCode::Internal, "", "v1.run.get").with_details(Value::Null)
    }
}

impl Sample for RunGet {
    fn full() -> Self {
        RunGet { run_id: run(0) }
    }
    fn minimal() -> Self {
        Self::full()
    }
}

impl Sample for RunList {
    fn full() -> Self {
        RunList {
            status: Some(RunStatus::Failed),
            routine_id: Some(routine("images.resize")),
            worker_id: Some(worker("gpu-worker-07")),
            limit: Some(RunList::MAX_LIMIT),
            cursor: Some("eyJzZXEiOjQyfQ".to_owned()),
        }
    }
    fn minimal() -> Self {
        RunList::default()
    }
}

impl Sample for RunCancel {
    fn full() -> Self {
        RunCancel {
            run_id: run(0),
            reason: Some("submitted by mistake".to_owned()),
        }
    }
    fn minimal() -> Self {
        RunCancel {
            run_id: run(0),
            reason: None,
        }
    }
}

fn transition() -> Transition {
    Transition {
        status: RunStatus::Pending,
        at: at("2026-11-22T13:17:02.200Z"),
        attempt: 1,
        worker_id: Some(worker("gpu-worker-07")),
        reason: Some("attempt failed, retry 1 of 3 after 1000 ms".to_owned()),
    }
}

fn run_record_full() -> RunRecord {
    RunRecord {
        run_id: run(1),
        routine_id: routine("images.thumbnail"),
        status: RunStatus::Failed,
        params: params(),
        env: env(),
        conditions: conditions(),
        max_wait_time_ms: Some(60_000),
        max_exec_time_ms: Some(300_000),
        max_retries: 3,
        retry_backoff: Some(backoff()),
        idempotency_key: Some("thumb-42".to_owned()),
        local_run_id: Some(local("thumbnail-128")),
        parent_run_id: Some(run(0)),
        requested_by: Some(worker("gpu-worker-07")),
        attempt: 4,
        retries: 3,
        reassignments: 1,
        worker_id: Some(worker("resizer-2")),
        incarnation: Some(4),
        created_at: at("2026-11-22T13:17:00.000Z"),
        assigned_at: Some(at("2026-11-22T13:17:03.250Z")),
        started_at: Some(at("2026-11-22T13:17:03.301Z")),
        ended_at: Some(at("2026-11-22T13:17:09.870Z")),
        not_before: Some(at("2026-11-22T13:17:03.200Z")),
        transitions: vec![transition()],
        result: Some(json!({"partial": true})),
        error: Some(run_error()),
        failure_reason: Some(FailureReason::RetriesExhausted),
        open_children: vec![run(2)],
        trace_id: Some(TRACE_ID.to_owned()),
        traceparent: Some(format!("00-{TRACE_ID}-00f067aa0ba902b7-01")),
        tracestate: Some("vendor=abc".to_owned()),
        queue_seq: Some(1_042),
    }
}

fn run_record_minimal() -> RunRecord {
    RunRecord {
        run_id: run(2),
        routine_id: routine("reports.build"),
        status: RunStatus::Pending,
        params: Value::Null,
        env: BTreeMap::new(),
        conditions: Conditions::default(),
        max_wait_time_ms: None,
        max_exec_time_ms: None,
        max_retries: 0,
        retry_backoff: None,
        idempotency_key: None,
        local_run_id: None,
        parent_run_id: None,
        requested_by: None,
        attempt: 0,
        retries: 0,
        reassignments: 0,
        worker_id: None,
        incarnation: None,
        created_at: at("2026-11-22T13:20:00.000Z"),
        assigned_at: None,
        started_at: None,
        ended_at: None,
        not_before: None,
        transitions: vec![],
        result: None,
        error: None,
        failure_reason: None,
        open_children: vec![],
        trace_id: None,
        traceparent: None,
        tracestate: None,
        queue_seq: None,
    }
}

impl Sample for RunRecord {
    fn full() -> Self {
        run_record_full()
    }
    fn minimal() -> Self {
        run_record_minimal()
    }
}

impl Sample for RunPage {
    fn full() -> Self {
        RunPage {
            runs: vec![run_record_full()],
            next_cursor: Some("eyJzZXEiOjQyfQ".to_owned()),
        }
    }
    fn minimal() -> Self {
        RunPage {
            runs: vec![run_record_minimal()],
            next_cursor: None,
        }
    }
}

impl Sample for RunEvent {
    fn full() -> Self {
        RunEvent {
            run_id: run(1),
            status: RunStatus::Failed,
            previous_status: Some(RunStatus::Running),
            attempt: 4,
            at: at("2026-11-22T13:17:09.870Z"),
            run: run_record_full(),
        }
    }
    fn minimal() -> Self {
        RunEvent {
            run_id: run(2),
            status: RunStatus::Pending,
            previous_status: None,
            attempt: 0,
            at: at("2026-11-22T13:20:00.000Z"),
            run: run_record_minimal(),
        }
    }
}

impl Sample for RegistryList {
    fn full() -> Self {
        RegistryList {
            status: Some(WorkerStatus::Idle),
            routine_id: Some(routine("images.resize")),
            labels: Some(labels()),
            limit: Some(500),
            cursor: Some("gpu-worker-06".to_owned()),
        }
    }
    fn minimal() -> Self {
        RegistryList::default()
    }
}

impl Sample for RegistryGet {
    fn full() -> Self {
        RegistryGet {
            worker_id: worker("gpu-worker-07"),
        }
    }
    fn minimal() -> Self {
        Self::full()
    }
}

fn worker_record_full() -> WorkerRecord {
    WorkerRecord {
        worker_id: worker("gpu-worker-07"),
        incarnation: 3,
        status: WorkerStatus::Hanging,
        reported_status: Some(WorkerStatus::Working),
        phase: WorkerPhase::Ready,
        unresponsive: false,
        routines: vec![routine("images.resize")],
        labels: labels(),
        capacity: 4,
        runs: vec![HeldRun {
            run_id: run(0),
            attempt: 2,
            waiting: true,
            waiting_version: 3,
            since: at("2026-11-22T13:17:03.250Z"),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        }],
        name: Some("GPU worker 7".to_owned()),
        sdk: Some(sdk()),
        host: Some("node-12.internal".to_owned()),
        pid: Some(48_213),
        heartbeat_interval_ms: 5_000,
        lost_after_ms: 15_000,
        registered_at: at("2026-11-22T12:59:58.000Z"),
        status_changed_at: at("2026-11-22T13:17:04.000Z"),
        ready_at: Some(at("2026-11-22T12:59:58.300Z")),
        terminating_reason: Some("SIGTERM received".to_owned()),
    }
}

fn worker_record_minimal() -> WorkerRecord {
    WorkerRecord {
        worker_id: worker("resizer-9"),
        incarnation: 1,
        status: WorkerStatus::Initializing,
        reported_status: None,
        phase: WorkerPhase::Initializing,
        unresponsive: false,
        routines: vec![],
        labels: Labels::new(),
        capacity: 1,
        runs: vec![],
        name: None,
        sdk: None,
        host: None,
        pid: None,
        heartbeat_interval_ms: 5_000,
        lost_after_ms: 15_000,
        registered_at: at("2026-11-22T13:30:00.000Z"),
        status_changed_at: at("2026-11-22T13:30:00.000Z"),
        ready_at: None,
        terminating_reason: None,
    }
}

impl Sample for WorkerRecord {
    fn full() -> Self {
        worker_record_full()
    }
    fn minimal() -> Self {
        worker_record_minimal()
    }
}

impl Sample for WorkerList {
    fn full() -> Self {
        WorkerList {
            workers: vec![worker_record_full()],
            next_cursor: Some("gpu-worker-07".to_owned()),
        }
    }
    fn minimal() -> Self {
        WorkerList {
            workers: vec![worker_record_minimal()],
            next_cursor: None,
        }
    }
}

impl Sample for WorkerEvent {
    fn full() -> Self {
        WorkerEvent {
            worker_id: worker("gpu-worker-07"),
            incarnation: 3,
            status: WorkerStatus::Hanging,
            previous_status: Some(WorkerStatus::Working),
            at: at("2026-11-22T13:17:04.000Z"),
            worker: worker_record_full(),
        }
    }
    fn minimal() -> Self {
        WorkerEvent {
            worker_id: worker("resizer-9"),
            incarnation: 1,
            status: WorkerStatus::Initializing,
            previous_status: None,
            at: at("2026-11-22T13:30:00.000Z"),
            worker: worker_record_minimal(),
        }
    }
}

impl Sample for LogsQuery {
    fn full() -> Self {
        LogsQuery {
            run_id: Some(run(0)),
            worker_id: Some(worker("gpu-worker-07")),
            since: Some(at("2026-11-22T13:00:00.000Z")),
            limit: Some(1),
            cursor: Some("eyJzZXEiOjEwMH0".to_owned()),
        }
    }
    fn minimal() -> Self {
        LogsQuery::default()
    }
}

impl Sample for LogPage {
    fn full() -> Self {
        LogPage {
            logs: vec![LogRecord {
                seq: 1_042,
                worker_id: worker("gpu-worker-07"),
                run_id: Some(run(0)),
                routine_id: Some(routine("images.resize")),
                attempt: Some(2),
                trace_id: Some(TRACE_ID.to_owned()),
                level: LogLevel::Warn,
                message: "image is larger than 50 MB, downscaling first".to_owned(),
                fields: fields(),
                timestamp: at("2026-11-22T13:17:04.481Z"),
                received_at: at("2026-11-22T13:17:04.490Z"),
            }],
            next_cursor: Some("eyJzZXEiOjEwNDJ9".to_owned()),
        }
    }
    fn minimal() -> Self {
        LogPage {
            logs: vec![LogRecord {
                seq: 0,
                worker_id: worker("resizer-1"),
                run_id: None,
                routine_id: None,
                attempt: None,
                trace_id: None,
                level: LogLevel::Info,
                message: String::new(),
                fields: serde_json::Map::new(),
                timestamp: at("2026-11-22T13:17:05.000Z"),
                received_at: at("2026-11-22T13:17:05.002Z"),
            }],
            next_cursor: None,
        }
    }
}

fn group(name: &str) -> GroupName {
    GroupName::parse(name).expect("valid group name")
}

impl Sample for PoolScale {
    fn full() -> Self {
        PoolScale {
            group: group("py"),
            target: Some(4),
            delta: None,
        }
    }
    fn minimal() -> Self {
        Self::full()
    }
    fn alternatives() -> Vec<Self> {
        vec![PoolScale {
            group: group("py"),
            target: None,
            delta: Some(-2),
        }]
    }
}

impl Sample for PoolScaled {
    fn full() -> Self {
        PoolScaled {
            group: group("py"),
            target: 4,
            running: 2,
        }
    }
    fn minimal() -> Self {
        PoolScaled {
            group: group("py"),
            target: 0,
            running: 0,
        }
    }
}

impl Sample for PoolRestart {
    fn full() -> Self {
        PoolRestart {
            mode: RestartMode::Soft,
            group: Some(group("py")),
        }
    }
    fn minimal() -> Self {
        PoolRestart {
            mode: RestartMode::Hard,
            group: None,
        }
    }
}

impl Sample for PoolRestarting {
    fn full() -> Self {
        PoolRestarting {
            accepted: true,
            mode: RestartMode::Soft,
            groups: vec![group("py"), group("rust")],
        }
    }
    fn minimal() -> Self {
        PoolRestarting {
            accepted: true,
            mode: RestartMode::Hard,
            groups: vec![],
        }
    }
}

impl Sample for PoolStatus {
    fn full() -> Self {
        PoolStatus {}
    }
    fn minimal() -> Self {
        PoolStatus {}
    }
}

fn process_full() -> ProcessState {
    ProcessState {
        worker_id: worker("demo-py-2"),
        pid: Some(48_213),
        state: ProcessPhase::Running,
        worker_status: Some(WorkerStatus::Working),
        restarts: 1,
        started_at: Some(at("2026-11-22T13:17:05.120Z")),
        uptime_ms: Some(120_000),
        runs: Some(17),
        rss_bytes: Some(48_234_496),
        last_exit: Some(LastExit {
            code: Some(137),
            signal: Some(9),
            class: ExitClass::Unexpected,
            reason: Some("killed by signal 9".to_owned()),
            at: at("2026-11-22T13:17:04.001Z"),
        }),
    }
}

fn process_minimal() -> ProcessState {
    ProcessState {
        worker_id: worker("demo-py-3"),
        pid: None,
        state: ProcessPhase::Restarting,
        worker_status: None,
        restarts: 0,
        started_at: None,
        uptime_ms: None,
        runs: None,
        rss_bytes: None,
        last_exit: None,
    }
}

impl Sample for PoolState {
    fn full() -> Self {
        PoolState {
            pool_id: PoolId::parse("demo").expect("valid poolID"),
            started_at: at("2026-11-22T13:00:00.000Z"),
            uptime_ms: 1_145_120,
            restarts: 1,
            groups: vec![GroupState {
                name: group("py"),
                min: 1,
                max: 8,
                target: 2,
                processes: vec![process_full()],
            }],
        }
    }
    fn minimal() -> Self {
        PoolState {
            pool_id: PoolId::parse("demo").expect("valid poolID"),
            started_at: at("2026-11-22T13:00:00.000Z"),
            uptime_ms: 0,
            restarts: 0,
            groups: vec![GroupState {
                name: group("py"),
                min: 0,
                max: 1,
                target: 1,
                processes: vec![process_minimal()],
            }],
        }
    }
}
