"""The Helm chart's wiring, proven by running what it renders. NOTHING HERE RUNS ON KUBERNETES: there is no
cluster and no Docker on this machine. `helm template` renders the chart; then each rendered workload that is
a Python service of ours runs its rendered command with its rendered environment as a local process
(tests/charts/chart_run.py): Secrets resolved from the rendered Secret objects, $(VAR) expanded, volumes as
folders, every Service name resolved to a loopback address of its own (127.a.b.N, Service port -> target
port) by a sitecustomize shim, and 0.0.0.0 bound to the "pod's" own address.

Runs as rendered: MLflow (the Deployment), the platform-db hook Job (`lm db upgrade`, `lm tokens import`),
the deploy hook Job (`lm deploy champion --backend seldon`), the gateway and the monitor Deployments.

Stand-ins, each said where it is used:
* PostgreSQL: the machine's local server (127.0.0.1:5432, trust auth) instead of the chart's StatefulSet;
  the test creates the role and the two databases the bundled one would (with names of this run).
* MinIO: none can run here, so MLflow keeps artifacts in a local folder (LM_MLFLOW_ARTIFACTS_DESTINATION
  overridden); nothing else of MLflow's rendered command or environment changes.
* The model server: Seldon's predictor, explainer and drift-detector containers cannot run here. One
  embedded MLServer, started the way `lm up` starts it (learning_machine/embedded/model_server.py), stands
  behind all three Service names Seldon would create (files/serving.json); what is checked is that the
  gateway and the monitor call each of them by its own name and port.
* The Kubernetes API server: a FAKE (tests/fake_kube.py), the only fake: HTTPS with its own CA, the
  ServiceAccount tokens it issues, RBAC from the rendered Role and RoleBinding, CRD-schema validation of
  what is written. The `seldon` deployer reaches it with the real kubernetes client's in-cluster
  configuration from the rendered token volume (KUBERNETES_SERVICE_HOST/PORT, which the kubelet injects).
* Test-only settings on the monitor (LM_MONITOR_WINDOW_ROWS=20, LM_MONITOR_INTERVAL_S=1) so a drift check
  happens after a few predictions, and the chart rendered without KFP (kfp.host empty: retraining, never
  triggered here, would run in the monitor's pod).

Through the gateway it then sends a prediction, an explanation and an admin promotion, waits for the
monitor's drift check, and checks that the promotion reached the Kubernetes API as a patch of the
SeldonDeployment by the gateway's ServiceAccount."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from chart_run import ROOT, Cluster, loopback_base, wait_until
from chart_tools import helm
from crds import crd_problems, crds_available
from fake_kube import FakeKubeApiServer
from testsupport import free_port, postgres_objects

CHART = ROOT / "charts" / "learning-machine"
NAMESPACE = "lm-test"
RELEASE = "lm"
MODEL = "clinical-risk"
VENV_BIN = ROOT / ".venv" / "bin"
KUBE_PORT = 6443  # one of networkPolicy.kubeApiPorts


def _image_env(pod_dir: Path) -> dict[str, str]:
    """The platform image's ENV (top-level Dockerfile), with its venv's bin being this checkout's .venv/bin."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "LM_HOME=/tmp/lm" in dockerfile and "HOME=/home/lm" in dockerfile, "the image's ENV changed: update"
    home = pod_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": str(home),
            "LM_HOME": "/tmp/lm", "MPLCONFIGDIR": "/tmp/matplotlib", "LANG": "C.UTF-8",
            # xgboost/numpy threads: two cores shared by every process of this test.
            "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def postgres_for_release() -> Iterator[dict[str, str]]:
    """A role and the two databases the chart's bundled PostgreSQL would create, on the local server."""
    run = uuid.uuid4().hex[:8]
    names = {"user": f"lm_run_{run}", "db": f"lm_run_{run}", "mlflow": f"lm_run_{run}_mlflow"}
    with postgres_objects(
            [f'CREATE ROLE "{names["user"]}" LOGIN', f'CREATE DATABASE "{names["db"]}" OWNER "{names["user"]}"',
             f'CREATE DATABASE "{names["mlflow"]}" OWNER "{names["user"]}"'],
            [f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)',
             f'DROP DATABASE IF EXISTS "{names["mlflow"]}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{names["user"]}"']):
        yield names


def _render(pg: dict[str, str]) -> list[dict[str, Any]]:
    sets = [f"postgresql.username={pg['user']}", f"postgresql.database={pg['db']}",
            f"postgresql.mlflowDatabase={pg['mlflow']}", "kfp.host=", f"model.name={MODEL}"]
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.33.0"]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.slow
def test_the_rendered_chart_runs_as_local_processes_and_a_promotion_reaches_the_seldon_deployer(
        postgres_for_release: dict[str, str], tmp_path: Path) -> None:
    from learning_machine.data.sources import load_dataset
    from learning_machine.embedded.model_server import model_server_service, served_names, wait_models_ready
    from learning_machine.embedded.processes import ProcessManager
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.registry.tracker import Tracker
    from learning_machine.settings import Settings

    resources = _render(postgres_for_release)
    cluster = Cluster(resources, NAMESPACE, tmp_path)
    base = loopback_base()
    ip = {"mlflow": f"{base}.2", "gateway": f"{base}.3", "monitor": f"{base}.4", "mlserver": f"{base}.5",
          "kube": f"{base}.6", "jobs": f"{base}.7"}

    # The FAKE Kubernetes API server, with the rendered RBAC objects.
    rbac = [r for r in resources if r["kind"] in {"Role", "RoleBinding"}]
    api = FakeKubeApiServer(ip["kube"], tmp_path / "kube", rbac, validate=crd_problems if crds_available() else None)
    cluster.issue_token = lambda sa: api.token_for(NAMESPACE, sa)
    cluster.cluster_ca = api.ca
    kubelet = {"KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port)}
    for pod in ("gateway", "monitor", "deploy-model"):
        cluster.extra_env[pod] = kubelet

    # Services: the rendered ones to their pods' addresses; PostgreSQL to the local server (stand-in).
    for name in ("mlflow", "gateway", "monitor"):
        cluster.route_rendered(f"-{name}", ip[name])
    cluster.route(f"{RELEASE}-learning-machine-postgresql", "127.0.0.1", {5432: 5432})
    # Seldon's three Services (named as files/serving.json says) all to the one stand-in MLServer.
    mlserver_port = free_port()
    serving = json.loads((CHART / "files" / "serving.json").read_text())
    for entry in serving.values():
        cluster.route(entry["service"].replace("DEPLOYMENT", MODEL), ip["mlserver"], {entry["port"]: mlserver_port})

    manager: ProcessManager | None = None
    try:
        # -- MLflow, as rendered (artifacts in a local folder: no MinIO here) ----------------------------
        mlflow_deployment = cluster.one("Deployment", "-mlflow")
        artifacts = tmp_path / "mlflow-artifacts"
        mlflow = cluster.start("mlflow", mlflow_deployment, "mlflow", ip["mlflow"], _image_env(tmp_path / "pods" / "mlflow"),
                               {"LM_MLFLOW_ARTIFACTS_DESTINATION": str(artifacts)})
        tracking = next(e["value"] for e in mlflow_deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                        if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS")  # only to show it in a failure
        gateway_env = {e["name"]: e.get("value") for e in
                       cluster.one("Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]["env"]}
        tracking_uri = gateway_env["LM_MLFLOW_TRACKING_URI"]

        def alive(proc: subprocess.Popen[bytes], name: str) -> Any:
            def check() -> None:
                assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{cluster.all_tails()}"
            return check

        with cluster.resolving():
            wait_until(lambda: httpx.get(f"{tracking_uri}/health", timeout=5).status_code == 200, 300,
                       f"MLflow answering at {tracking_uri} (allowed hosts {tracking})", alive=alive(mlflow, "mlflow"))
            # Two versions: v1 the champion, v2 registered only (the admin promotes it below).
            settings = Settings(mlflow_tracking_uri=tracking_uri, model_name=MODEL, home=tmp_path / "trainer")
            tracker = Tracker(tracking_uri)
            data = load_dataset("synthetic-cohort", n_rows=1200, seed=5)
            first = train_and_register(settings, tracker, data, promote="if-first", params={"n_estimators": 30})
            second = train_and_register(settings, tracker, data, promote="never", params={"n_estimators": 40})
        assert (first.version.version, second.version.version) == ("1", "2")

        # -- the hook Jobs, as rendered: migrations + the monitor's token, then the first deployment -----
        platform_db = cluster.one("Job", "-platform-db")
        for container in ("db-upgrade", "tokens-import"):
            cluster.start("platform-db", platform_db, container, ip["jobs"], _image_env(tmp_path / "pods" / "jobs"),
                          wait=180)
        cluster.start("deploy-model", cluster.one("Job", "-deploy-model"), "deploy", ip["jobs"],
                      _image_env(tmp_path / "pods" / "deploy"), wait=180)
        created = [r for r in api.requests if r.get("verb") == "create"]
        assert [r["status"] for r in created] == [201, 201], api.requests  # SeldonDeployment and drift detector

        # -- the model server: stand-in for Seldon's containers, started as `lm up` starts it ------------
        ms_settings = Settings(mlflow_tracking_uri=gateway_env["LM_SELDON_TRACKING_URI"], model_name=MODEL,
                               home=tmp_path / "mlserver", model_server_host=ip["mlserver"],
                               model_server_port=mlserver_port, model_server_grpc_port=free_port(),
                               model_server_metrics_port=free_port())
        spec = model_server_service(ms_settings)
        spec.env.update({"PYTHONPATH": str(cluster.site), "LM_TEST_SERVICES": json.dumps(cluster.services),
                         "OMP_NUM_THREADS": "1"})
        manager = ProcessManager(ms_settings.run_dir)
        manager.start(spec, timeout_s=300)
        wait_models_ready(spec.url, served_names(MODEL), timeout_s=300)

        # -- the gateway and the monitor, as rendered ------------------------------------------------
        gateway_deployment = cluster.one("Deployment", "-gateway")
        gateway = cluster.start("gateway", gateway_deployment, "gateway", ip["gateway"],
                                _image_env(tmp_path / "pods" / "gateway"))
        monitor = cluster.start("monitor", cluster.one("Deployment", "-monitor"), "monitor", ip["monitor"],
                                _image_env(tmp_path / "pods" / "monitor"),
                                {"LM_MONITOR_WINDOW_ROWS": "20", "LM_MONITOR_INTERVAL_S": "1"})
        gateway_url = f"http://{RELEASE}-learning-machine-gateway.{NAMESPACE}.svc.cluster.local:8000"
        with cluster.resolving():
            wait_until(lambda: httpx.get(f"{gateway_url}/readyz", timeout=5).status_code == 200, 180,
                       "the gateway ready (database and model served)", alive=alive(gateway, "gateway"))
        monitor_health = f"http://{ip['monitor']}:8090/health"
        wait_until(lambda: httpx.get(monitor_health, timeout=5).status_code == 200, 180, "the monitor healthy",
                   alive=alive(monitor, "monitor"))

        # An admin's token, made as NOTES.txt says (`kubectl exec deploy/...-gateway -- lm tokens create`):
        # the same command with the gateway container's environment.
        exec_pod = {**gateway_deployment, "spec": {"template": {"spec": {
            **gateway_deployment["spec"]["template"]["spec"],
            "containers": [{**gateway_deployment["spec"]["template"]["spec"]["containers"][0],
                            "name": "exec", "command": ["lm", "tokens", "create", "--role", "admin", "--name", "test"]}]}}}}
        cluster.start("gateway-exec", exec_pod, "exec", ip["jobs"], _image_env(tmp_path / "pods" / "exec"), wait=120)
        token = re.findall(r"lm_[A-Za-z0-9_-]{40,}", cluster.tail("gateway-exec", "exec"))[-1]
        auth = {"Authorization": f"Bearer {token}"}

        records = [{k: (v if v == v else None) for k, v in r.items()} for r in data.frame.head(30).to_dict("records")]
        rid = data.spec.record_id.name
        for i, record in enumerate(records):
            record[rid] = f"chart-run-{i}"
        with cluster.resolving(), httpx.Client(base_url=gateway_url, headers=auth, timeout=120) as client:
            # A prediction (one record), then a batch so that the monitor has a window of 20.
            one = client.post("/v1/predictions", json=records[0])
            assert one.status_code == 200, one.text
            assert one.json()["model_version"] == "1"
            batch = client.post("/v1/predictions", json={"records": records[1:]})
            assert batch.status_code == 200, batch.text
            # An explanation, from the explainer's Service.
            explained = client.post("/v1/explanations", json={"record_id": "chart-run-0", "method": "exact"})
            assert explained.status_code == 200, explained.text
            assert explained.json()["explanation"]
            # The monitor's drift check on that window, from the drift detector's Service.
            drift = wait_until(lambda: client.get("/v1/monitoring", params={"kind": "drift"}).json()["items"], 120,
                               "the monitor storing a drift result", interval=1, alive=alive(monitor, "monitor"))
            assert drift
            # An admin promotion: the alias moves and the gateway serves v2 through the seldon deployer.
            before = len(api.requests)
            promoted = client.post("/v1/models/promote", json={"version": "2", "reason": "chart run"})
            assert promoted.status_code in (200, 201), promoted.text
            event = promoted.json()
        deployed = event["detail"]["deployed"]
        assert deployed["backend"] == "seldon" and deployed["deployed"] is True, (event, cluster.all_tails())

        # The promotion reached the (fake) Kubernetes API, from the gateway's ServiceAccount, allowed by RBAC.
        calls = api.requests[before:]
        sa = gateway_deployment["spec"]["template"]["spec"]["serviceAccountName"]
        assert {c["who"] for c in calls} == {(NAMESPACE, sa)}, calls
        assert [(c["verb"], c["status"]) for c in calls if c["verb"] != "get"] == [("patch", 200), ("patch", 200)], calls
        sdep = api.store.objects[("machinelearning.seldon.io", "v1", NAMESPACE, "seldondeployments", MODEL)]
        env = {e["name"]: e.get("value") for e in
               sdep["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["env"]}
        assert env["MLSERVER_MODEL_URI"] == f"models:/{MODEL}/2"
        assert sdep["metadata"]["labels"]["learning-machine/model-version"] == "2"
        assert "logger" not in str(sdep)
        # RBAC is enforced, not allow-all: the same token may not delete it.
        status, _ = api.handle("DELETE", f"/apis/machinelearning.seldon.io/v1/namespaces/{NAMESPACE}/"
                               f"seldondeployments/{MODEL}", f"Bearer {_token_of(cluster, 'gateway')}",
                               "", None)
        assert status == 403

        # Each client used its own Service name and port: model and explainer (gateway), drift (monitor).
        resolved = {(r["pod"], r["name"].split(".")[0], int(r["port"])) for r in cluster.resolved()}
        names = {role: entry["service"].replace("DEPLOYMENT", MODEL) for role, entry in serving.items()}
        assert (ip["gateway"], names["model"], 8000) in resolved, resolved
        assert (ip["gateway"], names["explainer"], 9000) in resolved, resolved
        assert (ip["monitor"], names["drift"], 8000) in resolved, resolved
        assert not any(r[1] == names["explainer"] for r in resolved if r[0] == ip["monitor"])
    finally:
        cluster.stop_all()
        if manager is not None:
            manager.stop("model-server")
        api.close()


def _token_of(cluster: Cluster, pod: str) -> str:
    return (cluster.folder / "pods" / pod / "volumes" / "kube-api-access" / "token").read_text()
