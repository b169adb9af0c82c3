"""The dashboard as a user sees it: `streamlit run` as a real process against the real gateway, each page
loaded in headless Chromium (Debian's package, through Playwright), a screenshot of each saved to a
temporary folder (``LM_DASHBOARD_SCREENSHOTS`` to keep them somewhere known)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import RunningGateway, TwoVersions
from testsupport import free_port, wait_http

from learning_machine.embedded.processes import is_healthy

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# What each page shows once its data has loaded.
PAGES = {"patients": "records", "clinician": "Predicted risk", "data-scientist": "Model versions"}


@contextmanager
def _streamlit(gateway: RunningGateway, folder: Path) -> Iterator[str]:
    """`streamlit run` of the dashboard against ``gateway`` (signed in as its admin), its URL; stopped at the end."""
    port = free_port()
    env = {**os.environ, "LM_DASHBOARD_GATEWAY_URL": gateway.url, "LM_TOKEN": gateway.tokens["admin"],
           "LM_HOME": str(folder / "home")}
    with open(folder / "streamlit.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
                                 "--server.headless", "true", "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_stcore/health", 90)
        assert is_healthy(url + "/_stcore/health")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def dashboard_url(history_gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _streamlit(history_gateway, tmp_path_factory.mktemp("dash")) as url:
        yield url


def _loaded(page: Any, url: str, marker: str) -> str:
    """Open ``url``, wait until ``marker`` shows and the script has finished; the page's text."""
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text(marker).first.wait_for(timeout=90_000)
    # Streamlit shows a "running" indicator until the script has finished.
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=90_000)
    page.wait_for_timeout(1500)  # tables and charts draw on canvases after the script has finished
    body = str(page.inner_text("body"))
    assert "Traceback" not in body and "Could not" not in body, body[:2000]
    return body


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make browsers)")
def test_every_page_loads_in_a_browser(dashboard_url: str, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    folder = Path(os.environ.get("LM_DASHBOARD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    timings = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        for name, marker in PAGES.items():
            started = time.perf_counter()
            _loaded(page, f"{dashboard_url}/?page={name}", marker)
            timings[name] = time.perf_counter() - started
            page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        browser.close()
    print(f"screenshots in {folder}; load seconds {timings}")
    assert {p.name for p in folder.glob("*.png")} >= {f"{n}.png" for n in PAGES}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make browsers)")
def test_the_model_facts_label_of_the_first_and_a_retrained_version_in_a_browser(
        record_gateway: tuple[RunningGateway, TwoVersions], tmp_path: Path):
    """The clinician sees the label of the version that serves (the retrained one); the data scientist the label
    of either version, the retrained one with what changed from the first, and each one's change record."""
    from playwright.sync_api import sync_playwright

    gateway, two = record_gateway
    folder = Path(os.environ.get("LM_DASHBOARD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    with _streamlit(gateway, tmp_path) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        _loaded(page, f"{url}/?page=clinician", "the version that answers now")
        page.get_by_text("the version that answers now").first.click()  # open the label
        page.get_by_text("Subgroup performance").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        body = str(page.inner_text("body"))
        assert f"v{two.retrained}" in body and "Warnings" in body and "Validation and performance" in body
        page.screenshot(path=str(folder / "label-clinician.png"), full_page=True)
        # Streamlit scrolls inside its own container: a page tall enough to hold the whole label section.
        page.set_viewport_size({"width": 1400, "height": 8000})
        body = _loaded(page, f"{url}/?page=data-scientist&version={two.first}", "Model facts label and change record")
        page.get_by_text("no earlier label to compare with").first.wait_for(timeout=30_000)
        body = str(page.inner_text("body"))
        assert "there was no champion to compare it with" in body and "verified" in body
        assert "Download the label (Markdown)" in body and "Download the label (HTML)" in body
        _open_record(page)
        page.screenshot(path=str(folder / f"label-v{two.first}.png"), full_page=True)
        _loaded(page, f"{url}/?page=data-scientist&version={two.retrained}", "Model facts label and change record")
        page.get_by_text(f"What changed from v{two.first} to v{two.retrained}").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        body = str(page.inner_text("body"))
        assert f"Against the champion it was compared with (v{two.first})" in body and "verified" in body
        _open_record(page)
        page.screenshot(path=str(folder / f"label-v{two.retrained}.png"), full_page=True)
        browser.close()
    print(f"screenshots in {folder}")


def _open_record(page: Any) -> None:
    """Open the change record's expander and wait for the record's sections."""
    page.get_by_text("The change record (immutable) and its rollout").first.click()
    page.get_by_text('"evaluation"').first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    body = str(page.inner_text("body"))
    assert all(f'"{s}"' in body for s in ("plan", "data", "training", "decision", "rollout")), body[-3000:]

