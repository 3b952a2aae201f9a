"""The console in a real browser (Debian chromium, headless, driven by Selenium) against
a real api, worker and relay: log in, find a job by its ref, open it, retry a dead job
and see it succeed, cancel a batch, retry dead jobs in bulk, and stay inside a tenant.

Every page visited is saved as a PNG under this module's temporary directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import ConsoleStack
from tests.faults.stack import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - dev dependency missing
    webdriver = None

if webdriver is None or CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("browser tests need selenium and Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver; .ci/run installs them)",
                allow_module_level=True)

#: Headless and quiet: no GPU, no QUIC, no background traffic or updates, a fresh profile.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1400")

EVALUATE = {"cycles": [
    {"left": {"text": "ship the release on friday after review", "confidence": 0.7},
     "right": {"text": "ship the release next week after careful review", "confidence": 0.8}},
    {"left": {"text": "ship the release on friday after the review", "confidence": 0.85},
     "right": {"text": "ship the release on friday after careful review", "confidence": 0.9}},
    {"left": {"text": "ship the release on friday after review", "confidence": 0.95},
     "right": {"text": "ship the release on friday after review", "confidence": 0.95}},
], "config": {"risk_threshold": 0.95, "quality_improvement_threshold": 0.0}}


class Browser:
    """A Chromium session on the console that saves a screenshot of each page it checks."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base, shots

    def open(self, path: str) -> None:
        """Go to a console path."""
        self.driver.get(self.base + path)

    def el(self, css: str) -> Any:
        """The element matching css (waiting for it to appear)."""
        wait_for(css, lambda: self.driver.find_elements(By.CSS_SELECTOR, css), 30)
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The visible text of the element matching css (found again if a live region
        replaced it meanwhile)."""
        for _ in range(10):
            try:
                return str(self.el(css).text)
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being replaced")

    def wait_text(self, css: str, part: str, timeout: float = 30) -> None:
        """Wait until the element matching css shows part (the page may still be loading)."""
        try:
            wait_for(f"{part!r} in {css}", lambda: part in self.text(css), timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it shows {self.text(css)!r}") from None

    def shot(self, name: str) -> Path:
        """Save the page as name.png."""
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def login(self, key: str) -> None:
        """Log in through the form."""
        self.open("/console/login")
        self.el("#key").send_keys(key)
        self.el("#login").click()
        self.el("#lanes")

    def logout(self) -> None:
        """Log out with the header's button."""
        self.el("#logout").click()
        self.el("#key")


@pytest.fixture(scope="module")
def browser(stack: ConsoleStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Headless Debian chromium with a fresh profile."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    shots = tmp_path_factory.mktemp("console-screenshots")
    try:
        yield Browser(driver, stack.api_url, shots)
    finally:
        driver.quit()


def _dead_then_fine(stack: ConsoleStack) -> int:
    """A job whose only attempt was lost with its frozen worker (lease expired: dead); it
    runs fine once retried, as after a crash whose cause is gone."""
    job = stack.submit(stack.keys["a"], kind="test_sleep", params={"seconds": 0.5},
                       max_attempts=1, ref="flaky-4712")
    stack.wait_status(job, "running")
    with stack.paused_worker():
        stack.wait_status(job, "dead")
    return job


def test_find_a_job_by_ref_and_open_it(stack: ConsoleStack, browser: Browser) -> None:
    job = stack.submit(stack.keys["a"], kind="encode", params={"text": "hello console"},
                       ref="order-4711")
    stack.wait_status(job, "succeeded")
    browser.login(stack.keys["a"])
    browser.shot("01-overview-tenant")
    browser.open("/console/jobs")
    Select(browser.el("#field")).select_by_value("ref")
    browser.el("#q").send_keys("order-4711")
    browser.el("#search").click()
    browser.el(f'a[href="/console/jobs/{job}"]')
    browser.shot("02-jobs-search-by-ref")
    browser.el(f'a[href="/console/jobs/{job}"]').click()
    assert browser.text("#job-ref") == "order-4711"
    assert browser.text("#job-status") == "succeeded"
    assert "chain verifies" in browser.text("#audit-verified")
    assert "hello console" in browser.text("#params")
    assert "page_sha256" in browser.text("#result")
    browser.shot("03-job-succeeded")


def test_the_overview_updates_live(stack: ConsoleStack, browser: Browser) -> None:
    browser.open("/console")
    cell = "#lanes tr:nth-child(2) td:nth-child(3)"  # encode, high: queued
    assert browser.text(cell) == "0"
    with stack.paused_worker():
        for i in range(2):
            stack.submit(stack.keys["a"], kind="encode", params={"text": f"live {i}"},
                         priority="high")
        browser.wait_text(cell, "2")  # no reload: the page fetched its live part again
        browser.shot("01b-overview-live-backlog")
    browser.wait_text(cell, "0", timeout=90)  # the worker, thawed, runs them


def test_an_evaluate_job_shows_its_decision_cycles_and_chart(stack: ConsoleStack,
                                                              browser: Browser) -> None:
    job = stack.submit(stack.keys["a"], kind="evaluate", params=EVALUATE)
    stack.wait_status(job, "succeeded")
    browser.open(f"/console/jobs/{job}")
    assert "CONVERGENCE_ACHIEVED" in browser.text("#decision")
    assert len(browser.driver.find_elements(By.CSS_SELECTOR, "#cycles tr")) == 1 + 3
    assert len(browser.driver.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) == 3
    browser.driver.execute_script("document.getElementById('decision').scrollIntoView()")
    browser.shot("04-job-evaluate")


def test_retry_a_dead_job_and_see_it_succeed(stack: ConsoleStack, browser: Browser) -> None:
    job = _dead_then_fine(stack)
    browser.open(f"/console/jobs/{job}")
    assert browser.text("#job-status") == "dead"
    assert "LeaseExpired" in browser.text("#error")
    browser.shot("05-job-dead")
    browser.el("#retry").click()
    assert browser.text("#notice") == "Queued again."

    def succeeded() -> bool:
        browser.open(f"/console/jobs/{job}")
        return browser.text("#job-status") == "succeeded"

    wait_for("the retried job to succeed", succeeded, 60, every=0.5)
    actors = [a for t, a in stack.audit_actors(job) if t == "retried"]
    assert actors == [f"key:{stack.key_id('a')}"]
    assert "retried" in browser.text("#audit") and "chain verifies" in browser.text("h2 .ok")
    browser.shot("06-job-retried-succeeded")


def test_cancel_a_batch(stack: ConsoleStack, browser: Browser) -> None:
    lines = [{"kind": "encode", "params": {"text": f"batch line {i}"}} for i in range(20)]
    lines.append({"kind": "encode", "params": {}})  # rejected: no text
    with stack.paused_worker():
        with stack.client(stack.keys["a"]) as c:
            batch = c.post("/v1/batches", json={"jobs": lines}).json()["id"]
        browser.open(f"/console/batches/{batch}")
        assert browser.text("#count-queued") == "20"
        assert "21" in browser.text("#rejected") and "text" in browser.text("#rejected")
        browser.shot("07-batch-queued")
        browser.el("#cancel-batch").click()
        browser.driver.switch_to.alert.accept()  # the confirmation step
        assert "cancelled" in browser.text("#notice")
    assert browser.text("#count-cancelled") == "20"
    assert browser.text("#batch-percent") == "100.0 %"
    browser.shot("08-batch-cancelled")


def test_bulk_retry_of_dead_jobs_with_a_confirmation(stack: ConsoleStack,
                                                     browser: Browser) -> None:
    jobs = [stack.submit(stack.keys["a"], kind="test_fail", params={"message": "bulk"},
                         max_attempts=1, ref="bulk-browser") for _ in range(3)]
    for job in jobs:
        stack.wait_status(job, "dead")
    browser.open("/console/jobs?status=dead&field=ref&q=bulk-browser")
    browser.shot("09-jobs-dead")
    browser.el("#bulk-retry").click()
    assert "3" in browser.text("#bulk-count")
    browser.shot("10-bulk-retry-confirm")
    browser.el("#confirm-retry").click()
    assert "3" in browser.text("#bulk-done")
    assert all(("retried", f"key:{stack.key_id('a')}") in stack.audit_actors(j) for j in jobs)


def test_another_tenant_cannot_reach_these_pages(stack: ConsoleStack, browser: Browser) -> None:
    job = stack.submit(stack.keys["a"], kind="encode", params={"text": "private"},
                       ref="order-secret")
    browser.logout()
    browser.login(stack.keys["b"])
    browser.open(f"/console/jobs/{job}")
    assert "not found" in browser.text("#error-message")
    browser.shot("11-other-tenant-404")
    browser.open("/console/jobs?field=ref&q=order-secret")
    assert browser.el("#no-jobs")
    browser.logout()


def test_an_admin_sees_every_tenant_and_picks_one(stack: ConsoleStack, browser: Browser) -> None:
    browser.login(stack.keys["admin"])
    assert "console-a" in browser.text("#per-tenant") and "console-b" in browser.text(
        "#per-tenant")
    browser.shot("12a-overview-admin-all-tenants")
    Select(browser.el("#tenant")).select_by_visible_text("console-a")
    browser.driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
    browser.wait_text("h1", "console-a")
    browser.el("#lanes")
    browser.shot("12b-overview-admin-one-tenant")
    browser.open("/console/jobs?field=ref&q=order-4711")
    assert browser.text("#jobs").count("order-4711") == 1
    browser.logout()
