"""Kubernetes manifests for serving on Seldon, rendered by plain functions (no templating language), and
their offline validation lives with the tests (tests/crds.py: the CRD schemas are not shipped).

* Seldon Core v1 (``machinelearning.seldon.io/v1``): a ``SeldonDeployment`` with protocol v2 running the
  project's serving image (our MLServer runtimes) as a custom model, the explainer beside it, and MinIO/S3
  credentials from one rclone-style secret (``envSecretRefName``); plus a second ``SeldonDeployment`` for
  the drift detector (Seldon v1 has no drift slot in a predictor). Each is reached through its own Service,
  named by :func:`service_urls` (the Helm chart derives the gateway's and monitor's URLs from the same names).
* No request logger: Seldon's logger would post every request, with its patient data, to a URL, and the
  gateway already stores every request and prediction durably in the platform database (the monitor reads
  them from there). One copy, behind the gateway's authentication, is the only one.
* Every pod and container the manifests describe runs restricted: non-root, no privilege escalation, no
  capabilities, a read-only root filesystem with a /tmp emptyDir, and no service-account token.
* Seldon Core v2 (``mlops.seldon.io/v1alpha1``): a ``Server`` running the serving image, three ``Model``
  resources (model, explainer, drift detector) and a ``Pipeline`` that feeds every request to the model
  and, batched, to the drift detector.
* The learning loop's shadow (a challenger scoring live traffic beside the champion, its answers never
  returned): in v1 a second predictor with ``shadow: true`` in the champion's SeldonDeployment
  (:func:`shadow_predictor`; Seldon's ingress mirrors requests to it and discards its responses), in v2 a
  challenger ``Model`` and an ``Experiment`` that mirrors the champion's traffic to it
  (:func:`seldon_v2_shadow_resources`). The paired evidence is not taken from either: the monitor scores
  the challenger itself, as on the embedded stack.

``manifests/`` in the repository holds these rendered with the default settings, and under ``shadow/``
challenger v:data:`EXAMPLE_SHADOW_VERSION` in the shadow of v1 (`lm manifests --shadow-version 2`
regenerates them with :func:`write_manifests`; a test checks they are current).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from learning_machine.clients.v2 import drift_name, explainer_name
from learning_machine.embedded.model_server import DRIFT_RUNTIME, EXPLAINER_RUNTIME, MODEL_RUNTIME
from learning_machine.errors import ConfigurationError
from learning_machine.registry.names import model_uri
from learning_machine.settings import Settings

SELDON_V1 = ("machinelearning.seldon.io", "v1", "seldondeployments")
SELDON_V2 = "mlops.seldon.io/v1alpha1"
HTTP_PORT = 9000  # what Seldon v1's executor calls for a protocol-v2 custom model
GRPC_PORT = 9500
PREDICTOR_PORT = 8000  # the predictor's Service: Seldon v1's executor, which routes to the graph
EXPLAINER_PORT = 9000  # Seldon v1's default port of an explainer's Service (our MLServer listens on it)
PREDICTOR = "default"
SHADOW_PREDICTOR = "shadow"  # the challenger's predictor while it runs in the shadow (Seldon v1)
EXAMPLE_SHADOW_VERSION = "2"  # the challenger manifests/shadow/ is rendered with (beside champion v1)
SERVER_CAPABILITY = "learning-machine"
SERVING_UID = 10001  # USER of serving/Dockerfile
TMP_MOUNT = "/tmp"  # noqa: S108 - an emptyDir: the only writable path under a read-only root filesystem
MAX_NAME = 63  # a Service name is a DNS label

Resource = dict[str, Any]


def deployment_name(settings: Settings, model_name: str | None = None) -> str:
    return settings.seldon_deployment_name or (model_name or settings.model_name)


def drift_deployment_name(settings: Settings, model_name: str | None = None) -> str:
    return f"{deployment_name(settings, model_name)}-drift"


def _labels(model_name: str, version: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": model_name, "app.kubernetes.io/part-of": "learning-machine",
            "app.kubernetes.io/component": component, "learning-machine/model-version": str(version)}


def _credentials(settings: Settings) -> list[dict[str, Any]]:
    """S3 credentials for MLflow's client, read from the same rclone-style secret the storage
    initializer uses (``RCLONE_CONFIG_S3_*`` keys), so there is one secret to manage."""
    keys = {"AWS_ACCESS_KEY_ID": "RCLONE_CONFIG_S3_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY",
            "MLFLOW_S3_ENDPOINT_URL": "RCLONE_CONFIG_S3_ENDPOINT"}
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": settings.seldon_secret_name, "key": key}}}
            for env, key in keys.items()]


def runtime_env(settings: Settings, served_name: str, implementation: str, model_name: str, version: str,
                extra: dict[str, Any]) -> list[dict[str, Any]]:
    """The environment that makes the serving image run one of our runtimes (MLServer reads
    ``MLSERVER_MODEL_*`` as the model's settings)."""
    env = [
        {"name": "MLSERVER_MODEL_NAME", "value": served_name},
        {"name": "MLSERVER_MODEL_IMPLEMENTATION", "value": implementation},
        {"name": "MLSERVER_MODEL_URI", "value": model_uri(model_name, version)},
        {"name": "MLSERVER_MODEL_EXTRA", "value": json.dumps({"tracking_uri": settings.seldon_tracking_uri, **extra})},
        {"name": "MLSERVER_HTTP_PORT", "value": str(HTTP_PORT)},
        {"name": "MLSERVER_GRPC_PORT", "value": str(GRPC_PORT)},
        # parallel_workers >= 1 crashes with uvloop 0.23 (MLServer#2286).
        {"name": "MLSERVER_PARALLEL_WORKERS", "value": "0"},
        {"name": "MLFLOW_TRACKING_URI", "value": settings.seldon_tracking_uri},
    ]
    return env + _credentials(settings)


# The restricted Pod Security Standard. MLServer writes only its metrics folder (MLSERVER_METRICS_DIR, else
# .metrics in the working directory) and MLflow's downloads (TMPDIR): both go to the /tmp emptyDir.
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
    "runAsUser": SERVING_UID, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": SERVING_UID, "runAsGroup": SERVING_UID, "fsGroup": SERVING_UID,
    "seccompProfile": {"type": "RuntimeDefault"}}
TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
WRITABLE_ENV = [{"name": "TMPDIR", "value": TMP_MOUNT},
                {"name": "MLSERVER_METRICS_DIR", "value": f"{TMP_MOUNT}/mlserver-metrics"}]


def _container(settings: Settings, name: str, env: list[dict[str, Any]], *, tmp_volume: bool = True
               ) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name, "image": settings.serving_image, "imagePullPolicy": "IfNotPresent", "env": env + WRITABLE_ENV,
        "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "securityContext": CONTAINER_SECURITY}
    if tmp_volume:
        container["volumeMounts"] = [{"name": "tmp", "mountPath": TMP_MOUNT}]
    else:
        # Seldon v1's explainer has a container spec but no pod spec, so no emptyDir can be declared for
        # it: MLServer must write its metrics folder and MLflow its downloads on the root filesystem.
        container["securityContext"] = {**CONTAINER_SECURITY, "readOnlyRootFilesystem": False}
    return container


def _pod_spec(containers: list[dict[str, Any]]) -> dict[str, Any]:
    """A Seldon pod: restricted, with a /tmp emptyDir and no service-account token (the runtimes never call
    the Kubernetes API)."""
    return {"automountServiceAccountToken": False, "securityContext": POD_SECURITY, "containers": containers,
            "volumes": [TMP_VOLUME]}


# -- the Services Seldon v1 creates, which the gateway and the monitor call ---------------------------
def _service(name: str) -> str:
    if len(name) > MAX_NAME:
        raise ConfigurationError(f"the Seldon Service name {name!r} is longer than {MAX_NAME} characters (Seldon "
                                 "would truncate it): shorten LM_MODEL_NAME or set LM_SELDON_DEPLOYMENT_NAME")
    return name


def predictor_service(settings: Settings, model_name: str | None = None) -> str:
    """The predictor's Service (Seldon's executor, port :data:`PREDICTOR_PORT`): ``<deployment>-<predictor>``."""
    return _service(f"{deployment_name(settings, model_name)}-{PREDICTOR}")


def explainer_service(settings: Settings, model_name: str | None = None) -> str:
    """The explainer's Service (port :data:`EXPLAINER_PORT`): ``<deployment>-<predictor>-explainer``."""
    return _service(f"{deployment_name(settings, model_name)}-{PREDICTOR}-explainer")


def drift_service(settings: Settings, model_name: str | None = None) -> str:
    """The drift detector's predictor Service (its own SeldonDeployment, :func:`drift_deployment`)."""
    return _service(f"{drift_deployment_name(settings, model_name)}-{PREDICTOR}")


def seldon_services(settings: Settings, model_name: str | None = None) -> dict[str, tuple[str, int]]:
    """The Service name and port of the model (predictor), the explainer and the drift detector."""
    return {"model": (predictor_service(settings, model_name), PREDICTOR_PORT),
            "explainer": (explainer_service(settings, model_name), EXPLAINER_PORT),
            "drift": (drift_service(settings, model_name), PREDICTOR_PORT)}


def service_urls(settings: Settings, model_name: str | None = None, *, domain: str = "svc.cluster.local"
                 ) -> dict[str, str]:
    """Base URLs of the model (predictor), explainer and drift detector Services, as
    ``LM_MODEL_SERVER_URL``, ``LM_EXPLAINER_URL`` and ``LM_DRIFT_DETECTOR_URL`` take them."""
    ns = settings.seldon_namespace
    suffix = f".{ns}.{domain}" if domain else f".{ns}"
    return {role: f"http://{name}{suffix}:{port}" for role, (name, port) in seldon_services(settings, model_name).items()}


def infer_uri(settings: Settings, model_name: str) -> str:
    """The model's V2 infer URL inside the cluster (the predictor's service), for the black-box explainer."""
    return f"{service_urls(settings, model_name, domain='')['model']}/v2/models/{model_name}/infer"


# -- Seldon Core v1 -----------------------------------------------------------------------------------
def seldon_deployment(settings: Settings, model_name: str, version: str, *, shadow_version: str | None = None
                      ) -> Resource:
    """The SeldonDeployment serving ``version`` with its explainer (no request logger: see the module doc);
    with ``shadow_version``, that challenger runs beside it in the shadow (:func:`shadow_predictor`)."""
    name = deployment_name(settings, model_name)
    model_env = runtime_env(settings, model_name, MODEL_RUNTIME, model_name, version, {})
    explainer_env = runtime_env(settings, explainer_name(model_name), EXPLAINER_RUNTIME, model_name, version,
                                {"explainer_type": "anchor_tabular", "infer_uri": infer_uri(settings, model_name)})
    sdep = _seldon_deployment(settings, name, _labels(model_name, version, "model"), {
        "name": PREDICTOR,
        "replicas": 1,
        "labels": {"learning-machine/model-version": str(version)},
        "componentSpecs": [{"spec": _pod_spec([_container(settings, model_name, model_env)])}],
        # No "logger": see the module's docstring (the gateway keeps every request; nothing else may).
        "graph": _model_graph(settings, model_name),
        "explainer": {
            "type": "AnchorTabular",
            "replicas": 1,
            "envSecretRefName": settings.seldon_secret_name,
            "containerSpec": _container(settings, "explainer", explainer_env, tmp_volume=False),
        },
    })
    if shadow_version is not None:
        if str(shadow_version) == str(version):
            raise ConfigurationError(f"v{version} of {model_name} cannot run in its own shadow: the shadow is a "
                                     "challenger, another version")
        sdep["spec"]["predictors"].append(shadow_predictor(settings, model_name, shadow_version))
    return sdep


def _model_graph(settings: Settings, model_name: str) -> Resource:
    return {"name": model_name, "type": "MODEL", "envSecretRefName": settings.seldon_secret_name, "children": []}


def shadow_predictor(settings: Settings, model_name: str, version: str) -> Resource:
    """The predictor that runs challenger ``version`` in the shadow of a SeldonDeployment's champion.

    ``shadow: true``: Seldon v1's ingress (an Istio VirtualService ``mirror``, an Ambassador ``shadow``
    Mapping) sends it a copy of every request to the deployment and discards its responses, so nothing it
    answers reaches a clinician. ``traffic`` is the share Ambassador mirrors (Istio mirrors all). It serves
    under the champion's model name, so a mirrored ``/v2/models/<model>/infer`` finds it; same image,
    secret and restricted pod as the champion, no explainer (explanations are the champion's)."""
    env = runtime_env(settings, model_name, MODEL_RUNTIME, model_name, version, {})
    return {
        "name": SHADOW_PREDICTOR,
        "replicas": 1,
        "shadow": True,
        "traffic": 100,
        "labels": {"learning-machine/model-version": str(version), "learning-machine/role": "shadow"},
        "componentSpecs": [{"spec": _pod_spec([_container(settings, model_name, env)])}],
        "graph": _model_graph(settings, model_name),
    }


def _seldon_deployment(settings: Settings, name: str, labels: dict[str, str], predictor: Resource) -> Resource:
    """A protocol-v2 SeldonDeployment with one predictor."""
    return {
        "apiVersion": f"{SELDON_V1[0]}/{SELDON_V1[1]}",
        "kind": "SeldonDeployment",
        "metadata": {"name": name, "namespace": settings.seldon_namespace, "labels": labels},
        "spec": {"name": name, "protocol": "v2", "predictors": [predictor]},
    }


def drift_deployment(settings: Settings, model_name: str, version: str, *, batch_size: int | None = None) -> Resource:
    """A SeldonDeployment for the drift detector of ``version`` (the monitor posts batches to it)."""
    name = drift_deployment_name(settings, model_name)
    served = drift_name(model_name)
    env = runtime_env(settings, served, DRIFT_RUNTIME, model_name, version, {
        "detector_type": settings.drift_detector, "p_val": settings.drift_p_val, "batch_size": batch_size,
        "predict_parameters": {}})
    return _seldon_deployment(settings, name, _labels(model_name, version, "drift-detector"), {
        "name": PREDICTOR,
        "replicas": 1,
        "componentSpecs": [{"spec": _pod_spec([_container(settings, served, env)])}],
        "graph": {"name": served, "type": "MODEL", "envSecretRefName": settings.seldon_secret_name, "children": []},
    })


# -- Seldon Core v2 -----------------------------------------------------------------------------------
V2_SERVER = f"{SERVER_CAPABILITY}-mlserver"
V2_STORAGE_PREFIX = "s3://mlflow/serving"


def _v2_storage(storage_prefix: str, model_name: str, version: str) -> str:
    """The folder of ``version``'s storage folders (one per served model, each holding a model-settings.json)."""
    return f"{storage_prefix.rstrip('/')}/{model_name}/{version}"


def seldon_v2_resources(settings: Settings, model_name: str, version: str, *, storage_prefix: str = V2_STORAGE_PREFIX,
                        drift_batch: int = 100) -> list[Resource]:
    """Server, Model (x3) and Pipeline for Seldon Core v2. Each Model's ``storageUri`` is a folder holding
    the ``model-settings.json`` from :func:`seldon_v2_model_settings` (upload them there); the runtimes then
    load the version from MLflow as everywhere else."""
    ns = settings.seldon_namespace
    base = _v2_storage(storage_prefix, model_name, version)
    server = V2_SERVER
    meta = lambda name, component: {"name": name, "namespace": ns,  # noqa: E731 - a local shorthand
                                    "labels": _labels(model_name, version, component)}
    resources: list[Resource] = [
        {"apiVersion": SELDON_V2, "kind": "Server", "metadata": meta(server, "model-server"),
         "spec": {"serverConfig": "mlserver", "replicas": 1, "extraCapabilities": [SERVER_CAPABILITY],
                  # The operator merges this into its ServerConfig's pod (agent, rclone and mlserver
                  # containers): restricted, and no token in the pod.
                  "podSpec": _pod_spec([{"name": "mlserver", "image": settings.serving_image,
                                         "env": [{"name": "MLFLOW_TRACKING_URI", "value": settings.seldon_tracking_uri},
                                                 *_credentials(settings), *WRITABLE_ENV],
                                         "securityContext": CONTAINER_SECURITY,
                                         "volumeMounts": [{"name": "tmp", "mountPath": TMP_MOUNT}]}])}},
        # No "logger" (see the module's docstring).
        {"apiVersion": SELDON_V2, "kind": "Model", "metadata": meta(model_name, "model"),
         "spec": {"storageUri": f"{base}/{model_name}", "requirements": [SERVER_CAPABILITY],
                  "secretName": settings.seldon_secret_name, "server": server}},
        {"apiVersion": SELDON_V2, "kind": "Model", "metadata": meta(explainer_name(model_name), "explainer"),
         "spec": {"storageUri": f"{base}/{explainer_name(model_name)}", "requirements": [SERVER_CAPABILITY],
                  "secretName": settings.seldon_secret_name, "server": server,
                  "explainer": {"type": "anchor_tabular", "modelRef": model_name}}},
        {"apiVersion": SELDON_V2, "kind": "Model", "metadata": meta(drift_name(model_name), "drift-detector"),
         "spec": {"storageUri": f"{base}/{drift_name(model_name)}", "requirements": [SERVER_CAPABILITY],
                  "secretName": settings.seldon_secret_name, "server": server}},
        {"apiVersion": SELDON_V2, "kind": "Pipeline", "metadata": meta(f"{model_name}-pipeline", "pipeline"),
         "spec": {"steps": [
             {"name": model_name},
             {"name": drift_name(model_name), "inputs": [f"{model_name}.inputs"],
              "batch": {"size": drift_batch, "rolling": True}},
         ], "output": {"steps": [model_name]}}},
    ]
    return resources


def shadow_model_name(model_name: str) -> str:
    """The Seldon v2 Model that serves the challenger in the shadow (the champion's Model is ``model_name``)."""
    return f"{model_name}-challenger"


def seldon_v2_shadow_resources(settings: Settings, model_name: str, version: str, shadow_version: str, *,
                               storage_prefix: str = V2_STORAGE_PREFIX) -> list[Resource]:
    """Challenger ``shadow_version`` in the shadow of champion ``version`` on Seldon Core v2: the challenger
    as its own ``Model`` and an ``Experiment`` on the champion's endpoint (``default``: requests to the
    champion's Model name stay on it, its only candidate) that mirrors every request to the challenger
    (``mirror``, percent 100); the mirror's responses are never returned. The challenger's ``storageUri``
    has the layout of :func:`seldon_v2_resources` for that version (the model's ``model-settings.json`` from
    :func:`seldon_v2_model_settings`). Delete the Experiment (and the Model) to end the shadow."""
    if str(shadow_version) == str(version):
        raise ConfigurationError(f"v{version} of {model_name} cannot run in its own shadow: the shadow is a "
                                 "challenger, another version")
    ns = settings.seldon_namespace
    challenger = shadow_model_name(model_name)
    return [
        {"apiVersion": SELDON_V2, "kind": "Model",
         "metadata": {"name": challenger, "namespace": ns,
                      "labels": {**_labels(model_name, shadow_version, "model"), "learning-machine/role": "shadow"}},
         "spec": {"storageUri": f"{_v2_storage(storage_prefix, model_name, shadow_version)}/{model_name}",
                  "requirements": [SERVER_CAPABILITY], "secretName": settings.seldon_secret_name,
                  "server": V2_SERVER}},
        {"apiVersion": SELDON_V2, "kind": "Experiment",
         "metadata": {"name": f"{model_name}-shadow", "namespace": ns,
                      "labels": {**_labels(model_name, version, "shadow-experiment"),
                                 "learning-machine/shadow-version": str(shadow_version)}},
         "spec": {"default": model_name, "candidates": [{"name": model_name, "weight": 100}],
                  "mirror": {"name": challenger, "percent": 100}}},
    ]


def seldon_v2_model_settings(settings: Settings, model_name: str, version: str) -> dict[str, dict[str, Any]]:
    """The ``model-settings.json`` for each Seldon v2 Model's storage folder."""
    from learning_machine.embedded.model_server import model_settings

    docs = model_settings(model_name, version, settings.seldon_tracking_uri,
                          infer_uri=f"http://seldon-mesh.{settings.seldon_namespace}/v2/models/{model_name}/infer",
                          drift_detector=settings.drift_detector, drift_p_val=settings.drift_p_val)
    return docs


def render_all(settings: Settings, model_name: str | None = None, version: str = "1", *,
               shadow_version: str | None = None) -> dict[str, list[Resource]]:
    """Every serving manifest, by file name; with ``shadow_version``, also that challenger in the shadow of
    ``version`` under ``shadow/`` (v1: the SeldonDeployment with its shadow predictor, which replaces the
    plain one; v2: the challenger's Model and the mirroring Experiment, beside seldon-v2/serving.yaml)."""
    name = model_name or settings.model_name
    files = {
        "seldon-v1/seldondeployment.yaml": [seldon_deployment(settings, name, version)],
        "seldon-v1/drift-detector.yaml": [drift_deployment(settings, name, version)],
        "seldon-v2/serving.yaml": seldon_v2_resources(settings, name, version),
    }
    if shadow_version is not None:
        files["shadow/seldon-v1/seldondeployment.yaml"] = [
            seldon_deployment(settings, name, version, shadow_version=shadow_version)]
        files["shadow/seldon-v2/shadow.yaml"] = seldon_v2_shadow_resources(settings, name, version, shadow_version)
    return files


def to_yaml(resources: list[Resource]) -> str:
    return yaml.safe_dump_all(resources, sort_keys=False, width=120)


def write_manifests(out_dir: Path, settings: Settings, model_name: str | None = None, version: str = "1", *,
                    shadow_version: str | None = None) -> list[Path]:
    """Write :func:`render_all` into ``out_dir`` (the repository's ``manifests/`` holds the defaults, and the
    shadow of challenger :data:`EXAMPLE_SHADOW_VERSION`), with each Seldon v2 Model's model-settings.json."""
    header = ("# Rendered by learning_machine.k8s.manifests.write_manifests with the default settings; do not edit by\n"
              "# hand: the `seldon` deployer renders the same resources for the version it deploys.\n")
    shadow_header = (f"# An example: challenger v{shadow_version} in the shadow of v{version} (`lm manifests --shadow-version "
                     f"{shadow_version}`);\n# the `seldon` deployer's start_shadow adds the same shadow predictor to the "
                     "running SeldonDeployment.\n")
    written = []
    for rel, resources in render_all(settings, model_name, version, shadow_version=shadow_version).items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + (shadow_header if rel.startswith("shadow/") else "") + to_yaml(resources))
        written.append(path)
    name = model_name or settings.model_name
    storage = {out_dir / "seldon-v2" / "storage": seldon_v2_model_settings(settings, name, version)}
    if shadow_version is not None:
        # The challenger's Model only (its explanations and drift checks are the champion's).
        challenger = seldon_v2_model_settings(settings, name, shadow_version)
        storage[out_dir / "shadow" / "seldon-v2" / "storage"] = {name: challenger[name]}
    for folder, documents in storage.items():
        for served, document in documents.items():
            path = folder / served / "model-settings.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(document, indent=2) + "\n")
            written.append(path)
    return written
