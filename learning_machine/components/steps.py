"""The pipeline steps as plain functions of settings, folders and MLflow: what each KFP component calls.

A dataset travels between steps as a folder (a KFP ``Dataset`` artifact: a local folder under kfp.local's
pipeline root, an object-store prefix on a cluster) holding ``data.csv``, its spec (``spec.yaml``) and where
it came from (``source.json``), so every step can read it without knowing the step before it.

Every step records one MLflow run nested under the pipeline run's parent run (tag ``mlflow.parentRunId``);
a step that raises marks its run FAILED with the message in the ``lm.error`` tag.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from learning_machine.data.sources import SOURCES, LoadedDataset, load_dataset, read_window
from learning_machine.data.spec import DatasetSpec, load_spec, parse_spec
from learning_machine.errors import (
    DataQualityError,
    DatasetError,
    ModelNotFoundError,
    TrainingError,
    UnknownNameError,
)
from learning_machine.lifecycle.plan import judge, plan_for_settings
from learning_machine.lifecycle.promotion import (
    GATE_METRICS,
    PromotionDecision,
    check_policy,
    decide,
    evidence_metrics,
    proven_worse,
)
from learning_machine.lifecycle.training import (
    MANIFEST_FILE,
    data_manifest,
    log_candidate,
    log_manifest,
)
from learning_machine.registry.names import CHAMPION, CHANGE_TAG, RECALIBRATION_TAG
from learning_machine.registry.runs import STEP_TAG, step_run
from learning_machine.registry.tracker import tracker_for
from learning_machine.settings import Settings

DATA_FILE = "data.csv"
SPEC_FILE = "spec.yaml"
SOURCE_FILE = "source.json"
FEATURES_FILE = "features.csv"
CHANGES = ("retrain", "recalibrate")
"""The changes the retrain step makes (the change kinds of :mod:`learning_machine.lifecycle.plan`)."""

Scores = Callable[[Any, Any], None]
"""Called with (labels, probabilities) of the held-out rows a step scored: how a KFP component publishes
the ROC curve and confusion matrix (:mod:`.kfp_outputs`) of what the step computed."""


# -- dataset folders -------------------------------------------------------------------------------
def write_dataset(folder: str | Path, frame: pd.DataFrame, spec: DatasetSpec, source: dict[str, Any]) -> Path:
    """Write a dataset folder (data, spec, provenance)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / DATA_FILE, index=False)
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2, default=str))
    return folder


def read_dataset(folder: str | Path, *, coerce: bool = True, require_target: bool = True) -> LoadedDataset:
    """A dataset folder as a :class:`LoadedDataset`; raw (as ingested) unless ``coerce``."""
    folder = Path(folder)
    try:
        spec = parse_spec(yaml.safe_load((folder / SPEC_FILE).read_text()), source=str(folder / SPEC_FILE))
        source = json.loads((folder / SOURCE_FILE).read_text())
        frame = pd.read_csv(folder / DATA_FILE, dtype={spec.record_id.name: str})
    except FileNotFoundError as exc:
        raise DatasetError(f"{folder} is not a dataset folder written by a pipeline step: {exc}") from exc
    if coerce:
        frame = spec.coerce_frame(frame, require_target=require_target)
    return LoadedDataset(spec, frame, str(source.get("source_uri", folder)), dict(source.get("params", {})))


# -- ingest, validate, preprocess ------------------------------------------------------------------
@dataclass
class IngestResult:
    digest: str
    rows: int
    source_uri: str


def ingest(settings: Settings, source: str, out_dir: str | Path, *, parent_run_id: str = "", spec_path: str = "",
           rows: int = 0, seed: int | None = None, scenario: str = "none", drift_start: int = 0) -> IngestResult:
    """Read the raw data (a built-in dataset or generator call, one CSV, or a folder of CSVs) into a
    dataset folder, unchanged, and record its digest."""
    tracker = tracker_for(settings)
    with step_run(settings, tracker, "ingest", parent_run_id) as run_id:
        seed = settings.seed if seed is None else seed
        if not source:
            # No data (e.g. retraining without reference data): an empty folder the next step can recognise.
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / SOURCE_FILE).write_text(json.dumps({"rows": 0, "empty": True}))
            tracker.log_metrics(run_id, {"rows": 0})
            return IngestResult("", 0, "")
        if source in SOURCES:
            # A built-in dataset has its own spec; a spec path given for the pipeline's other inputs is ignored.
            options: dict[str, Any] = ({"scenario": scenario, "drift_start": drift_start}
                                       if source == "synthetic-cohort" else {})
            n_rows = (rows or settings.train_rows) if source == "synthetic-cohort" else (rows or None)
            loaded = load_dataset(source, n_rows=n_rows, seed=seed, **options)
            spec, frame, uri, params = loaded.spec, loaded.frame, loaded.source_uri, loaded.params
        else:
            spec, frame, uri, params = _read_files(source, spec_path or settings.dataset_spec)
        dataset = LoadedDataset(spec, frame, uri, params)
        digest = dataset.digest
        write_dataset(out_dir, frame, spec, {"source_uri": uri, "params": params, "digest": digest,
                                             "rows": len(frame), "dataset": spec.name})
        tracker.log_params(run_id, {"source": source, "source_uri": uri, "dataset": spec.name, "digest": digest,
                                    **{f"data.{k}": v for k, v in params.items()}})
        tracker.log_metrics(run_id, {"rows": len(frame), "columns": frame.shape[1]})
        tracker.set_tag(run_id, "lm.dataset_digest", digest)
    return IngestResult(digest, len(frame), uri)


def _read_files(source: str, spec_path: str | Path | None) -> tuple[DatasetSpec, pd.DataFrame, str, dict[str, Any]]:
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise DatasetError(f"folder {source!r} holds no .csv files")
    elif path.is_file() or source.endswith(".csv"):
        files = [path]
    else:
        raise UnknownNameError("dataset", source, list(SOURCES))
    if not spec_path:
        raise DatasetError(f"dataset {source!r} is a file or folder: give its spec (spec_path / LM_DATASET_SPEC)")
    spec = load_spec(spec_path)
    frames = []
    for file in files:
        try:
            frames.append(pd.read_csv(file, dtype={spec.record_id.name: str}))
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset file {str(file)!r} does not exist") from exc
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DatasetError(f"dataset file {str(file)!r} is not a readable CSV: {exc}") from exc
    frame = pd.concat(frames, ignore_index=True)
    window = read_window(files[0]) if len(files) == 1 else {}
    return spec, frame, path.resolve().as_uri(), {"rows": len(frame), "files": len(files), **window}


def validate(settings: Settings, data_dir: str | Path, report_path: str | Path, *, parent_run_id: str = "",
             max_missing_fraction: float | None = None, max_invalid_fraction: float | None = None) -> dict[str, Any]:
    """The data-quality report of the raw data against its spec; raises :class:`DataQualityError` (after
    writing and logging the report) when columns are missing or a fraction is above its threshold."""
    max_missing = settings.max_missing_fraction if max_missing_fraction is None else max_missing_fraction
    max_invalid = settings.max_invalid_fraction if max_invalid_fraction is None else max_invalid_fraction
    tracker = tracker_for(settings)
    with step_run(settings, tracker, "validate", parent_run_id) as run_id:
        raw = read_dataset(data_dir, coerce=False)
        report = raw.spec.quality(raw.frame)
        problems = []
        if report.missing_columns:
            problems.append(f"missing column(s) {', '.join(report.missing_columns)}")
        if report.invalid_fraction > max_invalid:
            problems.append(f"{report.invalid_fraction:.1%} of feature cells break the spec "
                            f"(limit {max_invalid:.1%}): {_worst(report.as_dict())}")
        if report.missing_fraction > max_missing:
            problems.append(f"{report.missing_fraction:.1%} of feature cells are missing (limit {max_missing:.1%})")
        result = {**report.as_dict(), "passed": not problems, "problems": problems,
                  "thresholds": {"max_missing_fraction": max_missing, "max_invalid_fraction": max_invalid}}
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(result, indent=2))
        tracker.log_params(run_id, {"max_missing_fraction": max_missing, "max_invalid_fraction": max_invalid})
        tracker.log_metrics(run_id, {"rows": report.n_rows, "missing_fraction": report.missing_fraction,
                                     "invalid_fraction": report.invalid_fraction,
                                     "duplicate_ids": report.duplicate_ids, "missing_target": report.missing_target})
        tracker.log_text(run_id, json.dumps(result, indent=2), "validation/report.json")
        if problems:
            raise DataQualityError(f"dataset {raw.name!r} failed validation: {'; '.join(problems)}", detail=result)
    return result


def _worst(report: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for key in ("out_of_range", "wrong_type"):
        for name, n in report[key].items():
            counts[name] = counts.get(name, 0) + n
    for name, by_value in report["unseen_categories"].items():
        counts[name] = counts.get(name, 0) + sum(by_value.values())
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{name} ({n})" for name, n in top) or "-"


def preprocess(settings: Settings, data_dir: str | Path, out_dir: str | Path, *, parent_run_id: str = "") -> int:
    """Coerce the raw data to the spec's types and fit the preprocessor on it. Writes the clean dataset
    (what training reads: the saved model keeps its own preprocessing, so it stays one artifact) and the
    transformed feature matrix (``features.csv``, for inspection and batch reuse). Returns the width."""
    from learning_machine.model.features import build_preprocessor, feature_frame

    tracker = tracker_for(settings)
    with step_run(settings, tracker, "preprocess", parent_run_id) as run_id:
        data = read_dataset(data_dir, coerce=True)
        spec = data.spec
        labelled = data.frame[data.frame[spec.target.name].notna()]
        preprocessor = build_preprocessor(spec).fit(feature_frame(spec, labelled))
        matrix = preprocessor.transform(feature_frame(spec, data.frame))
        features = pd.DataFrame(matrix, columns=list(preprocessor.get_feature_names_out()))
        features.insert(0, spec.record_id.name, data.frame[spec.record_id.name].to_numpy())
        features[spec.target.name] = data.frame[spec.target.name].to_numpy()
        write_dataset(out_dir, data.frame, spec, {"source_uri": data.source_uri, "params": data.params,
                                                  "digest": data.digest, "rows": len(data.frame),
                                                  "dataset": spec.name})
        features.to_csv(Path(out_dir) / FEATURES_FILE, index=False)
        tracker.log_params(run_id, {"dataset": spec.name, "digest": data.digest})
        tracker.log_metrics(run_id, {"rows": len(data.frame), "labelled_rows": len(labelled),
                                     "features_in": len(spec.feature_names), "features_out": matrix.shape[1]})
    return int(matrix.shape[1])


# -- train, retrain, evaluate ----------------------------------------------------------------------
def _params(params_json: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if not params_json:
        return None
    if isinstance(params_json, dict):
        return params_json
    try:
        parsed = json.loads(params_json)
    except json.JSONDecodeError as exc:
        raise TrainingError(f"model parameters must be a JSON object, got {params_json!r}") from exc
    if not isinstance(parsed, dict):
        raise TrainingError(f"model parameters must be a JSON object, got {params_json!r}")
    return parsed or None


def train(settings: Settings, data_dir: str | Path, test_dir: str | Path, *, parent_run_id: str = "",
          kind: str = "", params_json: str = "",
          on_scores: Scores | None = None) -> tuple[str, dict[str, float]]:
    """Train preprocessing + classifier from scratch and log the run (not registered yet). Writes the
    held-out rows to ``test_dir`` so evaluation scores candidate and champion on the same rows."""
    from learning_machine.model.training import train_model

    tracker = tracker_for(settings)
    tracker.health()
    data = read_dataset(data_dir)
    result = train_model(data, kind=kind or settings.model_kind, params=_params(params_json), seed=settings.seed,
                         test_fraction=settings.test_fraction, progress=print)
    run_id = log_candidate(settings, tracker, result, data, run_name="train",
                           tags={STEP_TAG: "train", CHANGE_TAG: "train"}, parent_run_id=parent_run_id, progress=print)
    log_manifest(tracker, run_id, data_manifest(data.spec, result.train, result.test, data.params))
    write_dataset(test_dir, result.test, data.spec, {"source_uri": data.source_uri, "params": data.params,
                                                     "rows": len(result.test), "role": "held-out"})
    if on_scores is not None:
        on_scores(result.test_labels, result.test_proba)
    return run_id, result.evaluation.metrics


def retrain(settings: Settings, new_dir: str | Path, test_dir: str | Path, *, reference_dir: str | Path | None = None,
            parent_run_id: str = "", base_ref: str = CHAMPION, params_json: str = "", change: str = "retrain",
            on_scores: Scores | None = None) -> tuple[str, dict[str, float]]:
    """The candidate of a ``change`` from the training part of the new data, tagged ``lm.change``.

    ``retrain``: three candidates, the registered ``base_ref`` model continued (warm start) on the reference
    (old) data plus the new rows, and a model trained from scratch on the new rows, at the configured and at
    lower capacity; the best one on unseen new rows goes on (:func:`learning_machine.model.training.retrain_best`).
    ``recalibrate``: ``base_ref`` itself with a new map from its score to probability, fitted on those rows and
    chosen by the closed test (:func:`learning_machine.model.training.recalibrate_model`; the map and the test's
    statistics are the run's ``model.recalibration.*`` parameters and ``recalibration/closed_test.json``); the
    reference rows are not used.

    The held-out rows come from the new data only, the same split for either change: the gate asks which model
    is better on the data the platform sees now."""
    from learning_machine.model.training import recalibrate_model, retrain_best, split

    if change not in CHANGES:
        raise UnknownNameError("change", change, list(CHANGES))

    tracker = tracker_for(settings)
    tracker.health()
    new = read_dataset(new_dir)
    try:
        base, base_info = tracker.load_pipeline(settings.model_name, base_ref)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"retraining continues from {settings.model_name}@{base_ref}, which does not "
                                 "exist: run the training pipeline first") from exc
    new_train, new_test = split(new, settings.test_fraction, settings.seed)
    reference = None
    if reference_dir and (Path(reference_dir) / DATA_FILE).exists():
        reference = read_dataset(reference_dir).frame
    fresh = LoadedDataset(new.spec, new_train, new.source_uri, new.params)
    if change == "recalibrate":
        print(f"recalibrating {settings.model_name} v{base_info.version} on {len(new_train):,} new rows")
        recalibrated, found = recalibrate_model(base, fresh, new_test, alpha=settings.recalibration_alpha,
                                                progress=print)
        run_id = log_candidate(settings, tracker, recalibrated, fresh, run_name="recalibrate", tags={
            STEP_TAG: "retrain", CHANGE_TAG: "recalibrate", "lm.retrain_mode": recalibrated.mode,
            "lm.recalibrated_from": base_info.version, RECALIBRATION_TAG: json.dumps(found.map.as_dict())},
            parent_run_id=parent_run_id, progress=print)
        tracker.log_text(run_id, json.dumps(found.as_dict(), indent=2), "recalibration/closed_test.json")
        log_manifest(tracker, run_id, data_manifest(new.spec, new_train, new_test, new.params))
        write_dataset(test_dir, new_test, new.spec, {"source_uri": new.source_uri, "params": new.params,
                                                     "rows": len(new_test), "role": "held-out (new data)"})
        if on_scores is not None:
            on_scores(recalibrated.test_labels, recalibrated.test_proba)
        return run_id, recalibrated.evaluation.metrics
    print(f"retraining {settings.model_name} v{base_info.version}: {len(new_train):,} new rows"
          + (f" plus {len(reference):,} reference rows for the continued candidate" if reference is not None else ""))
    result, scores = retrain_best(base, fresh, reference, params=_params(params_json), seed=settings.seed,
                                  test_fraction=settings.test_fraction, candidates=settings.retrain_candidates,
                                  progress=print)
    used = LoadedDataset(new.spec, pd.concat([reference, new_train], ignore_index=True)
                         if reference is not None and result.mode == "warm-start" else new_train, new.source_uri,
                         {**new.params, "reference_rows": len(reference) if reference is not None
                          and result.mode == "warm-start" else 0})
    tags = {STEP_TAG: "retrain", CHANGE_TAG: "retrain", "lm.retrain_mode": result.mode}
    if scores:
        tags["lm.candidates"] = json.dumps({m: round(a, 4) for m, a in scores.items()})
    if result.mode == "warm-start":
        tags["lm.continued_from"] = base_info.version
    run_id = log_candidate(settings, tracker, result, used, run_name="retrain", tags=tags,
                           parent_run_id=parent_run_id, progress=print)
    log_manifest(tracker, run_id, data_manifest(new.spec, used.frame, new_test, new.params))
    write_dataset(test_dir, new_test, new.spec, {"source_uri": new.source_uri, "params": new.params,
                                                 "rows": len(new_test), "role": "held-out (new data)"})
    if on_scores is not None:
        on_scores(result.test_labels, result.test_proba)
    return run_id, result.evaluation.metrics


@dataclass(frozen=True)
class GateDecision(PromotionDecision):
    """The promotion rule's verdict on the held-out rows, and the champion it was compared with."""

    champion_version: str = ""


def evaluate(settings: Settings, candidate_run_id: str, test_dir: str | Path, metrics_path: str | Path, *,
             parent_run_id: str = "", gate_metric: str = "", gate_margin: float | None = None,
             policy: str = "gate", change_plan: str = "", on_scores: Scores | None = None) -> GateDecision:
    """Score the candidate and the current champion on the same held-out rows (overall and per subgroup)
    and decide whether the candidate should become champion. ``policy``: ``gate`` (compare on the gate
    metric with a margin), ``always``, ``never`` or ``if-first`` (only when there is no champion).
    ``change_plan``: the change-control plan's text (the learning loop's own plan), else the settings' plan."""
    from learning_machine.model.evaluation import paired_comparison
    from learning_machine.model.recalibration import calibration_fit
    from learning_machine.model.training import predict_proba

    metric = gate_metric or settings.gate_metric
    margin = settings.gate_margin if gate_margin is None else gate_margin
    check_policy(policy, metric)
    tracker = tracker_for(settings)
    with step_run(settings, tracker, "evaluate", parent_run_id) as run_id:
        test = read_dataset(test_dir)
        spec = test.spec
        labels = test.frame[spec.target.name].astype(int).to_numpy()
        groups = spec.subgroup_labels(test.frame)
        candidate = tracker.load_run_model(candidate_run_id)
        cand_proba = predict_proba(candidate, spec, test.frame)
        # mlflow.models.evaluate, into this step's run (candidate.*), linked to the candidate's logged model and
        # the held-out rows; the champion's the same way (champion.*).
        held_out = f"{test.name}-held-out"
        cand_eval = tracker.evaluate(run_id, labels, cand_proba, groups, prefix="candidate.", dataset_name=held_out,
                                     model_id=tracker.run_model_id(candidate_run_id))
        champion_info = tracker.alias_version(settings.model_name, CHAMPION)
        champ_eval = None
        evidence: dict[str, Any] | None = None
        if champion_info is not None:
            champion, _ = tracker.load_pipeline(settings.model_name, champion_info.version)
            champ_proba = predict_proba(champion, spec, test.frame)
            champ_eval = tracker.evaluate(run_id, labels, champ_proba, groups, prefix="champion.",
                                          dataset_name=held_out, model_id=champion_info.model_id)
            # Paired evidence on the same rows (DeLong for AUC, paired loss differences), kept with the decision.
            evidence = paired_comparison(labels, cand_proba, champ_proba, groups)
        if metric not in cand_eval.metrics:
            raise TrainingError(f"gate metric {metric!r} is undefined on the held-out data "
                                f"({len(labels)} rows, {len(set(labels))} outcome value(s))")
        cand_value = cand_eval.metrics[metric]
        champ_value = champ_eval.metrics.get(metric) if champ_eval else None
        run_tags = tracker.run_tags_and_params(candidate_run_id)[0]
        change = run_tags.get(CHANGE_TAG, "retrain" if run_tags.get(STEP_TAG) == "retrain" else "train")
        manifest = tracker.run_json(candidate_run_id, MANIFEST_FILE)
        plan = verdict = None
        rule = None
        if settings.gate_rule == "evidence":
            # The change-control plan's acceptance criteria are the evidence rule (a stricter margin of the
            # caller's only tightens it); a gated promotion against a champion is judged by the whole plan.
            plan = plan_for_settings(settings, spec, change_plan)
            rule = plan.evidence_rule(margin=margin)
        decision = decide(policy, has_champion=champion_info is not None, metric=metric, margin=margin,
                          candidate=cand_value, champion=champ_value, evidence=evidence, rule=rule)
        if plan is not None and policy == "gate" and evidence is not None:
            verdict = judge(plan, change="recalibrate" if change == "recalibrate" else "retrain",
                            evidence=evidence, margin=margin,
                            candidate={"calibration": fit.as_dict() if (fit := calibration_fit(labels, cand_proba)) else {},
                                       "subgroups": cand_eval.subgroups},
                            independent_test_rows=bool(manifest and manifest.get("independent")))
            decision = PromotionDecision(verdict.decision == "promote", verdict.reason, decision.metric,
                                         decision.candidate_value, decision.champion_value, verdict.clauses)
        champion_version = champion_info.version if champion_info else ""
        summary: dict[str, Any] = {
            "gate": {"policy": policy, "metric": metric, "margin": margin, "higher_is_better": GATE_METRICS[metric],
                     "rule": "evidence" if decision.clauses else "point",
                     **({"noninferiority": {"auc": rule.noninferiority_auc, "log_loss": rule.noninferiority_log_loss,
                                            "subgroup_auc": rule.noninferiority_subgroup_auc,
                                            "min_subgroup_events": rule.min_subgroup_events,
                                            "underpowered_subgroups": rule.underpowered_subgroups}, "z": rule.z,
                         # Worse than the champion beyond doubt: no shadow evaluation can make it better.
                         "proven_worse": proven_worse(evidence or {}, rule, metric)}
                        if rule is not None and decision.clauses else {}),
                     "clauses": list(decision.clauses), "promote": decision.promote, "reason": decision.reason},
            "change": change, "plan": verdict.as_dict() if verdict else None,
            "plan_applied": plan.identity() if plan is not None else None, "manifest": manifest,
            "candidate_run_id": candidate_run_id, "champion_version": champion_version,
            "held_out_rows": len(labels), "candidate": cand_eval.as_dict(),
            "champion": champ_eval.as_dict() if champ_eval else None, "evidence": evidence,
        }
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(summary, indent=2))
        tracker.log_params(run_id, {"gate_metric": metric, "gate_margin": margin, "policy": policy,
                                    "gate_rule": summary["gate"]["rule"],
                                    "candidate_run_id": candidate_run_id,
                                    "champion_version": summary["champion_version"]})
        tracker.log_metrics(run_id, {**evidence_metrics(evidence), "promote": float(decision.promote)})
        tracker.log_text(run_id, json.dumps(summary, indent=2), "evaluation/comparison.json")
        tracker.set_tag(run_id, "lm.gate", decision.reason)
    print(decision.reason)
    if on_scores is not None:
        on_scores(labels, cand_proba)
    return GateDecision(**asdict(decision), champion_version=champion_version)


# -- batch inference -------------------------------------------------------------------------------
def batch_infer(settings: Settings, data_dir: str | Path, out_path: str | Path, *, model_ref: str = CHAMPION,
                parent_run_id: str = "", threshold: float = 0.5) -> dict[str, Any]:
    """Score every record with ``model_ref`` (an alias or a version number) and write JSON Lines:
    ``time``, ``record_id``, ``prediction``, ``probability``, ``model_version``."""
    from learning_machine.model.training import predict_proba

    tracker = tracker_for(settings)
    with step_run(settings, tracker, "batch_infer", parent_run_id) as run_id:
        data = read_dataset(data_dir, require_target=False)
        pipeline, info = tracker.load_pipeline(settings.model_name, model_ref or CHAMPION)
        proba = predict_proba(pipeline, data.spec, data.frame)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ids = data.frame[data.spec.record_id.name].astype(str).tolist()
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w") as out:
            for rid, p in zip(ids, proba, strict=True):
                out.write(json.dumps({"time": now, "record_id": rid, "prediction": int(p >= threshold),
                                      "probability": round(float(p), 6), "model_version": info.version}) + "\n")
        summary: dict[str, Any] = {"rows": len(ids), "model_name": settings.model_name, "model_version": info.version,
                   "model_ref": model_ref, "positive_rate": float((proba >= threshold).mean()) if len(ids) else 0.0,
                   "mean_probability": float(proba.mean()) if len(ids) else 0.0}
        tracker.log_params(run_id, {"model_name": settings.model_name, "model_ref": model_ref,
                                    "model_version": info.version, "threshold": threshold,
                                    "source_uri": data.source_uri})
        tracker.log_metrics(run_id, {"rows": summary["rows"], "positive_rate": summary["positive_rate"],
                                     "mean_probability": summary["mean_probability"]})
        with tempfile.TemporaryDirectory() as tmp:
            # KFP names the output file after the output ("predictions"); MLflow gets a self-describing name.
            named = Path(tmp) / "predictions.jsonl"
            named.write_bytes(Path(out_path).read_bytes())
            tracker.log_file(run_id, named, "predictions")
    print(f"scored {len(ids):,} records with {settings.model_name} v{info.version}")
    return summary
