"""The retraining pipeline: the training pipeline with `retrain` (the champion continued on old plus new
data, and a model trained from scratch on the new rows; the better one goes on; or, with ``change`` =
``recalibrate``, the champion with a new map from score to probability fitted on the new rows) and the
champion/challenger gate: the candidate is promoted and deployed only when it beats the champion on the
same held-out rows of the new data."""

from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from learning_machine.components.data import ingest
from learning_machine.components.model import retrain
from learning_machine.pipelines.cluster import DEFAULT_OPTIONS, ClusterOptions
from learning_machine.pipelines.common import DEFAULTS as D
from learning_machine.pipelines.common import clean_data, gate_and_serve, parent_run


def build(options: ClusterOptions = DEFAULT_OPTIONS) -> GraphComponent:
    """The retraining pipeline with ``options`` applied to every task."""

    # New rows are generated with the next seed, so they are not the reference rows again.
    @dsl.pipeline(name="retraining", description="Continue the champion on old plus new data; promote and "
                  "deploy the candidate only if it beats the champion on the same held-out new data.")
    def retraining(source: str = D.dataset, spec_path: str = "", rows: int = D.loop_retrain_rows,
                   seed: int = D.seed + 1, scenario: str = "none", drift_start: int = 0,
                   reference_source: str = D.dataset, reference_rows: int = D.loop_reference_rows,
                   reference_seed: int = D.seed, base_ref: str = "champion", model_params: str = "{}",
                   test_fraction: float = D.test_fraction, max_missing_fraction: float = D.max_missing_fraction,
                   max_invalid_fraction: float = D.max_invalid_fraction, gate_metric: str = D.gate_metric,
                   gate_margin: float = D.gate_margin, promote_policy: str = "gate", model_name: str = D.model_name,
                   deployer: str = "", tracking_uri: str = "", experiment_name: str = D.experiment_name,
                   run_key: str = "", change: str = "retrain", change_plan: str = "") -> str:
        mlflow = {"tracking_uri": tracking_uri, "experiment_name": experiment_name}
        parent, closing = parent_run(options, "retraining", run_key=run_key, model_name=model_name,
                                     source=source, mlflow=mlflow)
        with dsl.ExitHandler(closing, name="retraining-steps"):
            clean = clean_data(options, source=source, spec_path=spec_path, rows=rows, seed=seed, scenario=scenario,
                               drift_start=drift_start, max_missing_fraction=max_missing_fraction,
                               max_invalid_fraction=max_invalid_fraction, parent=parent, mlflow=mlflow)
            reference = options.apply(ingest(source=reference_source, parent_run_id=parent, spec_path=spec_path,
                                             rows=reference_rows, seed=reference_seed, **mlflow)
                                      .set_display_name("ingest-reference"))
            trained = options.apply(retrain(data=clean.outputs["clean"], reference=reference.outputs["raw"],
                                            parent_run_id=parent, base_ref=base_ref, model_params=model_params,
                                            model_name=model_name, change=change, seed=seed,
                                            test_fraction=test_fraction, **mlflow), train=True)
            gate_and_serve(options, trained, parent=parent, model_name=model_name, gate_metric=gate_metric,
                           gate_margin=gate_margin, promote_policy=promote_policy, deployer=deployer,
                           mlflow=mlflow, gate_name="champion-challenger-gate", change_plan=change_plan)
        return parent

    return retraining
