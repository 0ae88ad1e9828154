//! The console's API and pages against a real stack: listings, paging and search from the
//! index, actions that need the token, and bad input that gets a clear error and changes
//! nothing. The browser tests (integration-tests/python/test_console_browser.py) cover what
//! only a browser can see.

use std::time::Duration;

use drover_protocol::subject::resources;
use drover_testkit::{assert_eventually, free_port, hold_for, Stack};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};

const CONSOLE: &str = "drover-console";
const TOKEN: &str = "console-test-token";

struct Console {
    _stack: Stack,
    js: async_nats::jetstream::Context,
    base: String,
    http: Client,
}

impl Console {
    async fn start(token: Option<&str>) -> Self {
        let port = free_port();
        let mut builder = Stack::builder()
            .with_all_services()
            .with_service(CONSOLE)
            .service_arg(CONSOLE, format!("--listen=127.0.0.1:{port}"))
            // A small body limit, so the oversized-body case needs no megabytes.
            .service_env(CONSOLE, "DROVER_MAX_PAYLOAD_BYTES", "65536");
        if let Some(token) = token {
            builder = builder.service_arg(CONSOLE, format!("--token={token}"));
        }
        let stack = builder.start().await.expect("stack starts");
        let js = stack.jetstream().await;
        Self {
            _stack: stack,
            js,
            base: format!("http://127.0.0.1:{port}"),
            http: Client::new(),
        }
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }

    async fn json(&self, request: RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("console answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
        (status, body)
    }

    async fn submit(&self, spec: Value) -> String {
        let (status, body) = self
            .json(self.post("/api/v1/runs").bearer_auth(TOKEN).json(&spec))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["runID"].as_str().expect("a runID").to_owned()
    }

    /// Runs in the bucket: what the console must not change on bad input.
    async fn stored_runs(&self) -> u64 {
        let bucket = self
            .js
            .get_key_value(resources::RUNS_BUCKET)
            .await
            .expect("the runs bucket");
        bucket.status().await.expect("bucket status").values()
    }

    async fn listed(&self, path: &str) -> Vec<String> {
        let (status, body) = self.json(self.get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|run| run["runID"].as_str().expect("runID").to_owned())
            .collect()
    }
}

#[tokio::test]
async fn runs_are_listed_newest_first_filtered_searched_and_paged() {
    let console = Console::start(Some(TOKEN)).await;
    let mut submitted = Vec::new();
    for n in 0..5 {
        let routine = if n % 2 == 0 {
            "console.even"
        } else {
            "console.odd"
        };
        let mut spec = json!({"routineID": routine, "params": {"n": n}});
        if n == 3 {
            spec["idempotencyKey"] = json!("order-3");
        }
        submitted.push(console.submit(spec).await);
    }
    assert_eventually!(
        console.listed("/api/v1/runs").await.len() == 5,
        "the console lists the five runs"
    );
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    assert_eq!(console.listed("/api/v1/runs").await, newest_first);

    // Two pages of two and one of one, each continuing where the last stopped.
    let mut paged = Vec::new();
    let mut path = "/api/v1/runs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, body) = console.json(console.get(&path)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        pages += 1;
        paged.extend(
            body["runs"]
                .as_array()
                .expect("runs")
                .iter()
                .map(|run| run["runID"].as_str().expect("runID").to_owned()),
        );
        match body["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/runs?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!((pages, paged), (3, newest_first.clone()));

    let odd = console.listed("/api/v1/runs?routine=console.odd").await;
    assert_eq!(odd, vec![submitted[3].clone(), submitted[1].clone()]);
    assert_eq!(
        console.listed("/api/v1/runs?status=pending").await.len(),
        5,
        "no worker runs these routines"
    );
    assert!(console
        .listed("/api/v1/runs?status=SUCCEEDED")
        .await
        .is_empty());
    assert!(console.listed("/api/v1/runs?since=1h").await.len() == 5);
    assert!(console.listed("/api/v1/runs?until=1h").await.is_empty());
    assert_eq!(
        console.listed("/api/v1/runs?q=order-3").await,
        vec![submitted[3].clone()]
    );
    assert_eq!(
        console
            .listed(&format!("/api/v1/runs?q={}", submitted[0]))
            .await,
        vec![submitted[0].clone()]
    );
    assert!(console
        .listed("/api/v1/runs?q=nothing-like-it")
        .await
        .is_empty());

    // The page's search goes straight to the run.
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{}/runs?q=order-3", console.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"],
        format!("/runs/{}", submitted[3]).as_str()
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let console = Console::start(Some(TOKEN)).await;
    let run = console
        .submit(json!({"routineID": "console.kept", "params": {}}))
        .await;
    assert_eventually!(
        console.listed("/api/v1/runs").await.len() == 1,
        "the console lists the run"
    );
    let before = console.stored_runs().await;
    let unknown = "01a2f000-0000-7000-8000-000000000000";

    let cases: Vec<(&str, RequestBuilder, StatusCode, &str)> = vec![
        (
            "unknown run",
            console.get(&format!("/api/v1/runs/{unknown}")),
            StatusCode::NOT_FOUND,
            "unknown_run",
        ),
        (
            "unknown run's children",
            console.get(&format!("/api/v1/runs/{unknown}/children")),
            StatusCode::NOT_FOUND,
            "unknown_run",
        ),
        (
            "unknown run's logs",
            console.get(&format!("/api/v1/runs/{unknown}/logs")),
            StatusCode::NOT_FOUND,
            "unknown_run",
        ),
        (
            "malformed runID",
            console.get("/api/v1/runs/not%20a%20run"),
            StatusCode::NOT_FOUND,
            "unknown_run",
        ),
        (
            "malformed cursor",
            console.get("/api/v1/runs?cursor=zzz"),
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "malformed worker cursor",
            console.get("/api/v1/workers?cursor=a%20b"),
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "unknown state",
            console.get("/api/v1/runs?status=DONE"),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "bad routine",
            console.get("/api/v1/runs?routine=a..b"),
            StatusCode::BAD_REQUEST,
            "invalid_routine_id",
        ),
        (
            "bad time",
            console.get("/api/v1/runs?since=yesterday"),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "limit too large",
            console.get("/api/v1/runs?limit=1001"),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "unknown worker",
            console.get("/api/v1/workers/nobody"),
            StatusCode::NOT_FOUND,
            "unknown_worker",
        ),
        (
            "unknown pool",
            console.get("/api/v1/pools/nopool"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "unknown endpoint",
            console.get("/api/v1/nothing"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong method",
            console.http.delete(format!("{}/api/v1/runs", console.base)),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "invalid JSON",
            console
                .post("/api/v1/runs")
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body("{\"routineID\": "),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "no routine",
            console
                .post("/api/v1/runs")
                .bearer_auth(TOKEN)
                .json(&json!({"params": {}})),
            StatusCode::BAD_REQUEST,
            "schema_violation",
        ),
        (
            "a parent named by a client",
            console
                .post("/api/v1/runs")
                .bearer_auth(TOKEN)
                .json(&json!({"routineID": "a", "parentRunID": run})),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "oversized body",
            console
                .post("/api/v1/runs")
                .bearer_auth(TOKEN)
                .json(&json!({"routineID": "a", "params": "x".repeat(100_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "cancel of an unknown run",
            console
                .post(&format!("/api/v1/runs/{unknown}/cancel"))
                .bearer_auth(TOKEN)
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "unknown_run",
        ),
        (
            "resubmit of an unfinished run",
            console
                .post(&format!("/api/v1/runs/{run}/resubmit"))
                .bearer_auth(TOKEN),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
    ];
    for (case, request, status, code) in cases {
        let (got, body) = console.json(request).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{case}: {body}"
        );
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|message| message.len() > 10),
            "{case}: a message people can read: {body}"
        );
    }

    // The pages answer the same mistakes with a page that says what is wrong.
    for (path, status, code) in [
        (
            format!("/runs/{unknown}"),
            StatusCode::NOT_FOUND,
            "unknown_run",
        ),
        (
            "/runs?cursor=zzz".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "/workers/nobody".to_owned(),
            StatusCode::NOT_FOUND,
            "unknown_worker",
        ),
        ("/nowhere".to_owned(), StatusCode::NOT_FOUND, "not_found"),
    ] {
        let response = console.get(&path).send().await.expect("answer");
        assert_eq!(response.status(), status, "{path}");
        let page = response.text().await.expect("page");
        assert!(
            page.contains("id=\"error\"") && page.contains(code),
            "{path}: {page}"
        );
    }
    // A form with params that are not JSON shows the form again with the error.
    let response = console
        .post("/runs/new")
        .bearer_auth(TOKEN)
        .form(&[("routineID", "console.kept"), ("params", "{\"a\": 1,")])
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let page = response.text().await.expect("page");
    assert!(
        page.contains("id=\"form-error\"") && page.contains("invalid_json"),
        "{page}"
    );

    let big = "x".repeat(100_000);
    let response = console
        .post("/runs/new")
        .bearer_auth(TOKEN)
        .form(&[("routineID", "console.kept"), ("params", big.as_str())])
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let page = response.text().await.expect("page");
    assert!(page.contains("payload_too_large"), "{page}");

    hold_for(Duration::from_millis(300)).await;
    assert_eq!(console.stored_runs().await, before, "nothing was submitted");
    let (_, record) = console
        .json(console.get(&format!("/api/v1/runs/{run}")))
        .await;
    assert_eq!(record["status"], "PENDING", "the run is as it was");
}

#[tokio::test]
async fn actions_need_the_token_and_then_go_through_the_scheduler() {
    let console = Console::start(Some(TOKEN)).await;
    let run = console
        .submit(json!({"routineID": "console.waits", "params": {"size": 3}, "maxRetries": 2}))
        .await;

    for request in [
        console
            .post(&format!("/api/v1/runs/{run}/cancel"))
            .json(&json!({})),
        console
            .post(&format!("/api/v1/runs/{run}/cancel"))
            .bearer_auth("not-the-token")
            .json(&json!({})),
        console
            .post("/api/v1/runs")
            .json(&json!({"routineID": "a"})),
    ] {
        let (status, body) = console.json(request).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("not_permitted")),
            "{body}"
        );
    }
    let page = console
        .post(&format!("/runs/{run}/cancel"))
        .send()
        .await
        .expect("answer");
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    let page = page.text().await.expect("page");
    assert!(
        page.contains("id=\"error\"") && page.contains("not_permitted"),
        "{page}"
    );
    let (_, record) = console
        .json(console.get(&format!("/api/v1/runs/{run}")))
        .await;
    assert_eq!(
        record["status"], "PENDING",
        "refused actions change nothing"
    );

    // Signing in with the token gives the browser a cookie that allows actions.
    let wrong = console
        .post("/login")
        .form(&[("token", "nope")])
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let signed_in = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{}/login", console.base))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("answer");
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie does not carry the token itself"
    );
    let cookie = cookie.split(';').next().expect("name=value").to_owned();

    let response = console
        .post(&format!("/runs/{run}/cancel"))
        .header("cookie", &cookie)
        .form(&[("reason", "changed my mind")])
        .send()
        .await
        .expect("answer");
    assert!(response.status().is_success() || response.status().is_redirection());
    let (_, record) = console
        .json(console.get(&format!("/api/v1/runs/{run}")))
        .await;
    assert_eq!(record["status"], "CANCELLED");
    assert_eq!(record["failureReason"], "cancelled");

    let (status, accepted) = console
        .json(
            console
                .post(&format!("/api/v1/runs/{run}/resubmit"))
                .bearer_auth(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    let again = accepted["runID"].as_str().expect("a new run");
    assert_ne!(again, run);
    let (_, copy) = console
        .json(console.get(&format!("/api/v1/runs/{again}")))
        .await;
    assert_eq!(
        (&copy["routineID"], &copy["params"], &copy["maxRetries"]),
        (
            &record["routineID"],
            &record["params"],
            &record["maxRetries"]
        )
    );
}

#[tokio::test]
async fn without_a_token_the_console_is_read_only() {
    let console = Console::start(None).await;
    let (status, body) = console
        .json(
            console
                .post("/api/v1/runs")
                .bearer_auth("anything-at-all")
                .json(&json!({"routineID": "a"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("read-only")),
        "{body}"
    );
    assert_eq!(console.stored_runs().await, 0);
    let page = console
        .get("/")
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("page");
    assert!(
        page.contains("id=\"sign-in\""),
        "the page offers no actions"
    );
}

#[tokio::test]
async fn a_run_page_stream_tells_of_each_change() {
    let console = Console::start(Some(TOKEN)).await;
    let run = console
        .submit(json!({"routineID": "console.streamed", "params": {}}))
        .await;
    let mut stream = console
        .get(&format!("/live/runs/{run}"))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let (status, _) = console
        .json(
            console
                .post(&format!("/api/v1/runs/{run}/cancel"))
                .bearer_auth(TOKEN)
                .json(&json!({"reason": "streamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut seen = String::new();
    let found = tokio::time::timeout(drover_testkit::patient(Duration::from_secs(10)), async {
        while let Some(chunk) = stream.chunk().await.expect("the stream goes on") {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: replace") && seen.contains("data-status=\"CANCELLED\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "a replace event with the cancelled state: {seen}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let console = Console::start(None).await;
    let (status, document) = console.json(console.get("/api/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/overview",
        "/api/v1/runs",
        "/api/v1/runs/{runID}",
        "/api/v1/runs/{runID}/children",
        "/api/v1/runs/{runID}/logs",
        "/api/v1/runs/{runID}/cancel",
        "/api/v1/runs/{runID}/resubmit",
        "/api/v1/workers",
        "/api/v1/workers/{workerID}",
        "/api/v1/workers/{workerID}/logs",
        "/api/v1/pools",
        "/api/v1/pools/{poolID}",
        "/api/v1/pools/{poolID}/scale",
        "/api/v1/pools/{poolID}/restart",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    let schemas = document["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for schema in [
        "RunRecord",
        "RunSummary",
        "WorkerRecord",
        "LogPage",
        "PoolState",
        "ErrorBody",
    ] {
        assert!(schemas.contains_key(schema), "{schema} is described");
    }
}

#[tokio::test]
async fn every_metric_it_exposes_is_documented_and_every_documented_one_is_exposed() {
    let console = Console::start(None).await;
    // Make one of each kind happen, so each labelled metric has a sample.
    let _ = console.get("/api/v1/nothing").send().await.expect("answer");
    let _ = console.get("/").send().await.expect("answer");
    let (status, text) = console
        ._stack
        .admin_get(CONSOLE, "/metrics")
        .await
        .expect("metrics answer");
    assert_eq!(status, 200);
    let exposed: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| name.starts_with("drover_console_"))
        .map(str::to_owned)
        .collect();
    let docs =
        std::fs::read_to_string(drover_testkit::workspace_root().join("docs/observability.md"))
            .expect("docs/observability.md");
    let section = docs
        .split("### drover-console")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("a drover-console section");
    let documented: std::collections::BTreeSet<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|row| row.split('`').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(exposed, documented);
}
