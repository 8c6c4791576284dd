"""The dashboard in a real browser (headless Debian Chromium, driven by Selenium through chromedriver): a sim
lab of three workers with keys on; the page asks for the admin key, then shows three hosts; after one agent is
killed its card shows it down within 5 s. The test saves a screenshot and fails on any console error."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SIM_MODEL, Cluster, agent_config, run_cli, start_cluster, stop_cluster, wait_until

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (as root: bash deploy/system-packages.sh install)",
)
DOWN_WITHIN_S = 5.0


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # Headless, and nothing that reaches beyond this machine (its network is closed: each try is an error).
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def gated_trio(tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    agents = [
        agent_config("sim", SIM_MODEL, tmp_path / "logs", sim_options=(("decode-ms-per-token", "3"),)) for _ in range(3)
    ]
    cluster = start_cluster(tmp_path, agents, gateway_db=str(tmp_path / "gateway.db"), policy="round_robin")
    try:
        made = run_cli(["keys", "create", "--team", "ops", "--admin"], tmp_path, timeout_s=60)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        wait_until(
            lambda: httpx.get(cluster.url + "/orchard/workers", timeout=5).status_code == 401, 5, "keys to be on"
        )
        assert _get(cluster, "/orchard/workers", key).status_code == 200
        yield cluster, key
    finally:
        stop_cluster(cluster)


def _get(cluster: Cluster, path: str, key: str) -> httpx.Response:
    return httpx.get(cluster.url + path, headers={"authorization": f"Bearer {key}"}, timeout=10)


def _traffic(cluster: Cluster, key: str, team_requests: int = 6) -> None:
    for i in range(team_requests):
        body = {
            "model": SIM_MODEL,
            "messages": [{"role": "user", "content": f"hi {i}"}],
            "max_tokens": 24,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            cluster.url + "/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"authorization": f"Bearer {key}"},
        ) as response:
            assert response.status_code == 200 and list(response.iter_lines())


_READ = """
const [selector, what] = arguments;
const all = document.querySelectorAll(selector);
if (what === "count") return all.length;
const e = all[0];
if (!e) return what === "shown" ? false : "";
if (what === "shown") return e.offsetParent !== null;
return what === "class" ? e.className : e.innerText;
"""


def _read(driver: object, selector: str, what: str) -> Any:
    """What the page shows, read in one step inside the page: the dashboard re-renders its cards every second,
    and an element found in one call may be gone (stale) by the next."""
    return driver.execute_script(_READ, selector, what)  # type: ignore[attr-defined]


def test_the_dashboard_shows_three_hosts_then_one_down_within_5s(
    browser: object, gated_trio: tuple[Cluster, str], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    cluster, key = gated_trio
    driver.get(cluster.url + "/dashboard")
    wait = WebDriverWait(driver, 10, poll_frequency=0.1)
    wait.until(lambda d: _read(d, "#login", "shown"))  # keys are on: it asks first
    assert _read(driver, ".card", "count") == 0
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait.until(lambda d: _read(d, '.card[data-state="ready"]', "count") == 3)
    assert not _read(driver, "#login", "shown")
    _traffic(cluster, key)
    wait.until(lambda d: "ops" in _read(d, "#teams", "text"))  # usage by team
    wait.until(lambda d: "tok/s" in _read(d, "#now-tokens", "text"))

    victim = next(c for c in cluster.fleet.children if c.name == "agent-1")
    worker = next(
        w["worker_id"]
        for w in _get(cluster, "/orchard/workers", key).json()["workers"]
        if w["address"] == cluster.agents[1].listen
    )
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    card = f'.card[data-worker="{worker}"]'
    WebDriverWait(driver, DOWN_WITHIN_S, poll_frequency=0.05).until(lambda d: "down" in _read(d, card, "class"))
    took = time.monotonic() - killed
    assert "unreachable" in _read(driver, card, "text")
    assert _read(driver, '.card[data-state="ready"]', "count") == 2
    assert "2 of 3 workers ready" in _read(driver, "#status", "text")

    shot = tmp_path / "dashboard.png"
    assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot: {shot}; card down {took:.2f} s after the agent was killed")
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]  # type: ignore[attr-defined]
    assert not errors, errors
