"""The batch inference pipeline: ingest records -> score them with a chosen model version -> JSON Lines."""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from learning_machine.components.data import ingest
from learning_machine.components.model import batch_infer
from learning_machine.pipelines.cluster import DEFAULT_OPTIONS, ClusterOptions
from learning_machine.pipelines.common import DEFAULTS as D
from learning_machine.pipelines.common import parent_run


def build(options: ClusterOptions = DEFAULT_OPTIONS) -> GraphComponent:
    """The batch inference pipeline with ``options`` applied to every task."""

    @dsl.pipeline(name="batch-inference", description="Score a batch of records with a chosen model version "
                  "(alias or number) and write JSON Lines: time, record_id, prediction, probability, model_version.")
    def batch_inference(source: str = D.dataset, spec_path: str = "", rows: int = 1000, seed: int = 7,
                        scenario: str = "none", drift_start: int = 0, model_ref: str = "champion",
                        threshold: float = 0.5, model_name: str = D.model_name, tracking_uri: str = "",
                        experiment_name: str = D.experiment_name, run_key: str = "") -> str:
        mlflow = {"tracking_uri": tracking_uri, "experiment_name": experiment_name}
        parent, closing = parent_run(options, "batch-inference", run_key=run_key, model_name=model_name,
                                     source=source, mlflow=mlflow)
        with dsl.ExitHandler(closing, name="batch-inference-steps"):
            raw = options.apply(ingest(source=source, parent_run_id=parent, spec_path=spec_path, rows=rows,
                                       seed=seed, scenario=scenario, drift_start=drift_start, **mlflow))
            options.apply(batch_infer(data=raw.outputs["raw"], parent_run_id=parent, model_ref=model_ref,
                                      model_name=model_name, threshold=threshold, **mlflow))
        return parent

    return batch_inference
