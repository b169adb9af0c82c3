"""A recalibrated version is a model version like any other: made by the retrain step with ``change=recalibrate``
against the real MLflow server, registered with its ``lm.change``, deployed into the real MLServer, and served,
explained and stored through the gateway with the map applied."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))  # gateway_harness

from gateway_harness import sqlite_gateway

from learning_machine.clients.gateway import LearningMachineClient
from learning_machine.clients.v2 import ModelServerClient
from learning_machine.components.release import register
from learning_machine.components.steps import read_dataset, retrain, write_dataset
from learning_machine.data.sources import load_dataset
from learning_machine.deployers import get_deployer
from learning_machine.model.recalibration import RecalibratedClassifier, unwrap
from learning_machine.model.training import predict_proba
from learning_machine.registry.tracker import Tracker


@pytest.mark.slow
def test_a_recalibrated_version_is_registered_served_and_explained_with_its_map(model_server, tmp_path):
    settings = model_server.settings.model_copy(update={"deployer": "local"})
    tracker = Tracker(settings.tracking_uri)
    first = model_server.version
    champion, _ = tracker.load_pipeline(settings.model_name, first)

    # The retrain step, asked for a recalibration, on rows after a prevalence shift (twice the events).
    shifted = load_dataset("synthetic-cohort", n_rows=800, seed=61, scenario="prevalence-shift", drift_start=0)
    write_dataset(tmp_path / "new", shifted.frame, shifted.spec, {"source_uri": "test", "params": {}})
    run_id, metrics = retrain(settings, tmp_path / "new", tmp_path / "test", base_ref=first, change="recalibrate")
    tags, params = tracker.run_tags_and_params(run_id)
    assert tags["lm.change"] == "recalibrate" and tags["lm.recalibrated_from"] == first
    assert tags["lm.retrain_mode"] == f"recalibrate-{params['model.recalibration.method']}"
    mapping = json.loads(tags["lm.recalibration"])
    assert mapping["method"] in ("intercept", "logistic") and mapping["intercept"] > 0.3  # more events than predicted
    assert float(params["model.recalibration.intercept"]) == pytest.approx(mapping["intercept"], abs=1e-5)
    closed = json.loads(Path(tracker.client.download_artifacts(run_id, "recalibration/closed_test.json",
                                                               str(tmp_path))).read_text())
    assert closed["method"] == mapping["method"] and closed["tests"][0]["significant"]
    # Its held-out rows are the same split of the new rows a retraining would hold out; the map never saw them.
    held_out = read_dataset(tmp_path / "test").frame
    assert len(held_out) == round(0.25 * len(shifted.frame)) and metrics["auc"] > 0.6

    version = register(settings, run_id)
    info = tracker.version(settings.model_name, version)
    assert info.tags["lm.change"] == "recalibrate" and json.loads(info.tags["lm.recalibration"]) == mapping
    model = tracker.load_run_model(run_id)
    assert isinstance(model.named_steps["model"], RecalibratedClassifier)
    assert unwrap(model.named_steps["model"])[0].get_booster().num_boosted_rounds() == \
        champion.named_steps["model"].get_booster().num_boosted_rounds()  # the champion's own trees, kept
    expected = predict_proba(model, shifted.spec, held_out)
    unchanged = predict_proba(champion, shifted.spec, held_out)
    # The same order (a monotone map), higher on average (more events than the champion predicted).
    assert np.all(np.diff(expected[np.argsort(unchanged, kind="stable")]) >= -1e-12)
    assert expected.mean() > unchanged.mean() + 0.05

    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if k != "outcome"}
               for row in held_out.head(5).to_dict("records")]
    try:
        tracker.promote(settings.model_name, version, reason="recalibration serving test")
        assert get_deployer(settings).deploy(settings.model_name, version).changed
        with ModelServerClient(model_server.url) as client:
            served = client.predict(settings.model_name, shifted.spec, records)
            assert {p.model_version for p in served} == {version}
            assert [p.probability for p in served] == pytest.approx(list(expected[:5]), abs=1e-6)
            assert "recalibrated" in client.metadata(settings.model_name)["platform"]
            explanation = client.explain(settings.model_name, shifted.spec, records[0], "exact")["data"]
            assert explanation["model_version"] == version
            assert explanation["probability"] == pytest.approx(expected[0], abs=1e-5)
            assert sum(explanation["attributions"].values()) + explanation["base_value"] == pytest.approx(
                explanation["margin"], abs=1e-4)
        # Clinicians get it through the gateway: stored, and explained, with the recalibrated risk.
        with sqlite_gateway(tmp_path / "gw", model_server) as gateway:
            clinician = LearningMachineClient(gateway.url, gateway.tokens["clinician"], timeout_s=60)
            answers = clinician.predict(records[:2])
            assert [a["probability"] for a in answers] == pytest.approx(list(expected[:2]), abs=1e-6)
            assert {a["model_version"] for a in answers} == {version}
            why = clinician.explain(records[0]["record_id"])
            assert why["model_version"] == version
            assert why["explanation"]["data"]["probability"] == pytest.approx(expected[0], abs=1e-5)
            clinician.close()
    finally:
        # Put the session's server back on the first version for the tests that follow.
        tracker.rollback(settings.model_name, first)
        get_deployer(settings).deploy(settings.model_name, first)


def test_the_retrain_step_knows_its_changes(tmp_path):
    """An unknown change is refused before any work, naming the valid ones (no server is reached)."""
    from learning_machine.errors import UnknownNameError
    from learning_machine.settings import Settings

    settings = Settings(home=tmp_path, mlflow_tracking_uri="http://127.0.0.1:9")
    with pytest.raises(UnknownNameError, match=r"unknown change 'refit'; valid changes are: recalibrate, retrain"):
        retrain(settings, tmp_path / "new", tmp_path / "test", change="refit")
