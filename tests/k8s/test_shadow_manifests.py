"""The learning loop's shadow on Kubernetes, as rendered: Seldon v1's shadow predictor beside the champion
and Seldon v2's challenger Model with a mirroring Experiment. Checked against the Seldon CRD schemas in
../shared/crds (or LM_CRD_DIR; skipped, saying how to provide them, when absent) with jsonschema; no fake
here, the manifests are plain data."""

from __future__ import annotations

import json

import pytest
import yaml
from crds import requires_crds, validate_resource
from typer.testing import CliRunner

from learning_machine.cli.app import app
from learning_machine.errors import ConfigurationError
from learning_machine.k8s.manifests import (
    render_all,
    seldon_deployment,
    seldon_v2_model_settings,
    seldon_v2_resources,
    seldon_v2_shadow_resources,
)
from learning_machine.settings import Settings

MODEL = "clinical-risk"


def _settings() -> Settings:
    return Settings(deployer="seldon", model_name=MODEL, seldon_namespace="lm-test",
                    serving_image="registry.example/lm-serving:1.2.3")


def _env(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def _shadowed() -> dict:
    [sdep] = render_all(_settings(), version="7", shadow_version="8")["shadow/seldon-v1/seldondeployment.yaml"]
    return sdep


@requires_crds
def test_the_shadow_manifests_pass_the_crd_schemas_and_a_broken_one_does_not():
    rendered = render_all(_settings(), version="7", shadow_version="8")
    shadow_files = {f: r for f, r in rendered.items() if f.startswith("shadow/")}
    assert [r["kind"] for rs in shadow_files.values() for r in rs] == ["SeldonDeployment", "Model", "Experiment"]
    for resources in shadow_files.values():
        for resource in resources:
            assert validate_resource(resource) == [], resource["kind"]
    # The schema does see the fields the shadow adds.
    sdep = _shadowed()
    sdep["spec"]["predictors"][1]["shadow"] = "yes"
    sdep["spec"]["predictors"][1]["traffic"] = "all"
    problems = validate_resource(sdep)
    assert any("shadow" in p for p in problems) and any("traffic" in p for p in problems)
    experiment = shadow_files["shadow/seldon-v2/shadow.yaml"][1]
    del experiment["spec"]["mirror"]["name"]
    experiment["spec"]["mirror"]["percnt"] = 100
    problems = validate_resource(experiment)
    assert any("name" in p for p in problems) and any("percnt" in p for p in problems)


def test_the_shadow_predictor_runs_the_challenger_under_the_champions_name_and_leaves_the_champion_as_is():
    sdep = _shadowed()
    plain = seldon_deployment(_settings(), MODEL, "7")
    default, shadow = sdep["spec"]["predictors"]
    # The champion's predictor and the deployment's metadata are exactly what `deploy` renders.
    assert default == plain["spec"]["predictors"][0] and sdep["metadata"] == plain["metadata"]
    assert {k: v for k, v in sdep["spec"].items() if k != "predictors"} == {
        k: v for k, v in plain["spec"].items() if k != "predictors"}
    assert shadow["name"] == "shadow" and shadow["shadow"] is True and shadow["traffic"] == 100
    assert shadow["labels"] == {"learning-machine/model-version": "8", "learning-machine/role": "shadow"}
    assert "explainer" not in shadow  # explanations are the champion's
    [container] = shadow["componentSpecs"][0]["spec"]["containers"]
    env = _env(container)
    assert env["MLSERVER_MODEL_URI"] == "models:/clinical-risk/8"
    # Seldon mirrors the request as sent (/v2/models/clinical-risk/infer): the challenger must answer to that name.
    assert env["MLSERVER_MODEL_NAME"] == MODEL == container["name"] == shadow["graph"]["name"]
    assert container["image"] == "registry.example/lm-serving:1.2.3"
    assert shadow["graph"]["envSecretRefName"] == default["graph"]["envSecretRefName"] == "mlflow-s3-credentials"
    assert "logger" not in json.dumps(sdep)


def test_the_shadow_pod_is_as_restricted_as_the_champions():
    default, shadow = _shadowed()["spec"]["predictors"]
    pod, champion_pod = shadow["componentSpecs"][0]["spec"], default["componentSpecs"][0]["spec"]
    assert {k: v for k, v in pod.items() if k != "containers"} == {k: v for k, v in champion_pod.items()
                                                                      if k != "containers"}
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    [container], [champion] = pod["containers"], champion_pod["containers"]
    assert container["securityContext"] == champion["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == champion["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert container["resources"] == champion["resources"]
    # Same environment but for the version it loads.
    differs = {k for k in _env(container) if _env(container)[k] != _env(champion).get(k)}
    assert differs == {"MLSERVER_MODEL_URI"}


def test_the_experiment_mirrors_every_champion_request_to_the_challenger_model():
    settings = _settings()
    model, experiment = seldon_v2_shadow_resources(settings, MODEL, "7", "8")
    champion = next(r for r in seldon_v2_resources(settings, MODEL, "7")
                    if r["kind"] == "Model" and r["metadata"]["name"] == MODEL)
    assert experiment["kind"] == "Experiment" and experiment["apiVersion"] == "mlops.seldon.io/v1alpha1"
    # Requests to the champion's endpoint stay on the champion; every one is mirrored to the challenger.
    assert experiment["spec"] == {"default": MODEL, "candidates": [{"name": MODEL, "weight": 100}],
                                  "mirror": {"name": model["metadata"]["name"], "percent": 100}}
    assert model["kind"] == "Model" and model["metadata"]["name"] != MODEL
    assert model["metadata"]["labels"]["learning-machine/model-version"] == "8"
    assert experiment["metadata"]["labels"]["learning-machine/shadow-version"] == "8"
    # Same server, capability and secret as the champion; the storage layout of version 8.
    assert {k: v for k, v in model["spec"].items() if k != "storageUri"} == {
        k: v for k, v in champion["spec"].items() if k != "storageUri"}
    assert model["spec"]["storageUri"] == champion["spec"]["storageUri"].replace("/7/", "/8/")
    assert seldon_v2_model_settings(settings, MODEL, "8")[MODEL]["parameters"]["uri"] == "models:/clinical-risk/8"


def test_a_version_cannot_run_in_its_own_shadow():
    with pytest.raises(ConfigurationError, match="own shadow"):
        seldon_deployment(_settings(), MODEL, "7", shadow_version="7")
    with pytest.raises(ConfigurationError, match="own shadow"):
        seldon_v2_shadow_resources(_settings(), MODEL, "7", "7")


def test_lm_manifests_renders_the_shadow_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LM_MODEL_NAME", MODEL)
    runner = CliRunner()
    plain = runner.invoke(app, ["manifests", "--out", str(tmp_path / "plain"), "--version", "4"])
    assert plain.exit_code == 0, plain.output
    assert not (tmp_path / "plain" / "shadow").exists()
    shadowed = runner.invoke(app, ["manifests", "--out", str(tmp_path / "shadowed"), "--version", "4",
                                   "--shadow-version", "5"])
    assert shadowed.exit_code == 0, shadowed.output
    [sdep] = yaml.safe_load_all((tmp_path / "shadowed" / "shadow" / "seldon-v1" / "seldondeployment.yaml").read_text())
    assert [(p["name"], p["labels"]["learning-machine/model-version"]) for p in sdep["spec"]["predictors"]] == [
        ("default", "4"), ("shadow", "5")]
    kinds = [r["kind"] for r in yaml.safe_load_all((tmp_path / "shadowed" / "shadow" / "seldon-v2" / "shadow.yaml")
                                                  .read_text())]
    assert kinds == ["Model", "Experiment"]
    settings = json.loads((tmp_path / "shadowed" / "shadow" / "seldon-v2" / "storage" / MODEL / "model-settings.json")
                          .read_text())
    assert settings["parameters"]["uri"] == "models:/clinical-risk/5"
