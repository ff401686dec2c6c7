"""The dashboard in a real headless Chromium, served by `mqi serve` (uvicorn) on 127.0.0.1,
over a store filled by real runs on the dev cluster with `mqi run` as the poller.

Screenshots of every page go to $MQI_TEST_ARTIFACTS (default: pytest's base temp folder,
``web-screenshots``); the test prints where.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqi.bundle import sha256_file
from mqi.testing.synthetic import build_case
from tests.helpers import ROOT, cancel_case_jobs, run_mqi, submit_json

pytestmark = pytest.mark.cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
POLL_SECONDS = 2.0  # the banner shows once the last good poll is 3 x 2 s old


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("MQI_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "web-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the dashboard: {folder}")
    return folder


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mqi", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.stderr.read() if process.stderr else ""


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def get_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def case_statuses(base: str) -> dict[str, str]:
    return {row["case_id"]: row["status"] for row in get_json(f"{base}/api/cases")["cases"]}


def test_dashboard_on_real_runs(
    make_config: Callable[..., Path], tmp_path: Path, unique: str, browser: object, artifacts: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser  # a selenium Chrome
    shot = lambda name: driver.save_screenshot(str(artifacts / f"{name}.png"))  # noqa: E731

    standin = os.environ["MQI_TEST_STANDIN"]
    web = {"refresh_seconds": 1}
    poll = {"interval_seconds": POLL_SECONDS, "lost_grace_seconds": 20}
    # This case's beams run 20 s, so its jobs are still live when the queue page is read and
    # while the case list follows them, however slowly a loaded machine starts the processes.
    config = make_config(poll=poll, web=web, moqui={"command": f"{standin} --seconds 20"})
    good = submit_json(config, build_small(tmp_path, f"Web Good {unique}"))
    # The same store and cluster folder; this case's engine fails beam 2 once (exit 134).
    config = make_config(
        poll=poll, web=web, moqui={"command": f"{standin} --fail-beams 2 --fail-mode 134 --fail-attempts 1"}
    )
    bad = submit_json(config, build_small(tmp_path, f"Web Bad {unique}"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start("serve", "--config", str(config), "--bind", f"127.0.0.1:{port}")
    poller = start("run", "--config", str(config))
    try:
        wait_for("mqi serve", lambda: _answers(base), 60)

        # The queue while the jobs are live, as the poller's last cycle stored them.
        wait_for("a poll cycle", lambda: get_json(f"{base}/api/health")["last_ok_at"] is not None, 120)
        wait_for("a live job", lambda: bool(get_json(f"{base}/api/queue")["jobs"]), 120)
        driver.get(f"{base}/queue")
        assert "This tool's live jobs" in driver.page_source
        assert driver.find_elements(By.CSS_SELECTOR, "table.queue tr[data-job]")
        shot("queue")

        # The case list, opened while the cases run, follows them without a reload (htmx).
        driver.get(f"{base}/cases")
        driver.execute_script("window.mqiNotReloaded = true")
        final = {good["case_id"]: "completed", bad["case_id"]: "failed"}
        WebDriverWait(
            driver, 300, poll_frequency=1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(lambda d: pills(d) == final)
        assert driver.execute_script("return window.mqiNotReloaded") is True, "the page was reloaded"

        # The case list: a completed and a failed case, the failure's reason in its row.
        driver.get(f"{base}/cases")
        rows = {
            row.get_attribute("data-case-id"): row
            for row in driver.find_elements(By.CSS_SELECTOR, "table.cases tbody tr[data-case-id]")
        }
        assert rows[good["case_id"]].find_element(By.CSS_SELECTOR, ".pill").text == "completed"
        assert "2/2" in rows[good["case_id"]].text
        bad_row = rows[bad["case_id"]]
        assert bad_row.find_element(By.CSS_SELECTOR, ".pill").text == "failed"
        status = get_json(f"{base}/api/cases/{bad['case_id']}")
        assert status["error"] and status["error"] in bad_row.text
        assert "1 failed" in bad_row.text
        assert not driver.find_elements(By.CSS_SELECTOR, ".banner.stale"), "the poller is running"
        shot("cases")
        if os.environ.get("MQI_SCREENSHOT_FOR_README"):  # the small picture in README.md
            driver.set_window_size(1100, 550)
            driver.save_screenshot(os.environ["MQI_SCREENSHOT_FOR_README"])
            driver.set_window_size(1360, 900)
        driver.get(f"{base}/cases?status=failed")
        assert bad["case_id"] in listed(driver) and good["case_id"] not in listed(driver)
        driver.get(f"{base}/cases?q=Web_Good_{unique}")
        assert listed(driver) == [good["case_id"]]

        # The failed case's page: its beams with Slurm's answer, and its audit trail.
        driver.get(f"{base}/cases/{bad['case_id']}")
        beams = {
            b.get_attribute("data-beam"): b for b in driver.find_elements(By.CSS_SELECTOR, "tr[data-beam]")
        }
        assert set(beams) == {"1", "2"}
        assert "completed" in beams["1"].text
        assert "failed" in beams["2"].text and "134" in beams["2"].text
        trail = driver.find_element(By.CSS_SELECTOR, "table.events").text
        assert "submitted" in trail and "failed" in trail
        shot("case-failed")
        first_jobs = {job["job_id"] for job in status["jobs"]}
        beam1_job = next(b["job_id"] for b in status["beams"] if b["number"] == 1)

        # Retry from the page: only beam 2 goes back to Slurm, then the case completes.
        driver.find_element(By.ID, "retry").click()
        WebDriverWait(driver, 30).until(lambda d: "Retry submitted" in d.page_source)
        shot("case-retried")
        wait_for(
            "the retried case to complete", lambda: case_statuses(base)[bad["case_id"]] == "completed", 300
        )
        after = get_json(f"{base}/api/cases/{bad['case_id']}")
        new_jobs = [job for job in after["jobs"] if job["job_id"] not in first_jobs]
        assert sorted(job["step"] for job in new_jobs) == ["post", "simulate"]
        simulate = next(job for job in new_jobs if job["step"] == "simulate")
        beam2 = next(b for b in after["beams"] if b["number"] == 2)
        index = beam2["job_id"].removeprefix(f"{simulate['job_id']}_")
        assert simulate["array_indices"] == index, "only the failed beam is resubmitted"
        assert next(b["job_id"] for b in after["beams"] if b["number"] == 1) == beam1_job
        driver.get(f"{base}/cases/{bad['case_id']}")
        assert driver.find_element(By.ID, "case-status").text == "completed"
        assert "mqi retry of beam(s) 2" in driver.find_element(By.CSS_SELECTOR, "table.events").text
        shot("case-completed-after-retry")
        # The QA answer of the delivered case: its verdict, figures and the report inline.
        verdict = driver.find_element(By.ID, "qa-verdict").text
        assert verdict in ("pass", "review", "fail", "not-compared")
        if verdict != "not-compared":
            assert driver.find_elements(By.ID, "report-link") and driver.find_elements(
                By.CSS_SELECTOR, "object.report"
            )
            assert driver.find_elements(By.CSS_SELECTOR, "table.qa-figures tbody tr")
        driver.get(f"{base}/cases")
        good_row = driver.find_element(By.CSS_SELECTOR, f"tr[data-case-id='{good['case_id']}']")
        assert good_row.find_elements(By.CSS_SELECTOR, ".pill[class*='qa-']"), "the list shows the QA verdict"
        shot("cases-with-qa")
        driver.get(f"{base}/cases/{bad['case_id']}")

        # Downloads: one file and the zip of all results, byte for byte.
        driver.get(f"{base}/cases/{good['case_id']}")
        results = Path(get_json(f"{base}/api/cases/{good['case_id']}")["results_dir"])
        link = driver.find_element(By.LINK_TEXT, "RD.beam1.dcm").get_attribute("href")
        assert get_bytes(link) == (results / "RD.beam1.dcm").read_bytes()
        archive = zipfile.ZipFile(
            io.BytesIO(get_bytes(driver.find_element(By.ID, "download").get_attribute("href")))
        )
        summary = json.loads(archive.read(f"{good['case_id']}/summary.json"))
        for name, digest in summary["files"].items():
            assert archive.read(f"{good['case_id']}/{name}") == (results / name).read_bytes()
            assert sha256_file(results / name) == digest
        shot("case-completed")

        # The poller stops: within a few poll intervals the open page says so by itself.
        driver.get(f"{base}/cases")
        assert not driver.find_elements(By.CSS_SELECTOR, ".banner.stale")
        stop(poller)
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".banner.stale"))
        assert "has not finished a cycle since" in driver.find_element(By.CSS_SELECTOR, ".banner.stale").text
        shot("cases-stale-poll")

        metrics = get_bytes(f"{base}/metrics").decode()
        assert 'mqi_cases{status="completed"} 2.0' in metrics
        assert 'mqi_poll_cycles_total{outcome="ok"}' in metrics and "mqi_uploaded_bytes_total" in metrics
        log = (Path(tmp_path) / "state" / "logs" / "mqi.log").read_text()
        assert f"case {bad['case_id']} (uid {bad['case_uid']}) beam 2" in log and "-> failed" in log
        history = json.loads(run_mqi("history", bad["case_id"], "--config", str(config), "--json").stdout)
        assert history["schema"] == "mqi.history/1"
        assert any(e["reason"] == "mqi retry of beam(s) 2" for e in history["events"])
    finally:
        stop(poller)
        errors = stop(server)
        for outcome in (good, bad):
            cancel_case_jobs(outcome["case_uid"])
        assert "Traceback" not in errors, errors
    for name in ("cases", "case-failed", "case-completed-after-retry", "cases-stale-poll", "queue"):
        assert (artifacts / f"{name}.png").stat().st_size > 10_000


def build_small(root: Path, name: str) -> Path:
    folder = root / name
    build_case(folder, ct_shape=(32, 32, 20), layers=2, spots_per_layer=9)
    return folder


def pills(driver: object) -> dict[str, str]:
    """Case id -> the status shown in the case list."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "table.cases tr[data-case-id]")  # type: ignore[attr-defined]
    return {
        row.get_attribute("data-case-id"): row.find_element(By.CSS_SELECTOR, ".pill").text for row in rows
    }


def listed(driver: object) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "table.cases tr[data-case-id]")  # type: ignore[attr-defined]
    return [row.get_attribute("data-case-id") for row in rows]


def _answers(base: str) -> bool:
    try:
        get_json(f"{base}/api/health")
    except OSError:
        return False
    return True
