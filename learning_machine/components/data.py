"""Data components: ingest, validate, preprocess (numbers are passed by the pipelines, whose defaults
come from the settings)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from learning_machine.components import PLATFORM_IMAGE


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def ingest(source: str, raw: Output[Dataset], parent_run_id: str, seed: int, spec_path: str = "", rows: int = 0,
           scenario: str = "none", drift_start: int = 0, tracking_uri: str = "", experiment_name: str = "") -> str:
    """A built-in dataset or generator call, one CSV or a folder of CSVs -> raw dataset; returns its digest."""
    from learning_machine.components import step_settings
    from learning_machine.components.steps import ingest as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name)
    result = run(settings, source, raw.path, parent_run_id=parent_run_id, spec_path=spec_path, rows=rows,
                 seed=seed, scenario=scenario, drift_start=drift_start)
    raw.metadata.update({"digest": result.digest, "rows": result.rows, "source_uri": result.source_uri})
    return result.digest


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def validate(raw: Input[Dataset], report: Output[Artifact], metrics: Output[Metrics], parent_run_id: str,
             max_missing_fraction: float, max_invalid_fraction: float, tracking_uri: str = "",
             experiment_name: str = "") -> bool:
    """Data-quality report against the spec; fails the pipeline above the thresholds. Publishes the
    report's figures (rows, missing and invalid fractions, duplicate ids...) as KFP metrics."""
    from learning_machine.components import step_settings
    from learning_machine.components.kfp_outputs import publish_metrics
    from learning_machine.components.steps import validate as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name)
    result = run(settings, raw.path, report.path, parent_run_id=parent_run_id,
                 max_missing_fraction=max_missing_fraction, max_invalid_fraction=max_invalid_fraction)
    report.metadata.update({"missing_fraction": result["missing_fraction"],
                            "invalid_fraction": result["invalid_fraction"]})
    publish_metrics(metrics, result)
    return bool(result["passed"])


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def preprocess(raw: Input[Dataset], clean: Output[Dataset], parent_run_id: str, tracking_uri: str = "",
               experiment_name: str = "") -> int:
    """Typed, clean dataset plus the transformed feature matrix; returns the number of model inputs."""
    from learning_machine.components import step_settings
    from learning_machine.components.steps import preprocess as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name)
    return run(settings, raw.path, clean.path, parent_run_id=parent_run_id)
