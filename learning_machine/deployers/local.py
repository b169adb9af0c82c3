"""The ``local`` deployer: the embedded MLServer (`lm up` / `lm serve`) swaps to a new version through its
repository API. The three served models' ``model-settings.json`` are rewritten to the version, then each
is reloaded; MLServer loads the new version before it unloads the old one, so requests never fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from learning_machine.clients.v2 import ModelServerClient
from learning_machine.deployers.base import DeployResult, ModelDeployer
from learning_machine.embedded.model_server import (
    SETTINGS_FILE,
    ports_of,
    reload_models,
    repository_dir,
    set_model_ref,
    wait_models_ready,
)
from learning_machine.errors import ModelNotFoundError, ServiceUnavailableError
from learning_machine.registry.names import parse_model_uri
from learning_machine.settings import Settings


class LocalDeployer(ModelDeployer):
    """Swaps the version the embedded MLServer serves, with no downtime."""

    name = "local"

    def __init__(self, settings: Settings, *, repository: Path | None = None, url: str | None = None) -> None:
        super().__init__(settings)
        self.repository = repository or repository_dir(settings)
        self.url = (url or settings.model_server_url or ports_of(settings).url).rstrip("/")

    def served_ref(self, model_name: str) -> str | None:
        """The version (or alias) the repository names for ``model_name``, None when it is not served."""
        path = self.repository / model_name / SETTINGS_FILE
        if not path.exists():
            return None
        return parse_model_uri(json.loads(path.read_text())["parameters"]["uri"])[1]

    def deploy(self, model_name: str, version: str) -> DeployResult:
        if self.served_ref(model_name) is None:
            raise ModelNotFoundError(f"the model server repository {self.repository} does not serve {model_name!r}; "
                                     "start it with `lm serve` (or `lm up`) for this model name")
        with ModelServerClient(self.url, timeout_s=self.settings.request_timeout_s) as client:
            if not client.ready():
                raise ServiceUnavailableError(f"model server at {self.url} is not ready; cannot deploy "
                                              f"{model_name} v{version}")
            serving = _served_version(client, model_name)
            if serving == version and self.served_ref(model_name) == version:
                return DeployResult(self.name, model_name, version, changed=False,
                                    detail=f"v{version} already serves at {self.url}")
            names = set_model_ref(self.repository, model_name, version)
            # The model first: it is what the gateway's predictions need; explainer and drift follow.
            reload_models(self.url, names)
            wait_models_ready(self.url, names, timeout_s=self.settings.startup_timeout_s)
            now = _served_version(client, model_name)
        if now != version:
            raise ServiceUnavailableError(f"model server at {self.url} still serves v{now} of {model_name} after "
                                          f"loading v{version}")
        return DeployResult(self.name, model_name, version, changed=True,
                            detail=f"{self.url} now serves v{version} (was v{serving})",
                            extra={"previous_version": serving, "url": self.url})

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "url": self.url, "repository": str(self.repository)}


def _served_version(client: ModelServerClient, model_name: str) -> str | None:
    try:
        versions = client.metadata(model_name).get("versions") or []
    except ModelNotFoundError:
        return None  # not loaded (a server started before the first champion existed)
    return str(versions[0]) if versions else None
