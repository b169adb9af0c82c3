"""The ``seldon`` deployer: creates or patches the SeldonDeployment (and the drift detector's) of a model
version through the Kubernetes API (``CustomObjectsApi``: get, then merge-patch, else create). Seldon then
rolls the predictor over to the new version; the runtimes in the pods load it from MLflow.

The learning loop's shadow is a second predictor (``shadow: true``) in the champion's SeldonDeployment,
added and removed by merge-patching ``spec.predictors`` alone (:meth:`SeldonDeployer.start_shadow`,
:meth:`SeldonDeployer.end_shadow`); a :meth:`SeldonDeployer.deploy` renders no shadow, so a promotion ends it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from learning_machine.deployers.base import DeployResult, ModelDeployer
from learning_machine.errors import (
    ConfigurationError,
    ConflictError,
    LearningMachineError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from learning_machine.k8s.manifests import (
    PREDICTOR,
    SELDON_V1,
    SHADOW_PREDICTOR,
    Resource,
    deployment_name,
    drift_deployment,
    seldon_deployment,
    shadow_predictor,
)
from learning_machine.settings import Settings


class SeldonDeployError(LearningMachineError):
    """The Kubernetes API refused a SeldonDeployment."""

    status = 502
    code = "seldon-deploy-failed"


def kubernetes_api() -> Any:
    """A ``CustomObjectsApi`` from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise ServiceUnavailableError(f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}") from exc
    return client.CustomObjectsApi()


class SeldonDeployer(ModelDeployer):
    """Serves a version as a SeldonDeployment (protocol v2, our serving image, explainer) and the drift
    detector's. Kubernetes API use: get, create and merge-patch ``seldondeployments`` in one namespace."""

    name = "seldon"

    def __init__(self, settings: Settings, *, api: Any = None, api_factory: Callable[[], Any] = kubernetes_api) -> None:
        super().__init__(settings)
        self._api = api
        self._api_factory = api_factory

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def resources(self, model_name: str, version: str) -> list[Resource]:
        return [seldon_deployment(self.settings, model_name, version),
                drift_deployment(self.settings, model_name, version)]

    def deploy(self, model_name: str, version: str) -> DeployResult:
        changed = []
        for resource in self.resources(model_name, version):
            if self.apply(resource):
                changed.append(resource["metadata"]["name"])
        detail = (f"applied {', '.join(changed)} in namespace {self.settings.seldon_namespace}" if changed
                  else f"v{version} already deployed in namespace {self.settings.seldon_namespace}")
        return DeployResult(self.name, model_name, version, changed=bool(changed), detail=detail,
                            extra={"namespace": self.settings.seldon_namespace, "resources": changed})

    def apply(self, resource: Resource) -> bool:
        """Create ``resource`` or merge-patch its spec and labels; False when nothing would change."""
        group, version, plural = SELDON_V1
        ns, name = resource["metadata"]["namespace"], resource["metadata"]["name"]
        with self._kubernetes(ns, name):
            current = self._get(ns, name)
            if current is None:
                self.api.create_namespaced_custom_object(group, version, ns, plural, resource)
                return True
            if (current.get("spec") == resource["spec"]
                    and (current.get("metadata", {}).get("labels") or {}) == resource["metadata"]["labels"]):
                return False
            # A merge patch replaces lists (the predictors) whole: the deployment ends up exactly as rendered.
            self.api.patch_namespaced_custom_object(group, version, ns, plural, name,
                                                    {"metadata": {"labels": resource["metadata"]["labels"]},
                                                     "spec": resource["spec"]})
            return True

    # -- the learning loop's shadow -------------------------------------------------------------------
    def start_shadow(self, model_name: str, champion_version: str, challenger_version: str) -> DeployResult:
        """Run ``challenger_version`` as the shadow predictor of the champion's SeldonDeployment (replacing a
        shadow already there). Only ``spec.predictors`` is patched, with the champion's predictor sent back
        as it was read, so the champion's pods do not roll. Refused when the SeldonDeployment does not exist
        (:class:`ModelNotFoundError`) or does not serve ``champion_version`` (:class:`ConflictError`): a
        shadow must never change which version answers."""
        if str(challenger_version) == str(champion_version):
            raise ConfigurationError(f"v{champion_version} of {model_name} cannot run in its own shadow")
        ns, name = self.settings.seldon_namespace, deployment_name(self.settings, model_name)
        with self._kubernetes(ns, name):
            current = self._get(ns, name)
            if current is None:
                raise ModelNotFoundError(f"SeldonDeployment {ns}/{name} does not exist: deploy champion "
                                         f"v{champion_version} before starting a shadow beside it")
            serving = serving_version(current)
            if serving != str(champion_version):
                raise ConflictError(f"SeldonDeployment {ns}/{name} serves v{serving}, not champion v{champion_version}"
                                    f": the shadow of v{challenger_version} was not started")
            predictors = [*_without_shadow(current), shadow_predictor(self.settings, model_name, challenger_version)]
            changed = self._patch_predictors(ns, name, current, predictors)
        detail = (f"v{challenger_version} runs in the shadow of v{champion_version} (predictor {SHADOW_PREDICTOR!r} "
                  f"of {ns}/{name})" if changed else f"v{challenger_version} already runs in the shadow of "
                  f"v{champion_version} in {ns}/{name}")
        return DeployResult(self.name, model_name, str(challenger_version), changed=changed, detail=detail,
                            extra={"namespace": ns, "resource": name, "predictor": SHADOW_PREDICTOR,
                                   "champion_version": str(champion_version)})

    def end_shadow(self, model_name: str, champion_version: str) -> DeployResult:
        """Remove the shadow predictor from the champion's SeldonDeployment, leaving every other predictor as
        it was read (nothing is re-rendered: a shadow ending after a promotion cannot roll the new champion
        back). Nothing is sent when there is no shadow, or no SeldonDeployment."""
        ns, name = self.settings.seldon_namespace, deployment_name(self.settings, model_name)
        with self._kubernetes(ns, name):
            current = self._get(ns, name)
            changed = current is not None and self._patch_predictors(ns, name, current, _without_shadow(current))
        serving = serving_version(current) if current is not None else None
        detail = (f"shadow removed from {ns}/{name}, which serves v{serving}" if changed
                  else f"no shadow in {ns}/{name}: nothing to remove")
        return DeployResult(self.name, model_name, str(champion_version), changed=changed, detail=detail,
                            extra={"namespace": ns, "resource": name, "serving_version": serving})

    def _patch_predictors(self, ns: str, name: str, current: Resource, predictors: list[Resource]) -> bool:
        """Merge-patch ``spec.predictors`` to ``predictors``; False when they already are."""
        if (current.get("spec") or {}).get("predictors") == predictors:
            return False
        group, version, plural = SELDON_V1
        # A JSON merge patch (RFC 7386) merges maps but replaces a list whole: the full list is how a predictor
        # is added or removed, and the rest of the spec and the labels are left as they are.
        self.api.patch_namespaced_custom_object(group, version, ns, plural, name, {"spec": {"predictors": predictors}})
        return True

    # -- calling the Kubernetes API -------------------------------------------------------------------
    def _get(self, ns: str, name: str) -> Resource | None:
        """The SeldonDeployment ``ns/name``, None when it does not exist (inside :meth:`_kubernetes`)."""
        from kubernetes.client.exceptions import ApiException

        group, version, plural = SELDON_V1
        try:
            found: Resource = self.api.get_namespaced_custom_object(group, version, ns, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return found

    @contextmanager
    def _kubernetes(self, ns: str, name: str) -> Iterator[None]:
        """Turn the client's errors into ours: a refusal is a :class:`SeldonDeployError`, no answer a
        :class:`ServiceUnavailableError`."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            yield
        except ApiException as exc:
            said = _status_message(exc.body)
            raise SeldonDeployError(f"Kubernetes refused SeldonDeployment {ns}/{name}: HTTP {exc.status} "
                                    f"{exc.reason}" + (f": {said}" if said else "")) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServiceUnavailableError(f"the Kubernetes API is unreachable while applying {ns}/{name}: {exc}") from exc

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "namespace": self.settings.seldon_namespace,
                "image": self.settings.serving_image}


def serving_version(sdep: Resource) -> str | None:
    """The version the SeldonDeployment's main predictor serves (its ``learning-machine/model-version`` label)."""
    for predictor in (sdep.get("spec") or {}).get("predictors") or []:
        if predictor.get("name") == PREDICTOR and not predictor.get("shadow"):
            return (predictor.get("labels") or {}).get("learning-machine/model-version")
    return None


def _without_shadow(sdep: Resource) -> list[Resource]:
    return [p for p in (sdep.get("spec") or {}).get("predictors") or []
            if not p.get("shadow") and p.get("name") != SHADOW_PREDICTOR]


def _status_message(body: Any) -> str:
    """The ``message`` of the API server's Status answer (why it refused: RBAC, schema, webhook), shortened."""
    try:
        message = json.loads(body).get("message") if body else None
    except (TypeError, ValueError, AttributeError):
        return ""
    return str(message)[:300] if message else ""
