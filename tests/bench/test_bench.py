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
