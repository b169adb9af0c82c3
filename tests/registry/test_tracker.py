"""Training, tracking and the registry against a real `mlflow server` (SQLite and PostgreSQL backends)."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from learning_machine.data.sources import load_dataset
from learning_machine.errors import ModelNotFoundError, RegistryError, TrackingUnavailableError
from learning_machine.lifecycle.training import train_and_register
from learning_machine.model.training import predict_proba
from learning_machine.registry.names import CHALLENGER, CHAMPION, PREVIOUS_TAG
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings


def _settings(server: Settings, **overrides: object) -> Settings:
    """The server's settings with a model name of the test's own, so tests do not see each other."""
    return server.model_copy(update={"model_name": f"risk-{uuid.uuid4().hex[:8]}", "train_rows": 1500,
                                     **overrides})


@pytest.fixture(scope="module")
def small_data():
    return load_dataset("synthetic-cohort", n_rows=1500, seed=3)


def test_training_run_records_params_metrics_dataset_plots_and_model(tracking_server: Settings, small_data):
    settings = _settings(tracking_server)
    tracker = Tracker(settings.tracking_uri)
    outcome = train_and_register(settings, tracker, small_data, promote="if-first")

    run = tracker.client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model_kind"] == "xgboost"
    assert run.data.params["dataset_digest"] == small_data.digest
    assert run.data.params["model.n_estimators"] == "200"
    # mlflow.models.evaluate's own metrics (accuracy_score, f1_score) and ours (make_metric), per subgroup too
    for metric in ("auc", "accuracy_score", "f1_score", "brier", "ece", "log_loss", "calibration_slope",
                   "calibration_intercept", "auc.sex.female", "auc.age_band.60-74", "training_seconds"):
        assert metric in run.data.metrics, metric
    assert 0.6 < run.data.metrics["auc"] <= 1.0

    # The training data (context "training") and the held-out rows mlflow.models.evaluate scored.
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic-cohort", "synthetic-cohort-held-out"}
    assert inputs["synthetic-cohort"].dataset.digest == small_data.digest
    assert {t.key: t.value for t in inputs["synthetic-cohort"].tags}["mlflow.data.context"] == "training"

    evaluation = {f.path for f in tracker.client.list_artifacts(outcome.run_id, "evaluation")}
    assert {"evaluation/roc.png", "evaluation/calibration.png", "evaluation/confusion_matrix.png",
            "evaluation/feature_importance.png", "evaluation/evaluation.json"} <= evaluation
    # The model is an MLflow 3 logged model of the run: an output of it, with its files, the run's parameters
    # and its held-out metrics linked to the held-out dataset.
    model_id = tracker.run_model_id(outcome.run_id)
    assert model_id and [o.model_id for o in run.outputs.model_outputs] == [model_id]
    logged = tracker.client.get_logged_model(model_id)
    assert (logged.source_run_id, logged.name, str(logged.status)) == (outcome.run_id, "model", "READY")
    assert logged.params["model_kind"] == "xgboost" and logged.params["dataset_digest"] == small_data.digest
    model_metrics = {m.key: m for m in logged.metrics}
    assert model_metrics["auc"].value == run.data.metrics["auc"]
    assert model_metrics["auc"].dataset_name == "synthetic-cohort-held-out"
    assert "auc.sex.female" in model_metrics
    model_files = {f.path for f in tracker.client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "input_example.json", "dataset_spec.yaml", "reference.parquet"} <= model_files

    # The registered version carries its metrics, is the champion (first model) and predicts like the
    # in-memory pipeline: preprocessing is inside the one artifact.
    assert outcome.promoted
    assert outcome.version.aliases == [CHAMPION]
    assert outcome.version.metrics["auc"] == pytest.approx(run.data.metrics["auc"], rel=1e-4)
    assert (outcome.version.source, outcome.version.model_id) == (f"models:/{model_id}", model_id)
    pipeline, info = tracker.load_pipeline(settings.model_name, CHAMPION)
    assert info.version == outcome.version.version
    rows = small_data.frame.head(50)
    np.testing.assert_allclose(predict_proba(pipeline, small_data.spec, rows),
                               predict_proba(outcome.result.pipeline, small_data.spec, rows), rtol=1e-6)
    with tempfile.TemporaryDirectory() as tmp:
        folder, _ = tracker.download_model(settings.model_name, CHAMPION, Path(tmp))
        mlmodel = (folder / "MLmodel").read_text()
    assert "signature" in mlmodel and f"model_id: {model_id}" in mlmodel


def test_aliases_promotion_and_rollback(tracking_server: Settings, small_data):
    settings = _settings(tracking_server)
    tracker = Tracker(settings.tracking_uri)
    first = train_and_register(settings, tracker, small_data, promote="if-first")
    second = train_and_register(settings, tracker, small_data, kind="logistic-regression", promote="if-first")
    assert not second.promoted
    assert tracker.version(settings.model_name, CHAMPION).version == first.version.version
    assert tracker.version(settings.model_name, CHALLENGER).version == second.version.version

    promoted = tracker.promote(settings.model_name, second.version.version, reason="better calibrated")
    assert CHAMPION in promoted.aliases
    assert promoted.tags[PREVIOUS_TAG] == first.version.version
    assert tracker.alias_version(settings.model_name, CHALLENGER) is None  # a promoted challenger is champion

    versions = tracker.list_versions(settings.model_name)
    assert [v.version for v in versions] == [second.version.version, first.version.version]
    assert versions[0].aliases == [CHAMPION] and versions[1].aliases == []

    old, new = tracker.rollback(settings.model_name)
    assert (old.version, new.version) == (second.version.version, first.version.version)
    assert tracker.version(settings.model_name, CHAMPION).version == first.version.version
    with pytest.raises(RegistryError, match="replaced no earlier version"):
        tracker.rollback(settings.model_name)
    # Rollback to any earlier version, named explicitly.
    _, new = tracker.rollback(settings.model_name, to_version=second.version.version)
    assert new.version == second.version.version
    with pytest.raises(ModelNotFoundError):
        tracker.promote(settings.model_name, "99")


def test_warm_start_continues_from_the_champion(mlflow_sqlite: Settings, small_data):
    settings = _settings(mlflow_sqlite)
    tracker = Tracker(settings.tracking_uri)
    first = train_and_register(settings, tracker, small_data, promote="if-first")
    newer = load_dataset("synthetic-cohort", n_rows=1500, seed=4, scenario="concept-drift")
    second = train_and_register(settings, tracker, newer, continue_from=CHAMPION, promote="never")
    assert second.result.mode == "warm-start"
    assert second.version.tags["lm.continued_from"] == first.version.version
    trees = second.result.pipeline.named_steps["model"].get_booster().num_boosted_rounds()
    assert trees == 200 + 100  # the champion's trees plus the continued ones
    assert tracker.version(settings.model_name, CHAMPION).version == first.version.version


def test_failure_while_logging_marks_the_run_failed_and_registers_nothing(mlflow_sqlite: Settings, small_data,
                                                                          monkeypatch):
    settings = _settings(mlflow_sqlite)
    tracker = Tracker(settings.tracking_uri)

    def broken_upload(*args, **kwargs):
        raise TrackingUnavailableError("uploading artifacts: the artifact store went away")

    monkeypatch.setattr(tracker, "log_dir", broken_upload)
    with pytest.raises(TrackingUnavailableError, match="artifact store went away"):
        train_and_register(settings, tracker, small_data)
    runs = tracker.client.search_runs([tracker.experiment_id(settings.experiment_name)],
                                      filter_string=f"params.dataset_digest = '{small_data.digest}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED"
    assert settings.model_name not in tracker.registered_models()


def test_unreachable_server_fails_fast_with_a_clear_error(small_data):
    settings = Settings(mlflow_tracking_uri="http://127.0.0.1:9", model_name="never-created")
    tracker = Tracker(settings.tracking_uri)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=r"127\.0\.0\.1:9 is unreachable"):
        train_and_register(settings, tracker, small_data)
    assert time.monotonic() - started < 10
    # A server that is down is not the same as a model that does not exist.
    with pytest.raises(TrackingUnavailableError):
        tracker.list_versions("anything")


def test_unknown_model_and_version_are_clear(mlflow_sqlite: Settings):
    tracker = Tracker(mlflow_sqlite.tracking_uri)
    with pytest.raises(ModelNotFoundError, match="no registered model called 'does-not-exist'"):
        tracker.list_versions("does-not-exist")
    with pytest.raises(ModelNotFoundError, match="has no version 'champion'"):
        tracker.version("does-not-exist", CHAMPION)


def test_evaluation_json_holds_calibration_and_subgroups(mlflow_sqlite: Settings, small_data):
    settings = _settings(mlflow_sqlite)
    tracker = Tracker(settings.tracking_uri)
    outcome = train_and_register(settings, tracker, small_data, kind="logistic-regression")
    path = tracker.client.download_artifacts(outcome.run_id, "evaluation/evaluation.json")
    evaluation = json.loads(Path(path).read_text())
    assert len(evaluation["calibration"]) == 10
    assert set(evaluation["subgroups"]) == {"sex", "age_band"}
    assert set(evaluation["subgroups"]["sex"]) == {"female", "male"}


def test_invalid_records_are_refused_before_anything_is_logged(mlflow_sqlite: Settings, tmp_path):
    from learning_machine.errors import DataQualityError

    settings = _settings(mlflow_sqlite)
    tracker = Tracker(settings.tracking_uri)
    frame = load_dataset("synthetic-cohort", n_rows=400, seed=9).frame
    frame.loc[:59, "systolic_bp"] = 900.0  # 60 of 3,600 cells: above the default 1 % limit
    frame.loc[10:12, "smoking"] = "vaping"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    spec = Path(__file__).resolve().parents[2] / "learning_machine" / "data" / "specs" / "synthetic-cohort.yaml"
    data = load_dataset(str(tmp_path / "bad.csv"), spec_path=spec)
    experiment = tracker.experiment_id(settings.experiment_name)
    runs_before = len(tracker.client.search_runs([experiment], max_results=1000))
    with pytest.raises(DataQualityError, match=r"systolic_bp: 60 out of range; smoking: unknown categories vaping"):
        train_and_register(settings, tracker, data)
    assert len(tracker.client.search_runs([experiment], max_results=1000)) == runs_before
    assert settings.model_name not in tracker.registered_models()


def test_the_servers_refusals_come_back_as_the_platforms_errors(mlflow_sqlite: Settings):
    """Through the REST transport: a refused call names what was being done and the server's reason."""
    tracker = Tracker(mlflow_sqlite.tracking_uri)
    run_id = tracker.start_run(mlflow_sqlite.experiment_name, "refusals")
    tracker.log_params(run_id, {"rows": 10})
    with pytest.raises(RegistryError, match=r"logging parameters: .*rows"):
        tracker.log_params(run_id, {"rows": 20})  # MLflow keeps a parameter's first value
    with pytest.raises(ModelNotFoundError, match="reading the run"):
        tracker.run_tags_and_params("0" * 32)
    tracker.log_text(run_id, '{"ok": true}', "checks/ok.json")  # through the server's artifact proxy
    assert tracker.run_json(run_id, "checks/ok.json") == {"ok": True}
    tracker.end_run(run_id)
    assert tracker.client.get_run(run_id).info.status == "FINISHED"


def test_mlflow_client_failures_are_told_apart_by_type_not_by_message():
    """MLflow's client wraps a network failure in an MlflowException whose message is all that says so: the
    tracker finds the network error in the exception's chain instead."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from learning_machine.registry.tracker import unreachable

    tracker = Tracker("http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=r"listing artifacts: MLflow at http://127\.0\.0\.1:9 is "
                                                       r"unreachable \(ConnectionError\)") as caught:
        tracker.artifact_names("0" * 32)  # through MlflowClient, not the platform's REST transport
    assert isinstance(caught.value.__cause__, MlflowException) and time.monotonic() - started < 30

    def wrapped(cause: BaseException) -> MlflowException:
        try:
            raise cause
        except BaseException:
            try:
                raise MlflowException("API request to http://mlflow/api failed with exception ...")
            except MlflowException as exc:
                return exc

    assert isinstance(unreachable(wrapped(requests.ConnectionError("refused"))), requests.ConnectionError)
    assert isinstance(unreachable(wrapped(requests.exceptions.RetryError("too many 503s"))), requests.RequestException)
    assert unreachable(MlflowException("Connection refused, Max retries exceeded")) is None  # words are not a cause
    assert unreachable(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)) is not None
    with pytest.raises(RegistryError, match="Connection refused"), tracker._errors("reading"):
        raise MlflowException("Connection refused")  # e.g. a message relayed from elsewhere: not this server
