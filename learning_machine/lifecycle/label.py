"""The model-facts label of a version, in the layout of Sendak et al., "Presenting machine learning model
information to clinical end users with model facts labels" (npj Digital Medicine 3, 41, 2020): summary, mechanism,
validation and performance, uses and directions, warnings, subgroup performance, other information.

Generated from the version's change record (:mod:`.record`: the immutable part and its rollout) and the facts the
model card already holds of the dataset spec (intended use, outcome, features with their valid and reference
ranges): one source of truth, so the label can never say what the record does not. Rendered as a dict (the API's
JSON), Markdown and HTML (every value escaped); :func:`diff` compares two versions' labels."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

SECTIONS = ("summary", "mechanism", "validation", "uses", "warnings", "subgroups", "other")
TITLES = {"summary": "Summary", "mechanism": "Mechanism of risk score calculation",
          "validation": "Validation and performance", "uses": "Uses and directions", "warnings": "Warnings",
          "subgroups": "Subgroup performance", "other": "Other information"}
METRICS = ("auc", "brier", "log_loss", "ece", "prevalence", "n")
Z95 = 1.959964
WEAK_SUBGROUP_AUC = 0.05  # a subgroup this far below the overall AUC earns a warning
FEW_ROWS = 50  # a subgroup with fewer held-out rows earns a warning


def label(record: Mapping[str, Any], card: Mapping[str, Any], rollout: Mapping[str, Any] | None = None,
          *, sha256: str = "") -> dict[str, Any]:
    """The label of one version: ``record`` (the immutable change record), ``card`` (the model card's dataset
    facts: ``intended_use``, ``target``, ``features``) and ``rollout`` (what happened since)."""
    data, training = record.get("data") or {}, record.get("training") or {}
    evaluation, decision = record.get("evaluation") or {}, record.get("decision") or {}
    candidate = evaluation.get("candidate") or {}
    metrics = candidate.get("metrics") or {}
    target = card.get("target") or {}
    manifest = data.get("manifest") or {}
    overall = _performance(metrics)
    subgroups = [{"subgroup": group, "group": str(name), **_performance(m)}
                 for group, labels in sorted((candidate.get("subgroups") or {}).items())
                 for name, m in sorted(labels.items())]
    champion = evaluation.get("champion") or None
    versus = _versus(evaluation.get("evidence") or {}, champion)
    plan_in_force = (record.get("plan") or {}).get("in_force") or {}
    serving = (rollout or {}).get("serving") or []
    approval = (rollout or {}).get("approval") or {}
    return {
        "model": record.get("model"), "version": record.get("version"), "record_sha256": sha256 or None,
        "summary": {
            "model": f"{record.get('model')} v{record.get('version')}",
            "predicts": f"{target.get('name')}: {target.get('description')}" if target else None,
            "output": "a probability between 0 and 1 of the outcome (the risk), for one patient record",
            "intended use": card.get("intended_use"),
            "change": record.get("change"),
            "registered": record.get("registered_at"),
            "serving now": bool((rollout or {}).get("serving_now")),
            "serving since": (serving[-1]["from"] if serving and serving[-1].get("until") is None
                              else "not serving"),
        },
        "mechanism": {
            "model kind": training.get("kind"), "training mode": training.get("mode"),
            "features": [f.get("name") for f in card.get("features") or []],
            "training data": {"dataset": data.get("dataset"), "rows": data.get("train_rows"),
                              "digest": data.get("digest"),
                              "time window": _window(manifest.get("train") or {})},
            "parameters": training.get("params") or {}, "seed": training.get("seed"),
            "code commit": (training.get("code") or {}).get("commit"),
            "image": (training.get("code") or {}).get("image"),
        },
        "validation": {
            "test rows": evaluation.get("held_out_rows") or data.get("test_rows"),
            "test time window": _window(manifest.get("test") or {}),
            "test rows independent of training": manifest.get("independent"),
            "overall": overall,
            "calibration": _calibration(metrics),
            "against champion": versus,
        },
        "uses": {
            "intended use": card.get("intended_use"),
            "directions": "Use the risk together with clinical judgement: it predicts a risk, not a diagnosis. "
                          "Check that the patient's values lie inside the features' valid ranges and resemble the "
                          "training population (the model card's reference ranges).",
            "decision": decision.get("outcome"), "decision reason": decision.get("reason"),
        },
        "warnings": _warnings(overall, subgroups, decision, manifest),
        "subgroups": subgroups,
        "other": {
            "change-control plan": (f"{plan_in_force.get('plan')} {plan_in_force.get('version')}"
                                    if plan_in_force else None),
            "plan digest": plan_in_force.get("digest"),
            "approval": approval.get("state"), "approved by": approval.get("by"),
            "training run": training.get("run_id"), "change record sha256": sha256 or None,
            "rollbacks": len((rollout or {}).get("rollbacks") or []),
            "rollback rule": (rollout or {}).get("rollout_check"),
            "reference": "Sendak MP et al. Presenting machine learning model information to clinical end users "
                         "with model facts labels. npj Digit Med 3, 41 (2020).",
        },
    }


def _performance(m: Mapping[str, Any]) -> dict[str, Any]:
    """Point estimates, with a 95 % interval for the AUC (Hanley-McNeil) when the counts are known."""
    from learning_machine.model.evaluation import auc_standard_error

    out: dict[str, Any] = {k: _num(m.get(k)) for k in METRICS}
    auc, n, prevalence = out["auc"], out["n"], out["prevalence"]
    if auc is not None and n and prevalence is not None:
        se = auc_standard_error(auc, round(n * prevalence), int(n))
        out["auc_low"], out["auc_high"] = (round(max(0.0, auc - Z95 * se), 4), round(min(1.0, auc + Z95 * se), 4))
    else:
        out["auc_low"] = out["auc_high"] = None
    if out["n"] is not None:
        out["n"] = int(out["n"])
    return out


def _calibration(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _num(m.get(k)) for k in ("calibration_slope", "calibration_intercept", "ece", "mean_predicted",
                                        "prevalence")}


def _versus(evidence: Mapping[str, Any], champion: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Candidate minus champion on the same test rows, with 95 % intervals (from the paired evidence)."""
    if not champion:
        return None
    out: dict[str, Any] = {"champion": champion.get("version"), "rows": evidence.get("rows")}
    for metric in ("auc", "log_loss", "brier"):
        found = evidence.get(metric) or {}
        out[metric] = ({"diff": _num(found.get("diff")), "low": _num(found.get("ci_low")),
                        "high": _num(found.get("ci_high"))} if found else None)
    return out


def _window(part: Mapping[str, Any]) -> str | None:
    first, last = part.get("first_at"), part.get("last_at")
    return f"{first} to {last}" if first and last else None


def _warnings(overall: Mapping[str, Any], subgroups: list[dict[str, Any]], decision: Mapping[str, Any],
              manifest: Mapping[str, Any]) -> list[str]:
    out = ["Do not use for patients whose values fall outside the features' valid ranges, or for populations "
           "unlike the training data.",
           "It supports, not replaces, clinical judgement: it predicts a risk, not a diagnosis."]
    auc = overall.get("auc")
    for row in subgroups:
        if auc is not None and row.get("auc") is not None and row["auc"] < auc - WEAK_SUBGROUP_AUC:
            out.append(f"Less accurate for {row['subgroup']} = {row['group']} (AUC {row['auc']:.2f} against "
                       f"{auc:.2f} overall, n = {row['n']}).")
        if row.get("n") is not None and row["n"] < FEW_ROWS:
            out.append(f"Little evidence for {row['subgroup']} = {row['group']} (only {row['n']} test patients).")
    if manifest and manifest.get("independent") is False:
        out.append(f"The test rows overlap the training rows ({manifest.get('overlap_rows')} rows): the measured "
                   "performance may be optimistic.")
    if decision.get("outcome") == "awaiting-approval":
        out.append("Outside the change-control plan: it serves only once a person approves it.")
    failed = [c.get("clause") for c in ((decision.get("plan") or {}).get("clauses") or [])
              if c.get("passed") is False]
    if failed:
        out.append(f"Clauses of the plan not met: {', '.join(str(c) for c in failed)}.")
    return out


def _num(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else round(x, 4)


# -- diff ---------------------------------------------------------------------------------------------------
def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from label ``old`` to label ``new``: the overall metrics and each subgroup's (new minus
    old), and every other field whose value differs (``section.field``: [old, new])."""
    def deltas(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        return {k: {"old": a.get(k), "new": b.get(k),
                    "delta": round(b[k] - a[k], 4) if a.get(k) is not None and b.get(k) is not None else None}
                for k in METRICS if a.get(k) is not None or b.get(k) is not None}

    old_groups = {(r["subgroup"], r["group"]): r for r in old.get("subgroups") or []}
    new_groups = {(r["subgroup"], r["group"]): r for r in new.get("subgroups") or []}
    changed: dict[str, list[Any]] = {}
    for section in ("summary", "mechanism", "uses", "other"):
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changed[f"{section}.{key}"] = [a.get(key), b.get(key)]
    va, vb = (old.get("validation") or {}), (new.get("validation") or {})
    for key in ("test rows", "test time window", "test rows independent of training"):
        if va.get(key) != vb.get(key):
            changed[f"validation.{key}"] = [va.get(key), vb.get(key)]
    return {
        "from": old.get("version"), "to": new.get("version"),
        "overall": deltas(va.get("overall") or {}, vb.get("overall") or {}),
        "subgroups": [{"subgroup": key[0], "group": key[1],
                       **deltas(old_groups.get(key) or {}, new_groups.get(key) or {})}
                      for key in sorted(set(old_groups) | set(new_groups))],
        "changed": changed,
        "warnings": {"added": [w for w in new.get("warnings") or [] if w not in (old.get("warnings") or [])],
                     "removed": [w for w in old.get("warnings") or [] if w not in (new.get("warnings") or [])]},
    }


# -- rendering -----------------------------------------------------------------------------------------------
def fact_text(value: Any) -> str:
    """A label's fact as one line of text (the exports and the dashboard show the same)."""
    if value is None or value == "":
        return "not recorded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(fact_text(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {fact_text(v)}" for k, v in value.items()) or "none"
    return str(value)


def _md(value: Any) -> str:
    """Text made inert in Markdown (and in HTML, which Markdown lets through)."""
    text = html.escape(fact_text(value), quote=False)
    for char in "\\`*_{}[]<>()#+!|~":
        text = text.replace(char, "\\" + char)
    return text.replace("\n", " ")


def _interval(row: Mapping[str, Any]) -> str:
    if row.get("auc") is None:
        return "not assessable"
    if row.get("auc_low") is None:
        return f"{row['auc']:.3f}"
    return f"{row['auc']:.3f} (95% CI {row['auc_low']:.3f} to {row['auc_high']:.3f})"


def _rows(section: str, facts: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A section as (field, value) pairs for the text formats."""
    if section == "warnings":
        return [("", w) for w in facts.get("warnings") or []]
    if section == "subgroups":
        return [(f"{r['subgroup']} = {r['group']}", f"AUC {_interval(r)}; Brier {fact_text(r.get('brier'))}; "
                 f"prevalence {fact_text(r.get('prevalence'))}; n = {fact_text(r.get('n'))}")
                for r in facts.get("subgroups") or []]
    part = dict(facts.get(section) or {})
    if section == "validation":
        overall = part.pop("overall", {}) or {}
        versus = part.pop("against champion", None)
        rows: list[tuple[str, Any]] = [("AUC", _interval(overall)), ("Brier score", overall.get("brier")),
                                       ("log-loss", overall.get("log_loss")), ("prevalence", overall.get("prevalence"))]
        rows += list(part.items())
        if versus:
            for metric in ("auc", "log_loss", "brier"):
                d = versus.get(metric)
                rows.append((f"{metric} vs champion v{versus.get('champion')}",
                             f"{d['diff']:+.4f} (95% CI {d['low']:+.4f} to {d['high']:+.4f})" if d and
                             None not in (d.get("diff"), d.get("low"), d.get("high")) else None))
        else:
            rows.append(("against a champion", "none: the first version"))
        return rows
    return list(part.items())


def to_markdown(facts: Mapping[str, Any]) -> str:
    """The label as Markdown (every value escaped)."""
    lines = [f"# Model facts: {_md(facts.get('model'))} v{_md(facts.get('version'))}", ""]
    for section in SECTIONS:
        lines += [f"## {TITLES[section]}", ""]
        rows = _rows(section, facts)
        if not rows:
            lines.append("- none recorded")
        for key, value in rows:
            lines.append(f"- **{_md(key)}**: {_md(value)}" if key else f"- {_md(value)}")
        lines.append("")
    return "\n".join(lines)


def to_html(facts: Mapping[str, Any]) -> str:
    """The label as a standalone HTML page (every value escaped)."""
    e = html.escape
    title = f"Model facts: {e(fact_text(facts.get('model')))} v{e(fact_text(facts.get('version')))}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
             "<style>body{font-family:sans-serif;max-width:56em;margin:2em auto}section{border:2px solid #000;"
             "padding:.5em 1em;margin:0 0 -2px}h2{font-size:1.1em;margin:.3em 0}dt{font-weight:bold}</style>",
             f"</head><body><h1>{title}</h1>"]
    for section in SECTIONS:
        parts.append(f'<section id="{section}"><h2>{e(TITLES[section])}</h2>')
        rows = _rows(section, facts)
        if section == "warnings":
            parts.append("<ul>" + "".join(f"<li>{e(fact_text(v))}</li>" for _, v in rows) + "</ul>")
        else:
            parts.append("<dl>" + "".join(f"<dt>{e(fact_text(k))}</dt><dd>{e(fact_text(v))}</dd>" for k, v in rows)
                         + "</dl>" if rows else "<p>none recorded</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
