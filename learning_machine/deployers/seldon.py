"""The ``seldon`` deployer: creates or patches the SeldonDeployment (and the drift detector's) of a model
version through the Kubernetes API (``CustomObjectsApi``: get, then merge-patch, else create). Seldon then
rolls the predictor over to the new version; the runtimes in the pods load it from MLflow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from learning_machine.deployers.base import DeployResult, ModelDeployer
from learning_machine.errors import LearningMachineError, ServiceUnavailableError
from learning_machine.k8s.manifests import SELDON_V1, Resource, drift_deployment, seldon_deployment
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
        import urllib3
        from kubernetes.client.exceptions import ApiException

        group, version, plural = SELDON_V1
        ns, name = resource["metadata"]["namespace"], resource["metadata"]["name"]
        try:
            try:
                current = self.api.get_namespaced_custom_object(group, version, ns, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
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
        except ApiException as exc:
            raise SeldonDeployError(f"Kubernetes refused SeldonDeployment {ns}/{name}: HTTP {exc.status} "
                                    f"{exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServiceUnavailableError(f"the Kubernetes API is unreachable while applying {ns}/{name}: {exc}") from exc

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "namespace": self.settings.seldon_namespace,
                "image": self.settings.serving_image}
