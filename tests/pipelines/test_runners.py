"""Runner selection, parameters, and the KFP API calls of submit/schedule.

No Kubeflow Pipelines API server can run here, so submit/schedule are checked against a recording stand-in
for ``kfp.Client`` (the only fake in these tests); everything else is real."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kfp.client import ServiceAccountTokenVolumeCredentials
from typer.testing import CliRunner

from learning_machine.cli.pipelines import parse_params
from learning_machine.errors import (
    ConfigurationError,
    PipelineError,
    ServiceUnavailableError,
    UnknownNameError,
)
from learning_machine.pipelines.cluster import CREDENTIALS_SECRET
from learning_machine.runners.base import get_runner
from learning_machine.runners.kubeflow import KubeflowRunner, kfp_client, kfp_credentials, kfp_cron
from learning_machine.runners.local import LocalRunner
from learning_machine.settings import Settings, load_settings


def test_runner_is_chosen_by_setting_and_unknown_names_list_the_valid_ones(tmp_path: Path):
    assert isinstance(get_runner(Settings(home=tmp_path)), LocalRunner)
    assert isinstance(get_runner(Settings(home=tmp_path, pipeline_runner="kubeflow")), KubeflowRunner)
    # A misspelt runner fails when the settings load, not at the first retraining.
    with pytest.raises(ConfigurationError, match=r"LM_PIPELINE_RUNNER: .*unknown pipeline runner 'argo'; valid "
                                                 r"pipeline runners are: kubeflow, local"):
        load_settings(home=tmp_path, pipeline_runner="argo")
    with pytest.raises(UnknownNameError, match="unknown pipeline runner 'argo'; valid pipeline runners are: "
                                               "kubeflow, local"):
        get_runner(Settings(home=tmp_path), "argo")


def test_parameters_come_from_settings_then_the_caller_typed(tmp_path: Path):
    runner = LocalRunner(Settings(home=tmp_path, model_name="m1", mlflow_port=5999, gate_metric="brier"))
    params = runner.parameters("training", {"rows": "1500", "gate_margin": "0.02", "source": "x.csv"})
    assert params["tracking_uri"] == "http://127.0.0.1:5999"
    assert params["model_name"] == "m1" and params["gate_metric"] == "brier"
    assert params["rows"] == 1500 and params["gate_margin"] == 0.02 and params["source"] == "x.csv"
    # batch inference has no training parameters: only the ones it declares are filled in
    assert "gate_metric" not in runner.parameters("batch_inference")
    with pytest.raises(UnknownNameError, match=r"unknown training parameter 'row'; valid training parameters are: .*rows"):
        runner.parameters("training", {"row": "5"})
    with pytest.raises(PipelineError, match="parameter 'rows' must be Integer, got 'many'"):
        runner.parameters("training", {"rows": "many"})
    with pytest.raises(UnknownNameError, match="unknown pipeline 'nightly'; valid pipelines are: batch_inference, "
                                               "retraining, training"):
        runner.parameters("nightly")


def test_param_pairs_parse_and_reject_garbage():
    assert parse_params(["rows=10", "model_params={\"a\": 1}", "source="]) == {
        "rows": "10", "model_params": '{"a": 1}', "source": ""}
    with pytest.raises(ConfigurationError, match="NAME=VALUE"):
        parse_params(["rows"])


def test_cron_gets_kfp_seconds_field():
    assert kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert kfp_cron("30 0 3 * * *") == "30 0 3 * * *"
    with pytest.raises(ConfigurationError, match="5 fields"):
        kfp_cron("daily")


class RecordingClient:
    """Stands in for kfp.Client: records each call and answers like the KFP v2beta1 API."""

    instances: list[RecordingClient] = []

    def __init__(self, host: str, credentials: Any = None) -> None:
        self.host = host
        self.credentials = credentials
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.packages: list[dict] = []
        RecordingClient.instances.append(self)

    def get_pipeline_id(self, name: str) -> str | None:
        self.calls.append(("get_pipeline_id", {"name": name}))
        return None

    def upload_pipeline(self, path: str, pipeline_name: str, description: str) -> Any:
        self.calls.append(("upload_pipeline", {"name": pipeline_name}))
        self.packages.append(list(yaml.safe_load_all(Path(path).read_text()))[1])
        return SimpleNamespace(pipeline_id="p-1")

    def upload_pipeline_version(self, path: str, pipeline_version_name: str, pipeline_id: str) -> Any:
        self.calls.append(("upload_pipeline_version", {"name": pipeline_version_name, "pipeline_id": pipeline_id}))
        return SimpleNamespace(pipeline_version_id="v-1")

    def create_experiment(self, name: str) -> Any:
        self.calls.append(("create_experiment", {"name": name}))
        return SimpleNamespace(experiment_id="e-1")

    def run_pipeline(self, experiment_id: str, job_name: str, **kwargs: Any) -> Any:
        self.calls.append(("run_pipeline", {"experiment_id": experiment_id, "job_name": job_name, **kwargs}))
        return SimpleNamespace(run_id="r-1", state="PENDING")

    def create_recurring_run(self, experiment_id: str, job_name: str, **kwargs: Any) -> Any:
        self.calls.append(("create_recurring_run", {"experiment_id": experiment_id, "job_name": job_name,
                                                    **kwargs}))
        return SimpleNamespace(recurring_run_id="rr-1")


@pytest.fixture
def kfp_api(monkeypatch: pytest.MonkeyPatch) -> type[RecordingClient]:
    import kfp

    RecordingClient.instances = []
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    return RecordingClient


def test_submit_uploads_the_cluster_pipeline_and_starts_an_uncached_run(kfp_api, tmp_path: Path):
    settings = Settings(home=tmp_path, pipeline_runner="kubeflow", kfp_host="http://kfp.example:8888")
    result = get_runner(settings).run("retraining", {"rows": "800", "scenario": "concept-drift"})
    client = kfp_api.instances[-1]
    assert client.host == "http://kfp.example:8888"
    assert client.credentials is None  # no service-account token on this machine
    names = [c[0] for c in client.calls]
    assert names == ["get_pipeline_id", "upload_pipeline", "upload_pipeline_version", "create_experiment",
                     "run_pipeline"]
    assert client.calls[1][1]["name"] == "learning-machine-retraining"
    run = client.calls[-1][1]
    # Machine-local settings (this machine's MLflow URL) are not sent: the cluster's ConfigMap has them.
    assert run["params"] == {"rows": 800, "scenario": "concept-drift"}
    assert run["enable_caching"] is False and run["pipeline_id"] == "p-1" and run["version_id"] == "v-1"
    executors = client.packages[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["secretAsEnv"][0]["secretNameParameter"]["runtimeValue"]["constant"] == CREDENTIALS_SECRET
               for e in executors.values())
    assert result.run_key == "r-1" and result.state == "PENDING"
    assert result.extra["run_url"] == "http://kfp.example:8888/#/runs/details/r-1"


def test_schedule_creates_a_recurring_run_one_at_a_time(kfp_api, tmp_path: Path):
    cli = CliRunner()
    from learning_machine.cli.app import app

    result = cli.invoke(app, ["pipelines", "schedule", "training", "--cron", "0 3 * * *", "--host",
                              "http://kfp.example", "--param", "rows=2000"], env={"LM_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    call = dict(kfp_api.instances[-1].calls)["create_recurring_run"]
    assert call["cron_expression"] == "0 0 3 * * *"
    assert call["max_concurrency"] == 1 and call["no_catchup"] is True and call["enable_caching"] is False
    assert call["params"] == {"rows": 2000}
    assert call["job_name"] == "learning-machine-training-schedule"
    assert json.loads(result.stdout[result.stdout.index("{"):])["recurring_run_id"] == "rr-1"


def test_submit_needs_a_host_and_names_an_unreachable_one(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="--host URL or set LM_KFP_HOST"):
        KubeflowRunner(Settings(home=tmp_path)).run("training")
    with pytest.raises(ServiceUnavailableError, match=r"Kubeflow Pipelines at http://127\.0\.0\.1:9 is unreachable"):
        KubeflowRunner(Settings(home=tmp_path), "http://127.0.0.1:9").run("training")


def test_compile_command_writes_the_three_pipelines(tmp_path: Path):
    from learning_machine.cli.app import app

    result = CliRunner().invoke(app, ["pipelines", "compile", "--out", str(tmp_path), "--gpu"],
                                env={"LM_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == ["batch_inference.yaml", "retraining.yaml",
                                                               "training.yaml"]
    assert "nvidia.com/gpu" in (tmp_path / "training.yaml").read_text()


class FakeKfpApi(ThreadingHTTPServer):
    """Stands in for the Kubeflow Pipelines API server (none can run here): answers the two calls below as
    KFP's v2beta1 REST API does and records the Authorization header of every request."""

    def __init__(self) -> None:
        self.authorization: list[tuple[str, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                api.authorization.append((path, self.headers.get("Authorization")))
                body = {"/apis/v2beta1/healthz": {"multi_user": True},
                        "/apis/v2beta1/pipelines": {"pipelines": [], "total_size": 0}}.get(path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body or {}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake_kfp_api() -> Any:
    api = FakeKfpApi()
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    yield api
    api.shutdown()
    api.server_close()
    thread.join(timeout=10)


def test_the_kfp_client_sends_the_projected_service_account_token_when_the_pod_has_one(fake_kfp_api, tmp_path: Path,
                                                                                     monkeypatch):
    """The real kfp.Client against a stand-in API server: with a token file (what the chart projects into the
    pod, audience pipelines.kubeflow.org) every request carries it as a bearer token, read afresh each time
    (the kubelet rotates it); without one, no credentials are sent."""
    token = tmp_path / "token"
    token.write_text("first-token\n")
    client = kfp_client(fake_kfp_api.url, token)
    assert client.get_pipeline_id("learning-machine-training") is None
    token.write_text("rotated-token\n")
    client.get_pipeline_id("learning-machine-training")
    assert fake_kfp_api.authorization == [("/apis/v2beta1/healthz", "Bearer first-token"),
                                          ("/apis/v2beta1/pipelines", "Bearer first-token"),
                                          ("/apis/v2beta1/pipelines", "Bearer rotated-token")]

    fake_kfp_api.authorization.clear()
    kfp_client(fake_kfp_api.url, tmp_path / "absent").get_pipeline_id("learning-machine-training")
    assert [auth for _, auth in fake_kfp_api.authorization] == [None, None]
    # KFP's own variable names the token file too; the runner passes the settings' path to the client.
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    assert Settings(home=tmp_path).kfp_token_path == token
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
    assert str(Settings(home=tmp_path).kfp_token_path) == "/var/run/secrets/kubeflow/pipelines/token"
    assert isinstance(kfp_credentials(token), ServiceAccountTokenVolumeCredentials)
    assert kfp_credentials(tmp_path / "absent") is None


def test_the_kubeflow_runner_hands_the_client_the_settings_token(kfp_api, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("t")
    settings = Settings(home=tmp_path, pipeline_runner="kubeflow", kfp_host="http://kfp.example", kfp_token_path=token)
    get_runner(settings).run("batch_inference")
    credentials = kfp_api.instances[-1].credentials
    assert isinstance(credentials, ServiceAccountTokenVolumeCredentials) and credentials._token_path == str(token)
