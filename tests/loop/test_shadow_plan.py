"""The shadow evaluation's plan and pairing, as plain functions (the end-to-end shadow runs in
test_learning_loop.py on real services)."""

from __future__ import annotations

import pytest

from learning_machine.data.sources import load_dataset
from learning_machine.loop.shadow import ShadowPlan, first_look_at, paired_rows


def test_the_plan_looks_at_each_doubling_and_shares_the_error_budget():
    plan = ShadowPlan(first_look=100, max_rows=1600)
    assert plan.look_sizes() == [100, 200, 400, 800, 1600] and plan.looks == 5
    assert first_look_at(plan, 1) == 100 and first_look_at(plan, 101) == 200 and first_look_at(plan, 401) == 800
    assert first_look_at(plan, 1601) == 1601  # beyond the plan: no more looks
    with pytest.raises(ValueError, match="first look needs at least 20"):
        ShadowPlan(first_look=10)


def test_only_independent_labelled_records_of_the_champion_are_paired():
    spec = load_dataset("synthetic-cohort", n_rows=50, seed=1).spec
    features = {name: None for name in spec.feature_names}

    def item(i: int, version: str = "1", outcome: int | None = 1) -> dict:
        return {"id": i, "model_version": version, "probability": 0.3, "outcome": outcome, "features": features}

    labelled = [item(5), item(12), item(11), item(13, version="2"), item(14, outcome=None), item(15)]
    paired = paired_rows(spec, labelled, {5: 0.1, 11: 0.6, 12: 0.7, 13: 0.2, 14: 0.5}, cut_id=10, champion="1")
    # 5 is before the cut (the challenger learnt from it), 13 was answered by another version, 14 has no
    # outcome, 15 was not scored by the challenger: 11 and 12 remain, in prediction order.
    assert paired["prediction_id"].tolist() == [11, 12] and paired["challenger"].tolist() == [0.6, 0.7]
    assert paired["champion"].tolist() == [0.3, 0.3]
