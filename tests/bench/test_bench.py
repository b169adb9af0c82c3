"""The benchmark harness (`lm bench`): the report writer with a real, cheap section (training at tiny
sizes), failure isolation, the plots of the loop section from its raw numbers, and unknown section names.
The real benchmarks are `make bench` / `make bench-quick`, not part of the test suite."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from learning_machine.bench import harness as bench
from learning_machine.bench.harness import add_figures, bench_training, check_sections, run_benchmarks, write_report
from learning_machine.bench.report import Section
from learning_machine.errors import BenchmarkError, UnknownNameError

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_training(quick: bool, progress: Any) -> Section:
    return bench_training(quick, progress, sizes=[400, 1_200])


def _referenced_pngs(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)


def test_report_from_a_real_training_section(tmp_path: Path) -> None:
    messages: list[str] = []
    section = tiny_training(True, messages.append)
    add_figures("training", section, tmp_path, messages.append)
    report = write_report(tmp_path, {"training": section}, quick=True, started=time.time(), elapsed=3.0)

    text = report.read_text()
    assert "## Training time versus rows" in text and "## Summary" in text
    pngs = _referenced_pngs(text)
    assert pngs == ["training_time_vs_rows.png"]
    assert (tmp_path / pngs[0]).read_bytes().startswith(PNG)
    assert "1,200" in text and "make bench-quick" in text

    results = json.loads((tmp_path / "results.json").read_text())
    raw = results["sections"]["training"]["raw"]
    assert set(raw["loglog_slope"]) == {"xgboost", "logistic-regression"}
    assert raw["runs"]["xgboost/1200"]["median"] > 0
    assert results["machine"]["cpus"] >= 1 and results["sections"]["training"]["figures"] == pngs

    summary = (tmp_path / "summary.md").read_text()
    assert "Training xgboost, 1,200 rows" in summary and "rows^" in summary
    assert any("training xgboost on 1,200 rows" in m for m in messages)


def test_a_failed_section_is_reported_and_the_others_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(quick: bool, progress: Any) -> Section:
        raise RuntimeError("server did not start")

    def tinier_training(quick: bool, progress: Any) -> Section:
        return bench_training(quick, progress, sizes=[300, 600], kinds=("logistic-regression",))

    monkeypatch.setattr(bench, "SECTIONS", {"training": tinier_training, "serving": broken})
    messages: list[str] = []
    with pytest.raises(BenchmarkError, match="serving"):
        run_benchmarks(tmp_path, quick=True, progress=messages.append)
    text = (tmp_path / "report.md").read_text()
    assert "## Training time versus rows" in text
    assert "RuntimeError: server did not start" in text
    assert (tmp_path / "training_time_vs_rows.png").exists()
    assert any(m.startswith("benchmarks finished in") for m in messages)


def test_profiling_is_asked_for_one_run_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--profile` reaches the sections of its own run (the serving section reads LM_BENCH_PROFILE) and no later
    run in the same process."""
    import os

    from learning_machine.bench.profile import PROFILE_ENV

    seen: list[str | None] = []

    def section(quick: bool, progress: Any) -> Section:
        seen.append(os.environ.get(PROFILE_ENV))
        return Section("serving", [])

    monkeypatch.delenv(PROFILE_ENV, raising=False)
    monkeypatch.setattr(bench, "SECTIONS", {"serving": section})
    run_benchmarks(tmp_path / "profiled", only=["serving"], progress=lambda _: None, profile=True)
    run_benchmarks(tmp_path / "plain", only=["serving"], progress=lambda _: None)
    assert seen == [str((tmp_path / "profiled" / "profiles").resolve()), None]
    assert PROFILE_ENV not in os.environ


def test_loop_plots_and_summary_read_the_keys_present(tmp_path: Path) -> None:
    raw = {"false_alarms_per_10k": {"runs": [0], "per_10k": 0.0},
           "covariate-shift": {"delays": [200, 400, None], "bound_rows": 150.0, "auc_before": [0.70, 0.72],
                               "auc_retrained": [0.80], "auc_oracle": [0.82], "rules": ["drift"], "new_key": 1},
           "concept-drift": {"delays": [None], "bound_rows": 90.0},
           "missingness-spike": {"auc_before": [0.75], "auc_extra": [0.9]},
           "recovery": {"concept-drift": {"rate": 20.0, "rows_to_fire": 35, "seconds_to_serving": 382.6}}}
    section = Section("Learning loop", ["scenario"], raw=raw)
    add_figures("loop", section, tmp_path)
    assert [name for name, _ in section.figures] == ["loop_delay_vs_bound.png", "loop_auc.png"]
    assert all((tmp_path / name).read_bytes().startswith(PNG) for name, _ in section.figures)

    write_report(tmp_path, {"loop": section}, quick=False, started=time.time(), elapsed=60.0)
    summary = (tmp_path / "summary.md").read_text()
    assert "delay 300 rows (2/3 seeds)" in summary and "2.0x CUSUM bound" in summary
    assert "not detected (0/1 seeds)" in summary and "make bench`" in summary
    assert "concept-drift (20 rows/s) | fire after 35 rows; serving after 383 s" in summary


def test_an_unknown_section_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as caught:
        run_benchmarks(tmp_path / "out", only=["training", "servng"])
    for name in bench.SECTIONS:
        assert name in caught.value.message
    assert "servng" in caught.value.message
    assert not (tmp_path / "out").exists()
    assert check_sections(["loop", "training"]) == ["training", "loop"]
    assert check_sections(None) == list(bench.SECTIONS)
    assert set(check_sections(None, quick=True)) == set(bench.SECTIONS) - set(bench.FULL_ONLY)
    assert check_sections(["pipelines"], quick=True) == ["pipelines"]


def test_the_pipelines_section_has_a_retraining_case_beside_training(tmp_path: Path) -> None:
    """The section built from measurements (the real ones take an MLflow server and four pipeline runs):
    retraining rows with their own ratio, raw keys, per-step tables, the summary row and the plot."""
    steps = {"open-pipeline-run": 0.1, "ingest": 0.2, "retrain": 1.5, "evaluate": 0.5}
    times = {"direct": [9.0, 11.0], "kfp.local": [12.0, 14.0], "retraining direct": [4.0, 6.0],
             "retraining kfp.local": [6.0, 7.0]}
    per_step = {key: [{**steps, "ingest-2": 0.1}] * 2 if key.startswith("retraining") else [steps] * 2
                for key in times}
    gates = {"retraining direct": [{"promoted": True, "reason": "better"}] * 2,
             "retraining kfp.local": [{"promoted": True, "reason": "better"}] * 2}
    section = bench.pipelines_section(times, per_step, statuses={"training": {"train": "SUCCEEDED"},
                                                                 "retraining": {"retrain": "SUCCEEDED"}},
                                      gates=gates, labels={"training": "1,500", "retraining": "1,500 new"})
    rows = {row[0]: row for row in section.rows}
    assert list(rows) == ["direct", "kfp.local", "retraining direct", "retraining kfp.local"]
    assert rows["retraining kfp.local"][5] == pytest.approx(6.5 / 5.0)  # against its own direct calls
    assert rows["kfp.local"][5] == pytest.approx(13.0 / 10.0)
    raw = section.raw
    assert raw["retraining_overhead_ratio"] == pytest.approx(1.3) and raw["overhead_ratio"] == pytest.approx(1.3)
    assert raw["retraining kfp.local"]["median"] == 6.5 and raw["retraining_steps"] == {"retrain": "SUCCEEDED"}
    assert raw["step_seconds"]["retraining kfp.local"]["ingest-2"] == 0.1
    assert [t.title for t in section.tables] == ["Training pipeline per step (median s)",
                                                 "Retraining pipeline per step (median s)"]
    assert "retraining kfp.local promoted" in " ".join(section.notes)

    add_figures("pipelines", section, tmp_path)
    assert [name for name, _ in section.figures] == ["pipelines_overhead.png"]
    assert (tmp_path / "pipelines_overhead.png").read_bytes().startswith(PNG)
    write_report(tmp_path, {"pipelines": section}, quick=True, started=time.time(), elapsed=30.0)
    summary = (tmp_path / "summary.md").read_text()
    assert "Retraining pipeline under kfp.local | 6.5 s | 1.3x the same steps called directly (5.0 s)" in summary
    assert "Training pipeline under kfp.local | 13.0 s | 1.3x" in summary
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(bench.PIPELINE_MODES) <= set(results["sections"]["pipelines"]["raw"])


def _stats(p50: float, p99: float, rows: int = 1) -> dict[str, float]:
    return {"p50": p50, "p99": p99, "mean": p50, "min": 0.8 * p50, "max": 1.2 * p99, "n": 100.0,
            "rows_per_s": rows * 1000 / p50}


def _rates(at8: float, at32: float) -> dict[str, dict[str, float]]:
    return {"1": {"rps": at8 / 2, "requests": at8, "errors": 0.0}, "8": {"rps": at8, "requests": 8 * at8, "errors": 0.0},
            "32": {"rps": at32, "requests": 8 * at32, "errors": 0.0}}


def _soak(acknowledged: int, failures: dict[str, int], predictions: int, records: int) -> dict[str, Any]:
    return {"prefix": "soak-0a1b2c3d", "clients": 32, "seconds": 60.0, "elapsed_s": 61.0,
            "acknowledged": acknowledged, "failed": sum(failures.values()), "failures": failures,
            "rps": acknowledged / 61.0, "p50": 30.0, "p99": 80.0, "stored_predictions": predictions,
            "stored_records": records, "stored_equals_acknowledged": predictions == records == acknowledged}


def serving_raw() -> dict[str, Any]:
    """Made-up measurements of the serving section: the SQLite gateway meets every target; the PostgreSQL
    one misses all but one (32-client throughput), its soak failing three requests and losing a prediction."""
    from learning_machine.bench.serving import BUILTIN, FAST, GATEWAY, GATEWAY_PG, OURS

    single = {OURS: _stats(5.0, 9.0), BUILTIN: _stats(20.0, 40.0), GATEWAY: _stats(6.0, 12.0),
              GATEWAY_PG: _stats(7.5, 30.0), FAST: _stats(1.0, 2.0)}
    per_1000 = {OURS: _stats(20.0, 25.0, 1000), BUILTIN: _stats(40.0, 50.0, 1000),
                GATEWAY: _stats(33.0, 40.0, 1000), GATEWAY_PG: _stats(50.0, 70.0, 1000)}
    return {"latency": single, "batch": {"1": single, "1000": per_1000},
            "throughput": {OURS: _rates(200.0, 180.0), BUILTIN: _rates(50.0, 40.0), GATEWAY: _rates(150.0, 120.0),
                           GATEWAY_PG: _rates(90.0, 100.0)},
            "soak": {GATEWAY: _soak(6_000, {}, 6_000, 6_000), GATEWAY_PG: _soak(5_400, {"HTTP 503": 3}, 5_399, 5_400)},
            "explain": {"exact (XGBoost TreeSHAP, via MLServer)": _stats(7.0, 12.0),
                        "exact, in-process (the attribution computation)": _stats(1.0, 2.0),
                        "anchors (AnchorTabular, via MLServer)": _stats(90.0, 150.0)},
            "notes": [], "skipped": {},
            "settings": {"n_latency": 600, "seconds": 8.0, "soak_seconds": 60.0, "soak_clients": 32}}


def test_the_serving_section_judges_each_gateway_against_direct_mlserver(tmp_path: Path) -> None:
    """Both gateways' targets from synthetic raw numbers (the real section takes every server): met and
    NOT met per target and backend, in the notes, the soak table, the summary rows and the plots."""
    from learning_machine.bench import serving
    from learning_machine.bench.serving import GATEWAY, GATEWAY_PG

    raw = serving_raw()
    raw["stages"] = {"1000": {GATEWAY: {"request": 20.0, "validate": 3.0, "wait": 0.1, "model": 9.0, "store": 5.0,
                                        "rest": 2.9, "store_ahead": 6.0, "requests": 25.0, "groups": 25.0}}}
    checks = serving.gateway_checks(raw)
    assert [c.what for c in checks[GATEWAY]] == [
        "one row, p50 overhead over MLServer direct", "one row, p99 over its own p50", "requests/s, 8 clients",
        "requests/s, 32 clients", "rows/s in batches of 1,000", "soak, 32 clients for 60 s"]
    assert [c.met for c in checks[GATEWAY]] == [True] * 6
    assert [c.met for c in checks[GATEWAY_PG]] == [False, False, False, True, False, False]
    assert checks[GATEWAY_PG][0].result == "2.50 ms" and checks[GATEWAY][2].versus.startswith("0.75x")

    section = serving.to_section(raw, quick=False)
    notes = " ".join(section.notes)
    assert (f"Targets of the {GATEWAY}: one row, p50 overhead over MLServer direct: 1.00 ms (p50 6.00 ms vs "
            "5.00 ms; target <= 1.5 ms) -> met") in notes
    assert "one row, p99 over its own p50: 4.00x (p99 30.00 ms, p50 7.50 ms; target <= 3x) -> NOT met" in notes
    assert "requests/s, 8 clients: 90 (0.45x MLServer direct (200); target >= 0.5x) -> NOT met" in notes
    assert [row[0] for row in section.rows if row[0] in (GATEWAY, GATEWAY_PG)] == [GATEWAY, GATEWAY_PG]
    soak = next(t for t in section.tables if t.title.startswith("Soak"))
    assert [row[0] for row in soak.rows] == [GATEWAY, GATEWAY_PG]
    assert soak.rows[1][5] == "HTTP 503: 3" and soak.rows[1][8] == "NO" and soak.rows[0][8] == "yes"
    stages = next(t for t in section.tables if t.title.startswith("Where a gateway request's time goes"))
    assert stages.rows == [[GATEWAY, "1,000", 25, 20.0, 3.0, 0.1, 9.0, 5.0, 2.9, 6.0]]

    add_figures("serving", section, tmp_path)
    assert {name for name, _ in section.figures} == {"serving_latency.png", "serving_throughput.png",
                                                     "serving_batches.png", "serving_explanations.png"}
    write_report(tmp_path, {"serving": section}, quick=False, started=time.time(), elapsed=600.0)
    summary = (tmp_path / "summary.md").read_text()
    assert ("| Gateway on SQLite: one row, p50 overhead over MLServer direct | 1.00 ms | p50 6.00 ms vs 5.00 ms; "
            "target <= 1.5 ms: met |") in summary
    assert "| Gateway on PostgreSQL: requests/s, 8 clients | 90 | 0.45x MLServer direct (200); target >= 0.5x: " \
           "NOT met |" in summary
    assert "| Gateway on PostgreSQL: requests/s, 32 clients | 100 | 0.56x MLServer direct (180); target >= 0.5x: " \
           "met |" in summary
    assert ("| Gateway on PostgreSQL: soak, 32 clients for 60 s | 5,400 acknowledged, 3 failed; stored 5,399 "
            "predictions, 5,400 records |") in summary
    assert summary.count("target 0 failed, stored = acknowledged: met") == 1
    assert ("| Gateway on SQLite: where a 1,000-row request's time goes (means) | 20 ms | validate 3.00 ms + wait "
            "0.10 ms + model call 9.00 ms + store after the answers 5.00 ms + rest 2.90 ms; store begun ahead "
            "6.00 ms (during the call) |") in summary
    assert summary.count(": NOT met |") == 5


def test_a_gateway_not_measured_is_said_so_and_a_target_without_its_anchor_is_left_out(tmp_path: Path) -> None:
    from learning_machine.bench import serving
    from learning_machine.bench.serving import GATEWAY, GATEWAY_PG, OURS

    raw = serving_raw()
    for part in ("latency", "throughput", "soak"):
        del raw[part][GATEWAY_PG]
    del raw["batch"]["1000"][GATEWAY_PG]
    raw["skipped"] = {GATEWAY_PG: "PostgreSQL not reachable (set LM_BENCH_POSTGRES_URL): connection refused"}
    del raw["throughput"][OURS]
    checks = serving.gateway_checks(raw)
    assert list(checks) == [GATEWAY]
    assert not any(c.what.startswith("requests/s") for c in checks[GATEWAY])

    section = serving.to_section(raw, quick=True)
    assert f"{GATEWAY_PG} not measured: PostgreSQL not reachable" in " ".join(section.notes)
    write_report(tmp_path, {"serving": section}, quick=True, started=time.time(), elapsed=180.0)
    summary = (tmp_path / "summary.md").read_text()
    assert "| Gateway on PostgreSQL | not measured | PostgreSQL not reachable" in summary
    assert "Gateway on SQLite: rows/s in batches of 1,000" in summary


def test_the_soak_counts_acknowledged_and_failed_requests_by_kind() -> None:
    """Against a real local HTTP server that refuses every tenth record: each request carries a new record
    id under the run's prefix, and every answer is counted once, as acknowledged or by its status."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from learning_machine.bench.serving import soak

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            record_id = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["id"]
            seen.append(record_id)
            self.send_response(503 if int(record_id.rsplit("-", 1)[1]) % 10 == 9 else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = soak(f"http://127.0.0.1:{server.server_port}/", {}, lambda record_id: {"id": record_id, "x": 1},
                   clients=4, seconds=1.0)
    finally:
        server.shutdown()
        server.server_close()
    assert run["acknowledged"] + run["failed"] == len(seen) == len(set(seen)) > 20
    assert run["failures"] == {"HTTP 503": sum(int(r.rsplit("-", 1)[1]) % 10 == 9 for r in seen)}
    assert all(r.startswith(run["prefix"] + "-") for r in seen) and run["prefix"].startswith("soak-")
    assert run["p50"] is not None and run["p99"] >= run["p50"] and run["rps"] > 0


def test_latencies_measure_every_target_in_turns_so_a_slowdown_reaches_them_all() -> None:
    """The machine slows down halfway through (every call then sleeps longer): measured in turns, both targets
    see the slow half alike, so their medians stay equal; one after the other, the second would look slower."""
    import time

    from learning_machine.bench.serving import latencies

    order: list[str] = []
    slow_after = 50  # calls made in all, warm-up included: after two rounds of turns

    def target(name: str) -> Any:
        def call() -> None:
            order.append(name)
            time.sleep(0.004 if len(order) > slow_after else 0.001)
        return call

    stats = latencies({"direct": target("direct"), "gateway": target("gateway")}, n=40, warmup=5, turn=10)
    assert order[:10] == ["direct"] * 5 + ["gateway"] * 5  # warm-up
    measured = order[10:]
    assert len(measured) == 80 and measured[:20] == ["direct"] * 10 + ["gateway"] * 10
    assert stats["direct"]["n"] == stats["gateway"]["n"] == 40
    assert stats["direct"]["min"] < 2 < stats["direct"]["max"]  # each saw both halves of the run
    assert 0.7 < stats["gateway"]["mean"] / stats["direct"]["mean"] < 1.3


def test_the_bench_reads_where_a_gateway_request_spent_its_time_from_the_gateways_metrics() -> None:
    """The serving section's stage table: the gateway's own metrics (its real Metrics, rendered as /metrics is)
    read before and after the measured requests; only what happened in between counts, a refused request
    (422) is not among the answered ones, and what no stage covers is the rest."""
    from prometheus_client import generate_latest

    from learning_machine.bench.serving import latencies, stage_breakdown, stage_totals
    from learning_machine.gateway.edge import Metrics

    metrics = Metrics()
    stage, request = metrics.prediction_stage_seconds, metrics.latency
    stage.labels("validate").observe(1.0)  # earlier traffic: not counted
    request.labels("POST", "/v1/predictions", "success").observe(9.0)
    before = stage_totals(generate_latest(metrics.registry).decode())
    for _ in range(2):  # two measured requests, each alone in its group
        request.labels("POST", "/v1/predictions", "success").observe(0.010)
        stage.labels("validate").observe(0.001)
        stage.labels("wait").observe(0.0005)
        metrics.model_server_seconds.labels("predict").observe(0.004)
        stage.labels("store_ahead").observe(0.003)
        stage.labels("store").observe(0.002)
    request.labels("POST", "/v1/predictions", "client_error").observe(0.5)  # refused: not an answered request
    metrics.model_server_seconds.labels("explain").observe(0.5)  # another call of the model server
    ms = stage_breakdown(before, stage_totals(generate_latest(metrics.registry).decode()))
    assert ms["requests"] == 2 and ms["groups"] == 2
    assert ms["request"] == pytest.approx(10) and ms["validate"] == pytest.approx(1)
    assert ms["wait"] == pytest.approx(0.5) and ms["model"] == pytest.approx(4)
    assert ms["store"] == pytest.approx(2) and ms["store_ahead"] == pytest.approx(3)
    assert ms["rest"] == pytest.approx(10 - 1 - 0.5 - 4 - 2)  # the store begun ahead overlaps the call
    assert stage_breakdown(before, before) == {}  # no request answered: nothing to divide

    calls: list[str] = []
    latencies({"a": lambda: calls.append("a")}, n=3, warmup=2, warm=lambda: calls.append("warm"))
    assert calls == ["a", "a", "warm", "a", "a", "a"]  # read once warm, before the measured calls


def test_gateway_bodies_are_made_and_encoded_before_the_timed_calls_each_with_new_record_ids() -> None:
    """A timed call to a gateway only takes its next body: made (new record ids) and encoded beforehand, then,
    past those, made on the fly; every body holds records never sent before."""
    import orjson

    from learning_machine.bench.serving import RecordIds, encoded_bodies, new_records

    made: list[int] = []
    build = new_records([{"record_id": "x", "age": 50}, {"record_id": "y", "age": 60}], "record_id",
                        RecordIds("bench"))
    bodies = encoded_bodies(lambda: made.append(1) or build(), 3)
    assert len(made) == 3  # before the first call
    sent = [orjson.loads(bodies()) for _ in range(4)]
    assert len(made) == 4  # the fourth made when asked
    ids = [r["record_id"] for body in sent for r in body["records"]]
    assert ids == [f"bench-{i}" for i in range(8)]
    assert all(r["age"] in (50, 60) for body in sent for r in body["records"])


def test_stored_rows_are_counted_by_the_run_prefix_in_a_fresh_postgres_database() -> None:
    """The bench's own throwaway PostgreSQL database: made, migrated, counted in by prefix, then dropped;
    an unreachable server raises (the section then skips the PostgreSQL gateway)."""
    import psycopg
    from sqlalchemy.exc import OperationalError
    from testsupport import PG_ADMIN_URL

    from learning_machine.bench.serving import fresh_postgres_database, stored_rows
    from learning_machine.store import Database
    from learning_machine.store.models import Prediction, Record

    with fresh_postgres_database(PG_ADMIN_URL) as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("lm_bench_")
        db = Database(url)
        db.upgrade()
        with db.transaction() as session:
            session.add_all([Record(record_id=r, features={}) for r in ("soak-a-0", "soak-a-1", "soak-b-0")])
            session.flush()
            session.add_all([Prediction(record_id=r, model_name="m", model_version="1", probability=0.5, label=1,
                                        latency_ms=1.0, request_id="q") for r in ("soak-a-0", "soak-b-0")])
        assert stored_rows(db, "soak-a") == {"predictions": 1, "records": 2}
        db.dispose()
    with psycopg.connect(PG_ADMIN_URL) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
    with pytest.raises(OperationalError), fresh_postgres_database("postgresql://postgres@127.0.0.1:1/postgres"):
        pass


def test_the_profiler_names_the_platform_function_a_busy_process_spends_its_time_in(tmp_path: Path) -> None:
    """`lm bench --profile`: py-spy attached to a running process (as to a gateway under the bench's load)
    and its samples summarised by platform function and library."""
    import subprocess
    import sys

    from learning_machine.bench.profile import markdown, sampled, summarise

    busy = ("import time\nfrom learning_machine.gateway.edge import unstorable_text\n"
            "body = b'{\"a\": \"' + b'x' * 200_000 + b'\\\\ud83d\\\\ude00\"}'\nend = time.monotonic() + 8\n"
            "print('busy', flush=True)\nwhile time.monotonic() < end:\n    unstorable_text(body)\n")
    proc = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"busy\n"  # imported, busy
        raw = tmp_path / "busy.txt"
        with sampled(proc.pid, raw) as used:
            time.sleep(1.5)
    finally:
        proc.kill()
        proc.wait()
    assert used and 1.0 < used[0] < 3.0  # one busy thread for 1.5 s (and py-spy's stops), by the kernel's count
    profile = summarise(raw, "busy loop", seconds=1.5, requests=10, cpu_s=used[0])
    assert profile.samples > 100  # 250 Hz for 1.5 s of one busy thread
    assert profile.innermost[0][0] == "gateway.edge.unstorable_text"
    assert profile.innermost[0][1] > 50  # the rest: the loop around it, and the interpreter
    assert dict(profile.functions)["gateway.edge.unstorable_text"] == profile.innermost[0][1]
    assert profile.cpu_ms_per_request == pytest.approx(used[0] * 1000 / 10)
    from learning_machine.bench.profile import _parse

    # py-spy names a file relative to the interpreter's path, or, for some, by its absolute path.
    assert _parse("f (/x/.venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py:3)") == (None, "sqlalchemy")
    assert _parse("f (/usr/lib/python3.11/asyncio/events.py:80)") == (None, "asyncio")
    assert _parse("f (/srv/app/learning_machine/store/bulk.py:9)") == ("store.bulk.f", "learning_machine.store")
    text = "\n".join(markdown([profile]))
    assert "`gateway.edge.unstorable_text`" in text and "ms of gateway CPU per request" in text
