"""The registry's names: the aliases, the artifact names inside a logged model, and MLflow's
``models:/`` URIs. Dependency-free, so the serving hot path can import it without MLflow."""

from __future__ import annotations

from learning_machine.errors import ModelNotFoundError

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_TAG = "lm.previous_champion"
PROMOTED_AT_TAG = "lm.promoted_at"
PROMOTION_REASON_TAG = "lm.promotion_reason"
GATE_CHAMPION_TAG = "lm.gate_champion"
"""The champion version the gate compared a candidate with (empty: there was none)."""
# Change control (learning_machine.lifecycle.plan): the plan a version was judged by and its decision, and,
# for a version outside the plan, the approval it waits for or was given (awaiting, approved, rejected).
PLAN_TAG = "lm.plan"
PLAN_DIGEST_TAG = "lm.plan_digest"
PLAN_DECISION_TAG = "lm.plan_decision"
PLAN_REASON_TAG = "lm.plan_reason"
APPROVAL_TAG = "lm.approval"
APPROVAL_BY_TAG = "lm.approval_by"
APPROVAL_REASON_TAG = "lm.approval_reason"
APPROVAL_AT_TAG = "lm.approval_at"
ROLLOUT_TAG = "lm.rollout"
"""How a champion's rollout ended under the plan's rollback rule: ``confirmed`` or ``rolled-back`` (or
``rollback-recommended`` when the plan does not roll back without a person), with the realised AUC."""
CHANGE_TAG = "lm.change"
"""The kind of change a candidate run (and the version registered from it) is: ``train``, ``retrain`` or
``recalibrate``. The evaluate step judges the candidate against the change-control plan's allowed changes."""
RECALIBRATION_TAG = "lm.recalibration"
"""A recalibrated candidate's map (``intercept``, ``slope``, ``method``) as JSON."""
MODEL_ARTIFACT = "model"
SPEC_FILE = "dataset_spec.yaml"


def model_uri(model_name: str, ref: str) -> str:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (MLflow's own URI forms)."""
    return f"models:/{model_name}/{ref}" if ref.isdigit() else f"models:/{model_name}@{ref}"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """(name, version or alias) of a ``models:/`` URI."""
    if not uri.startswith("models:/"):
        raise ModelNotFoundError(f"not a registry model URI: {uri!r} (expected models:/<name>/<version> or "
                                 "models:/<name>@<alias>)")
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, _, ref = rest.partition("@")
    else:
        name, _, ref = rest.rpartition("/")
    if not name or not ref:
        raise ModelNotFoundError(f"model URI {uri!r} names no version or alias")
    return name, ref
