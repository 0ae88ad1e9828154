"""The console in a browser: headless Chromium, driven by selenium, against a real stack
(nats-server, the four services, the console with a token) and a real worker written with
the Python SDK, running in the test's own event loop.

Selenium blocks, so every browser call runs on a thread of its own (:class:`Browser`): the
event loop, and with it the worker's pulses and routines, keeps going while the browser
works. Waits are the harness's :func:`wait_for` (timeouts scaled by DROVER_TEST_PATIENCE);
a window in which nothing may happen is :func:`quiet_window`.

Needs ``chromium`` and ``chromedriver`` (Debian's ``chromium-driver``; scripts/test installs
them) or ``DROVER_CHROMIUM`` / ``DROVER_CHROMEDRIVER``; skipped without them, except under
``CI=true``, where their absence fails the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator, Optional

import pytest

from console_support import TOKEN, ConsoleApi, start_console, start_worker, stop_workers
from drover_harness import Stack, quiet_window, request_failed, wait_for, wait_until
from drover_worker import Context, Fail, Worker

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

WORKER = "browser-worker"
#: The console's default Jaeger UI, which run pages link their traces to.
JAEGER_URL = "http://localhost:16686"


# ---------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------


def chromium_paths() -> tuple[Optional[str], Optional[str]]:
    """Chromium and its chromedriver: ``DROVER_CHROMIUM`` / ``DROVER_CHROMEDRIVER``, else ``PATH``."""
    browser = os.environ.get("DROVER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("DROVER_CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


@pytest.fixture(scope="module")
def chromium() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module's tests (each test clears its cookies)."""
    browser, driver = chromium_paths()
    if not browser or not driver:
        missing = "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        # scripts/test installs them under CI: a missing browser there is a failure, not a skip.
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


class Browser:
    """The console in Chromium. Every selenium call runs on one thread of its own, one at a
    time, so that the event loop is never blocked; reads are single scripts, so that a live
    update cannot happen halfway through one."""

    def __init__(self, driver: webdriver.Chrome, base_url: str):
        self.driver = driver
        self.base_url = base_url
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selenium")

    async def do(self, fn: Any, *args: Any) -> Any:
        """Runs a selenium call on the browser's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.do(self.driver.execute_script, source, *args)

    async def open(self, path: str) -> None:
        """Loads a page of the console and waits until its live stream, if it has one, is open."""
        await self.do(self.driver.get, self.base_url + path)
        live = await self.script('return document.querySelector(\'meta[name="drover-live"]\') !== null')
        if live:
            await self.wait("the page's live stream to open", "return document.documentElement.dataset.live === 'open'")

    async def path(self) -> str:
        return urllib.parse.urlsplit(await self.do(lambda: self.driver.current_url)).path

    async def texts(self, selector: str) -> list[str]:
        """The text of every element the selector finds, in document order."""
        return await self.script(
            "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent.trim())", selector
        )

    async def count(self, selector: str) -> int:
        return await self.script("return document.querySelectorAll(arguments[0]).length", selector)

    async def number(self, selector: str) -> Optional[int]:
        """The number one element shows (a count), or ``None`` without that element."""
        texts = await self.texts(selector)
        return int(texts[0]) if texts else None

    async def wait(self, what: str, source: str, *args: Any, timeout: float = 10) -> Any:
        """Waits until a script returns something truthy; that value."""
        return await wait_for(what, lambda: self.script(source, *args), timeout)

    async def wait_present(self, selector: str, timeout: float = 10) -> None:
        await wait_until(f"{selector} on the page", lambda: self.count(selector), timeout)

    async def click(self, selector: str) -> None:
        await self.do(lambda: self.driver.find_element(By.CSS_SELECTOR, selector).click())

    async def fill(self, selector: str, text: str) -> None:
        def fill() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, selector)
            field.clear()
            field.send_keys(text)

        await self.do(fill)

    async def value(self, selector: str) -> str:
        return await self.script("return document.querySelector(arguments[0]).value", selector)

    async def mark(self) -> None:
        """Marks the loaded page: a reload (or another page) would lose the mark."""
        await self.script("window.__marker = 1")

    async def still_marked(self) -> bool:
        return await self.script("return window.__marker === 1")

    async def response_status(self) -> int:
        """The HTTP status of the page's own response."""
        return await self.script("return performance.getEntriesByType('navigation')[0].responseStatus")

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        """A form POST from the page, with whatever cookies the browser has: status and body."""
        return await self.do(
            lambda: self.driver.execute_async_script(
                """
                const [path, form, done] = arguments;
                fetch(path, {method: 'POST', body: new URLSearchParams(form), redirect: 'manual'})
                  .then(async r => done([r.status, await r.text()]), e => done([0, String(e)]));
                """,
                path,
                form,
            )
        )

    async def sign_in(self, token: str = TOKEN) -> None:
        """Signs in on /login; back on the overview, the header offers to submit a run."""
        await self.open("/login")
        await self.fill("input[name=token]", token)
        await self.click("#login")
        await self.wait("to be signed in, on the overview", "return location.pathname === '/' && !!document.getElementById('new-run')")

    async def describe(self) -> str:
        """Where the browser is and what it shows, for a failure report."""
        try:
            url = await self.do(lambda: self.driver.current_url)
            text = await self.script("return document.body ? document.body.innerText : ''")
            return f"browser at {url}:\n{text[:3000]}"
        except Exception as error:
            return f"(the browser cannot say where it is: {error!r})"

    def close(self) -> None:
        self._thread.shutdown(wait=True)


# ---------------------------------------------------------------------------------------
# The stack and the worker
# ---------------------------------------------------------------------------------------


class Routines:
    """What the worker's routines report, and the gate a test opens to let ``ui.parent`` go on."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.at_gate: set[str] = set()  # runIDs of ui.parent waiting for the gate
        self.started: set[str] = set()  # runIDs of ui.forever that are running
        self.cancelled: dict[str, Optional[str]] = {}  # runID -> the cancel's reason

    def add_to(self, worker: Worker) -> Worker:
        @worker.routine("ui.echo")
        async def echo(ctx: Context, params: Any) -> Any:
            await ctx.log("info", "echoing")
            return params

        @worker.routine("ui.fail")
        async def fail(ctx: Context, params: Any) -> Any:
            raise Fail("asked to fail")

        @worker.routine("ui.child")
        async def child(ctx: Context, params: Any) -> Any:
            return {"child": params["n"]}

        @worker.routine("ui.parent")
        async def parent(ctx: Context, params: Any) -> Any:
            first = await ctx.run_child("ui.child", {"n": 1}, local_id="child-1")
            await ctx.log("info", "first line")
            self.at_gate.add(ctx.run_id)
            await self.gate.wait()
            second = await ctx.run_child("ui.child", {"n": 2}, local_id="child-2")
            await ctx.log("info", "second line")
            return {"children": [first, second]}

        @worker.routine("ui.forever")
        async def forever(ctx: Context, params: Any) -> Any:
            self.started.add(ctx.run_id)
            await ctx.log("info", "running until cancelled")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled[ctx.run_id] = ctx.cancel_reason
                raise

        return worker


class Console:
    """A stack with the console, its API, the test's workers and their routines."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.api = ConsoleApi(stack.console_url)
        self.routines = Routines()
        self.workers: list[Worker] = []

    async def start_worker(self, worker_id: str, capacity: int = 4) -> Worker:
        worker = Worker(worker_id, nats_url=self.stack.url, capacity=capacity, request_timeout=1.0)
        self.workers.append(self.routines.add_to(worker))
        return await start_worker(self.stack, self.api, worker)

    async def stored_runs(self) -> int:
        """Runs in the DROVER_RUNS bucket: what the scheduler has stored, whatever the console says."""
        nc = await self.stack.client()
        try:
            bucket = await nc.jetstream().key_value("DROVER_RUNS")
            return (await bucket.status()).values
        finally:
            await nc.close()

    async def wait_running(self, run_id: str) -> dict:
        """Waits until ``ui.forever`` runs ``run_id`` and the console lists it RUNNING."""
        await wait_until(f"ui.forever to run {run_id}", lambda: run_id in self.routines.started)
        await self.api.wait_listed(run_id, {"RUNNING"})
        return await self.api.run(run_id)


@pytest.fixture
async def console(stack) -> AsyncIterator[Console]:
    c = Console(await start_console(stack))
    try:
        await c.start_worker(WORKER)
        yield c
    finally:
        c.routines.gate.set()  # a parent still held must not hold the worker's stop
        await stop_workers(c.workers)


@pytest.fixture
async def browser(request: pytest.FixtureRequest, chromium: webdriver.Chrome, console: Console) -> AsyncIterator[Browser]:
    b = Browser(chromium, console.stack.console_url)
    try:
        await b.do(chromium.execute_cdp_cmd, "Network.clearBrowserCookies", {})
        yield b
    finally:
        if request_failed(request):
            print(await b.describe())
        await b.do(chromium.get, "about:blank")  # closes the page's live stream
        b.close()


def row(selector: str, attribute: str, value: str) -> str:
    return f'{selector}[{attribute}="{value}"]'


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------


async def test_the_overview_shows_the_workers_and_the_runs_as_they_change(console: Console, browser: Browser):
    await console.start_worker(f"{WORKER}-2", capacity=1)
    await browser.open("/")
    await browser.mark()

    succeeded = [await console.api.submit("ui.echo", {"n": n}) for n in range(3)]
    failed = await console.api.submit("ui.fail", None)
    pending = await console.api.submit("ui.nobody", None)  # no worker has it: it waits
    for run_id in [*succeeded, failed]:
        await console.api.wait_listed(run_id)

    # The live region catches up without a reload: every run, by its state, and both workers.
    async def shown() -> bool:
        return (
            all([await browser.count(row("#recent-runs tr", "data-run-id", r)) for r in [*succeeded, failed, pending]])
            and await browser.number('#runs-by-state b[data-count="SUCCEEDED"]') == 3
            and await browser.number('#runs-by-state b[data-count="FAILED"]') == 1
            and await browser.number('#runs-by-state b[data-count="PENDING"]') == 1
            and await browser.number('#workers-by-status b[data-count="IDLE"]') == 2
        )

    await wait_until("the overview to show the runs and the workers", shown)
    assert await browser.still_marked(), "the overview was reloaded instead of updated live"
    for state in ("ASSIGNED", "RUNNING", "CANCELLED"):
        assert await browser.number(f'#runs-by-state b[data-count="{state}"]') == 0, state
    assert await browser.count(row("#recent-runs tr", "data-run-id", failed) + ' .badge[data-status="FAILED"]') == 1
    assert await browser.count(row("#recent-runs tr", "data-run-id", pending) + ' .badge[data-status="PENDING"]') == 1
    for worker_id in (WORKER, f"{WORKER}-2"):
        assert await browser.count(row("#workers tr", "data-worker-id", worker_id) + ' .badge[data-status="IDLE"]') == 1
    # The same counts as the API, and a row for each service (found by discovery every 3 s).
    overview = await console.api.get("/overview")
    assert overview["runsByState"]["SUCCEEDED"] == 3 and overview["runsTotal"] == 5, overview
    for name in ("drover-registry", "drover-heartbeat-monitor", "drover-scheduler", "drover-log-collector"):
        await browser.wait_present(row("#services tr", "data-service", name))
    assert await browser.still_marked()


async def test_a_run_page_shows_attempts_children_and_logs_as_they_arrive(console: Console, browser: Browser):
    run_id = await console.api.submit("ui.parent", {"from": "the browser test"})
    await console.api.wait_run(run_id, {"RUNNING"})
    await browser.open(f"/runs/{run_id}")
    await browser.mark()

    # Held at the gate: the first line (which only the stream brings), the first child, the
    # attempt in progress on the worker.
    await browser.wait("the first log line", "return Array.from(document.querySelectorAll('#logs .log-line .message'), e => e.textContent).includes('first line')")
    children = (await console.api.get(f"/runs/{run_id}/children"))["runs"]
    assert len(children) == 1, children
    await browser.wait_present(row("#children li", "data-run-id", children[0]["runID"]) + ' .badge[data-status="SUCCEEDED"]')
    assert await browser.count('#status .badge[data-status="RUNNING"]') == 1
    attempt = row("#attempts tr", "data-attempt", "1")
    assert await browser.texts(f"{attempt} td:nth-child(2)") == [WORKER]
    assert await browser.texts(f"{attempt} .outcome") == ["in progress"]
    record = await console.api.run(run_id)
    assert await browser.script("return document.getElementById('trace-link').href") == f"{JAEGER_URL}/trace/{record['traceID']}"

    console.routines.gate.set()
    await browser.wait_present('#status .badge[data-status="SUCCEEDED"]')
    await browser.wait("the second log line", "return Array.from(document.querySelectorAll('#logs .log-line .message'), e => e.textContent).includes('second line')")
    children = (await console.api.get(f"/runs/{run_id}/children"))["runs"]
    assert len(children) == 2, children
    for child in children:
        await browser.wait_present(row("#children li", "data-run-id", child["runID"]) + ' .badge[data-status="SUCCEEDED"]')
    await browser.wait_present(f'{attempt} .outcome .badge[data-status="SUCCEEDED"]')
    assert await browser.count("#attempts tr[data-attempt]") == 1
    assert await browser.still_marked(), "the run page was reloaded instead of updated live"
    # Each line once, in order, though the page follows the logs in polls.
    assert await browser.texts("#logs .log-line .message") == ["first line", "second line"]
    record = await console.api.run(run_id)
    assert record["status"] == "SUCCEEDED" and record["result"] == {"children": [{"child": 1}, {"child": 2}]}, record


async def test_cancelling_from_the_run_page_cancels_the_run(console: Console, browser: Browser):
    run_id = await console.api.submit("ui.forever", None)
    await console.wait_running(run_id)
    await browser.sign_in()
    await browser.open(f"/runs/{run_id}")
    assert await browser.count('#status .badge[data-status="RUNNING"]') == 1
    await browser.fill("#cancel-form input[name=reason]", "stopped from the browser")
    await browser.click("#cancel")

    record = await console.api.wait_run(run_id, {"CANCELLED"})
    assert record["failureReason"] == "cancelled", record
    assert record["transitions"][-1]["reason"] == "stopped from the browser", record["transitions"]
    await wait_until("the routine to be cancelled", lambda: run_id in console.routines.cancelled)
    # Back on the run's page (the form redirects there), which shows the run ended.
    await browser.wait_present('#status .badge[data-status="CANCELLED"]')
    assert await browser.path() == f"/runs/{run_id}"
    assert await browser.texts("#failure-reason") == ["cancelled"]
    assert await browser.count("#cancel") == 0
    assert await browser.count("#resubmit") == 1


async def test_a_submit_with_invalid_json_shows_the_error_and_submits_nothing(console: Console, browser: Browser):
    await browser.sign_in()
    await browser.open("/runs/new")
    await browser.fill("input[name=routineID]", "ui.echo")
    await browser.fill("textarea[name=params]", '{"a": 1,')
    await browser.fill("input[name=idempotencyKey]", "browser-bad-json")
    stored = await console.stored_runs()
    total = (await console.api.get("/overview"))["runsTotal"]
    await browser.click("#submit")

    error = await browser.wait("the form's error", "const e = document.getElementById('form-error'); return e && e.textContent")
    assert "invalid_json" in error, error
    assert await browser.response_status() == 400
    assert await browser.value("textarea[name=params]") == '{"a": 1,', "the form lost what was typed"
    await quiet_window(1.0)
    assert await console.stored_runs() == stored, "a run was stored from invalid JSON"
    assert (await console.api.get("/overview"))["runsTotal"] == total
    assert (await console.api.get("/runs?q=browser-bad-json"))["runs"] == []

    # Corrected, it submits, and the browser lands on the new run's page.
    await browser.fill("textarea[name=params]", '{"a": 1}')
    await browser.fill("input[name=idempotencyKey]", "browser-good-json")
    await browser.click("#submit")
    path = await browser.wait("the new run's page", "return location.pathname.startsWith('/runs/') && location.pathname !== '/runs/new' && location.pathname")
    run_id = path.removeprefix("/runs/")
    assert await browser.texts("h1 .mono") == [run_id]
    assert await browser.texts("#run-facts dd a[href^='/runs?routine=']") == ["ui.echo"]
    record = await console.api.wait_run(run_id, {"SUCCEEDED"})
    assert record["params"] == {"a": 1} and record["result"] == {"a": 1}, record
    assert record["idempotencyKey"] == "browser-good-json", record
    assert await console.stored_runs() == stored + 1


async def test_without_signing_in_a_run_cannot_be_cancelled(console: Console, browser: Browser):
    run_id = await console.api.submit("ui.forever", None)
    before = await console.wait_running(run_id)
    await browser.open(f"/runs/{run_id}")
    assert await browser.count('#status .badge[data-status="RUNNING"]') == 1
    assert await browser.count("#sign-in") == 1
    assert await browser.count("#cancel") == 0 and await browser.count("#cancel-form") == 0
    assert await browser.count("#new-run") == 0

    # The cancel URL refuses the browser without its cookie, and the API refuses a client
    # without the token.
    status, body = await browser.post(f"/runs/{run_id}/cancel", {"reason": "not allowed"})
    assert status == 403 and 'id="error"' in body and "not_permitted" in body, (status, body[:500])
    status, error = await console.api.json("POST", f"/api/v1/runs/{run_id}/cancel", {"reason": "not allowed"}, auth=False)
    assert status == 403 and error["code"] == "not_permitted", error
    status, error = await console.api.json("POST", "/api/v1/runs", {"routineID": "ui.echo"}, auth=False)
    assert status == 403 and error["code"] == "not_permitted", error

    await quiet_window(1.0)
    after = await console.api.run(run_id)
    assert after["status"] == "RUNNING" and after["transitions"] == before["transitions"], after
    assert run_id not in console.routines.cancelled
    assert await browser.count('#status .badge[data-status="RUNNING"]') == 1


async def test_a_run_page_catches_up_with_what_happened_before_its_stream_opened(console: Console, browser: Browser):
    run_id = await console.api.submit("ui.parent", None)
    await wait_until("ui.parent to wait at the gate", lambda: run_id in console.routines.at_gate)
    # The page renders the run RUNNING; its script, which opens the stream, is held back, as
    # a slow network would hold it (or as when the run ends just after the page was served).
    await browser.do(browser.driver.execute_cdp_cmd, "Network.enable", {})
    await browser.do(browser.driver.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": ["*/assets/console.js"]})
    try:
        await browser.do(browser.driver.get, f"{browser.base_url}/runs/{run_id}")
    finally:
        await browser.do(browser.driver.execute_cdp_cmd, "Network.setBlockedURLs", {"urls": []})
    assert await browser.count('#status .badge[data-status="RUNNING"]') == 1
    assert "live" not in await browser.script("return document.documentElement.dataset")
    console.routines.gate.set()
    await console.api.wait_run(run_id, {"SUCCEEDED"})
    await browser.script(
        "const s = document.createElement('script'); s.src = '/assets/console.js?late'; document.head.appendChild(s)"
    )
    await browser.wait("the stream to open", "return document.documentElement.dataset.live === 'open'")
    await browser.wait_present('#status .badge[data-status="SUCCEEDED"]')
    assert await browser.count("#children li[data-run-id]") == 2


async def test_a_run_page_catches_up_after_the_console_restarts(console: Console, browser: Browser):
    run_id = await console.api.submit("ui.forever", None)
    await console.wait_running(run_id)
    await browser.open(f"/runs/{run_id}")
    await browser.mark()
    await browser.wait("the run's log line", "return document.querySelectorAll('#logs .log-line').length === 1")

    # While the console is away, the run is cancelled through the scheduler itself.
    console.stack.kill_service("console")
    await browser.wait("the stream to be lost", "return document.documentElement.dataset.live === 'retrying'")
    nc = await console.stack.client()
    try:
        request = {"payloadKey": "v1.run.cancel", "payload": {"runID": run_id, "reason": "console away"}}
        reply = json.loads((await nc.request("v1.run.cancel", json.dumps(request).encode(), timeout=5)).data)
    finally:
        await nc.close()
    assert reply["payloadKey"] == "v1.run.record" and reply["payload"]["status"] == "CANCELLED", reply
    await console.stack.restart_service("console")

    # The browser reconnects by itself, and the page shows the run as it is now.
    await browser.wait("the stream to reconnect", "return document.documentElement.dataset.live === 'open'", timeout=20)
    await browser.wait_present('#status .badge[data-status="CANCELLED"]')
    await browser.wait("the log line again", "return document.querySelectorAll('#logs .log-line').length > 0")
    await quiet_window(1.0)  # two polls of the logs: a line sent twice would show by now
    assert await browser.texts("#logs .log-line .message") == ["running until cancelled"]
    assert await browser.still_marked(), "the page was reloaded instead of reconnected"
