"""The pipelines end to end with kfp.local (each step a subprocess) against a real `mlflow server`.

One model per module: `lm train` (the training pipeline) makes v1 the champion; retraining on drifted data is better and is promoted;
retraining on shuffled labels with absurd parameters is worse and is refused; batch inference scores with a
chosen version; bad data and a tracking server that is down fail the run and leave the champion alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from learning_machine.data.sources import load_dataset
from learning_machine.errors import PipelineError
from learning_machine.registry.names import CHALLENGER, CHAMPION, PREVIOUS_TAG
from learning_machine.registry.tracker import Tracker
from learning_machine.runners.local import LocalRunner
from learning_machine.settings import Settings

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "learning_machine" / "data" / "specs" / "synthetic-cohort.yaml"
STEPS = ["open-pipeline-run", "ingest", "validate", "preprocess", "train", "evaluate", "register", "promote",
         "deploy", "close-pipeline-run"]
# The retraining pipeline's tasks when its gate passes: the reference ingest is kfp.local's `ingest-2`.
RETRAIN_STEPS = ["open-pipeline-run", "ingest", "validate", "preprocess", "ingest-2", "retrain", "evaluate",
                 "register", "promote", "deploy", "close-pipeline-run"]


@pytest.fixture(scope="module")
def settings(mlflow_sqlite: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return mlflow_sqlite.model_copy(update={"model_name": f"pipe-{uuid.uuid4().hex[:8]}",
                                            "home": tmp_path_factory.mktemp("lm-home"), "train_rows": 1500})


@pytest.fixture(scope="module")
def tracker(settings: Settings) -> Tracker:
    return Tracker(settings.tracking_uri)


@pytest.fixture(scope="module")
def trained(settings: Settings) -> dict:
    """`lm train` (the training pipeline run locally) once, on 1,500 generated rows: the module's first model."""
    env = {**os.environ, "LM_HOME": str(settings.home), "LM_MLFLOW_TRACKING_URI": settings.tracking_uri,
           "LM_MODEL_NAME": settings.model_name}
    proc = subprocess.run([sys.executable, "-m", "learning_machine", "train", "--rows", "1500", "--promote", "gate"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    summary["stderr"] = proc.stderr
    return summary


def _children(tracker: Tracker, settings: Settings, parent: str) -> dict[str, object]:
    exp = tracker.experiment_id(settings.experiment_name)
    runs = tracker.client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return {r.data.tags["lm.step"]: r for r in runs}


def test_training_pipeline_logs_nested_runs_registers_and_promotes_the_first_model(trained, settings, tracker):
    assert trained["state"] == "SUCCEEDED"
    assert list(trained["steps"]) == STEPS and set(trained["steps"].values()) == {"SUCCEEDED"}
    assert "step train: success" in trained["stderr"]  # progress lines while it runs
    assert trained["version"] == "1" and trained["aliases"] == [CHAMPION]
    versions = tracker.list_versions(settings.model_name)
    assert [(v.version, v.aliases) for v in versions] == [("1", [CHAMPION])]
    assert versions[0].tags["lm.pipeline_run"] == trained["parent_run_id"]
    assert 0.6 < versions[0].metrics["auc"] <= 1.0

    parent = tracker.client.get_run(trained["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["lm.pipeline"] == "training"
    assert trained["mlflow_run_url"].endswith(f"/runs/{trained['parent_run_id']}")
    children = _children(tracker, settings, trained["parent_run_id"])
    assert set(children) == {"ingest", "validate", "preprocess", "train", "evaluate", "register", "promote",
                             "deploy"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert children["train"].data.params["train_rows"] == "1125"
    assert "candidate.auc.sex.female" in children["evaluate"].data.metrics  # subgroup metrics
    # The version's change record, written by the register step into its own run, names the pipeline run.
    from learning_machine.lifecycle.record import read_record

    found = read_record(tracker, settings.model_name, "1")
    assert found["location"] == f"runs:/{children['register'].info.run_id}/change-record/record.json"
    record = found["record"]
    assert record["change"] == "train" and record["training"]["pipeline_run"] == trained["parent_run_id"]
    assert record["decision"]["outcome"] == "promote" and record["evaluation"]["held_out_rows"] == 375
    assert record["training"]["run_id"] == children["train"].info.run_id and record["training"]["code"]["commit"]
    # No LM_DEPLOYER and no model server URL: what `lm up` manages serves the champion (here it is not
    # running, so it will serve it when it starts); nothing changed, and the run says so.
    deploy = children["deploy"].data.params
    assert (deploy["deployer"], deploy["changed"]) == ("local", "False") and "next starts" in deploy["detail"]

    outputs = Path(trained["outputs"])
    report = json.loads((outputs / "validate" / "report").read_text())
    assert report["passed"] and report["n_rows"] == 1500
    assert (outputs / "preprocess" / "clean" / "features.csv").read_text().count("\n") == 1501
    comparison = json.loads((outputs / "evaluate" / "comparison").read_text())
    assert comparison["gate"]["promote"] and comparison["champion"] is None
    assert set(comparison["candidate"]["subgroups"]) == {"sex", "age_band"}


def _published(outputs: Path, task: str) -> dict[str, dict]:
    """The artifacts a task handed back to kfp.local (its executor output, what a cluster's launcher puts in
    the metadata store the Kubeflow UI reads): name -> uri, metadata. Their types are the compiled spec's
    (tests/pipelines/test_compile.py)."""
    written = json.loads((outputs / task / "executor_output.json").read_text())
    return {name: {"uri": found["artifacts"][0]["uri"], "metadata": found["artifacts"][0].get("metadata", {})}
            for name, found in written["artifacts"].items()}


def test_the_run_publishes_metrics_roc_confusion_matrix_and_the_model_for_the_kubeflow_ui(trained, settings,
                                                                                         tracker):
    assert trained["state"] == "SUCCEEDED"
    outputs = Path(trained["outputs"])
    train = _published(outputs, "train")
    roc = train["classification"]["metadata"]["confidenceMetrics"]
    assert 2 < len(roc) <= 200 and {"falsePositiveRate", "recall", "confidenceThreshold"} <= set(roc[0])
    matrix = train["classification"]["metadata"]["confusionMatrix"]
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == ["0", "1"]
    held_out = len((outputs / "train" / "test" / "data.csv").read_text().splitlines()) - 1
    assert sum(sum(row["row"]) for row in matrix["rows"]) == held_out == 375  # 25 % of 1,500 rows
    # The scalar metrics are the run's own: the same AUC MLflow has for the candidate's run.
    run_id = train["model"]["metadata"]["run_id"]
    assert train["metrics"]["metadata"]["auc"] == pytest.approx(tracker.client.get_run(run_id).data.metrics["auc"])
    # The candidate is the run's MLflow 3 logged model, which the registered version points at too.
    model_id = tracker.run_model_id(run_id)
    assert model_id and train["model"]["metadata"]["model_id"] == model_id
    assert train["model"]["metadata"]["model_uri"] == f"models:/{model_id}"
    evaluate = _published(outputs, "evaluate")
    assert evaluate["classification"]["metadata"]["confidenceMetrics"]
    assert evaluate["metrics"]["metadata"]["candidate.auc"] == pytest.approx(train["metrics"]["metadata"]["auc"])
    assert evaluate["metrics"]["metadata"]["promote"] == 1.0
    registered = _published(outputs, "register")["model"]
    assert registered["metadata"]["model_uri"] == f"models:/{settings.model_name}/1"
    assert (registered["metadata"]["version"], registered["metadata"]["run_id"]) == ("1", run_id)
    assert json.loads(Path(registered["uri"]).read_text())["model_uri"] == registered["metadata"]["model_uri"]
    assert _published(outputs, "validate")["metrics"]["metadata"]["n_rows"] == 1500


def test_lm_train_leaves_a_logged_model_with_its_metrics_that_the_version_points_at(trained, settings, tracker):
    """MLflow 3's view of `lm train`: the train step's run has a logged model (MLflow's logged-model API), linked
    to the run, with its parameters and its held-out metrics (linked to the held-out dataset); the registered
    version's source is that logged model, and the evaluate step linked its scores to it too."""
    children = _children(tracker, settings, trained["parent_run_id"])
    train_run = children["train"]
    found = tracker.client.search_logged_models(experiment_ids=[train_run.info.experiment_id],
                                                filter_string=f"source_run_id = '{train_run.info.run_id}'")
    assert len(found) == 1
    model = tracker.client.get_logged_model(found[0].model_id)
    assert (model.source_run_id, model.name, str(model.status)) == (train_run.info.run_id, "model", "READY")
    assert [o.model_id for o in train_run.outputs.model_outputs] == [model.model_id]
    assert model.params["model_kind"] == "xgboost" and model.params["train_rows"] == "1125"
    metrics = {m.key: m for m in model.metrics}
    for key in ("auc", "log_loss", "brier", "ece", "accuracy_score", "f1_score", "calibration_slope",
                "auc.sex.female"):
        assert key in metrics, key
    assert metrics["auc"].value == train_run.data.metrics["auc"] and 0.6 < metrics["auc"].value <= 1.0
    assert metrics["auc"].dataset_name == "synthetic-cohort-held-out" and metrics["auc"].dataset_digest
    # The evaluate step scored the candidate with mlflow.models.evaluate: on its run and on the logged model.
    assert children["evaluate"].data.metrics["candidate.auc"] == metrics["candidate.auc"].value
    evaluate_run = tracker.client.get_run(children["evaluate"].info.run_id)  # (search results omit model inputs)
    assert [m.model_id for m in evaluate_run.inputs.model_inputs] == [model.model_id]

    version = tracker.version(settings.model_name, "1")
    assert (version.source, version.model_id, version.run_id) == (f"models:/{model.model_id}", model.model_id,
                                                                  train_run.info.run_id)
    # MLflow's server knows the link both ways: it tagged the logged model with the version registered from it.
    model = tracker.client.get_logged_model(model.model_id)
    assert [(v["name"], str(v["version"])) for v in json.loads(model.tags["mlflow.modelVersions"])] == [
        (settings.model_name, "1")]


def test_retraining_promotes_a_better_candidate(trained, settings, tracker):
    assert trained["state"] == "SUCCEEDED"
    champion = tracker.version(settings.model_name, CHAMPION)
    # New data from a new treatment era: the champion's risk function is out of date there.
    # Enough rows (1,000 held out) for the paired evidence to show the gain with 95 % confidence.
    run = LocalRunner(settings).run("retraining", {"rows": 4000, "seed": 43, "scenario": "concept-drift",
                                                   "reference_source": ""}).raise_for_state()
    comparison = json.loads((Path(run.outputs_dir) / "evaluate" / "comparison").read_text())
    assert comparison["gate"]["promote"], (comparison["gate"]["reason"], comparison["gate"]["clauses"])
    assert comparison["candidate"]["metrics"]["auc"] > comparison["champion"]["metrics"]["auc"]
    assert comparison["champion_version"] == champion.version
    # The gate's paired evidence on the same held-out rows is kept with the decision: in the comparison, on
    # the evaluate step's run as metrics, and on the new version as a one-line tag.
    auc = comparison["evidence"]["auc"]
    assert auc["diff"] == pytest.approx(comparison["candidate"]["metrics"]["auc"]
                                        - comparison["champion"]["metrics"]["auc"], abs=1e-9)
    assert auc["ci_low"] < auc["diff"] < auc["ci_high"] and comparison["evidence"]["rows"] == comparison["held_out_rows"]
    evaluate_run = _children(tracker, settings, run.parent_run_id)["evaluate"]
    assert evaluate_run.data.metrics["gate.auc_diff_ci_low"] == pytest.approx(auc["ci_low"])
    new = tracker.version(settings.model_name, CHAMPION)
    assert new.tags["lm.gate_evidence"].startswith(f"candidate - champion on {comparison['held_out_rows']} paired rows: auc +")
    assert int(new.version) > int(champion.version)
    assert new.tags[PREVIOUS_TAG] == champion.version
    assert comparison["gate"]["proven_worse"] is False and new.tags["lm.gate_proven_worse"] == "false"
    assert new.tags["lm.gate_champion"] == champion.version  # what its promote step checked still served
    # Three candidates, the continued champion, a fresh model and a simpler fresh one; the version says which
    # won and by what.
    assert set(json.loads(new.tags["lm.candidates"])) == {"warm-start", "scratch", "scratch-simple"}
    assert new.tags["lm.retrain_mode"] in ("warm-start", "scratch", "scratch-simple")
    if new.tags["lm.retrain_mode"] == "warm-start":
        assert new.tags["lm.continued_from"] == champion.version
    assert sorted(run.steps) == sorted(RETRAIN_STEPS)  # what the steps called directly are timed as
    # What kfp.local handed back for each task, with the artifacts' types: what the Kubeflow UI renders.
    retrained = run.extra["outputs"]["retrain"]
    assert retrained["classification"]["type"] == "system.ClassificationMetrics"
    assert 2 < len(retrained["classification"]["metadata"]["confidenceMetrics"]) <= 200
    # Retrain's plots are on the rows its own evaluation (its metrics) used: new rows none of the candidates
    # trained on; evaluate's are on the held-out rows the gate judged.
    assert retrained["metrics"]["type"] == "system.Metrics"
    assert sum(sum(r["row"]) for r in retrained["classification"]["metadata"]["confusionMatrix"]["rows"]) == \
        retrained["metrics"]["metadata"]["n"]
    judged = run.extra["outputs"]["evaluate"]["classification"]["metadata"]["confusionMatrix"]["rows"]
    assert sum(sum(r["row"]) for r in judged) == comparison["held_out_rows"]
    assert retrained["model"]["type"] == "system.Model"
    assert retrained["model"]["metadata"]["run_id"] == comparison["candidate_run_id"]
    assert run.extra["outputs"]["register"]["model"]["metadata"]["model_uri"] == \
        f"models:/{settings.model_name}/{new.version}"
    assert run.extra["outputs"]["evaluate"]["metrics"]["metadata"]["champion.auc"] == pytest.approx(
        comparison["champion"]["metrics"]["auc"])
    # The promote step went through the lifecycle's change of champion: its event is on the step's run.
    promote_run = _children(tracker, settings, run.parent_run_id)["promote"]
    event = tracker.run_json(promote_run.info.run_id, "promotion/event.json")
    assert event["kind"] == "promoted" and event["by"] == "pipeline"
    assert (event["from"], event["to"]) == (champion.version, new.version)
    assert promote_run.data.params["previous_champion"] == champion.version


def test_retraining_refuses_a_worse_candidate(trained, settings, tracker, tmp_path):
    assert trained["state"] == "SUCCEEDED"
    # Only the continued candidate (LM_RETRAIN_CANDIDATES): a fresh model on the new rows could be good
    # whatever the parameters, and this test needs a worse one.
    only_continued = settings.model_copy(update={"retrain_candidates": "warm-start"})
    champion = tracker.version(settings.model_name, CHAMPION)
    # Worse on purpose: old data with shuffled outcomes and absurd parameters (big steps, deep trees).
    noise = load_dataset("synthetic-cohort", n_rows=3000, seed=44).frame
    noise["outcome"] = np.random.default_rng(0).permutation(noise["outcome"].to_numpy())
    noise.to_csv(tmp_path / "shuffled.csv", index=False)
    # New data from the same era as the better test's, so the champion is strong on it whichever ran first.
    run = LocalRunner(only_continued).run("retraining", {
        "rows": 1500, "seed": 45, "scenario": "concept-drift", "reference_source": str(tmp_path / "shuffled.csv"), "spec_path": str(SPEC),
        "model_params": json.dumps({"learning_rate": 1.0, "max_depth": 8, "continue_estimators": 100}),
    }).raise_for_state()
    comparison = json.loads((Path(run.outputs_dir) / "evaluate" / "comparison").read_text())
    assert not comparison["gate"]["promote"]
    assert comparison["candidate"]["metrics"]["auc"] < comparison["champion"]["metrics"]["auc"]
    assert "champion kept" in comparison["gate"]["reason"]
    assert "promote" not in run.steps and "deploy" not in run.steps
    assert tracker.version(settings.model_name, CHAMPION).version == champion.version
    refused = tracker.version(settings.model_name, CHALLENGER)  # registered, waiting, not serving
    assert int(refused.version) > int(champion.version) and "champion kept" in refused.tags["lm.gate"]
    # Worse beyond doubt on the held-out rows: the version says so, and the learning loop will not judge it
    # in the shadow (only a candidate the rows could not tell from the champion goes there).
    assert comparison["evidence"]["auc"]["ci_high"] < 0 and comparison["gate"]["proven_worse"] is True
    assert refused.tags["lm.gate_proven_worse"] == "true"


def test_the_retraining_pipeline_judges_by_the_change_control_plan_it_is_given(trained, settings, tracker):
    """The learning loop hands its plan's text to the pipeline (`change_plan`): the evaluate step, a kfp.local
    subprocess without the monitor's file (a pod on a cluster), judges by that plan, digest and all."""
    import hashlib

    import yaml

    from learning_machine.lifecycle.plan import PLANS

    assert trained["state"] == "SUCCEEDED"
    plan = yaml.safe_load((PLANS / "synthetic-cohort.yaml").read_text())
    plan["version"] = "9.9.9-strict"
    plan["acceptance"]["subgroups"]["floors"] = {"sex": {"*": 0.99}}  # no model reaches it
    text = yaml.safe_dump(plan)
    champion = tracker.version(settings.model_name, CHAMPION)
    run = LocalRunner(settings).run("retraining", {"rows": 1500, "seed": 47, "scenario": "concept-drift",
                                                   "change_plan": text}).raise_for_state()
    comparison = json.loads((Path(run.outputs_dir) / "evaluate" / "comparison").read_text())
    identity = {"plan": "synthetic-cohort-ccp", "version": "9.9.9-strict",
                "digest": hashlib.sha256(text.encode()).hexdigest()}
    assert comparison["plan_applied"] == identity and comparison["plan"]["plan"] == identity
    floors = [c for c in comparison["plan"]["clauses"] if c["clause"].startswith("subgroup floor: sex=")]
    assert len(floors) == 2 and all(c["passed"] is False for c in floors)
    assert comparison["plan"]["decision"] != "promote" and not comparison["gate"]["promote"]
    assert "promote" not in run.steps and tracker.version(settings.model_name, CHAMPION).version == champion.version
    held = tracker.version(settings.model_name, CHALLENGER)
    assert held.tags["lm.plan"] == "synthetic-cohort-ccp 9.9.9-strict" and held.tags["lm.change"] == "retrain"
    assert held.tags["lm.plan_decision"] == comparison["plan"]["decision"]


def test_batch_inference_from_the_command_line_writes_json_lines(trained, settings, tracker, tmp_path):
    assert trained["state"] == "SUCCEEDED"
    records = load_dataset("synthetic-cohort", n_rows=300, seed=9).frame.drop(columns=["outcome"])
    records.to_csv(tmp_path / "records.csv", index=False)
    env = {**os.environ, "LM_HOME": str(settings.home), "LM_MLFLOW_TRACKING_URI": settings.tracking_uri,
           "LM_MODEL_NAME": settings.model_name}
    proc = subprocess.run([sys.executable, "-m", "learning_machine", "pipelines", "run", "batch_inference",
                           "-p", f"source={tmp_path / 'records.csv'}", "-p", f"spec_path={SPEC}",
                           "-p", "model_ref=1", "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step batch-infer: success" in proc.stderr and "MLflow parent run" in proc.stderr
    run = json.loads(proc.stdout[proc.stdout.index("{"):])
    lines = (Path(run["outputs_dir"]) / "batch-infer" / "predictions").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 300
    assert set(rows[0]) == {"time", "record_id", "prediction", "probability", "model_version"}
    assert [r["record_id"] for r in rows] == records["record_id"].astype(str).tolist()
    assert {r["model_version"] for r in rows} == {"1"}
    assert all(0 <= r["probability"] <= 1 and r["prediction"] == int(r["probability"] >= 0.5) for r in rows)
    children = _children(tracker, settings, run["parent_run_id"])
    assert children["batch_infer"].data.metrics["rows"] == 300
    logged = tracker.client.list_artifacts(children["batch_infer"].info.run_id, "predictions")
    assert [f.path for f in logged] == ["predictions/predictions.jsonl"]


def test_bad_data_fails_the_run_at_validation_and_leaves_the_champion(trained, settings, tracker, tmp_path):
    assert trained["state"] == "SUCCEEDED"
    before = tracker.list_versions(settings.model_name)
    frame = load_dataset("synthetic-cohort", n_rows=500, seed=11).frame
    frame.loc[:99, "age"] = 250  # 20 % of ages impossible: ~2 % of all feature cells
    frame.to_csv(tmp_path / "bad.csv", index=False)
    run = LocalRunner(settings).run("training", {"source": str(tmp_path / "bad.csv"), "spec_path": str(SPEC)})
    assert run.state == "FAILED"
    assert run.error.startswith("DataQualityError: dataset 'synthetic-cohort' failed validation")
    assert "age (100)" in run.error
    assert run.steps["validate"] == "FAILED" and "train" not in run.steps
    assert run.steps["close-pipeline-run"] == "SUCCEEDED"  # the exit handler ran after the failure
    with pytest.raises(PipelineError, match="pipeline 'training' failed: DataQualityError"):
        run.raise_for_state()
    assert [(v.version, v.aliases) for v in tracker.list_versions(settings.model_name)] == [
        (v.version, v.aliases) for v in before]
    assert tracker.client.get_run(run.parent_run_id).info.status == "FAILED"
    validate = _children(tracker, settings, run.parent_run_id)["validate"]
    assert validate.info.status == "FAILED" and "failed validation" in validate.data.tags["lm.error"]


def test_tracking_server_down_fails_fast_with_a_clear_message(trained, settings, tracker):
    assert trained["state"] == "SUCCEEDED"
    champion = tracker.version(settings.model_name, CHAMPION)
    down = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    started = time.monotonic()
    run = LocalRunner(down).run("training", {"rows": 500})
    assert run.state == "FAILED"
    assert "MLflow tracking server at http://127.0.0.1:9 is unreachable" in run.error
    assert run.steps["open-pipeline-run"] == "FAILED" and "ingest" not in run.steps
    assert time.monotonic() - started < 120
    assert tracker.version(settings.model_name, CHAMPION).version == champion.version


def test_the_steps_called_directly_are_the_pipelines_tasks_under_one_parent_run(trained, settings, tracker,
                                                                                 tmp_path):
    """What `lm bench` compares kfp.local against: the same steps called in one process, timed under the names
    kfp.local gives their tasks (so the two compare step by step), nested under one finished parent run."""
    from learning_machine.runners.inline import retrain_inline, train_inline

    direct = settings.model_copy(update={"model_name": f"inline-{uuid.uuid4().hex[:8]}"})
    first = train_inline(direct, source="synthetic-cohort", rows=800, seed=1)
    assert list(first["step_seconds"]) == STEPS and all(s >= 0 for s in first["step_seconds"].values())
    assert first["promoted"] and tracker.alias_version(direct.model_name, CHAMPION).version == first["version"]
    parent = tracker.client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert set(_children(tracker, direct, first["parent_run_id"])) == set(STEPS[1:-1])
    drifted = tmp_path / "drifted.csv"
    load_dataset("synthetic-cohort", n_rows=2400, seed=2, scenario="concept-drift", drift_start=0).frame.to_csv(
        drifted, index=False)
    again = retrain_inline(direct, source=str(drifted), spec_path=str(SPEC), seed=2,
                           reference_source="synthetic-cohort", reference_rows=500, reference_seed=1)
    # The retraining pipeline's tasks: its reference ingest is kfp.local's `ingest-2`, `retrain` replaces
    # `train`; promote and deploy run only when the gate passes (a concept change: it does).
    assert again["promoted"], again["reason"]
    assert list(again["step_seconds"]) == RETRAIN_STEPS
    assert tracker.alias_version(direct.model_name, CHAMPION).version == again["version"] != first["version"]
    assert tracker.client.get_run(again["parent_run_id"]).info.status == "FINISHED"
