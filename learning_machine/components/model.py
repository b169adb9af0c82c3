"""Model components: train, retrain, evaluate, register, promote, deploy, batch_infer.

Besides their outputs for the next steps, train, retrain and evaluate publish what the Kubeflow UI renders
(:mod:`.kfp_outputs`): ``metrics`` (system.Metrics), ``classification`` (system.ClassificationMetrics: ROC
curve and confusion matrix on the held-out rows) and, with register, the ``model`` (system.Model: the
MLflow URI, run and version in its metadata).

An empty string parameter means "from the settings" (the step's environment); numbers have no default
here: the pipelines pass them, and the pipelines' defaults come from the settings."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from learning_machine.components import PLATFORM_IMAGE


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def train(data: Input[Dataset], test: Output[Dataset], model: Output[Model], metrics: Output[Metrics],
          classification: Output[ClassificationMetrics], parent_run_id: str, seed: int, test_fraction: float,
          model_kind: str = "", model_params: str = "{}", tracking_uri: str = "", experiment_name: str = "") -> str:
    """Fit preprocessing + model from scratch, log the run; returns its id. Writes the held-out rows and
    publishes the held-out metrics, ROC curve, confusion matrix and the candidate model's MLflow URI."""
    from learning_machine.components import step_settings
    from learning_machine.components.kfp_outputs import (
        candidate_model,
        publish_classification,
        publish_metrics,
        publish_model,
    )
    from learning_machine.components.steps import train as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name, seed=seed,
                             test_fraction=test_fraction)
    run_id, scores = run(settings, data.path, test.path, parent_run_id=parent_run_id, kind=model_kind,
                         params_json=model_params,
                         on_scores=lambda labels, proba: publish_classification(classification, labels, proba))
    test.metadata.update({"candidate_run_id": run_id, "auc": scores.get("auc")})
    publish_metrics(metrics, scores)
    publish_model(model, **candidate_model(settings, run_id), run_id=run_id,
                  tracking_uri=settings.tracking_uri, model_kind=model_kind or settings.model_kind,
                  registered=False)
    return run_id


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def retrain(data: Input[Dataset], reference: Input[Dataset], test: Output[Dataset], model: Output[Model],
            metrics: Output[Metrics], classification: Output[ClassificationMetrics], parent_run_id: str, seed: int,
            test_fraction: float, base_ref: str = "champion", model_params: str = "{}", model_name: str = "",
            change: str = "retrain", tracking_uri: str = "", experiment_name: str = "") -> str:
    """The candidate of a ``change``: ``retrain`` continues the champion on old (``reference``, may be empty)
    plus new data (or trains afresh on the new rows), ``recalibrate`` refits only the champion's map from score
    to probability on the new rows; logs the run (tag ``lm.change``) and returns its id. Publishes its
    evaluation's metrics, ROC curve and confusion matrix (new rows the candidate was not fitted on) and the
    candidate model's MLflow URI."""
    from learning_machine.components import step_settings
    from learning_machine.components.kfp_outputs import (
        candidate_model,
        publish_classification,
        publish_metrics,
        publish_model,
    )
    from learning_machine.components.steps import retrain as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name, seed=seed,
                             test_fraction=test_fraction, model_name=model_name)
    run_id, scores = run(settings, data.path, test.path, reference_dir=reference.path,
                         parent_run_id=parent_run_id, base_ref=base_ref, params_json=model_params, change=change,
                         on_scores=lambda labels, proba: publish_classification(classification, labels, proba))
    test.metadata.update({"candidate_run_id": run_id, "auc": scores.get("auc"), "change": change})
    publish_metrics(metrics, scores)
    publish_model(model, **candidate_model(settings, run_id), run_id=run_id,
                  tracking_uri=settings.tracking_uri, continued_from=f"{settings.model_name}@{base_ref}",
                  change=change, registered=False)
    return run_id


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def evaluate(candidate_run_id: str, test: Input[Dataset], comparison: Output[Artifact], metrics: Output[Metrics],
             classification: Output[ClassificationMetrics], parent_run_id: str, gate_margin: float,
             model_name: str = "", gate_metric: str = "", promote_policy: str = "gate", tracking_uri: str = "",
             experiment_name: str = "", change_plan: str = "") -> bool:
    """Candidate versus champion on the same held-out rows (with subgroups); returns the gate's verdict
    (one boolean output: kfp.local 2.17 resolves a dsl.If on a task's single output only). Publishes both
    models' metrics and the gate's verdict, and the candidate's ROC curve and confusion matrix."""
    import json

    from learning_machine.components import step_settings
    from learning_machine.components.kfp_outputs import publish_classification, publish_metrics
    from learning_machine.components.steps import evaluate as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name,
                             model_name=model_name)
    decision = run(settings, candidate_run_id, test.path, comparison.path, parent_run_id=parent_run_id,
                   gate_metric=gate_metric, gate_margin=gate_margin, policy=promote_policy, change_plan=change_plan,
                   on_scores=lambda labels, proba: publish_classification(classification, labels, proba))
    comparison.metadata.update({"metric": decision.metric, "candidate": decision.candidate_value,
                                "champion": decision.champion_value, "champion_version": decision.champion_version,
                                "promote": decision.promote, "reason": decision.reason})
    with open(comparison.path) as f:
        summary = json.load(f)
    for role in ("candidate", "champion"):
        publish_metrics(metrics, (summary.get(role) or {}).get("metrics") or {}, prefix=f"{role}.")
    publish_metrics(metrics, {"promote": decision.promote, "held_out_rows": summary.get("held_out_rows")})
    return decision.promote


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def register(candidate_run_id: str, comparison: Input[Artifact], model: Output[Model], parent_run_id: str,
             model_name: str = "", tracking_uri: str = "", experiment_name: str = "") -> str:
    """Register the candidate as a new version (alias challenger) with its metrics; returns the version and
    publishes it as the ``model`` (its ``models:/`` URI, run and version)."""
    from learning_machine.components import step_settings
    from learning_machine.components.kfp_outputs import publish_model
    from learning_machine.components.release import register as run
    from learning_machine.registry.names import CHALLENGER, model_uri

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name,
                             model_name=model_name)
    version = run(settings, candidate_run_id, comparison.path, parent_run_id=parent_run_id)
    publish_model(model, model_uri=model_uri(settings.model_name, version), model_name=settings.model_name,
                  version=version, run_id=candidate_run_id, alias=CHALLENGER, tracking_uri=settings.tracking_uri,
                  registered=True)
    return version


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def promote(version: str, comparison: Input[Artifact], parent_run_id: str, model_name: str = "",
            tracking_uri: str = "", experiment_name: str = "") -> str:
    """Point the champion alias at ``version`` (only reached when the gate passed)."""
    import json

    from learning_machine.components import step_settings
    from learning_machine.components.release import promote as run

    with open(comparison.path) as f:
        reason = json.load(f)["gate"]["reason"]
    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name,
                             model_name=model_name)
    return run(settings, version, parent_run_id=parent_run_id, reason=reason)


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def deploy(version: str, parent_run_id: str, model_name: str = "", deployer: str = "",
           tracking_uri: str = "", experiment_name: str = "") -> str:
    """Serve ``version`` with the configured deployer (LM_DEPLOYER); returns what it did."""
    import json

    from learning_machine.components import step_settings
    from learning_machine.components.release import deploy as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name,
                             model_name=model_name, deployer=deployer)
    return json.dumps(run(settings, version, parent_run_id=parent_run_id))


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def batch_infer(data: Input[Dataset], predictions: Output[Dataset], metrics: Output[Metrics], parent_run_id: str,
                threshold: float, model_ref: str = "champion", model_name: str = "", tracking_uri: str = "",
                experiment_name: str = "") -> str:
    """Score the records with a chosen version (alias or number) into JSON Lines; returns the version used.
    Publishes the batch's row count, positive rate and mean probability."""
    from learning_machine.components import step_settings
    from learning_machine.components.kfp_outputs import publish_metrics
    from learning_machine.components.steps import batch_infer as run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name,
                             model_name=model_name)
    summary = run(settings, data.path, predictions.path, model_ref=model_ref, parent_run_id=parent_run_id,
                  threshold=threshold)
    predictions.metadata.update(summary)
    publish_metrics(metrics, {k: summary[k] for k in ("rows", "positive_rate", "mean_probability")})
    return str(summary["model_version"])
