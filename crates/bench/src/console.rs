//! The console under load: how long `drover-console` takes to catch up with a full store,
//! and how fast its pages render then.
//!
//! nats-server, the registry and the scheduler start through the testkit's `Stack` (they
//! create the JetStream resources; no heartbeat-monitor, so the seeded workers are never
//! declared lost), with the log-collector so that a run page's logs are asked of a real
//! one. `--runs` run records and `--workers` worker records (`console/records.rs`) go
//! straight into the buckets, many puts in flight at once (`console/seed.rs`). Then
//! `drover-console` starts from the same directory as the other binaries, and the time
//! until its `/readyz` answers 200 is the catch-up: the console reads both buckets into
//! memory before it is ready. Each page is then fetched `--samples` times, one request at
//! a time over one kept-alive connection, after [`WARM_UP`] untimed ones; p50, p95 and max
//! are from sending the request until the whole body was read. The console's RSS is read
//! from `/proc` after catch-up and after the samples.

mod records;
mod report;
mod seed;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use drover_protocol::subject::{keys, resources};
use drover_protocol::{RegistryGet, RunGet, RunRecord, WorkerRecord};
use drover_testkit::{
    call, free_port, http_get, patient, wait_for, ProcStats, ServiceProcess, Stack,
};
use serde_json::Value;

pub use report::ConsoleReport;
use report::{CatchUp, Memory, PageFigures, SeededFigures, Settings};

/// The console's binary, next to the services'.
const CONSOLE: &str = "drover-console";
/// Untimed requests of each page before the timed ones.
const WARM_UP: usize = 3;
/// How long the console may take to be ready (scaled by `DROVER_TEST_PATIENCE`).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries at starting the console when a port picked as free was taken meanwhile.
const PORT_TRIES: u32 = 5;
/// Characters of an unexpected response body kept in the report.
const BODY_EXCERPT: usize = 300;
/// How long the registry may take to see the seeded workers.
const SERVICES_READ_LIMIT: Duration = Duration::from_secs(30);
/// The services' own defaults, as in a deployment.
const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
const LOST_AFTER_MS: u64 = 15_000;

/// `drover-bench console`: its flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Run records stored before the console starts.
    #[arg(long, default_value_t = 100_000)]
    pub runs: usize,
    /// Worker records stored before the console starts.
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// Timed requests of each page.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
    /// The runs' creation times are spread over this span, ending a minute ago.
    #[arg(long, default_value = "6h")]
    pub span: humantime::Duration,
    /// Where results go (`console.json` and `console.md`).
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

impl ConsoleArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.runs >= 1000,
            "--runs must be 1000 or more (a page of runs and parents with children)"
        );
        anyhow::ensure!(self.workers > 0, "--workers must be 1 or more");
        anyhow::ensure!(self.samples > 0, "--samples must be 1 or more");
        anyhow::ensure!(!self.span.is_zero(), "--span must be above 0");
        Ok(())
    }
}

/// One page to time.
#[derive(Debug, Clone)]
struct Page {
    name: &'static str,
    route: &'static str,
    path: String,
    query: Vec<(&'static str, String)>,
}

impl Page {
    fn new(name: &'static str, route: &'static str, path: impl Into<String>) -> Self {
        Self {
            name,
            route,
            path: path.into(),
            query: Vec::new(),
        }
    }

    fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    fn url(&self, base: &reqwest::Url) -> anyhow::Result<reqwest::Url> {
        let mut url = base.join(&self.path)?;
        if !self.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&self.query);
        }
        Ok(url)
    }
}

/// Runs the benchmark and returns its report (not yet written). A page that did not
/// answer 200 every time is in the report with its status; the caller fails after
/// writing it.
pub async fn run(args: &ConsoleArgs) -> anyhow::Result<ConsoleReport> {
    args.check()?;
    let at = drover_protocol::Timestamp::now().to_string();
    let machine = crate::machine(&crate::nats_server_version());
    let binaries = drover_testkit::bin_dir()?;
    anyhow::ensure!(
        binaries.join(CONSOLE).is_file(),
        "{CONSOLE} not found in {}: build it first (`cargo build --release --bins`)",
        binaries.display()
    );

    let stack = Stack::builder()
        .with_registry()
        .with_scheduler()
        .with_log_collector()
        .heartbeat_interval_ms(HEARTBEAT_INTERVAL_MS)
        .lost_after_ms(LOST_AFTER_MS)
        // Blank reads as unset: each service's own default filter.
        .env("RUST_LOG", "")
        .start()
        .await
        .context("starting nats-server, the registry, the scheduler and the log-collector")?;
    let js = stack.jetstream().await;

    eprintln!("  storing {} runs and {} workers", args.runs, args.workers);
    let plan = records::Plan::new(args.runs, args.workers, args.span.into());
    let seeded = seed::seed(&js, plan).await?;
    let (runs_bucket_messages, runs_bucket_bytes) = stored(&js, resources::RUNS_BUCKET).await?;
    let (workers_bucket_messages, workers_bucket_bytes) =
        stored(&js, resources::WORKERS_BUCKET).await?;
    anyhow::ensure!(
        runs_bucket_messages >= args.runs as u64,
        "KV_{} holds {runs_bucket_messages} messages after {} runs were stored",
        resources::RUNS_BUCKET,
        args.runs
    );
    services_read(&stack, &seeded).await?;
    eprintln!(
        "  stored in {:.1} s ({:.0} runs/s); workers in {:.2} s; KV_{} {:.1} MiB",
        seeded.runs_seconds,
        seeded.runs as f64 / seeded.runs_seconds.max(1e-9),
        seeded.workers_seconds,
        resources::RUNS_BUCKET,
        runs_bucket_bytes as f64 / f64::from(1 << 20),
    );

    let (console, catch_up) = start_console(&stack.nats_url()).await?;
    let after_catch_up = ProcStats::of(console.process.pid()).unwrap_or(ProcStats {
        cpu: Duration::ZERO,
        rss_bytes: 0,
        peak_rss_bytes: 0,
    });
    eprintln!(
        "  {CONSOLE} ready after {:.2} s ({:.2} CPU-s), RSS {:.1} MiB",
        catch_up.as_secs_f64(),
        after_catch_up.cpu.as_secs_f64(),
        after_catch_up.rss_bytes as f64 / f64::from(1 << 20)
    );

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let base = reqwest::Url::parse(&format!("http://{}/", console.listen))?;
    let mut pages = Vec::new();
    for page in pages_to_time(&http, &base, &seeded).await {
        let figures = match page {
            Ok(page) => time_page(&http, &base, &page, args.samples).await?,
            Err(missing) => missing,
        };
        eprintln!(
            "  {:<40} {} p50 {:>8.2} ms  p95 {:>8.2} ms  max {:>8.2} ms  {:>8} bytes{}",
            figures.route,
            figures.status,
            figures.p50_ms,
            figures.p95_ms,
            figures.max_ms,
            figures.bytes,
            figures
                .error
                .as_deref()
                .map(|error| format!("  ({error})"))
                .unwrap_or_default()
        );
        pages.push(figures);
    }
    let after_samples = ProcStats::of(console.process.pid()).ok();

    Ok(ConsoleReport {
        at,
        machine,
        settings: Settings {
            runs: args.runs,
            workers: args.workers,
            samples: args.samples,
            warm_up: WARM_UP,
            span_seconds: Duration::from(args.span).as_secs_f64(),
            binaries: shown_dir(&binaries),
        },
        seeded: SeededFigures {
            runs: seeded.runs,
            failed: seeded.failed,
            cancelled: seeded.cancelled,
            children: seeded.children,
            keyed: seeded.keyed,
            workers: seeded.workers,
            working: seeded.working,
            runs_seconds: seeded.runs_seconds,
            runs_per_second: seeded.runs as f64 / seeded.runs_seconds.max(1e-9),
            workers_seconds: seeded.workers_seconds,
            runs_bucket_messages,
            runs_bucket_bytes,
            workers_bucket_messages,
            workers_bucket_bytes,
        },
        catch_up: CatchUp {
            seconds: catch_up.as_secs_f64(),
            cpu_seconds: after_catch_up.cpu.as_secs_f64(),
        },
        memory: Memory {
            after_catch_up_bytes: after_catch_up.rss_bytes,
            after_samples_bytes: after_samples.map_or(0, |stats| stats.rss_bytes),
            peak_bytes: after_samples.map_or(0, |stats| stats.peak_rss_bytes),
        },
        pages,
    })
}

/// `target/release` rather than the whole path, when it is under the workspace.
fn shown_dir(dir: &std::path::Path) -> String {
    let root = drover_testkit::workspace_root();
    dir.strip_prefix(&root).unwrap_or(dir).display().to_string()
}

/// Checks that the scheduler and the registry read the seeded records as their own: a
/// record they could not decode would make the console's figures meaningless.
async fn services_read(stack: &Stack, seeded: &seed::Seeded) -> anyhow::Result<()> {
    let client = stack.client().await;
    let run: RunRecord = call(
        &client,
        keys::RUN_GET,
        &RunGet {
            run_id: seeded.parent.clone(),
        },
    )
    .await
    .map_err(|error| anyhow::anyhow!("the scheduler's v1.run.get of a seeded run: {error:?}"))?;
    anyhow::ensure!(
        run.status.is_terminal(),
        "the scheduler read {} as {}",
        run.run_id,
        run.status
    );
    wait_for(
        "the registry to read the seeded workers",
        SERVICES_READ_LIMIT,
        || async {
            call::<_, WorkerRecord>(
                &client,
                keys::REGISTRY_GET,
                &RegistryGet {
                    worker_id: seeded.worker.clone(),
                },
            )
            .await
            .ok()
        },
    )
    .await?;
    Ok(())
}

/// Messages and bytes of bucket `bucket`'s stream.
async fn stored(js: &jetstream::Context, bucket: &str) -> anyhow::Result<(u64, u64)> {
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .with_context(|| format!("reading the stream of bucket {bucket}"))?;
    let state = &stream.cached_info().state;
    Ok((state.messages, state.bytes))
}

/// The console's process and where it serves.
struct Console {
    process: ServiceProcess,
    listen: SocketAddr,
}

/// Starts the console and waits until it is ready; returns it and how long that took.
async fn start_console(nats_url: &str) -> anyhow::Result<(Console, Duration)> {
    let limit = patient(CATCH_UP_LIMIT);
    for tries in 1..=PORT_TRIES {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let admin = loop {
            let port = free_port();
            if port != listen.port() {
                break SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            }
        };
        let args = [
            "--listen".to_owned(),
            listen.to_string(),
            "--admin-addr".to_owned(),
            admin.to_string(),
            "--nats-url".to_owned(),
            nats_url.to_owned(),
        ];
        let env = [("RUST_LOG".to_owned(), String::new())];
        let started = Instant::now();
        let mut process = ServiceProcess::start(CONSOLE, &env, &args)?;
        loop {
            if let Ok((200, _)) = http_get(admin, "/readyz").await {
                let catch_up = started.elapsed();
                return Ok((Console { process, listen }, catch_up));
            }
            if process.exit_status().is_some() {
                if process.log_contents().contains("Address already in use") && tries < PORT_TRIES {
                    break;
                }
                anyhow::bail!(
                    "{CONSOLE} exited before it was ready; log tail:\n{}",
                    process.log_tail(40)
                );
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "{CONSOLE} was not ready within {limit:?}; log tail:\n{}",
                process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    anyhow::bail!("{CONSOLE} found no free ports in {PORT_TRIES} tries")
}

/// The pages, in the order timed. The second page of runs needs the first page's
/// `nextCursor` from the API; without it that page is reported as not measured.
async fn pages_to_time(
    http: &reqwest::Client,
    base: &reqwest::Url,
    seeded: &seed::Seeded,
) -> Vec<Result<Page, PageFigures>> {
    let second_page = match next_cursor(http, base).await {
        Ok(cursor) => Ok(
            Page::new("runs_page_2", "/runs?cursor=<nextCursor>", "/runs").query("cursor", cursor),
        ),
        Err(error) => {
            let route = "/runs?cursor=<nextCursor>";
            let mut missing = PageFigures::of("runs_page_2", route, route, Vec::new());
            missing.status = 0;
            missing.error = Some(format!("{error:#}"));
            Err(missing)
        }
    };
    vec![
        Ok(Page::new("overview", "/", "/")),
        Ok(Page::new("runs", "/runs", "/runs")),
        Ok(Page::new("runs_failed", "/runs?status=FAILED", "/runs").query("status", "FAILED")),
        Ok(Page::new(
            "runs_routine",
            "/runs?routine=<the rarest routine>",
            "/runs",
        )
        .query("routine", seeded.rare_routine.clone())),
        second_page,
        Ok(Page::new(
            "run_with_children",
            "/runs/<runID with children>",
            format!("/runs/{}", seeded.parent),
        )),
        Ok(Page::new("workers", "/workers", "/workers")),
        Ok(Page::new(
            "worker",
            "/workers/<workerID>",
            format!("/workers/{}", seeded.worker),
        )),
        Ok(Page::new("api_runs", "/api/v1/runs?limit=50", "/api/v1/runs").query("limit", "50")),
        Ok(Page::new(
            "api_workers",
            "/api/v1/workers",
            "/api/v1/workers",
        )),
    ]
}

/// `nextCursor` of `GET /api/v1/runs`.
async fn next_cursor(http: &reqwest::Client, base: &reqwest::Url) -> anyhow::Result<String> {
    let url = base.join("/api/v1/runs")?;
    let response = http.get(url).send().await.context("GET /api/v1/runs")?;
    let status = response.status().as_u16();
    let body = response.bytes().await.context("reading /api/v1/runs")?;
    anyhow::ensure!(
        status == 200,
        "GET /api/v1/runs answered {status}: {}",
        excerpt(&body)
    );
    let json: Value = serde_json::from_slice(&body).context("/api/v1/runs is not JSON")?;
    json.get("nextCursor")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no nextCursor in /api/v1/runs: {}", excerpt(&body)))
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(BODY_EXCERPT)
        .collect()
}

/// Fetches `page` [`WARM_UP`] times, then `samples` times, timing the latter.
async fn time_page(
    http: &reqwest::Client,
    base: &reqwest::Url,
    page: &Page,
    samples: usize,
) -> anyhow::Result<PageFigures> {
    let url = page.url(base)?;
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut times = Vec::with_capacity(samples);
    let (mut ok, mut status, mut bytes, mut error) = (0, 200, 0, None);
    for request in 0..WARM_UP + samples {
        let started = Instant::now();
        let answer = match http.get(url.clone()).send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                response.bytes().await.map(|body| (code, body))
            }
            Err(failed) => Err(failed),
        };
        let took = started.elapsed();
        match answer {
            Ok((200, body)) => {
                ok += 1;
                bytes = body.len();
            }
            Ok((code, body)) => {
                status = code;
                bytes = body.len();
                error = Some(excerpt(&body));
            }
            Err(failed) => {
                // No answer: the next requests would most likely wait as long again.
                status = 0;
                error = Some(format!("{failed:#}"));
                break;
            }
        }
        if request >= WARM_UP {
            times.push(took);
        }
    }
    let mut figures = PageFigures::of(page.name, page.route, &path, times);
    figures.status = status;
    figures.ok = ok;
    figures.bytes = bytes;
    figures.error = error;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_url_carries_its_query_encoded() {
        let base = reqwest::Url::parse("http://127.0.0.1:1/").expect("a URL");
        let page = Page::new("runs_page_2", "/runs?cursor=<c>", "/runs").query("cursor", "a b&c");
        let url = page.url(&base).expect("a URL");
        assert_eq!(url.as_str(), "http://127.0.0.1:1/runs?cursor=a+b%26c");
        let run = Page::new("run", "/runs/<id>", "/runs/0193a5b2-7c4e");
        assert_eq!(
            run.url(&base).expect("a URL").as_str(),
            "http://127.0.0.1:1/runs/0193a5b2-7c4e"
        );
    }
}
