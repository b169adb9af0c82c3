"""Seldon manifests and the `seldon` deployer. No Kubernetes API server can run here, so the deployer is
tested against a FAKE in-memory CustomObjectsApi (tests/fake_kube.py: get/create/patch with the real client's
signatures and 404 ApiException); what matters is checked for real: every resource it emits, and every rendered manifest,
validates against the Seldon CRD schemas in ../shared/crds (or LM_CRD_DIR) with jsonschema. Unreachability
is tested with the real kubernetes client pointed at a closed port."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes
import pytest
import yaml
from crds import CRD_FILES, crd_problems, requires_crds, validate_resource
from fake_kube import FakeCustomObjectsApi
from testsupport import free_port

from learning_machine.deployers import get_deployer
from learning_machine.deployers.seldon import SeldonDeployer
from learning_machine.errors import ConfigurationError, ServiceUnavailableError
from learning_machine.k8s.manifests import (
    EXAMPLE_SHADOW_VERSION,
    render_all,
    seldon_v2_model_settings,
    service_urls,
    write_manifests,
)
from learning_machine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _settings(**overrides) -> Settings:
    return Settings(deployer="seldon", model_name="clinical-risk", seldon_namespace="lm-test",
                    serving_image="registry.example/lm-serving:1.2.3", **overrides)


@requires_crds
def test_rendered_resources_pass_the_crd_schemas():
    for _file, resources in render_all(_settings(), version="7").items():
        for resource in resources:
            assert validate_resource(resource) == [], resource["kind"]


@requires_crds
def test_the_validator_catches_misspelled_and_mistyped_fields():
    sdep = render_all(_settings())["seldon-v1/seldondeployment.yaml"][0]
    sdep["spec"]["predictors"][0]["graph"]["loger"] = {"url": "http://x"}
    sdep["spec"]["predictors"][0]["replicas"] = "two"
    problems = validate_resource(sdep)
    assert any("loger" in p for p in problems) and any("replicas" in p for p in problems)
    model = next(r for r in render_all(_settings())["seldon-v2/serving.yaml"] if r["kind"] == "Model")
    del model["spec"]["storageUri"]
    assert any("storageUri" in p for p in validate_resource(model))


def test_the_seldon_deployment_has_protocol_v2_image_secret_and_explainer_and_no_request_logger():
    sdep = render_all(_settings(), version="7")["seldon-v1/seldondeployment.yaml"][0]
    assert sdep["spec"]["protocol"] == "v2"
    predictor = sdep["spec"]["predictors"][0]
    # Seldon's logger would post every request (patient data) somewhere; the gateway stores them already.
    assert "logger" not in json.dumps(render_all(_settings(), version="7"))
    assert predictor["graph"]["envSecretRefName"] == "mlflow-s3-credentials"
    [container] = predictor["componentSpecs"][0]["spec"]["containers"]
    assert container["name"] == predictor["graph"]["name"] == "clinical-risk"
    assert container["image"] == "registry.example/lm-serving:1.2.3"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLSERVER_MODEL_URI"] == "models:/clinical-risk/7"
    assert env["MLSERVER_MODEL_IMPLEMENTATION"].endswith("ModelRuntime")
    explainer = predictor["explainer"]
    extra = json.loads({e["name"]: e.get("value") for e in explainer["containerSpec"]["env"]}["MLSERVER_MODEL_EXTRA"])
    assert extra["explainer_type"] == "anchor_tabular"
    assert extra["infer_uri"] == "http://clinical-risk-default.lm-test:8000/v2/models/clinical-risk/infer"
    assert explainer["envSecretRefName"] == "mlflow-s3-credentials"


def _pods_and_containers(resources: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every pod spec and container spec of rendered Seldon resources (v1 componentSpecs and explainer, v2 podSpec)."""
    pods, containers = [], []
    for resource in resources:
        if resource["kind"] == "SeldonDeployment":
            for predictor in resource["spec"]["predictors"]:
                pods += [c["spec"] for c in predictor["componentSpecs"]]
                if "explainer" in predictor:
                    containers.append(predictor["explainer"]["containerSpec"])
        elif resource["kind"] == "Server":
            pods.append(resource["spec"]["podSpec"])
    containers += [c for pod in pods for c in pod["containers"]]
    return pods, containers


def test_every_seldon_pod_is_restricted_and_gets_no_service_account_token():
    rendered = [r for resources in render_all(_settings(), version="7").values() for r in resources]
    pods, containers = _pods_and_containers(rendered)
    assert len(pods) == 3 and len(containers) == 4  # model, drift detector, v2 Server; + the v1 explainer
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    for container in containers:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLSERVER_METRICS_DIR"].startswith("/tmp/") and env["TMPDIR"] == "/tmp"
        # Read-only wherever the pod can hold a /tmp emptyDir (a v1 explainer has no pod spec to hold one).
        assert ctx["readOnlyRootFilesystem"] is ("volumeMounts" in container)
        if ctx["readOnlyRootFilesystem"]:
            assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert sum(c["securityContext"]["readOnlyRootFilesystem"] for c in containers) == 3


def test_the_services_seldon_creates_are_named_once_for_the_manifests_and_the_clients():
    settings = _settings()
    urls = service_urls(settings)
    assert urls == {"model": "http://clinical-risk-default.lm-test.svc.cluster.local:8000",
                    "explainer": "http://clinical-risk-default-explainer.lm-test.svc.cluster.local:9000",
                    "drift": "http://clinical-risk-drift-default.lm-test.svc.cluster.local:8000"}
    rendered = render_all(settings, version="7")
    sdep = rendered["seldon-v1/seldondeployment.yaml"][0]
    drift = rendered["seldon-v1/drift-detector.yaml"][0]
    predictor = sdep["spec"]["predictors"][0]
    # Seldon names a predictor's Service <deployment>-<predictor> and its explainer's <that>-explainer.
    assert urls["model"].startswith(f"http://{sdep['metadata']['name']}-{predictor['name']}.")
    assert urls["explainer"].startswith(f"http://{sdep['metadata']['name']}-{predictor['name']}-explainer.")
    assert urls["drift"].startswith(f"http://{drift['metadata']['name']}-{drift['spec']['predictors'][0]['name']}.")
    explainer_env = {e["name"]: e.get("value") for e in predictor["explainer"]["containerSpec"]["env"]}
    assert explainer_env["MLSERVER_HTTP_PORT"] == urls["explainer"].rsplit(":", 1)[1]
    with pytest.raises(ConfigurationError, match="LM_SELDON_DEPLOYMENT_NAME"):
        service_urls(_settings(seldon_deployment_name="x" * 60))


def test_seldon_v2_models_and_pipeline():
    resources = render_all(_settings(), version="7")["seldon-v2/serving.yaml"]
    kinds = [r["kind"] for r in resources]
    assert kinds == ["Server", "Model", "Model", "Model", "Pipeline"]
    names = {r["metadata"]["name"] for r in resources if r["kind"] == "Model"}
    assert names == {"clinical-risk", "clinical-risk-explainer", "clinical-risk-drift"}
    pipeline = resources[-1]
    assert [s["name"] for s in pipeline["spec"]["steps"]] == ["clinical-risk", "clinical-risk-drift"]
    docs = seldon_v2_model_settings(_settings(), "clinical-risk", "7")
    assert {d["parameters"]["uri"] for d in docs.values()} == {"models:/clinical-risk/7"}


def test_the_committed_manifests_are_current(tmp_path):
    write_manifests(tmp_path, Settings(), shadow_version=EXAMPLE_SHADOW_VERSION)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            committed = ROOT / "manifests" / path.relative_to(tmp_path)
            assert committed.exists() and committed.read_text() == path.read_text(), (
                f"{committed} is stale: regenerate with learning_machine.k8s.manifests.write_manifests")
    # Nothing under the rendered folders that the renderer no longer writes (kustomizations are hand-written).
    for folder in ["seldon-v1", "seldon-v2", "shadow"]:
        committed = {p.relative_to(ROOT / "manifests") for p in (ROOT / "manifests" / folder).rglob("*")
                     if p.is_file() and p.name != "kustomization.yaml"}
        assert committed == {p.relative_to(tmp_path) for p in (tmp_path / folder).rglob("*") if p.is_file()}, folder
    custom_kinds = {kind for _group, kind in CRD_FILES}
    for path in (ROOT / "manifests").rglob("*.yaml"):
        for resource in yaml.safe_load_all(path.read_text()):
            # Built-in kinds and kustomizations are checked in tests/charts (kubernetes-validate, kubectl kustomize).
            if resource.get("kind") in custom_kinds:
                assert crd_problems(resource) == [], path


def test_the_deployer_creates_then_patches_and_every_emitted_resource_validates():
    api = FakeCustomObjectsApi()
    deployer = get_deployer(_settings())
    assert isinstance(deployer, SeldonDeployer)
    deployer._api = api  # the fake stands in for the Kubernetes API server

    first = deployer.deploy("clinical-risk", "3")
    assert first.changed and api.calls == ["get clinical-risk", "create clinical-risk",
                                           "get clinical-risk-drift", "create clinical-risk-drift"]
    api.calls.clear()
    assert not deployer.deploy("clinical-risk", "3").changed  # idempotent
    assert api.calls == ["get clinical-risk", "get clinical-risk-drift"]

    second = deployer.deploy("clinical-risk", "4")
    assert second.changed and "patch clinical-risk" in api.calls
    for obj in api.objects.values():
        assert crd_problems(obj) == []
        assert obj["metadata"]["labels"]["learning-machine/model-version"] == "4"
    sdep = api.objects[("machinelearning.seldon.io", "v1", "lm-test", "seldondeployments", "clinical-risk")]
    env = {e["name"]: e.get("value") for e in
           sdep["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["env"]}
    assert env["MLSERVER_MODEL_URI"] == "models:/clinical-risk/4"


def test_an_unreachable_kubernetes_api_is_service_unavailable():
    config = kubernetes.client.Configuration(host=f"http://127.0.0.1:{free_port()}")
    config.retries = 0
    api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))  # the real client
    deployer = SeldonDeployer(_settings(), api=api)
    with pytest.raises(ServiceUnavailableError, match="unreachable"):
        deployer.deploy("clinical-risk", "3")
    # The learning loop's shadow goes through the same calls.
    with pytest.raises(ServiceUnavailableError, match="unreachable"):
        deployer.start_shadow("clinical-risk", "3", "4")
    with pytest.raises(ServiceUnavailableError, match="unreachable"):
        deployer.end_shadow("clinical-risk", "3")
