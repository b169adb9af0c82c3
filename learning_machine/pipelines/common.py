"""What the pipelines share: their parameter defaults (the settings' own defaults, so a compiled pipeline
and `lm` agree), the parent MLflow run every pipeline opens and its exit handler closes, and the tail of
the two training pipelines: evaluate against the champion, register, and promote and deploy through the
gate."""

from __future__ import annotations

from typing import Any

from kfp import dsl

from learning_machine.components.data import ingest, preprocess, validate
from learning_machine.components.model import deploy, evaluate, promote, register
from learning_machine.components.tracking import close_pipeline_run, open_pipeline_run
from learning_machine.pipelines.cluster import ClusterOptions
from learning_machine.settings import Settings

# The settings' field defaults, without reading the environment: compiling gives the same YAML anywhere.
DEFAULTS = Settings.model_construct()


def parent_run(options: ClusterOptions, pipeline: str, *, run_key: str, model_name: str, source: str,
               mlflow: dict[str, Any]) -> tuple[Any, Any]:
    """(the parent run id, the exit task that closes it): every step nests its MLflow run under the
    parent, and the exit handler marks it FINISHED or FAILED however the steps ended."""
    opened = options.apply(open_pipeline_run(pipeline=pipeline, run_key=run_key,
                                             job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, model_name=model_name,
                                             source=source, **mlflow).set_display_name("open-mlflow-run"))
    closing = options.apply(close_pipeline_run(run_key=run_key, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                               **mlflow).set_display_name("close-mlflow-run"))
    return opened.output, closing


def clean_data(options: ClusterOptions, *, source: str, spec_path: str, rows: int, seed: int, scenario: str,
               drift_start: int, max_missing_fraction: float, max_invalid_fraction: float, parent: Any,
               mlflow: dict[str, Any]) -> Any:
    """Ingest the raw rows, check them against the spec (the run fails above the limits), and
    preprocess them; returns the preprocess task (its ``clean`` output is the training data)."""
    raw = options.apply(ingest(source=source, parent_run_id=parent, spec_path=spec_path, rows=rows, seed=seed,
                               scenario=scenario, drift_start=drift_start, **mlflow))
    checked = options.apply(validate(raw=raw.outputs["raw"], parent_run_id=parent,
                                     max_missing_fraction=max_missing_fraction,
                                     max_invalid_fraction=max_invalid_fraction, **mlflow))
    return options.apply(preprocess(raw=raw.outputs["raw"], parent_run_id=parent, **mlflow).after(checked))


def gate_and_serve(options: ClusterOptions, trained: Any, *, parent: Any, model_name: str, gate_metric: str,
                   gate_margin: float, promote_policy: str, deployer: str, mlflow: dict[str, Any],
                   gate_name: str, change_plan: Any = "") -> None:
    """Score the candidate and the champion on the same held-out rows, register the candidate, and when
    the promotion rule says so promote it and deploy it."""
    judged = options.apply(evaluate(candidate_run_id=trained.outputs["Output"], test=trained.outputs["test"],
                                    parent_run_id=parent, model_name=model_name, gate_metric=gate_metric,
                                    gate_margin=gate_margin, promote_policy=promote_policy,
                                    change_plan=change_plan, **mlflow))
    registered = options.apply(register(candidate_run_id=trained.outputs["Output"],
                                        comparison=judged.outputs["comparison"], parent_run_id=parent,
                                        model_name=model_name, **mlflow))
    with dsl.If(judged.outputs["Output"] == True, name=gate_name):  # noqa: E712
        promoted = options.apply(promote(version=registered.outputs["Output"],
                                         comparison=judged.outputs["comparison"], parent_run_id=parent,
                                         model_name=model_name, **mlflow))
        options.apply(deploy(version=promoted.output, parent_run_id=parent, model_name=model_name,
                             deployer=deployer, **mlflow))
