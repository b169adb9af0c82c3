"""The training pipeline: ingest -> validate -> preprocess -> train -> evaluate -> register -> (gate) ->
promote -> deploy, every step nested under one parent MLflow run that the exit handler closes."""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from learning_machine.components.model import train
from learning_machine.pipelines.cluster import DEFAULT_OPTIONS, ClusterOptions
from learning_machine.pipelines.common import DEFAULTS as D
from learning_machine.pipelines.common import clean_data, gate_and_serve, parent_run


def build(options: ClusterOptions = DEFAULT_OPTIONS) -> GraphComponent:
    """The training pipeline with ``options`` applied to every task."""

    @dsl.pipeline(name="training", description="Train a model from scratch, evaluate it against the champion "
                  "on the same held-out rows, register it, and promote and deploy it when it passes the gate.")
    def training(source: str = D.dataset, spec_path: str = "", rows: int = D.train_rows, seed: int = D.seed,
                 scenario: str = "none", drift_start: int = 0, model_kind: str = D.model_kind,
                 model_params: str = "{}", test_fraction: float = D.test_fraction,
                 max_missing_fraction: float = D.max_missing_fraction,
                 max_invalid_fraction: float = D.max_invalid_fraction, gate_metric: str = D.gate_metric,
                 gate_margin: float = D.gate_margin, promote_policy: str = "gate", model_name: str = D.model_name,
                 deployer: str = "", tracking_uri: str = "", experiment_name: str = D.experiment_name,
                 run_key: str = "", change_plan: str = "") -> str:
        mlflow = {"tracking_uri": tracking_uri, "experiment_name": experiment_name}
        parent, closing = parent_run(options, "training", run_key=run_key, model_name=model_name, source=source,
                                     mlflow=mlflow)
        with dsl.ExitHandler(closing, name="training-steps"):
            clean = clean_data(options, source=source, spec_path=spec_path, rows=rows, seed=seed, scenario=scenario,
                               drift_start=drift_start, max_missing_fraction=max_missing_fraction,
                               max_invalid_fraction=max_invalid_fraction, parent=parent, mlflow=mlflow)
            trained = options.apply(train(data=clean.outputs["clean"], parent_run_id=parent, model_kind=model_kind,
                                          model_params=model_params, seed=seed, test_fraction=test_fraction,
                                          **mlflow), train=True)
            gate_and_serve(options, trained, parent=parent, model_name=model_name, gate_metric=gate_metric,
                           gate_margin=gate_margin, promote_policy=promote_policy, deployer=deployer,
                           mlflow=mlflow, gate_name="gate-passed", change_plan=change_plan)
        return parent

    return training
