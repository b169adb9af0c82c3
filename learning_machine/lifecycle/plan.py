"""The change-control plan: which changes the learning loop may make to a clinical model on its own, the
acceptance criteria a changed model must meet, and how a change is undone, as one versioned YAML file.

It follows the structure of the FDA's guidance on predetermined change control plans (December 2024): a
description of the allowed modifications (``changes``), a modification protocol whose performance evaluation
has pre-specified acceptance criteria on data independent of training (``acceptance``), and the update and
rollback procedure (``rollback``). :func:`judge` checks a candidate against the plan clause by clause: a
candidate inside the plan may be promoted automatically; one that is better than the champion but outside the
plan waits for a person's approval (``awaiting-approval``); one that shows no improvement, or on too few rows,
leaves the champion in place.

The evidence clauses are the evidence gate's own (:func:`learning_machine.lifecycle.promotion.decide_on_evidence`,
configured here instead of by ``LM_GATE_*``); the plan adds the candidate's calibration slope and intercept
bounds, per-subgroup floors, the minimum post-change rows, the independence of the test rows, and which kinds
of change are pre-authorised."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from learning_machine.data.spec import read_yaml, validate_document
from learning_machine.errors import SpecError
from learning_machine.settings import Settings

if TYPE_CHECKING:
    from learning_machine.lifecycle.promotion import EvidenceRule

PLANS = Path(__file__).parent / "plans"
"""The example plans shipped with the package, one per built-in dataset (``<dataset>.yaml``), and the plan
file's JSON schema (``plan.schema.json``, kept equal to :func:`plan_schema` by a test)."""
SCHEMA = PLANS / "plan.schema.json"

ChangeKind = Literal["retrain", "recalibrate"]
"""``retrain``: refit the model on newer rows with the same features and the same training code;
``recalibrate``: keep the champion's scores and refit only the map from score to probability."""

Decision = Literal["promote", "awaiting-approval", "keep-champion"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bounds(_Strict):
    """A closed interval ``[low, high]``."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        return self


class Discrimination(_Strict):
    metric: Literal["auc", "log_loss", "brier"] = Field(
        "auc", description="The metric on which the candidate must be better than the champion.")
    margin: float = Field(0.0, ge=0, le=1, description="By more than this (the interval's better end).")
    also_better_on: tuple[Literal["auc", "log_loss", "brier"], ...] = Field(
        ("log_loss",), description="Other metrics on which proving itself better is enough (a recalibrated model "
                                   "ranks the same but predicts better); the error budget is split.")
    noninferiority_auc: float = Field(0.03, ge=0, le=0.5,
                                      description="The AUC may be at most this much below the champion's.")


class Calibration(_Strict):
    noninferiority_log_loss: float = Field(0.02, ge=0, le=1,
                                           description="The log-loss may be at most this much above the champion's.")
    slope: Bounds = Field(Bounds(low=0.8, high=1.2),
                          description="The candidate's calibration slope on the test rows must lie here (1 is ideal; "
                                      "below 1, predictions are too extreme).")
    intercept: Bounds = Field(Bounds(low=-0.2, high=0.2),
                              description="The candidate's calibration-in-the-large (logit scale; 0 is ideal).")
    judged_on: Literal["interval", "point"] = Field(
        "interval", description="interval: a bound fails only when the 95 % interval of the slope or intercept "
                                "lies wholly outside it (miscalibration shown, not a noisy estimate on few rows); "
                                "point: the estimate itself must lie within the bounds.")


class Subgroups(_Strict):
    noninferiority_auc: float = Field(0.10, ge=0, le=0.5,
                                      description="On every subgroup tested, the AUC may be at most this much "
                                                  "below the champion's.")
    min_events: int = Field(30, ge=5, description="A subgroup is tested only with this many rows of each outcome.")
    underpowered: Literal["no-harm", "hold"] = Field(
        "no-harm", description="A subgroup whose interval is wider than its margin: test only for proven harm, "
                               "or hold the candidate.")
    floors_judged_on: Literal["interval", "point"] = Field(
        "interval", description="interval: a floor fails only when the AUC's 95 % interval (Hanley-McNeil) lies "
                                "wholly below it; point: the estimate itself must reach it. Either way a label is "
                                "judged only with `min_events` rows of each outcome.")
    floors: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="The candidate's own AUC on each label of a subgroup must reach "
                                          "this (``{subgroup: {label or '*': floor}}``).")

    @model_validator(mode="after")
    def _floors(self) -> Subgroups:
        for group, labels in self.floors.items():
            for label, floor in labels.items():
                if not 0.5 <= floor <= 1:
                    raise ValueError(f"floor of {group}={label} must be between 0.5 and 1, not {floor:g}")
        return self


class Acceptance(_Strict):
    discrimination: Discrimination = Discrimination()
    calibration: Calibration = Calibration()
    subgroups: Subgroups = Subgroups()
    min_post_change_rows: int = Field(500, ge=50, description="Rows with outcomes, after the change point, "
                                                             "that the comparison must be made on.")
    independent_test_rows: bool = Field(True, description="The test rows must be rows the candidate was not "
                                                          "trained on (checked from the data manifest).")


class Rollback(_Strict):
    to: Literal["previous-champion"] = "previous-champion"
    auc_floor: float = Field(0.70, ge=0.5, le=1, description="Realised AUC of the serving model below this, on "
                                                             "`window_rows` labelled rows: roll back.")
    window_rows: int = Field(500, ge=50, description="Labelled rows the realised AUC is measured on.")
    automatic: bool = Field(True, description="Roll back without waiting for a person (the event is recorded).")


class ChangePlan(_Strict):
    """A change-control plan (see the module's documentation)."""

    plan: str = Field(description="The plan's name.")
    version: str = Field(description="The plan's version; every decision records it (with the file's digest).")
    dataset: str = Field(description="The dataset spec (its name) the plan applies to.")
    description: str = ""
    changes: tuple[ChangeKind, ...] = Field(
        ("retrain",), description="The changes the loop may make without a person's approval.")
    acceptance: Acceptance = Acceptance()
    rollback: Rollback = Rollback()
    digest: str = Field("", description="sha256 of the plan file (set when loaded; not written in the file).")
    text: str = Field("", exclude=True, description="The plan file's text (set when loaded; a pipeline is given it).")

    @model_validator(mode="after")
    def _changes(self) -> ChangePlan:
        if len(set(self.changes)) != len(self.changes):
            raise ValueError("a change kind is listed twice")
        return self

    def evidence_rule(self, looks: int = 1, margin: float | None = None) -> EvidenceRule:
        """The evidence gate these acceptance criteria configure (``looks``: as in
        :meth:`~learning_machine.lifecycle.promotion.EvidenceRule.from_settings`; ``margin``: a caller's own
        margin, which can only make the plan's stricter)."""
        from learning_machine.lifecycle.promotion import EvidenceRule, interval_z

        a = self.acceptance
        return EvidenceRule(max(a.discrimination.margin, margin or 0.0), a.discrimination.noninferiority_auc,
                            a.calibration.noninferiority_log_loss, a.subgroups.noninferiority_auc,
                            a.subgroups.min_events, a.subgroups.underpowered, a.discrimination.also_better_on,
                            z=interval_z(looks))

    def check_against(self, spec: Any) -> None:
        """Raise :class:`SpecError` unless the plan fits the dataset spec: its name, and every subgroup with a
        floor defined by the spec."""
        if self.dataset != spec.name:
            raise SpecError(f"change-control plan {self.plan!r} is for dataset {self.dataset!r}, not {spec.name!r}")
        known = {g.name for g in spec.subgroups}
        unknown = sorted(set(self.acceptance.subgroups.floors) - known)
        if unknown:
            raise SpecError(f"change-control plan {self.plan!r} sets floors for subgroups {', '.join(unknown)}, "
                            f"which dataset {spec.name!r} does not define (it has: {', '.join(sorted(known)) or 'none'})")

    def identity(self) -> dict[str, str]:
        return {"plan": self.plan, "version": self.version, "digest": self.digest}


def load_plan(path: str | Path) -> ChangePlan:
    """Read and check a plan file; a malformed one raises :class:`SpecError` naming every bad field."""
    text, raw = read_yaml(path, "change-control plan")
    return _checked(text, raw, str(path))


def parse_plan(text: str, source: str = "<pipeline parameter change_plan>") -> ChangePlan:
    """A plan from its file's text (how a pipeline receives the loop's plan: a pod has no file of the monitor's),
    checked and digested exactly as :func:`load_plan` does with the file."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"change-control plan {source!r} is not valid YAML: {exc}") from exc
    return _checked(text, raw, source)


def _checked(text: str, raw: Any, source: str) -> ChangePlan:
    for computed in ("digest", "text"):
        if isinstance(raw, Mapping) and computed in raw:
            raise SpecError(f"change-control plan {source!r}: {computed!r} is computed from the file, not written "
                            "in it")
    plan = validate_document(ChangePlan, raw, "change-control plan", source)
    return plan.model_copy(update={"digest": hashlib.sha256(text.encode()).hexdigest(), "text": text})


def plan_for(dataset: str, path: str | Path | None = None) -> ChangePlan:
    """The plan at ``path``, else the example shipped for ``dataset``; it must name that dataset."""
    if path is None:
        path = PLANS / f"{dataset}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in PLANS.glob("*.yaml"))
            raise SpecError(f"no change-control plan ships for dataset {dataset!r} (shipped: {', '.join(known)}): "
                            "write one (see docs/change-control.md)")
    plan = load_plan(path)
    if plan.dataset != dataset:
        raise SpecError(f"change-control plan {str(path)!r} is for dataset {plan.dataset!r}, not {dataset!r}")
    return plan


GATE_SETTINGS = "gate-settings"
"""The name of the plan a dataset without one gets (:func:`plan_from_settings`)."""


def plan_from_settings(settings: Settings, dataset: str) -> ChangePlan:
    """The plan a dataset without one gets: the evidence gate's ``gate_*`` settings as its acceptance
    criteria, retraining as the one pre-authorised change, no calibration bounds and no subgroup floors (the
    gate as it was before plans), and the smallest allowed minimum of rows. Its digest is that of those
    settings, so a decision still records exactly which rule was applied."""
    from learning_machine.lifecycle.promotion import paired_metric

    values = {"margin": max(settings.gate_margin, 0.0), "noninferiority_auc": settings.gate_noninferiority_auc,
              "noninferiority_log_loss": settings.gate_noninferiority_log_loss,
              "subgroup_auc": settings.gate_noninferiority_subgroup_auc,
              "min_subgroup_events": settings.gate_min_subgroup_events,
              "underpowered": settings.gate_underpowered_subgroups,
              "metric": paired_metric(settings.gate_metric)}
    unbounded = Bounds(low=-1e9, high=1e9)
    plan = ChangePlan(
        plan=GATE_SETTINGS, version="LM_GATE", dataset=dataset,
        description="No change-control plan was given for this dataset: the evidence gate's LM_GATE_* settings.",
        changes=("retrain",),
        acceptance=Acceptance(
            discrimination=Discrimination(metric=values["metric"], margin=values["margin"],
                                          noninferiority_auc=values["noninferiority_auc"]),
            calibration=Calibration(noninferiority_log_loss=values["noninferiority_log_loss"], slope=unbounded,
                                    intercept=unbounded),
            subgroups=Subgroups(noninferiority_auc=values["subgroup_auc"],
                                min_events=values["min_subgroup_events"], underpowered=values["underpowered"]),
            min_post_change_rows=50))
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return plan.model_copy(update={"digest": digest})


def plan_for_settings(settings: Settings, spec: Any, text: str = "") -> ChangePlan:
    """The plan that governs ``spec``'s model (:func:`plan_named`); a plan that does not fit the dataset is
    refused (:class:`SpecError`)."""
    plan = plan_named(settings, spec.name, text)
    if plan.plan != GATE_SETTINGS:
        plan.check_against(spec)
    return plan


def plan_named(settings: Settings, dataset: str, text: str = "") -> ChangePlan:
    """The plan of dataset ``dataset``: ``text`` (a plan file's text, the pipelines' ``change_plan`` parameter)
    when given, else ``settings.change_plan`` when set, else the one shipped for the dataset, else
    :func:`plan_from_settings`."""
    if text:
        return parse_plan(text)
    if settings.change_plan is not None:
        return load_plan(settings.change_plan)
    if (PLANS / f"{dataset}.yaml").exists():
        return load_plan(PLANS / f"{dataset}.yaml")
    return plan_from_settings(settings, dataset)


def plan_schema() -> dict[str, Any]:
    """The plan file's JSON schema (for editors and CI), without the computed ``digest`` and ``text``."""
    schema = ChangePlan.model_json_schema()
    schema["properties"].pop("digest", None)
    schema["properties"].pop("text", None)
    schema["additionalProperties"] = False
    return schema


# -- the judgement ---------------------------------------------------------------------------------------
def _floor_clause(name: str, floor: float | None, metrics: Mapping[str, Any], rule: Subgroups,
                  z: float) -> dict[str, Any]:
    """A subgroup label's floor clause, from its metrics (``auc``, ``n``, ``prevalence``): not assessable with
    fewer than ``min_events`` rows of either outcome; else on the estimate or on its interval."""
    from learning_machine.model.evaluation import auc_standard_error

    clause: dict[str, Any] = {"clause": f"subgroup floor: {name}", "must_be_at_least": floor}
    auc, n, prevalence = metrics.get("auc"), metrics.get("n"), metrics.get("prevalence")
    if auc is None or auc != auc or floor is None or n is None or prevalence is None:
        return {**clause, "passed": None, "value": None, "note": "not assessable: too few rows of this subgroup"}
    auc, rows = float(auc), int(n)
    events = round(float(prevalence) * rows)
    clause.update(value=round(auc, 4), rows=rows, events=events)
    if min(events, rows - events) < rule.min_events:
        return {**clause, "passed": None, "note": f"not assessable: fewer than {rule.min_events} rows of each "
                                                  "outcome in this subgroup"}
    if rule.floors_judged_on == "point":
        return {**clause, "passed": auc >= floor, "judged_on": "point"}
    se = auc_standard_error(auc, events, rows)
    low, high = auc - z * se, auc + z * se
    return {**clause, "passed": high >= floor, "judged_on": "interval", "interval": [round(low, 4), round(high, 4)],
            **({"note": "estimate below the floor, but not shown to be: its interval reaches it"}
               if auc < floor <= high else {})}


def _calibration_clause(name: str, bounds: Bounds, value: Any, se: Any, z: float | None) -> dict[str, Any]:
    """A calibration bound's clause: on the estimate (``z`` None, or no standard error), or on its interval
    (it fails only when the whole interval is outside the bounds)."""
    clause: dict[str, Any] = {"clause": f"calibration {name}", "bounds": [bounds.low, bounds.high]}
    if value is None or value != value:  # NaN: one outcome only on these rows
        return {**clause, "passed": None, "value": None, "note": "not assessable: no calibration on these rows"}
    value = float(value)
    clause["value"] = round(value, 4)
    inside = bounds.low <= value <= bounds.high
    if z is None or se is None or se != se:
        return {**clause, "passed": bool(inside), "judged_on": "point"}
    low, high = value - z * float(se), value + z * float(se)
    passed = high >= bounds.low and low <= bounds.high
    return {**clause, "passed": bool(passed), "judged_on": "interval", "interval": [round(low, 4), round(high, 4)],
            **({} if inside or not passed else {"note": "estimate outside the bounds, but not shown to be: its "
                                                        "interval reaches them"})}



@dataclass(frozen=True)
class PlanVerdict:
    """What the plan says of a candidate, with every clause (its bound, value and verdict)."""

    decision: Decision
    reason: str
    clauses: tuple[dict[str, Any], ...]
    plan: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "clauses": list(self.clauses), "plan": self.plan}


def judge(plan: ChangePlan, *, change: ChangeKind, evidence: Mapping[str, Any], candidate: Mapping[str, Any],
          independent_test_rows: bool, looks: int = 1, margin: float | None = None) -> PlanVerdict:
    """Check a candidate against ``plan``:

    - ``evidence``: the paired comparison with the champion on the test rows
      (:func:`learning_machine.model.evaluation.paired_comparison`);
    - ``candidate``: the candidate's own results on those rows: ``calibration`` (``slope``, ``intercept``, from
      :func:`learning_machine.model.evaluation.calibration_slope_intercept`) and ``subgroups``
      (``{group: {label: {"auc": ...}}}``, as :func:`learning_machine.model.evaluation.evaluate` gives);
    - ``independent_test_rows``: whether the data manifest shows no test row among the training rows;
    - ``looks``, ``margin``: as in :meth:`ChangePlan.evidence_rule`.

    ``keep-champion`` when the candidate is not shown better (the evidence gate's first clause) or the rows
    are fewer than the plan's minimum; else ``promote`` when every other clause holds; else
    ``awaiting-approval``, naming the clauses outside the plan."""
    from learning_machine.lifecycle.promotion import decide_on_evidence

    a = plan.acceptance
    gate = decide_on_evidence(evidence, plan.evidence_rule(looks, margin), metric=a.discrimination.metric)
    clauses: list[dict[str, Any]] = [{**c, "source": "evidence gate"} for c in gate.clauses]
    rows = int(evidence.get("rows", 0))
    clauses.append({"clause": "rows after the change", "passed": rows >= a.min_post_change_rows, "value": rows,
                    "must_be_at_least": a.min_post_change_rows})
    clauses.append({"clause": f"change allowed: {change}", "passed": change in plan.changes, "value": change,
                    "allowed": list(plan.changes)})
    clauses.append({"clause": "test rows independent of training", "passed": bool(independent_test_rows)
                    if a.independent_test_rows else None, "value": bool(independent_test_rows),
                    **({} if a.independent_test_rows else {"note": "not required by this plan"})})
    calibration = candidate.get("calibration") or {}
    z = plan.evidence_rule(looks).z
    for name in ("slope", "intercept"):
        clauses.append(_calibration_clause(name, getattr(a.calibration, name), calibration.get(name),
                                           calibration.get(f"{name}_se"), z if a.calibration.judged_on == "interval"
                                           else None))
    found = candidate.get("subgroups") or {}
    for group, floors in sorted(a.subgroups.floors.items()):
        labels = found.get(group) or {}
        wanted = sorted(labels) if "*" in floors else sorted(k for k in floors if k != "*")
        if not wanted:
            clauses.append({"clause": f"subgroup floor: {group}", "passed": None,
                            "note": "not assessable: no rows of this subgroup"})
        for label in wanted:
            clauses.append(_floor_clause(f"{group}={label}", floors.get(label, floors.get("*")),
                                         labels.get(label) or {}, a.subgroups, z))
    better = clauses[0]
    outside = [c["clause"] for c in clauses[1:] if c["passed"] is False and c["clause"] != "rows after the change"]
    if better["passed"] is not True:
        decision: Decision = "keep-champion"
        reason = f"not shown better than the champion: {gate.reason}"
    elif rows < a.min_post_change_rows:
        decision = "keep-champion"
        reason = f"only {rows} rows after the change; the plan needs {a.min_post_change_rows}"
    elif outside:
        decision = "awaiting-approval"
        reason = f"better than the champion but outside plan {plan.plan} {plan.version}: {', '.join(outside)}"
    else:
        decision = "promote"
        reason = f"inside plan {plan.plan} {plan.version}: {gate.reason}"
    return PlanVerdict(decision, reason, tuple(json.loads(json.dumps(c, default=float)) for c in clauses),
                       plan.identity())
