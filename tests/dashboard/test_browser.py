"""The dashboard as a user sees it: `streamlit run` as a real process against the real gateway, each page
loaded in headless Chromium (Debian's package, through Playwright), a screenshot of each saved to a
temporary folder (``LM_DASHBOARD_SCREENSHOTS`` to keep them somewhere known)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_harness import RunningGateway
from testsupport import free_port, wait_http

from learning_machine.embedded.processes import is_healthy

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# What each page shows once its data has loaded.
PAGES = {"patients": "records", "clinician": "Predicted risk", "data-scientist": "Model versions"}


@pytest.fixture(scope="module")
def dashboard_url(history_gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "LM_DASHBOARD_GATEWAY_URL": history_gateway.url,
           "LM_TOKEN": history_gateway.tokens["admin"], "LM_HOME": str(tmp_path_factory.mktemp("dash-home"))}
    log = tmp_path_factory.mktemp("dash-log") / "streamlit.log"
    with open(log, "wb") as out:
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
            page.goto(f"{dashboard_url}/?page={name}", wait_until="domcontentloaded")
            page.get_by_text(marker).first.wait_for(timeout=90_000)
            # Streamlit shows a "running" indicator until the script has finished.
            page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=90_000)
            timings[name] = time.perf_counter() - started
            page.wait_for_timeout(1500)  # tables and charts draw on canvases after the script has finished
            body = page.inner_text("body")
            assert "Traceback" not in body and "Could not" not in body, body[:2000]
            page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        browser.close()
    print(f"screenshots in {folder}; load seconds {timings}")
    assert {p.name for p in folder.glob("*.png")} >= {f"{n}.png" for n in PAGES}
