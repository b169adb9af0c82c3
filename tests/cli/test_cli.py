"""The `lm` command line as a user runs it: real subprocesses, a real managed MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from testsupport import free_port
from typer.testing import CliRunner

from learning_machine.cli.app import app

LM = [sys.executable, "-m", "learning_machine"]


def test_data_generate_and_validate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cohort.csv"
    result = runner.invoke(app, ["data", "generate", "--rows", "400", "--seed", "3", "--scenario", "covariate-shift",
                                 "--drift-start", "200", "--with-truth", "-o", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert len(frame) == 400 and {"true_risk", "drifted"} <= set(frame.columns)
    assert frame["age"][200:].mean() > frame["age"][:200].mean() + 5

    result = runner.invoke(app, ["data", "validate", str(out)])
    assert result.exit_code == 0, result.output
    frame.loc[0, "age"] = 140
    frame.to_csv(out, index=False)
    result = runner.invoke(app, ["data", "validate", str(out), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["out_of_range"] == {"age": 1}


def test_unknown_scenario_is_a_clear_error(tmp_path):
    proc = subprocess.run([*LM, "data", "generate", "--scenario", "earthquake", "-o", str(tmp_path / "x.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "unknown scenario 'earthquake'; valid scenarios are:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_settings_fail_fast_naming_the_variable():
    proc = subprocess.run([*LM, "status"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LM_MLFLOW_TRACKING_URI": "file:///tmp/mlruns"})
    assert proc.returncode == 1
    assert "LM_MLFLOW_TRACKING_URI" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_up_status_doctor_train_down(tmp_path: Path):
    env = {**os.environ, "LM_HOME": str(tmp_path / ".lm"), "LM_MLFLOW_PORT": str(free_port()),
           "LM_TRAIN_ROWS": "1000", "LM_MLFLOW_WORKERS": "1", "LM_GATEWAY_PORT": str(free_port()),
           "LM_MODEL_SERVER_PORT": str(free_port()), "LM_MODEL_SERVER_GRPC_PORT": str(free_port()),
           "LM_MODEL_SERVER_METRICS_PORT": str(free_port()), "LM_MONITOR_PORT": str(free_port()),
           "LM_DASHBOARD_PORT": str(free_port())}

    def lm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LM, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)

    try:
        up = lm("up")
        assert up.returncode == 0, up.stderr
        assert "promoted clinical-risk v1 to champion" in up.stderr

        again = lm("up")  # harmless: nothing restarted, no second model
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr and "v1 is the champion" in again.stderr

        status = lm("status", "--json")
        assert status.returncode == 0, status.stderr
        services = {s["name"]: s for s in json.loads(status.stdout)}
        assert set(services) == {"mlflow", "model-server", "gateway", "monitor", "dashboard"}
        assert all(s["healthy"] and s["pid"] for s in services.values()), services
        assert services["gateway"]["detail"] == "ready"

        # The whole loop runs: records go through the gateway to the served champion; the monitor reads them.
        streamed = lm("stream", "--rows", "60", "--batch", "20", "--outcome-delay-rows", "20", "--json")
        assert streamed.returncode == 0, streamed.stderr
        report = json.loads(streamed.stdout)
        assert report["predicted"] == 60 and report["model_versions"] == {"1": 60}

        doctor = lm("doctor", "--json")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        checks = {c["check"]: c for c in json.loads(doctor.stdout)}
        assert all(c["ok"] for c in checks.values())
        assert "2 params, 2 metrics x 5 steps, 1 artifact" in checks["tracking + artifacts"]["detail"]
        assert "v1 is the champion" in checks["model registry"]["detail"]

        versions = json.loads(lm("models", "list", "--json").stdout)
        assert [v["aliases"] for v in versions] == [["champion"]]

        # The first model's change record and label, through the gateway `lm up` started: complete, no champion.
        record = lm("models", "record", "1")
        assert record.returncode == 0, record.stderr
        found = json.loads(record.stdout)
        assert found["verified"] and found["missing"] == [], found["missing"]
        assert found["record"]["change"] == "train" and found["record"]["evaluation"]["champion"] is None
        assert found["record"]["decision"]["outcome"] == "promote" and found["rollout"]["serving_now"]
        label = lm("models", "label")  # the champion's, as Markdown
        assert label.returncode == 0, label.stderr
        assert label.stdout.startswith("# Model facts: clinical-risk v1\n"), label.stdout[:200]
        assert "## Subgroup performance" in label.stdout and "none: the first version" in label.stdout

        bad = lm("train", "--dataset", "mimic")
        assert bad.returncode == 1 and "unknown dataset 'mimic'" in bad.stderr
        assert len(json.loads(lm("models", "list", "--json").stdout)) == 1  # nothing half-written
    finally:
        down = lm("down")
    assert down.returncode == 0 and "mlflow" in down.stderr
    for service in services.values():
        pid = service["pid"]
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    after = lm("status", "--json")
    assert after.returncode == 3
    assert not json.loads(after.stdout)[0]["healthy"]


def test_doctor_names_an_unreachable_server():
    proc = subprocess.run([*LM, "doctor", "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LM_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert proc.returncode == 1
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    assert not checks["mlflow server"]["ok"]
    assert "http://127.0.0.1:9 is unreachable" in checks["mlflow server"]["detail"]


def test_a_promotion_whose_deployment_fails_says_so_and_exits_non_zero(mlflow_sqlite, monkeypatch, tmp_path):
    """The deployer (Seldon, with no cluster here) fails: `lm models promote` prints why and exits 1, so a
    script notices, and the champion stays where it was (the alias moves only once the version serves); a
    rollback with nothing to deploy to exits 0."""
    import uuid

    from typer.testing import CliRunner

    from learning_machine.cli.app import app
    from learning_machine.data.sources import load_dataset
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.registry.names import CHAMPION
    from learning_machine.registry.tracker import Tracker

    settings = mlflow_sqlite.model_copy(update={"model_name": f"cli-{uuid.uuid4().hex[:8]}", "home": tmp_path})
    tracker = Tracker(settings.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=600, seed=5)
    first = train_and_register(settings, tracker, data, kind="logistic-regression", promote="if-first")
    second = train_and_register(settings, tracker, data, kind="logistic-regression", promote="never")
    for key, value in {"LM_MLFLOW_TRACKING_URI": settings.tracking_uri, "LM_MODEL_NAME": settings.model_name,
                       "LM_HOME": str(tmp_path), "LM_DEPLOYER": "seldon", "LM_GATEWAY_PORT": str(free_port()),
                       "KUBECONFIG": str(tmp_path / "no-kubeconfig")}.items():
        monkeypatch.setenv(key, value)

    promoted = CliRunner().invoke(app, ["models", "promote", second.version.version])
    assert promoted.exit_code == 1, promoted.output
    # (the CLI's entry point prints this error; CliRunner hands it back as the exception)
    message = str(promoted.exception)
    assert "could not be served" in message and f"champion stays v{first.version.version}" in message
    assert "event not recorded" in promoted.output  # the promotion-failed event: no gateway runs here
    assert tracker.alias_version(settings.model_name, CHAMPION).version == first.version.version

    monkeypatch.setenv("LM_DEPLOYER", "none")
    assert CliRunner().invoke(app, ["models", "promote", second.version.version]).exit_code == 0
    rolled = CliRunner().invoke(app, ["models", "rollback"])
    assert rolled.exit_code == 0, rolled.output
    assert f"rolled back from v{second.version.version} to v{first.version.version}" in rolled.output
