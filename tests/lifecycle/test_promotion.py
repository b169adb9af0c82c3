"""The lifecycle's one promotion rule and its one change of champion (alias, serving, event), against a
real `mlflow server`; the same function the CLI and the gateway's admin routes call."""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest

from learning_machine.data.sources import load_dataset
from learning_machine.errors import RegistryError, ServiceUnavailableError, UnknownNameError
from learning_machine.lifecycle.promotion import EvidenceRule, change_champion, clauses_summary, decide, leads
from learning_machine.lifecycle.training import train_and_register
from learning_machine.model.evaluation import paired_comparison
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings


@pytest.mark.parametrize(("policy", "has_champion", "candidate", "champion", "promote"), [
    ("always", True, 0.6, 0.9, True),
    ("never", False, 0.9, None, False),
    ("if-first", False, None, None, True),
    ("if-first", True, 0.9, 0.6, False),
    ("gate", False, 0.7, None, True),  # no champion yet: the first candidate serves
    ("gate", True, 0.80, 0.79, True),
    ("gate", True, 0.79, 0.79, False),  # equal is not better
])
def test_one_rule_decides_every_promotion(policy, has_champion, candidate, champion, promote):
    decision = decide(policy, has_champion=has_champion, metric="auc", margin=0.0, candidate=candidate,
                      champion=champion)
    assert decision.promote is promote
    assert decision.reason


def test_the_gate_respects_the_margin_and_the_metric_direction():
    assert not decide("gate", has_champion=True, metric="auc", margin=0.02, candidate=0.81, champion=0.80).promote
    assert decide("gate", has_champion=True, metric="brier", candidate=0.10, champion=0.12).promote  # lower wins
    assert "champion kept" in decide("gate", has_champion=True, metric="log_loss", candidate=0.5,
                                     champion=0.4).reason
    with pytest.raises(UnknownNameError, match="valid promotion policys are: always, gate, if-first, never"):
        decide("sometimes", has_champion=True)
    with pytest.raises(UnknownNameError, match="unknown gate metric 'recall'"):
        decide("gate", has_champion=True, metric="recall", candidate=0.1, champion=0.2)


def _scores(n: int = 800, seed: int = 3) -> dict[str, Any]:
    """Fixed data: outcomes, a good model, a noisier (worse) one, one as good as the good one, one that is
    good except on one subgroup, and the good one made overconfident (same ranking, worse calibration)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-1.5 * signal))).astype(int)
    group = pd.Series(np.where(np.arange(n) % 2 == 0, "a", "b"))

    def model(noise: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(1.5 * signal + rng.normal(scale=noise, size=n))))

    good, same, worse = model(0.5), model(0.5), model(2.0)
    lost_b = good.copy()
    lost_b[group.to_numpy() == "b"] = worse[group.to_numpy() == "b"]  # as good on a, as bad as `worse` on b
    overconfident = 1 / (1 + np.exp(-4.0 * np.log(good / (1 - good))))
    return {"y": y, "groups": {"half": group}, "good": good, "same": same, "worse": worse, "lost_b": lost_b,
            "overconfident": overconfident}


RULE = EvidenceRule(margin=0.0, noninferiority_auc=0.03, noninferiority_log_loss=0.02, noninferiority_subgroup_auc=0.03)


@pytest.mark.parametrize(("candidate", "champion", "promote", "failed"), [
    ("good", "worse", True, set()),                       # better, with 95 % confidence, everywhere
    ("same", "good", False, {"better: auc or log_loss"}),  # as good: not proven better, the champion stays
    ("worse", "good", False, {"better: auc or log_loss", "auc not worse", "auc not worse: half=a", "auc not worse: half=b",
                              "calibration not worse: log_loss"}),
    ("good", "lost_b", True, set()),                     # as good on half a and better on half b
    ("good", "overconfident", True, set()),              # the same ranking, better calibrated (log-loss)
])
def test_the_evidence_gate_on_a_better_an_equal_and_a_worse_challenger(candidate, champion, promote, failed):
    data = _scores()
    evidence = paired_comparison(data["y"], data[candidate], data[champion], data["groups"])
    decision = decide("gate", has_champion=True, metric="auc", evidence=evidence, rule=RULE,
                      candidate=evidence["auc"]["a"], champion=evidence["auc"]["b"])
    assert decision.promote is promote, decision.reason
    verdicts = {c["clause"]: c["passed"] for c in decision.clauses}
    assert set(verdicts) == {"better: auc or log_loss", "auc not worse", "calibration not worse: log_loss",
                             "auc not worse: half=a", "auc not worse: half=b"}
    assert {name for name, ok in verdicts.items() if ok is False} >= failed
    assert promote is (not any(ok is False for ok in verdicts.values()))
    assert ("champion kept" in decision.reason) is not promote
    assert "[" in decision.reason and "paired rows" in decision.reason  # the interval is in the reason


def test_the_evidence_gate_refuses_a_better_ranking_that_breaks_a_subgroup_or_calibration():
    data = _scores()
    # Better overall (the champion is bad on half b), but the candidate is worse on half a.
    mixed = data["good"].copy()
    a = data["groups"]["half"].to_numpy() == "a"
    mixed[a] = data["worse"][a]
    champion = data["lost_b"]
    evidence = paired_comparison(data["y"], mixed, champion, data["groups"])
    decision = decide("gate", has_champion=True, evidence=evidence, rule=RULE)
    assert not decision.promote
    assert {c["clause"] for c in decision.clauses if c["passed"] is False} >= {"auc not worse: half=a"}
    # Same ranking as a better model, but overconfident: AUC better, calibration much worse.
    evidence = paired_comparison(data["y"], data["overconfident"], data["worse"], data["groups"])
    decision = decide("gate", has_champion=True, evidence=evidence, rule=RULE)
    assert evidence["auc"]["ci_low"] > 0 and not decision.promote
    assert [c["clause"] for c in decision.clauses if c["passed"] is False] == ["calibration not worse: log_loss"]


def test_the_evidence_gate_needs_evidence_for_every_metric_it_can_judge():
    data = _scores(n=60)
    evidence = paired_comparison(data["y"], data["good"], data["worse"], data["groups"])
    # Lower-is-better metrics are judged on the upper end of their interval.
    assert decide("gate", has_champion=True, metric="log_loss", evidence=evidence, rule=RULE).clauses[0][
        "clause"] == "better: log_loss"
    # A metric without paired evidence (accuracy) falls back to the point estimates.
    assert not decide("gate", has_champion=True, metric="accuracy", evidence=evidence, rule=RULE, candidate=0.7,
                      champion=0.7).clauses
    with pytest.raises(ValueError, match="non-inferiority margins cannot be negative"):
        EvidenceRule(noninferiority_auc=-0.1)


def test_a_candidate_leads_on_a_point_estimate_it_may_win_on_proven_or_not():
    """What holds a second retraining while a challenger is in the shadow: ahead on AUC, or on log-loss (a
    recalibration), even before the evidence proves it; behind on both is not leading."""
    data = _scores(n=120)
    rule = EvidenceRule()
    ahead = paired_comparison(data["y"], data["good"], data["worse"], data["groups"])
    behind = paired_comparison(data["y"], data["worse"], data["good"], data["groups"])
    assert leads(ahead, rule) and not leads(behind, rule)
    calibrated = paired_comparison(data["y"], data["good"], data["overconfident"], data["groups"])
    assert calibrated["auc"]["diff"] == pytest.approx(0, abs=1e-9) and leads(calibrated, rule)  # log-loss only
    assert not leads(calibrated, EvidenceRule(also_better_on=()))


def test_a_subgroup_with_too_few_events_is_reported_not_tested_and_more_looks_widen_the_intervals():
    data = _scores(n=200)
    evidence = paired_comparison(data["y"], data["good"], data["worse"], data["groups"])
    strict = EvidenceRule(min_subgroup_events=80)  # each half has fewer than 80 rows of one outcome
    decision = decide("gate", has_champion=True, evidence=evidence, rule=strict)
    untested = [c for c in decision.clauses if c["clause"].startswith("auc not worse: half")]
    assert untested and all(c["passed"] is None and "not tested" in c["note"] for c in untested)
    one, many = (decide("gate", has_champion=True, evidence=evidence, rule=EvidenceRule(z=z)) for z in (1.96, 2.58))
    assert many.clauses[1]["ci_low"] < one.clauses[1]["ci_low"]  # "auc not worse"
    settings = Settings(gate_noninferiority_subgroup_auc=0.07)
    assert EvidenceRule.from_settings(settings, looks=5).z == pytest.approx(2.5758, abs=1e-3)
    assert EvidenceRule.from_settings(settings).noninferiority_subgroup_auc == 0.07


def test_change_champion_moves_the_alias_serves_and_records_who_and_why(mlflow_sqlite: Settings, tmp_path):
    settings = mlflow_sqlite.model_copy(update={"model_name": f"risk-{uuid.uuid4().hex[:8]}", "home": tmp_path,
                                                "deployer": "none", "model_server_url": "http://127.0.0.1:9"})
    tracker = Tracker(settings.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=600, seed=5)
    first = train_and_register(settings, tracker, data, kind="logistic-regression", promote="if-first")
    second = train_and_register(settings, tracker, data, kind="logistic-regression", promote="never")
    events: list[tuple[str, dict[str, Any], str | None]] = []

    def record(kind: str, detail: dict[str, Any], version: str | None) -> dict[str, Any]:
        events.append((kind, detail, version))
        return {"kind": kind, "detail": detail}

    stored = change_champion(settings, tracker, action="promote", version=second.version.version, reason="better",
                             by="alice", record=record)
    assert stored["kind"] == "promoted"  # what the recorder returned (the gateway returns the stored event)
    assert tracker.alias_version(settings.model_name, CHAMPION).version == second.version.version
    kind, detail, version = events[-1]
    assert (kind, version) == ("promoted", second.version.version)
    assert detail["from"] == first.version.version and detail["to"] == second.version.version
    assert detail["by"] == "alice" and detail["reason"] == "better"
    # LM_DEPLOYER=none: the version is registered, not served, and the event says so.
    assert detail["deployed"]["backend"] == "none" and detail["deployed"]["changed"] is False

    change_champion(settings, tracker, action="rollback", version=None, reason="rollback", by="bob", record=record)
    kind, detail, version = events[-1]
    assert (kind, version, detail["by"]) == ("rolled-back", first.version.version, "bob")
    assert tracker.alias_version(settings.model_name, CHAMPION).version == first.version.version

    with pytest.raises(RegistryError, match="already the champion"):
        change_champion(settings, tracker, action="rollback", version=first.version.version, reason="x", by="bob",
                        record=record)
    assert len(events) == 2  # a refused change records nothing


def test_a_change_of_champion_whose_deployment_fails_leaves_the_alias(mlflow_sqlite: Settings, model_server: Any,
                                                                      tmp_path):
    """Atomic: the version is served first and the alias moves only once it serves. The deployer is the local
    one, pointed at the session's real MLServer, which does not serve this model name (its repository has no
    such model), so serving fails; the champion stays and the failure is recorded."""
    settings = mlflow_sqlite.model_copy(update={
        "model_name": f"risk-{uuid.uuid4().hex[:8]}", "home": tmp_path, "deployer": "local",
        "model_server_url": model_server.url})
    tracker = Tracker(settings.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=600, seed=5)
    first = train_and_register(settings, tracker, data, kind="logistic-regression", promote="if-first")
    second = train_and_register(settings, tracker, data, kind="logistic-regression", promote="never")
    events: list[tuple[str, dict[str, Any], str | None]] = []
    with pytest.raises(ServiceUnavailableError, match=f"champion stays v{first.version.version}"):
        change_champion(settings, tracker, action="promote", version=second.version.version, reason="better",
                        by="alice", record=lambda kind, detail, version: events.append((kind, detail, version)))
    assert tracker.alias_version(settings.model_name, CHAMPION).version == first.version.version
    assert [(k, v, d["champion_kept"], d["by"]) for k, d, v in events] == [
        ("promotion-failed", second.version.version, first.version.version, "alice")]
    assert "does not serve" in events[0][1]["error"]


def test_a_subgroup_too_small_to_show_non_inferiority_is_tested_for_harm_and_says_so():
    """After a change in the risk function a retrained model is far better overall while a subgroup of a
    few hundred rows cannot show non-inferiority even at no difference (its interval is wider than the
    margin): ``no-harm`` promotes unless it is worse there beyond doubt, ``hold`` waits for more rows."""
    data = _scores(n=400)
    a = data["groups"]["half"].to_numpy() == "a"
    # Better on half b (the champion is bad there), as good on half a (another model of the same quality).
    champion = data["same"].copy()
    champion[~a] = data["worse"][~a]
    evidence = paired_comparison(data["y"], data["good"], champion, data["groups"])
    narrow = EvidenceRule(noninferiority_subgroup_auc=0.02, min_subgroup_events=10)
    decision = decide("gate", has_champion=True, evidence=evidence, rule=narrow)
    half_a = next(c for c in decision.clauses if c["clause"] == "auc not worse: half=a")
    assert decision.promote, decision.reason
    assert half_a["test"] == "no proven harm" and half_a["passed"] is True
    assert "auc not worse: half=a: pass (no proven harm: high +" in clauses_summary(list(decision.clauses))
    assert half_a["ci_high"] - half_a["diff"] >= 0.02 and half_a["ci_low"] < -0.02 and "too few rows to show non-inferiority" in half_a["note"]
    held = decide("gate", has_champion=True, evidence=evidence,
                  rule=EvidenceRule(noninferiority_subgroup_auc=0.02, min_subgroup_events=10,
                                    underpowered_subgroups="hold"))
    assert not held.promote and "auc not worse: half=a" in held.reason
    # Worse beyond doubt on half a: refused whatever the rule, though far better on half b.
    harmful = data["good"].copy()
    harmful[a] = data["worse"][a]
    evidence = paired_comparison(data["y"], harmful, champion, data["groups"])
    decision = decide("gate", has_champion=True, evidence=evidence, rule=narrow)
    half_a = next(c for c in decision.clauses if c["clause"] == "auc not worse: half=a")
    assert not decision.promote and half_a["passed"] is False and half_a["ci_high"] < 0
    with pytest.raises(UnknownNameError):
        EvidenceRule(underpowered_subgroups="maybe")


@pytest.fixture
def two_versions(mlflow_sqlite: Settings, tmp_path) -> tuple[Settings, Tracker, Any, Any]:
    """A fresh model with a champion (v1) and a second registered version that does not serve (v2)."""
    settings = mlflow_sqlite.model_copy(update={"model_name": f"risk-{uuid.uuid4().hex[:8]}", "home": tmp_path,
                                                "deployer": "none"})
    tracker = Tracker(settings.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=600, seed=5)
    first = train_and_register(settings, tracker, data, kind="logistic-regression", promote="if-first").version
    second = train_and_register(settings, tracker, data, kind="logistic-regression", promote="never").version
    return settings, tracker, first, second


def test_a_candidate_judged_against_an_earlier_champion_is_not_promoted(two_versions, tmp_path):
    """A retraining's gate compared its candidate with v1; a shadow challenger (v2) became champion before the
    pipeline's promote step ran: the candidate was never compared with v2, so it is not promoted over it."""
    from learning_machine.components import release
    from learning_machine.errors import ConflictError

    settings, tracker, first, shadow = two_versions
    comparison = tmp_path / "comparison.json"
    comparison.write_text(json.dumps({"champion_version": first.version, "gate": {"reason": "better than v1"}}))
    judged = release.register(settings, str(shadow.run_id), comparison)  # the pipeline's candidate
    assert tracker.version(settings.model_name, judged).tags["lm.gate_champion"] == first.version
    change_champion(settings, tracker, action="promote", version=shadow.version, reason="shadow", by="loop",
                    deploy=False)
    with pytest.raises(ConflictError, match=f"judged against v{first.version}, but v{shadow.version} is champion"):
        release.promote(settings, judged)
    assert tracker.alias_version(settings.model_name, CHAMPION).version == shadow.version
    # Judged against the version that serves: promoted.
    comparison.write_text(json.dumps({"champion_version": shadow.version, "gate": {"reason": "better than v2"}}))
    again = release.register(settings, str(shadow.run_id), comparison)
    assert release.promote(settings, again) == again
    assert tracker.alias_version(settings.model_name, CHAMPION).version == again
