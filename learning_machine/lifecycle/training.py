"""Training in the lifecycle: load and check the data, train (or continue) a model, log the run and
register the version; whether it serves is :func:`learning_machine.lifecycle.promotion.decide`'s call.
`lm up` (the first model), the benchmarks and the tests use :func:`train_and_register`; the pipelines'
train, retrain and register steps use the same :func:`log_candidate` and :func:`register_candidate`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from learning_machine.errors import DataQualityError
from learning_machine.lifecycle.plan import plan_for_settings
from learning_machine.lifecycle.promotion import decide
from learning_machine.lifecycle.record import record_version
from learning_machine.registry.names import CHAMPION, CHANGE_TAG
from learning_machine.registry.runs import step_run
from learning_machine.registry.tracker import Tracker, VersionInfo
from learning_machine.settings import Settings

if TYPE_CHECKING:  # pandas, scikit-learn and XGBoost load only where data or a model is handled
    import pandas as pd

    from learning_machine.data.sources import LoadedDataset
    from learning_machine.model.training import TrainingResult

Progress = Callable[[str], None]


@dataclass
class TrainOutcome:
    """What a training produced: the run, the registered version, and whether it now serves."""

    run_id: str
    version: VersionInfo
    result: TrainingResult
    promoted: bool


def dataset_from_settings(settings: Settings, **options: Any) -> LoadedDataset:
    """The dataset the settings name (built-in, generated, or a CSV with its spec)."""
    from learning_machine.data.sources import load_dataset

    return load_dataset(settings.dataset, spec_path=settings.dataset_spec, n_rows=options.pop("n_rows", None)
                        or settings.train_rows, seed=settings.seed, **options)


def check_quality(dataset: LoadedDataset, max_invalid_fraction: float) -> None:
    """Refuse data that breaks its spec in more than ``max_invalid_fraction`` of the feature cells,
    naming each feature and how many values are wrong."""
    report = dataset.quality
    if report is None or report.invalid_fraction <= max_invalid_fraction:
        return
    parts = [f"{name}: {count} out of range" for name, count in report.out_of_range.items()]
    parts += [f"{name}: {count} not a number" for name, count in report.wrong_type.items()]
    parts += [f"{name}: unknown categories {', '.join(sorted(values))}"
              for name, values in report.unseen_categories.items()]
    raise DataQualityError(
        f"dataset {dataset.name!r} has {report.invalid_cells} invalid value(s) ({report.invalid_fraction:.1%} of "
        f"cells, limit {max_invalid_fraction:.1%}): {'; '.join(parts)}", detail=report.as_dict())


def train_and_register(settings: Settings, tracker: Tracker, dataset: LoadedDataset, *, kind: str | None = None,
                       params: dict[str, Any] | None = None, continue_from: str | None = None,
                       promote: str = "if-first", progress: Progress | None = None,
                       parent_run_id: str | None = None) -> TrainOutcome:
    """Train from scratch (or continue from the version ``continue_from``, e.g. ``champion``), log the run,
    register the model as ``challenger``, and promote it to ``champion`` when ``promote`` says so:
    ``always``, ``never`` or ``if-first`` (only when the model has no champion yet).

    The server is checked before any work, and nothing is registered unless the run finished."""
    from learning_machine.model.training import retrain_model, train_model

    if promote not in ("always", "never", "if-first"):
        raise ValueError(f"promote must be always, never or if-first, not {promote!r}")
    check_quality(dataset, settings.max_invalid_fraction)
    tracker.health()
    if continue_from:
        base, base_info = tracker.load_pipeline(settings.model_name, continue_from)
        if progress:
            progress(f"continuing from {settings.model_name} v{base_info.version}")
        result = retrain_model(base, dataset, params=params, seed=settings.seed,
                               test_fraction=settings.test_fraction, progress=progress)
        tags = {"lm.continued_from": base_info.version, CHANGE_TAG: "retrain"}
    else:
        result = train_model(dataset, kind=kind or settings.model_kind, params=params, seed=settings.seed,
                             test_fraction=settings.test_fraction, progress=progress)
        tags = {CHANGE_TAG: "train"}
    run_id = log_candidate(settings, tracker, result, dataset, run_name=f"train-{result.kind}-{dataset.name}",
                           tags=tags, parent_run_id=parent_run_id, progress=progress)
    log_manifest(tracker, run_id, data_manifest(dataset.spec, result.train, result.test, dataset.params))
    champion = tracker.alias_version(settings.model_name, CHAMPION)
    decision = decide(promote, has_champion=champion is not None)
    # No comparison with a champion here (`lm up`'s first model, `lm train`): the record says what was decided.
    summary = {"change": tags[CHANGE_TAG], "candidate": result.evaluation.as_dict(),
               "held_out_rows": len(result.test), "champion": None,
               "champion_version": champion.version if champion else "",
               "gate": {"policy": promote, "promote": decision.promote, "reason": decision.reason, "clauses": []},
               "plan_in_force": plan_for_settings(settings, dataset.spec).identity()}
    with step_run(settings, tracker, "register", parent_run_id or "") as register_run_id:
        version = register_candidate(settings, tracker, run_id, result.evaluation.metrics,
                                     {"lm.dataset": dataset.name, "lm.dataset_digest": dataset.digest,
                                      "lm.kind": result.kind, "lm.mode": result.mode, **tags},
                                     summary=summary, register_run_id=register_run_id)
    if progress:
        progress(f"registered {settings.model_name} v{version.version} as challenger")
    if decision.promote:
        version = tracker.promote(settings.model_name, version.version,
                                  reason="first model" if promote == "if-first" else "promoted at training")
        if progress:
            progress(f"promoted {settings.model_name} v{version.version} to champion")
    return TrainOutcome(run_id, version, result, decision.promote)


def log_candidate(settings: Settings, tracker: Tracker, result: TrainingResult, dataset: LoadedDataset, *,
                  run_name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None,
                  progress: Progress | None = None) -> str:
    """Log a trained candidate as a run of the settings' experiment (nested under ``parent_run_id``)."""
    return tracker.log_training(result, dataset, experiment=settings.experiment_name, run_name=run_name,
                                tags=tags or {}, parent_run_id=parent_run_id or None, progress=progress)


MANIFEST_FILE = "data/manifest.json"
"""The candidate run's data manifest (:func:`data_manifest`), read by the evaluate step and the change record."""
WINDOW_KEYS = ("first_at", "last_at", "since", "cut_id")
"""What a dataset's parameters may say of when its rows were predicted (the learning loop's exports say it)."""


def data_manifest(spec: Any, train: pd.DataFrame, test: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a candidate learnt from and was tested on: each part's rows and content digest, the time window
    of the rows (when the source says it: the learning loop's exports do; a generated cohort has none), the
    change point the rows were taken after, and whether any test row is also a training row (by record id,
    else by identical content)."""
    from learning_machine.data.sources import LoadedDataset

    window = {k: params.get(k) for k in ("first_at", "last_at")}

    def part(frame: pd.DataFrame) -> dict[str, Any]:
        return {"rows": len(frame), "digest": LoadedDataset(spec, frame, "", {}).digest, **window}

    rid = spec.record_id.name
    if rid in train.columns and rid in test.columns:
        overlap = len(set(train[rid].astype(str)) & set(test[rid].astype(str)))
        by = "record id"
    else:
        import pandas as pd

        def rows(frame: pd.DataFrame) -> set[int]:
            return set(pd.util.hash_pandas_object(frame, index=False).tolist())

        overlap = len(rows(train) & rows(test))
        by = "row content"
    cut = params.get("cut_id")
    return {"train": part(train), "test": part(test), "overlap_rows": overlap, "overlap_by": by,
            "independent": overlap == 0, "since": params.get("since") or None,
            "cut_id": int(cut) if cut not in (None, "") else None}


def log_manifest(tracker: Tracker, run_id: str, manifest: Mapping[str, Any]) -> None:
    """Store a candidate's data manifest with its run (:data:`MANIFEST_FILE`)."""
    import json

    tracker.log_text(run_id, json.dumps(manifest, indent=2, default=str), MANIFEST_FILE)


def register_candidate(settings: Settings, tracker: Tracker, run_id: str, metrics: dict[str, float],
                       tags: dict[str, str], *, summary: Mapping[str, Any] | None = None,
                       register_run_id: str = "") -> VersionInfo:
    """Register the run's model as a new version of the settings' model (alias ``challenger``) with its change
    record (:func:`learning_machine.lifecycle.record.record_version`, from the evaluation ``summary``, stored in
    the run ``register_run_id``): a version whose record cannot be written is not registered."""
    def record(version: VersionInfo) -> None:
        record_version(settings, tracker, version, summary or {}, candidate_run_id=run_id,
                       register_run_id=register_run_id)

    return tracker.register(settings.model_name, run_id, metrics=metrics, tags=tags,
                            then=record if register_run_id else None)
