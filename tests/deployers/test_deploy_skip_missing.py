"""`lm deploy REF --skip-missing` (the Helm chart's deploy hook): with no such version or alias yet it
deploys nothing and exits 0, against a real MLflow server; without the flag it still fails."""

from __future__ import annotations

from typer.testing import CliRunner

from learning_machine.cli.app import app
from learning_machine.settings import Settings


def test_a_missing_champion_is_skipped_only_when_asked(mlflow_sqlite: Settings, monkeypatch, tmp_path):
    monkeypatch.setenv("LM_MLFLOW_TRACKING_URI", mlflow_sqlite.tracking_uri)
    monkeypatch.setenv("LM_MODEL_NAME", "never-registered-model")
    monkeypatch.setenv("LM_HOME", str(tmp_path))
    skipped = CliRunner().invoke(app, ["deploy", "champion", "--backend", "seldon", "--skip-missing"])
    assert skipped.exit_code == 0, skipped.output
    assert "nothing to deploy" in skipped.output
    failed = CliRunner().invoke(app, ["deploy", "champion", "--backend", "seldon"])
    assert failed.exit_code != 0
