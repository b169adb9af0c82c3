"""Artifacts on an S3-compatible store (what MinIO is in the cluster): a real `mlflow server` proxies
artifacts to moto's S3 server, and the objects land in the bucket."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import boto3
import pytest
from testsupport import free_port

from learning_machine.data.sources import load_dataset
from learning_machine.embedded.processes import ProcessManager
from learning_machine.embedded.stack import mlflow_service
from learning_machine.lifecycle.training import train_and_register
from learning_machine.registry.names import CHAMPION
from learning_machine.registry.tracker import Tracker
from learning_machine.settings import Settings

BUCKET = "lm-artifacts"


@pytest.fixture(scope="module")
def mlflow_s3(tmp_path_factory, s3_env: dict[str, str]) -> Iterator[Settings]:
    boto3.client("s3", endpoint_url=s3_env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    settings = Settings(home=tmp_path_factory.mktemp("mlflow-s3"), mlflow_port=free_port(), mlflow_workers=1,
                        mlflow_artifacts_destination=f"s3://{BUCKET}/mlflow", model_name="risk-on-s3")
    manager = ProcessManager(settings.run_dir)
    spec = mlflow_service(settings)
    manager.start(dataclasses.replace(spec, env={**spec.env, **s3_env}), timeout_s=240)
    yield settings
    manager.stop("mlflow")


def test_model_and_plots_are_stored_in_the_bucket(mlflow_s3: Settings, s3_env: dict[str, str]):
    tracker = Tracker(mlflow_s3.tracking_uri)
    data = load_dataset("synthetic-cohort", n_rows=1000, seed=5)
    outcome = train_and_register(mlflow_s3, tracker, data)

    s3 = boto3.client("s3", endpoint_url=s3_env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
    run_keys = [k for k in keys if outcome.run_id in k]
    assert any(k.endswith("evaluation/roc.png") for k in run_keys), keys
    # The model is a logged model: its files are under the experiment's models/<model_id>/artifacts.
    model_id = outcome.version.model_id
    assert model_id and any(k.endswith(f"models/{model_id}/artifacts/model.pkl") for k in keys), keys
    # And the registry serves the model back through the proxy.
    pipeline, info = tracker.load_pipeline(mlflow_s3.model_name, CHAMPION)
    assert info.version == outcome.version.version
    assert pipeline.predict_proba(data.frame[data.spec.feature_names].head(3)).shape == (3, 2)
