"""The training pipeline: ingest -> validate -> preprocess -> train -> evaluate -> register -> (gate) ->
promote -> deploy, every step nested under one parent MLflow run that the exit handler closes."""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from learning_machine.components.data import ingest, preprocess, validate
from learning_machine.components.model import deploy, evaluate, promote, register, train
from learning_machine.components.tracking import close_pipeline_run, open_pipeline_run
from learning_machine.pipelines.cluster import DEFAULT_OPTIONS, ClusterOptions


def build(options: ClusterOptions = DEFAULT_OPTIONS) -> GraphComponent:
    """The training pipeline with ``options`` applied to every task."""

    @dsl.pipeline(name="training", description="Train a model from scratch, evaluate it against the champion "
                  "on the same held-out rows, register it, and promote and deploy it when it passes the gate.")
    def training(source: str = "synthetic-cohort", spec_path: str = "", rows: int = 5000, seed: int = 42,
                 scenario: str = "none", drift_start: int = 0, model_kind: str = "xgboost",
                 model_params: str = "{}", test_fraction: float = 0.25, max_missing_fraction: float = 0.2,
                 max_invalid_fraction: float = 0.01, gate_metric: str = "auc", gate_margin: float = 0.0,
                 promote_policy: str = "gate", model_name: str = "clinical-risk", deployer: str = "",
                 tracking_uri: str = "", experiment_name: str = "learning-machine", run_key: str = "") -> str:
        mlflow = {"tracking_uri": tracking_uri, "experiment_name": experiment_name}
        opened = options.apply(open_pipeline_run(pipeline="training", run_key=run_key,
                                                 job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, model_name=model_name,
                                                 source=source, **mlflow).set_display_name("open-mlflow-run"))
        parent = opened.output
        closing = options.apply(close_pipeline_run(run_key=run_key, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                                   **mlflow).set_display_name("close-mlflow-run"))
        with dsl.ExitHandler(closing, name="training-steps"):
            raw = options.apply(ingest(source=source, parent_run_id=parent, spec_path=spec_path, rows=rows,
                                       seed=seed, scenario=scenario, drift_start=drift_start, **mlflow))
            checked = options.apply(validate(raw=raw.outputs["raw"], parent_run_id=parent,
                                             max_missing_fraction=max_missing_fraction,
                                             max_invalid_fraction=max_invalid_fraction, **mlflow))
            clean = options.apply(preprocess(raw=raw.outputs["raw"], parent_run_id=parent, **mlflow).after(checked))
            trained = options.apply(train(data=clean.outputs["clean"], parent_run_id=parent, model_kind=model_kind,
                                          model_params=model_params, seed=seed, test_fraction=test_fraction,
                                          **mlflow), train=True)
            judged = options.apply(evaluate(candidate_run_id=trained.outputs["Output"], test=trained.outputs["test"],
                                            parent_run_id=parent, model_name=model_name, gate_metric=gate_metric,
                                            gate_margin=gate_margin, promote_policy=promote_policy, **mlflow))
            registered = options.apply(register(candidate_run_id=trained.outputs["Output"],
                                                comparison=judged.outputs["comparison"], parent_run_id=parent,
                                                model_name=model_name, **mlflow))
            with dsl.If(judged.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                promoted = options.apply(promote(version=registered.output, comparison=judged.outputs["comparison"],
                                                 parent_run_id=parent, model_name=model_name, **mlflow))
                options.apply(deploy(version=promoted.output, parent_run_id=parent, model_name=model_name,
                                     deployer=deployer, **mlflow))
        return parent

    return training
