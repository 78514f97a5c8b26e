"""The dashboard in real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

A store made by a real (reduced) `selfplay run`; the dashboard served by `selfplay dashboard` in a
subprocess; the browser goes runs → a run's round plots → a round → its pairs → a pair, and saves a
screenshot of each page (the path is printed; SELFPLAY_TEST_ARTIFACTS overrides where they go).
A hand-built win-rate run checks that the win rate's ±2 SE band is drawn where its points are.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.heavy

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# test_loop_e2e.SMALL: the default tiny model on small rounds (its SFT is cached per session).
SMALL = {
    "run": {"name": "small", "seed": 0, "rounds": 2},
    "task": {"prompts_per_round": 64, "heldout_size": 100},
    "generation": {"samples_per_prompt": 4, "prompts_per_batch": 16},
    "pairing": {"max_pairs_per_prompt": 2},
    "training": {"nll_weight": 1.0, "batch_size": 4, "max_steps": 60, "epochs": 8},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"dashboard did not answer at {url} in {timeout}s")


@contextmanager
def _dashboard(db: str) -> Iterator[str]:
    """`selfplay dashboard` of the store `db` in a subprocess; yields its base URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "selfplay", "dashboard", "--db", db, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/", server)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    assert not missing, f"{missing} missing: apt-get install -y chromium chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_browse_runs_round_plots_and_a_pair(tmp_path, browser):
    from selenium.webdriver.common.by import By

    cfg = yaml.safe_load(yaml.safe_dump(SMALL))
    cfg["run"]["output_dir"] = str(tmp_path / "run")
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = subprocess.run(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr

    db = f"sqlite:///{tmp_path / 'run' / 'selfplay.db'}"
    shots = Path(os.environ.get("SELFPLAY_TEST_ARTIFACTS", tmp_path / "artifacts")) / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with _dashboard(db) as base:

            def shot(name: str) -> None:
                assert browser.save_screenshot(str(shots / f"{name}.png"))

            browser.get(base + "/")
            assert "Runs" in browser.find_element(By.TAG_NAME, "h1").text
            shot("1-runs")

            browser.find_element(By.CSS_SELECTOR, "a.run-link").click()
            assert browser.find_element(By.TAG_NAME, "h1").text == "Run small"
            charts = browser.find_elements(By.CSS_SELECTOR, "#plots svg.chart")
            assert len(charts) >= 5
            assert all(c.size["width"] > 300 and c.size["height"] > 150 for c in charts)
            # The accuracy plot has a point for the initial policy and each of the 2 rounds.
            assert len(charts[0].find_elements(By.TAG_NAME, "circle")) == 3
            shot("2-run-round-plots")

            browser.find_elements(By.CSS_SELECTOR, "a.round-link")[-1].click()
            assert "round 1" in browser.find_element(By.TAG_NAME, "h1").text
            assert browser.find_elements(By.CSS_SELECTOR, "#plots svg.chart")  # training curves
            shot("3-round")

            browser.find_element(By.ID, "round-pairs").click()
            links = browser.find_elements(By.CSS_SELECTOR, "a.pair-link")
            assert links, "round 1 has no pairs"
            links[0].click()
            assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Pair ")
            chosen = browser.find_element(By.ID, "chosen").text
            rejected = browser.find_element(By.ID, "rejected").text
            assert "verifier" in chosen and "verifier" in rejected and "checkpoint" in chosen
            shot("4-pair")

            browser.get(base + "/pairs/999999999")
            assert "404" in browser.find_element(By.TAG_NAME, "h1").text
            shot("5-not-found")
    finally:
        print(f"dashboard screenshots: {shots}")
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "1-runs.png",
        "2-run-round-plots.png",
        "3-round.png",
        "4-pair.png",
        "5-not-found.png",
    ]


def test_the_win_rate_plot_draws_its_2_se_band_around_its_points(tmp_path, browser):
    from selenium.webdriver.common.by import By

    from tests.conftest import make_open_ended, seed_store

    db = f"sqlite:///{tmp_path / 'store.db'}"
    seed_store(db)
    make_open_ended(db, "win_rate")
    shots = Path(os.environ.get("SELFPLAY_TEST_ARTIFACTS", tmp_path / "artifacts")) / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    with _dashboard(db) as base:
        browser.get(base + "/runs/1")
        (chart,) = browser.find_elements(
            By.CSS_SELECTOR, '#plots svg.chart[aria-label^="held-out win rate"]'
        )
        (band,) = chart.find_elements(By.CSS_SELECTOR, "polygon.band")
        box = band.rect
        points = {
            c.find_element(By.TAG_NAME, "title").get_attribute("textContent"): c.rect
            for c in chart.find_elements(By.TAG_NAME, "circle")
        }
        painted = band.value_of_css_property("fill-opacity")
        assert browser.save_screenshot(str(shots / "win-rate-band.png"))
        browser.get(base + "/runs/1/rounds/0")
        figure = browser.find_element(By.CSS_SELECTOR, "#win-rate td").text
        assert browser.save_screenshot(str(shots / "win-rate-round.png"))
    assert figure == "0.600 ± 0.050"
    print(f"win-rate band screenshot: {shots / 'win-rate-band.png'}")
    assert float(painted) > 0
    # Laid out: the band spans rounds 0 to 1 and covers both points (±2 SE: 0.1 and 0.08), and
    # not the initial policy's, which has no SE.
    for name in ("win rate @ 0: 0.6", "win rate @ 1: 0.7"):
        r = points[name]
        cx, cy = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
        assert box["x"] - 1 <= cx <= box["x"] + box["width"] + 1
        assert box["y"] + 5 < cy < box["y"] + box["height"] - 5
    initial = points["win rate @ -1: 0.5"]
    assert initial["x"] + initial["width"] < box["x"]
