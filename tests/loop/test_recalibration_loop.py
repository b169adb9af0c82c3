"""Recalibration as the loop's own change, end to end on real parts (MLflow, MLServer swapped by the local
deployer, the gateway as its own process, the retraining pipeline under kfp.local): on a calibration-drift
stream (the generator's prevalence shift: twice the events, the same patients per outcome, so the champion
still ranks) the monitor sees calibration drift with its ranking held, the policy asks for a recalibration,
the pipeline refits only the champion's score map, and the recalibrated version serves."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from loop_harness import Stack, loop_stack

from learning_machine.model.recalibration import calibration_fit
from learning_machine.registry.names import CHAMPION
from learning_machine.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(mlflow_sqlite: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with loop_stack(mlflow_sqlite, tmp_path_factory.mktemp("recalibration-loop"), "risk-recal") as running:
        yield running


def _calibration(stack: Stack, prefix: str, version: str) -> tuple[float, float, float]:
    """(calibration-in-the-large, slope, AUC) of ``version`` on the labelled records whose id starts with
    ``prefix``, from what the gateway stored."""
    from sklearn.metrics import roc_auc_score

    items = [i for i in stack.client.labelled(limit=20000)
             if i["record_id"].startswith(prefix) and i["model_version"] == version]
    assert len(items) >= 150, (prefix, version, len(items))
    y = np.array([i["outcome"] for i in items])
    p = np.array([i["probability"] for i in items])
    fit = calibration_fit(y, p)
    assert fit is not None
    return fit.intercept, fit.slope, float(roc_auc_score(y, p))


def test_on_a_calibration_drift_stream_the_loop_recalibrates_the_champion_instead_of_retraining_it(stack: Stack):
    # 1. The usual population: nothing fires, the calibration rule neither.
    stack.stream(400, seed=201)
    decision = stack.service.step()
    assert decision is not None and not decision.retrain, decision
    assert not any(k.startswith("retrain") for k in stack.kinds())

    # 2. A prevalence shift: the champion's risks are too low on average but it still ranks. The policy asks
    # for a recalibration (whatever else noticed the shift first), and the pipeline makes one.
    stack.stream(600, seed=202, scenario="prevalence-shift")
    decision = stack.service.step()
    assert decision is not None and decision.retrain, decision
    assert "calibration" in decision.rules and decision.change == "recalibrate", decision
    evidence = decision.evidence["calibration"]
    assert evidence["intercept"] > 0.2 and evidence["auc_upper"] >= evidence["validated_auc"], evidence
    outcome = stack.service.wait_retraining(timeout_s=900)
    assert outcome is not None and outcome["state"] == "SUCCEEDED" and outcome["change"] == "recalibrate", outcome
    stack.service.step()  # collects it
    # Promoted by the gate on its held-out rows (the log-loss is better, the AUC the same), or in the shadow.
    stack.stream_until_promoted(range(210, 216), "prevalence-shift")

    events = stack.events()
    kinds = [e["kind"] for e in events]
    assert kinds.count("retrain-started") == 1, kinds  # one change for one shift
    for kind in ("retrain-fired", "retrain-started", "retrain-finished"):
        found = [e for e in events if e["kind"] == kind]
        assert found and found[-1]["detail"]["change"] == "recalibrate", (kind, found[-1:])
    promoted = [e for e in events if e["kind"] == "promoted"]
    assert promoted, kinds
    champion = stack.tracker.version(stack.settings.model_name, CHAMPION)
    assert champion.version != stack.first_version and promoted[-1]["detail"]["to"] == champion.version
    if promoted[-1]["detail"].get("by") == "learning loop":
        assert promoted[-1]["detail"]["change"] == "recalibrate"
    # The registered version says what kind of change it is, with its map; its trees are the first champion's.
    assert champion.tags["lm.change"] == "recalibrate" and champion.tags["lm.retrain_mode"].startswith("recalibrate-")
    assert champion.tags["lm.recalibrated_from"] == stack.first_version
    mapping = json.loads(champion.tags["lm.recalibration"])
    assert mapping["method"] in ("intercept", "logistic") and mapping["intercept"] > 0
    old, _ = stack.tracker.load_pipeline(stack.settings.model_name, stack.first_version)
    new, _ = stack.tracker.load_pipeline(stack.settings.model_name, champion.version)
    assert new.named_steps["model"].base.get_booster().num_boosted_rounds() == \
        old.named_steps["model"].get_booster().num_boosted_rounds()

    # 3. Clinicians get the recalibrated version, right on average where the champion was not, ranking as well.
    stack.stream(500, seed=203, scenario="prevalence-shift")
    assert {a["model_version"] for a in stack.client.labelled(limit=50)} == {champion.version}
    before_intercept, _, before_auc = _calibration(stack, "prev202-", stack.first_version)
    after_intercept, _, after_auc = _calibration(stack, "prev203-", champion.version)
    assert before_intercept > 0.4 and abs(after_intercept) < before_intercept - 0.3, (before_intercept,
                                                                                      after_intercept)
    assert abs(after_auc - before_auc) < 0.06, (before_auc, after_auc)  # other patients, the same ranking
    # The monitor measured the calibration of the serving version over time (stored with the performance rows).
    stored = stack.client.page("/v1/monitoring", kind="performance", limit=500)["items"]
    assert {r["model_version"] for r in stored if r["metric"] == "calibration_intercept" and r["feature"] is None} \
        >= {stack.first_version}


def test_a_recalibration_whose_closed_test_found_no_update_is_refused_without_a_shadow(stack: Stack):
    """The closed test may find the champion's calibration fine on the rows after all (its first test not
    significant): the candidate is then the champion itself, and judging it in the shadow would compare a model
    with itself for up to LM_LOOP_SHADOW_MAX_ROWS records. The loop refuses it at once, saying why. (The pipeline
    runner registers what the pipeline's register step would, the champion's run as a challenger tagged as such.)"""
    from types import SimpleNamespace

    from learning_machine.loop.policy import Decision
    from learning_machine.loop.service import RetrainViaPipeline

    champion = stack.tracker.version(stack.settings.model_name, CHAMPION)
    asked: list[dict[str, object]] = []

    class Unchanged:
        def run(self, pipeline: str, params: dict[str, object], **_: object) -> SimpleNamespace:
            asked.append(params)
            assert champion.run_id is not None
            stack.tracker.register(stack.settings.model_name, champion.run_id,
                                   tags={"lm.change": "recalibrate", "lm.retrain_mode": "recalibrate-none"})
            return SimpleNamespace(state="SUCCEEDED", succeeded=True, run_key="test", mlflow_url="", seconds=0.1,
                                   error=None, log_path=None)

    stack.stream(260, seed=220, scenario="prevalence-shift")  # labelled rows to recalibrate on
    trigger = RetrainViaPipeline(stack.settings, stack.client, stack.service.sink, stack.tracker,
                                 stack.service.spec, runner=Unchanged())
    outcome = trigger(Decision(True, ("test: calibration drifted",), ("calibration",), change="recalibrate"))
    assert asked and asked[0]["change"] == "recalibrate" and asked[0]["reference_source"] == ""
    assert outcome["state"] == "SUCCEEDED" and outcome["refused"] and outcome["shadow"] is False, outcome
    refused = [e for e in stack.events() if e["kind"] in ("refused", "gate-undecided")][-1]
    assert refused["kind"] == "refused" and refused["detail"]["change"] == "recalibrate"
    assert "no recalibration needed" in refused["detail"]["why"]
    assert stack.tracker.version(stack.settings.model_name, CHAMPION).version == champion.version
