"""The compiled pipelines: fresh, loadable, round-trippable, and carrying the cluster settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from kfp import compiler
from kfp.components import load_component_from_file

from learning_machine.pipelines import COMPILED_DIR, PIPELINE_NAMES
from learning_machine.pipelines.cluster import CONFIG_MAP, CREDENTIALS_SECRET, DEFAULT_OPTIONS
from learning_machine.runners.base import compile_all, compile_pipeline


def _docs(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compiled")
    return {p.stem: p for p in compile_all(folder)}


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_committed_yaml_is_what_compile_writes_now(name: str, fresh: dict[str, Path]):
    committed = COMPILED_DIR / f"{name}.yaml"
    assert committed.exists(), f"{committed} is missing: run `lm pipelines compile` and commit it"
    assert committed.read_text() == fresh[name].read_text(), (
        f"{committed} is stale: run `lm pipelines compile` and commit pipelines/compiled/")


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_compiled_yaml_loads_back_and_recompiles_to_the_same_spec(name: str, tmp_path: Path):
    committed = COMPILED_DIR / f"{name}.yaml"
    component = load_component_from_file(str(committed))
    again = tmp_path / "again.yaml"
    compiler.Compiler().compile(component, str(again))
    assert _docs(again) == _docs(committed)


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_the_committed_yaml_is_what_the_source_compiles_to(name: str, tmp_path: Path):
    """The compiled YAML carries each component's source: a stale file would run old steps on a cluster."""
    fresh = compile_pipeline(name, tmp_path / f"{name}.yaml")
    assert _docs(fresh) == _docs(COMPILED_DIR / f"{name}.yaml"), f"{name}.yaml is stale: run `lm pipelines compile`"


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_every_task_gets_credentials_config_requests_and_retries(name: str):
    spec, platform = _docs(COMPILED_DIR / f"{name}.yaml")
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = spec["deploymentSpec"]["executors"]
    assert set(executors) == set(containers)  # no task without the cluster settings
    for executor, config in executors.items():
        secrets = {k["envVar"] for s in config["secretAsEnv"] for k in s["keyToEnv"]
                   if s["secretNameParameter"]["runtimeValue"]["constant"] == CREDENTIALS_SECRET}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD"} <= secrets, executor
        config_env = {k["envVar"] for c in config["configMapAsEnv"] for k in c["keyToEnv"]
                      if c["configMapNameParameter"]["runtimeValue"]["constant"] == CONFIG_MAP}
        assert {"LM_MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"} <= config_env, executor
        container = containers[executor]["container"]
        assert container["image"] == "ghcr.io/learning-machine/platform:0.1.0"
        assert container["resources"]["resourceCpuRequest"] and container["resources"]["resourceMemoryRequest"]
        assert "pip install" not in " ".join(container["command"])  # everything is in the platform image
        assert "nodeSelector" not in config and "tolerations" not in config  # no GPU unless asked
    tasks = _all_tasks(spec)
    assert tasks and all(t.get("retryPolicy", {}).get("maxRetryCount") == DEFAULT_OPTIONS.retries for t in tasks)
    assert all(t["retryPolicy"]["backoffDuration"] == "30s" for t in tasks)
    assert all(t["cachingOptions"] == {} or t["cachingOptions"].get("enableCache") is not True for t in tasks)


def _all_tasks(spec: dict) -> list[dict]:
    """Every container task of the pipeline, inside the exit handler and condition sub-DAGs too."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return [t for dag in dags for t in dag["tasks"].values()
            if not spec["components"][t["componentRef"]["name"]].get("dag")]


def test_gpu_option_puts_the_accelerator_node_selector_and_toleration_on_training_only(tmp_path: Path):
    options = dataclasses.replace(DEFAULT_OPTIONS, gpu=True, accelerator_limit=2)
    for name, train_executor in (("training", "exec-train"), ("retraining", "exec-retrain")):
        spec, platform = _docs(compile_pipeline(name, tmp_path / f"{name}.yaml", options))
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        resources = spec["deploymentSpec"]["executors"][train_executor]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "2"
        assert executors[train_executor]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert executors[train_executor]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        others = [e for e in executors if e != train_executor]
        assert others and not any("tolerations" in executors[e] for e in others)
        assert not any("accelerator" in spec["deploymentSpec"]["executors"][e]["container"].get("resources", {})
                       for e in others)


def test_the_gates_are_conditions_on_the_evaluation(tmp_path: Path):
    for name in ("training", "retraining"):
        spec, _ = _docs(COMPILED_DIR / f"{name}.yaml")
        conditions = [t["triggerPolicy"]["condition"] for c in spec["components"].values() if "dag" in c
                      for t in c["dag"]["tasks"].values() if t.get("triggerPolicy", {}).get("condition")]
        assert conditions == ["inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"], name


# The artifacts the Kubeflow UI renders, per pipeline: component -> output name -> schema title.
UI_OUTPUTS = {
    "training": {"comp-validate": {"metrics": "system.Metrics"},
                 "comp-train": {"metrics": "system.Metrics", "classification": "system.ClassificationMetrics",
                                "model": "system.Model"},
                 "comp-evaluate": {"metrics": "system.Metrics", "classification": "system.ClassificationMetrics"},
                 "comp-register": {"model": "system.Model"}},
    "retraining": {"comp-validate": {"metrics": "system.Metrics"},
                   "comp-retrain": {"metrics": "system.Metrics", "classification": "system.ClassificationMetrics",
                                    "model": "system.Model"},
                   "comp-evaluate": {"metrics": "system.Metrics",
                                     "classification": "system.ClassificationMetrics"},
                   "comp-register": {"model": "system.Model"}},
    "batch_inference": {"comp-batch-infer": {"metrics": "system.Metrics"}},
}


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_the_steps_declare_the_metrics_and_model_artifacts_the_kubeflow_ui_renders(name: str):
    spec, _ = _docs(COMPILED_DIR / f"{name}.yaml")
    for component, outputs in UI_OUTPUTS[name].items():
        declared = spec["components"][component]["outputDefinitions"]["artifacts"]
        titles = {key: value["artifactType"]["schemaTitle"] for key, value in declared.items()}
        assert titles.items() >= outputs.items(), (component, titles)
