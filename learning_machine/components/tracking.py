"""The parent MLflow run of a pipeline run: opened first, closed by the exit handler."""

from kfp import dsl

from learning_machine.components import PLATFORM_IMAGE


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def open_pipeline_run(pipeline: str, run_key: str, job_id: str, model_name: str = "", source: str = "",
                      tracking_uri: str = "", experiment_name: str = "") -> str:
    """Create the parent run every step nests under; returns its id. Fails fast if MLflow is down."""
    from learning_machine.components import step_settings
    from learning_machine.registry.runs import start_pipeline_run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name)
    return start_pipeline_run(settings, pipeline, run_key or job_id, {"model_name": model_name, "source": source,
                                                                       "kfp_job_id": job_id})


@dsl.component(base_image=PLATFORM_IMAGE, install_kfp_package=False)
def close_pipeline_run(run_key: str, job_id: str, status: dsl.PipelineTaskFinalStatus, tracking_uri: str = "",
                       experiment_name: str = "") -> None:
    """Exit handler: mark the parent run FINISHED or FAILED (an exit task cannot take another task's
    output, so the run is found by its key)."""
    from learning_machine.components import step_settings
    from learning_machine.registry.runs import finish_pipeline_run

    settings = step_settings(mlflow_tracking_uri=tracking_uri, experiment_name=experiment_name)
    finish_pipeline_run(settings, run_key or job_id, status.state, status.error_message or "")
