"""Shadow evaluation of a challenger on live traffic (what Seldon calls a shadow): a registered challenger
the retraining gate could not yet prove better scores every record the champion answers; its scores are
stored apart (``/v1/shadow/predictions``, never returned to clinicians) and, as outcomes arrive, paired
with the champion's predictions of the same records. The evidence rule of the gate
(:func:`learning_machine.lifecycle.promotion.decide_on_evidence`) looks at it each time the paired rows
double (100, 200, 400 ... up to a maximum), and the challenger is promoted the moment the evidence is
sufficient, or retired when it is proven worse or the maximum is reached.

Several looks at growing evidence would inflate the chance of promoting a model that is not better, so
the 95 % error budget is shared between the planned looks (Bonferroni: each look's interval is wider).

Only predictions made after the newest record the challenger was trained on are paired (``cut_id``): the
evidence is independent of its training rows. Records answered before the shadow started but after the
cut are scored too (from the stored features), so no independent outcome is wasted.

The computations are plain functions; :class:`learning_machine.loop.service.LoopService` wires them to
the gateway (feeds, storage), MLflow (the challenger's model) and the lifecycle (promotion)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.data.spec import DatasetSpec


@dataclass(frozen=True)
class ShadowPlan:
    """When to look (settings ``LM_LOOP_SHADOW_*``): at ``first_look`` paired rows, then at each doubling,
    until ``max_rows``."""

    first_look: int = 100
    max_rows: int = 1600

    def __post_init__(self) -> None:
        if self.first_look < 20 or self.max_rows < self.first_look:
            raise ValueError("a shadow's first look needs at least 20 rows, and max_rows at least that many")

    @property
    def looks(self) -> int:
        """How many looks the plan makes at most (the error budget is shared between them)."""
        return math.floor(math.log2(self.max_rows / self.first_look)) + 1

    def look_sizes(self) -> list[int]:
        return [self.first_look * 2 ** k for k in range(self.looks)]


@dataclass
class Shadow:
    """One shadow evaluation in progress (saved with the monitor's state)."""

    version: str
    """The challenger's version."""
    champion: str
    cut_id: int
    """The newest prediction id among the rows the challenger learnt from: later ones are independent."""
    started_at: float
    data: str | None = None
    """The rows the challenger was trained on (the monitor's new normal if it is retired)."""
    scored_up_to: int = 0
    """Feed position up to which the challenger has scored and stored its predictions."""
    next_look: int = 100
    looks: list[dict[str, Any]] = field(default_factory=list)
    held: bool = False
    """A policy firing was recorded as held while this shadow runs (said once)."""

    def as_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Shadow:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})


def first_look_at(plan: ShadowPlan, rows: int) -> int:
    """The first planned look at or above ``rows`` paired rows (the plan's first, at least)."""
    for size in plan.look_sizes():
        if size >= rows:
            return size
    return plan.max_rows + 1


def paired_rows(spec: DatasetSpec, labelled: Sequence[Mapping[str, Any]], scores: Mapping[int, float], *,
                cut_id: int, champion: str) -> pd.DataFrame:
    """The champion's labelled predictions after ``cut_id`` that the challenger scored, one row each, in
    prediction order: the features, ``outcome``, ``champion`` (its probability) and ``challenger``."""
    rows = [{**item["features"], "prediction_id": int(item["id"]), "outcome": int(item["outcome"]),
             "champion": float(item["probability"]), "challenger": float(scores[int(item["id"])])}
            for item in labelled
            if int(item["id"]) > cut_id and str(item["model_version"]) == champion and int(item["id"]) in scores
            and item.get("outcome") is not None]
    frame = pd.DataFrame(rows, columns=[*spec.feature_names, "prediction_id", "outcome", "champion", "challenger"])
    return frame.drop_duplicates("prediction_id").sort_values("prediction_id", kind="stable").reset_index(drop=True)


def challenger_results(spec: DatasetSpec, paired: pd.DataFrame) -> dict[str, Any]:
    """The challenger's own results on the paired rows that the change-control plan checks
    (:func:`learning_machine.lifecycle.plan.judge`): its calibration slope and intercept, and its metrics per
    subgroup label."""
    from learning_machine.model.evaluation import evaluate
    from learning_machine.model.recalibration import calibration_fit

    labels = paired["outcome"].to_numpy(dtype=int)
    proba = paired["challenger"].to_numpy(dtype=float)
    fit = calibration_fit(labels, proba)
    return {"calibration": fit.as_dict() if fit else {},
            "subgroups": evaluate(labels, proba, spec.subgroup_labels(paired)).subgroups}


def evidence_of(spec: DatasetSpec, paired: pd.DataFrame) -> dict[str, Any]:
    """The gate's paired evidence (challenger minus champion) on the paired rows, overall and per subgroup."""
    from learning_machine.model.evaluation import paired_comparison

    return paired_comparison(paired["outcome"].to_numpy(dtype=int), paired["challenger"].to_numpy(dtype=float),
                             paired["champion"].to_numpy(dtype=float), spec.subgroup_labels(paired))


def score(model: Any, spec: DatasetSpec, items: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """The challenger's probability for each fed prediction ``(prediction id, probability)``."""
    if not items:
        return []
    from learning_machine.model.training import predict_proba

    frame = pd.DataFrame([dict(i["features"]) for i in items])
    for name in spec.feature_names:
        if name not in frame:
            frame[name] = np.nan
    proba = predict_proba(model, spec, frame[spec.feature_names])
    return [(int(i["id"]), float(p)) for i, p in zip(items, proba, strict=True)]
