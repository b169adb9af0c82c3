"""The deployers' shadow: `seldon` adds and removes the challenger's shadow predictor in the champion's
SeldonDeployment; `none` and `local` deploy nothing (the monitor scores the challenger itself).

No Kubernetes API server can run here, so the `seldon` deployer talks to the FAKE API of tests/fake_kube.py
(the only fake): in memory, and over HTTPS with RBAC and CRD-schema validation of every write, reached with
the real kubernetes client. The fake applies patches as RFC 7386 merge patches (tests/k8s/test_fake_kube.py),
so what it holds after a patch is what a real API server would hold."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest
from crds import crd_problems, crds_available
from fake_kube import FakeCustomObjectsApi, FakeKubeApiServer
from testsupport import free_port

from learning_machine.deployers.base import NoDeployer
from learning_machine.deployers.local import LocalDeployer
from learning_machine.deployers.seldon import SeldonDeployer, SeldonDeployError
from learning_machine.errors import ConfigurationError, ConflictError, ModelNotFoundError
from learning_machine.k8s.manifests import drift_deployment, seldon_deployment, shadow_predictor
from learning_machine.settings import Settings

MODEL = "clinical-risk"
NS = "lm-test"
KEY = ("machinelearning.seldon.io", "v1", NS, "seldondeployments", MODEL)
DRIFT_KEY = (*KEY[:4], f"{MODEL}-drift")


def _settings() -> Settings:
    return Settings(deployer="seldon", model_name=MODEL, seldon_namespace=NS,
                    serving_image="registry.example/lm-serving:1.2.3")


def _in_memory() -> tuple[SeldonDeployer, FakeCustomObjectsApi]:
    api = FakeCustomObjectsApi()
    return SeldonDeployer(_settings(), api=api), api


def _predictors(api: FakeCustomObjectsApi) -> list[tuple[str, bool, str]]:
    return [(p["name"], bool(p.get("shadow")), p["labels"]["learning-machine/model-version"])
            for p in api.objects[KEY]["spec"]["predictors"]]


def test_start_and_end_shadow_leave_exactly_the_right_predictors():
    deployer, api = _in_memory()
    deployer.deploy(MODEL, "3")
    champion = api.objects[KEY]["spec"]["predictors"][0]
    drift = api.objects[DRIFT_KEY]
    api.objects[KEY]["metadata"]["labels"]["team"] = "ops"  # set by someone else: a merge patch keeps it
    api.calls.clear()

    started = deployer.start_shadow(MODEL, "3", "4")
    assert started.changed and started.version == "4" and started.extra["champion_version"] == "3"
    assert api.calls == [f"get {MODEL}", f"patch {MODEL}"]  # the drift detector's deployment is not touched
    assert _predictors(api) == [("default", False, "3"), ("shadow", True, "4")]
    sdep = api.objects[KEY]
    assert sdep["spec"]["predictors"][0] == champion  # the champion's pods have no reason to roll
    assert sdep["spec"]["predictors"][1] == shadow_predictor(_settings(), MODEL, "4")
    assert sdep["metadata"]["labels"]["team"] == "ops"
    expected = seldon_deployment(_settings(), MODEL, "3", shadow_version="4")
    assert sdep["spec"] == expected["spec"]  # exactly what `lm manifests --shadow-version` renders
    assert crd_problems(sdep) == []
    assert api.objects[DRIFT_KEY] == drift

    api.calls.clear()
    again = deployer.start_shadow(MODEL, "3", "4")
    assert not again.changed and api.calls == [f"get {MODEL}"]  # idempotent: nothing sent

    superseding = deployer.start_shadow(MODEL, "3", "5")  # a newer challenger replaces the one in the shadow
    assert superseding.changed and _predictors(api) == [("default", False, "3"), ("shadow", True, "5")]

    api.calls.clear()
    ended = deployer.end_shadow(MODEL, "3")
    assert ended.changed and api.calls == [f"get {MODEL}", f"patch {MODEL}"]
    # The merge patch's one-element list replaced the two-element one: the shadow is gone, the rest as deployed.
    assert _predictors(api) == [("default", False, "3")]
    assert api.objects[KEY]["spec"] == seldon_deployment(_settings(), MODEL, "3")["spec"]
    assert api.objects[KEY]["metadata"]["labels"]["team"] == "ops"

    api.calls.clear()
    assert not deployer.end_shadow(MODEL, "3").changed and api.calls == [f"get {MODEL}"]


def test_a_promotion_ends_the_shadow_and_ending_it_afterwards_rolls_nothing_back():
    deployer, api = _in_memory()
    deployer.deploy(MODEL, "3")
    deployer.start_shadow(MODEL, "3", "4")
    deployer.deploy(MODEL, "4")  # the challenger proved better: promoted and deployed
    assert _predictors(api) == [("default", False, "4")]
    # The loop then ends its shadow of v3: that must not bring v3 back.
    ended = deployer.end_shadow(MODEL, "3")
    assert not ended.changed and ended.extra["serving_version"] == "4"
    assert api.objects[KEY]["spec"] == seldon_deployment(_settings(), MODEL, "4")["spec"]


def test_a_shadow_is_refused_unless_the_champion_it_shadows_is_what_serves():
    deployer, api = _in_memory()
    with pytest.raises(ModelNotFoundError, match="deploy champion v3"):
        deployer.start_shadow(MODEL, "3", "4")
    assert api.objects == {}  # nothing created: a shadow never deploys a champion
    assert not deployer.end_shadow(MODEL, "3").changed

    deployer.deploy(MODEL, "3")
    before = api.objects[KEY]
    with pytest.raises(ConflictError, match="serves v3, not champion v2"):
        deployer.start_shadow(MODEL, "2", "4")
    with pytest.raises(ConfigurationError, match="own shadow"):
        deployer.start_shadow(MODEL, "3", "3")
    assert api.objects[KEY] == before


# -- over HTTPS with the real client ----------------------------------------------------------------
def _rbac(verbs: list[str]) -> list[dict]:
    return [{"kind": "Role", "metadata": {"namespace": NS, "name": "seldon-deployer"},
             "rules": [{"apiGroups": ["machinelearning.seldon.io"], "resources": ["seldondeployments"],
                        "verbs": verbs}]},
            {"kind": "RoleBinding", "metadata": {"namespace": NS, "name": "seldon-deployer"},
             "roleRef": {"kind": "Role", "name": "seldon-deployer"},
             "subjects": [{"kind": "ServiceAccount", "name": "lm-monitor", "namespace": NS}]}]


def _real_client(server: FakeKubeApiServer) -> object:
    config = kubernetes.client.Configuration(host=f"https://{server.host}:{server.port}")
    config.ssl_ca_cert = str(server.ca)
    config.api_key = {"authorization": server.token_for(NS, "lm-monitor")}
    config.api_key_prefix = {"authorization": "Bearer"}
    config.retries = 0
    return kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))


@pytest.fixture
def kube_api(tmp_path: Path):
    servers: list[FakeKubeApiServer] = []

    def start(verbs: list[str]) -> FakeKubeApiServer:
        server = FakeKubeApiServer("127.0.0.1", tmp_path / f"kube-{len(servers)}", _rbac(verbs),
                                   validate=crd_problems if crds_available() else None)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_the_shadow_through_the_real_client_is_merge_patched_allowed_by_rbac_and_schema_valid(kube_api):
    server = kube_api(["get", "create", "patch"])
    deployer = SeldonDeployer(_settings(), api=_real_client(server))
    deployer.deploy(MODEL, "3")
    assert deployer.start_shadow(MODEL, "3", "4").changed
    assert [(p["name"], p.get("shadow", False)) for p in server.store.objects[KEY]["spec"]["predictors"]] == [
        ("default", False), ("shadow", True)]
    assert deployer.end_shadow(MODEL, "3").changed
    assert server.store.objects[KEY]["spec"] == seldon_deployment(_settings(), MODEL, "3")["spec"]
    assert server.store.objects[DRIFT_KEY]["spec"] == drift_deployment(_settings(), MODEL, "3")["spec"]
    # A promotion while a shadow runs: `deploy`'s patch (labels and the whole spec) leaves exactly v4.
    deployer.start_shadow(MODEL, "3", "4")
    deployer.deploy(MODEL, "4")
    for key, rendered in [(KEY, seldon_deployment(_settings(), MODEL, "4")),
                          (DRIFT_KEY, drift_deployment(_settings(), MODEL, "4"))]:
        assert server.store.objects[key]["spec"] == rendered["spec"]
        assert server.store.objects[key]["metadata"]["labels"] == rendered["metadata"]["labels"]
    # Every write was accepted (RBAC, merge-patch content type, and the CRD schemas where available).
    writes = [(r["verb"], r["status"]) for r in server.requests if r.get("verb") in ("create", "patch")]
    assert writes == [("create", 201), ("create", 201), *[("patch", 200)] * 5]


def test_a_kubernetes_refusal_of_the_shadow_is_a_seldon_deploy_error_saying_why(kube_api):
    allowed = kube_api(["get", "create", "patch"])
    refusing = kube_api(["get", "create"])  # a Role without patch, in front of the same objects
    refusing.store.objects = allowed.store.objects
    permitted = SeldonDeployer(_settings(), api=_real_client(allowed))
    deployer = SeldonDeployer(_settings(), api=_real_client(refusing))
    permitted.deploy(MODEL, "3")
    with pytest.raises(SeldonDeployError, match=r"refused SeldonDeployment lm-test/clinical-risk: HTTP 403 "
                                                r"Forbidden: .*cannot patch resource 'seldondeployments'") as refused:
        deployer.start_shadow(MODEL, "3", "4")
    assert refused.value.status == 502
    assert [p["name"] for p in allowed.store.objects[KEY]["spec"]["predictors"]] == ["default"]
    permitted.start_shadow(MODEL, "3", "4")
    with pytest.raises(SeldonDeployError, match=r"HTTP 403 Forbidden: .*cannot patch"):
        deployer.end_shadow(MODEL, "3")
    assert [p["name"] for p in allowed.store.objects[KEY]["spec"]["predictors"]] == ["default", "shadow"]


# -- the backends without a shadow ------------------------------------------------------------------
def test_none_and_local_deploy_no_shadow_and_call_nothing(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    settings = Settings(home=tmp_path, model_name=MODEL)
    # The local deployer pointed at a closed port: any call to a model server would fail.
    for deployer in [NoDeployer(settings), LocalDeployer(settings, repository=tmp_path / "repo", url=closed)]:
        started = deployer.start_shadow(MODEL, "3", "4")
        assert not started.changed and started.version == "4"
        assert started.as_dict()["shadow"] == "monitor" and "monitor scores v4" in started.detail
        ended = deployer.end_shadow(MODEL, "3")
        assert not ended.changed and ended.version == "3" and ended.as_dict()["shadow"] == "monitor"
