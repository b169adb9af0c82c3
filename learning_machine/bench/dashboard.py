"""The dashboard benchmark (section ``dashboard`` of `lm bench`): is it responsive with 10,000 stored
predictions? It starts MLflow, the model server and the gateway (SQLite) on free ports, trains a small
model, sends 10,000 records through the API in batches (outcomes for most), lets the real monitor assess
every window (drift through the model server, quality, realised performance), then measures each page:

* the Streamlit script run under ``AppTest`` (the server-side cost of one page view: the gateway calls,
  the frames and the charts), and
* a full page load in headless Chromium against `streamlit run` (what a user waits for), when Debian's
  chromium is installed.

Medians over a few repetitions; everything is stopped at the end."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from learning_machine.bench.report import free_port, require_extra

Progress = Callable[[str], None]
PAGES = {"patients": "records", "clinician": "Predicted risk", "data-scientist": "Model versions"}
CHROMIUM = "/usr/bin/chromium"
APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def run(quick: bool, progress: Progress) -> dict[str, Any]:
    require_extra("playwright")
    from learning_machine.clients.gateway import LearningMachineClient
    from learning_machine.data.sources import load_dataset
    from learning_machine.embedded.processes import ProcessManager
    from learning_machine.embedded.stack import mlflow_service, start_serving
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.loop.service import LoopService
    from learning_machine.loop.stream import StreamPlan, generated_records, run_stream
    from learning_machine.registry.tracker import Tracker
    from learning_machine.settings import Settings

    rows, repeats = (2_000, 1) if quick else (10_000, 3)
    with tempfile.TemporaryDirectory(prefix="lm-bench-dashboard-") as tmp:
        home = Path(tmp)
        settings = Settings(
            home=home, mlflow_port=free_port(), mlflow_workers=1, model_name=f"bench-dash-{uuid.uuid4().hex[:6]}",
            train_rows=1500, model_server_port=free_port(), model_server_grpc_port=free_port(),
            model_server_metrics_port=free_port(), gateway_port=free_port(),
            database_url=f"sqlite:///{home / 'lm.db'}", monitor_window_rows=200, monitor_performance_rows=400,
            policy_cooldown_s=0.0)
        settings = settings.model_copy(update={"mlflow_tracking_uri": settings.tracking_uri})
        manager = ProcessManager(settings.run_dir)
        try:
            progress("dashboard bench: starting MLflow, training a small model, starting the model server")
            manager.start(mlflow_service(settings.model_copy(update={"mlflow_tracking_uri": None})), timeout_s=240)
            tracker = Tracker(settings.tracking_uri)
            train_and_register(settings, tracker, load_dataset("synthetic-cohort", n_rows=1500, seed=3),
                               promote="if-first")
            tokens = start_serving(settings, manager, timeout_s=300)
            with LearningMachineClient(settings.gateway_url, tokens["data-scientist"], timeout_s=120) as client:
                progress(f"dashboard bench: storing {rows:,} predictions through the API")
                started = time.perf_counter()
                source = generated_records(rows, seed=7, scenario="covariate-shift", drift_start=rows // 2,
                                           id_prefix="b-")
                report = run_stream(client, source, StreamPlan(rows=rows, batch_size=500, outcome_delay_rows=200))
                insert_s = time.perf_counter() - started
                with LearningMachineClient(settings.gateway_url, tokens["monitor"], timeout_s=120) as monitor:
                    loop = LoopService(settings, monitor, tracker=tracker)
                    loop.monitor.trigger = None  # decisions are recorded as events; no retraining in a benchmark
                    loop.step()
            progress(f"dashboard bench: {report.summary()}; measuring pages")
            env = {"LM_DASHBOARD_GATEWAY_URL": settings.gateway_url, "LM_TOKEN": tokens["admin"],
                   "LM_HOME": str(home)}
            apptest = _apptest_times(env, repeats)
            browser = _browser_times(env, repeats) if Path(CHROMIUM).exists() else {}
        finally:
            for name in ("gateway", "model-server", "mlflow"):
                manager.stop(name)
    return {"rows": rows, "predicted": report.predicted, "outcomes": report.outcomes_sent, "insert_s": insert_s,
            "repeats": repeats, "apptest": apptest, "browser": browser}


def _apptest_times(env: dict[str, str], repeats: int) -> dict[str, list[float]]:
    from streamlit.testing.v1 import AppTest

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out: dict[str, list[float]] = {}
    try:
        for page in PAGES:
            times = []
            # One AppTest per page: its first run also scans every installed package for Streamlit
            # components (~3 s here), which is AppTest's cost, not the page's; it is not counted.
            at = AppTest.from_file(str(APP), default_timeout=300)
            at.query_params["page"] = page
            for _ in range(repeats + 1):
                started = time.perf_counter()
                at.run()
                times.append(time.perf_counter() - started)
                if at.exception:
                    raise RuntimeError(f"page {page} raised: {at.exception[0].value}")
            out[page] = times[1:]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def _browser_times(env: dict[str, str], repeats: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    from learning_machine.embedded.processes import is_healthy

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {}
    try:
        deadline = time.monotonic() + 90
        while not is_healthy(url + "/_stcore/health"):
            if time.monotonic() > deadline:
                raise RuntimeError("streamlit did not start")
            time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            for page_name, marker in PAGES.items():
                times = []
                for _ in range(repeats + 1):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    started = time.perf_counter()
                    page.goto(f"{url}/?page={page_name}", wait_until="domcontentloaded")
                    page.get_by_text(marker).first.wait_for(timeout=120_000)
                    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                           timeout=120_000)
                    times.append(time.perf_counter() - started)
                    page.close()
                out[page_name] = times[1:]
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def to_section(result: dict[str, Any], quick: bool) -> Any:
    from learning_machine.bench.report import Section

    section = Section(f"Dashboard page load with {result['rows']:,} stored predictions",
                      ["page", "AppTest script run, median s", "min s", "max s", "browser load, median s",
                       "min s", "max s"])
    for page in PAGES:
        a = result["apptest"].get(page, [])
        b = result["browser"].get(page, [])
        section.rows.append([page, *(_stats(a)), *(_stats(b) if b else ["n/a"] * 3)])
    section.notes = [
        f"{result['predicted']:,} predictions and {result['outcomes']:,} outcomes stored through the API in "
        f"{result['insert_s']:.1f} s (batches of 500), then one monitor pass over every window.",
        "AppTest: one server-side run of the page's script (gateway calls, frames, charts); browser: headless "
        "Chromium from navigation until the page's content is shown and Streamlit has stopped running the "
        f"script. Median of {result['repeats']} after one warm-up run.",
    ]
    section.raw = result
    return section


def _stats(times: list[float]) -> list[Any]:
    if not times:
        return ["n/a"] * 3
    return [statistics.median(times), min(times), max(times)]
