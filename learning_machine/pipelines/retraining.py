"""The retraining pipeline: the training pipeline with `retrain` (continue the champion on old plus new
data) and the champion/challenger gate: the candidate is promoted and deployed only when it beats the
champion on the same held-out rows of the new data."""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from learning_machine.components.data import ingest, preprocess, validate
from learning_machine.components.model import deploy, evaluate, promote, register, retrain
from learning_machine.components.tracking import close_pipeline_run, open_pipeline_run
from learning_machine.pipelines.cluster import DEFAULT_OPTIONS, ClusterOptions


def build(options: ClusterOptions = DEFAULT_OPTIONS) -> GraphComponent:
    """The retraining pipeline with ``options`` applied to every task."""

    @dsl.pipeline(name="retraining", description="Continue the champion on old plus new data; promote and "
                  "deploy the candidate only if it beats the champion on the same held-out new data.")
    def retraining(source: str = "synthetic-cohort", spec_path: str = "", rows: int = 2000, seed: int = 43,
                   scenario: str = "none", drift_start: int = 0, reference_source: str = "synthetic-cohort",
                   reference_rows: int = 5000, reference_seed: int = 42, base_ref: str = "champion",
                   model_params: str = "{}", test_fraction: float = 0.25, max_missing_fraction: float = 0.2,
                   max_invalid_fraction: float = 0.01, gate_metric: str = "auc", gate_margin: float = 0.0,
                   promote_policy: str = "gate", model_name: str = "clinical-risk", deployer: str = "",
                   tracking_uri: str = "", experiment_name: str = "learning-machine", run_key: str = "") -> str:
        mlflow = {"tracking_uri": tracking_uri, "experiment_name": experiment_name}
        opened = options.apply(open_pipeline_run(pipeline="retraining", run_key=run_key,
                                                 job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, model_name=model_name,
                                                 source=source, **mlflow).set_display_name("open-mlflow-run"))
        parent = opened.output
        closing = options.apply(close_pipeline_run(run_key=run_key, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                                   **mlflow).set_display_name("close-mlflow-run"))
        with dsl.ExitHandler(closing, name="retraining-steps"):
            raw = options.apply(ingest(source=source, parent_run_id=parent, spec_path=spec_path, rows=rows,
                                       seed=seed, scenario=scenario, drift_start=drift_start, **mlflow))
            reference = options.apply(ingest(source=reference_source, parent_run_id=parent, spec_path=spec_path,
                                             rows=reference_rows, seed=reference_seed, **mlflow)
                                      .set_display_name("ingest-reference"))
            checked = options.apply(validate(raw=raw.outputs["raw"], parent_run_id=parent,
                                             max_missing_fraction=max_missing_fraction,
                                             max_invalid_fraction=max_invalid_fraction, **mlflow))
            clean = options.apply(preprocess(raw=raw.outputs["raw"], parent_run_id=parent, **mlflow).after(checked))
            trained = options.apply(retrain(data=clean.outputs["clean"], reference=reference.outputs["raw"],
                                            parent_run_id=parent, base_ref=base_ref, model_params=model_params,
                                            model_name=model_name, seed=seed, test_fraction=test_fraction,
                                            **mlflow), train=True)
            judged = options.apply(evaluate(candidate_run_id=trained.outputs["Output"], test=trained.outputs["test"],
                                            parent_run_id=parent, model_name=model_name, gate_metric=gate_metric,
                                            gate_margin=gate_margin, promote_policy=promote_policy, **mlflow))
            registered = options.apply(register(candidate_run_id=trained.outputs["Output"],
                                                comparison=judged.outputs["comparison"], parent_run_id=parent,
                                                model_name=model_name, **mlflow))
            with dsl.If(judged.outputs["Output"] == True, name="champion-challenger-gate"):  # noqa: E712
                promoted = options.apply(promote(version=registered.output, comparison=judged.outputs["comparison"],
                                                 parent_run_id=parent, model_name=model_name, **mlflow))
                options.apply(deploy(version=promoted.output, parent_run_id=parent, model_name=model_name,
                                     deployer=deployer, **mlflow))
        return parent

    return retraining
